//! The relay: moves the PostgreSQL outbox (the queue table) to RabbitMQ.
//!
//! Each round takes a batch of ready entries (round-robin over tenants,
//! within each tenant's and instance's cap: `Outbox::take`), publishes each to
//! its instance's work shard with publisher confirms, and records which made
//! it. Confirmed entries are in the broker; the others go back to the table
//! and are taken again a second later. No `NOTIFY`: an idle relay looks at
//! the table every few milliseconds (and at once when this process accepted
//! or settled something). Several relays may run (`SKIP LOCKED`); a relay
//! that dies mid-round leaves its entries leased to a dead owner, which
//! every process returns to the table (`Queue::promote_due`) — if they were
//! published already, the copy in the broker loses the worker's
//! compare-and-set.

use crate::worker::{WorkSignal, persist};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use zapgate_backends::amqp::{Broker, BrokerError, Outgoing, PublishResult, shard_of};
use zapgate_backends::{Outbox, Queue, RelayLimits, crash_point};
use zapgate_domain::Timestamp;

/// An idle relay looks at the outbox this often.
const POLL: Duration = Duration::from_millis(20);
/// Due retries and dead processes' leases are looked at this often.
const PROMOTE_EVERY: Duration = Duration::from_millis(100);
/// Published entries no worker took are looked for this often.
const STALE_EVERY: Duration = Duration::from_secs(10);
/// Unconfirmed entries (queue full, connection lost) wait this long.
const REPUBLISH_AFTER_MS: i64 = 1_000;

/// What travels through RabbitMQ: which message, at which attempt (the
/// worker's compare-and-set). Everything else is read from the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkItem {
    pub id: String,
    pub attempt: u32,
}

pub struct Relay {
    pub outbox: Arc<dyn Outbox>,
    pub queue: Arc<dyn Queue>,
    pub broker: Broker,
    pub limits: RelayLimits,
    /// See `Outbox::republish_stale`.
    pub republish_after: Duration,
    pub signal: Arc<WorkSignal>,
}

pub async fn run(relay: Relay, mut shutdown: watch::Receiver<bool>) {
    let shards = relay.broker.topology().shards;
    let mut next_promote = Instant::now();
    let mut next_stale = Instant::now() + STALE_EVERY.min(relay.republish_after);
    loop {
        if *shutdown.borrow() {
            break;
        }
        if Instant::now() >= next_promote {
            if let Err(e) = relay.queue.promote_due(Timestamp::now()).await {
                tracing::warn!(error = %e, "relay: promoting due entries failed");
            }
            relay.signal.take();
            next_promote = Instant::now() + PROMOTE_EVERY;
        }
        if Instant::now() >= next_stale {
            republish_stale(&relay).await;
            next_stale = Instant::now() + STALE_EVERY.min(relay.republish_after);
        }
        let pause = if relay.broker.healthy() { round(&relay, shards).await } else { Some(Duration::from_millis(200)) };
        if let Some(pause) = pause {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = relay.signal.notified() => {}
                _ = shutdown.changed() => {}
            }
        }
    }
    tracing::info!("relay stopped");
}

async fn republish_stale(relay: &Relay) {
    let now = Timestamp::now();
    let before = now.plus_millis(-(relay.republish_after.as_millis() as i64));
    match relay.outbox.republish_stale(before, now).await {
        Ok(0) => {}
        Ok(n) => {
            metrics::counter!("zapgate_relay_republished_total").increment(n);
            tracing::warn!(
                messages = n,
                after = %humantime::format_duration(relay.republish_after),
                "relay: RabbitMQ held messages that long without a worker taking them; publishing them again"
            );
        }
        Err(e) => tracing::warn!(error = %e, "relay: looking for stale published entries failed"),
    }
}

/// One take → publish → record round. Returns how long to pause (`None`:
/// a full batch went out, go on at once).
async fn round(relay: &Relay, shards: u16) -> Option<Duration> {
    let taken = match relay.outbox.take(&relay.limits, Timestamp::now()).await {
        Ok(taken) => taken,
        Err(e) => {
            tracing::warn!(error = %e, "relay: reading the outbox failed");
            return Some(Duration::from_millis(500));
        }
    };
    if taken.is_empty() {
        return Some(POLL);
    }
    let full = taken.len() >= relay.limits.batch as usize;
    let batch = taken
        .iter()
        .map(|e| {
            let item = WorkItem { id: e.message_id.to_string(), attempt: e.attempt };
            let payload = serde_json::to_vec(&item).expect("a work item serialises");
            Outgoing::work(shard_of(e.instance_id.as_str(), shards), e.message_id.to_string(), payload)
        })
        .collect();
    let results = match relay.broker.publish_batch(batch).await {
        Ok(results) => results,
        Err(e @ (BrokerError::NotConnected | BrokerError::Closed)) => {
            tracing::debug!(error = %e, "relay: RabbitMQ is away; the batch waits in the outbox");
            vec![PublishResult::Unconfirmed; taken.len()]
        }
        Err(e) => {
            tracing::error!(error = %e, "relay: publishing failed");
            vec![PublishResult::Unconfirmed; taken.len()]
        }
    };
    crash_point("after_publish");
    let (mut confirmed, mut refused) = (Vec::new(), Vec::new());
    for (entry, result) in taken.into_iter().zip(&results) {
        if result.is_confirmed() { &mut confirmed } else { &mut refused }.push(entry.message_id);
    }
    metrics::counter!("zapgate_relay_published_total", "result" => "confirmed").increment(confirmed.len() as u64);
    metrics::counter!("zapgate_relay_published_total", "result" => "refused").increment(refused.len() as u64);
    persist(|| relay.outbox.published(&confirmed)).await;
    let retry_at = Timestamp::now().plus_millis(REPUBLISH_AFTER_MS);
    persist(|| relay.outbox.unpublished(&refused, retry_at)).await;
    if !refused.is_empty() {
        tracing::warn!(
            count = refused.len(),
            "relay: RabbitMQ did not confirm every message; they are published again"
        );
        return Some(Duration::from_millis(200));
    }
    // A short batch took all there was within the caps: the rest waits for
    // settles (which wake this process's relay) or for other processes.
    if full { None } else { Some(POLL) }
}
