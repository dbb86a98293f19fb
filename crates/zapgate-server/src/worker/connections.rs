//! The connection watch: every `ZAPGATE_INSTANCE_POLL_INTERVAL` the
//! instances of providers that report a connection (WAHA, Evolution,
//! UAZAPI) are asked for it, and what changed goes through the instance
//! state machine like a webhook would. A provider whose webhook was lost, or
//! that never sent one, cannot leave an instance shown `open` while it is
//! dead for longer than one interval.
//!
//! A linked instance closed for a passing cause (or failed at its provider) is
//! asked to reconnect ([`Provider::reconnect`]), again after a capped,
//! jittered backoff (`ZAPGATE_INSTANCE_RECONNECT_BASE` doubling up to
//! `ZAPGATE_INSTANCE_RECONNECT_MAX`) while it stays down; its backoff starts
//! over once it is open. Logged-out, banned, replaced and flapping
//! instances are left alone (see [`wants_reconnect`]).
//!
//! One process watches per interval (a lock held for most of it, named after
//! the deployment's store so deployments sharing a Redis keep apart), so N
//! workers make one round of calls, not N. The backoff lives in the
//! process that watches; rounds that move between processes start it over,
//! which at worst doubles the pace of reconnect requests.

use super::retry::RetryPolicy;
use futures::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use zapgate_backends::{Backends, InboundEvent, InboundItem, InboundOutcome, InstanceRecord};
use zapgate_domain::instance_state::{FlapPolicy, UNKNOWN_REASON, wants_reconnect};
use zapgate_domain::{InstanceId, InstanceState, Timestamp};
use zapgate_providers::{Connection, Provider, ProviderError, Providers};

/// Longest one provider call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Provider calls in flight at once in a round.
const PARALLEL_CALLS: usize = 16;

pub struct ConnectionWatch {
    pub backends: Backends,
    pub providers: Providers,
    pub interval: Duration,
    pub reconnect: RetryPolicy,
    pub flap: FlapPolicy,
    /// The lock one round takes: names this deployment (see [`ConnectionWatch::lock_key`]).
    pub lock_key: String,
}

impl ConnectionWatch {
    /// The round lock's key for a deployment ([`Config::deployment_key`]):
    /// deployments sharing one Redis must not take each other's rounds.
    ///
    /// [`Config::deployment_key`]: crate::config::Config::deployment_key
    pub fn lock_key(deployment: &str) -> String {
        format!("instance-connections:{deployment}")
    }
}

/// Reconnect requests made for one instance while it stays down.
struct Backoff {
    requests: u32,
    next_at: Instant,
}

/// What the watch remembers between rounds.
#[derive(Default)]
struct Known {
    backoff: HashMap<InstanceId, Backoff>,
    /// Instances seen linked (open, or closed for a reason only a linked
    /// session has). Only these are asked to reconnect: a "reconnect" of one
    /// never linked would only start a QR flow nobody scans.
    linked: HashSet<InstanceId>,
}

impl Known {
    fn note(&mut self, instances: &[(InstanceRecord, Arc<dyn Provider>)]) {
        let live: HashSet<&InstanceId> = instances.iter().map(|(i, _)| &i.id).collect();
        self.backoff.retain(|id, _| live.contains(id));
        self.linked.retain(|id| live.contains(id));
        for (i, _) in instances {
            match i.state {
                // Only a connection that came back starts the backoff over:
                // one that goes connecting → closed again keeps backing off.
                Some(InstanceState::Open) => {
                    self.backoff.remove(&i.id);
                    self.linked.insert(i.id.clone());
                }
                Some(InstanceState::Closed) if i.state_reason.as_deref().is_some_and(|r| r != UNKNOWN_REASON) => {
                    self.linked.insert(i.id.clone());
                }
                Some(InstanceState::LoggedOut) => {
                    self.linked.remove(&i.id);
                }
                _ => {}
            }
        }
    }
}

pub async fn run(w: ConnectionWatch, mut shutdown: watch::Receiver<bool>) {
    if w.interval.is_zero() {
        return;
    }
    let w = Arc::new(w);
    let mut known = Known::default();
    // The first round one interval after start: webhooks report the start.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + w.interval, w.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        // Most of an interval: the next round's lock is free again, wherever it runs.
        if w.backends.locks.try_acquire(&w.lock_key, w.interval.mul_f64(0.8)).await.is_none() {
            continue;
        }
        round(&w, &mut known).await;
    }
}

