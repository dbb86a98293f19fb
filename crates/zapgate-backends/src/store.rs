//! The `Store` trait and the records it reads and writes.

use crate::StoreError;
use async_trait::async_trait;
use serde::Serialize;
use zapgate_domain::event::StatusDetail;
use zapgate_domain::{
    CampaignId, ChatId, InstanceId, MessageContent, MessageEvent, MessageId, MessageStatus, Priority, ProviderId,
    SendRequest, TemplateId, TenantId, Timestamp, TokenHash, TokenId,
};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TenantRecord {
    pub id: TenantId,
    pub name: String,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TokenRecord {
    pub id: TokenId,
    pub tenant_id: TenantId,
    /// Non-secret start of the token, to recognise it in listings.
    pub hint: String,
    pub created_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Timestamp>,
}

/// A tenant's template: text (`Olá {{name}}`) or a Cloud API template
/// whose component texts hold the variables.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TemplateRecord {
    pub id: TemplateId,
    pub tenant_id: TenantId,
    pub name: String,
    pub kind: TemplateKind,
    /// The text (`text` templates).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub body: String,
    /// The Cloud API template (`cloud` templates): name, language, components.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub cloud_template: Option<serde_json::Value>,
    /// The variables it names, sorted.
    pub variables: Vec<String>,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TemplateKind {
    /// Sent as a text message.
    Text,
    /// Sent as a Cloud API template message (Cloud API numbers).
    Cloud,
}

impl TemplateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TemplateKind::Text => "text",
            TemplateKind::Cloud => "cloud",
        }
    }
}

impl TemplateRecord {
    /// What the `body` column holds: the text, or the Cloud template's JSON.
    pub fn stored_body(&self) -> String {
        match (&self.kind, &self.cloud_template) {
            (TemplateKind::Cloud, Some(t)) => t.to_string(),
            _ => self.body.clone(),
        }
    }

    /// The template, parsed (it was checked when created).
    pub fn compile(&self) -> Result<zapgate_domain::template::TenantTemplate, zapgate_domain::ValidationError> {
        use zapgate_domain::template::{CloudTemplate, TenantTemplate, TextTemplate};
        match (&self.kind, &self.cloud_template) {
            (TemplateKind::Cloud, Some(t)) => Ok(TenantTemplate::Cloud(CloudTemplate::parse(t)?)),
            _ => Ok(TenantTemplate::Text(TextTemplate::parse(&self.body)?)),
        }
    }
}

/// A token to store: its public id, the hash of its secret and a hint.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub id: TokenId,
    pub hash: TokenHash,
    pub hint: String,
}

/// What creating an instance needs; ids are minted by the caller.
#[derive(Debug, Clone)]
pub struct NewInstance {
    pub id: InstanceId,
    pub tenant_id: TenantId,
    pub name: String,
    pub provider: String,
    pub phone_number_id: String,
    pub waba_id: String,
    /// The WhatsApp number the instance is (digits), when the tenant gave it.
    pub phone_number: Option<String>,
    pub rate_per_sec: u32,
    pub burst: u32,
    /// Provider-specific settings (credentials), validated by the provider.
    pub provider_config: serde_json::Value,
}

impl NewInstance {
    /// The record it is stored as (`provider_id`: the pool it was placed on).
    pub fn into_record(self, provider_id: Option<ProviderId>) -> InstanceRecord {
        InstanceRecord {
            id: self.id,
            tenant_id: self.tenant_id,
            name: self.name,
            provider: self.provider,
            provider_id,
            phone_number_id: self.phone_number_id,
            waba_id: self.waba_id,
            phone_number: self.phone_number,
            rate_per_sec: self.rate_per_sec,
            burst: self.burst,
            provider_config: self.provider_config,
            created_at: Timestamp::now(),
            state: None,
            state_reason: None,
            state_changed_at: None,
        }
    }
}

