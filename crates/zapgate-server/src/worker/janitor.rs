//! Periodic jobs: the ack-timeout sweep, the queue depth (gauge and
//! back-pressure, every second), the overdue gauges the alert rules watch
//! (`deploy/prometheus/alerts.yml`) and clean-up
//! of expired idempotency keys and stale parked statuses.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use zapgate_backends::{Inbox, MediaIndex, MediaStore, Queue, Store, WebhookStore};
use zapgate_domain::{TenantId, Timestamp};

/// Parked statuses whose message never got a provider id are dropped after this.
const PARKED_TTL: Duration = Duration::from_secs(3600);

/// What the queue holds, as last measured (about every second), for the
/// API's back-pressure.
#[derive(Default)]
pub struct Backlog {
    pub total: AtomicU64,
    /// Tenants above `max_tenant_queue_depth`.
    pub tenants_over: TenantSet,
    /// Tenants whose oldest due message has waited past `max_tenant_queue_lag`.
    pub tenants_lagging: TenantSet,
}

#[derive(Default)]
pub struct TenantSet(std::sync::RwLock<std::collections::HashSet<TenantId>>);

impl TenantSet {
    pub fn contains(&self, tenant: &TenantId) -> bool {
        self.0.read().unwrap_or_else(|p| p.into_inner()).contains(tenant)
    }

    fn replace(&self, tenants: Vec<TenantId>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = tenants.into_iter().collect();
    }
}

pub struct Janitor {
    /// Where the last measured queue depth is kept for the API's back-pressure.
    pub depth: Arc<Backlog>,
    /// Per-tenant limit measured into `depth.tenants_over` (0 = off).
    pub tenant_limit: u64,
    /// Per-tenant lag limit measured into `depth.tenants_lagging` (0 = off).
    pub tenant_lag_limit: Duration,
    /// Run the sweeps and clean-ups too (worker roles); an API-only process
    /// only measures the depth its back-pressure needs.
    pub sweeps: bool,
    pub store: Arc<dyn Store>,
    pub queue: Arc<dyn Queue>,
    pub webhooks: Arc<dyn WebhookStore>,
    /// Finished webhook deliveries (and their attempts) are kept this long.
    pub webhook_retention: Duration,
    pub idempotency_ttl: Duration,
    pub ack_timeout: Duration,
    pub inbox: Arc<dyn Inbox>,
    pub ingest_dedupe_window: Duration,
    pub media_index: Arc<dyn MediaIndex>,
    pub media: Arc<dyn MediaStore>,
    /// Media (bytes and record) is deleted this long after it was created.
    pub media_retention: Duration,
}

pub async fn run(j: Janitor, mut shutdown: watch::Receiver<bool>) {
    // Sweep often enough that an ack timeout is raised close to its time.
    let tick = (j.ack_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut interval = tokio::time::interval(tick);
    let (mut gauged, mut purged) = (Instant::now() - Duration::from_secs(3600), Instant::now());
    let mut overdue_gauged = gauged;
    crate::metrics::register_alert_series();
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.changed() => return,
        }
        if gauged.elapsed() >= Duration::from_secs(1) {
            gauged = Instant::now();
            if let Ok(depth) = j.queue.depth().await {
                j.depth.total.store(depth, Ordering::Relaxed);
                metrics::gauge!("zapgate_queue_depth").set(depth as f64);
            }
            // Only worth a scan once the queue could hold a tenant over its limit.
            let over = match j.tenant_limit {
                0 => Ok(Vec::new()),
                limit if j.depth.total.load(Ordering::Relaxed) <= limit => Ok(Vec::new()),
                limit => j.queue.tenants_over(limit).await,
            };
            if let Ok(over) = over {
                j.depth.tenants_over.replace(over);
            }
            gauge_lag(&j).await;
        }
        if !j.sweeps {
            continue;
        }
        let now = Timestamp::now();
        let sent_before = now.plus_millis(-(j.ack_timeout.as_millis() as i64));
        match j.store.raise_ack_timeouts(sent_before, now, 1000).await {
            Ok(0) => {}
            Ok(n) => {
                metrics::counter!("zapgate_ack_timeouts_total").increment(n);
                tracing::info!(messages = n, "raised message.ack_timeout");
            }
            Err(e) => tracing::warn!(error = %e, "ack-timeout sweep failed"),
        }
        if overdue_gauged.elapsed() >= Duration::from_secs(1) {
            overdue_gauged = Instant::now();
            gauge_overdue(&j, now).await;
        }
        if purged.elapsed() >= Duration::from_secs(60) {
            purged = Instant::now();
            let keys_before = now.plus_millis(-(j.idempotency_ttl.as_millis() as i64));
            let parked_before = now.plus_millis(-(PARKED_TTL.as_millis() as i64));
            match j.store.purge_expired(keys_before, parked_before).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(rows = n, "purged expired idempotency keys and parked statuses"),
                Err(e) => tracing::warn!(error = %e, "purge failed"),
            }
            let deliveries_before = now.plus_millis(-(j.webhook_retention.as_millis() as i64));
            match j.webhooks.purge_deliveries(deliveries_before, 10_000).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(deliveries = n, "purged finished webhook deliveries"),
                Err(e) => tracing::warn!(error = %e, "purging webhook deliveries failed"),
            }
            let keys_before = now.plus_millis(-(j.ingest_dedupe_window.as_millis() as i64));
            match j.inbox.purge_inbound_keys(keys_before, 10_000).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(keys = n, "purged provider webhook dedupe keys"),
                Err(e) => tracing::warn!(error = %e, "purging provider webhook dedupe keys failed"),
            }
            purge_media(&j, now.plus_millis(-(j.media_retention.as_millis() as i64))).await;
        }
    }
}