/// Polls every watched instance, then asks those still down to reconnect.
async fn round(w: &Arc<ConnectionWatch>, known: &mut Known) {
    let Some(polled) = watched(w).await else { return };
    known.note(&polled);
    futures::stream::iter(polled)
        .for_each_concurrent(PARALLEL_CALLS, |(instance, provider)| {
            let w = w.clone();
            async move { poll(&w, &instance, &*provider).await }
        })
        .await;
    // What the polls (and webhooks meanwhile) made of them.
    let Some(now_known) = watched(w).await else { return };
    known.note(&now_known);
    let now = Instant::now();
    let due: Vec<_> = now_known
        .into_iter()
        .filter(|(i, _)| {
            wants_reconnect(i.state, i.state_reason.as_deref())
                && known.linked.contains(&i.id)
                && known.backoff.get(&i.id).is_none_or(|b| b.next_at <= now)
        })
        .collect();
    for (instance, _) in &due {
        let b = known.backoff.entry(instance.id.clone()).or_insert(Backoff { requests: 0, next_at: now });
        b.requests += 1;
        b.next_at = now + w.reconnect.delay(b.requests, None);
    }
    futures::stream::iter(due)
        .for_each_concurrent(PARALLEL_CALLS, |(instance, provider)| async move {
            reconnect(&instance, &*provider).await;
        })
        .await;
}

/// The instances whose provider has a connection to watch, with their provider.
async fn watched(w: &ConnectionWatch) -> Option<Vec<(InstanceRecord, Arc<dyn Provider>)>> {
    match w.backends.store.all_instances().await {
        Ok(all) => Some(
            all.into_iter()
                .filter_map(|i| Some((w.providers.get(&i.provider).filter(|p| p.watch_connection())?, i)))
                .map(|(p, i)| (i, p))
                .collect(),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "connection watch: could not list the instances");
            None
        }
    }
}

/// Asks the provider for `instance`'s connection and feeds a change into its
/// state machine. Kinds that report none (the Cloud API, the sandbox) and
/// providers that cannot be asked are skipped: the server's own health
/// check says when a server is down, and one failed call says nothing about
/// the WhatsApp connection.
async fn poll(w: &ConnectionWatch, instance: &InstanceRecord, provider: &dyn Provider) {
    let asked = tokio::time::timeout(CALL_TIMEOUT, provider.connection(&instance.provider_config))
        .await
        .unwrap_or(Err(ProviderError::Timeout));
    let Connection { state, .. } = match asked {
        Ok(Some(connection)) => connection,
        Ok(None) => return,
        Err(e) => {
            return tracing::debug!(instance_id = %instance.id, error = %e, "connection watch: could not ask the provider");
        }
    };
    let (state, reason) = state.machine_state(None);
    if Some(state) == instance.state {
        // Nothing new: a poll knows no reason that a webhook did not say.
        return;
    }
    let item = InboundItem {
        tenant_id: instance.tenant_id.clone(),
        instance_id: instance.id.clone(),
        event: InboundEvent::Connection { state, reason, policy: w.flap, qr: None },
    };
    match w.backends.inbox.ingest(vec![item], Timestamp::now()).await {
        Ok(outcomes) => {
            if let Some(InboundOutcome::Connection(Some(now))) = outcomes.first() {
                metrics::counter!("zapgate_instance_state_changes_total", "state" => now.as_str()).increment(1);
                tracing::info!(instance_id = %instance.id, was = ?instance.state, now = %now, "connection watch: the provider reports another connection state");
            }
        }
        Err(e) => tracing::warn!(instance_id = %instance.id, error = %e, "connection watch: could not store the state"),
    }
}

async fn reconnect(instance: &InstanceRecord, provider: &dyn Provider) {
    let asked = tokio::time::timeout(CALL_TIMEOUT, provider.reconnect(&instance.provider_config))
        .await
        .unwrap_or(Err(ProviderError::Timeout));
    let result = match &asked {
        Ok(()) => "ok",
        Err(ProviderError::Rejected { code, .. }) if code == "no_reconnect" => return,
        Err(_) => "error",
    };
    metrics::counter!("zapgate_instance_reconnects_total", "provider" => provider.kind(), "result" => result)
        .increment(1);
    match asked {
        Ok(()) => tracing::info!(instance_id = %instance.id, "connection watch: asked the provider to reconnect"),
        Err(e) => {
            tracing::warn!(instance_id = %instance.id, error = %e, "connection watch: the reconnect request failed")
        }
    }
}
