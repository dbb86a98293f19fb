//! Row ↔ record mapping and the SQL pieces shared by the Postgres store and
//! queue (the same columns as the SQLite backend's `rows`).

use crate::StoreError;
use crate::records::Columns;
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, PgConnection, Row};
use std::collections::HashMap;
use zapgate_domain::event::StatusDetail;
use zapgate_domain::{EventId, EventType, MessageStatus, Timestamp};

pub const MESSAGE_COLUMNS: &str = "id, tenant_id, instance_id, recipient, wa_id, content, priority, status, \
    attempts, chat_seq, provider_message_id, error_code, error_message, send_at, expires_at, next_attempt_at, \
    created_at, updated_at, reply_to";

pub const INSTANCE_COLUMNS: &str = "id, tenant_id, name, provider, provider_id, phone_number_id, waba_id, rate_per_sec, burst, provider_config, \
     created_at, state, state_reason, state_changed_at, phone_number";

pub const EVENT_COLUMNS: &str =
    "seq, id, tenant_id, message_id, instance_id, type, status, chat_seq, detail, created_at";

impl Columns for PgRow {
    fn text(&self, col: &str) -> Result<String, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn text_opt(&self, col: &str) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn int(&self, col: &str) -> Result<i64, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn int_opt(&self, col: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn flag(&self, col: &str) -> Result<bool, StoreError> {
        Ok(self.try_get(col)?)
    }
}

pub use crate::records::{delivery, endpoint, event, instance, message, provider, template, tenant, token};

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

/// Appends an `instance.status` event, marked for fan-out: it has no
/// message, so its message id and status are '' and its chat_seq 0.
pub async fn insert_instance_event(
    conn: &mut PgConnection,
    kind: EventType,
    tenant: &str,
    instance: &str,
    detail: &StatusDetail,
    at: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query(
        "WITH e AS (INSERT INTO events (id, tenant_id, message_id, instance_id, type, status, chat_seq, detail, \
         created_at) VALUES ($1, $2, '', $3, $4, '', 0, $5, $6) RETURNING seq) \
         INSERT INTO events_unfanned (event_seq) SELECT seq FROM e",
    )
    .bind(EventId::generate().as_str())
    .bind(tenant)
    .bind(instance)
    .bind(kind.as_str())
    .bind(serde_json::to_string(detail).expect("details serialise"))
    .bind(at.as_millis())
    .execute(conn)
    .await?;
    Ok(())
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
    let rows: Vec<_> = msgs.iter().map(|(m, d)| (*m, status, d, at)).collect();
    insert_status_events(conn, &rows).await
}

/// Appends one `message.status` event per row (each its own status and
/// time), in one statement.
pub async fn insert_status_events(
    conn: &mut PgConnection,
    rows: &[(&MessageRef, MessageStatus, &StatusDetail, Timestamp)],
) -> Result<(), StoreError> {
    insert_events_of(conn, EventType::MessageStatus, rows).await
}

/// Appends one message event of type `kind` per row, in one statement.
pub async fn insert_events_of(
    conn: &mut PgConnection,
    kind: EventType,
    rows: &[(&MessageRef, MessageStatus, &StatusDetail, Timestamp)],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(rows.len());
    let (mut tenants, mut messages, mut instances, mut seqs, mut details) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut statuses, mut ats) = (Vec::new(), Vec::new());
    for (m, status, d, at) in rows {
        ids.push(EventId::generate().to_string());
        tenants.push(m.tenant_id.clone());
        messages.push(m.id.clone());
        instances.push(m.instance_id.clone());
        seqs.push(m.chat_seq);
        details.push(serde_json::to_string(d).expect("details serialise"));
        statuses.push(status.as_str());
        ats.push(at.as_millis());
    }
    sqlx::query(
        "WITH e AS (INSERT INTO events (id, tenant_id, message_id, instance_id, type, status, chat_seq, detail, \
         created_at) SELECT i, t, m, n, $9, s, c, d, a \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::bigint[], \
                     $8::text[]) AS u(i, t, m, n, c, s, a, d) \
         RETURNING seq) INSERT INTO events_unfanned (event_seq) SELECT seq FROM e",
    )
    .bind(ids)
    .bind(tenants)
    .bind(messages)
    .bind(instances)
    .bind(seqs)
    .bind(statuses)
    .bind(ats)
    .bind(details)
    .bind(kind.as_str())
    .execute(conn)
    .await?;
    Ok(())
}

