//! Group commit of send outcomes (see [`super::group_commit`]): the outcomes
//! workers report at the same time are stored in one transaction. The common
//! one, `sent`, is set-based — one `UPDATE … FROM UNNEST` for the messages,
//! one multi-row event insert, the provider-id locks in one statement, one
//! dequeue of all their queue entries with head promotion — about ten round
//! trips for the batch instead of about ten per message. The rarer outcomes
//! (retry, failed, cancelled, expired) run one by one in the same
//! transaction.
//!
//! The queue lives in this database, so each outcome settles its queue entry
//! in the same transaction (see `Queue::settled_by_store`). A batch whose
//! transaction fails is run again outcome by outcome, each in its own
//! transaction, so one outcome never fails the others.

use super::group_commit::{GroupCommit, Shape, Statements};
use super::rows::{self, MessageRef};
use super::store::{apply_status, lock_provider_ids};
use crate::*;
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Row};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::Notify;
use zapgate_domain::event::StatusDetail;
use zapgate_domain::status::SENT_RANK;
use zapgate_domain::{MessageStatus, Timestamp};

/// How outcomes are batched: at most 256 in one transaction, 4 committing at once.
const SHAPE: Shape = Shape { metric: "zapgate_outcome_batch_size", max_batch: 256, in_flight: 4 };

/// The compare-and-set part of every outcome: the message is `sending` and
/// this process still holds its lease (another may have reclaimed it).
const SENDING_BY_ME: &str = "m.status = 'sending' AND EXISTS (SELECT 1 FROM queue_entries q \
     WHERE q.message_id = m.id AND q.lease_owner = $owner)";

/// The handle `Store::record_outcome` submits to.
pub struct Outcomes {
    batches: GroupCommit<SendOutcome, OutcomeApplied>,
}

impl Outcomes {
    /// `owner` is this process's lease owner id; `committed` is notified
    /// after each batch (its events wait for fan-out).
    pub fn start(pool: PgPool, owner: i64, committed: Arc<Notify>) -> Self {
        let run: Statements<_, _> = Arc::new(move |conn, batch| Box::pin(record_batch(conn, batch, owner)));
        Self { batches: GroupCommit::transactional(SHAPE, pool, committed, run) }
    }

    pub async fn record(&self, outcome: SendOutcome) -> Result<OutcomeApplied, StoreError> {
        self.batches.submit(outcome).await
    }
}

/// The batch's statements: what each outcome did, in order.
async fn record_batch(
    conn: &mut PgConnection,
    outcomes: &[SendOutcome],
    owner: i64,
) -> Result<Vec<OutcomeApplied>, StoreError> {
    let mut applied = vec![OutcomeApplied::Stale; outcomes.len()];
    let mut sent = Vec::new();
    for (i, o) in outcomes.iter().enumerate() {
        match unsent(&o.result) {
            None => sent.push(i),
            Some(u) => applied[i] = record_unsent(conn, o, u, owner).await?,
        }
    }
    let mut won = record_sent(conn, outcomes, &sent, owner).await?;
    for &i in &sent {
        // A second outcome for one message in the batch finds it sent: stale,
        // as it would be one transaction later.
        if won.remove(outcomes[i].message_id.as_str()) {
            applied[i] = OutcomeApplied::Done(MessageStatus::Sent);
        }
    }
    settle(conn, outcomes, &applied).await?;
    Ok(applied)
}

