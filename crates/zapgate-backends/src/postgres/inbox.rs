//! `Inbox` on PostgreSQL: a provider POST's dedupe keys, the changes they
//! guard and the events commit together, in one transaction shared by the
//! POSTs that arrive at the same time (and a concurrent re-send of the same
//! event waits on the key, then finds it).

use super::PgBackend;
use super::group_commit::{GroupCommit, Shape, Statements};
use super::rows::{self, MessageRef, insert_instance_event};
use super::store::apply_status;
use crate::inbox::*;
use crate::records::{INBOUND_COLUMNS, account_instance, inbound, stored_state};
use crate::{ProviderStatusReport, StoreError, detail};
use async_trait::async_trait;
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Row};
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::Notify;
use zapgate_domain::event::StatusDetail;
use zapgate_domain::instance_state::Transition;
use zapgate_domain::{EventType, InstanceId, MessageId, MessageStatus, TenantId, Timestamp};

#[async_trait]
impl Inbox for PgBackend {
    async fn ingest_account(&self, kind: &str, account: &str) -> Result<Option<IngestAccount>, StoreError> {
        let mut conn = self.pool().acquire().await?;
        let Some((owner, instances)) = resolve(&mut conn, kind, account).await? else { return Ok(None) };
        sqlx::query(
            "INSERT INTO ingest_secrets (account, secret, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (account) DO NOTHING",
        )
        .bind(account)
        .bind(zapgate_domain::token::random_url_secret(32))
        .bind(Timestamp::now().as_millis())
        .execute(&mut *conn)
        .await?;
        let secret: String = sqlx::query_scalar("SELECT secret FROM ingest_secrets WHERE account = $1")
            .bind(account)
            .fetch_one(&mut *conn)
            .await?;
        Ok(Some(IngestAccount { kind: kind.to_owned(), secret, owner, instances }))
    }

    async fn ingest(&self, items: Vec<InboundItem>, now: Timestamp) -> Result<Vec<InboundOutcome>, StoreError> {
        self.ingests.submit((items, now)).await
    }

    async fn list_inbound(&self, tenant: &TenantId, f: &InboundFilter) -> Result<Vec<InboundRecord>, StoreError> {
        let sql = format!(
            "SELECT {INBOUND_COLUMNS} FROM inbound_messages WHERE tenant_id = $1 \
             AND ($2::text IS NULL OR instance_id = $2) AND ($3::text IS NULL OR chat = $3) \
             AND ($4::text IS NULL OR id < $4) ORDER BY id DESC LIMIT $5"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(f.instance_id.as_ref().map(|i| i.as_str()))
            .bind(f.chat.as_deref())
            .bind(f.before.as_ref().map(|b| b.as_str()))
            .bind(i64::from(f.limit))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(inbound).collect()
    }

    async fn get_inbound(&self, tenant: &TenantId, id: &MessageId) -> Result<Option<InboundRecord>, StoreError> {
        let sql = format!("SELECT {INBOUND_COLUMNS} FROM inbound_messages WHERE id = $1 AND tenant_id = $2");
        let row =
            sqlx::query(AssertSqlSafe(sql)).bind(id.as_str()).bind(tenant.as_str()).fetch_optional(self.pool()).await?;
        row.as_ref().map(inbound).transpose()
    }

    async fn purge_inbound_keys(&self, before: Timestamp, limit: u32) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM inbound_keys WHERE ctid = ANY(ARRAY(\
             SELECT ctid FROM inbound_keys WHERE created_at < $1 LIMIT $2))",
        )
        .bind(before.as_millis())
        .bind(i64::from(limit))
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }
}

/// How provider POSTs are batched: at most 256 in one transaction, 8
/// committing at once.
const SHAPE: Shape = Shape { metric: "zapgate_ingest_batch_size", max_batch: 256, in_flight: 8 };

/// One provider POST: its items, in order, and when it arrived.
type Post = (Vec<InboundItem>, Timestamp);

/// Group commit of ingests (see [`super::group_commit`]): the POSTs that
/// arrive together are taken in in one transaction. New messages — what
/// most POSTs carry — are stored with set-based statements (dedupe keys,
/// chat sequences, rows, events: four statements for the batch); every
/// other item runs its own statements, in its POST's order, in the same
/// transaction. A batch whose transaction fails is run again POST by POST.
pub(super) struct Ingests {
    batches: GroupCommit<Post, Vec<InboundOutcome>>,
}

