//! Prometheus metrics at `GET /metrics` (the `metrics` facade, rendered by
//! the Prometheus exporter). Labels never carry tenant ids, phone numbers
//! or URLs: cardinality stays bounded and nothing private leaks.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `zapgate_http_requests_total` | counter | `method`, `route`, `status` |
//! | `zapgate_http_request_seconds` | histogram | `route` |
//! | `zapgate_messages_accepted_total` | counter | |
//! | `zapgate_send_outcomes_total` | counter | `outcome` (sent, retry, failed, dead, expired, cancelled) |
//! | `zapgate_provider_call_seconds` | histogram | `provider` |
//! | `zapgate_provider_calls_total` | counter | `provider`, `result` (ok, retry, throttled, permanent, timeout) |
//! | `zapgate_provider_circuits_open` | gauge | `provider` (endpoints of that kind whose circuit is open or half-open) |
//! | `zapgate_provider_circuit_opened_total` | counter | `provider` |
//! | `zapgate_provider_statuses_total` | counter | `status`, `applied` (applied, ignored, parked) |
//! | `zapgate_ingest_events_total` | counter | `provider`, `outcome` (status_applied, status_ignored, status_parked, received, echo, duplicate, state_changed, state_coalesced, ignored, unauthorized) |
//! | `zapgate_ingest_seconds` | histogram | `provider` (a provider webhook POST, verified and durable) |
//! | `zapgate_instance_state_changes_total` | counter | `state` (open, closed, failed, …) |
//! | `zapgate_instance_reconnects_total` | counter | `provider`, `result` (ok, error): reconnect requests of the connection watch |
//! | `zapgate_webhook_attempts_total` | counter | `result` (succeeded, retry, dead) |
//! | `zapgate_webhook_attempt_seconds` | histogram | |
//! | `zapgate_webhook_dead_letters` | gauge | (dead deliveries kept, until purged or replayed) |
//! | `zapgate_ack_timeouts_total` | counter | |
//! | `zapgate_queue_depth` | gauge | |
//! | `zapgate_queue_overdue_seconds` | gauge | |
//! | `zapgate_webhook_overdue_seconds` | gauge | |
//! | `zapgate_store_commit_seconds`, `zapgate_store_commit_jobs` | histogram | |
//!
//! The two `*_overdue_seconds` gauges (set by the janitor of worker
//! processes) say how long the earliest waiting queue entry and the earliest
//! pending webhook delivery have been due without being taken: near 0 while
//! the dispatcher and the webhook sender keep up. The alert rules over these
//! metrics are in `deploy/prometheus/alerts.yml`.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Instant;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (once) and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ])
                .expect("static buckets are valid")
                .install_recorder()
                .expect("the metrics recorder is installed once")
        })
        .clone()
}

/// Creates at zero the counter series the alert rules take `increase()` of:
/// a series that first appears at 1 would hide its first event (a first dead
/// letter, say) from `increase()`.
pub fn register_alert_series() {
    for outcome in ["sent", "retry", "failed", "dead", "expired", "cancelled"] {
        metrics::counter!("zapgate_send_outcomes_total", "outcome" => outcome).increment(0);
    }
    for result in ["succeeded", "retry", "dead"] {
        metrics::counter!("zapgate_webhook_attempts_total", "result" => result).increment(0);
    }
    metrics::counter!("zapgate_messages_accepted_total").increment(0);
    metrics::counter!("zapgate_ack_timeouts_total").increment(0);
}

pub async fn render() -> String {
    let handle = install();
    handle.run_upkeep();
    handle.render()
}

/// Counts and times every request by its route template (not its path).
pub async fn track_http(req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let started = Instant::now();
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    metrics::histogram!("zapgate_http_request_seconds", "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("zapgate_http_requests_total", "method" => method, "route" => route, "status" => status)
        .increment(1);
    res
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn alert_series_exist_at_zero_before_their_first_event() {
        super::install();
        super::register_alert_series();
        let text = super::render().await;
        for line in
            ["zapgate_send_outcomes_total{outcome=\"dead\"} ", "zapgate_webhook_attempts_total{result=\"dead\"} "]
        {
            assert!(text.lines().any(|l| l.starts_with(line)), "{line} missing from:\n{text}");
        }
    }
}