/// Settles the queue entries to match what each outcome did.
async fn settle(
    conn: &mut PgConnection,
    outcomes: &[SendOutcome],
    applied: &[OutcomeApplied],
) -> Result<(), StoreError> {
    let now = outcomes.iter().map(|o| o.now).max().unwrap_or_else(Timestamp::now);
    let mut done: Vec<&str> = Vec::with_capacity(outcomes.len());
    let mut stale: Vec<&str> = Vec::new();
    for (o, a) in outcomes.iter().zip(applied) {
        let id = o.message_id.as_str();
        match a {
            OutcomeApplied::Done(_) => done.push(id),
            // Not ours to settle any more (a repeated commit, or a lease
            // another process reclaimed): the entry goes only if the message
            // is finished.
            OutcomeApplied::Stale => stale.push(id),
            OutcomeApplied::RetryAt { at, attempts } => rows::reschedule(&mut *conn, id, *at, *attempts, o.now).await?,
        }
    }
    if !stale.is_empty() {
        let rows = sqlx::query("SELECT id, status FROM messages WHERE id = ANY($1)")
            .bind(&stale)
            .fetch_all(&mut *conn)
            .await?;
        let mut status: HashMap<String, String> = HashMap::with_capacity(rows.len());
        for r in &rows {
            status.insert(r.try_get("id")?, r.try_get("status")?);
        }
        done.extend(stale.into_iter().filter(|id| {
            status.get(*id).and_then(|s| s.parse::<MessageStatus>().ok()).is_none_or(|s| s.leaves_queue())
        }));
    }
    rows::dequeue(conn, &done, now).await
}

/// What a failed (not `sent`) outcome writes.
struct Unsent<'a> {
    status: MessageStatus,
    code: &'a str,
    message: &'a str,
    spend_attempt: bool,
    retry_at: Option<Timestamp>,
}

fn unsent(result: &SendResult) -> Option<Unsent<'_>> {
    let u = |status, code, message, spend_attempt, retry_at| Unsent { status, code, message, spend_attempt, retry_at };
    Some(match result {
        SendResult::Sent { .. } => return None,
        SendResult::Retry { retry_at, spend_attempt, code, message } => {
            u(MessageStatus::RetryWait, code, message, *spend_attempt, Some(*retry_at))
        }
        SendResult::Failed { code, message } => u(MessageStatus::Failed, code, message, false, None),
        SendResult::Cancelled { code, message } => u(MessageStatus::Cancelled, code, message, false, None),
        SendResult::Expired => u(MessageStatus::Expired, "expired", "expires_at passed before sending", false, None),
    })
}

/// A failed outcome: `retry_wait` while attempts remain, else its terminal
/// status (a retry with the attempts used up is a dead letter). `retry_wait`
/// has rank 0, as `sending` has, so writing its rank changes nothing.
async fn record_unsent(
    conn: &mut PgConnection,
    o: &SendOutcome,
    u: Unsent<'_>,
    owner: i64,
) -> Result<OutcomeApplied, StoreError> {
    let sql = format!(
        "SELECT id, tenant_id, instance_id, chat_seq, attempts FROM messages m WHERE id = $1 AND {} FOR UPDATE",
        SENDING_BY_ME.replace("$owner", "$2")
    );
    let current =
        sqlx::query(AssertSqlSafe(sql)).bind(o.message_id.as_str()).bind(owner).fetch_optional(&mut *conn).await?;
    let Some(row) = current else { return Ok(OutcomeApplied::Stale) };
    let m = MessageRef::from_row(&row)?;
    let attempts = row.try_get::<i64, _>("attempts")? as u32 + u32::from(u.spend_attempt);
    // While attempts remain a retry waits; with them used up it is a dead letter.
    let retry_at = u.retry_at.filter(|_| attempts < o.retry_limit);
    let status = match (u.status, retry_at) {
        (MessageStatus::RetryWait, None) => MessageStatus::Dead,
        (status, _) => status,
    };
    sqlx::query(
        "UPDATE messages SET status = $1, status_rank = $2, attempts = $3, next_attempt_at = $4, error_code = $5, \
         error_message = $6, updated_at = $7 WHERE id = $8",
    )
    .bind(status.as_str())
    .bind(status.rank())
    .bind(i64::from(attempts))
    .bind(retry_at.map(Timestamp::as_millis))
    .bind(u.code)
    .bind(u.message)
    .bind(o.now.as_millis())
    .bind(&m.id)
    .execute(&mut *conn)
    .await?;
    let detail = StatusDetail {
        attempts: Some(attempts),
        error_code: Some(u.code.to_owned()),
        reason: Some(u.message.to_owned()),
        next_attempt_at: retry_at,
        ..detail()
    };
    rows::insert_event(conn, &m, status, &detail, o.now).await?;
    Ok(match retry_at {
        Some(at) => OutcomeApplied::RetryAt { at, attempts },
        None => OutcomeApplied::Done(status),
    })
}

