//! `Inbox` on PostgreSQL: one provider POST is one transaction, so its
//! dedupe keys, the changes they guard and the events commit together (and
//! a concurrent re-send of the same event waits on the key, then finds it).

use super::rows::{MessageRef, insert_event_of, insert_instance_event};
use super::store::apply_status;
use super::{PgBackend, again};
use crate::inbox::*;
use crate::records::{INBOUND_COLUMNS, account_instance, inbound, stored_state};
use crate::{ProviderStatusReport, StoreError, detail};
use async_trait::async_trait;
use sqlx::{AssertSqlSafe, PgConnection, Row};
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
        let mut tries = 0;
        loop {
            let r = self.ingest_once(&items, now).await;
            if !again(&r, &mut tries).await {
                if r.is_ok() {
                    self.wake();
                }
                return r;
            }
        }
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

impl PgBackend {
    async fn ingest_once(&self, items: &[InboundItem], now: Timestamp) -> Result<Vec<InboundOutcome>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let mut outcomes = Vec::with_capacity(items.len());
        for item in items {
            outcomes.push(take_in(&mut tx, item.clone(), now).await?);
        }
        tx.commit().await?;
        Ok(outcomes)
    }
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
    let chat_seq: i64 = sqlx::query(
        "INSERT INTO chats (instance_id, chat, last_seq) VALUES ($1, $2, 1) \
         ON CONFLICT (instance_id, chat) DO UPDATE SET last_seq = chats.last_seq + 1 RETURNING last_seq",
    )
    .bind(instance.as_str())
    .bind(&m.chat)
    .fetch_one(&mut *conn)
    .await?
    .try_get(0)?;
    let b = &m.body;
    let stored = sqlx::query(
        "INSERT INTO inbound_messages (id, tenant_id, instance_id, chat, sender, sender_name, wa_message_id, \
         from_me, content, context_id, chat_seq, sent_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
         ON CONFLICT (instance_id, wa_message_id) DO NOTHING",
    )
    .bind(m.id.as_str())
    .bind(tenant.as_str())
    .bind(instance.as_str())
    .bind(&m.chat)
    .bind(&b.sender)
    .bind(&b.sender_name)
    .bind(&b.wa_message_id)
    .bind(b.from_me)
    .bind(b.content.to_string())
    .bind(&b.context_id)
    .bind(chat_seq)
    .bind(b.sent_at.as_millis())
    .bind(now.as_millis())
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if !stored {
        // Its dedupe key was purged, the message was not.
        return Ok(InboundOutcome::Duplicate);
    }
    if let Some(media) = &m.media {
        super::media::insert_media(conn, media, now).await?;
    }
    let msg =
        MessageRef { id: m.id.to_string(), tenant_id: tenant.to_string(), instance_id: instance.to_string(), chat_seq };
    let detail = StatusDetail { message: Some(m.body), ..detail() };
    insert_event_of(conn, EventType::MessageReceived, &msg, MessageStatus::Received, &detail, now).await?;
    Ok(InboundOutcome::Received(m.id))
}
