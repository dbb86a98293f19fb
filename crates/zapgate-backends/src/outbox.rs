//! The `Outbox` trait: what the relay (outbox → RabbitMQ) and the workers
//! that consume from RabbitMQ need from the store.
//!
//! In distributed mode the queue table is the outbox. A queue entry stays in
//! it until its message's outcome is stored (it also keeps the chat's order
//! and counts what each tenant has in flight); the relay only moves its
//! lease: taken by the relay → in the broker (after the publisher confirm) →
//! taken by the worker that won the `queued → sending` compare-and-set. A
//! message that RabbitMQ delivers twice, or that was published again after
//! a relay died, loses that compare-and-set and is dropped.

use crate::{BeginSending, StoreError};
use async_trait::async_trait;
use zapgate_domain::{InstanceId, MessageId, TenantId, Timestamp};

/// One queue entry the relay took, to publish to its instance's shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub message_id: MessageId,
    pub tenant_id: TenantId,
    pub instance_id: InstanceId,
    /// The message's attempt number, for the worker's compare-and-set.
    pub attempt: u32,
}

/// How much the relay may hand to the broker. What stays behind waits in
/// the table, where it holds nobody up: one tenant's backlog never sits in
/// a shard ahead of another tenant's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimits {
    /// Most entries taken per round.
    pub batch: u32,
    /// Most entries of one tenant in the broker or being sent at once.
    pub tenant_cap: u32,
    /// Per instance, about this much of its pace may be in flight
    /// (`rate_per_sec × lookahead`)…
    pub lookahead_ms: u32,
    /// …but at least this many entries.
    pub instance_floor: u32,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self { batch: 512, tenant_cap: 5_000, lookahead_ms: 2_000, instance_floor: 32 }
    }
}

#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// Takes up to `limits.batch` ready entries (chat heads that are due),
    /// round-robin across tenants and within the caps, and leases them to
    /// this relay. Safe with several relays (`FOR UPDATE SKIP LOCKED`).
    async fn take(&self, limits: &RelayLimits, now: Timestamp) -> Result<Vec<OutboxEntry>, StoreError>;
    /// The broker confirmed these: they are in RabbitMQ now.
    async fn published(&self, ids: &[MessageId]) -> Result<(), StoreError>;
    /// These were not confirmed (nacked, returned, connection lost): back to
    /// the table, taken again from `retry_at`.
    async fn unpublished(&self, ids: &[MessageId], retry_at: Timestamp) -> Result<(), StoreError>;
    /// A retry of `id` at `attempt` was published to a wait queue: its entry,
    /// rescheduled in the table by the outcome, is marked published so no
    /// relay takes it again. False when the entry has moved on meanwhile (a
    /// relay took it: then the copy in the wait queue loses the
    /// compare-and-set, or wins it and the relay's copy loses).
    async fn parked(&self, id: &MessageId, attempt: u32) -> Result<bool, StoreError>;
    /// Entries published (confirmed in the broker) since before `before` that
    /// no worker has taken go back to the table to be published again: their
    /// copy may be lost (a purged or deleted queue). A copy that turns up
    /// late loses the compare-and-set. Returns how many.
    async fn republish_stale(&self, before: Timestamp, now: Timestamp) -> Result<u64, StoreError>;
    /// A worker got these `(message, attempt)` pairs from the broker: moves
    /// each message `queued → sending` (compare-and-set on its attempt) and
    /// leases its entry to this process, in one transaction. Duplicates and
    /// stale copies lose the compare-and-set; settled messages are listed in
    /// [`BeginSending::finished`].
    async fn begin_delivered(
        &self,
        deliveries: &[(MessageId, u32)],
        now: Timestamp,
        lease_ms: i64,
    ) -> Result<BeginSending, StoreError>;
    /// Live worker processes sharing this outbox (for each one's share of
    /// the work shards).
    async fn live_workers(&self) -> Result<usize, StoreError>;
    /// Takes work shard `shard` for this process unless another live
    /// process has it; [`Outbox::release_shard`] lets it go.
    async fn try_own_shard(&self, shard: u16) -> Result<bool, StoreError>;
    async fn release_shard(&self, shard: u16) -> Result<(), StoreError>;
    /// Whether this process still holds `shard` (it loses it if its database
    /// session dropped and another process took the shard).
    fn owns_shard(&self, shard: u16) -> bool;
}
