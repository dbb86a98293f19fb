//! Health checks of the provider servers (pools), every
//! `ZAPGATE_PROVIDER_HEALTH_INTERVAL`: each server is asked once per interval
//! across all worker processes (a lock per server, held for most of the
//! interval and never released early), and the result is stored, so every
//! process places new instances only on healthy servers and shows the same
//! health in `GET /v1/providers`. Every process exports what is stored as
//! `zapgate_provider_server_up{provider, server}`.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use zapgate_backends::{Locks, ProviderPools, ProviderRecord};
use zapgate_domain::Timestamp;
use zapgate_providers::{ProviderError, Providers};

/// Longest one check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

pub struct HealthChecks {
    pub pools: Arc<dyn ProviderPools>,
    pub providers: Providers,
    pub locks: Arc<dyn Locks>,
    pub interval: Duration,
}

pub async fn run(h: HealthChecks, mut shutdown: watch::Receiver<bool>) {
    let h = Arc::new(h);
    let mut tick = tokio::time::interval(h.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let pools = match h.pools.list_providers().await {
            Ok(pools) => pools,
            Err(e) => {
                tracing::warn!(error = %e, "provider health: could not list the provider servers");
                continue;
            }
        };
        futures::future::join_all(pools.into_iter().filter(|p| p.enabled).map(|p| check(h.clone(), p))).await;
    }
}

async fn check(h: Arc<HealthChecks>, pool: ProviderRecord) {
    let key = format!("provider-health:{}", pool.id);
    // Most of an interval: the next round's lock is free again, wherever it runs.
    let mut healthy = pool.health.healthy;
    if h.locks.try_acquire(&key, h.interval.mul_f64(0.8)).await.is_some() {
        let error = match h.providers.get(&pool.kind) {
            Some(provider) => tokio::time::timeout(CHECK_TIMEOUT, provider.check_server(&pool.settings))
                .await
                .unwrap_or(Err(ProviderError::Timeout))
                .err()
                .map(|e| e.to_string()),
            None => Some(format!("this process has no provider {:?}", pool.kind)),
        };
        match (&error, pool.health.healthy) {
            (Some(e), true) => {
                tracing::warn!(provider_id = %pool.id, name = %pool.name, error = %e, "provider server unhealthy: no new instances are placed on it")
            }
            (None, false) => tracing::info!(provider_id = %pool.id, name = %pool.name, "provider server healthy again"),
            _ => {}
        }
        healthy = error.is_none();
        if let Err(e) = h.pools.record_health(&pool.id, error, Timestamp::now()).await {
            tracing::warn!(provider_id = %pool.id, error = %e, "provider health: could not store the result");
        }
    }
    metrics::gauge!("zapgate_provider_server_up", "provider" => pool.kind.clone(), "server" => pool.id.to_string())
        .set(if healthy { 1.0 } else { 0.0 });
}
