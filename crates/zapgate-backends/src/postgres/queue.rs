//! `Queue` on PostgreSQL: the `queue_entries` table with the SQLite queue's
//! `is_head` / `ready` / `visible_at` scheme, made safe for several
//! processes: claims skip rows another process is claiming (`FOR UPDATE
//! SKIP LOCKED`) and every lease names its owner.
//!
//! Leases of a dead process: each process holds a session advisory lock on
//! its owner id ([`PgBackend::open`]). Whoever can take that lock knows the
//! owner is gone, and returns its leases to the queue at once; messages it
//! left in `sending` are sent again (at-least-once), with no attempt spent.

use super::rows::{self, MessageRef};
use super::store::{Claimed, begin_sending};
use super::{PgBackend, lease, lock_ns};
use crate::{BeginSending, Claim, Delivery, Queue, Settlement, StoreError, detail};
use async_trait::async_trait;
use sqlx::{PgConnection, Row};
use zapgate_domain::event::StatusDetail;
use zapgate_domain::{InstanceId, MessageId, MessageStatus, Priority, TenantId, Timestamp};

/// How soon to look again for orphaned leases while another process holds some.
const FOREIGN_LEASE_CHECK_MS: i64 = 1_000;
/// Other processes (API replicas) enqueue without waking this one, so an
/// idle dispatcher looks at the queue this often.
const POLL_MS: i64 = 100;

#[async_trait]
impl Queue for PgBackend {
    async fn claim(&self, claims: &[Claim], now: Timestamp, lease_ms: i64) -> Result<Vec<Delivery>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let out = claim(&mut tx, claims, now, lease_ms, self.owner()).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn claim_and_begin(
        &self,
        claims: &[Claim],
        now: Timestamp,
        lease_ms: i64,
    ) -> Result<Option<BeginSending>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let deliveries = claim(&mut tx, claims, now, lease_ms, self.owner()).await?;
        let cas: Vec<_> = deliveries.into_iter().map(|d| (d.message_id, d.attempt)).collect();
        let begun = begin_sending(&mut tx, &cas, now, Claimed::FromTable).await?;
        tx.commit().await?;
        if !begun.won.is_empty() {
            self.wake();
        }
        Ok(Some(begun))
    }

    async fn settle(&self, settlements: Vec<(MessageId, Settlement)>) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        let now = Timestamp::now();
        let mut done = Vec::new();
        for (id, s) in &settlements {
            match s {
                Settlement::Done => done.push(id.as_str()),
                Settlement::RetryAt { at, attempt } => {
                    rows::reschedule(&mut tx, id.as_str(), *at, *attempt, now).await?
                }
            }
        }
        rows::dequeue(&mut tx, &done, now).await?;
        tx.commit().await?;
        Ok(())
    }

    fn settled_by_store(&self) -> bool {
        true
    }

    async fn promote_due(&self, now: Timestamp) -> Result<Vec<InstanceId>, StoreError> {
        // Every dispatcher round passes here: keep the owner session (and so
        // this process's leases and instances) alive.
        if let Err(e) = self.session.check().await {
            tracing::warn!(error = %e, "the PostgreSQL owner session is down; reconnecting");
        }
        let mut ids = self.reclaim_orphaned(now).await?.1;
        let promoted: Vec<String> = sqlx::query_scalar(
            "UPDATE queue_entries SET ready = TRUE \
             WHERE is_head AND NOT ready AND visible_at <= $1 AND lease_owner IS NULL RETURNING instance_id",
        )
        .bind(now.as_millis())
        .fetch_all(self.pool())
        .await?;
        ids.extend(promoted.into_iter().map(InstanceId::from_trusted));
        // Entries enqueued ready by other processes marked nothing here: name
        // every instance with ready work (a loose index scan of `queue_ready`,
        // one probe per instance however long its backlog).
        let ready: Vec<String> = sqlx::query_scalar(
            "WITH RECURSIVE r AS ( \
               (SELECT instance_id FROM queue_entries WHERE ready ORDER BY instance_id LIMIT 1) \
               UNION ALL \
               SELECT (SELECT q.instance_id FROM queue_entries q WHERE q.ready AND q.instance_id > r.instance_id \
                       ORDER BY q.instance_id LIMIT 1) FROM r WHERE r.instance_id IS NOT NULL) \
             SELECT instance_id FROM r WHERE instance_id IS NOT NULL",
        )
        .fetch_all(self.pool())
        .await?;
        ids.extend(ready.into_iter().map(InstanceId::from_trusted));
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    async fn next_due(&self, now: Timestamp) -> Result<Option<Timestamp>, StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT MIN(visible_at) FROM queue_entries WHERE is_head AND NOT ready AND lease_owner IS NULL) AS due, \
                    EXISTS (SELECT 1 FROM queue_entries WHERE lease_owner IS NOT NULL AND lease_owner <> $2 \
                              AND abs(lease_owner) <> $1) AS foreign",
        )
        .bind(self.owner())
        .bind(lease::IN_BROKER)
        .fetch_one(self.pool())
        .await?;
        let due: Option<i64> = row.try_get("due")?;
        // Another process's leases: look again soon in case it died.
        let foreign = row.try_get::<bool, _>("foreign")?.then_some(now.as_millis() + FOREIGN_LEASE_CHECK_MS);
        let poll = now.as_millis() + POLL_MS;
        Ok(Some(Timestamp::from_millis([due, foreign].into_iter().flatten().fold(poll, i64::min))))
    }

    async fn depth(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM queue_entries").fetch_one(self.pool()).await?;
        Ok(n as u64)
    }

    async fn tenants_over(&self, limit: u64) -> Result<Vec<TenantId>, StoreError> {
        let over: Vec<String> =
            sqlx::query_scalar("SELECT tenant_id FROM queue_entries GROUP BY tenant_id HAVING COUNT(*) > $1")
                .bind(limit as i64)
                .fetch_all(self.pool())
                .await?;
        Ok(over.into_iter().map(TenantId::from_trusted).collect())
    }

    async fn oldest_ready(&self) -> Result<Option<Timestamp>, StoreError> {
        let due: Option<i64> =
            sqlx::query_scalar("SELECT MIN(visible_at) FROM queue_entries WHERE ready").fetch_one(self.pool()).await?;
        Ok(due.map(Timestamp::from_millis))
    }

    async fn tenants_lagging(&self, due_before: Timestamp) -> Result<Vec<TenantId>, StoreError> {
        let lagging: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT tenant_id FROM queue_entries WHERE ready AND visible_at < $1")
                .bind(due_before.as_millis())
                .fetch_all(self.pool())
                .await?;
        Ok(lagging.into_iter().map(TenantId::from_trusted).collect())
    }

    async fn recover(&self, now: Timestamp) -> Result<u64, StoreError> {
        Ok(self.reclaim_orphaned(now).await?.0)
    }

    async fn register_worker(&self) -> Result<(), StoreError> {
        self.session.register_worker().await
    }

    async fn try_own(&self, instance: &InstanceId) -> Result<bool, StoreError> {
        self.session.try_own(instance.as_str()).await
    }

    fn owns(&self, instance: &InstanceId) -> bool {
        self.session.owns(instance.as_str())
    }

    async fn disown(&self, instance: &InstanceId) -> Result<(), StoreError> {
        self.session.disown(instance.as_str()).await
    }

    async fn fair_share(&self) -> Result<Option<usize>, StoreError> {
        let instances: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM instances WHERE deleted_at IS NULL")
            .fetch_one(self.pool())
            .await?;
        Ok(Some((instances.max(0) as usize).div_ceil(self.live_workers_count().await?)))
    }
}

