//! `Store` on SQLite. Writes run as jobs of the group-committing writer;
//! reads go to the read-only connections.

use super::SqliteBackend;
use super::rows::template;
use super::rows::{
    self, EVENT_COLUMNS, INSTANCE_COLUMNS, MESSAGE_COLUMNS, MessageRef, NewEntry, all, exec, insert_event, one,
};
use crate::*;
use async_trait::async_trait;
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, params, params_from_iter};
use zapgate_domain::event::StatusDetail;
use zapgate_domain::status::{FAILED_RANK, SENT_RANK};
use zapgate_domain::{
    EventType, InstanceId, MessageEvent, MessageId, MessageStatus, TemplateId, TenantId, Timestamp, TokenHash, TokenId,
};

#[async_trait]
impl Store for SqliteBackend {
    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?)).await?;
        self.writer.write(Box::new(|_| Ok(()))).await
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
                exec(
                    conn,
                    "INSERT INTO tenants (id, name, created_at) VALUES (?, ?, ?)",
                    params![t.id.as_str(), t.name, now.as_millis()],
                )?;
                insert_token(conn, &t.id, &first_token, now)
            }))
            .await?;
        Ok((tenant, token))
    }

    async fn list_tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        self.read(|c| all(c, "SELECT id, name, created_at FROM tenants ORDER BY id", [], rows::tenant)).await
    }

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<TenantRecord>, StoreError> {
        let id = id.to_string();
        self.read(move |c| one(c, "SELECT id, name, created_at FROM tenants WHERE id = ?", [id], rows::tenant)).await
    }

    async fn create_token(&self, tenant: &TenantId, token: NewToken) -> Result<TokenRecord, StoreError> {
        let now = Timestamp::now();
        let rec = token_record(tenant, &token, now);
        let tenant = tenant.clone();
        self.writer
            .write(Box::new(move |conn| {
                if one(conn, "SELECT 1 FROM tenants WHERE id = ?", [tenant.as_str()], |_| Ok(()))?.is_none() {
                    return Err(StoreError::NotFound);
                }
                insert_token(conn, &tenant, &token, now)
            }))
            .await?;
        Ok(rec)
    }

    async fn list_tokens(&self, tenant: &TenantId) -> Result<Vec<TokenRecord>, StoreError> {
        let tenant = tenant.to_string();
        self.read(move |c| {
            all(
                c,
                "SELECT id, tenant_id, hint, created_at, revoked_at FROM api_tokens WHERE tenant_id = ? ORDER BY id",
                [tenant],
                rows::token,
            )
        })
        .await
    }

    async fn revoke_token(&self, tenant: &TenantId, id: &TokenId) -> Result<bool, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.writer
            .write(Box::new(move |conn| {
                let n = exec(
                    conn,
                    "UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND tenant_id = ? AND revoked_at IS NULL",
                    params![Timestamp::now().as_millis(), id, tenant],
                )?;
                Ok(n == 1)
            }))
            .await
    }

    async fn tenant_for_token(&self, hash: &TokenHash) -> Result<Option<TenantId>, StoreError> {
        let hash = hash.0;
        self.read(move |c| {
            one(c, "SELECT tenant_id FROM api_tokens WHERE hash = ? AND revoked_at IS NULL", [&hash[..]], |r| {
                Ok(TenantId::from_trusted(r.get(0)?))
            })
        })
        .await
    }

    async fn create_instance(&self, new: NewInstance) -> Result<InstanceRecord, StoreError> {
        let rec = new.into_record(None);
        let r = rec.clone();
        self.writer.write(Box::new(move |conn| insert_instance(conn, &r))).await?;
        Ok(rec)
    }

    async fn list_instances(&self, tenant: &TenantId) -> Result<Vec<InstanceRecord>, StoreError> {
        let tenant = tenant.to_string();
        self.read(move |c| {
            let sql = format!(
                "SELECT {INSTANCE_COLUMNS} FROM instances WHERE tenant_id = ? AND deleted_at IS NULL ORDER BY id"
            );
            all(c, &sql, [tenant], rows::instance)
        })
        .await
    }

    async fn get_instance(&self, tenant: &TenantId, id: &InstanceId) -> Result<Option<InstanceRecord>, StoreError> {
        Ok(self.find_instance(id).await?.filter(|i| &i.tenant_id == tenant))
    }

    async fn find_instance(&self, id: &InstanceId) -> Result<Option<InstanceRecord>, StoreError> {
        let id = id.to_string();
        self.read(move |c| {
            let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = ? AND deleted_at IS NULL");
            one(c, &sql, [id], rows::instance)
        })
        .await
    }

    async fn all_instances(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        self.read(|c| {
            let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE deleted_at IS NULL ORDER BY id");
            all(c, &sql, [], rows::instance)
        })
        .await
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
                let sql = format!(
                    "UPDATE instances SET name = COALESCE(?1, name), rate_per_sec = COALESCE(?2, rate_per_sec), \
                     burst = COALESCE(?3, burst), phone_number = COALESCE(?6, phone_number) \
                     WHERE id = ?4 AND tenant_id = ?5 AND deleted_at IS NULL RETURNING {INSTANCE_COLUMNS}"
                );
                let values = params![change.name, change.rate_per_sec, change.burst, id, tenant, change.phone_number];
                one(conn, &sql, values, rows::instance)
            }))
            .await
    }

    async fn set_provider_config(&self, id: &InstanceId, config: serde_json::Value) -> Result<(), StoreError> {
        let id = id.to_string();
        self.writer
            .write(Box::new(move |conn| {
                exec(conn, "UPDATE instances SET provider_config = ? WHERE id = ?", params![config.to_string(), id])?;
                Ok(())
            }))
            .await
    }

    async fn delete_instance(&self, tenant: &TenantId, id: &InstanceId, now: Timestamp) -> Result<bool, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.writer
            .write(Box::new(move |conn| {
                let n = exec(
                    conn,
                    "UPDATE instances SET deleted_at = ? WHERE id = ? AND tenant_id = ? AND deleted_at IS NULL",
                    params![now.as_millis(), id, tenant],
                )?;
                if n == 0 {
                    return Ok(false);
                }
                // Messages not yet handed to the provider will never be sent now.
                let cancelled = all(
                    conn,
                    "UPDATE messages SET status = 'cancelled', updated_at = ?1, error_code = 'instance_deleted', \
                     error_message = 'the instance was deleted before the message was sent' \
                     WHERE instance_id = ?2 AND status IN ('scheduled','queued','retry_wait') \
                     RETURNING id, tenant_id, instance_id, chat_seq",
                    params![now.as_millis(), id],
                    MessageRef::from_row,
                )?;
                let detail = StatusDetail { reason: Some("instance deleted".into()), ..detail() };
                for m in &cancelled {
                    insert_event(conn, m, MessageStatus::Cancelled, &detail, now)?;
                    exec(conn, "DELETE FROM queue_entries WHERE message_id = ?", [&m.id])?;
                }
                Ok(true)
            }))
            .await
    }

    async fn accept(&self, msg: AcceptMessage) -> Result<Accepted, StoreError> {
        self.writer.write(Box::new(move |conn| accept(conn, msg))).await
    }

    async fn get_message(&self, tenant: &TenantId, id: &MessageId) -> Result<Option<MessageRecord>, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.read(move |c| {
            let sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ? AND tenant_id = ?");
            one(c, &sql, [id, tenant], rows::message)
        })
        .await
    }

    async fn message_history(&self, tenant: &TenantId, id: &MessageId) -> Result<Vec<MessageEvent>, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.read(move |c| {
            let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE message_id = ? AND tenant_id = ? ORDER BY seq");
            all(c, &sql, [id, tenant], rows::event)
        })
        .await
    }

    async fn list_messages(&self, tenant: &TenantId, f: &MessageFilter) -> Result<Vec<MessageRecord>, StoreError> {
        let mut sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE tenant_id = ?");
        let mut args: Vec<SqlValue> = vec![tenant.to_string().into()];
        let mut and = |cond: &str, v: SqlValue| {
            sql.push_str(" AND ");
            sql.push_str(cond);
            args.push(v);
        };
        if let Some(s) = f.status {
            and("status = ?", s.as_str().to_owned().into());
        }
        if let Some(r) = &f.recipient {
            and("recipient = ?", r.key().into());
        }
        if let Some(i) = &f.instance_id {
            and("instance_id = ?", i.to_string().into());
        }
        if let Some(t) = f.since {
            and("created_at >= ?", t.as_millis().into());
        }
        if let Some(t) = f.until {
            and("created_at < ?", t.as_millis().into());
        }
        if let Some(b) = &f.before {
            and("id < ?", b.to_string().into());
        }
        sql.push_str(" ORDER BY id DESC LIMIT ?");
        args.push(i64::from(f.limit).into());
        self.read(move |c| all(c, &sql, params_from_iter(args), rows::message)).await
    }

    async fn begin_sending(&self, claims: &[(MessageId, u32)], now: Timestamp) -> Result<BeginSending, StoreError> {
        let claims = claims.to_vec();
        self.writer.write(Box::new(move |conn| begin_sending(conn, claims, now))).await
    }

    async fn record_outcome(&self, outcome: SendOutcome) -> Result<OutcomeApplied, StoreError> {
        self.writer
            .write(Box::new(move |conn| {
                let (id, now) = (outcome.message_id.clone(), outcome.now);
                let applied = record_outcome(conn, outcome)?;
                // The queue lives in this database: settle it in the same
                // transaction (see `Queue::settled_by_store`).
                match &applied {
                    OutcomeApplied::Done(_) | OutcomeApplied::Stale => rows::dequeue(conn, id.as_str(), now)?,
                    OutcomeApplied::RetryAt { at, attempts } => {
                        rows::reschedule(conn, id.as_str(), *at, *attempts, now)?
                    }
                }
                Ok(applied)
            }))
            .await
    }

    async fn apply_provider_status(&self, report: ProviderStatusReport) -> Result<StatusApplied, StoreError> {
        self.writer.write(Box::new(move |conn| apply_status(conn, report))).await
    }

    async fn cancel_message(&self, tenant: &TenantId, id: &MessageId, now: Timestamp) -> Result<Cancel, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.writer
            .write(Box::new(move |conn| {
                let cancelled = one(
                    conn,
                    "UPDATE messages SET status = 'cancelled', updated_at = ?1, next_attempt_at = NULL \
                     WHERE id = ?2 AND tenant_id = ?3 AND status IN ('scheduled','queued','retry_wait') \
                     RETURNING id, tenant_id, instance_id, chat_seq",
                    params![now.as_millis(), id, tenant],
                    MessageRef::from_row,
                )?;
                if let Some(m) = cancelled {
                    let detail = StatusDetail { reason: Some("cancelled by the tenant".into()), ..detail() };
                    insert_event(conn, &m, MessageStatus::Cancelled, &detail, now)?;
                    rows::dequeue(conn, &m.id, now)?;
                    return Ok(Cancel::Cancelled);
                }
                let status =
                    one(conn, "SELECT status FROM messages WHERE id = ? AND tenant_id = ?", [&id, &tenant], |r| {
                        Ok(r.get::<_, String>(0)?)
                    })?;
                match status {
                    None => Ok(Cancel::NotFound),
                    Some(s) => Ok(Cancel::TooLate(s.parse().map_err(StoreError::Corrupt)?)),
                }
            }))
            .await
    }

    async fn replay_dead(&self, tenant: &TenantId, id: &MessageId, now: Timestamp) -> Result<bool, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.writer
            .write(Box::new(move |conn| {
                let row = one(
                    conn,
                    "UPDATE messages SET status = 'queued', status_rank = 0, attempts = 0, error_code = NULL, \
                     error_message = NULL, next_attempt_at = NULL, updated_at = ?1 \
                     WHERE id = ?2 AND tenant_id = ?3 AND status = 'dead' \
                       AND instance_id IN (SELECT id FROM instances WHERE deleted_at IS NULL) \
                     RETURNING id, tenant_id, instance_id, chat_seq, recipient, priority, seq",
                    params![now.as_millis(), id, tenant],
                    |r| {
                        Ok((
                            MessageRef::from_row(r)?,
                            r.get::<_, String>("recipient")?,
                            r.get("priority")?,
                            r.get("seq")?,
                        ))
                    },
                )?;
                let Some((m, chat, priority, seq)) = row else { return Ok(false) };
                let detail = StatusDetail { reason: Some("replayed from dead letters".into()), ..detail() };
                insert_event(conn, &m, MessageStatus::Queued, &detail, now)?;
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
                rows::enqueue(conn, entry, now)?;
                Ok(true)
            }))
            .await
    }

    async fn create_template(&self, t: TemplateRecord) -> Result<TemplateRecord, StoreError> {
        let rec = t.clone();
        self.writer
            .write(Box::new(move |conn| {
                let taken = one(
                    conn,
                    "SELECT 1 FROM templates WHERE tenant_id = ? AND name = ? AND deleted_at IS NULL",
                    [t.tenant_id.as_str(), &t.name],
                    |_| Ok(()),
                )?;
                if taken.is_some() {
                    return Err(StoreError::Conflict(format!("a template named {:?} exists", t.name)));
                }
                exec(
                    conn,
                    "INSERT INTO templates (id, tenant_id, name, kind, body, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    params![
                        t.id.as_str(),
                        t.tenant_id.as_str(),
                        t.name,
                        t.kind.as_str(),
                        t.stored_body(),
                        t.created_at.as_millis()
                    ],
                )?;
                Ok(())
            }))
            .await?;
        Ok(rec)
    }

    async fn list_templates(&self, tenant: &TenantId) -> Result<Vec<TemplateRecord>, StoreError> {
        let tenant = tenant.to_string();
        self.read(move |c| {
            all(
                c,
                "SELECT id, tenant_id, name, kind, body, created_at FROM templates WHERE tenant_id = ? AND deleted_at IS NULL \
                 ORDER BY name",
                [tenant],
                template,
            )
        })
        .await
    }

    async fn get_template(&self, tenant: &TenantId, id: &TemplateId) -> Result<Option<TemplateRecord>, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.read(move |c| {
            one(
                c,
                "SELECT id, tenant_id, name, kind, body, created_at FROM templates WHERE id = ? AND tenant_id = ? \
                 AND deleted_at IS NULL",
                [id, tenant],
                template,
            )
        })
        .await
    }

    async fn delete_template(&self, tenant: &TenantId, id: &TemplateId) -> Result<bool, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.writer
            .write(Box::new(move |conn| {
                let n = exec(
                    conn,
                    "UPDATE templates SET deleted_at = ? WHERE id = ? AND tenant_id = ? AND deleted_at IS NULL",
                    params![Timestamp::now().as_millis(), id, tenant],
                )?;
                Ok(n == 1)
            }))
            .await
    }

    async fn raise_ack_timeouts(&self, sent_before: Timestamp, now: Timestamp, limit: u32) -> Result<u64, StoreError> {
        self.writer
            .write(Box::new(move |conn| {
                let late = all(
                    conn,
                    "UPDATE messages SET ack_timeout_at = ?1 WHERE id IN ( \
                       SELECT id FROM messages WHERE status = 'sent' AND ack_timeout_at IS NULL AND updated_at < ?2 \
                       ORDER BY updated_at LIMIT ?3) \
                     RETURNING id, tenant_id, instance_id, chat_seq, provider_message_id",
                    params![now.as_millis(), sent_before.as_millis(), limit],
                    |r| Ok((MessageRef::from_row(r)?, r.get::<_, Option<String>>("provider_message_id")?)),
                )?;
                for (m, provider_message_id) in &late {
                    let detail = StatusDetail {
                        provider_message_id: provider_message_id.clone(),
                        reason: Some("no delivery report from the provider yet".into()),
                        ..detail()
                    };
                    rows::insert_event_of(conn, EventType::MessageAckTimeout, m, MessageStatus::Sent, &detail, now)?;
                }
                Ok(late.len() as u64)
            }))
            .await
    }

    async fn purge_expired(&self, keys_before: Timestamp, parked_before: Timestamp) -> Result<u64, StoreError> {
        self.writer
            .write(Box::new(move |conn| {
                let a = exec(conn, "DELETE FROM idempotency_keys WHERE created_at < ?", [keys_before.as_millis()])?;
                let b = exec(conn, "DELETE FROM parked_statuses WHERE received_at < ?", [parked_before.as_millis()])?;
                Ok((a + b) as u64)
            }))
            .await
    }
}

