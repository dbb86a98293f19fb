//! What zapgate knows about the media it holds (the bytes are in a
//! [`MediaStore`](crate::MediaStore) under the media id): whose it is, what
//! it is, and for inbound attachments, whether it has been fetched yet.
//!
//! An inbound attachment's row is written `pending` in the ingest
//! transaction of its message, with the recipe to fetch it, so a crash
//! after the provider's webhook was acknowledged cannot lose it. The media
//! fetcher leases due rows, stores the bytes, then marks them `stored`.

use crate::StoreError;
use async_trait::async_trait;
use serde::Serialize;
use zapgate_domain::{InstanceId, MediaId, MessageId, TenantId, Timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MediaStatus {
    /// An inbound attachment not fetched yet.
    Pending,
    Stored,
    /// An inbound attachment that could not be fetched (see `error`).
    Failed,
}

impl MediaStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MediaStatus::Pending => "pending",
            MediaStatus::Stored => "stored",
            MediaStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => MediaStatus::Pending,
            "stored" => MediaStatus::Stored,
            "failed" => MediaStatus::Failed,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MediaRecord {
    pub id: MediaId,
    #[serde(skip)]
    pub tenant_id: TenantId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<InstanceId>,
    /// The inbound message it came with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<MessageId>,
    pub status: MediaStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// Bytes, once stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Hex SHA-256 of the stored bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Why it could not be fetched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_at: Timestamp,
}

/// A media row to write.
#[derive(Debug, Clone)]
pub struct NewMedia {
    pub id: MediaId,
    pub tenant_id: TenantId,
    pub instance_id: Option<InstanceId>,
    pub message_id: Option<MessageId>,
    pub mime_type: Option<String>,
    pub filename: Option<String>,
    pub state: NewMediaState,
}

#[derive(Debug, Clone)]
pub enum NewMediaState {
    /// To be fetched with this recipe (a `MediaFetch` as JSON).
    Fetch(serde_json::Value),
    /// Its bytes are already in the media store.
    Stored { size: u64, sha256: String },
}

/// A pending attachment leased for fetching.
#[derive(Debug, Clone)]
pub struct MediaJob {
    pub id: MediaId,
    pub fetch: serde_json::Value,
    pub mime_type: Option<String>,
    /// Attempts before this one.
    pub attempts: u32,
}

#[derive(Debug, Clone)]
pub enum MediaFetched {
    /// The bytes are in the media store.
    Stored {
        size: u64,
        sha256: String,
        mime_type: Option<String>,
    },
    Retry {
        error: String,
        at: Timestamp,
    },
    Failed {
        error: String,
    },
}

#[async_trait]
pub trait MediaIndex: Send + Sync + 'static {
    /// Records media whose bytes were just stored (an upload).
    async fn add_media(&self, new: NewMedia, now: Timestamp) -> Result<MediaRecord, StoreError>;
    async fn get_media(&self, tenant: &TenantId, id: &MediaId) -> Result<Option<MediaRecord>, StoreError>;
    /// Leases up to `limit` due pending attachments until `now + lease_ms`.
    async fn claim_media(&self, now: Timestamp, limit: u32, lease_ms: i64) -> Result<Vec<MediaJob>, StoreError>;
    /// Records how a leased attachment's fetch ended (the recipe is dropped
    /// once it is stored or failed: it may hold provider credentials).
    async fn media_fetched(&self, id: &MediaId, outcome: MediaFetched, now: Timestamp) -> Result<(), StoreError>;
    /// Up to `limit` media created before `before`, to delete.
    async fn expired_media(&self, before: Timestamp, limit: u32) -> Result<Vec<MediaId>, StoreError>;
    /// Forgets these media (their bytes already deleted); returns how many.
    async fn forget_media(&self, ids: &[MediaId]) -> Result<u64, StoreError>;
    /// At start: makes pending media due now if no other process can hold
    /// its lease (one process owns an embedded store, so any lease is a
    /// crashed run's); returns how many. Shared stores leave leases to run out.
    async fn recover_media(&self, now: Timestamp) -> Result<u64, StoreError>;
}