impl PgBackend {
    /// Live worker processes of this database (their session locks), at least 1.
    pub(super) async fn live_workers_count(&self) -> Result<usize, StoreError> {
        let workers: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2 \
               AND classid::bigint = $1 \
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .bind(i64::from(lock_ns::WORKER))
        .fetch_one(self.pool())
        .await?;
        Ok(workers.max(1) as usize)
    }

    /// Returns the leases of owners that no longer hold their advisory lock:
    /// (messages requeued from `sending`, instances that got work back).
    async fn reclaim_orphaned(&self, now: Timestamp) -> Result<(u64, Vec<InstanceId>), StoreError> {
        let owners: Vec<i64> = sqlx::query_scalar(
            "SELECT DISTINCT abs(lease_owner) FROM queue_entries \
             WHERE lease_owner IS NOT NULL AND lease_owner <> $2 AND abs(lease_owner) <> $1",
        )
        .bind(self.owner())
        .bind(lease::IN_BROKER)
        .fetch_all(self.pool())
        .await?;
        let (mut requeued, mut instances) = (0, Vec::new());
        for owner in owners {
            let mut tx = self.pool().begin().await?;
            // Conflicts with the owner's session lock while it lives; ends with this transaction.
            let dead: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, $2::int)")
                .bind(lock_ns::OWNER)
                .bind(owner)
                .fetch_one(&mut *tx)
                .await?;
            if !dead {
                continue;
            }
            let (n, mut ids) = release_leases(&mut tx, owner, now).await?;
            tx.commit().await?;
            tracing::warn!(owner, messages = n, "returned the leases of a zapgate process that stopped");
            requeued += n;
            instances.append(&mut ids);
        }
        if requeued > 0 {
            self.wake();
        }
        Ok((requeued, instances))
    }
}

