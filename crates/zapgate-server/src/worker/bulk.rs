//! Accepts made by zapgate itself (schedule runs, campaign slices, Chatwoot
//! replies): each carries an idempotency key derived from what it is for,
//! so doing the work twice (after a crash) replays instead of sending twice.

use futures::StreamExt;
use zapgate_backends::{AcceptMessage, Accepted, IdempotencyKey, Store, StoreError};
use zapgate_domain::{CampaignId, MessageId, SendRequest, TenantId, Timestamp};

/// Accepts in flight at once (PostgreSQL group-commits them).
const IN_FLIGHT: usize = 32;

/// An accept of `request` under the idempotency key `key`.
pub fn keyed(tenant: &TenantId, request: SendRequest, key: String, campaign: Option<&CampaignId>) -> AcceptMessage {
    AcceptMessage {
        id: MessageId::generate(),
        tenant_id: tenant.clone(),
        idempotency: Some(IdempotencyKey { key, fingerprint: request.fingerprint() }),
        request,
        now: Timestamp::now(),
        campaign_id: campaign.cloned(),
    }
}

/// Accepts all of `accepts`, a few at a time; the answers in no particular order.
pub async fn accept_all(store: &dyn Store, accepts: Vec<AcceptMessage>) -> Vec<Result<Accepted, StoreError>> {
    futures::stream::iter(accepts).map(|a| store.accept(a)).buffer_unordered(IN_FLIGHT).collect().await
}