/// `sending → sent` for the outcomes at `sent`, in one statement (the
/// compare-and-set is its WHERE); returns the ids that won it. Then their
/// events, the provider-id locks and any statuses parked for them.
async fn record_sent(
    conn: &mut PgConnection,
    outcomes: &[SendOutcome],
    sent: &[usize],
    owner: i64,
) -> Result<HashSet<String>, StoreError> {
    if sent.is_empty() {
        return Ok(HashSet::new());
    }
    let (mut ids, mut provider_ids, mut wa_ids, mut ats) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for &i in sent {
        let o = &outcomes[i];
        let SendResult::Sent { provider_message_id, wa_id } = &o.result else { unreachable!("only sent outcomes") };
        ids.push(o.message_id.as_str());
        provider_ids.push(provider_message_id.as_str());
        wa_ids.push(wa_id.as_deref());
        ats.push(o.now.as_millis());
    }
    let sql = format!(
        "UPDATE messages m SET status = 'sent', status_rank = $1, provider_message_id = u.p, \
         wa_id = COALESCE(u.w, m.wa_id), error_code = NULL, error_message = NULL, next_attempt_at = NULL, \
         updated_at = u.a FROM UNNEST($2::text[], $3::text[], $4::text[], $5::bigint[]) AS u(id, p, w, a) \
         WHERE m.id = u.id AND {} RETURNING m.id, m.tenant_id, m.instance_id, m.chat_seq, u.p, u.a",
        SENDING_BY_ME.replace("$owner", "$6")
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(SENT_RANK)
        .bind(&ids)
        .bind(&provider_ids)
        .bind(&wa_ids)
        .bind(&ats)
        .bind(owner)
        .fetch_all(&mut *conn)
        .await?;
    let mut won = Vec::with_capacity(rows.len());
    for r in &rows {
        let provider_message_id: String = r.try_get("p")?;
        let at = Timestamp::from_millis(r.try_get("a")?);
        let detail = StatusDetail { provider_message_id: Some(provider_message_id.clone()), ..detail() };
        won.push((MessageRef::from_row(r)?, detail, at, provider_message_id));
    }
    let events: Vec<_> = won.iter().map(|(m, d, at, _)| (m, MessageStatus::Sent, d, *at)).collect();
    rows::insert_status_events(&mut *conn, &events).await?;
    let provider_ids: Vec<&str> = won.iter().map(|(.., p)| p.as_str()).collect();
    lock_provider_ids(&mut *conn, &provider_ids).await?;
    apply_parked(conn, &provider_ids).await?;
    Ok(won.into_iter().map(|(m, ..)| m.id).collect())
}

/// Re-applies statuses that arrived before these messages' send results,
/// oldest first.
async fn apply_parked(conn: &mut PgConnection, provider_message_ids: &[&str]) -> Result<(), StoreError> {
    if provider_message_ids.is_empty() {
        return Ok(());
    }
    let rows = sqlx::query(
        "DELETE FROM parked_statuses WHERE provider_message_id = ANY($1) \
         RETURNING id, provider_message_id, status, at, error_code, error_message",
    )
    .bind(provider_message_ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut parked = Vec::with_capacity(rows.len());
    for r in &rows {
        let status: String = r.try_get("status")?;
        parked.push((
            r.try_get::<i64, _>("id")?,
            ProviderStatusReport {
                instance_id: None,
                provider_message_id: r.try_get("provider_message_id")?,
                status: status.parse().map_err(StoreError::Corrupt)?,
                at: Timestamp::from_millis(r.try_get("at")?),
                error_code: r.try_get("error_code")?,
                error_message: r.try_get("error_message")?,
            },
        ));
    }
    parked.sort_by_key(|(id, _)| *id);
    for (_, r) in parked {
        apply_status(&mut *conn, r).await?;
    }
    Ok(())
}
