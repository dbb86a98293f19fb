//! `Inbox` on SQLite: one provider POST is one writer job, so its dedupe
//! keys, the changes they guard and the events commit together.

use super::SqliteBackend;
use super::rows::{MessageRef, all, exec, inbound, insert_event_of, insert_instance_event, one};
use super::store::apply_status;
use crate::inbox::*;
use crate::records::INBOUND_COLUMNS;
use crate::{ProviderStatusReport, StoreError, detail};
use async_trait::async_trait;
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, params, params_from_iter};
use zapgate_domain::event::StatusDetail;
use zapgate_domain::instance_state::Transition;
use zapgate_domain::{EventType, InstanceId, MessageId, MessageStatus, TenantId, Timestamp};

#[async_trait]
impl Inbox for SqliteBackend {
    async fn ingest_account(&self, kind: &str, account: &str) -> Result<Option<IngestAccount>, StoreError> {
        let (kind, account) = (kind.to_owned(), account.to_owned());
        self.writer
            .write(Box::new(move |conn| {
                let Some((owner, instances)) = resolve(conn, &kind, &account)? else { return Ok(None) };
                let secret = secret(conn, &account)?;
                Ok(Some(IngestAccount { kind, secret, owner, instances }))
            }))
            .await
    }

    async fn ingest(&self, items: Vec<InboundItem>, now: Timestamp) -> Result<Vec<InboundOutcome>, StoreError> {
        self.writer.write(Box::new(move |conn| items.into_iter().map(|item| take_in(conn, item, now)).collect())).await
    }

    async fn list_inbound(&self, tenant: &TenantId, f: &InboundFilter) -> Result<Vec<InboundRecord>, StoreError> {
        let mut sql = format!("SELECT {INBOUND_COLUMNS} FROM inbound_messages WHERE tenant_id = ?");
        let mut args: Vec<SqlValue> = vec![tenant.to_string().into()];
        if let Some(i) = &f.instance_id {
            sql.push_str(" AND instance_id = ?");
            args.push(i.to_string().into());
        }
        if let Some(c) = &f.chat {
            sql.push_str(" AND chat = ?");
            args.push(c.clone().into());
        }
        if let Some(b) = &f.before {
            sql.push_str(" AND id < ?");
            args.push(b.to_string().into());
        }
        sql.push_str(" ORDER BY id DESC LIMIT ?");
        args.push(i64::from(f.limit).into());
        self.read(move |c| all(c, &sql, params_from_iter(args), inbound)).await
    }

    async fn get_inbound(&self, tenant: &TenantId, id: &MessageId) -> Result<Option<InboundRecord>, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        let sql = format!("SELECT {INBOUND_COLUMNS} FROM inbound_messages WHERE id = ? AND tenant_id = ?");
        self.read(move |c| one(c, &sql, [id, tenant], inbound)).await
    }

    async fn purge_inbound_keys(&self, before: Timestamp, limit: u32) -> Result<u64, StoreError> {
        self.writer
            .write(Box::new(move |conn| {
                let n = exec(
                    conn,
                    "DELETE FROM inbound_keys WHERE rowid IN \
                     (SELECT rowid FROM inbound_keys WHERE created_at < ? LIMIT ?)",
                    params![before.as_millis(), limit],
                )?;
                Ok(n as u64)
            }))
            .await
    }
}

type Resolved = (Option<AccountInstance>, Vec<AccountInstance>);

fn account_instance(r: &rusqlite::Row<'_>) -> Result<AccountInstance, StoreError> {
    crate::records::account_instance(r)
}

/// The account's instances: a provider server's, or an own-settings
/// instance (with, for the Cloud API, its tenant's other Cloud API numbers).
fn resolve(conn: &Connection, kind: &str, account: &str) -> Result<Option<Resolved>, StoreError> {
    if account.starts_with("prv_") {
        let found = one(conn, "SELECT kind FROM providers WHERE id = ? AND deleted_at IS NULL", [account], |r| {
            Ok(r.get::<_, String>(0)?)
        })?;
        if found.as_deref() != Some(kind) {
            return Ok(None);
        }
        let instances = all(
            conn,
            "SELECT id, tenant_id, provider_config FROM instances WHERE provider_id = ? AND deleted_at IS NULL",
            [account],
            account_instance,
        )?;
        return Ok(Some((None, instances)));
    }
    let owner = one(
        conn,
        "SELECT id, tenant_id, provider_config FROM instances \
         WHERE id = ? AND provider = ? AND provider_id IS NULL AND deleted_at IS NULL",
        [account, kind],
        account_instance,
    )?;
    let Some(owner) = owner else { return Ok(None) };
    let instances = if kind == "cloud_api" {
        all(
            conn,
            "SELECT id, tenant_id, provider_config FROM instances \
             WHERE tenant_id = ? AND provider = 'cloud_api' AND provider_id IS NULL AND deleted_at IS NULL",
            [owner.tenant_id.as_str()],
            account_instance,
        )?
    } else {
        vec![owner.clone()]
    };
    Ok(Some((Some(owner), instances)))
}