fn token_record(tenant: &TenantId, t: &NewToken, now: Timestamp) -> TokenRecord {
    TokenRecord { id: t.id.clone(), tenant_id: tenant.clone(), hint: t.hint.clone(), created_at: now, revoked_at: None }
}

fn insert_token(conn: &Connection, tenant: &TenantId, t: &NewToken, now: Timestamp) -> Result<(), StoreError> {
    exec(
        conn,
        "INSERT INTO api_tokens (id, tenant_id, hash, hint, created_at) VALUES (?, ?, ?, ?, ?)",
        params![t.id.as_str(), tenant.as_str(), &t.hash.0[..], t.hint, now.as_millis()],
    )?;
    Ok(())
}

fn accept(conn: &Connection, msg: AcceptMessage) -> Result<Accepted, StoreError> {
    let req = &msg.request;
    let known = one(
        conn,
        "SELECT 1 FROM instances WHERE id = ? AND tenant_id = ? AND deleted_at IS NULL",
        [req.instance_id.as_str(), msg.tenant_id.as_str()],
        |_| Ok(()),
    )?;
    if known.is_none() {
        return Ok(Accepted::UnknownInstance);
    }
    if let Some(key) = &msg.idempotency {
        let seen = one(
            conn,
            "SELECT k.fingerprint, k.message_id, \
             (SELECT status FROM events e WHERE e.message_id = k.message_id ORDER BY seq LIMIT 1) \
             FROM idempotency_keys k WHERE k.tenant_id = ? AND k.key = ?",
            [msg.tenant_id.as_str(), &key.key],
            |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)),
        )?;
        if let Some((fp, id, status)) = seen {
            if fp != key.fingerprint {
                return Ok(Accepted::KeyReused);
            }
            return Ok(Accepted::Replayed {
                id: MessageId::from_trusted(id),
                status: status.parse().map_err(StoreError::Corrupt)?,
            });
        }
        exec(
            conn,
            "INSERT INTO idempotency_keys (tenant_id, key, fingerprint, message_id, created_at) VALUES (?, ?, ?, ?, ?)",
            params![msg.tenant_id.as_str(), key.key, &key.fingerprint[..], msg.id.as_str(), msg.now.as_millis()],
        )?;
    }
    let chat = req.to.key();
    let chat_seq: i64 = conn
        .prepare_cached(
            "INSERT INTO chats (instance_id, chat, last_seq) VALUES (?, ?, 1) \
             ON CONFLICT (instance_id, chat) DO UPDATE SET last_seq = last_seq + 1 RETURNING last_seq",
        )?
        .query_row([req.instance_id.as_str(), &chat], |r| r.get(0))?;
    let scheduled = req.send_at.filter(|t| *t > msg.now);
    let status = if scheduled.is_some() { MessageStatus::Scheduled } else { MessageStatus::Queued };
    let seq: i64 = conn
        .prepare_cached(
            "INSERT INTO messages (id, tenant_id, instance_id, recipient, content, priority, status, chat_seq, \
             send_at, expires_at, reply_to, created_at, updated_at, campaign_id) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq",
        )?
        .query_row(
            params![
                msg.id.as_str(),
                msg.tenant_id.as_str(),
                req.instance_id.as_str(),
                chat,
                serde_json::to_string(&req.content).expect("content serialises"),
                req.priority.rank(),
                status.as_str(),
                chat_seq,
                req.send_at.map(Timestamp::as_millis),
                req.expires_at.map(Timestamp::as_millis),
                req.reply_to,
                msg.now.as_millis(),
                msg.now.as_millis(),
                msg.campaign_id.as_ref().map(|c| c.as_str()),
            ],
            |r| r.get(0),
        )?;
    let m = MessageRef {
        id: msg.id.to_string(),
        tenant_id: msg.tenant_id.to_string(),
        instance_id: req.instance_id.to_string(),
        chat_seq,
    };
    let detail = StatusDetail { next_attempt_at: scheduled, ..detail() };
    insert_event(conn, &m, status, &detail, msg.now)?;
    // A scheduled message is ordered by its send time, not by acceptance, so
    // it gets a chat lane of its own and never holds back the chat.
    let queue_chat = match scheduled {
        Some(_) => format!("{chat}#{}", msg.id),
        None => chat,
    };
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
    rows::enqueue(conn, entry, msg.now)?;
    Ok(Accepted::New { id: msg.id, status })
}

