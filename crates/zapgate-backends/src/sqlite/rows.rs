//! Row ↔ record mapping and the SQL fragments shared by the store and queue.

use crate::{InstanceRecord, MessageRecord, StoreError, TenantRecord, TokenRecord};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};
use zapgate_domain::event::StatusDetail;
use zapgate_domain::{
    ChatId, EventId, EventType, InstanceId, MessageEvent, MessageId, MessageStatus, Priority, TenantId, Timestamp,
    TokenId,
};

pub const MESSAGE_COLUMNS: &str = "id, tenant_id, instance_id, recipient, wa_id, content, priority, status, \
    attempts, chat_seq, provider_message_id, error_code, error_message, send_at, expires_at, next_attempt_at, \
    created_at, updated_at";

pub const INSTANCE_COLUMNS: &str =
    "id, tenant_id, name, provider, phone_number_id, waba_id, rate_per_sec, burst, created_at";

/// Statuses that still have a queue entry.
pub const PENDING_STATUSES: &str = "('scheduled','queued','sending','retry_wait')";

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn ts(v: Option<i64>) -> Option<Timestamp> {
    v.map(Timestamp::from_millis)
}

pub fn message(row: &SqliteRow) -> Result<MessageRecord, StoreError> {
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

pub fn instance(row: &SqliteRow) -> Result<InstanceRecord, StoreError> {
    Ok(InstanceRecord {
        id: InstanceId::from_trusted(row.try_get("id")?),
        tenant_id: TenantId::from_trusted(row.try_get("tenant_id")?),
        name: row.try_get("name")?,
        provider: row.try_get("provider")?,
        phone_number_id: row.try_get("phone_number_id")?,
        waba_id: row.try_get("waba_id")?,
        rate_per_sec: row.try_get::<i64, _>("rate_per_sec")? as u32,
        burst: row.try_get::<i64, _>("burst")? as u32,
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
    })
}

pub fn tenant(row: &SqliteRow) -> Result<TenantRecord, StoreError> {
    Ok(TenantRecord {
        id: TenantId::from_trusted(row.try_get("id")?),
        name: row.try_get("name")?,
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
    })
}

pub fn token(row: &SqliteRow) -> Result<TokenRecord, StoreError> {
    Ok(TokenRecord {
        id: TokenId::from_trusted(row.try_get("id")?),
        tenant_id: TenantId::from_trusted(row.try_get("tenant_id")?),
        hint: row.try_get("hint")?,
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
        revoked_at: ts(row.try_get("revoked_at")?),
    })
}

pub fn event(row: &SqliteRow) -> Result<MessageEvent, StoreError> {
    let status: String = row.try_get("status")?;
    let detail: String = row.try_get("detail")?;
    Ok(MessageEvent {
        id: EventId::from_trusted(row.try_get("id")?),
        event_type: EventType::MessageStatus,
        tenant_id: TenantId::from_trusted(row.try_get("tenant_id")?),
        message_id: MessageId::from_trusted(row.try_get("message_id")?),
        instance_id: InstanceId::from_trusted(row.try_get("instance_id")?),
        status: status.parse().map_err(|e| corrupt("event status", e))?,
        chat_seq: row.try_get("chat_seq")?,
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
    pub fn from_row(row: &SqliteRow) -> Result<Self, StoreError> {
        Ok(Self {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            instance_id: row.try_get("instance_id")?,
            chat_seq: row.try_get("chat_seq")?,
        })
    }
}

/// Appends the event of a state change. Call it in the same job (so the same
/// transaction) as the change itself.
pub async fn insert_event(
    conn: &mut SqliteConnection,
    msg: &MessageRef,
    status: MessageStatus,
    detail: &StatusDetail,
    at: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO events (id, tenant_id, message_id, instance_id, type, status, chat_seq, detail, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(EventId::generate().as_str())
    .bind(&msg.tenant_id)
    .bind(&msg.id)
    .bind(&msg.instance_id)
    .bind(EventType::MessageStatus.as_str())
    .bind(status.as_str())
    .bind(msg.chat_seq)
    .bind(serde_json::to_string(detail).expect("details serialise"))
    .bind(at.as_millis())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Adds a queue entry. It is its chat's head when no other entry of the chat
/// is queued (otherwise it waits for [`dequeue`] to promote it), and ready
/// when it is head and due.
#[allow(clippy::too_many_arguments)]
pub async fn enqueue(
    conn: &mut SqliteConnection,
    message_id: &str,
    tenant_id: &str,
    instance_id: &str,
    chat: &str,
    priority: i64,
    seq: i64,
    attempt: i64,
    visible_at: i64,
    now: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO queue_entries (message_id, tenant_id, instance_id, chat, priority, seq, attempt, visible_at, \
                                    is_head, ready) \
         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, h, h AND ?8 <= ?9 FROM \
           (SELECT NOT EXISTS (SELECT 1 FROM queue_entries WHERE instance_id = ?3 AND chat = ?4) AS h)",
    )
    .bind(message_id)
    .bind(tenant_id)
    .bind(instance_id)
    .bind(chat)
    .bind(priority)
    .bind(seq)
    .bind(attempt)
    .bind(visible_at)
    .bind(now.as_millis())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Removes a message's queue entry; if it was its chat's head, the chat's
/// next entry (lowest seq) becomes head (and ready, if due).
pub async fn dequeue(conn: &mut SqliteConnection, message_id: &str, now: Timestamp) -> Result<(), StoreError> {
    let removed = sqlx::query("DELETE FROM queue_entries WHERE message_id = ? RETURNING instance_id, chat, is_head")
        .bind(message_id)
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(row) = removed
        && row.try_get::<bool, _>("is_head")?
    {
        let instance: String = row.try_get("instance_id")?;
        let chat: String = row.try_get("chat")?;
        sqlx::query(
            "UPDATE queue_entries SET is_head = 1, ready = (visible_at <= ?3) WHERE message_id = \
             (SELECT message_id FROM queue_entries WHERE instance_id = ?1 AND chat = ?2 ORDER BY seq LIMIT 1)",
        )
        .bind(instance)
        .bind(chat)
        .bind(now.as_millis())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Makes a (head) entry due again at `at`, ending its lease.
pub async fn reschedule(
    conn: &mut SqliteConnection,
    message_id: &str,
    at: Timestamp,
    attempt: u32,
    now: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE queue_entries SET visible_at = ?1, attempt = ?2, ready = (is_head AND ?1 <= ?3) WHERE message_id = ?4",
    )
    .bind(at.as_millis())
    .bind(attempt as i64)
    .bind(now.as_millis())
    .bind(message_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