async fn release_leases(
    conn: &mut PgConnection,
    owner: i64,
    now: Timestamp,
) -> Result<(u64, Vec<InstanceId>), StoreError> {
    // Entries first, then only the messages of the entries taken here: the
    // owner may look dead yet still run (its session dropped), and a message
    // it begins between two statements would otherwise be left `sending`
    // with its entry freed — sent by no one, ever.
    let released = sqlx::query(
        "UPDATE queue_entries SET lease_owner = NULL, visible_at = $2, ready = is_head \
         WHERE lease_owner IN ($1, $3) RETURNING message_id, instance_id",
    )
    .bind(lease::sending(owner))
    .bind(now.as_millis())
    .bind(lease::relaying(owner))
    .fetch_all(&mut *conn)
    .await?;
    let mut message_ids = Vec::with_capacity(released.len());
    let mut ids = Vec::with_capacity(released.len());
    for row in &released {
        message_ids.push(row.try_get::<String, _>("message_id")?);
        ids.push(InstanceId::from_trusted(row.try_get("instance_id")?));
    }
    // A message caught in `sending` may or may not have reached the provider:
    // send it again (at-least-once). Not the provider's fault: no attempt spent.
    let requeued = sqlx::query(
        "UPDATE messages SET status = 'queued', updated_at = $2 \
         WHERE id = ANY($1) AND status = 'sending' RETURNING id, tenant_id, instance_id, chat_seq",
    )
    .bind(&message_ids)
    .bind(now.as_millis())
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(MessageRef::from_row)
    .collect::<Result<Vec<_>, _>>()?;
    let d = StatusDetail { reason: Some("requeued: the process sending it stopped".into()), ..detail() };
    let events: Vec<_> = requeued.iter().map(|m| (m, d.clone())).collect();
    rows::insert_events(&mut *conn, &events, MessageStatus::Queued, now).await?;
    ids.sort();
    ids.dedup();
    Ok((requeued.len() as u64, ids))
}

async fn claim(
    conn: &mut PgConnection,
    claims: &[Claim],
    now: Timestamp,
    lease_ms: i64,
    owner: i64,
) -> Result<Vec<Delivery>, StoreError> {
    if claims.is_empty() {
        return Ok(Vec::new());
    }
    let instances: Vec<String> = claims.iter().map(|c| c.instance_id.to_string()).collect();
    let max: Vec<i64> = claims.iter().map(|c| i64::from(c.max)).collect();
    let rows = sqlx::query(
        "WITH c AS ( \
           SELECT e.message_id FROM UNNEST($1::text[], $2::bigint[]) AS w(instance_id, max) \
           CROSS JOIN LATERAL ( \
             SELECT message_id FROM queue_entries q WHERE q.instance_id = w.instance_id AND q.ready \
             ORDER BY q.priority, q.seq LIMIT w.max FOR UPDATE SKIP LOCKED) e) \
         UPDATE queue_entries q SET ready = FALSE, visible_at = $3, lease_owner = $4 FROM c \
         WHERE q.message_id = c.message_id \
         RETURNING q.message_id, q.tenant_id, q.instance_id, q.attempt, q.priority, q.seq",
    )
    .bind(&instances)
    .bind(&max)
    .bind(now.as_millis() + lease_ms)
    .bind(owner)
    .fetch_all(conn)
    .await?;
    let mut out = rows
        .iter()
        .map(|r| {
            Ok(Delivery {
                message_id: MessageId::from_trusted(r.try_get("message_id")?),
                tenant_id: TenantId::from_trusted(r.try_get("tenant_id")?),
                instance_id: InstanceId::from_trusted(r.try_get("instance_id")?),
                attempt: r.try_get::<i64, _>("attempt")? as u32,
                priority: Priority::from_rank(r.try_get("priority")?),
                seq: r.try_get("seq")?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    // RETURNING order is unspecified; hand work out per instance in queue order.
    let position: std::collections::HashMap<&InstanceId, usize> =
        claims.iter().enumerate().map(|(i, c)| (&c.instance_id, i)).collect();
    out.sort_by_key(|d| (position.get(&d.instance_id).copied().unwrap_or(usize::MAX), d.priority, d.seq));
    Ok(out)
}
