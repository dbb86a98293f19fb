//! The `ChatwootStore` trait: tenants' Chatwoot integrations (one Chatwoot
//! inbox ↔ one instance), the jobs Chatwoot's webhooks become, and which
//! Chatwoot contact and conversation each WhatsApp chat is.
//!
//! A job's key is (integration, Chatwoot message id): a unique key, so the
//! same webhook delivered to several ingest processes, or again later, makes
//! one job. Finished jobs are kept (at least a day, `purge_chatwoot_jobs`)
//! so a late re-delivery still finds its key.

use crate::StoreError;
use async_trait::async_trait;
use serde::Serialize;
use zapgate_domain::{InstanceId, IntegrationId, MessageId, TenantId, Timestamp};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct IntegrationRecord {
    pub id: IntegrationId,
    #[serde(skip)]
    pub tenant_id: TenantId,
    /// The instance (WhatsApp number) the Chatwoot inbox speaks through.
    pub instance_id: InstanceId,
    /// Chatwoot's address, e.g. `https://chatwoot.example.com`.
    pub base_url: String,
    pub account_id: u64,
    pub inbox_id: u64,
    /// A Chatwoot user's or agent bot's `api_access_token`: never shown.
    #[serde(skip)]
    pub api_token: String,
    /// The webhook's secret (`X-Chatwoot-Signature`), when set: never shown.
    #[serde(skip)]
    pub webhook_secret: Option<String>,
    pub enabled: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct NewIntegration {
    pub id: IntegrationId,
    pub tenant_id: TenantId,
    pub instance_id: InstanceId,
    pub base_url: String,
    pub account_id: u64,
    pub inbox_id: u64,
    pub api_token: String,
    pub webhook_secret: Option<String>,
}

/// Changes to an integration; `None` keeps the current value
/// (`webhook_secret: Some(None)` removes the secret).
#[derive(Debug, Clone, Default)]
pub struct IntegrationChange {
    pub instance_id: Option<InstanceId>,
    pub base_url: Option<String>,
    pub account_id: Option<u64>,
    pub inbox_id: Option<u64>,
    pub api_token: Option<String>,
    pub webhook_secret: Option<Option<String>>,
    pub enabled: Option<bool>,
}

/// A Chatwoot message to send to WhatsApp, as its webhook gave it.
#[derive(Debug, Clone)]
pub struct NewChatwootJob {
    pub integration_id: IntegrationId,
    /// Chatwoot's message id (the `id` of `message_created`).
    pub chatwoot_message_id: String,
    pub tenant_id: TenantId,
    /// What the worker needs: recipient, text, attachments, conversation.
    pub payload: serde_json::Value,
    pub now: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChatwootJobStatus {
    Pending,
    /// Accepted as a zapgate message (`message_id`).
    Done,
    /// Could not become a message (`error`).
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatwootJob {
    pub integration_id: IntegrationId,
    pub chatwoot_message_id: String,
    pub tenant_id: TenantId,
    pub payload: serde_json::Value,
    pub status: ChatwootJobStatus,
    /// Failed tries so far.
    pub attempts: u32,
    pub message_id: Option<MessageId>,
    pub error: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone)]
pub enum ChatwootJobOutcome {
    Done {
        message_id: MessageId,
    },
    /// Try again at `at` (a pending job, not leased after then).
    Retry {
        at: Timestamp,
        error: String,
    },
    Failed {
        error: String,
    },
}

/// The Chatwoot contact and conversation a WhatsApp chat of an integration is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatwootContact {
    /// The chat as zapgate keys it (`ChatId::key`).
    pub chat: String,
    pub contact_id: u64,
    /// The contact's `source_id` in the inbox (`contact_inbox`).
    pub source_id: String,
    pub conversation_id: u64,
}

#[async_trait]
pub trait ChatwootStore: Send + Sync + 'static {
    async fn create_integration(&self, new: NewIntegration, now: Timestamp) -> Result<IntegrationRecord, StoreError>;
    async fn list_integrations(&self, tenant: &TenantId) -> Result<Vec<IntegrationRecord>, StoreError>;
    async fn get_integration(
        &self,
        tenant: &TenantId,
        id: &IntegrationId,
    ) -> Result<Option<IntegrationRecord>, StoreError>;
    /// By id alone, as a webhook URL names it (ingest); None once deleted.
    async fn integration(&self, id: &IntegrationId) -> Result<Option<IntegrationRecord>, StoreError>;
    /// The enabled integrations of an instance (its inbound messages go to each).
    async fn integrations_of_instance(&self, instance: &InstanceId) -> Result<Vec<IntegrationRecord>, StoreError>;
    async fn update_integration(
        &self,
        tenant: &TenantId,
        id: &IntegrationId,
        change: IntegrationChange,
        now: Timestamp,
    ) -> Result<Option<IntegrationRecord>, StoreError>;
    /// Soft-deletes; its jobs and contacts stay until purged. False if none.
    async fn delete_integration(
        &self,
        tenant: &TenantId,
        id: &IntegrationId,
        now: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Stores the job unless its key exists: true when it is new.
    async fn enqueue_chatwoot_job(&self, job: NewChatwootJob) -> Result<bool, StoreError>;
    /// Leases up to `limit` pending jobs due at `now` (oldest first) for
    /// `lease_ms`: none is handed to two callers while its lease runs.
    async fn claim_chatwoot_jobs(
        &self,
        now: Timestamp,
        limit: u32,
        lease_ms: i64,
    ) -> Result<Vec<ChatwootJob>, StoreError>;
    async fn finish_chatwoot_job(
        &self,
        integration: &IntegrationId,
        chatwoot_message_id: &str,
        outcome: ChatwootJobOutcome,
        now: Timestamp,
    ) -> Result<(), StoreError>;
    async fn get_chatwoot_job(
        &self,
        integration: &IntegrationId,
        chatwoot_message_id: &str,
    ) -> Result<Option<ChatwootJob>, StoreError>;
    /// The job a zapgate message was made from (failure notes go to its conversation).
    async fn chatwoot_job_of_message(&self, message: &MessageId) -> Result<Option<ChatwootJob>, StoreError>;
    /// Deletes finished (done or failed) jobs last updated before `before`, up to `limit`.
    async fn purge_chatwoot_jobs(&self, before: Timestamp, limit: u32) -> Result<u64, StoreError>;

    async fn chatwoot_contact(
        &self,
        integration: &IntegrationId,
        chat: &str,
    ) -> Result<Option<ChatwootContact>, StoreError>;
    /// Inserts or replaces the chat's contact and conversation.
    async fn save_chatwoot_contact(
        &self,
        integration: &IntegrationId,
        contact: ChatwootContact,
    ) -> Result<(), StoreError>;
    /// Forgets every contact of the integration (it now points at another
    /// Chatwoot account or inbox, where those ids name other people).
    async fn forget_chatwoot_contacts(&self, integration: &IntegrationId) -> Result<u64, StoreError>;
}