/// Deletes media created before `before`: the bytes first, then the record,
/// so a crash between them leaves a record to retry, never orphaned bytes.
async fn purge_media(j: &Janitor, before: Timestamp) {
    let expired = match j.media_index.expired_media(before, 1000).await {
        Ok(ids) => ids,
        Err(e) => return tracing::warn!(error = %e, "listing expired media failed"),
    };
    let mut gone = Vec::with_capacity(expired.len());
    for id in expired {
        match j.media.delete(id.as_str()).await {
            Ok(_) => gone.push(id),
            Err(e) => tracing::warn!(media = %id, error = %e, "deleting expired media failed"),
        }
    }
    match j.media_index.forget_media(&gone).await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(media = n, "purged expired media"),
        Err(e) => tracing::warn!(error = %e, "forgetting purged media failed"),
    }
}

/// The outbox lag (how long the oldest message that could be taken has
/// been due) as a gauge, and the tenants past their lag limit.
async fn gauge_lag(j: &Janitor) {
    let now = Timestamp::now();
    let lag = j.queue.oldest_ready().await.ok().map(|oldest| {
        let lag = since(oldest, now);
        metrics::gauge!("zapgate_queue_oldest_due_seconds").set(lag.as_secs_f64());
        lag
    });
    let limit = j.tenant_lag_limit;
    if limit.is_zero() {
        return;
    }
    // Only worth a scan once some tenant could be over the limit.
    let lagging = match lag {
        Some(lag) if lag <= limit => Ok(Vec::new()),
        _ => j.queue.tenants_lagging(now.plus_millis(-(limit.as_millis() as i64))).await,
    };
    if let Ok(lagging) = lagging {
        j.depth.tenants_lagging.replace(lagging);
    }
}

/// How long the most overdue waiting queue entry (retry, `send_at`, lease)
/// and the most overdue pending webhook delivery have been due without being
/// taken (and how many webhook deliveries are dead, until purged or replayed); 0 when nothing is overdue. Both stay near 0 while the dispatcher
/// and the webhook sender keep up, so a growing value means one is stalled.
async fn gauge_overdue(j: &Janitor, now: Timestamp) {
    let overdue = |due: Option<Timestamp>| since(due, now).as_secs_f64();
    if let Ok(due) = j.queue.next_due(now).await {
        metrics::gauge!("zapgate_queue_overdue_seconds").set(overdue(due));
    }
    if let Ok(due) = j.webhooks.next_delivery_due().await {
        metrics::gauge!("zapgate_webhook_overdue_seconds").set(overdue(due));
    }
    if let Ok(dead) = j.webhooks.dead_deliveries().await {
        metrics::gauge!("zapgate_webhook_dead_letters").set(dead as f64);
    }
}

/// How long ago `t` was (0 when there is none, or it is still ahead).
fn since(t: Option<Timestamp>, now: Timestamp) -> Duration {
    Duration::from_millis(t.map_or(0, |t| (now.as_millis() - t.as_millis()).max(0)) as u64)
}
