//! Provider servers shared by many instances (seed 002's provider manager):
//! a WAHA, Evolution API or UAZAPI deployment is a pool with a capacity, and
//! a new instance of that kind is placed on the enabled pool with the fewest
//! live instances that still has room. (Cloud API numbers bring their own
//! credentials: they are never placed.)
//!
//! A placed instance carries a copy of its pool's `settings` (base URL,
//! credentials) in its `provider_config`, so workers send through it as
//! through any instance; changing the pool's settings rewrites every copy in
//! the same transaction, and workers pick the change up with the instance.

use crate::{InstanceRecord, NewInstance, StoreError};
use async_trait::async_trait;
use serde::Serialize;
use zapgate_domain::{ProviderId, Timestamp};

/// One process's report of one provider endpoint's circuit (circuits live in
/// each worker's memory; see `zapgate_providers::circuit`).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CircuitReport {
    /// The provider kind.
    pub provider: String,
    /// What the circuit guards: `{kind} {origin}` (e.g. `waha https://waha.example`).
    pub endpoint: String,
    /// `open` or `half_open`.
    pub state: String,
    /// When the reporting process saw it leave `closed`.
    pub since: Timestamp,
    #[serde(skip)]
    pub reporter: String,
    pub reported_at: Timestamp,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ProviderRecord {
    pub id: ProviderId,
    /// `evolution`, `waha` or `uazapi`.
    pub kind: String,
    pub name: String,
    /// Base URL and credentials: copied into placed instances, never shown.
    #[serde(skip)]
    pub settings: serde_json::Value,
    /// Most live instances placed on it.
    pub capacity: u32,
    /// A disabled pool keeps its instances but gets no new ones.
    pub enabled: bool,
    /// Live instances placed on it now.
    pub instances: u32,
    /// What the last health check found; only healthy servers get new instances.
    pub health: ProviderHealth,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ProviderHealth {
    pub healthy: bool,
    /// Why the last check failed.
    pub error: Option<String>,
    pub checked_at: Option<Timestamp>,
    /// Since when it has failed its checks.
    pub unhealthy_since: Option<Timestamp>,
}

/// What creating a pool needs; the id is minted by the caller.
#[derive(Debug, Clone)]
pub struct NewProvider {
    pub id: ProviderId,
    pub kind: String,
    pub name: String,
    pub settings: serde_json::Value,
    pub capacity: u32,
    pub enabled: bool,
}

/// Fields of a pool that may change; `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct ProviderChange {
    pub name: Option<String>,
    /// Merged over the current settings (and over every placed instance's copy).
    pub settings: Option<serde_json::Value>,
    pub capacity: Option<u32>,
    pub enabled: Option<bool>,
}

/// Where to place a new instance.
#[derive(Debug, Clone)]
pub struct Placement {
    pub kind: String,
    /// This pool only (it must be of `kind`, enabled and have room).
    pub provider_id: Option<ProviderId>,
}

#[async_trait]
pub trait ProviderPools: Send + Sync + 'static {
    async fn create_provider(&self, new: NewProvider) -> Result<ProviderRecord, StoreError>;
    async fn list_providers(&self) -> Result<Vec<ProviderRecord>, StoreError>;
    async fn get_provider(&self, id: &ProviderId) -> Result<Option<ProviderRecord>, StoreError>;
    /// `None` if it does not exist.
    async fn update_provider(
        &self,
        id: &ProviderId,
        change: ProviderChange,
    ) -> Result<Option<ProviderRecord>, StoreError>;
    /// False if it does not exist; `Conflict` while live instances are placed on it.
    async fn delete_provider(&self, id: &ProviderId, now: Timestamp) -> Result<bool, StoreError>;
    /// Stores a health check's result (`error`: why it failed, None: healthy).
    async fn record_health(&self, id: &ProviderId, error: Option<String>, now: Timestamp) -> Result<(), StoreError>;
    /// Creates `new` on the least-loaded healthy, enabled pool of the placement's kind
    /// that has room (or on the one asked for), with the pool's settings
    /// merged over `new.provider_config`. The choice and the insert are one
    /// transaction, so concurrent placements never exceed a capacity.
    /// `NoCapacity` when no pool can take it.
    async fn place_instance(&self, new: NewInstance, placement: Placement) -> Result<InstanceRecord, StoreError>;
    /// Replaces what process `reporter` said about its circuits with `open`
    /// (those not closed; empty: all closed), and forgets reports older than
    /// `forget_before` (processes that stopped).
    async fn report_circuits(
        &self,
        reporter: &str,
        open: Vec<CircuitReport>,
        forget_before: Timestamp,
    ) -> Result<(), StoreError>;
    /// Circuits reported not closed since `fresh_after`, one row per process.
    async fn circuits(&self, fresh_after: Timestamp) -> Result<Vec<CircuitReport>, StoreError>;
}

pub use zapgate_domain::json::merged;

/// The pool `placement` goes to among `pools` (healthy and enabled, least
/// loaded first), and the instance record with that pool's settings.
pub fn placed(
    new: NewInstance,
    pools: Vec<ProviderRecord>,
    placement: &Placement,
) -> Result<InstanceRecord, StoreError> {
    let chosen = pools
        .into_iter()
        .filter(|p| placement.provider_id.as_ref().is_none_or(|id| id == &p.id))
        .find(|p| p.instances < p.capacity)
        .ok_or_else(|| no_capacity(placement))?;
    let mut rec = new.into_record(Some(chosen.id));
    rec.provider_config = merged(&rec.provider_config, &chosen.settings);
    Ok(rec)
}

/// Why no pool could take an instance, for the error message.
pub fn no_capacity(placement: &Placement) -> StoreError {
    StoreError::NoCapacity(match &placement.provider_id {
        Some(id) => {
            format!("provider {id} does not exist, is not a {} provider, or is disabled, down or full", placement.kind)
        }
        None => format!("every enabled, healthy {} provider is full or down (or none is configured)", placement.kind),
    })
}
