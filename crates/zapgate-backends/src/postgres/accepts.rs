//! Group commit of accepts (see [`super::group_commit`]): concurrent
//! `Store::accept` calls are gathered into one transaction of multi-row
//! statements (instances checked, keys, chat sequences, messages, events,
//! queue entries: about eight round trips for the whole batch instead of
//! about nine per message).
//!
//! "202 means durable" holds: every caller is answered after its batch's
//! COMMIT. One message never fails the others: a batch whose transaction
//! fails is run again message by message (each its own transaction, as
//! without batching), and the rare cases the batch does not handle — an
//! Idempotency-Key seen before, or twice in one batch — go that way too.

use super::group_commit::{GroupCommit, Reply, Shape, Statements, transaction};
use super::rows::{self, MessageRef};
use crate::*;
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Row};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use zapgate_domain::event::StatusDetail;
use zapgate_domain::{MessageStatus, Timestamp};

/// How accepts are batched: at most 256 in one transaction, 4 committing at once.
const SHAPE: Shape = Shape { metric: "zapgate_accept_batch_size", max_batch: 256, in_flight: 4 };

/// The handle `Store::accept` submits to.
pub struct Accepts {
    batches: GroupCommit<AcceptMessage, Accepted>,
}

impl Accepts {
    pub fn start(pool: PgPool) -> Self {
        let run: Statements<AcceptMessage, Option<Accepted>> =
            Arc::new(|conn, msgs| Box::pin(accept_batch(conn, msgs)));
        let batches = GroupCommit::start(SHAPE, move |batch| {
            let (pool, run) = (pool.clone(), run.clone());
            async move { commit(&pool, batch, &run).await }
        });
        Self { batches }
    }

    pub async fn accept(&self, msg: AcceptMessage) -> Result<Accepted, StoreError> {
        self.batches.submit(msg).await
    }
}

/// Commits a batch and answers each caller.
async fn commit(
    pool: &PgPool,
    batch: Vec<(AcceptMessage, Reply<Accepted>)>,
    run: &Statements<AcceptMessage, Option<Accepted>>,
) {
    let (msgs, replies): (Vec<AcceptMessage>, Vec<Reply<Accepted>>) = batch.into_iter().unzip();
    let outcome = transaction(pool, &msgs, run).await;
    let answers = match outcome {
        Ok(answers) => answers,
        Err(e) => {
            tracing::debug!(error = %e, messages = msgs.len(), "batched accept failed; accepting one by one");
            vec![None; msgs.len()]
        }
    };
    for ((msg, reply), answer) in msgs.into_iter().zip(replies).zip(answers) {
        let answer = match answer {
            Some(a) => Ok(a),
            None => super::store::accept_alone(pool, msg).await,
        };
        let _ = reply.send(answer);
    }
}

/// The batch's statements; `None` for a message left to the one-by-one path.
async fn accept_batch(conn: &mut PgConnection, msgs: &[AcceptMessage]) -> Result<Vec<Option<Accepted>>, StoreError> {
    let mut out: Vec<Option<Accepted>> = vec![None; msgs.len()];
    let mut live = known_instances(conn, msgs).await?;
    for (i, answer) in out.iter_mut().enumerate() {
        if !live.contains(&i) {
            *answer = Some(Accepted::UnknownInstance);
        }
    }
    claim_keys(conn, msgs, &mut live).await?;
    // What is left is new: chat sequences, then the rows.
    let new: Vec<usize> = {
        let mut v: Vec<usize> = live.into_iter().collect();
        v.sort_unstable();
        v
    };
    if new.is_empty() {
        return Ok(out);
    }
    let chats: Vec<(&str, String)> =
        new.iter().map(|&i| (msgs[i].request.instance_id.as_str(), msgs[i].request.to.key())).collect();
    let chat_seqs = rows::next_chat_seqs(&mut *conn, &chats).await?;
    let seqs = insert_messages(conn, msgs, &new, &chat_seqs).await?;
    let refs: Vec<MessageRef> = new
        .iter()
        .zip(&chat_seqs)
        .map(|(&i, &chat_seq)| MessageRef {
            id: msgs[i].id.to_string(),
            tenant_id: msgs[i].tenant_id.to_string(),
            instance_id: msgs[i].request.instance_id.to_string(),
            chat_seq,
        })
        .collect();
    let details: Vec<StatusDetail> =
        new.iter().map(|&i| StatusDetail { next_attempt_at: scheduled(&msgs[i]), ..detail() }).collect();
    let events: Vec<_> =
        new.iter().zip(&refs).zip(&details).map(|((&i, r), d)| (r, status_of(&msgs[i]), d, msgs[i].now)).collect();
    rows::insert_status_events(&mut *conn, &events).await?;
    enqueue(conn, msgs, &new, &seqs).await?;
    for &i in &new {
        out[i] = Some(Accepted::New { id: msgs[i].id.clone(), status: status_of(&msgs[i]) });
    }
    Ok(out)
}