/// The account's webhook secret, made on first use.
fn secret(conn: &Connection, account: &str) -> Result<String, StoreError> {
    exec(
        conn,
        "INSERT INTO ingest_secrets (account, secret, created_at) VALUES (?, ?, ?) ON CONFLICT (account) DO NOTHING",
        params![account, zapgate_domain::token::random_url_secret(32), Timestamp::now().as_millis()],
    )?;
    Ok(conn
        .prepare_cached("SELECT secret FROM ingest_secrets WHERE account = ?")?
        .query_row([account], |r| r.get(0))?)
}

fn take_in(conn: &Connection, item: InboundItem, now: Timestamp) -> Result<InboundOutcome, StoreError> {
    if let Some(key) = item.dedupe_key() {
        let fresh = exec(
            conn,
            "INSERT INTO inbound_keys (instance_id, key, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            params![item.instance_id.as_str(), key, now.as_millis()],
        )? == 1;
        if !fresh {
            return Ok(InboundOutcome::Duplicate);
        }
    }
    match item.event {
        InboundEvent::Status(report) => {
            let report = ProviderStatusReport { instance_id: Some(item.instance_id), ..report };
            Ok(InboundOutcome::Status(apply_status(conn, report)?))
        }
        InboundEvent::Message(m) => receive(conn, &item.tenant_id, &item.instance_id, m, now),
        InboundEvent::Connection { state, reason, policy, qr } => {
            let (tenant, instance) = (item.tenant_id.as_str(), item.instance_id.as_str());
            if let Some(qr) = qr {
                let detail = StatusDetail { state: Some(state), qr: Some(qr), ..detail() };
                insert_instance_event(conn, EventType::InstanceQr, tenant, instance, &detail, now)?;
            }
            let current = one(
                conn,
                "SELECT state, state_reason, state_changed_at, state_changes FROM instances WHERE id = ?",
                [item.instance_id.as_str()],
                |r| crate::records::stored_state(r),
            )?;
            let Some(current) = current else { return Ok(InboundOutcome::Connection(None)) };
            let Transition::Changed { previous, next } = current.observe(state, reason, now, policy) else {
                return Ok(InboundOutcome::Connection(None));
            };
            exec(
                conn,
                "UPDATE instances SET state = ?, state_reason = ?, state_changed_at = ?, state_changes = ? WHERE id = ?",
                params![
                    next.state.map(|s| s.as_str()),
                    next.reason,
                    now.as_millis(),
                    serde_json::to_string(&next.recent_changes).expect("times serialise"),
                    item.instance_id.as_str()
                ],
            )?;
            let detail = state_detail(previous, &next);
            insert_instance_event(conn, EventType::InstanceStatus, tenant, instance, &detail, now)?;
            Ok(InboundOutcome::Connection(next.state))
        }
    }
}

fn receive(
    conn: &Connection,
    tenant: &TenantId,
    instance: &InstanceId,
    m: NewInbound,
    now: Timestamp,
) -> Result<InboundOutcome, StoreError> {
    if m.body.from_me {
        let ours = one(
            conn,
            "SELECT 1 FROM messages WHERE provider_message_id = ? AND instance_id = ?",
            [m.body.wa_message_id.as_str(), instance.as_str()],
            |_| Ok(()),
        )?;
        if ours.is_some() {
            return Ok(InboundOutcome::Echo);
        }
    }
    let chat_seq: i64 = conn
        .prepare_cached(
            "INSERT INTO chats (instance_id, chat, last_seq) VALUES (?, ?, 1) \
             ON CONFLICT (instance_id, chat) DO UPDATE SET last_seq = last_seq + 1 RETURNING last_seq",
        )?
        .query_row([instance.as_str(), &m.chat], |r| r.get(0))?;
    let b = &m.body;
    let stored = exec(
        conn,
        "INSERT INTO inbound_messages (id, tenant_id, instance_id, chat, sender, sender_name, wa_message_id, \
         from_me, content, context_id, chat_seq, sent_at, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (instance_id, wa_message_id) DO NOTHING",
        params![
            m.id.as_str(),
            tenant.as_str(),
            instance.as_str(),
            m.chat,
            b.sender,
            b.sender_name,
            b.wa_message_id,
            b.from_me,
            b.content.to_string(),
            b.context_id,
            chat_seq,
            b.sent_at.as_millis(),
            now.as_millis()
        ],
    )? == 1;
    if !stored {
        // Its dedupe key was purged, the message was not.
        return Ok(InboundOutcome::Duplicate);
    }
    if let Some(media) = &m.media {
        super::media::insert_media(conn, media, now)?;
    }
    let msg =
        MessageRef { id: m.id.to_string(), tenant_id: tenant.to_string(), instance_id: instance.to_string(), chat_seq };
    let detail = StatusDetail { message: Some(m.body), ..detail() };
    insert_event_of(conn, EventType::MessageReceived, &msg, MessageStatus::Received, &detail, now)?;
    Ok(InboundOutcome::Received(m.id))
}
