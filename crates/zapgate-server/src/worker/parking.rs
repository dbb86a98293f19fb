//! Retries through RabbitMQ's wait queues (distributed mode with a broker):
//! once a retry's outcome is stored (which reschedules its entry in the
//! table), the wait moves to the smallest wait tier at least as long as the
//! delay — a quorum queue with that `x-message-ttl`, dead-lettered back to
//! the message's work shard — and the entry is marked published, so no relay
//! takes it again. The retry is never early (tiers round up); a delay longer
//! than the longest tier, or a publish that is not confirmed, stays on the
//! table path (the relay publishes it when due). Attempts are counted in the
//! store, so the copy's `x-death` header means nothing to zapgate.

use crate::relay::WorkItem;
use std::sync::Arc;
use std::time::Duration;
use zapgate_backends::Outbox;
use zapgate_backends::amqp::{Broker, Outgoing};
use zapgate_domain::{InstanceId, MessageId, Timestamp};

pub struct Parking {
    pub broker: Broker,
    pub outbox: Arc<dyn Outbox>,
}

impl Parking {
    /// Parks the retry of `id` (at `attempt`, due at `at`) in a wait queue;
    /// false when it stays on the table path.
    pub async fn park(&self, id: &MessageId, instance: &InstanceId, attempt: u32, at: Timestamp) -> bool {
        let topology = self.broker.topology();
        let delay = Duration::from_millis((at.as_millis() - Timestamp::now().as_millis()).max(0) as u64);
        let Some(tier) = topology.tiers.iter().filter(|t| t.ttl >= delay).min_by_key(|t| t.ttl) else {
            return false;
        };
        let item = WorkItem { id: id.to_string(), attempt };
        let payload = serde_json::to_vec(&item).expect("a work item serialises");
        let out = Outgoing::wait(topology.shard_of(instance.as_str()), tier.name.clone(), id.to_string(), payload);
        match self.broker.publish_batch(vec![out]).await {
            Ok(results) if results.first().is_some_and(|r| r.is_confirmed()) => {}
            _ => return false,
        }
        match self.outbox.parked(id, attempt).await {
            Ok(true) => {
                metrics::counter!("zapgate_retries_parked_total", "tier" => tier.name.clone()).increment(1);
                true
            }
            Ok(false) => false,
            Err(e) => {
                // The copy in the wait queue and the relay's later one race
                // for the compare-and-set; one send either way.
                tracing::warn!(error = %e, message_id = %id, "could not mark a parked retry as published");
                false
            }
        }
    }
}
