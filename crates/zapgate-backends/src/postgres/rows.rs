//! Row ↔ record mapping and the SQL pieces shared by the Postgres store and
//! queue (the same columns as the SQLite backend's `rows`).

use crate::{InstanceRecord, MessageRecord, StoreError, TenantRecord, TokenRecord};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use zapgate_domain::event::StatusDetail;
use zapgate_domain::{
    ChatId, EventId, EventType, InstanceId, MessageEvent, MessageId, MessageStatus, Priority, TenantId, Timestamp,
    TokenId,
};

pub const MESSAGE_COLUMNS: &str = "id, tenant_id, instance_id, recipient, wa_id, content, priority, status, \
    attempts, chat_seq, provider_message_id, error_code, error_message, send_at, expires_at, next_attempt_at, \
    created_at, updated_at";

pub const INSTANCE_COLUMNS: &str =
    "id, tenant_id, name, provider, phone_number_id, waba_id, rate_per_sec, burst, provider_config, created_at";

pub const EVENT_COLUMNS: &str =
    "seq, id, tenant_id, message_id, instance_id, type, status, chat_seq, detail, created_at";

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn ts(v: Option<i64>) -> Option<Timestamp> {
    v.map(Timestamp::from_millis)
}

pub fn message(row: &PgRow) -> Result<MessageRecord, StoreError> {
    let recipient: String = row.try_get("recipient")?;
    let content: String = row.try_get("content")?;
    let status: String = row.try_get("status")?;
    Ok(MessageRecord {
        id: MessageId::from_trusted(row.try_get("id")?),
        tenant_id: TenantId::from_trusted(row.try_get("tenant_id")?),
        instance_id: InstanceId::from_trusted(row.try_get("instance_id")?),
        to: ChatId::parse(&recipient).map_err(|e| corrupt("recipient", e))?,
        wa_id: row.try_get("wa_id")?,
        content: serde_json::from_str(&content).map_err(|e| corrupt("content", e))?,
        priority: Priority::from_rank(row.try_get("priority")?),
        status: status.parse().map_err(|e| corrupt("status", e))?,
        attempts: row.try_get::<i64, _>("attempts")? as u32,
        chat_seq: row.try_get("chat_seq")?,
        provider_message_id: row.try_get("provider_message_id")?,
        error_code: row.try_get("error_code")?,
        error_message: row.try_get("error_message")?,
        send_at: ts(row.try_get("send_at")?),
        expires_at: ts(row.try_get("expires_at")?),
        next_attempt_at: ts(row.try_get("next_attempt_at")?),
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
        updated_at: Timestamp::from_millis(row.try_get("updated_at")?),
    })
}

pub fn instance(row: &PgRow) -> Result<InstanceRecord, StoreError> {
    Ok(InstanceRecord {
        id: InstanceId::from_trusted(row.try_get("id")?),
        tenant_id: TenantId::from_trusted(row.try_get("tenant_id")?),
        name: row.try_get("name")?,
        provider: row.try_get("provider")?,
        phone_number_id: row.try_get("phone_number_id")?,
        waba_id: row.try_get("waba_id")?,
        rate_per_sec: row.try_get::<i64, _>("rate_per_sec")? as u32,
        burst: row.try_get::<i64, _>("burst")? as u32,
        provider_config: serde_json::from_str(&row.try_get::<String, _>("provider_config")?)
            .map_err(|e| corrupt("provider_config", e))?,
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
    })
}

pub fn tenant(row: &PgRow) -> Result<TenantRecord, StoreError> {
    Ok(TenantRecord {
        id: TenantId::from_trusted(row.try_get("id")?),
        name: row.try_get("name")?,
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
    })
}

pub fn token(row: &PgRow) -> Result<TokenRecord, StoreError> {
    Ok(TokenRecord {
        id: TokenId::from_trusted(row.try_get("id")?),
        tenant_id: TenantId::from_trusted(row.try_get("tenant_id")?),
        hint: row.try_get("hint")?,
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
        revoked_at: ts(row.try_get("revoked_at")?),
    })
}

pub fn event(row: &PgRow) -> Result<MessageEvent, StoreError> {
    let status: String = row.try_get("status")?;
    let detail: String = row.try_get("detail")?;
    let kind: String = row.try_get("type")?;
    Ok(MessageEvent {
        id: EventId::from_trusted(row.try_get("id")?),
        event_type: EventType::parse(&kind).ok_or_else(|| corrupt("event type", &kind))?,
        tenant_id: TenantId::from_trusted(row.try_get("tenant_id")?),
        message_id: MessageId::from_trusted(row.try_get("message_id")?),
        instance_id: InstanceId::from_trusted(row.try_get("instance_id")?),
        status: status.parse().map_err(|e| corrupt("event status", e))?,
        chat_seq: row.try_get("chat_seq")?,
        seq: row.try_get("seq")?,
        at: Timestamp::from_millis(row.try_get("created_at")?),
        detail: serde_json::from_str(&detail).map_err(|e| corrupt("event detail", e))?,
    })
}

/// Who a message belongs to, as events need it.
pub struct MessageRef {
    pub id: String,
    pub tenant_id: String,
    pub instance_id: String,
    pub chat_seq: i64,
}

impl MessageRef {
    pub fn from_row(row: &PgRow) -> Result<Self, StoreError> {
        Ok(Self {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            instance_id: row.try_get("instance_id")?,
            chat_seq: row.try_get("chat_seq")?,
        })
    }
}

/// Appends the event of a state change, in the caller's transaction, and
/// marks it for webhook fan-out.
pub async fn insert_event(
    conn: &mut PgConnection,
    msg: &MessageRef,
    status: MessageStatus,
    detail: &StatusDetail,
    at: Timestamp,
) -> Result<(), StoreError> {
    insert_event_of(conn, EventType::MessageStatus, msg, status, detail, at).await
}

