//! Applies provider status reports to the store, many per transaction.

use super::persist;
use futures::future::join_all;
use std::sync::Arc;
use tokio::sync::mpsc;
use zapgate_backends::{ProviderStatusReport, StatusApplied, Store, StoreError};
use zapgate_providers::StatusReport;

const BATCH: usize = 256;

pub async fn run(store: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<StatusReport>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        // Submitted together, so the writer commits them as one group.
        // A report is never dropped on a store error: each retries until stored.
        join_all(batch.drain(..).map(|r| {
            let store = &store;
            async move { persist(|| apply(store, r.clone())).await }
        }))
        .await;
    }
}

async fn apply(store: &Arc<dyn Store>, r: StatusReport) -> Result<(), StoreError> {
    let report = ProviderStatusReport {
        instance_id: None,
        provider_message_id: r.provider_message_id,
        status: r.status,
        at: r.at,
        error_code: r.error_code,
        error_message: r.error_message,
    };
    let status = report.status.as_str();
    let applied = store.apply_provider_status(report).await?;
    let applied = match applied {
        StatusApplied::Applied => "applied",
        StatusApplied::Ignored => "ignored",
        StatusApplied::Parked => "parked",
    };
    metrics::counter!("zapgate_provider_statuses_total", "status" => status, "applied" => applied).increment(1);
    Ok(())
}
