//! Row ↔ record mapping and the SQL pieces shared by the store and queue.

use crate::{InstanceRecord, MessageRecord, StoreError, TenantRecord, TokenRecord};
use rusqlite::{Connection, OptionalExtension, Row, params};
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

/// Statuses that still have a queue entry.
pub const PENDING_STATUSES: &str = "('scheduled','queued','sending','retry_wait')";

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn ts(v: Option<i64>) -> Option<Timestamp> {
    v.map(Timestamp::from_millis)
}

pub fn message(row: &Row<'_>) -> Result<MessageRecord, StoreError> {
    let recipient: String = row.get("recipient")?;
    let content: String = row.get("content")?;
    let status: String = row.get("status")?;
    Ok(MessageRecord {
        id: MessageId::from_trusted(row.get("id")?),
        tenant_id: TenantId::from_trusted(row.get("tenant_id")?),
        instance_id: InstanceId::from_trusted(row.get("instance_id")?),
        to: ChatId::parse(&recipient).map_err(|e| corrupt("recipient", e))?,
        wa_id: row.get("wa_id")?,
        content: serde_json::from_str(&content).map_err(|e| corrupt("content", e))?,
        priority: Priority::from_rank(row.get("priority")?),
        status: status.parse().map_err(|e| corrupt("status", e))?,
        attempts: row.get::<_, i64>("attempts")? as u32,
        chat_seq: row.get("chat_seq")?,
        provider_message_id: row.get("provider_message_id")?,
        error_code: row.get("error_code")?,
        error_message: row.get("error_message")?,
        send_at: ts(row.get("send_at")?),
        expires_at: ts(row.get("expires_at")?),
        next_attempt_at: ts(row.get("next_attempt_at")?),
        created_at: Timestamp::from_millis(row.get("created_at")?),
        updated_at: Timestamp::from_millis(row.get("updated_at")?),
    })
}

pub fn instance(row: &Row<'_>) -> Result<InstanceRecord, StoreError> {
    Ok(InstanceRecord {
        id: InstanceId::from_trusted(row.get("id")?),
        tenant_id: TenantId::from_trusted(row.get("tenant_id")?),
        name: row.get("name")?,
        provider: row.get("provider")?,
        phone_number_id: row.get("phone_number_id")?,
        waba_id: row.get("waba_id")?,
        rate_per_sec: row.get::<_, i64>("rate_per_sec")? as u32,
        burst: row.get::<_, i64>("burst")? as u32,
        provider_config: serde_json::from_str(&row.get::<_, String>("provider_config")?)
            .map_err(|e| corrupt("provider_config", e))?,
        created_at: Timestamp::from_millis(row.get("created_at")?),
    })
}

pub fn tenant(row: &Row<'_>) -> Result<TenantRecord, StoreError> {
    Ok(TenantRecord {
        id: TenantId::from_trusted(row.get("id")?),
        name: row.get("name")?,
        created_at: Timestamp::from_millis(row.get("created_at")?),
    })
}

pub fn token(row: &Row<'_>) -> Result<TokenRecord, StoreError> {
    Ok(TokenRecord {
        id: TokenId::from_trusted(row.get("id")?),
        tenant_id: TenantId::from_trusted(row.get("tenant_id")?),
        hint: row.get("hint")?,
        created_at: Timestamp::from_millis(row.get("created_at")?),
        revoked_at: ts(row.get("revoked_at")?),
    })
}

pub fn event(row: &Row<'_>) -> Result<MessageEvent, StoreError> {
    let status: String = row.get("status")?;
    let detail: String = row.get("detail")?;
    let kind: String = row.get("type")?;
    Ok(MessageEvent {
        id: EventId::from_trusted(row.get("id")?),
        event_type: EventType::parse(&kind).ok_or_else(|| corrupt("event type", &kind))?,
        tenant_id: TenantId::from_trusted(row.get("tenant_id")?),
        message_id: MessageId::from_trusted(row.get("message_id")?),
        instance_id: InstanceId::from_trusted(row.get("instance_id")?),
        status: status.parse().map_err(|e| corrupt("event status", e))?,
        chat_seq: row.get("chat_seq")?,
        seq: row.get("seq")?,
        at: Timestamp::from_millis(row.get("created_at")?),
        detail: serde_json::from_str(&detail).map_err(|e| corrupt("event detail", e))?,
    })
}