pub async fn insert_event_of(
    conn: &mut PgConnection,
    kind: EventType,
    msg: &MessageRef,
    status: MessageStatus,
    detail: &StatusDetail,
    at: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query(
        "WITH e AS (INSERT INTO events (id, tenant_id, message_id, instance_id, type, status, chat_seq, detail, \
         created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING seq) \
         INSERT INTO events_unfanned (event_seq) SELECT seq FROM e",
    )
    .bind(EventId::generate().as_str())
    .bind(&msg.tenant_id)
    .bind(&msg.id)
    .bind(&msg.instance_id)
    .bind(kind.as_str())
    .bind(status.as_str())
    .bind(msg.chat_seq)
    .bind(serde_json::to_string(detail).expect("details serialise"))
    .bind(at.as_millis())
    .execute(conn)
    .await?;
    Ok(())
}

/// Appends one `message.status` event per message, in one statement.
pub async fn insert_events(
    conn: &mut PgConnection,
    msgs: &[(&MessageRef, StatusDetail)],
    status: MessageStatus,
    at: Timestamp,
) -> Result<(), StoreError> {
    if msgs.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(msgs.len());
    let (mut tenants, mut messages, mut instances, mut seqs, mut details) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (m, d) in msgs {
        ids.push(EventId::generate().to_string());
        tenants.push(m.tenant_id.clone());
        messages.push(m.id.clone());
        instances.push(m.instance_id.clone());
        seqs.push(m.chat_seq);
        details.push(serde_json::to_string(d).expect("details serialise"));
    }
    sqlx::query(
        "WITH e AS (INSERT INTO events (id, tenant_id, message_id, instance_id, type, status, chat_seq, detail, \
         created_at) SELECT i, t, m, n, 'message.status', $6, c, d, $7 \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $8::text[]) AS u(i, t, m, n, c, d) \
         RETURNING seq) INSERT INTO events_unfanned (event_seq) SELECT seq FROM e",
    )
    .bind(ids)
    .bind(tenants)
    .bind(messages)
    .bind(instances)
    .bind(seqs)
    .bind(status.as_str())
    .bind(at.as_millis())
    .bind(details)
    .execute(conn)
    .await?;
    Ok(())
}

/// A queue entry to add.
pub struct NewEntry<'a> {
    pub message_id: &'a str,
    pub tenant_id: &'a str,
    pub instance_id: &'a str,
    pub chat: &'a str,
    pub priority: i64,
    pub seq: i64,
    pub attempt: i64,
    pub visible_at: i64,
}

/// Serialises head changes of one queue chat until the transaction ends:
/// without it, an enqueue and the dequeue of the chat's head could each miss
/// the other's uncommitted row and leave the chat with no head at all.
async fn lock_chat(conn: &mut PgConnection, instance: &str, chat: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0))")
        .bind(instance)
        .bind(chat)
        .execute(conn)
        .await?;
    Ok(())
}

/// Adds a queue entry: its chat's head when no other entry of the chat is
/// queued, and ready when it is head and due.
pub async fn enqueue(conn: &mut PgConnection, e: NewEntry<'_>, now: Timestamp) -> Result<(), StoreError> {
    lock_chat(&mut *conn, e.instance_id, e.chat).await?;
    sqlx::query(
        "INSERT INTO queue_entries (message_id, tenant_id, instance_id, chat, priority, seq, attempt, visible_at, \
                                    is_head, ready) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, h, h AND $8 <= $9 FROM \
           (SELECT NOT EXISTS (SELECT 1 FROM queue_entries WHERE instance_id = $3 AND chat = $4) AS h) x",
    )
    .bind(e.message_id)
    .bind(e.tenant_id)
    .bind(e.instance_id)
    .bind(e.chat)
    .bind(e.priority)
    .bind(e.seq)
    .bind(e.attempt)
    .bind(e.visible_at)
    .bind(now.as_millis())
    .execute(conn)
    .await?;
    Ok(())
}

/// Removes a message's queue entry; if it was its chat's head, the chat's
/// next entry (lowest seq) becomes head (and ready, if due).
pub async fn dequeue(conn: &mut PgConnection, message_id: &str, now: Timestamp) -> Result<(), StoreError> {
    let removed = sqlx::query("DELETE FROM queue_entries WHERE message_id = $1 RETURNING instance_id, chat, is_head")
        .bind(message_id)
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(r) = removed
        && r.try_get::<bool, _>("is_head")?
    {
        let (instance, chat): (String, String) = (r.try_get("instance_id")?, r.try_get("chat")?);
        lock_chat(&mut *conn, &instance, &chat).await?;
        sqlx::query(
            "UPDATE queue_entries SET is_head = TRUE, ready = (visible_at <= $3) WHERE message_id = \
             (SELECT message_id FROM queue_entries WHERE instance_id = $1 AND chat = $2 ORDER BY seq LIMIT 1)",
        )
        .bind(instance)
        .bind(chat)
        .bind(now.as_millis())
        .execute(conn)
        .await?;
    }
    Ok(())
}

/// Makes a (head) entry due again at `at`, ending its lease.
pub async fn reschedule(
    conn: &mut PgConnection,
    message_id: &str,
    at: Timestamp,
    attempt: u32,
    now: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE queue_entries SET visible_at = $1, attempt = $2, ready = (is_head AND $1 <= $3), lease_owner = NULL \
         WHERE message_id = $4",
    )
    .bind(at.as_millis())
    .bind(attempt as i64)
    .bind(now.as_millis())
    .bind(message_id)
    .execute(conn)
    .await?;
    Ok(())
}
