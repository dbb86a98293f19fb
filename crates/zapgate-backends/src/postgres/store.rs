//! `Store` on PostgreSQL: the SQLite store's statements, each write in one
//! transaction on the pool.

use super::rows::template;
use super::rows::{self, EVENT_COLUMNS, INSTANCE_COLUMNS, MESSAGE_COLUMNS, MessageRef, NewEntry, insert_event};
use super::{PgBackend, accepts, again, is_unique_violation};
use crate::*;
use async_trait::async_trait;
use sqlx::{AssertSqlSafe, PgConnection, Row};
use zapgate_domain::event::StatusDetail;
use zapgate_domain::status::{FAILED_RANK, SENT_RANK};
use zapgate_domain::{
    EventType, InstanceId, MessageEvent, MessageId, MessageStatus, TemplateId, TenantId, Timestamp, TokenHash, TokenId,
};

#[async_trait]
impl Store for PgBackend {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(self.pool()).await?;
        Ok(())
    }

    async fn create_tenant(
        &self,
        id: TenantId,
        name: String,
        first_token: NewToken,
    ) -> Result<(TenantRecord, TokenRecord), StoreError> {
        let now = Timestamp::now();
        let tenant = TenantRecord { id, name, created_at: now };
        let token = token_record(&tenant.id, &first_token, now);
        let mut tx = self.pool().begin().await?;
        sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(tenant.id.as_str())
            .bind(&tenant.name)
            .bind(now.as_millis())
            .execute(&mut *tx)
            .await?;
        insert_token(&mut tx, &tenant.id, &first_token, now).await?;
        tx.commit().await?;
        Ok((tenant, token))
    }

    async fn list_tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        let rows = sqlx::query("SELECT id, name, created_at FROM tenants ORDER BY id").fetch_all(self.pool()).await?;
        rows.iter().map(rows::tenant).collect()
    }

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<TenantRecord>, StoreError> {
        let row = sqlx::query("SELECT id, name, created_at FROM tenants WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(rows::tenant).transpose()
    }

    async fn create_token(&self, tenant: &TenantId, token: NewToken) -> Result<TokenRecord, StoreError> {
        let now = Timestamp::now();
        let rec = token_record(tenant, &token, now);
        let mut tx = self.pool().begin().await?;
        let known = sqlx::query("SELECT 1 FROM tenants WHERE id = $1").bind(tenant.as_str()).fetch_optional(&mut *tx);
        if known.await?.is_none() {
            return Err(StoreError::NotFound);
        }
        insert_token(&mut tx, tenant, &token, now).await?;
        tx.commit().await?;
        Ok(rec)
    }

    async fn list_tokens(&self, tenant: &TenantId) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, tenant_id, hint, created_at, revoked_at FROM api_tokens WHERE tenant_id = $1 ORDER BY id",
        )
        .bind(tenant.as_str())
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(rows::token).collect()
    }

    async fn revoke_token(&self, tenant: &TenantId, id: &TokenId) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND tenant_id = $3 AND revoked_at IS NULL",
        )
        .bind(Timestamp::now().as_millis())
        .bind(id.as_str())
        .bind(tenant.as_str())
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn tenant_for_token(&self, hash: &TokenHash) -> Result<Option<TenantId>, StoreError> {
        let id: Option<String> =
            sqlx::query_scalar("SELECT tenant_id FROM api_tokens WHERE hash = $1 AND revoked_at IS NULL")
                .bind(&hash.0[..])
                .fetch_optional(self.pool())
                .await?;
        Ok(id.map(TenantId::from_trusted))
    }

    async fn create_instance(&self, new: NewInstance) -> Result<InstanceRecord, StoreError> {
        let r = new.into_record(None);
        insert_instance(&mut *self.pool().acquire().await?, &r).await?;
        Ok(r)
    }

    async fn list_instances(&self, tenant: &TenantId) -> Result<Vec<InstanceRecord>, StoreError> {
        let sql =
            format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE tenant_id = $1 AND deleted_at IS NULL ORDER BY id");
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(tenant.as_str()).fetch_all(self.pool()).await?;
        rows.iter().map(rows::instance).collect()
    }

    async fn get_instance(&self, tenant: &TenantId, id: &InstanceId) -> Result<Option<InstanceRecord>, StoreError> {
        Ok(self.find_instance(id).await?.filter(|i| &i.tenant_id == tenant))
    }

    async fn find_instance(&self, id: &InstanceId) -> Result<Option<InstanceRecord>, StoreError> {
        let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = $1 AND deleted_at IS NULL");
        let row = sqlx::query(AssertSqlSafe(sql)).bind(id.as_str()).fetch_optional(self.pool()).await?;
        row.as_ref().map(rows::instance).transpose()
    }

    async fn all_instances(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE deleted_at IS NULL ORDER BY id");
        let rows = sqlx::query(AssertSqlSafe(sql)).fetch_all(self.pool()).await?;
        rows.iter().map(rows::instance).collect()
    }

    async fn update_instance(
        &self,
        tenant: &TenantId,
        id: &InstanceId,
        change: InstanceChange,
    ) -> Result<Option<InstanceRecord>, StoreError> {
        let sql = format!(
            "UPDATE instances SET name = COALESCE($1, name), rate_per_sec = COALESCE($2, rate_per_sec), \
             burst = COALESCE($3, burst), phone_number = COALESCE($6, phone_number) \
             WHERE id = $4 AND tenant_id = $5 AND deleted_at IS NULL RETURNING {INSTANCE_COLUMNS}"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(change.name)
            .bind(change.rate_per_sec.map(i64::from))
            .bind(change.burst.map(i64::from))
            .bind(id.as_str())
            .bind(tenant.as_str())
            .bind(change.phone_number)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(rows::instance).transpose()
    }

    async fn set_provider_config(&self, id: &InstanceId, config: serde_json::Value) -> Result<(), StoreError> {
        sqlx::query("UPDATE instances SET provider_config = $1 WHERE id = $2")
            .bind(config.to_string())
            .bind(id.as_str())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn accept(&self, msg: AcceptMessage) -> Result<Accepted, StoreError> {
        // Group commit: see `accepts.rs`.
        let accepted = self.accepts.accept(msg).await?;
        crash_point("after_commit");
        if matches!(accepted, Accepted::New { .. }) {
            self.wake();
        }
        Ok(accepted)
    }

    async fn get_message(&self, tenant: &TenantId, id: &MessageId) -> Result<Option<MessageRecord>, StoreError> {
        let sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1 AND tenant_id = $2");
        let row =
            sqlx::query(AssertSqlSafe(sql)).bind(id.as_str()).bind(tenant.as_str()).fetch_optional(self.pool()).await?;
        row.as_ref().map(rows::message).transpose()
    }

    async fn message_history(&self, tenant: &TenantId, id: &MessageId) -> Result<Vec<MessageEvent>, StoreError> {
        let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE message_id = $1 AND tenant_id = $2 ORDER BY seq");
        let rows =
            sqlx::query(AssertSqlSafe(sql)).bind(id.as_str()).bind(tenant.as_str()).fetch_all(self.pool()).await?;
        rows.iter().map(rows::event).collect()
    }

    async fn list_messages(&self, tenant: &TenantId, f: &MessageFilter) -> Result<Vec<MessageRecord>, StoreError> {
        // Every filter is bound; an unset one is NULL and matches everything.
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE tenant_id = $1 \
               AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR recipient = $3) \
               AND ($4::text IS NULL OR instance_id = $4) AND ($5::bigint IS NULL OR created_at >= $5) \
               AND ($6::bigint IS NULL OR created_at < $6) AND ($7::text IS NULL OR id < $7) \
             ORDER BY id DESC LIMIT $8"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(f.status.map(|s| s.as_str()))
            .bind(f.recipient.as_ref().map(|r| r.key()))
            .bind(f.instance_id.as_ref().map(|i| i.to_string()))
            .bind(f.since.map(Timestamp::as_millis))
            .bind(f.until.map(Timestamp::as_millis))
            .bind(f.before.as_ref().map(|b| b.to_string()))
            .bind(i64::from(f.limit))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(rows::message).collect()
    }

    async fn begin_sending(&self, claims: &[(MessageId, u32)], now: Timestamp) -> Result<BeginSending, StoreError> {
        let mut tx = self.pool().begin().await?;
        let out = begin_sending(&mut tx, claims, now, Claimed::FromTable).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn record_outcome(&self, outcome: SendOutcome) -> Result<OutcomeApplied, StoreError> {
        self.outcomes.record(outcome).await
    }

    async fn apply_provider_status(&self, report: ProviderStatusReport) -> Result<StatusApplied, StoreError> {
        let mut tx = self.pool().begin().await?;
        let applied = apply_status(&mut tx, report).await?;
        tx.commit().await?;
        self.wake();
        Ok(applied)
    }

    async fn cancel_message(&self, tenant: &TenantId, id: &MessageId, now: Timestamp) -> Result<Cancel, StoreError> {
        let mut tries = 0;
        loop {
            let r = self.cancel_once(tenant, id, now).await;
            if !again(&r, &mut tries).await {
                return r;
            }
        }
    }

    async fn delete_instance(&self, tenant: &TenantId, id: &InstanceId, now: Timestamp) -> Result<bool, StoreError> {
        let mut tries = 0;
        loop {
            let r = self.delete_instance_once(tenant, id, now).await;
            if !again(&r, &mut tries).await {
                return r;
            }
        }
    }

    async fn replay_dead(&self, tenant: &TenantId, id: &MessageId, now: Timestamp) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query(
            "UPDATE messages SET status = 'queued', status_rank = 0, attempts = 0, error_code = NULL, \
             error_message = NULL, next_attempt_at = NULL, updated_at = $1 \
             WHERE id = $2 AND tenant_id = $3 AND status = 'dead' \
               AND instance_id IN (SELECT id FROM instances WHERE deleted_at IS NULL FOR SHARE) \
             RETURNING id, tenant_id, instance_id, chat_seq, recipient, priority, seq",
        )
        .bind(now.as_millis())
        .bind(id.as_str())
        .bind(tenant.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(false) };
        let m = MessageRef::from_row(&row)?;
        let (chat, priority, seq): (String, i64, i64) =
            (row.try_get("recipient")?, row.try_get("priority")?, row.try_get("seq")?);
        let detail = StatusDetail { reason: Some("replayed from dead letters".into()), ..detail() };
        insert_event(&mut tx, &m, MessageStatus::Queued, &detail, now).await?;
        let entry = NewEntry {
            message_id: &m.id,
            tenant_id: &m.tenant_id,
            instance_id: &m.instance_id,
            chat: &chat,
            priority,
            seq,
            attempt: 0,
            visible_at: now.as_millis(),
        };
        rows::enqueue(&mut tx, entry, now).await?;
        tx.commit().await?;
        self.wake();
        Ok(true)
    }

    async fn create_template(&self, t: TemplateRecord) -> Result<TemplateRecord, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO templates (id, tenant_id, name, kind, body, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(t.id.as_str())
        .bind(t.tenant_id.as_str())
        .bind(&t.name)
        .bind(t.kind.as_str())
        .bind(t.stored_body())
        .bind(t.created_at.as_millis())
        .execute(self.pool())
        .await;
        match inserted {
            Ok(_) => Ok(t),
            Err(e) if is_unique_violation(&e) => {
                Err(StoreError::Conflict(format!("a template named {:?} exists", t.name)))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn list_templates(&self, tenant: &TenantId) -> Result<Vec<TemplateRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, tenant_id, name, kind, body, created_at FROM templates WHERE tenant_id = $1 AND deleted_at IS NULL \
             ORDER BY name",
        )
        .bind(tenant.as_str())
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(template).collect()
    }

    async fn get_template(&self, tenant: &TenantId, id: &TemplateId) -> Result<Option<TemplateRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, tenant_id, name, kind, body, created_at FROM templates WHERE id = $1 AND tenant_id = $2 \
             AND deleted_at IS NULL",
        )
        .bind(id.as_str())
        .bind(tenant.as_str())
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(template).transpose()
    }

    async fn delete_template(&self, tenant: &TenantId, id: &TemplateId) -> Result<bool, StoreError> {
        let n =
            sqlx::query("UPDATE templates SET deleted_at = $1 WHERE id = $2 AND tenant_id = $3 AND deleted_at IS NULL")
                .bind(Timestamp::now().as_millis())
                .bind(id.as_str())
                .bind(tenant.as_str())
                .execute(self.pool())
                .await?
                .rows_affected();
        Ok(n == 1)
    }

    async fn raise_ack_timeouts(&self, sent_before: Timestamp, now: Timestamp, limit: u32) -> Result<u64, StoreError> {
        let mut tx = self.pool().begin().await?;
        // SKIP LOCKED: with several schedulers running, each late message is
        // raised by one of them, once.
        let late = sqlx::query(
            "UPDATE messages SET ack_timeout_at = $1 WHERE id IN ( \
               SELECT id FROM messages WHERE status = 'sent' AND ack_timeout_at IS NULL AND updated_at < $2 \
               ORDER BY updated_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING id, tenant_id, instance_id, chat_seq, provider_message_id",
        )
        .bind(now.as_millis())
        .bind(sent_before.as_millis())
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        for row in &late {
            let m = MessageRef::from_row(row)?;
            let detail = StatusDetail {
                provider_message_id: row.try_get("provider_message_id")?,
                reason: Some("no delivery report from the provider yet".into()),
                ..detail()
            };
            rows::insert_event_of(&mut tx, EventType::MessageAckTimeout, &m, MessageStatus::Sent, &detail, now).await?;
        }
        tx.commit().await?;
        if !late.is_empty() {
            self.wake();
        }
        Ok(late.len() as u64)
    }

    async fn purge_expired(&self, keys_before: Timestamp, parked_before: Timestamp) -> Result<u64, StoreError> {
        let a = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
            .bind(keys_before.as_millis())
            .execute(self.pool())
            .await?
            .rows_affected();
        let b = sqlx::query("DELETE FROM parked_statuses WHERE received_at < $1")
            .bind(parked_before.as_millis())
            .execute(self.pool())
            .await?
            .rows_affected();
        Ok(a + b)
    }
}

