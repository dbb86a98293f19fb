//! Periodic clean-up: expired idempotency keys and stale parked statuses.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use zapgate_backends::Store;
use zapgate_domain::Timestamp;

/// Parked statuses whose message never got a provider id are dropped after this.
const PARKED_TTL: Duration = Duration::from_secs(3600);

pub async fn run(store: Arc<dyn Store>, idempotency_ttl: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
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
