//! `GET /v1/circuits` (super-admin): the provider circuit breakers that are
//! not closed, across every worker process (each reports its own; see
//! `worker::circuits`). An endpoint is `open` if any process has it open.

use super::AppState;
use super::error::ApiResult;
use super::extract::AdminAuth;
use crate::worker::circuits::FRESH_FOR;
use axum::Json;
use axum::extract::State;
use serde::Serialize;
use std::collections::BTreeMap;
use zapgate_backends::CircuitReport;
use zapgate_domain::Timestamp;

/// One provider endpoint whose circuit is not closed in some worker.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CircuitSummary {
    /// The provider kind.
    pub provider: String,
    /// `{kind} {origin}`, e.g. `waha https://waha.example` (a pool's server,
    /// or the Graph API for Cloud API numbers).
    pub endpoint: String,
    /// `open` (no calls; sends wait without spending attempts) or
    /// `half_open` (one probe is out).
    pub state: &'static str,
    /// Since when (the earliest of the workers reporting it).
    pub since: Timestamp,
    /// How many worker processes report it not closed.
    pub workers: usize,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CircuitList {
    pub data: Vec<CircuitSummary>,
}

/// Provider circuits that are open or half-open in any worker; none listed: all closed.
#[utoipa::path(get, path = "/v1/circuits", tag = "providers", security(("admin" = [])),
    responses((status = 200, body = CircuitList), (status = 401, body = super::error::ErrorBody)))]
pub async fn list(_: AdminAuth, State(s): State<AppState>) -> ApiResult<Json<CircuitList>> {
    Ok(Json(CircuitList { data: current(&s).await? }))
}

/// The circuits not closed now, one per endpoint.
pub async fn current(s: &AppState) -> ApiResult<Vec<CircuitSummary>> {
    let fresh_after = Timestamp::from_millis(Timestamp::now().as_millis() - FRESH_FOR.as_millis() as i64);
    Ok(summarize(s.backends.pools.circuits(fresh_after).await?))
}

/// One summary per endpoint from the processes' reports: open wins over
/// half-open, the earliest `since` wins.
fn summarize(reports: Vec<CircuitReport>) -> Vec<CircuitSummary> {
    let mut by_endpoint: BTreeMap<String, CircuitSummary> = BTreeMap::new();
    for r in reports {
        let state = if r.state == "open" { "open" } else { "half_open" };
        let entry = by_endpoint.entry(r.endpoint.clone()).or_insert_with(|| CircuitSummary {
            provider: r.provider.clone(),
            endpoint: r.endpoint.clone(),
            state,
            since: r.since,
            workers: 0,
        });
        entry.workers += 1;
        if state == "open" {
            entry.state = "open";
        }
        entry.since = entry.since.min(r.since);
    }
    by_endpoint.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(endpoint: &str, state: &str, since: i64, reporter: &str) -> CircuitReport {
        CircuitReport {
            provider: "waha".into(),
            endpoint: endpoint.into(),
            state: state.into(),
            since: Timestamp::from_millis(since),
            reporter: reporter.into(),
            reported_at: Timestamp::from_millis(since + 1),
        }
    }

    #[test]
    fn one_summary_per_endpoint_open_wins_and_the_earliest_since() {
        let got = summarize(vec![
            report("waha http://a", "half_open", 20, "p1"),
            report("waha http://a", "open", 30, "p2"),
            report("waha http://b", "half_open", 50, "p1"),
        ]);
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].state, got[0].since.as_millis(), got[0].workers), ("open", 20, 2));
        assert_eq!((got[1].state, got[1].since.as_millis(), got[1].workers), ("half_open", 50, 1));
        assert!(summarize(Vec::new()).is_empty());
    }
}