/// When an accepted message is to be sent, if later than now.
pub(super) fn scheduled(m: &AcceptMessage) -> Option<Timestamp> {
    m.request.send_at.filter(|t| *t > m.now)
}

pub(super) fn status_of(m: &AcceptMessage) -> MessageStatus {
    if scheduled(m).is_some() { MessageStatus::Scheduled } else { MessageStatus::Queued }
}

/// The queue chat of an accepted message. A scheduled message is ordered by
/// its send time, not by acceptance, so it gets a chat lane of its own and
/// never holds back the chat.
pub(super) fn queue_chat(m: &AcceptMessage) -> String {
    match scheduled(m) {
        Some(_) => format!("{}#{}", m.request.to.key(), m.id),
        None => m.request.to.key(),
    }
}

/// Indexes of the messages whose instance exists for their tenant; those
/// instances are locked `FOR SHARE` (a concurrent delete waits for this
/// batch, then cancels its messages with the instance's others).
async fn known_instances(conn: &mut PgConnection, msgs: &[AcceptMessage]) -> Result<HashSet<usize>, StoreError> {
    let ids: Vec<&str> = msgs.iter().map(|m| m.request.instance_id.as_str()).collect();
    let tenants: Vec<&str> = msgs.iter().map(|m| m.tenant_id.as_str()).collect();
    let rows = sqlx::query(
        "SELECT i.id, i.tenant_id FROM instances i \
         WHERE (i.id, i.tenant_id) IN (SELECT * FROM UNNEST($1::text[], $2::text[])) AND i.deleted_at IS NULL \
         ORDER BY i.id FOR SHARE",
    )
    .bind(&ids)
    .bind(&tenants)
    .fetch_all(&mut *conn)
    .await?;
    let known: HashSet<(String, String)> =
        rows.iter().map(|r| Ok((r.try_get("id")?, r.try_get("tenant_id")?))).collect::<Result<_, StoreError>>()?;
    Ok((0..msgs.len()).filter(|&i| known.contains(&(ids[i].to_owned(), tenants[i].to_owned()))).collect())
}

/// Inserts the Idempotency-Keys of `live` messages; a key that was there
/// already, or comes twice in the batch, leaves its message to the
/// one-by-one path (which answers the replay or the conflict).
async fn claim_keys(
    conn: &mut PgConnection,
    msgs: &[AcceptMessage],
    live: &mut HashSet<usize>,
) -> Result<(), StoreError> {
    let mut seen = HashSet::new();
    let mut keyed = Vec::new();
    let mut sorted: Vec<usize> = live.iter().copied().collect();
    sorted.sort_unstable();
    for i in sorted {
        if let Some(k) = &msgs[i].idempotency {
            if seen.insert((msgs[i].tenant_id.as_str(), k.key.as_str())) {
                keyed.push(i);
            } else {
                live.remove(&i);
            }
        }
    }
    if keyed.is_empty() {
        return Ok(());
    }
    let key = |i: &usize| msgs[*i].idempotency.as_ref().expect("keyed");
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (tenant_id, key, fingerprint, message_id, created_at) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::text[], $5::bigint[]) \
         ON CONFLICT (tenant_id, key) DO NOTHING RETURNING message_id",
    )
    .bind(keyed.iter().map(|i| msgs[*i].tenant_id.as_str()).collect::<Vec<_>>())
    .bind(keyed.iter().map(|i| key(i).key.as_str()).collect::<Vec<_>>())
    .bind(keyed.iter().map(|i| key(i).fingerprint.to_vec()).collect::<Vec<_>>())
    .bind(keyed.iter().map(|i| msgs[*i].id.as_str()).collect::<Vec<_>>())
    .bind(keyed.iter().map(|i| msgs[*i].now.as_millis()).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    let fresh: HashSet<String> = inserted.iter().map(|r| r.try_get("message_id")).collect::<Result<_, _>>()?;
    for i in keyed {
        if !fresh.contains(msgs[i].id.as_str()) {
            live.remove(&i);
        }
    }
    Ok(())
}