/// The `→ sending` compare-and-set for a whole claim round: one UPDATE and
/// one multi-row event INSERT, instead of two statements per message (the
/// writer's time is the embedded mode's budget).
pub(super) fn begin_sending(
    conn: &Connection,
    claims: Vec<(MessageId, u32)>,
    now: Timestamp,
) -> Result<BeginSending, StoreError> {
    let mut out = BeginSending { won: Vec::with_capacity(claims.len()), finished: Vec::new() };
    if claims.is_empty() {
        return Ok(out);
    }
    let wanted = serde_json::Value::Array(claims.iter().map(|(id, a)| serde_json::json!([id.as_str(), a])).collect());
    let sql = format!(
        "UPDATE messages SET status = 'sending', updated_at = ?1 \
         WHERE id IN (SELECT value ->> 0 FROM json_each(?2)) \
           AND status IN ('queued','scheduled','retry_wait') \
           AND attempts = (SELECT value ->> 1 FROM json_each(?2) WHERE value ->> 0 = messages.id) \
         RETURNING {MESSAGE_COLUMNS}"
    );
    out.won = all(conn, &sql, params![now.as_millis(), wanted.to_string()], rows::message)?;
    let events: Vec<serde_json::Value> = out
        .won
        .iter()
        .map(|m| {
            let detail = StatusDetail { attempts: Some(m.attempts), ..detail() };
            serde_json::json!([
                zapgate_domain::EventId::generate().as_str(),
                m.tenant_id.as_str(),
                m.id.as_str(),
                m.instance_id.as_str(),
                m.chat_seq,
                serde_json::to_string(&detail).expect("details serialise"),
            ])
        })
        .collect();
    exec(
        conn,
        "INSERT INTO events (id, tenant_id, message_id, instance_id, type, status, chat_seq, detail, created_at) \
         SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, 'message.status', 'sending', value ->> 4, \
                value ->> 5, ?2 FROM json_each(?1)",
        params![serde_json::Value::Array(events).to_string(), now.as_millis()],
    )?;
    // Keep claim order (RETURNING order is unspecified).
    let rank: std::collections::HashMap<&MessageId, usize> =
        claims.iter().enumerate().map(|(i, (id, _))| (id, i)).collect();
    out.won.sort_by_key(|m| rank.get(&m.id).copied().unwrap_or(usize::MAX));
    if out.won.len() < claims.len() {
        let won: std::collections::HashSet<MessageId> = out.won.iter().map(|m| m.id.clone()).collect();
        for (id, _) in claims.into_iter().filter(|(id, _)| !won.contains(id)) {
            let status =
                one(conn, "SELECT status FROM messages WHERE id = ?", [id.as_str()], |r| Ok(r.get::<_, String>(0)?))?;
            if status.and_then(|s| s.parse::<MessageStatus>().ok()).is_none_or(|s| s.leaves_queue()) {
                out.finished.push(id);
            }
        }
    }
    Ok(out)
}

