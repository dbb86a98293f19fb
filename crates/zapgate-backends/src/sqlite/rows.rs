//! Row ↔ record mapping and the SQL pieces shared by the store and queue.

use crate::records::{self, Columns};
use crate::webhooks::{DeliveryRecord, EndpointRecord};
use crate::{InstanceRecord, MessageRecord, StoreError, TemplateRecord, TenantRecord, TokenRecord};
use rusqlite::{Connection, OptionalExtension, Row, params};
use zapgate_domain::event::StatusDetail;
use zapgate_domain::{EventId, EventType, MessageEvent, MessageStatus, Timestamp};

pub const MESSAGE_COLUMNS: &str = "id, tenant_id, instance_id, recipient, wa_id, content, priority, status, \
    attempts, chat_seq, provider_message_id, error_code, error_message, send_at, expires_at, next_attempt_at, \
    created_at, updated_at, reply_to";

pub const INSTANCE_COLUMNS: &str = "id, tenant_id, name, provider, provider_id, phone_number_id, waba_id, rate_per_sec, burst, provider_config, \
     created_at, state, state_reason, state_changed_at, phone_number";

pub const EVENT_COLUMNS: &str =
    "seq, id, tenant_id, message_id, instance_id, type, status, chat_seq, detail, created_at";

/// Statuses that still have a queue entry.
pub const PENDING_STATUSES: &str = "('scheduled','queued','sending','retry_wait')";

impl Columns for Row<'_> {
    fn text(&self, col: &str) -> Result<String, StoreError> {
        Ok(self.get(col)?)
    }
    fn text_opt(&self, col: &str) -> Result<Option<String>, StoreError> {
        Ok(self.get(col)?)
    }
    fn int(&self, col: &str) -> Result<i64, StoreError> {
        Ok(self.get(col)?)
    }
    fn int_opt(&self, col: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.get(col)?)
    }
    fn flag(&self, col: &str) -> Result<bool, StoreError> {
        Ok(self.get(col)?)
    }
}

// The shared mappers, as plain functions of this backend's row type (so they
// can be passed where a `Fn(&Row<'_>)` is expected).
pub fn message(row: &Row<'_>) -> Result<MessageRecord, StoreError> {
    records::message(row)
}
pub fn instance(row: &Row<'_>) -> Result<InstanceRecord, StoreError> {
    records::instance(row)
}
pub fn tenant(row: &Row<'_>) -> Result<TenantRecord, StoreError> {
    records::tenant(row)
}
pub fn token(row: &Row<'_>) -> Result<TokenRecord, StoreError> {
    records::token(row)
}
pub fn event(row: &Row<'_>) -> Result<MessageEvent, StoreError> {
    records::event(row)
}
pub fn provider(row: &Row<'_>) -> Result<crate::ProviderRecord, StoreError> {
    records::provider(row)
}
pub fn template(row: &Row<'_>) -> Result<TemplateRecord, StoreError> {
    records::template(row)
}
pub fn endpoint(row: &Row<'_>) -> Result<EndpointRecord, StoreError> {
    records::endpoint(row)
}
pub fn inbound(row: &Row<'_>) -> Result<crate::InboundRecord, StoreError> {
    records::inbound(row)
}
pub fn delivery(row: &Row<'_>) -> Result<DeliveryRecord, StoreError> {
    records::delivery(row)
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

/// Appends an `instance.status` event: it has no message, so its message
/// id and status are '' and its chat_seq 0.
pub fn insert_instance_event(
    conn: &Connection,
    kind: EventType,
    tenant: &str,
    instance: &str,
    detail: &StatusDetail,
    at: Timestamp,
) -> Result<(), StoreError> {
    exec(
        conn,
        "INSERT INTO events (id, tenant_id, message_id, instance_id, type, status, chat_seq, detail, created_at) \
         VALUES (?, ?, '', ?, ?, '', 0, ?, ?)",
        params![
            EventId::generate().as_str(),
            tenant,
            instance,
            kind.as_str(),
            serde_json::to_string(detail).expect("details serialise"),
            at.as_millis(),
        ],
    )?;
    Ok(())
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
