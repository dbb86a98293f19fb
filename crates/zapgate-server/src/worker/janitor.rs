//! Periodic jobs: the queue-depth gauge (10 s) and clean-up of expired
//! idempotency keys and stale parked statuses (1 min).

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use zapgate_backends::{Queue, Store};
use zapgate_domain::Timestamp;

/// Parked statuses whose message never got a provider id are dropped after this.
const PARKED_TTL: Duration = Duration::from_secs(3600);

pub async fn run(
    store: Arc<dyn Store>,
    queue: Arc<dyn Queue>,
    idempotency_ttl: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if let Ok(depth) = queue.depth().await {
            metrics::gauge!("zapgate_queue_depth").set(depth as f64);
        }
        ticks += 1;
        if ticks % 6 != 1 {
            continue;
        }
        let now = Timestamp::now();
        let keys_before = now.plus_millis(-(idempotency_ttl.as_millis() as i64));
        let parked_before = now.plus_millis(-(PARKED_TTL.as_millis() as i64));
        match store.purge_expired(keys_before, parked_before).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(rows = n, "purged expired idempotency keys and parked statuses"),
            Err(e) => tracing::warn!(error = %e, "purge failed"),
        }
    }
}