fn record_outcome(conn: &Connection, o: SendOutcome) -> Result<OutcomeApplied, StoreError> {
    // Every other outcome needs the message's attempts first; `sent` does not.
    let (status, code, message, spend, retry_at) = match o.result {
        SendResult::Sent { provider_message_id, wa_id } => {
            return record_sent(conn, &o.message_id, &provider_message_id, wa_id, o.now);
        }
        SendResult::Retry { retry_at, spend_attempt, code, message } => {
            (MessageStatus::RetryWait, code, message, spend_attempt, Some(retry_at))
        }
        SendResult::Failed { code, message } => (MessageStatus::Failed, code, message, false, None),
        SendResult::Cancelled { code, message } => (MessageStatus::Cancelled, code, message, false, None),
        SendResult::Expired => {
            (MessageStatus::Expired, "expired".to_owned(), "expires_at passed before sending".to_owned(), false, None)
        }
    };
    let current = one(
        conn,
        "SELECT id, tenant_id, instance_id, chat_seq, attempts FROM messages WHERE id = ? AND status = 'sending'",
        [o.message_id.as_str()],
        |r| Ok((MessageRef::from_row(r)?, r.get::<_, i64>("attempts")? as u32)),
    )?;
    let Some((m, attempts)) = current else { return Ok(OutcomeApplied::Stale) };
    let attempts = attempts + u32::from(spend);
    let now = o.now.as_millis();
    if let Some(retry_at) = retry_at.filter(|_| attempts < o.retry_limit) {
        exec(
            conn,
            "UPDATE messages SET status = 'retry_wait', attempts = ?1, next_attempt_at = ?2, error_code = ?3, \
             error_message = ?4, updated_at = ?5 WHERE id = ?6",
            params![attempts, retry_at.as_millis(), code, message, now, m.id],
        )?;
        let detail = StatusDetail {
            attempts: Some(attempts),
            error_code: Some(code),
            reason: Some(message),
            next_attempt_at: Some(retry_at),
            ..detail()
        };
        insert_event(conn, &m, MessageStatus::RetryWait, &detail, o.now)?;
        return Ok(OutcomeApplied::RetryAt { at: retry_at, attempts });
    }
    // A retry with the attempts used up is a dead letter.
    let status = if status == MessageStatus::RetryWait { MessageStatus::Dead } else { status };
    exec(
        conn,
        "UPDATE messages SET status = ?1, status_rank = ?2, attempts = ?3, error_code = ?4, error_message = ?5, \
         next_attempt_at = NULL, updated_at = ?6 WHERE id = ?7",
        params![status.as_str(), status.rank(), attempts, code, message, now, m.id],
    )?;
    let detail = StatusDetail { attempts: Some(attempts), error_code: Some(code), reason: Some(message), ..detail() };
    insert_event(conn, &m, status, &detail, o.now)?;
    Ok(OutcomeApplied::Done(status))
}