/// Runs a query and maps every row.
pub fn all<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    map: impl Fn(&Row<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(map(row)?);
    }
    Ok(out)
}

/// Runs a query and maps its first row, if any.
pub fn one<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    map: impl Fn(&Row<'_>) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    match rows.next()? {
        Some(row) => Ok(Some(map(row)?)),
        None => Ok(None),
    }
}

pub fn exec(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<usize, StoreError> {
    Ok(conn.prepare_cached(sql)?.execute(params)?)
}

/// Who a message belongs to, as events need it.
pub struct MessageRef {
    pub id: String,
    pub tenant_id: String,
    pub instance_id: String,
    pub chat_seq: i64,
}

impl MessageRef {
    pub fn from_row(row: &Row<'_>) -> Result<Self, StoreError> {
        Ok(Self {
            id: row.get("id")?,
            tenant_id: row.get("tenant_id")?,
            instance_id: row.get("instance_id")?,
            chat_seq: row.get("chat_seq")?,
        })
    }
}

/// Appends the event of a state change. Call it in the same job (so the same
/// transaction) as the change itself.
pub fn insert_event(
    conn: &Connection,
    msg: &MessageRef,
    status: MessageStatus,
    detail: &StatusDetail,
    at: Timestamp,
) -> Result<(), StoreError> {
    insert_event_of(conn, EventType::MessageStatus, msg, status, detail, at)
}

pub fn insert_event_of(
    conn: &Connection,
    kind: EventType,
    msg: &MessageRef,
    status: MessageStatus,
    detail: &StatusDetail,
    at: Timestamp,
) -> Result<(), StoreError> {
    exec(
        conn,
        "INSERT INTO events (id, tenant_id, message_id, instance_id, type, status, chat_seq, detail, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        params![
            EventId::generate().as_str(),
            msg.tenant_id,
            msg.id,
            msg.instance_id,
            kind.as_str(),
            status.as_str(),
            msg.chat_seq,
            serde_json::to_string(detail).expect("details serialise"),
            at.as_millis(),
        ],
    )?;
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

/// Adds a queue entry. It is its chat's head when no other entry of the chat
/// is queued (otherwise it waits for [`dequeue`] to promote it), and ready
/// when it is head and due.
pub fn enqueue(conn: &Connection, e: NewEntry<'_>, now: Timestamp) -> Result<(), StoreError> {
    exec(
        conn,
        "INSERT INTO queue_entries (message_id, tenant_id, instance_id, chat, priority, seq, attempt, visible_at, \
                                    is_head, ready) \
         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, h, h AND ?8 <= ?9 FROM \
           (SELECT NOT EXISTS (SELECT 1 FROM queue_entries WHERE instance_id = ?3 AND chat = ?4) AS h)",
        params![
            e.message_id,
            e.tenant_id,
            e.instance_id,
            e.chat,
            e.priority,
            e.seq,
            e.attempt,
            e.visible_at,
            now.as_millis()
        ],
    )?;
    Ok(())
}

/// Removes a message's queue entry; if it was its chat's head, the chat's
/// next entry (lowest seq) becomes head (and ready, if due).
pub fn dequeue(conn: &Connection, message_id: &str, now: Timestamp) -> Result<(), StoreError> {
    let removed = conn
        .prepare_cached("DELETE FROM queue_entries WHERE message_id = ? RETURNING instance_id, chat, is_head")?
        .query_row([message_id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, bool>(2)?)))
        .optional()?;
    if let Some((instance, chat, true)) = removed {
        exec(
            conn,
            "UPDATE queue_entries SET is_head = 1, ready = (visible_at <= ?3) WHERE message_id = \
             (SELECT message_id FROM queue_entries WHERE instance_id = ?1 AND chat = ?2 ORDER BY seq LIMIT 1)",
            params![instance, chat, now.as_millis()],
        )?;
    }
    Ok(())
}

/// Makes a (head) entry due again at `at`, ending its lease.
pub fn reschedule(
    conn: &Connection,
    message_id: &str,
    at: Timestamp,
    attempt: u32,
    now: Timestamp,
) -> Result<(), StoreError> {
    exec(
        conn,
        "UPDATE queue_entries SET visible_at = ?1, attempt = ?2, ready = (is_head AND ?1 <= ?3) WHERE message_id = ?4",
        params![at.as_millis(), attempt as i64, now.as_millis(), message_id],
    )?;
    Ok(())
}