impl Ingests {
    /// `committed` is notified after each batch (its events wait for fan-out).
    pub fn start(pool: PgPool, committed: Arc<Notify>) -> Self {
        let run: Statements<_, _> = Arc::new(|conn, posts| Box::pin(take_in_batch(conn, posts)));
        Self { batches: GroupCommit::transactional(SHAPE, pool, committed, run) }
    }

    async fn submit(&self, post: Post) -> Result<Vec<InboundOutcome>, StoreError> {
        self.batches.submit(post).await
    }
}

/// A new message the set-based path takes: no attachment to record and not
/// possibly an echo of a send.
fn plain(item: &InboundItem) -> Option<&NewInbound> {
    match &item.event {
        InboundEvent::Message(m) if m.media.is_none() && !m.body.from_me => Some(m),
        _ => None,
    }
}

/// What each POST's items did, in order.
async fn take_in_batch(conn: &mut PgConnection, posts: &[Post]) -> Result<Vec<Vec<InboundOutcome>>, StoreError> {
    let mut outcomes: Vec<Vec<InboundOutcome>> = vec![Vec::new(); posts.len()];
    let mut plain_posts = Vec::new();
    for (p, (items, now)) in posts.iter().enumerate() {
        if items.iter().all(|i| plain(i).is_some()) {
            plain_posts.push(p);
            continue;
        }
        for item in items {
            outcomes[p].push(take_in(conn, item.clone(), *now).await?);
        }
    }
    let news: Vec<(&InboundItem, &NewInbound, Timestamp)> = plain_posts
        .iter()
        .flat_map(|&p| posts[p].0.iter().map(move |i| (i, plain(i).expect("plain"), posts[p].1)))
        .collect();
    let mut received = receive_many(conn, &news).await?.into_iter();
    for &p in &plain_posts {
        outcomes[p].extend(received.by_ref().take(posts[p].0.len()));
    }
    Ok(outcomes)
}

/// New messages, set-based: their dedupe keys (what `take_in` does for
/// each), then [`store_messages`].
async fn receive_many(
    conn: &mut PgConnection,
    news: &[(&InboundItem, &NewInbound, Timestamp)],
) -> Result<Vec<InboundOutcome>, StoreError> {
    let mut out = vec![InboundOutcome::Duplicate; news.len()];
    if news.is_empty() {
        return Ok(out);
    }
    // Dedupe keys, inserted in a fixed order (a provider re-sending while
    // another batch holds the same key must not deadlock); the first item of
    // the batch with a fresh key takes it.
    let keyed: Vec<(&str, String, i64)> = news
        .iter()
        .map(|(i, _, now)| (i.instance_id.as_str(), i.dedupe_key().expect("a message has a key"), now.as_millis()))
        .collect();
    let mut order: Vec<usize> = (0..keyed.len()).collect();
    order.sort_by(|a, b| (keyed[*a].0, &keyed[*a].1).cmp(&(keyed[*b].0, &keyed[*b].1)));
    let rows = sqlx::query(
        "INSERT INTO inbound_keys (instance_id, key, created_at) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[]) ON CONFLICT DO NOTHING RETURNING instance_id, key",
    )
    .bind(order.iter().map(|&n| keyed[n].0).collect::<Vec<_>>())
    .bind(order.iter().map(|&n| keyed[n].1.as_str()).collect::<Vec<_>>())
    .bind(order.iter().map(|&n| keyed[n].2).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    let mut fresh: HashSet<(String, String)> = HashSet::with_capacity(rows.len());
    for r in &rows {
        fresh.insert((r.try_get("instance_id")?, r.try_get("key")?));
    }
    let new: Vec<usize> =
        (0..news.len()).filter(|&n| fresh.remove(&(keyed[n].0.to_owned(), keyed[n].1.clone()))).collect();
    if new.is_empty() {
        return Ok(out);
    }
    let rows: Vec<NewRow> =
        new.iter().map(|&n| (&news[n].0.tenant_id, &news[n].0.instance_id, news[n].1, news[n].2)).collect();
    for (&n, stored) in new.iter().zip(store_messages(conn, &rows).await?) {
        if stored {
            out[n] = InboundOutcome::Received(news[n].1.id.clone());
        }
    }
    Ok(out)
}

/// A new inbound message to store: its tenant, instance, body and arrival.
type NewRow<'a> = (&'a TenantId, &'a InstanceId, &'a NewInbound, Timestamp);