/// Fields of an instance that may change; `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct InstanceChange {
    pub name: Option<String>,
    pub rate_per_sec: Option<u32>,
    pub burst: Option<u32>,
    pub phone_number: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InstanceRecord {
    pub id: InstanceId,
    pub tenant_id: TenantId,
    pub name: String,
    pub provider: String,
    /// The shared provider server it was placed on (None: its own settings).
    #[schema(value_type = Option<String>)]
    pub provider_id: Option<ProviderId>,
    /// Numeric id the Cloud API facade addresses this instance by.
    pub phone_number_id: String,
    pub waba_id: String,
    /// The WhatsApp number the instance is, digits only (what Cloud API
    /// webhooks call `display_phone_number`), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone_number: Option<String>,
    /// Messages per second this instance is paced at.
    pub rate_per_sec: u32,
    pub burst: u32,
    /// Provider credentials: used by workers, never serialised into responses.
    #[serde(skip)]
    pub provider_config: serde_json::Value,
    pub created_at: Timestamp,
    /// The connection state its provider last reported (absent before the
    /// first report; the `instance.status` events record every change).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<zapgate_domain::InstanceState>,
    /// Why it is `closed`, `logged_out` or `failed` (e.g. `connection_lost`, `flapping`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_changed_at: Option<Timestamp>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MessageRecord {
    pub id: MessageId,
    pub tenant_id: TenantId,
    pub instance_id: InstanceId,
    #[schema(value_type = String)]
    pub to: ChatId,
    /// The WhatsApp id the provider resolved the recipient to, once known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wa_id: Option<String>,
    #[serde(flatten)]
    pub content: MessageContent,
    pub priority: Priority,
    pub status: MessageStatus,
    /// Provider-caused failed attempts.
    pub attempts: u32,
    pub chat_seq: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_message_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Timestamp>,
    /// The message this one quotes, as the send named it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// An idempotency key presented with a send, with the request's fingerprint.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub key: String,
    pub fingerprint: [u8; 32],
}

#[derive(Debug, Clone)]
pub struct AcceptMessage {
    pub id: MessageId,
    pub tenant_id: TenantId,
    pub request: SendRequest,
    pub idempotency: Option<IdempotencyKey>,
    pub now: Timestamp,
    /// The campaign that released it (progress is counted from these).
    pub campaign_id: Option<CampaignId>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Accepted {
    /// Stored with its event and queue entry.
    New { id: MessageId, status: MessageStatus },
    /// The key was used before with the same request: the first answer.
    Replayed { id: MessageId, status: MessageStatus },
    /// The key was used before with a different request.
    KeyReused,
    /// The instance does not exist for this tenant.
    UnknownInstance,
}

/// Filters for listing messages; all optional, all ANDed.
#[derive(Debug, Clone, Default)]
pub struct MessageFilter {
    pub status: Option<MessageStatus>,
    pub recipient: Option<ChatId>,
    pub instance_id: Option<InstanceId>,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    /// Only messages older than this id (cursor pagination, newest first).
    pub before: Option<MessageId>,
    pub limit: u32,
}

#[derive(Debug, Default)]
pub struct BeginSending {
    pub won: Vec<MessageRecord>,
    pub finished: Vec<MessageId>,
}

/// The result of one provider call, as the worker classified it.
#[derive(Debug, Clone)]
pub enum SendResult {
    Sent {
        provider_message_id: String,
        wa_id: Option<String>,
    },
    /// Try again at `retry_at`. `spend_attempt` is false when the cause was
    /// not the provider refusing this message (throttling, open circuit).
    Retry {
        retry_at: Timestamp,
        spend_attempt: bool,
        code: String,
        message: String,
    },
    Failed {
        code: String,
        message: String,
    },
    Expired,
    /// Not sent because the instance went away first.
    Cancelled {
        code: String,
        message: String,
    },
}

#[derive(Debug, Clone)]
pub struct SendOutcome {
    pub message_id: MessageId,
    pub result: SendResult,
    /// Attempts after which a retryable failure becomes `dead`.
    pub retry_limit: u32,
    pub now: Timestamp,
}

/// What the store decided for one outcome; the queue is settled to match.
#[derive(Debug, Clone, PartialEq)]
pub enum OutcomeApplied {
    /// The message left the queue (sent, failed, dead, expired).
    Done(MessageStatus),
    /// The message waits until `at`, with `attempts` provider failures so far.
    RetryAt { at: Timestamp, attempts: u32 },
    /// The message was not in `sending` any more; nothing changed.
    Stale,
}

/// A status a provider reported for a message it accepted.
#[derive(Debug, Clone)]
pub struct ProviderStatusReport {
    pub provider_message_id: String,
    /// When set, only a message of this instance matches (provider webhooks:
    /// an account reports only on its own instances).
    pub instance_id: Option<InstanceId>,
    pub status: MessageStatus,
    pub at: Timestamp,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Cancel {
    Cancelled,
    NotFound,
    /// Already handed to the provider (or finished): too late to cancel.
    TooLate(MessageStatus),
}

#[derive(Debug, Clone, PartialEq)]
pub enum StatusApplied {
    /// The status changed.
    Applied,
    /// Recorded in history but ignored by the forward-only rule.
    Ignored,
    /// No message with this provider id yet: parked, re-applied when the
    /// send result is stored.
    Parked,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn ping(&self) -> Result<(), StoreError>;

    /// Creates a tenant together with its first token, in one transaction.
    async fn create_tenant(
        &self,
        id: TenantId,
        name: String,
        first_token: NewToken,
    ) -> Result<(TenantRecord, TokenRecord), StoreError>;
    async fn list_tenants(&self) -> Result<Vec<TenantRecord>, StoreError>;
    async fn get_tenant(&self, id: &TenantId) -> Result<Option<TenantRecord>, StoreError>;

