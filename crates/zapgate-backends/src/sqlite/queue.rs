//! `Queue` on SQLite: the `queue_entries` table (see the migration for the
//! `is_head` / `ready` / `visible_at` scheme).

use super::SqliteBackend;
use super::rows::{self, MessageRef, PENDING_STATUSES, all, exec, insert_event};
use super::store::begin_sending;
use crate::{BeginSending, Claim, Delivery, Queue, Settlement, StoreError, detail};
use async_trait::async_trait;
use rusqlite::{Connection, params};
use zapgate_domain::event::StatusDetail;
use zapgate_domain::{InstanceId, MessageId, MessageStatus, Priority, TenantId, Timestamp};

#[async_trait]
impl Queue for SqliteBackend {
    async fn claim(&self, claims: &[Claim], now: Timestamp, lease_ms: i64) -> Result<Vec<Delivery>, StoreError> {
        let claims = claims.to_vec();
        self.writer.write(Box::new(move |conn| claim(conn, claims, now, lease_ms))).await
    }

    async fn claim_and_begin(
        &self,
        claims: &[Claim],
        now: Timestamp,
        lease_ms: i64,
    ) -> Result<Option<BeginSending>, StoreError> {
        let claims = claims.to_vec();
        self.writer
            .write(Box::new(move |conn| {
                let deliveries = claim(conn, claims, now, lease_ms)?;
                let cas: Vec<_> = deliveries.into_iter().map(|d| (d.message_id, d.attempt)).collect();
                Ok(Some(begin_sending(conn, cas, now)?))
            }))
            .await
    }

    async fn settle(&self, settlements: Vec<(MessageId, Settlement)>) -> Result<(), StoreError> {
        self.writer
            .write(Box::new(move |conn| {
                let now = Timestamp::now();
                for (id, s) in settlements {
                    match s {
                        Settlement::Done => rows::dequeue(conn, id.as_str(), now)?,
                        Settlement::RetryAt { at, attempt } => rows::reschedule(conn, id.as_str(), at, attempt, now)?,
                    }
                }
                Ok(())
            }))
            .await
    }

    fn settled_by_store(&self) -> bool {
        true
    }

    async fn promote_due(&self, now: Timestamp) -> Result<Vec<InstanceId>, StoreError> {
        self.writer
            .write(Box::new(move |conn| {
                let mut ids = all(
                    conn,
                    "UPDATE queue_entries SET ready = 1 WHERE is_head = 1 AND ready = 0 AND visible_at <= ? \
                     RETURNING instance_id",
                    [now.as_millis()],
                    |r| Ok(InstanceId::from_trusted(r.get(0)?)),
                )?;
                ids.sort();
                ids.dedup();
                Ok(ids)
            }))
            .await
    }

    async fn next_due(&self, _now: Timestamp) -> Result<Option<Timestamp>, StoreError> {
        self.read(|c| {
            let t: Option<i64> =
                c.query_row("SELECT MIN(visible_at) FROM queue_entries WHERE is_head = 1 AND ready = 0", [], |r| {
                    r.get(0)
                })?;
            Ok(t.map(Timestamp::from_millis))
        })
        .await
    }

    async fn depth(&self) -> Result<u64, StoreError> {
        self.read(|c| Ok(c.query_row("SELECT COUNT(*) FROM queue_entries", [], |r| r.get::<_, i64>(0))? as u64)).await
    }

    async fn tenants_over(&self, limit: u64) -> Result<Vec<TenantId>, StoreError> {
        self.read(move |c| {
            all(c, "SELECT tenant_id FROM queue_entries GROUP BY tenant_id HAVING COUNT(*) > ?", [limit as i64], |r| {
                Ok(TenantId::from_trusted(r.get(0)?))
            })
        })
        .await
    }

    async fn oldest_ready(&self) -> Result<Option<Timestamp>, StoreError> {
        self.read(|c| {
            let due: Option<i64> =
                c.query_row("SELECT MIN(visible_at) FROM queue_entries WHERE ready = 1", [], |r| r.get(0))?;
            Ok(due.map(Timestamp::from_millis))
        })
        .await
    }

    async fn tenants_lagging(&self, due_before: Timestamp) -> Result<Vec<TenantId>, StoreError> {
        self.read(move |c| {
            all(
                c,
                "SELECT DISTINCT tenant_id FROM queue_entries WHERE ready = 1 AND visible_at < ?",
                [due_before.as_millis()],
                |r| Ok(TenantId::from_trusted(r.get(0)?)),
            )
        })
        .await
    }

