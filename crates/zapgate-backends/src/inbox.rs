//! Provider webhooks, stored: the accounts they arrive for, their dedupe
//! keys, inbound messages and the events both produce.

use crate::{ProviderStatusReport, StatusApplied, StoreError};
use async_trait::async_trait;
use serde::Serialize;
use zapgate_domain::event::StatusDetail;
use zapgate_domain::instance_state::FlapPolicy;
use zapgate_domain::{InstanceId, InstanceState, MessageId, ReceivedMessage, TenantId, Timestamp};

/// Who a provider webhook URL (`/providers/{kind}/{account}/webhook`) belongs
/// to: a provider server (`prv_…`), whose instances it reports on, or an
/// instance with its own settings (`ins_…`) — for the Cloud API with the
/// tenant's other Cloud API numbers, since Meta posts every number of an app
/// to one URL.
#[derive(Debug, Clone)]
pub struct IngestAccount {
    pub kind: String,
    /// What its webhooks prove themselves with (unless the provider signs
    /// with a secret of its own, as the Cloud API's app secret).
    pub secret: String,
    /// The account's instance (`ins_…` accounts), whose settings hold the
    /// Cloud API's app secret and verify token.
    pub owner: Option<AccountInstance>,
    pub instances: Vec<AccountInstance>,
}

#[derive(Debug, Clone)]
pub struct AccountInstance {
    pub tenant_id: TenantId,
    pub instance_id: InstanceId,
    pub config: serde_json::Value,
}

/// One event of a provider webhook, for an instance of the account.
#[derive(Debug, Clone)]
pub struct InboundItem {
    pub tenant_id: TenantId,
    pub instance_id: InstanceId,
    pub event: InboundEvent,
}

#[derive(Debug, Clone)]
pub enum InboundEvent {
    /// Applied only to a message of this instance.
    Status(ProviderStatusReport),
    Message(NewInbound),
    /// The instance's connection, through its state machine.
    Connection {
        state: InstanceState,
        reason: Option<String>,
        policy: FlapPolicy,
        /// A QR code the provider shows for it (raises `instance.qr`).
        qr: Option<String>,
    },
}

/// A message that arrived, as the ingest route read it.
#[derive(Debug, Clone)]
pub struct NewInbound {
    /// Its id in zapgate, minted at receipt.
    pub id: MessageId,
    /// The chat's key (`ChatId::key`).
    pub chat: String,
    pub body: ReceivedMessage,
    /// Its attachment, to fetch (written `pending` with the message).
    pub media: Option<Box<crate::NewMedia>>,
}

impl InboundItem {
    /// What identifies the event across the provider's re-sends. Connection
    /// reports have none: the same state may rightly come back later, and the
    /// state machine coalesces repeats.
    pub fn dedupe_key(&self) -> Option<String> {
        match &self.event {
            InboundEvent::Status(r) => Some(format!("s:{}:{}", r.provider_message_id, r.status.as_str())),
            InboundEvent::Message(m) => Some(format!("m:{}", m.body.wa_message_id)),
            // A QR code is news once; the state it brings goes through the machine.
            InboundEvent::Connection { qr: Some(qr), .. } => Some(format!("q:{qr}")),
            InboundEvent::Connection { qr: None, .. } => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum InboundOutcome {
    /// Taken in before: nothing changed.
    Duplicate,
    Status(StatusApplied),
    /// Stored as a new inbound message (and its `message.received` event).
    Received(MessageId),
    /// The provider echoing a message zapgate sent: nothing to report.
    Echo,
    /// A connection report: the new state when it changed (with its
    /// `instance.status` event), None when coalesced.
    Connection(Option<InstanceState>),
}

impl InboundOutcome {
    /// A short name for metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            InboundOutcome::Duplicate => "duplicate",
            InboundOutcome::Status(StatusApplied::Applied) => "status_applied",
            InboundOutcome::Status(StatusApplied::Ignored) => "status_ignored",
            InboundOutcome::Status(StatusApplied::Parked) => "status_parked",
            InboundOutcome::Received(_) => "received",
            InboundOutcome::Echo => "echo",
            InboundOutcome::Connection(Some(_)) => "state_changed",
            InboundOutcome::Connection(None) => "state_coalesced",
        }
    }
}

/// An inbound message as stored.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InboundRecord {
    pub id: MessageId,
    pub tenant_id: TenantId,
    pub instance_id: InstanceId,
    /// Per-chat sequence number, shared with the messages sent to the chat.
    pub chat_seq: i64,
    #[serde(flatten)]
    pub message: ReceivedMessage,
    pub received_at: Timestamp,
}

#[derive(Debug, Clone, Default)]
pub struct InboundFilter {
    pub instance_id: Option<InstanceId>,
    pub chat: Option<String>,
    /// Only messages older than this id (newest first).
    pub before: Option<MessageId>,
    pub limit: u32,
}

#[async_trait]
pub trait Inbox: Send + Sync + 'static {
    /// The account a webhook URL names, with its secret (made on first use);
    /// None for an unknown or deleted account, or one of another `kind`.
    async fn ingest_account(&self, kind: &str, account: &str) -> Result<Option<IngestAccount>, StoreError>;

    /// Takes in the events of one webhook POST in one transaction: each
    /// event's dedupe key, then what it changes (status by rank, the inbound
    /// message) and its event row. Returns only after the commit, one outcome
    /// per item, in order.
    async fn ingest(&self, items: Vec<InboundItem>, now: Timestamp) -> Result<Vec<InboundOutcome>, StoreError>;

    async fn list_inbound(&self, tenant: &TenantId, filter: &InboundFilter) -> Result<Vec<InboundRecord>, StoreError>;
    async fn get_inbound(&self, tenant: &TenantId, id: &MessageId) -> Result<Option<InboundRecord>, StoreError>;

    /// Drops up to `limit` dedupe keys taken in before `before`.
    async fn purge_inbound_keys(&self, before: Timestamp, limit: u32) -> Result<u64, StoreError>;
}

/// The detail of an `instance.status` event.
pub fn state_detail(
    previous: Option<InstanceState>,
    next: &zapgate_domain::instance_state::StoredState,
) -> StatusDetail {
    StatusDetail { state: next.state, previous_state: previous, reason: next.reason.clone(), ..crate::detail() }
}