/// The next chat sequence number of each of a batch's messages, one
/// `(instance, chat)` each, in batch order within each chat (one upsert per
/// chat, taken in a fixed order so concurrent batches do not deadlock).
pub async fn next_chat_seqs(conn: &mut PgConnection, chats: &[(&str, String)]) -> Result<Vec<i64>, StoreError> {
    let mut per_chat: HashMap<(&str, &str), i64> = HashMap::new();
    for (instance, chat) in chats {
        *per_chat.entry((instance, chat.as_str())).or_default() += 1;
    }
    let mut upserts: Vec<(&(&str, &str), &i64)> = per_chat.iter().collect();
    upserts.sort();
    let rows = sqlx::query(
        "INSERT INTO chats (instance_id, chat, last_seq) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[]) \
         ON CONFLICT (instance_id, chat) DO UPDATE SET last_seq = chats.last_seq + EXCLUDED.last_seq \
         RETURNING instance_id, chat, last_seq",
    )
    .bind(upserts.iter().map(|((i, _), _)| *i).collect::<Vec<_>>())
    .bind(upserts.iter().map(|((_, c), _)| *c).collect::<Vec<_>>())
    .bind(upserts.iter().map(|(_, n)| **n).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    // The first of the batch's messages in a chat gets last - n + 1, and so on.
    let mut next: HashMap<(String, String), i64> = HashMap::with_capacity(rows.len());
    for r in &rows {
        let (instance, chat): (String, String) = (r.try_get("instance_id")?, r.try_get("chat")?);
        let last: i64 = r.try_get("last_seq")?;
        let n = per_chat[&(instance.as_str(), chat.as_str())];
        next.insert((instance, chat), last - n + 1);
    }
    Ok(chats
        .iter()
        .map(|(instance, chat)| {
            let seq = next.get_mut(&((*instance).to_owned(), chat.clone())).expect("every chat upserted");
            *seq += 1;
            *seq - 1
        })
        .collect())
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

/// The SQL that takes the chat lock of `instance` and `chat` (two SQL
/// expressions): one key derivation for every place that locks a chat.
pub fn lock_chat_sql(instance: &str, chat: &str) -> String {
    format!("pg_advisory_xact_lock(hashtextextended({instance} || '/' || {chat}, 0))")
}

/// Serialises head changes of one queue chat until the transaction ends:
/// without it, an enqueue and the dequeue of the chat's head could each miss
/// the other's uncommitted row and leave the chat with no head at all.
async fn lock_chat(conn: &mut PgConnection, instance: &str, chat: &str) -> Result<(), StoreError> {
    sqlx::query(AssertSqlSafe(format!("SELECT {}", lock_chat_sql("$1", "$2"))))
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

/// Takes the chat lock of a message's queue entry, if it has one.
pub async fn lock_chat_of(conn: &mut PgConnection, message_id: &str) -> Result<(), StoreError> {
    let entry = sqlx::query("SELECT instance_id, chat FROM queue_entries WHERE message_id = $1")
        .bind(message_id)
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(r) = entry {
        let (instance, chat): (String, String) = (r.try_get("instance_id")?, r.try_get("chat")?);
        lock_chat(conn, &instance, &chat).await?;
    }
    Ok(())
}

/// Removes the queue entries of these messages; each chat that lost its
/// head gets its next entry (lowest seq) as head (and ready, if due).
pub async fn dequeue(conn: &mut PgConnection, message_ids: &[&str], now: Timestamp) -> Result<(), StoreError> {
    if message_ids.is_empty() {
        return Ok(());
    }
    // Every removal takes its chat's lock first, head or not: a non-head
    // removed unlocked could be the very row a concurrent head removal
    // promotes, and the chat would be left with no head. The locks are taken
    // in a fixed order, so two dequeues of many chats cannot deadlock.
    sqlx::query(AssertSqlSafe(format!(
        "SELECT {} FROM (SELECT DISTINCT instance_id AS i, chat AS c FROM queue_entries \
         WHERE message_id = ANY($1) ORDER BY i, c) x",
        lock_chat_sql("i", "c")
    )))
    .bind(message_ids)
    .execute(&mut *conn)
    .await?;
    let gone = sqlx::query("DELETE FROM queue_entries WHERE message_id = ANY($1) RETURNING instance_id, chat, is_head")
        .bind(message_ids)
        .fetch_all(&mut *conn)
        .await?;
    let (mut instances, mut chats) = (Vec::new(), Vec::new());
    for r in &gone {
        if r.try_get::<bool, _>("is_head")? {
            instances.push(r.try_get::<String, _>("instance_id")?);
            chats.push(r.try_get::<String, _>("chat")?);
        }
    }
    if instances.is_empty() {
        return Ok(());
    }
    // Each chat that lost its head gets its first remaining entry as head.
    sqlx::query(
        "UPDATE queue_entries SET is_head = TRUE, ready = (visible_at <= $3) WHERE message_id IN ( \
           SELECT (SELECT q.message_id FROM queue_entries q WHERE q.instance_id = u.i AND q.chat = u.c \
                   ORDER BY q.seq LIMIT 1) \
           FROM UNNEST($1::text[], $2::text[]) AS u(i, c))",
    )
    .bind(instances)
    .bind(chats)
    .bind(now.as_millis())
    .execute(conn)
    .await?;
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