    async fn recover(&self, now: Timestamp) -> Result<u64, StoreError> {
        self.writer.write(Box::new(move |conn| recover(conn, now))).await
    }
}

fn claim(conn: &Connection, claims: Vec<Claim>, now: Timestamp, lease_ms: i64) -> Result<Vec<Delivery>, StoreError> {
    let mut out = Vec::new();
    for c in claims {
        let mut got = all(
            conn,
            "UPDATE queue_entries SET ready = 0, visible_at = ?1 WHERE message_id IN ( \
               SELECT message_id FROM queue_entries WHERE instance_id = ?2 AND ready = 1 \
               ORDER BY priority, seq LIMIT ?3) \
             RETURNING message_id, tenant_id, instance_id, attempt, priority, seq",
            params![now.as_millis() + lease_ms, c.instance_id.as_str(), c.max],
            |r| {
                Ok(Delivery {
                    message_id: MessageId::from_trusted(r.get("message_id")?),
                    tenant_id: TenantId::from_trusted(r.get("tenant_id")?),
                    instance_id: InstanceId::from_trusted(r.get("instance_id")?),
                    attempt: r.get::<_, i64>("attempt")? as u32,
                    priority: Priority::from_rank(r.get("priority")?),
                    seq: r.get("seq")?,
                })
            },
        )?;
        // RETURNING order is unspecified; hand work out in queue order.
        got.sort_by_key(|d| (d.priority, d.seq));
        out.append(&mut got);
    }
    Ok(out)
}

/// Start-up reconciliation of the queue with message state (embedded mode
/// only: the file lock guarantees no other process holds a lease).
fn recover(conn: &Connection, now: Timestamp) -> Result<u64, StoreError> {
    let now_ms = now.as_millis();
    // A message caught in `sending` by a crash may or may not have reached
    // the provider: send it again (at-least-once). The crash is not the
    // provider's fault, so no attempt is spent.
    let requeued = all(
        conn,
        "UPDATE messages SET status = 'queued', updated_at = ? WHERE status = 'sending' \
         RETURNING id, tenant_id, instance_id, chat_seq",
        [now_ms],
        MessageRef::from_row,
    )?;
    let d = StatusDetail { reason: Some("requeued after restart".into()), ..detail() };
    for m in &requeued {
        insert_event(conn, m, MessageStatus::Queued, &d, now)?;
    }
    // Pending messages of deleted instances can never be sent.
    let orphans = all(
        conn,
        &format!(
            "UPDATE messages SET status = 'cancelled', updated_at = ?1, error_code = 'instance_deleted', \
             error_message = 'the instance was deleted before the message was sent' \
             WHERE status IN {PENDING_STATUSES} \
               AND instance_id IN (SELECT id FROM instances WHERE deleted_at IS NOT NULL) \
             RETURNING id, tenant_id, instance_id, chat_seq"
        ),
        [now_ms],
        MessageRef::from_row,
    )?;
    let d = StatusDetail { reason: Some("instance deleted".into()), ..detail() };
    for m in &orphans {
        insert_event(conn, m, MessageStatus::Cancelled, &d, now)?;
    }
    // Entries whose outcome was stored but not settled.
    exec(
        conn,
        &format!(
            "DELETE FROM queue_entries WHERE message_id NOT IN \
             (SELECT id FROM messages WHERE status IN {PENDING_STATUSES})"
        ),
        [],
    )?;
    // Leases die with the process; attempts and due times follow the store.
    exec(
        conn,
        "UPDATE queue_entries SET \
           attempt = (SELECT attempts FROM messages m WHERE m.id = queue_entries.message_id), \
           visible_at = COALESCE((SELECT CASE m.status WHEN 'retry_wait' THEN m.next_attempt_at \
                                                        WHEN 'scheduled' THEN m.send_at END \
                                  FROM messages m WHERE m.id = queue_entries.message_id), ?1)",
        [now_ms],
    )?;
    exec(
        conn,
        "UPDATE queue_entries SET is_head = (seq = (SELECT MIN(q.seq) FROM queue_entries q \
           WHERE q.instance_id = queue_entries.instance_id AND q.chat = queue_entries.chat))",
        [],
    )?;
    exec(conn, "UPDATE queue_entries SET ready = (is_head AND visible_at <= ?)", [now_ms])?;
    Ok(requeued.len() as u64)
}