/// Stores new inbound messages whose dedupe keys were fresh — chat
/// sequences, rows and `message.received` events, one statement each for
/// all of them; whether each was stored (one that was not had its dedupe
/// key purged, the message not: a duplicate).
async fn store_messages(conn: &mut PgConnection, news: &[NewRow<'_>]) -> Result<Vec<bool>, StoreError> {
    let chats: Vec<(&str, String)> = news.iter().map(|(_, i, m, _)| (i.as_str(), m.chat.clone())).collect();
    let chat_seqs = rows::next_chat_seqs(&mut *conn, &chats).await?;
    let stored = sqlx::query(
        "INSERT INTO inbound_messages (id, tenant_id, instance_id, chat, sender, sender_name, wa_message_id, \
         from_me, content, context_id, chat_seq, sent_at, created_at) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
           $8::bool[], $9::text[], $10::text[], $11::bigint[], $12::bigint[], $13::bigint[]) \
         ON CONFLICT (instance_id, wa_message_id) DO NOTHING RETURNING id",
    )
    .bind(news.iter().map(|(_, _, m, _)| m.id.as_str()).collect::<Vec<_>>())
    .bind(news.iter().map(|(t, ..)| t.as_str()).collect::<Vec<_>>())
    .bind(news.iter().map(|(_, i, ..)| i.as_str()).collect::<Vec<_>>())
    .bind(news.iter().map(|(_, _, m, _)| m.chat.as_str()).collect::<Vec<_>>())
    .bind(news.iter().map(|(_, _, m, _)| m.body.sender.as_deref()).collect::<Vec<_>>())
    .bind(news.iter().map(|(_, _, m, _)| m.body.sender_name.as_deref()).collect::<Vec<_>>())
    .bind(news.iter().map(|(_, _, m, _)| m.body.wa_message_id.as_str()).collect::<Vec<_>>())
    .bind(news.iter().map(|(_, _, m, _)| m.body.from_me).collect::<Vec<_>>())
    .bind(news.iter().map(|(_, _, m, _)| m.body.content.to_string()).collect::<Vec<_>>())
    .bind(news.iter().map(|(_, _, m, _)| m.body.context_id.as_deref()).collect::<Vec<_>>())
    .bind(&chat_seqs)
    .bind(news.iter().map(|(_, _, m, _)| m.body.sent_at.as_millis()).collect::<Vec<_>>())
    .bind(news.iter().map(|(.., now)| now.as_millis()).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    let stored: HashSet<String> = stored.iter().map(|r| r.try_get("id")).collect::<Result<_, _>>()?;
    let stored: Vec<bool> = news.iter().map(|(_, _, m, _)| stored.contains(m.id.as_str())).collect();
    let (mut refs, mut details, mut ats) = (Vec::new(), Vec::new(), Vec::new());
    for (((tenant, instance, m, now), chat_seq), _) in news.iter().zip(&chat_seqs).zip(&stored).filter(|(_, s)| **s) {
        refs.push(MessageRef {
            id: m.id.to_string(),
            tenant_id: tenant.to_string(),
            instance_id: instance.to_string(),
            chat_seq: *chat_seq,
        });
        details.push(StatusDetail { message: Some(m.body.clone()), ..detail() });
        ats.push(*now);
    }
    let events: Vec<_> =
        refs.iter().zip(&details).zip(&ats).map(|((r, d), at)| (r, MessageStatus::Received, d, *at)).collect();
    rows::insert_events_of(conn, EventType::MessageReceived, &events).await?;
    Ok(stored)
}

type Resolved = (Option<AccountInstance>, Vec<AccountInstance>);

/// The account's instances: a provider server's, or an own-settings
/// instance (with, for the Cloud API, its tenant's other Cloud API numbers).
async fn resolve(conn: &mut PgConnection, kind: &str, account: &str) -> Result<Option<Resolved>, StoreError> {
    if account.starts_with("prv_") {
        let found: Option<String> =
            sqlx::query_scalar("SELECT kind FROM providers WHERE id = $1 AND deleted_at IS NULL")
                .bind(account)
                .fetch_optional(&mut *conn)
                .await?;
        if found.as_deref() != Some(kind) {
            return Ok(None);
        }
        let rows = sqlx::query(
            "SELECT id, tenant_id, provider_config FROM instances WHERE provider_id = $1 AND deleted_at IS NULL",
        )
        .bind(account)
        .fetch_all(&mut *conn)
        .await?;
        return Ok(Some((None, rows.iter().map(account_instance).collect::<Result<_, _>>()?)));
    }
    let row = sqlx::query(
        "SELECT id, tenant_id, provider_config FROM instances \
         WHERE id = $1 AND provider = $2 AND provider_id IS NULL AND deleted_at IS NULL",
    )
    .bind(account)
    .bind(kind)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(owner) = row.as_ref().map(account_instance).transpose()? else { return Ok(None) };
    let instances = if kind == "cloud_api" {
        let rows = sqlx::query(
            "SELECT id, tenant_id, provider_config FROM instances \
             WHERE tenant_id = $1 AND provider = 'cloud_api' AND provider_id IS NULL AND deleted_at IS NULL",
        )
        .bind(owner.tenant_id.as_str())
        .fetch_all(&mut *conn)
        .await?;
        rows.iter().map(account_instance).collect::<Result<_, _>>()?
    } else {
        vec![owner.clone()]
    };
    Ok(Some((Some(owner), instances)))
}

async fn take_in(conn: &mut PgConnection, item: InboundItem, now: Timestamp) -> Result<InboundOutcome, StoreError> {
    if let Some(key) = item.dedupe_key() {
        let fresh = sqlx::query(
            "INSERT INTO inbound_keys (instance_id, key, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(item.instance_id.as_str())
        .bind(key)
        .bind(now.as_millis())
        .execute(&mut *conn)
        .await?
        .rows_affected()
            == 1;
        if !fresh {
            return Ok(InboundOutcome::Duplicate);
        }
    }
    match item.event {
        InboundEvent::Status(report) => {
            let report = ProviderStatusReport { instance_id: Some(item.instance_id), ..report };
            Ok(InboundOutcome::Status(apply_status(conn, report).await?))
        }
        InboundEvent::Message(m) => receive(conn, &item.tenant_id, &item.instance_id, m, now).await,
        InboundEvent::Connection { state, reason, policy, qr } => {
            let (tenant, instance) = (item.tenant_id.as_str(), item.instance_id.as_str());
            if let Some(qr) = qr {
                let detail = StatusDetail { state: Some(state), qr: Some(qr), ..detail() };
                insert_instance_event(conn, EventType::InstanceQr, tenant, instance, &detail, now).await?;
            }
            // The row lock orders concurrent reports of one instance.
            let row = sqlx::query(
                "SELECT state, state_reason, state_changed_at, state_changes FROM instances WHERE id = $1 FOR UPDATE",
            )
            .bind(item.instance_id.as_str())
            .fetch_optional(&mut *conn)
            .await?;
            let Some(current) = row.as_ref().map(stored_state).transpose()? else {
                return Ok(InboundOutcome::Connection(None));
            };
            let Transition::Changed { previous, next } = current.observe(state, reason, now, policy) else {
                return Ok(InboundOutcome::Connection(None));
            };
            sqlx::query(
                "UPDATE instances SET state = $1, state_reason = $2, state_changed_at = $3, state_changes = $4 \
                 WHERE id = $5",
            )
            .bind(next.state.map(|s| s.as_str()))
            .bind(&next.reason)
            .bind(now.as_millis())
            .bind(serde_json::to_string(&next.recent_changes).expect("times serialise"))
            .bind(item.instance_id.as_str())
            .execute(&mut *conn)
            .await?;
            let detail = state_detail(previous, &next);
            insert_instance_event(conn, EventType::InstanceStatus, tenant, instance, &detail, now).await?;
            Ok(InboundOutcome::Connection(next.state))
        }
    }
}

async fn receive(
    conn: &mut PgConnection,
    tenant: &TenantId,
    instance: &InstanceId,
    m: NewInbound,
    now: Timestamp,
) -> Result<InboundOutcome, StoreError> {
    if m.body.from_me {
        let ours = sqlx::query("SELECT 1 FROM messages WHERE provider_message_id = $1 AND instance_id = $2")
            .bind(&m.body.wa_message_id)
            .bind(instance.as_str())
            .fetch_optional(&mut *conn)
            .await?;
        if ours.is_some() {
            return Ok(InboundOutcome::Echo);
        }
    }
    if !store_messages(&mut *conn, &[(tenant, instance, &m, now)]).await?[0] {
        return Ok(InboundOutcome::Duplicate);
    }
    if let Some(media) = &m.media {
        super::media::insert_media(conn, media, now).await?;
    }
    Ok(InboundOutcome::Received(m.id))
}
