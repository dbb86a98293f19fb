//! `Store` on SQLite. Writes run as jobs of the group-committing writer;
//! reads go to the read pool.

use super::SqliteBackend;
use super::rows::{self, INSTANCE_COLUMNS, MESSAGE_COLUMNS, MessageRef, insert_event};
use crate::*;
use async_trait::async_trait;
use sqlx::{AssertSqlSafe, QueryBuilder, Row, Sqlite, SqliteConnection};
use zapgate_domain::event::StatusDetail;
use zapgate_domain::status::{FAILED_RANK, SENT_RANK};
use zapgate_domain::{InstanceId, MessageEvent, MessageId, MessageStatus, TenantId, Timestamp, TokenHash, TokenId};

#[async_trait]
impl Store for SqliteBackend {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        self.writer.write(Box::new(|_| Box::pin(async { Ok(()) }))).await
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
        let t = tenant.clone();
        self.writer
            .write(Box::new(move |conn| {
                Box::pin(async move {
                    sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES (?, ?, ?)")
                        .bind(t.id.as_str())
                        .bind(&t.name)
                        .bind(now.as_millis())
                        .execute(&mut *conn)
                        .await?;
                    insert_token(conn, &t.id, &first_token, now).await
                })
            }))
            .await?;
        Ok((tenant, token))
    }

    async fn list_tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        let rows = sqlx::query("SELECT id, name, created_at FROM tenants ORDER BY id").fetch_all(&self.read).await?;
        rows.iter().map(rows::tenant).collect()
    }

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<TenantRecord>, StoreError> {
        let row = sqlx::query("SELECT id, name, created_at FROM tenants WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(rows::tenant).transpose()
    }

    async fn create_token(&self, tenant: &TenantId, token: NewToken) -> Result<TokenRecord, StoreError> {
        let now = Timestamp::now();
        let rec = token_record(tenant, &token, now);
        let tenant = tenant.clone();
        self.writer
            .write(Box::new(move |conn| {
                Box::pin(async move {
                    let exists = sqlx::query("SELECT 1 FROM tenants WHERE id = ?")
                        .bind(tenant.as_str())
                        .fetch_optional(&mut *conn)
                        .await?;
                    if exists.is_none() {
                        return Err(StoreError::NotFound);
                    }
                    insert_token(conn, &tenant, &token, now).await
                })
            }))
            .await?;
        Ok(rec)
    }

    async fn list_tokens(&self, tenant: &TenantId) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, tenant_id, hint, created_at, revoked_at FROM api_tokens WHERE tenant_id = ? ORDER BY id",
        )
        .bind(tenant.as_str())
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(rows::token).collect()
    }

    async fn revoke_token(&self, tenant: &TenantId, id: &TokenId) -> Result<bool, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.writer
            .write(Box::new(move |conn| {
                Box::pin(async move {
                    let r = sqlx::query(
                        "UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND tenant_id = ? AND revoked_at IS NULL",
                    )
                    .bind(Timestamp::now().as_millis())
                    .bind(id)
                    .bind(tenant)
                    .execute(conn)
                    .await?;
                    Ok(r.rows_affected() == 1)
                })
            }))
            .await
    }

    async fn tenant_for_token(&self, hash: &TokenHash) -> Result<Option<TenantId>, StoreError> {
        let id: Option<String> =
            sqlx::query_scalar("SELECT tenant_id FROM api_tokens WHERE hash = ? AND revoked_at IS NULL")
                .bind(&hash.0[..])
                .fetch_optional(&self.read)
                .await?;
        Ok(id.map(TenantId::from_trusted))
    }

    async fn create_instance(&self, new: NewInstance) -> Result<InstanceRecord, StoreError> {
        let now = Timestamp::now();
        let rec = InstanceRecord {
            id: new.id,
            tenant_id: new.tenant_id,
            name: new.name,
            provider: new.provider,
            phone_number_id: new.phone_number_id,
            waba_id: new.waba_id,
            rate_per_sec: new.rate_per_sec,
            burst: new.burst,
            created_at: now,
        };
        let r = rec.clone();
        self.writer
            .write(Box::new(move |conn| {
                Box::pin(async move {
                    let taken = sqlx::query("SELECT 1 FROM instances WHERE phone_number_id = ?")
                        .bind(&r.phone_number_id)
                        .fetch_optional(&mut *conn)
                        .await?;
                    if taken.is_some() {
                        return Err(StoreError::Conflict("phone_number_id is already used".into()));
                    }
                    sqlx::query(
                        "INSERT INTO instances (id, tenant_id, name, provider, phone_number_id, waba_id, rate_per_sec, \
                         burst, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    )
                    .bind(r.id.as_str())
                    .bind(r.tenant_id.as_str())
                    .bind(&r.name)
                    .bind(&r.provider)
                    .bind(&r.phone_number_id)
                    .bind(&r.waba_id)
                    .bind(r.rate_per_sec as i64)
                    .bind(r.burst as i64)
                    .bind(now.as_millis())
                    .execute(&mut *conn)
                    .await?;
                    Ok(())
                })
            }))
            .await?;
        Ok(rec)
    }

    async fn list_instances(&self, tenant: &TenantId) -> Result<Vec<InstanceRecord>, StoreError> {
        let sql =
            format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE tenant_id = ? AND deleted_at IS NULL ORDER BY id");
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(tenant.as_str()).fetch_all(&self.read).await?;
        rows.iter().map(rows::instance).collect()
    }

    async fn get_instance(&self, tenant: &TenantId, id: &InstanceId) -> Result<Option<InstanceRecord>, StoreError> {
        Ok(self.find_instance(id).await?.filter(|i| &i.tenant_id == tenant))
    }

    async fn find_instance(&self, id: &InstanceId) -> Result<Option<InstanceRecord>, StoreError> {
        let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = ? AND deleted_at IS NULL");
        let row = sqlx::query(AssertSqlSafe(sql)).bind(id.as_str()).fetch_optional(&self.read).await?;
        row.as_ref().map(rows::instance).transpose()
    }

    async fn all_instances(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE deleted_at IS NULL ORDER BY id");
        let rows = sqlx::query(AssertSqlSafe(sql)).fetch_all(&self.read).await?;
        rows.iter().map(rows::instance).collect()
    }

    async fn update_instance(
        &self,
        tenant: &TenantId,
        id: &InstanceId,
        change: InstanceChange,
    ) -> Result<Option<InstanceRecord>, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.writer
            .write(Box::new(move |conn| {
                Box::pin(async move {
                    let sql = format!(
                        "UPDATE instances SET name = COALESCE(?1, name), rate_per_sec = COALESCE(?2, rate_per_sec), \
                         burst = COALESCE(?3, burst) WHERE id = ?4 AND tenant_id = ?5 AND deleted_at IS NULL \
                         RETURNING {INSTANCE_COLUMNS}"
                    );
                    let row = sqlx::query(AssertSqlSafe(sql))
                        .bind(change.name)
                        .bind(change.rate_per_sec.map(i64::from))
                        .bind(change.burst.map(i64::from))
                        .bind(id)
                        .bind(tenant)
                        .fetch_optional(&mut *conn)
                        .await?;
                    row.as_ref().map(rows::instance).transpose()
                })
            }))
            .await
    }

    async fn delete_instance(&self, tenant: &TenantId, id: &InstanceId, now: Timestamp) -> Result<bool, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.writer
            .write(Box::new(move |conn| {
                Box::pin(async move {
                    let r = sqlx::query(
                        "UPDATE instances SET deleted_at = ? WHERE id = ? AND tenant_id = ? AND deleted_at IS NULL",
                    )
                    .bind(now.as_millis())
                    .bind(&id)
                    .bind(&tenant)
                    .execute(&mut *conn)
                    .await?;
                    if r.rows_affected() == 0 {
                        return Ok(false);
                    }
                    // Messages not yet handed to the provider will never be sent now.
                    let cancelled = sqlx::query(
                        "UPDATE messages SET status = 'cancelled', updated_at = ?1, error_code = 'instance_deleted', \
                         error_message = 'the instance was deleted before the message was sent' \
                         WHERE instance_id = ?2 AND status IN ('scheduled','queued','retry_wait') \
                         RETURNING id, tenant_id, instance_id, chat_seq",
                    )
                    .bind(now.as_millis())
                    .bind(&id)
                    .fetch_all(&mut *conn)
                    .await?;
                    let detail = StatusDetail { reason: Some("instance deleted".into()), ..detail() };
                    for row in &cancelled {
                        let m = MessageRef::from_row(row)?;
                        insert_event(conn, &m, MessageStatus::Cancelled, &detail, now).await?;
                        sqlx::query("DELETE FROM queue_entries WHERE message_id = ?")
                            .bind(&m.id)
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(true)
                })
            }))
            .await
    }

    async fn accept(&self, msg: AcceptMessage) -> Result<Accepted, StoreError> {
        self.writer.write(Box::new(move |conn| Box::pin(accept(conn, msg)))).await
    }

    async fn get_message(&self, tenant: &TenantId, id: &MessageId) -> Result<Option<MessageRecord>, StoreError> {
        let sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ? AND tenant_id = ?");
        let row =
            sqlx::query(AssertSqlSafe(sql)).bind(id.as_str()).bind(tenant.as_str()).fetch_optional(&self.read).await?;
        row.as_ref().map(rows::message).transpose()
    }

    async fn message_history(&self, tenant: &TenantId, id: &MessageId) -> Result<Vec<MessageEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, tenant_id, message_id, instance_id, status, chat_seq, detail, created_at FROM events \
             WHERE message_id = ? AND tenant_id = ? ORDER BY seq",
        )
        .bind(id.as_str())
        .bind(tenant.as_str())
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(rows::event).collect()
    }

    async fn list_messages(&self, tenant: &TenantId, f: &MessageFilter) -> Result<Vec<MessageRecord>, StoreError> {
        let mut q = QueryBuilder::<Sqlite>::new(format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE tenant_id = "));
        q.push_bind(tenant.as_str());
        if let Some(s) = f.status {
            q.push(" AND status = ").push_bind(s.as_str());
        }
        if let Some(r) = &f.recipient {
            q.push(" AND recipient = ").push_bind(r.key());
        }
        if let Some(i) = &f.instance_id {
            q.push(" AND instance_id = ").push_bind(i.as_str());
        }
        if let Some(t) = f.since {
            q.push(" AND created_at >= ").push_bind(t.as_millis());
        }
        if let Some(t) = f.until {
            q.push(" AND created_at < ").push_bind(t.as_millis());
        }
        if let Some(b) = &f.before {
            q.push(" AND id < ").push_bind(b.as_str());
        }
        q.push(" ORDER BY id DESC LIMIT ").push_bind(f.limit as i64);
        let rows = q.build().fetch_all(&self.read).await?;
        rows.iter().map(rows::message).collect()
    }

    async fn begin_sending(&self, claims: &[(MessageId, u32)], now: Timestamp) -> Result<BeginSending, StoreError> {
        let claims = claims.to_vec();
        self.writer.write(Box::new(move |conn| Box::pin(begin_sending(conn, claims, now)))).await
    }

    async fn record_outcome(&self, outcome: SendOutcome) -> Result<OutcomeApplied, StoreError> {
        self.writer
            .write(Box::new(move |conn| {
                Box::pin(async move {
                    let (id, now) = (outcome.message_id.clone(), outcome.now);
                    let applied = record_outcome(conn, outcome).await?;
                    // The queue lives in this database: settle it in the same
                    // transaction (see `Queue::settled_by_store`).
                    match &applied {
                        OutcomeApplied::Done(_) | OutcomeApplied::Stale => {
                            rows::dequeue(conn, id.as_str(), now).await?
                        }
                        OutcomeApplied::RetryAt { at, attempts } => {
                            rows::reschedule(conn, id.as_str(), *at, *attempts, now).await?
                        }
                    }
                    Ok(applied)
                })
            }))
            .await
    }

    async fn apply_provider_status(&self, report: ProviderStatusReport) -> Result<StatusApplied, StoreError> {
        self.writer.write(Box::new(move |conn| Box::pin(apply_status(conn, report)))).await
    }

    async fn replay_dead(&self, tenant: &TenantId, id: &MessageId, now: Timestamp) -> Result<bool, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.writer
            .write(Box::new(move |conn| {
                Box::pin(async move {
                    let row = sqlx::query(
                        "UPDATE messages SET status = 'queued', status_rank = 0, attempts = 0, error_code = NULL, \
                         error_message = NULL, next_attempt_at = NULL, updated_at = ?1 \
                         WHERE id = ?2 AND tenant_id = ?3 AND status = 'dead' \
                           AND instance_id IN (SELECT id FROM instances WHERE deleted_at IS NULL) \
                         RETURNING id, tenant_id, instance_id, chat_seq, recipient, priority, seq",
                    )
                    .bind(now.as_millis())
                    .bind(&id)
                    .bind(&tenant)
                    .fetch_optional(&mut *conn)
                    .await?;
                    let Some(row) = row else { return Ok(false) };
                    let m = MessageRef::from_row(&row)?;
                    let detail = StatusDetail { reason: Some("replayed from dead letters".into()), ..detail() };
                    insert_event(conn, &m, MessageStatus::Queued, &detail, now).await?;
                    let chat: String = row.try_get("recipient")?;
                    rows::enqueue(
                        conn,
                        &m.id,
                        &m.tenant_id,
                        &m.instance_id,
                        &chat,
                        row.try_get("priority")?,
                        row.try_get("seq")?,
                        0,
                        now.as_millis(),
                        now,
                    )
                    .await?;
                    Ok(true)
                })
            }))
            .await
    }

    async fn purge_expired(&self, keys_before: Timestamp, parked_before: Timestamp) -> Result<u64, StoreError> {
        self.writer
            .write(Box::new(move |conn| {
                Box::pin(async move {
                    let a = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < ?")
                        .bind(keys_before.as_millis())
                        .execute(&mut *conn)
                        .await?;
                    let b = sqlx::query("DELETE FROM parked_statuses WHERE received_at < ?")
                        .bind(parked_before.as_millis())
                        .execute(&mut *conn)
                        .await?;
                    Ok(a.rows_affected() + b.rows_affected())
                })
            }))
            .await
    }
}

