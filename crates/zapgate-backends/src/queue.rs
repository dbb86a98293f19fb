//! The `Queue` trait: where due work waits for the dispatcher.

use crate::{BeginSending, StoreError};
use async_trait::async_trait;
use zapgate_domain::{InstanceId, MessageId, Priority, TenantId, Timestamp};

/// One claimed unit of work, leased to this process until settled.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message_id: MessageId,
    pub tenant_id: TenantId,
    pub instance_id: InstanceId,
    /// Attempt number the message had when enqueued (for the CAS).
    pub attempt: u32,
    pub priority: Priority,
    pub seq: i64,
}

/// How many deliveries the dispatcher wants for one instance.
#[derive(Debug, Clone)]
pub struct Claim {
    pub instance_id: InstanceId,
    pub max: u32,
}

/// How a delivery ends, mirroring what the store recorded.
#[derive(Debug, Clone)]
pub enum Settlement {
    /// Remove the entry (sent, terminal, or a duplicate).
    Done,
    /// Keep the entry, visible again at `at` with this attempt number.
    RetryAt { at: Timestamp, attempt: u32 },
}

#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Leases up to `max` due entries per instance, in priority then
    /// acceptance order, taking only the head message of each chat (so a
    /// chat's next message waits until the previous one is settled).
    async fn claim(&self, claims: &[Claim], now: Timestamp, lease_ms: i64) -> Result<Vec<Delivery>, StoreError>;
    async fn settle(&self, settlements: Vec<(MessageId, Settlement)>) -> Result<(), StoreError>;
    /// Claims and moves the claimed messages to `sending` in one
    /// transaction, where the queue shares the store's database. `None`
    /// means "not supported here": claim, then `Store::begin_sending`.
    async fn claim_and_begin(
        &self,
        _claims: &[Claim],
        _now: Timestamp,
        _lease_ms: i64,
    ) -> Result<Option<BeginSending>, StoreError> {
        Ok(None)
    }

    /// True when the store settles this queue inside the transaction that
    /// records a send outcome (the embedded backend: one SQLite file), so
    /// workers need not call [`Queue::settle`] after `record_outcome`.
    fn settled_by_store(&self) -> bool {
        false
    }
    /// Makes entries whose time has come claimable; returns their instances.
    /// Backends whose delays live elsewhere (broker TTL queues) need nothing.
    async fn promote_due(&self, _now: Timestamp) -> Result<Vec<InstanceId>, StoreError> {
        Ok(Vec::new())
    }
    /// Earliest time a waiting entry becomes claimable (may be ≤ `now` when a
    /// promotion is due), if any entry waits.
    async fn next_due(&self, now: Timestamp) -> Result<Option<Timestamp>, StoreError>;
    /// Entries waiting or in flight, for the `zapgate_queue_depth` gauge.
    async fn depth(&self) -> Result<u64, StoreError>;
    /// Tenants with more than `limit` entries waiting or in flight (per-tenant
    /// back-pressure).
    async fn tenants_over(&self, limit: u64) -> Result<Vec<TenantId>, StoreError>;
    /// Since when the oldest entry that could be taken now (due, chat head,
    /// not leased) has been due: the outbox lag, for its gauge.
    async fn oldest_ready(&self) -> Result<Option<Timestamp>, StoreError>;
    /// Tenants with an entry that could be taken and has been due since
    /// before `due_before` (per-tenant back-pressure on lag).
    async fn tenants_lagging(&self, due_before: Timestamp) -> Result<Vec<TenantId>, StoreError>;
    /// Returns every lease held by a dead process to the queue and
    /// reconciles entries with message state (embedded start-up only).
    async fn recover(&self, now: Timestamp) -> Result<u64, StoreError>;

    /// One process paces an instance (its GCRA limit lives in that process's
    /// memory), so where several worker processes share the queue each
    /// instance is *owned* by one of them. The defaults suit a queue only one
    /// process uses: every instance is its own.
    ///
    /// Announces this process as a worker, counted by [`Queue::fair_share`].
    async fn register_worker(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Takes `instance` for this process unless another live process has it.
    async fn try_own(&self, _instance: &InstanceId) -> Result<bool, StoreError> {
        Ok(true)
    }
    /// Whether this process still owns `instance` (it may lose it if its
    /// database session dropped and another process took the instance).
    fn owns(&self, _instance: &InstanceId) -> bool {
        true
    }
    /// Lets another process take `instance` (after this one's sends for it ended).
    async fn disown(&self, _instance: &InstanceId) -> Result<(), StoreError> {
        Ok(())
    }
    /// How many instances this process should own at most, so that the live
    /// workers share them evenly; `None`: no limit (the only worker).
    async fn fair_share(&self) -> Result<Option<usize>, StoreError> {
        Ok(None)
    }
}