/// `sending → sent` in one statement: the compare-and-set is the WHERE.
fn record_sent(
    conn: &Connection,
    id: &MessageId,
    provider_message_id: &str,
    wa_id: Option<String>,
    at: Timestamp,
) -> Result<OutcomeApplied, StoreError> {
    let sent = one(
        conn,
        "UPDATE messages SET status = 'sent', status_rank = ?1, provider_message_id = ?2, \
         wa_id = COALESCE(?3, wa_id), error_code = NULL, error_message = NULL, next_attempt_at = NULL, \
         updated_at = ?4 WHERE id = ?5 AND status = 'sending' RETURNING id, tenant_id, instance_id, chat_seq",
        params![SENT_RANK, provider_message_id, wa_id, at.as_millis(), id.as_str()],
        MessageRef::from_row,
    )?;
    let Some(m) = sent else { return Ok(OutcomeApplied::Stale) };
    let detail = StatusDetail { provider_message_id: Some(provider_message_id.to_owned()), ..detail() };
    insert_event(conn, &m, MessageStatus::Sent, &detail, at)?;
    apply_parked(conn, provider_message_id)?;
    Ok(OutcomeApplied::Done(MessageStatus::Sent))
}

pub(super) fn apply_status(conn: &Connection, r: ProviderStatusReport) -> Result<StatusApplied, StoreError> {
    let found = one(
        conn,
        "SELECT id, tenant_id, instance_id, chat_seq FROM messages \
         WHERE provider_message_id = ?1 AND (?2 IS NULL OR instance_id = ?2)",
        params![r.provider_message_id, r.instance_id.as_ref().map(|i| i.as_str())],
        MessageRef::from_row,
    )?;
    let Some(m) = found else {
        exec(
            conn,
            "INSERT INTO parked_statuses (provider_message_id, status, at, error_code, error_message, received_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
            params![
                r.provider_message_id,
                r.status.as_str(),
                r.at.as_millis(),
                r.error_code,
                r.error_message,
                Timestamp::now().as_millis()
            ],
        )?;
        return Ok(StatusApplied::Parked);
    };
    // The forward-only rule as one conditional update: `failed` only over
    // rank <= sent; anything else only over a lower rank and never over failed.
    let changed = exec(
        conn,
        "UPDATE messages SET status = ?1, status_rank = ?2, updated_at = ?3, \
         error_code = COALESCE(?4, error_code), error_message = COALESCE(?5, error_message) \
         WHERE id = ?6 AND ((?2 = ?7 AND status_rank <= ?8) OR (?2 < ?7 AND status_rank < ?2))",
        params![
            r.status.as_str(),
            r.status.rank(),
            r.at.as_millis(),
            r.error_code,
            r.error_message,
            m.id,
            FAILED_RANK,
            SENT_RANK
        ],
    )? == 1;
    let detail = StatusDetail {
        provider_message_id: Some(r.provider_message_id.clone()),
        error_code: r.error_code,
        reason: r.error_message,
        applied: changed,
        ..detail()
    };
    insert_event(conn, &m, r.status, &detail, r.at)?;
    Ok(if changed { StatusApplied::Applied } else { StatusApplied::Ignored })
}