fn msg_ref(m: &MessageRecord) -> MessageRef {
    MessageRef {
        id: m.id.to_string(),
        tenant_id: m.tenant_id.to_string(),
        instance_id: m.instance_id.to_string(),
        chat_seq: m.chat_seq,
    }
}

async fn accept(conn: &mut SqliteConnection, msg: AcceptMessage) -> Result<Accepted, StoreError> {
    let req = &msg.request;
    let known = sqlx::query("SELECT 1 FROM instances WHERE id = ? AND tenant_id = ? AND deleted_at IS NULL")
        .bind(req.instance_id.as_str())
        .bind(msg.tenant_id.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    if known.is_none() {
        return Ok(Accepted::UnknownInstance);
    }
    if let Some(key) = &msg.idempotency {
        let seen = sqlx::query(
            "SELECT k.fingerprint, k.message_id, \
             (SELECT status FROM events e WHERE e.message_id = k.message_id ORDER BY seq LIMIT 1) AS first_status \
             FROM idempotency_keys k WHERE k.tenant_id = ? AND k.key = ?",
        )
        .bind(msg.tenant_id.as_str())
        .bind(&key.key)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(row) = seen {
            let fp: Vec<u8> = row.try_get("fingerprint")?;
            if fp != key.fingerprint {
                return Ok(Accepted::KeyReused);
            }
            let status: String = row.try_get("first_status")?;
            return Ok(Accepted::Replayed {
                id: MessageId::from_trusted(row.try_get("message_id")?),
                status: status.parse().map_err(StoreError::Corrupt)?,
            });
        }
        sqlx::query(
            "INSERT INTO idempotency_keys (tenant_id, key, fingerprint, message_id, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(msg.tenant_id.as_str())
        .bind(&key.key)
        .bind(&key.fingerprint[..])
        .bind(msg.id.as_str())
        .bind(msg.now.as_millis())
        .execute(&mut *conn)
        .await?;
    }
    let chat = req.to.key();
    let chat_seq: i64 = sqlx::query_scalar(
        "INSERT INTO chats (instance_id, chat, last_seq) VALUES (?, ?, 1) \
         ON CONFLICT (instance_id, chat) DO UPDATE SET last_seq = last_seq + 1 RETURNING last_seq",
    )
    .bind(req.instance_id.as_str())
    .bind(&chat)
    .fetch_one(&mut *conn)
    .await?;
    let scheduled = req.send_at.filter(|t| *t > msg.now);
    let status = if scheduled.is_some() { MessageStatus::Scheduled } else { MessageStatus::Queued };
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO messages (id, tenant_id, instance_id, recipient, content, priority, status, chat_seq, send_at, \
         expires_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq",
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
    .bind(msg.now.as_millis())
    .fetch_one(&mut *conn)
    .await?;
    let m = MessageRef {
        id: msg.id.to_string(),
        tenant_id: msg.tenant_id.to_string(),
        instance_id: req.instance_id.to_string(),
        chat_seq,
    };
    let detail = StatusDetail { next_attempt_at: scheduled, ..detail() };
    insert_event(conn, &m, status, &detail, msg.now).await?;
    // A scheduled message is ordered by its send time, not by acceptance, so
    // it gets a chat lane of its own and never holds back the chat.
    let queue_chat = match scheduled {
        Some(_) => format!("{chat}#{}", msg.id),
        None => chat,
    };
    let visible_at = scheduled.unwrap_or(msg.now).as_millis();
    rows::enqueue(
        conn,
        &m.id,
        &m.tenant_id,
        &m.instance_id,
        &queue_chat,
        req.priority.rank(),
        seq,
        0,
        visible_at,
        msg.now,
    )
    .await?;
    Ok(Accepted::New { id: msg.id, status })
}

async fn record_outcome(conn: &mut SqliteConnection, o: SendOutcome) -> Result<OutcomeApplied, StoreError> {
    let current = sqlx::query(
        "SELECT id, tenant_id, instance_id, chat_seq, attempts FROM messages WHERE id = ? AND status = 'sending'",
    )
    .bind(o.message_id.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = current else {
        return Ok(OutcomeApplied::Stale);
    };
    let m = MessageRef::from_row(&row)?;
    let attempts = row.try_get::<i64, _>("attempts")? as u32;
    let now = o.now.as_millis();
    let terminal = |status: MessageStatus, code: Option<String>, message: Option<String>| {
        let detail =
            StatusDetail { attempts: Some(attempts), error_code: code.clone(), reason: message.clone(), ..detail() };
        (status, code, message, detail)
    };
    let (status, code, message, detail, attempts) = match o.result {
        SendResult::Sent { provider_message_id, wa_id } => {
            sqlx::query(
                "UPDATE messages SET status = 'sent', status_rank = ?1, provider_message_id = ?2, \
                 wa_id = COALESCE(?3, wa_id), error_code = NULL, error_message = NULL, next_attempt_at = NULL, \
                 updated_at = ?4 WHERE id = ?5",
            )
            .bind(SENT_RANK)
            .bind(&provider_message_id)
            .bind(wa_id)
            .bind(now)
            .bind(&m.id)
            .execute(&mut *conn)
            .await?;
            let detail = StatusDetail { provider_message_id: Some(provider_message_id.clone()), ..detail() };
            insert_event(conn, &m, MessageStatus::Sent, &detail, o.now).await?;
            apply_parked(conn, &provider_message_id).await?;
            return Ok(OutcomeApplied::Done(MessageStatus::Sent));
        }
        SendResult::Retry { retry_at, spend_attempt, code, message } => {
            let attempts = attempts + u32::from(spend_attempt);
            if attempts >= o.retry_limit {
                let (s, c, msg, d) = terminal(MessageStatus::Dead, Some(code), Some(message));
                (s, c, msg, StatusDetail { attempts: Some(attempts), ..d }, attempts)
            } else {
                sqlx::query(
                    "UPDATE messages SET status = 'retry_wait', attempts = ?1, next_attempt_at = ?2, error_code = ?3, \
                     error_message = ?4, updated_at = ?5 WHERE id = ?6",
                )
                .bind(attempts as i64)
                .bind(retry_at.as_millis())
                .bind(&code)
                .bind(&message)
                .bind(now)
                .bind(&m.id)
                .execute(&mut *conn)
                .await?;
                let detail = StatusDetail {
                    attempts: Some(attempts),
                    error_code: Some(code),
                    reason: Some(message),
                    next_attempt_at: Some(retry_at),
                    ..detail()
                };
                insert_event(conn, &m, MessageStatus::RetryWait, &detail, o.now).await?;
                return Ok(OutcomeApplied::RetryAt { at: retry_at, attempts });
            }
        }
        SendResult::Failed { code, message } => {
            let (s, c, msg, d) = terminal(MessageStatus::Failed, Some(code), Some(message));
            (s, c, msg, d, attempts)
        }
        SendResult::Cancelled { code, message } => {
            let (s, c, msg, d) = terminal(MessageStatus::Cancelled, Some(code), Some(message));
            (s, c, msg, d, attempts)
        }
        SendResult::Expired => {
            let (s, c, msg, d) = terminal(
                MessageStatus::Expired,
                Some("expired".into()),
                Some("expires_at passed before sending".into()),
            );
            (s, c, msg, d, attempts)
        }
    };
    sqlx::query(
        "UPDATE messages SET status = ?1, status_rank = ?2, attempts = ?3, error_code = ?4, error_message = ?5, \
         next_attempt_at = NULL, updated_at = ?6 WHERE id = ?7",
    )
    .bind(status.as_str())
    .bind(status.rank())
    .bind(attempts as i64)
    .bind(code)
    .bind(message)
    .bind(now)
    .bind(&m.id)
    .execute(&mut *conn)
    .await?;
    insert_event(conn, &m, status, &detail, o.now).await?;
    Ok(OutcomeApplied::Done(status))
}

async fn apply_status(conn: &mut SqliteConnection, r: ProviderStatusReport) -> Result<StatusApplied, StoreError> {
    let row = sqlx::query("SELECT id, tenant_id, instance_id, chat_seq FROM messages WHERE provider_message_id = ?")
        .bind(&r.provider_message_id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else {
        sqlx::query(
            "INSERT INTO parked_statuses (provider_message_id, status, at, error_code, error_message, received_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
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
    let rank = r.status.rank();
    // The forward-only rule as one conditional update: `failed` only over
    // rank <= sent; anything else only over a lower rank and never over failed.
    let changed = sqlx::query(
        "UPDATE messages SET status = ?1, status_rank = ?2, updated_at = ?3, \
         error_code = COALESCE(?4, error_code), error_message = COALESCE(?5, error_message) \
         WHERE id = ?6 AND ((?2 = ?7 AND status_rank <= ?8) OR (?2 < ?7 AND status_rank < ?2))",
    )
    .bind(r.status.as_str())
    .bind(rank)
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

/// Re-applies statuses that arrived before the send result, oldest first.
async fn apply_parked(conn: &mut SqliteConnection, provider_message_id: &str) -> Result<(), StoreError> {
    let parked = sqlx::query(
        "DELETE FROM parked_statuses WHERE provider_message_id = ? \
         RETURNING id, status, at, error_code, error_message",
    )
    .bind(provider_message_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut reports = Vec::with_capacity(parked.len());
    for row in &parked {
        let status: String = row.try_get("status")?;
        reports.push((
            row.try_get::<i64, _>("id")?,
            ProviderStatusReport {
                provider_message_id: provider_message_id.to_owned(),
                status: status.parse().map_err(StoreError::Corrupt)?,
                at: Timestamp::from_millis(row.try_get("at")?),
                error_code: row.try_get("error_code")?,
                error_message: row.try_get("error_message")?,
            },
        ));
    }
    reports.sort_by_key(|(id, _)| *id);
    for (_, r) in reports {
        Box::pin(apply_status(conn, r)).await?;
    }
    Ok(())
}

pub(super) async fn begin_sending(
    conn: &mut SqliteConnection,
    claims: Vec<(MessageId, u32)>,
    now: Timestamp,
) -> Result<BeginSending, StoreError> {
    let sql = format!(
        "UPDATE messages SET status = 'sending', updated_at = ?1 \
         WHERE id = ?2 AND attempts = ?3 AND status IN ('queued','scheduled','retry_wait') \
         RETURNING {MESSAGE_COLUMNS}"
    );
    let mut out = BeginSending { won: Vec::with_capacity(claims.len()), finished: Vec::new() };
    for (id, attempt) in claims {
        let row = sqlx::query(AssertSqlSafe(sql.clone()))
            .bind(now.as_millis())
            .bind(id.as_str())
            .bind(attempt as i64)
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(row) = row {
            let m = rows::message(&row)?;
            let detail = StatusDetail { attempts: Some(m.attempts), ..detail() };
            insert_event(conn, &msg_ref(&m), MessageStatus::Sending, &detail, now).await?;
            out.won.push(m);
        } else {
            let status: Option<String> = sqlx::query_scalar("SELECT status FROM messages WHERE id = ?")
                .bind(id.as_str())
                .fetch_optional(&mut *conn)
                .await?;
            if status.and_then(|s| s.parse::<MessageStatus>().ok()).is_none_or(|s| s.leaves_queue()) {
                out.finished.push(id);
            }
        }
    }
    Ok(out)
}

fn token_record(tenant: &TenantId, t: &NewToken, now: Timestamp) -> TokenRecord {
    TokenRecord { id: t.id.clone(), tenant_id: tenant.clone(), hint: t.hint.clone(), created_at: now, revoked_at: None }
}

async fn insert_token(
    conn: &mut SqliteConnection,
    tenant: &TenantId,
    t: &NewToken,
    now: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO api_tokens (id, tenant_id, hash, hint, created_at) VALUES (?, ?, ?, ?, ?)")
        .bind(t.id.as_str())
        .bind(tenant.as_str())
        .bind(&t.hash.0[..])
        .bind(&t.hint)
        .bind(now.as_millis())
        .execute(&mut *conn)
        .await?;
    Ok(())
}
