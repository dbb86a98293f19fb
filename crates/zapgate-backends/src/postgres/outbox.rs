//! `Outbox` on PostgreSQL: the queue table is the outbox; the relay and the
//! broker consumers only move an entry's lease (see [`lease`]).

use super::store::{Claimed, begin_sending};
use super::{PgBackend, again, lease};
use crate::{BeginSending, Outbox, OutboxEntry, RelayLimits, StoreError};
use async_trait::async_trait;
use sqlx::Row;
use zapgate_domain::{InstanceId, MessageId, TenantId, Timestamp};

#[async_trait]
impl Outbox for PgBackend {
    async fn take(&self, limits: &RelayLimits, now: Timestamp) -> Result<Vec<OutboxEntry>, StoreError> {
        // Instances with ready work (a loose index scan of `queue_ready`);
        // what each tenant and instance already has in flight (leased rows,
        // the `queue_leased` index, but not retries parked in a wait queue:
        // published with a due time still ahead); per instance its next entries up to its
        // cap; then round-robin over tenants (each tenant's 1st entry, then
        // each one's 2nd, …) within the tenant cap and the batch.
        let rows = sqlx::query(
            "WITH RECURSIVE r AS ( \
               (SELECT instance_id FROM queue_entries WHERE ready ORDER BY instance_id LIMIT 1) \
               UNION ALL \
               SELECT (SELECT q.instance_id FROM queue_entries q WHERE q.ready AND q.instance_id > r.instance_id \
                       ORDER BY q.instance_id LIMIT 1) FROM r WHERE r.instance_id IS NOT NULL), \
             busy AS (SELECT instance_id, tenant_id, COUNT(*) AS n FROM queue_entries \
                      WHERE lease_owner IS NOT NULL AND NOT (lease_owner = $7 AND visible_at > $6) \
                      GROUP BY instance_id, tenant_id), \
             cand AS ( \
               SELECT e.message_id, e.tenant_id, e.priority, e.seq FROM r \
               JOIN instances i ON i.id = r.instance_id \
               CROSS JOIN LATERAL ( \
                 SELECT q.message_id, q.tenant_id, q.priority, q.seq FROM queue_entries q \
                 WHERE q.instance_id = r.instance_id AND q.ready ORDER BY q.priority, q.seq \
                 LIMIT GREATEST(0, GREATEST($1::bigint, i.rate_per_sec * $2::bigint / 1000) \
                       - COALESCE((SELECT SUM(b.n) FROM busy b WHERE b.instance_id = r.instance_id), 0)) \
                 FOR UPDATE SKIP LOCKED) e), \
             ranked AS ( \
               SELECT c.message_id, c.seq, \
                      row_number() OVER (PARTITION BY c.tenant_id ORDER BY c.priority, c.seq) AS rn, \
                      $3::bigint - COALESCE((SELECT SUM(b.n) FROM busy b WHERE b.tenant_id = c.tenant_id), 0) AS room \
               FROM cand c), \
             pick AS (SELECT message_id FROM ranked WHERE rn <= room ORDER BY rn, seq LIMIT $4) \
           UPDATE queue_entries q SET ready = FALSE, lease_owner = $5, visible_at = $6 FROM pick \
           WHERE q.message_id = pick.message_id \
           RETURNING q.message_id, q.tenant_id, q.instance_id, q.attempt",
        )
        .bind(i64::from(limits.instance_floor))
        .bind(i64::from(limits.lookahead_ms))
        .bind(i64::from(limits.tenant_cap))
        .bind(i64::from(limits.batch))
        .bind(lease::relaying(self.owner()))
        .bind(now.as_millis())
        .bind(lease::IN_BROKER)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(OutboxEntry {
                    message_id: MessageId::from_trusted(r.try_get("message_id")?),
                    tenant_id: TenantId::from_trusted(r.try_get("tenant_id")?),
                    instance_id: InstanceId::from_trusted(r.try_get("instance_id")?),
                    attempt: r.try_get::<i64, _>("attempt")? as u32,
                })
            })
            .collect()
    }

    async fn published(&self, ids: &[MessageId]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        // Only rows still leased to this relay: a worker may already have
        // taken the message (the broker delivered it before the confirm came).
        sqlx::query("UPDATE queue_entries SET lease_owner = $1 WHERE message_id = ANY($2) AND lease_owner = $3")
            .bind(lease::IN_BROKER)
            .bind(ids.iter().map(|id| id.to_string()).collect::<Vec<_>>())
            .bind(lease::relaying(self.owner()))
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn unpublished(&self, ids: &[MessageId], retry_at: Timestamp) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE queue_entries SET lease_owner = NULL, visible_at = $1, ready = (is_head AND $1 <= $2) \
             WHERE message_id = ANY($3) AND lease_owner = $4",
        )
        .bind(retry_at.as_millis())
        .bind(Timestamp::now().as_millis())
        .bind(ids.iter().map(|id| id.to_string()).collect::<Vec<_>>())
        .bind(lease::relaying(self.owner()))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn parked(&self, id: &MessageId, attempt: u32) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE queue_entries SET lease_owner = $1, ready = FALSE \
             WHERE message_id = $2 AND attempt = $3 AND lease_owner IS NULL",
        )
        .bind(lease::IN_BROKER)
        .bind(id.as_str())
        .bind(i64::from(attempt))
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn republish_stale(&self, before: Timestamp, now: Timestamp) -> Result<u64, StoreError> {
        // visible_at of a published entry is when the relay took it.
        let n = sqlx::query(
            "UPDATE queue_entries SET lease_owner = NULL, visible_at = $1, ready = is_head \
             WHERE lease_owner = $2 AND visible_at < $3",
        )
        .bind(now.as_millis())
        .bind(lease::IN_BROKER)
        .bind(before.as_millis())
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(n)
    }

    async fn begin_delivered(
        &self,
        deliveries: &[(MessageId, u32)],
        now: Timestamp,
        lease_ms: i64,
    ) -> Result<BeginSending, StoreError> {
        let mut tries = 0;
        loop {
            let r = self.begin_delivered_once(deliveries, now, lease_ms).await;
            if !again(&r, &mut tries).await {
                return r;
            }
        }
    }

    async fn live_workers(&self) -> Result<usize, StoreError> {
        self.live_workers_count().await
    }

    async fn try_own_shard(&self, shard: u16) -> Result<bool, StoreError> {
        self.session.try_own(&shard_key(shard)).await
    }

    async fn release_shard(&self, shard: u16) -> Result<(), StoreError> {
        self.session.disown(&shard_key(shard)).await
    }

    fn owns_shard(&self, shard: u16) -> bool {
        self.session.owns(&shard_key(shard))
    }
}

/// The session lock of a work shard shares the instances' namespace; the
/// key cannot collide with an instance id (those start with `ins_`).
fn shard_key(shard: u16) -> String {
    format!("shard:{shard}")
}

impl PgBackend {
    async fn begin_delivered_once(
        &self,
        deliveries: &[(MessageId, u32)],
        now: Timestamp,
        lease_ms: i64,
    ) -> Result<BeginSending, StoreError> {
        let mut tx = self.pool().begin().await?;
        // The message rows first (locked by the compare-and-set), then only the
        // winners' entries: a duplicate that loses never touches the lease of
        // the process sending the message.
        let begun = begin_sending(&mut tx, deliveries, now, Claimed::FromBroker).await?;
        if !begun.won.is_empty() {
            sqlx::query(
                "UPDATE queue_entries SET lease_owner = $1, ready = FALSE, visible_at = $2 WHERE message_id = ANY($3)",
            )
            .bind(lease::sending(self.owner()))
            .bind(now.as_millis() + lease_ms)
            .bind(begun.won.iter().map(|m| m.id.to_string()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(begun)
    }
}