/// Inserts the message rows; their `seq` (queue order) in `new` order.
async fn insert_messages(
    conn: &mut PgConnection,
    msgs: &[AcceptMessage],
    new: &[usize],
    chat_seqs: &[i64],
) -> Result<Vec<i64>, StoreError> {
    let m = |i: &usize| &msgs[*i];
    let rows = sqlx::query(
        "INSERT INTO messages (id, tenant_id, instance_id, recipient, content, priority, status, chat_seq, \
         send_at, expires_at, created_at, updated_at, reply_to, campaign_id) \
         SELECT id, t, i, r, c, p, s, cs, sa, ea, ca, ca, rt, cmp FROM UNNEST($1::text[], $2::text[], $3::text[], \
           $4::text[], $5::text[], $6::bigint[], $7::text[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], \
           $12::text[], $13::text[]) WITH ORDINALITY AS u(id, t, i, r, c, p, s, cs, sa, ea, ca, rt, cmp, n) ORDER BY n \
         RETURNING id, seq",
    )
    .bind(new.iter().map(|i| m(i).id.as_str()).collect::<Vec<_>>())
    .bind(new.iter().map(|i| m(i).tenant_id.as_str()).collect::<Vec<_>>())
    .bind(new.iter().map(|i| m(i).request.instance_id.as_str()).collect::<Vec<_>>())
    .bind(new.iter().map(|i| m(i).request.to.key()).collect::<Vec<_>>())
    .bind(
        new.iter()
            .map(|i| serde_json::to_string(&m(i).request.content).expect("content serialises"))
            .collect::<Vec<_>>(),
    )
    .bind(new.iter().map(|i| m(i).request.priority.rank()).collect::<Vec<_>>())
    .bind(new.iter().map(|i| status_of(m(i)).as_str()).collect::<Vec<_>>())
    .bind(chat_seqs)
    .bind(new.iter().map(|i| m(i).request.send_at.map(Timestamp::as_millis)).collect::<Vec<_>>())
    .bind(new.iter().map(|i| m(i).request.expires_at.map(Timestamp::as_millis)).collect::<Vec<_>>())
    .bind(new.iter().map(|i| m(i).now.as_millis()).collect::<Vec<_>>())
    .bind(new.iter().map(|i| m(i).request.reply_to.as_deref()).collect::<Vec<_>>())
    .bind(new.iter().map(|i| m(i).campaign_id.as_ref().map(|c| c.as_str())).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    let by_id: HashMap<String, i64> =
        rows.iter().map(|r| Ok((r.try_get("id")?, r.try_get("seq")?))).collect::<Result<_, StoreError>>()?;
    Ok(new.iter().map(|i| by_id[m(i).id.as_str()]).collect())
}

/// The queue entries: each chat's first entry of the batch is its head when
/// the chat has no entry yet (under the chat locks, taken in a fixed order).
async fn enqueue(
    conn: &mut PgConnection,
    msgs: &[AcceptMessage],
    new: &[usize],
    seqs: &[i64],
) -> Result<(), StoreError> {
    let m = |i: &usize| &msgs[*i];
    let chats: Vec<String> = new.iter().map(|i| queue_chat(m(i))).collect();
    let instances: Vec<&str> = new.iter().map(|i| m(i).request.instance_id.as_str()).collect();
    sqlx::query(AssertSqlSafe(format!(
        "SELECT {} FROM (SELECT DISTINCT i, c FROM UNNEST($1::text[], $2::text[]) AS u(i, c) ORDER BY i, c) x",
        rows::lock_chat_sql("i", "c")
    )))
    .bind(&instances)
    .bind(&chats)
    .execute(&mut *conn)
    .await?;
    let now = msgs.iter().map(|m| m.now).max().unwrap_or_else(Timestamp::now);
    sqlx::query(
        "INSERT INTO queue_entries (message_id, tenant_id, instance_id, chat, priority, seq, attempt, visible_at, \
                                    is_head, ready) \
         SELECT id, t, i, c, p, s, 0, v, h, h AND v <= $8 FROM ( \
           SELECT u.*, (row_number() OVER (PARTITION BY u.i, u.c ORDER BY u.s) = 1 \
                        AND NOT EXISTS (SELECT 1 FROM queue_entries q WHERE q.instance_id = u.i AND q.chat = u.c)) AS h \
           FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::bigint[]) \
             AS u(id, t, i, c, p, s, v)) x",
    )
    .bind(new.iter().map(|i| m(i).id.as_str()).collect::<Vec<_>>())
    .bind(new.iter().map(|i| m(i).tenant_id.as_str()).collect::<Vec<_>>())
    .bind(&instances)
    .bind(&chats)
    .bind(new.iter().map(|i| m(i).request.priority.rank()).collect::<Vec<_>>())
    .bind(seqs)
    .bind(new.iter().map(|i| scheduled(m(i)).unwrap_or(m(i).now).as_millis()).collect::<Vec<_>>())
    .bind(now.as_millis())
    .execute(&mut *conn)
    .await?;
    Ok(())
}
