//! `Queue` on SQLite: the `queue_entries` table (see the migration for the
//! `is_head` / `ready` / `visible_at` scheme).

use super::SqliteBackend;
use super::rows::{self, MessageRef, PENDING_STATUSES, insert_event};
use super::store::begin_sending;
use crate::{BeginSending, Claim, Delivery, Queue, Settlement, StoreError, detail};
use async_trait::async_trait;
use sqlx::{AssertSqlSafe, Row, SqliteConnection};
use zapgate_domain::event::StatusDetail;
use zapgate_domain::{InstanceId, MessageId, MessageStatus, Priority, TenantId, Timestamp};

#[async_trait]
impl Queue for SqliteBackend {
    async fn claim(&self, claims: &[Claim], now: Timestamp, lease_ms: i64) -> Result<Vec<Delivery>, StoreError> {
        let claims = claims.to_vec();
        self.writer.write(Box::new(move |conn| Box::pin(claim(conn, claims, now, lease_ms)))).await
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
                Box::pin(async move {
                    let deliveries = claim(conn, claims, now, lease_ms).await?;
                    let cas: Vec<_> = deliveries.into_iter().map(|d| (d.message_id, d.attempt)).collect();
                    Ok(Some(begin_sending(conn, cas, now).await?))
                })
            }))
            .await
    }

    async fn settle(&self, settlements: Vec<(MessageId, Settlement)>) -> Result<(), StoreError> {
        self.writer
            .write(Box::new(move |conn| {
                Box::pin(async move {
                    let now = Timestamp::now();
                    for (id, s) in settlements {
                        match s {
                            Settlement::Done => rows::dequeue(conn, id.as_str(), now).await?,
                            Settlement::RetryAt { at, attempt } => {
                                rows::reschedule(conn, id.as_str(), at, attempt, now).await?
                            }
                        }
                    }
                    Ok(())
                })
            }))
            .await
    }

    fn settled_by_store(&self) -> bool {
        true
    }

    async fn promote_due(&self, now: Timestamp) -> Result<Vec<InstanceId>, StoreError> {
        self.writer
            .write(Box::new(move |conn| {
                Box::pin(async move {
                    let ids: Vec<String> = sqlx::query_scalar(
                        "UPDATE queue_entries SET ready = 1 WHERE is_head = 1 AND ready = 0 AND visible_at <= ? \
                         RETURNING instance_id",
                    )
                    .bind(now.as_millis())
                    .fetch_all(&mut *conn)
                    .await?;
                    let mut ids: Vec<InstanceId> = ids.into_iter().map(InstanceId::from_trusted).collect();
                    ids.sort();
                    ids.dedup();
                    Ok(ids)
                })
            }))
            .await
    }

    async fn next_due(&self, _now: Timestamp) -> Result<Option<Timestamp>, StoreError> {
        let t: Option<i64> =
            sqlx::query_scalar("SELECT MIN(visible_at) FROM queue_entries WHERE is_head = 1 AND ready = 0")
                .fetch_one(&self.read)
                .await?;
        Ok(t.map(Timestamp::from_millis))
    }

    async fn recover(&self, now: Timestamp) -> Result<u64, StoreError> {
        self.writer.write(Box::new(move |conn| Box::pin(recover(conn, now)))).await
    }
}

async fn claim(
    conn: &mut SqliteConnection,
    claims: Vec<Claim>,
    now: Timestamp,
    lease_ms: i64,
) -> Result<Vec<Delivery>, StoreError> {
    let mut out = Vec::new();
    for c in claims {
        let rows = sqlx::query(
            "UPDATE queue_entries SET ready = 0, visible_at = ?1 WHERE message_id IN ( \
               SELECT message_id FROM queue_entries WHERE instance_id = ?2 AND ready = 1 \
               ORDER BY priority, seq LIMIT ?3) \
             RETURNING message_id, tenant_id, instance_id, attempt, priority, seq",
        )
        .bind(now.as_millis() + lease_ms)
        .bind(c.instance_id.as_str())
        .bind(c.max as i64)
        .fetch_all(&mut *conn)
        .await?;
        let start = out.len();
        for r in rows {
            out.push(Delivery {
                message_id: MessageId::from_trusted(r.try_get("message_id")?),
                tenant_id: TenantId::from_trusted(r.try_get("tenant_id")?),
                instance_id: InstanceId::from_trusted(r.try_get("instance_id")?),
                attempt: r.try_get::<i64, _>("attempt")? as u32,
                priority: Priority::from_rank(r.try_get("priority")?),
                seq: r.try_get("seq")?,
            });
        }
        // RETURNING order is unspecified; hand work out in queue order.
        out[start..].sort_by_key(|d| (d.priority, d.seq));
    }
    Ok(out)
}

/// Start-up reconciliation of the queue with message state (embedded mode
/// only: the file lock guarantees no other process holds a lease).
async fn recover(conn: &mut SqliteConnection, now: Timestamp) -> Result<u64, StoreError> {
    // A message caught in `sending` by a crash may or may not have reached
    // the provider: send it again (at-least-once). The crash is not the
    // provider's fault, so no attempt is spent.
    let requeued = sqlx::query(
        "UPDATE messages SET status = 'queued', updated_at = ? WHERE status = 'sending' \
         RETURNING id, tenant_id, instance_id, chat_seq",
    )
    .bind(now.as_millis())
    .fetch_all(&mut *conn)
    .await?;
    let d = StatusDetail { reason: Some("requeued after restart".into()), ..detail() };
    for row in &requeued {
        insert_event(conn, &MessageRef::from_row(row)?, MessageStatus::Queued, &d, now).await?;
    }
    // Pending messages of deleted instances can never be sent.
    let orphans = sqlx::query(AssertSqlSafe(format!(
        "UPDATE messages SET status = 'cancelled', updated_at = ?1, error_code = 'instance_deleted', \
         error_message = 'the instance was deleted before the message was sent' \
         WHERE status IN {PENDING_STATUSES} \
           AND instance_id IN (SELECT id FROM instances WHERE deleted_at IS NOT NULL) \
         RETURNING id, tenant_id, instance_id, chat_seq"
    )))
    .bind(now.as_millis())
    .fetch_all(&mut *conn)
    .await?;
    let d = StatusDetail { reason: Some("instance deleted".into()), ..detail() };
    for row in &orphans {
        insert_event(conn, &MessageRef::from_row(row)?, MessageStatus::Cancelled, &d, now).await?;
    }
    // Entries whose outcome was stored but not settled.
    sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM queue_entries WHERE message_id NOT IN \
         (SELECT id FROM messages WHERE status IN {PENDING_STATUSES})"
    )))
    .execute(&mut *conn)
    .await?;
    // Leases die with the process; attempts and due times follow the store.
    sqlx::query(
        "UPDATE queue_entries SET \
           attempt = (SELECT attempts FROM messages m WHERE m.id = queue_entries.message_id), \
           visible_at = COALESCE((SELECT CASE m.status WHEN 'retry_wait' THEN m.next_attempt_at \
                                                        WHEN 'scheduled' THEN m.send_at END \
                                  FROM messages m WHERE m.id = queue_entries.message_id), ?1)",
    )
    .bind(now.as_millis())
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE queue_entries SET is_head = (seq = (SELECT MIN(q.seq) FROM queue_entries q \
           WHERE q.instance_id = queue_entries.instance_id AND q.chat = queue_entries.chat))",
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE queue_entries SET ready = (is_head AND visible_at <= ?)")
        .bind(now.as_millis())
        .execute(&mut *conn)
        .await?;
    Ok(requeued.len() as u64)
}
