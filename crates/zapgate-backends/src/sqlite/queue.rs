//! `Queue` on SQLite: the `queue_entries` table, leased by the dispatcher.

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
    async fn claim(
        &self,
        claims: &[Claim],
        now: Timestamp,
        lease_ms: i64,
    ) -> Result<Vec<Delivery>, StoreError> {
        let claims = claims.to_vec();
        self.writer
            .write(Box::new(move |conn| {
                Box::pin(claim(conn, claims, now, lease_ms))
            }))
            .await
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
                    let cas: Vec<_> = deliveries
                        .into_iter()
                        .map(|d| (d.message_id, d.attempt))
                        .collect();
                    Ok(Some(begin_sending(conn, cas, now).await?))
                })
            }))
            .await
    }

    async fn settle(&self, settlements: Vec<(MessageId, Settlement)>) -> Result<(), StoreError> {
        self.writer
            .write(Box::new(move |conn| {
                Box::pin(async move {
                    for (id, s) in settlements {
                        match s {
                            Settlement::Done => rows::dequeue(conn, id.as_str()).await?,
                            Settlement::RetryAt { at, attempt } => {
                                rows::reschedule(conn, id.as_str(), at, attempt).await?
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

    async fn next_due(&self, now: Timestamp) -> Result<Option<Timestamp>, StoreError> {
        let t: Option<i64> =
            sqlx::query_scalar("SELECT MIN(visible_at) FROM queue_entries WHERE visible_at > ?")
                .bind(now.as_millis())
                .fetch_one(&self.read)
                .await?;
        Ok(t.map(Timestamp::from_millis))
    }

    async fn recover(&self, now: Timestamp) -> Result<u64, StoreError> {
        self.writer
            .write(Box::new(move |conn| {
                Box::pin(async move {
                    // A message caught in `sending` by a crash may or may not have
                    // reached the provider: send it again (at-least-once). The
                    // crash is not the provider's fault, so no attempt is spent.
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
                    // Entries whose outcome was stored but not yet settled.
                    sqlx::query(AssertSqlSafe(format!(
                        "DELETE FROM queue_entries WHERE message_id NOT IN \
                         (SELECT id FROM messages WHERE status IN {PENDING_STATUSES})"
                    )))
                    .execute(&mut *conn)
                    .await?;
                    // Leases die with the process; attempts and due times follow the store.
                    sqlx::query(
                        "UPDATE queue_entries SET lease_until = 0, \
                           attempt = (SELECT attempts FROM messages m WHERE m.id = queue_entries.message_id), \
                           visible_at = COALESCE((SELECT next_attempt_at FROM messages m \
                             WHERE m.id = queue_entries.message_id AND m.status = 'retry_wait'), visible_at)",
                    )
                    .execute(&mut *conn)
                    .await?;
                    sqlx::query(
                        "UPDATE queue_entries SET is_head = (seq = (SELECT MIN(q.seq) FROM queue_entries q \
                           WHERE q.instance_id = queue_entries.instance_id AND q.chat = queue_entries.chat))",
                    )
                    .execute(&mut *conn)
                    .await?;
                    Ok(requeued.len() as u64)
                })
            }))
            .await
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
            "UPDATE queue_entries SET lease_until = ?1 WHERE message_id IN ( \
               SELECT message_id FROM queue_entries \
               WHERE instance_id = ?2 AND is_head = 1 AND visible_at <= ?3 AND lease_until <= ?3 \
               ORDER BY priority, seq LIMIT ?4) \
             RETURNING message_id, tenant_id, instance_id, attempt, priority, seq",
        )
        .bind(now.as_millis() + lease_ms)
        .bind(c.instance_id.as_str())
        .bind(now.as_millis())
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