/// Re-applies statuses that arrived before the send result, oldest first.
fn apply_parked(conn: &Connection, provider_message_id: &str) -> Result<(), StoreError> {
    let mut parked = all(
        conn,
        "DELETE FROM parked_statuses WHERE provider_message_id = ? \
         RETURNING id, status, at, error_code, error_message",
        [provider_message_id],
        |r| {
            let status: String = r.get("status")?;
            Ok((
                r.get::<_, i64>("id")?,
                ProviderStatusReport {
                    instance_id: None,
                    provider_message_id: provider_message_id.to_owned(),
                    status: status.parse().map_err(StoreError::Corrupt)?,
                    at: Timestamp::from_millis(r.get("at")?),
                    error_code: r.get("error_code")?,
                    error_message: r.get("error_message")?,
                },
            ))
        },
    )?;
    parked.sort_by_key(|(id, _)| *id);
    for (_, r) in parked {
        apply_status(conn, r)?;
    }
    Ok(())
}

pub(super) fn insert_instance(conn: &Connection, r: &InstanceRecord) -> Result<(), StoreError> {
    if one(conn, "SELECT 1 FROM instances WHERE phone_number_id = ?", [&r.phone_number_id], |_| Ok(()))?.is_some() {
        return Err(StoreError::Conflict("phone_number_id is already used".into()));
    }
    exec(
        conn,
        "INSERT INTO instances (id, tenant_id, name, provider, provider_id, phone_number_id, waba_id, rate_per_sec, \
         burst, provider_config, created_at, phone_number) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        params![
            r.id.as_str(),
            r.tenant_id.as_str(),
            r.name,
            r.provider,
            r.provider_id.as_ref().map(|p| p.as_str()),
            r.phone_number_id,
            r.waba_id,
            r.rate_per_sec,
            r.burst,
            r.provider_config.to_string(),
            r.created_at.as_millis(),
            r.phone_number
        ],
    )?;
    Ok(())
}
