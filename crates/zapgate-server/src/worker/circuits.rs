//! Makes each worker's circuit breakers visible to every process: about
//! once a second the circuits that are not closed are written to the store
//! (`provider_circuits`, one row per process and endpoint), where the API
//! reads them (`GET /v1/circuits`, `circuit` on `GET /v1/providers`). A
//! process with every circuit closed writes nothing after saying so once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use zapgate_backends::{CircuitReport, ProviderPools};
use zapgate_domain::Timestamp;
use zapgate_providers::{CircuitState, Circuits};

/// How often a process reports its open circuits.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);
/// Reports older than this are from a process that stopped: not shown.
pub const FRESH_FOR: Duration = Duration::from_secs(10);

pub struct CircuitReporter {
    pub circuits: Circuits,
    pub pools: Arc<dyn ProviderPools>,
    /// This process, as its rows name it.
    pub reporter: String,
}

pub async fn run(r: CircuitReporter, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When this process saw each endpoint leave closed.
    let mut since: HashMap<String, Timestamp> = HashMap::new();
    let mut reported_any = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => break,
        }
        let now = Timestamp::now();
        let open: Vec<CircuitReport> = r
            .circuits
            .snapshot()
            .into_iter()
            .filter(|(_, _, state)| *state != CircuitState::Closed)
            .map(|(kind, endpoint, state)| CircuitReport {
                provider: kind.to_owned(),
                since: *since.entry(endpoint.clone()).or_insert(now),
                endpoint,
                state: state.as_str().to_owned(),
                reporter: r.reporter.clone(),
                reported_at: now,
            })
            .collect();
        since.retain(|endpoint, _| open.iter().any(|c| &c.endpoint == endpoint));
        if open.is_empty() && !reported_any {
            continue;
        }
        reported_any = !open.is_empty();
        let forget_before = Timestamp::from_millis(now.as_millis() - 6 * FRESH_FOR.as_millis() as i64);
        if let Err(e) = r.pools.report_circuits(&r.reporter, open, forget_before).await {
            tracing::warn!(error = %e, "could not report the provider circuits");
            reported_any = true;
        }
    }
    // Stopping: its circuits go with it.
    if reported_any {
        let _ = r.pools.report_circuits(&r.reporter, Vec::new(), Timestamp::from_millis(0)).await;
    }
}