    /// `NotFound` when the tenant does not exist.
    async fn create_token(&self, tenant: &TenantId, token: NewToken) -> Result<TokenRecord, StoreError>;
    async fn list_tokens(&self, tenant: &TenantId) -> Result<Vec<TokenRecord>, StoreError>;
    /// Returns false when no such live token exists for the tenant.
    async fn revoke_token(&self, tenant: &TenantId, id: &TokenId) -> Result<bool, StoreError>;
    async fn tenant_for_token(&self, hash: &TokenHash) -> Result<Option<TenantId>, StoreError>;

    async fn create_instance(&self, new: NewInstance) -> Result<InstanceRecord, StoreError>;
    async fn list_instances(&self, tenant: &TenantId) -> Result<Vec<InstanceRecord>, StoreError>;
    async fn get_instance(&self, tenant: &TenantId, id: &InstanceId) -> Result<Option<InstanceRecord>, StoreError>;
    /// Any tenant's live instance, for the dispatcher.
    async fn find_instance(&self, id: &InstanceId) -> Result<Option<InstanceRecord>, StoreError>;
    async fn all_instances(&self) -> Result<Vec<InstanceRecord>, StoreError>;
    /// Changes an instance's name and pace; `None` if it does not exist.
    async fn update_instance(
        &self,
        tenant: &TenantId,
        id: &InstanceId,
        change: InstanceChange,
    ) -> Result<Option<InstanceRecord>, StoreError>;
    /// Replaces an instance's provider settings (e.g. with the token its
    /// server handed out when its session was made there).
    async fn set_provider_config(&self, id: &InstanceId, config: serde_json::Value) -> Result<(), StoreError>;
    /// Deletes the instance; its pending messages become `cancelled`.
    async fn delete_instance(&self, tenant: &TenantId, id: &InstanceId, now: Timestamp) -> Result<bool, StoreError>;

    /// Stores the message, its first event and its queue entry in one
    /// transaction; returns only after the commit.
    async fn accept(&self, msg: AcceptMessage) -> Result<Accepted, StoreError>;
    async fn get_message(&self, tenant: &TenantId, id: &MessageId) -> Result<Option<MessageRecord>, StoreError>;
    async fn message_history(&self, tenant: &TenantId, id: &MessageId) -> Result<Vec<MessageEvent>, StoreError>;
    async fn list_messages(&self, tenant: &TenantId, filter: &MessageFilter) -> Result<Vec<MessageRecord>, StoreError>;

    /// Compare-and-set `queued|scheduled|retry_wait → sending` for each
    /// (message, attempt). A loser is a duplicate delivery and must not be
    /// sent; losers whose message no longer needs the queue are listed in
    /// `finished` so their entries can be removed.
    async fn begin_sending(&self, claims: &[(MessageId, u32)], now: Timestamp) -> Result<BeginSending, StoreError>;
    async fn record_outcome(&self, outcome: SendOutcome) -> Result<OutcomeApplied, StoreError>;
    async fn apply_provider_status(&self, report: ProviderStatusReport) -> Result<StatusApplied, StoreError>;

    /// `scheduled|queued|retry_wait → cancelled`, removing its queue entry.
    async fn cancel_message(&self, tenant: &TenantId, id: &MessageId, now: Timestamp) -> Result<Cancel, StoreError>;

    /// `dead → queued` with attempts reset; returns false if not a dead letter.
    async fn replay_dead(&self, tenant: &TenantId, id: &MessageId, now: Timestamp) -> Result<bool, StoreError>;

    /// `Conflict` when the tenant already has a template of that name.
    async fn create_template(&self, t: TemplateRecord) -> Result<TemplateRecord, StoreError>;
    async fn list_templates(&self, tenant: &TenantId) -> Result<Vec<TemplateRecord>, StoreError>;
    async fn get_template(&self, tenant: &TenantId, id: &TemplateId) -> Result<Option<TemplateRecord>, StoreError>;
    async fn delete_template(&self, tenant: &TenantId, id: &TemplateId) -> Result<bool, StoreError>;

    /// Raises `message.ack_timeout` (once) for up to `limit` messages still
    /// `sent` since before `sent_before`; returns how many.
    async fn raise_ack_timeouts(&self, sent_before: Timestamp, now: Timestamp, limit: u32) -> Result<u64, StoreError>;

    /// Drops idempotency keys and parked statuses older than the given times.
    async fn purge_expired(&self, keys_before: Timestamp, parked_before: Timestamp) -> Result<u64, StoreError>;
}

/// Convenience for building event details.
pub fn detail() -> StatusDetail {
    StatusDetail { applied: true, ..Default::default() }
}
