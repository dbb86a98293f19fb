//! The `WebhookStore` trait: tenant webhook endpoints, the deliveries owed
//! to them (fanned out from the event table) and every attempt.

use crate::StoreError;
use async_trait::async_trait;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::Notify;
use zapgate_domain::webhook::{WebhookFormat, WebhookSecret};
use zapgate_domain::{DeliveryId, EndpointId, EventId, InstanceId, MessageEvent, TenantId, Timestamp};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EndpointRecord {
    pub id: EndpointId,
    pub tenant_id: TenantId,
    pub url: String,
    pub description: String,
    /// Event types delivered; empty means every type.
    pub event_types: Vec<String>,
    /// Also deliver zapgate's internal steps (queued, sending, retry_wait, scheduled).
    pub include_internal: bool,
    /// Only events of this instance; absent means every instance.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub instance_id: Option<InstanceId>,
    /// Message statuses delivered (of `message.status` events); empty means every status.
    pub statuses: Vec<String>,
    /// Extra headers sent with every delivery (e.g. a token your receiver checks).
    pub headers: BTreeMap<String, String>,
    /// `standard` (zapgate's events, Standard Webhooks) or `cloud_api`.
    pub format: WebhookFormat,
    pub enabled: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct NewEndpoint {
    pub id: EndpointId,
    pub tenant_id: TenantId,
    pub url: String,
    pub description: String,
    pub event_types: Vec<String>,
    pub include_internal: bool,
    /// Only events of this instance (None: every instance).
    pub instance_id: Option<InstanceId>,
    /// Only these statuses of `message.status` events (empty: every status).
    pub statuses: Vec<String>,
    pub headers: BTreeMap<String, String>,
    pub secret: WebhookSecret,
    pub format: WebhookFormat,
    /// What `cloud_api` deliveries are signed with (X-Hub-Signature-256).
    pub app_secret: Option<String>,
}

/// Changes to an endpoint; `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct EndpointChange {
    pub url: Option<String>,
    pub description: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub include_internal: Option<bool>,
    /// `Some(None)` clears the instance filter; `Some(Some(i))` sets it.
    pub instance_id: Option<Option<InstanceId>>,
    pub statuses: Option<Vec<String>>,
    pub headers: Option<BTreeMap<String, String>>,
    pub enabled: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Pending,
    Succeeded,
    Dead,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeliveryRecord {
    pub id: DeliveryId,
    pub endpoint_id: EndpointId,
    /// The `webhook-id` header of every attempt.
    pub event_id: EventId,
    pub status: DeliveryStatus,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_status_code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_ms: u64,
    /// The start of the receiver's answer: its first 512 bytes (invalid
    /// UTF-8 replaced); absent when it answered nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
}

/// A delivery claimed for sending, with everything the attempt needs.
#[derive(Debug, Clone)]
pub struct DeliveryJob {
    pub id: DeliveryId,
    pub tenant_id: TenantId,
    pub endpoint_id: EndpointId,
    pub url: String,
    pub headers: BTreeMap<String, String>,
    /// Current secret first; the previous one too during a rotation's grace period.
    pub secrets: Vec<WebhookSecret>,
    /// The shape the endpoint takes events in.
    pub format: WebhookFormat,
    /// Some: the endpoint takes Cloud API-shaped payloads signed with this
    /// app secret instead of Standard Webhooks.
    pub cloud_app_secret: Option<String>,
    pub event: MessageEvent,
    /// Attempts before this one.
    pub attempts: u32,
    /// Attempts since the last replay: where in the retry schedule it is.
    pub schedule_index: u32,
}

#[derive(Debug, Clone)]
pub enum AttemptResult {
    Succeeded {
        status_code: u16,
    },
    /// `retry_at: None` means the schedule is used up: the delivery is dead.
    Failed {
        status_code: Option<u16>,
        error: String,
        retry_at: Option<Timestamp>,
    },
    /// The receiver answered `410 Gone`: the delivery is dead and its
    /// endpoint disabled (its other pending deliveries wait, as for any
    /// disabled endpoint, until it is enabled again).
    Gone {
        status_code: u16,
        error: String,
    },
}

impl AttemptResult {
    /// The receiver's status code and the error, as an attempt stores them.
    pub fn code_and_error(&self) -> (Option<u16>, Option<String>) {
        match self {
            AttemptResult::Succeeded { status_code } => (Some(*status_code), None),
            AttemptResult::Failed { status_code, error, .. } => (*status_code, Some(error.clone())),
            AttemptResult::Gone { status_code, error } => (Some(*status_code), Some(error.clone())),
        }
    }

    /// The delivery's status afterwards and, while pending, when it is due.
    pub fn next_state(&self) -> (&'static str, Option<i64>) {
        match self {
            AttemptResult::Succeeded { .. } => ("succeeded", None),
            AttemptResult::Failed { retry_at: Some(t), .. } => ("pending", Some(t.as_millis())),
            AttemptResult::Failed { retry_at: None, .. } | AttemptResult::Gone { .. } => ("dead", None),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    pub delivery: DeliveryId,
    pub attempt: u32,
    pub at: Timestamp,
    pub duration_ms: u64,
    pub result: AttemptResult,
    /// The start of the receiver's answer (see [`AttemptRecord::response`]).
    pub response: Option<String>,
}

#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    async fn create_endpoint(&self, new: NewEndpoint) -> Result<EndpointRecord, StoreError>;
    async fn list_endpoints(&self, tenant: &TenantId) -> Result<Vec<EndpointRecord>, StoreError>;
    async fn get_endpoint(&self, tenant: &TenantId, id: &EndpointId) -> Result<Option<EndpointRecord>, StoreError>;
    async fn endpoint_secret(&self, tenant: &TenantId, id: &EndpointId) -> Result<Option<WebhookSecret>, StoreError>;
    async fn update_endpoint(
        &self,
        tenant: &TenantId,
        id: &EndpointId,
        change: EndpointChange,
    ) -> Result<Option<EndpointRecord>, StoreError>;
    async fn delete_endpoint(&self, tenant: &TenantId, id: &EndpointId) -> Result<bool, StoreError>;
    /// New secret now; the old one keeps signing until `grace_until`.
    async fn rotate_secret(
        &self,
        tenant: &TenantId,
        id: &EndpointId,
        secret: WebhookSecret,
        grace_until: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Creates the deliveries of up to `limit` new events; returns how many
    /// events it looked at (0 when caught up).
    async fn fan_out(&self, limit: u32, now: Timestamp) -> Result<u32, StoreError>;
    /// Leases up to `limit` due deliveries until `now + lease_ms`, taking
    /// from each endpoint no more than it has room for: at most
    /// `per_endpoint` of its deliveries are leased at once (across processes
    /// sharing the store), so a slow receiver does not hold up the others.
    /// A lease ends when its attempt is recorded, or when it runs out.
    async fn claim_deliveries(
        &self,
        now: Timestamp,
        limit: u32,
        per_endpoint: u32,
        lease_ms: i64,
    ) -> Result<Vec<DeliveryJob>, StoreError>;
    async fn record_attempt(&self, outcome: AttemptOutcome) -> Result<(), StoreError>;
    /// Earliest due time of a pending delivery.
    async fn next_delivery_due(&self) -> Result<Option<Timestamp>, StoreError>;

    async fn list_deliveries(
        &self,
        tenant: &TenantId,
        endpoint: &EndpointId,
        before: Option<DeliveryId>,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>, StoreError>;
    async fn get_delivery(
        &self,
        tenant: &TenantId,
        id: &DeliveryId,
    ) -> Result<Option<(DeliveryRecord, Vec<AttemptRecord>)>, StoreError>;
    /// Sends a delivery again from scratch (same event id); false if unknown
    /// or still pending.
    async fn replay_delivery(&self, tenant: &TenantId, id: &DeliveryId, now: Timestamp) -> Result<bool, StoreError>;
    /// Sends again, from scratch, every dead delivery of an endpoint
    /// created at or after `since` (each keeps its event id); returns how
    /// many. Nothing for an unknown or deleted endpoint.
    async fn replay_dead(
        &self,
        tenant: &TenantId,
        endpoint: &EndpointId,
        since: Timestamp,
        now: Timestamp,
    ) -> Result<u64, StoreError>;
    /// How many dead deliveries are stored (until purged).
    async fn dead_deliveries(&self) -> Result<u64, StoreError>;

    /// Deletes finished deliveries (succeeded or dead) last updated before
    /// `before`, with their attempts; returns how many deliveries.
    async fn purge_deliveries(&self, before: Timestamp, limit: u32) -> Result<u64, StoreError>;

    /// Notified after every commit that may have written events.
    fn changes(&self) -> Arc<Notify>;
}