impl PgBackend {
    async fn delete_instance_once(
        &self,
        tenant: &TenantId,
        id: &InstanceId,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let n =
            sqlx::query("UPDATE instances SET deleted_at = $1 WHERE id = $2 AND tenant_id = $3 AND deleted_at IS NULL")
                .bind(now.as_millis())
                .bind(id.as_str())
                .bind(tenant.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        // Queue entries before messages, the order claims take them in (no deadlock).
        sqlx::query("SELECT 1 FROM queue_entries WHERE instance_id = $1 ORDER BY message_id FOR UPDATE")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        // Messages not yet handed to the provider will never be sent now.
        let cancelled = sqlx::query(
            "UPDATE messages SET status = 'cancelled', updated_at = $1, error_code = 'instance_deleted', \
             error_message = 'the instance was deleted before the message was sent' \
             WHERE instance_id = $2 AND status IN ('scheduled','queued','retry_wait') \
             RETURNING id, tenant_id, instance_id, chat_seq",
        )
        .bind(now.as_millis())
        .bind(id.as_str())
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(MessageRef::from_row)
        .collect::<Result<Vec<_>, _>>()?;
        let detail = StatusDetail { reason: Some("instance deleted".into()), ..detail() };
        let events: Vec<_> = cancelled.iter().map(|m| (m, detail.clone())).collect();
        rows::insert_events(&mut tx, &events, MessageStatus::Cancelled, now).await?;
        // The instance is gone: its whole queue goes with it (no heads to promote).
        sqlx::query("DELETE FROM queue_entries WHERE instance_id = $1 AND message_id = ANY($2)")
            .bind(id.as_str())
            .bind(cancelled.iter().map(|m| m.id.clone()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.wake();
        Ok(true)
    }

    async fn cancel_once(&self, tenant: &TenantId, id: &MessageId, now: Timestamp) -> Result<Cancel, StoreError> {
        let mut tx = self.pool().begin().await?;
        // Lock order: chat, queue entry, message (as claims and settles take them).
        rows::lock_chat_of(&mut tx, id.as_str()).await?;
        sqlx::query("SELECT 1 FROM queue_entries WHERE message_id = $1 FOR UPDATE")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        let cancelled = sqlx::query(
            "UPDATE messages SET status = 'cancelled', updated_at = $1, next_attempt_at = NULL \
             WHERE id = $2 AND tenant_id = $3 AND status IN ('scheduled','queued','retry_wait') \
             RETURNING id, tenant_id, instance_id, chat_seq",
        )
        .bind(now.as_millis())
        .bind(id.as_str())
        .bind(tenant.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = cancelled {
            let m = MessageRef::from_row(&row)?;
            let detail = StatusDetail { reason: Some("cancelled by the tenant".into()), ..detail() };
            insert_event(&mut tx, &m, MessageStatus::Cancelled, &detail, now).await?;
            rows::dequeue(&mut tx, &[m.id.as_str()], now).await?;
            tx.commit().await?;
            self.wake();
            return Ok(Cancel::Cancelled);
        }
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM messages WHERE id = $1 AND tenant_id = $2")
            .bind(id.as_str())
            .bind(tenant.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        match status {
            None => Ok(Cancel::NotFound),
            Some(s) => Ok(Cancel::TooLate(s.parse().map_err(StoreError::Corrupt)?)),
        }
    }
}

fn token_record(tenant: &TenantId, t: &NewToken, now: Timestamp) -> TokenRecord {
    TokenRecord { id: t.id.clone(), tenant_id: tenant.clone(), hint: t.hint.clone(), created_at: now, revoked_at: None }
}

async fn insert_token(
    conn: &mut PgConnection,
    tenant: &TenantId,
    t: &NewToken,
    now: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO api_tokens (id, tenant_id, hash, hint, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(t.id.as_str())
        .bind(tenant.as_str())
        .bind(&t.hash.0[..])
        .bind(&t.hint)
        .bind(now.as_millis())
        .execute(conn)
        .await?;
    Ok(())
}

/// One accept in a transaction of its own: what a batch falls back to.
pub(super) async fn accept_alone(pool: &sqlx::PgPool, msg: AcceptMessage) -> Result<Accepted, StoreError> {
    let mut tries = 0;
    loop {
        let r = async {
            let mut tx = pool.begin().await?;
            let accepted = accept(&mut tx, msg.clone()).await?;
            tx.commit().await?;
            Ok(accepted)
        }
        .await;
        if !again(&r, &mut tries).await {
            return r;
        }
    }
}

async fn accept(conn: &mut PgConnection, msg: AcceptMessage) -> Result<Accepted, StoreError> {
    let req = &msg.request;
    // FOR SHARE: a concurrent delete_instance either commits first (and this
    // sees the instance gone) or waits until this accept is committed (and
    // then cancels the message with the instance's others).
    let known =
        sqlx::query("SELECT 1 FROM instances WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL FOR SHARE")
            .bind(req.instance_id.as_str())
            .bind(msg.tenant_id.as_str())
            .fetch_optional(&mut *conn)
            .await?;
    if known.is_none() {
        return Ok(Accepted::UnknownInstance);
    }
    if let Some(key) = &msg.idempotency {
        // Insert first: a concurrent request with the same key waits here
        // for ours to commit, then finds the key taken.
        let fresh = sqlx::query(
            "INSERT INTO idempotency_keys (tenant_id, key, fingerprint, message_id, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, key) DO NOTHING",
        )
        .bind(msg.tenant_id.as_str())
        .bind(&key.key)
        .bind(&key.fingerprint[..])
        .bind(msg.id.as_str())
        .bind(msg.now.as_millis())
        .execute(&mut *conn)
        .await?
        .rows_affected()
            == 1;
        if !fresh {
            let seen = sqlx::query(
                "SELECT k.fingerprint, k.message_id, \
                 (SELECT status FROM events e WHERE e.message_id = k.message_id ORDER BY seq LIMIT 1) AS status \
                 FROM idempotency_keys k WHERE k.tenant_id = $1 AND k.key = $2",
            )
            .bind(msg.tenant_id.as_str())
            .bind(&key.key)
            .fetch_one(&mut *conn)
            .await?;
            let fp: Vec<u8> = seen.try_get("fingerprint")?;
            if fp != key.fingerprint {
                return Ok(Accepted::KeyReused);
            }
            let status: String = seen.try_get("status")?;
            return Ok(Accepted::Replayed {
                id: MessageId::from_trusted(seen.try_get("message_id")?),
                status: status.parse().map_err(StoreError::Corrupt)?,
            });
        }
    }
    let chat = req.to.key();
    let chat_seq: i64 = sqlx::query_scalar(
        "INSERT INTO chats (instance_id, chat, last_seq) VALUES ($1, $2, 1) \
         ON CONFLICT (instance_id, chat) DO UPDATE SET last_seq = chats.last_seq + 1 RETURNING last_seq",
    )
    .bind(req.instance_id.as_str())
    .bind(&chat)
    .fetch_one(&mut *conn)
    .await?;
    let (scheduled, status) = (accepts::scheduled(&msg), accepts::status_of(&msg));
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO messages (id, tenant_id, instance_id, recipient, content, priority, status, chat_seq, \
         send_at, expires_at, created_at, updated_at, reply_to, campaign_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12, $13) RETURNING seq",
    )
    .bind(msg.id.as_str())
    .bind(msg.tenant_id.as_str())
    .bind(req.instance_id.as_str())
    .bind(&chat)
    .bind(serde_json::to_string(&req.content).expect("content serialises"))
    .bind(req.priority.rank())
    .bind(status.as_str())
    .bind(chat_seq)
    .bind(req.send_at.map(Timestamp::as_millis))
    .bind(req.expires_at.map(Timestamp::as_millis))
    .bind(msg.now.as_millis())
    .bind(req.reply_to.as_deref())
    .bind(msg.campaign_id.as_ref().map(|c| c.as_str()))
    .fetch_one(&mut *conn)
    .await?;
    let m = MessageRef {
        id: msg.id.to_string(),
        tenant_id: msg.tenant_id.to_string(),
        instance_id: req.instance_id.to_string(),
        chat_seq,
    };
    let detail = StatusDetail { next_attempt_at: scheduled, ..detail() };
    insert_event(&mut *conn, &m, status, &detail, msg.now).await?;
    let queue_chat = accepts::queue_chat(&msg);
    let entry = NewEntry {
        message_id: &m.id,
        tenant_id: &m.tenant_id,
        instance_id: &m.instance_id,
        chat: &queue_chat,
        priority: req.priority.rank(),
        seq,
        attempt: 0,
        visible_at: scheduled.unwrap_or(msg.now).as_millis(),
    };
    rows::enqueue(&mut *conn, entry, msg.now).await?;
    Ok(Accepted::New { id: msg.id, status })
}

/// The `→ sending` compare-and-set for a whole claim round: one UPDATE and
/// one multi-row event INSERT.
/// Which messages of a compare-and-set may move to `sending`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Claimed {
    /// Claimed from the queue table (the claim already checked the entry).
    FromTable,
    /// Delivered by the broker: only while the entry is published (in the
    /// broker or being relayed), so a stale copy of a message that went back
    /// to the table, or that waits for a retry, is dropped.
    FromBroker,
}

pub(super) async fn begin_sending(
    conn: &mut PgConnection,
    claims: &[(MessageId, u32)],
    now: Timestamp,
    claimed: Claimed,
) -> Result<BeginSending, StoreError> {
    let mut out = BeginSending { won: Vec::with_capacity(claims.len()), finished: Vec::new() };
    if claims.is_empty() {
        return Ok(out);
    }
    let ids: Vec<String> = claims.iter().map(|(id, _)| id.to_string()).collect();
    let attempts: Vec<i64> = claims.iter().map(|(_, a)| i64::from(*a)).collect();
    let sql = format!(
        "UPDATE messages m SET status = 'sending', updated_at = $1 \
         FROM UNNEST($2::text[], $3::bigint[]) AS c(id, attempt) \
         WHERE m.id = c.id AND m.attempts = c.attempt AND m.status IN ('queued','scheduled','retry_wait') {} \
         RETURNING {}",
        match claimed {
            Claimed::FromTable => "",
            Claimed::FromBroker =>
                "AND EXISTS (SELECT 1 FROM queue_entries q WHERE q.message_id = m.id AND q.lease_owner <= 0)",
        },
        MESSAGE_COLUMNS.split(", ").map(|c| format!("m.{c}")).collect::<Vec<_>>().join(", ")
    );
    let rows =
        sqlx::query(AssertSqlSafe(sql)).bind(now.as_millis()).bind(&ids).bind(&attempts).fetch_all(&mut *conn).await?;
    out.won = rows.iter().map(rows::message).collect::<Result<_, _>>()?;
    let refs: Vec<MessageRef> = out
        .won
        .iter()
        .map(|m| MessageRef {
            id: m.id.to_string(),
            tenant_id: m.tenant_id.to_string(),
            instance_id: m.instance_id.to_string(),
            chat_seq: m.chat_seq,
        })
        .collect();
    let events: Vec<_> =
        refs.iter().zip(&out.won).map(|(r, m)| (r, StatusDetail { attempts: Some(m.attempts), ..detail() })).collect();
    rows::insert_events(&mut *conn, &events, MessageStatus::Sending, now).await?;
    // Keep claim order (RETURNING order is unspecified).
    let rank: std::collections::HashMap<&MessageId, usize> =
        claims.iter().enumerate().map(|(i, (id, _))| (id, i)).collect();
    out.won.sort_by_key(|m| rank.get(&m.id).copied().unwrap_or(usize::MAX));
    if out.won.len() < claims.len() {
        let won: std::collections::HashSet<MessageId> = out.won.iter().map(|m| m.id.clone()).collect();
        for (id, _) in claims.iter().filter(|(id, _)| !won.contains(id)) {
            let status: Option<String> = sqlx::query_scalar("SELECT status FROM messages WHERE id = $1")
                .bind(id.as_str())
                .fetch_optional(&mut *conn)
                .await?;
            if status.and_then(|s| s.parse::<MessageStatus>().ok()).is_none_or(|s| s.leaves_queue()) {
                out.finished.push(id.clone());
            }
        }
    }
    Ok(out)
}

/// Serialises "store the send result" and "apply a status" for one provider
/// message id: without it a status could be parked while the send result
/// commits, and neither would see the other. Many ids are locked in a fixed
/// order, so two batches cannot deadlock on them.
pub(super) async fn lock_provider_ids(
    conn: &mut PgConnection,
    provider_message_ids: &[&str],
) -> Result<(), StoreError> {
    if provider_message_ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended(p, 1)) \
         FROM (SELECT DISTINCT p FROM UNNEST($1::text[]) AS u(p) ORDER BY p) x",
    )
    .bind(provider_message_ids)
    .execute(conn)
    .await?;
    Ok(())
}

pub(super) async fn apply_status(
    conn: &mut PgConnection,
    r: ProviderStatusReport,
) -> Result<StatusApplied, StoreError> {
    lock_provider_ids(&mut *conn, &[r.provider_message_id.as_str()]).await?;
    let found = sqlx::query(
        "SELECT id, tenant_id, instance_id, chat_seq FROM messages \
         WHERE provider_message_id = $1 AND ($2::text IS NULL OR instance_id = $2)",
    )
    .bind(&r.provider_message_id)
    .bind(r.instance_id.as_ref().map(|i| i.as_str()))
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = found else {
        sqlx::query(
            "INSERT INTO parked_statuses (provider_message_id, status, at, error_code, error_message, received_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&r.provider_message_id)
        .bind(r.status.as_str())
        .bind(r.at.as_millis())
        .bind(&r.error_code)
        .bind(&r.error_message)
        .bind(Timestamp::now().as_millis())
        .execute(&mut *conn)
        .await?;
        return Ok(StatusApplied::Parked);
    };
    let m = MessageRef::from_row(&row)?;
    // The forward-only rule as one conditional update: `failed` only over
    // rank <= sent; anything else only over a lower rank and never over failed.
    let changed = sqlx::query(
        "UPDATE messages SET status = $1, status_rank = $2, updated_at = $3, \
         error_code = COALESCE($4, error_code), error_message = COALESCE($5, error_message) \
         WHERE id = $6 AND (($2 = $7 AND status_rank <= $8) OR ($2 < $7 AND status_rank < $2))",
    )
    .bind(r.status.as_str())
    .bind(r.status.rank())
    .bind(r.at.as_millis())
    .bind(&r.error_code)
    .bind(&r.error_message)
    .bind(&m.id)
    .bind(FAILED_RANK)
    .bind(SENT_RANK)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    let detail = StatusDetail {
        provider_message_id: Some(r.provider_message_id.clone()),
        error_code: r.error_code,
        reason: r.error_message,
        applied: changed,
        ..detail()
    };
    insert_event(conn, &m, r.status, &detail, r.at).await?;
    Ok(if changed { StatusApplied::Applied } else { StatusApplied::Ignored })
}

pub(super) async fn insert_instance(conn: &mut sqlx::PgConnection, r: &InstanceRecord) -> Result<(), StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO instances (id, tenant_id, name, provider, provider_id, phone_number_id, waba_id, rate_per_sec, \
         burst, provider_config, created_at, phone_number) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(r.id.as_str())
    .bind(r.tenant_id.as_str())
    .bind(&r.name)
    .bind(&r.provider)
    .bind(r.provider_id.as_ref().map(|p| p.as_str()))
    .bind(&r.phone_number_id)
    .bind(&r.waba_id)
    .bind(i64::from(r.rate_per_sec))
    .bind(i64::from(r.burst))
    .bind(r.provider_config.to_string())
    .bind(r.created_at.as_millis())
    .bind(&r.phone_number)
    .execute(conn)
    .await;
    match inserted {
        Ok(_) => Ok(()),
        Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict("phone_number_id is already used".into())),
        Err(e) => Err(e.into()),
    }
}
