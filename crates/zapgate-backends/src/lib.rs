//! Backends behind small traits.
//!
//! - [`Store`]: tenants, tokens, instances, messages, events, idempotency keys.
//! - [`Queue`]: due work for the dispatcher (claim with a lease, then settle).
//! - [`WebhookStore`]: tenant webhook endpoints, deliveries and attempts.
//! - [`RateLimiter`]: keyed rate limits (in process here; Redis in distributed mode).
//! - [`Locks`]: short named locks with expiry (in process here; Redis in distributed mode,
//!   [`RedisBackend`], which falls back to the in-process ones while Redis is down).
//! - [`MediaStore`]: media bytes (a local directory here; S3 in distributed mode).
//!
//! The embedded implementations share one SQLite file ([`sqlite::SqliteBackend`]);
//! the distributed ones one PostgreSQL database ([`postgres::PgBackend`]). In
//! both the queue table is the outbox, so "accepted" and "enqueued" commit
//! together.
//! Callers get `Arc<dyn Trait>` handles from [`Backends::open`] and never name
//! an implementation.

pub mod amqp;
pub mod campaigns;
pub mod chatwoot;
pub mod crash;
pub mod error;
pub mod inbox;
pub mod limits;
pub mod locks;
pub mod media;
pub mod media_index;
pub mod outbox;
pub mod pools;
pub mod postgres;
pub mod queue;
mod records;
pub mod redis;
pub mod s3;
pub mod schedules;
pub mod sqlite;
pub mod store;
pub mod webhooks;

pub use crate::redis::RedisBackend;
pub use campaigns::{CampaignRecord, CampaignState, CampaignStore, CursorStep, ImportCounts, ImportRow, RejectedRow};
pub use chatwoot::{
    ChatwootContact, ChatwootJob, ChatwootJobOutcome, ChatwootJobStatus, ChatwootStore, IntegrationChange,
    IntegrationRecord, NewChatwootJob, NewIntegration,
};
pub use crash::crash_point;
pub use error::StoreError;
pub use inbox::{
    AccountInstance, InboundEvent, InboundFilter, InboundItem, InboundOutcome, InboundRecord, Inbox, IngestAccount,
    NewInbound,
};
pub use limits::{InProcessRateLimiter, RateLimiter, Throttled};
pub use locks::{InProcessLocks, LockToken, Locks};
pub use media::{LocalMediaStore, MediaStore};
pub use media_index::{MediaFetched, MediaIndex, MediaJob, MediaRecord, MediaStatus, NewMedia, NewMediaState};
pub use outbox::{Outbox, OutboxEntry, RelayLimits};
pub use pools::{CircuitReport, NewProvider, Placement, ProviderChange, ProviderPools, ProviderRecord};
pub use queue::{Claim, Delivery, Queue, Settlement};
pub use s3::{S3Config, S3MediaStore};
pub use schedules::{
    AudienceDeletion, AudienceMember, AudienceRecord, NewRun, RunProgress, RunStatus, ScheduleRecord, ScheduleRun,
    ScheduleStore,
};
pub use store::*;
pub use webhooks::*;

use std::path::Path;
use std::sync::Arc;

/// The set of backends one process runs with.
#[derive(Clone)]
pub struct Backends {
    pub store: Arc<dyn Store>,
    pub queue: Arc<dyn Queue>,
    pub webhooks: Arc<dyn WebhookStore>,
    pub pools: Arc<dyn ProviderPools>,
    pub inbox: Arc<dyn Inbox>,
    pub rate_limiter: Arc<dyn RateLimiter>,
    pub locks: Arc<dyn Locks>,
    pub media: Arc<dyn MediaStore>,
    pub media_index: Arc<dyn MediaIndex>,
    /// Chatwoot integrations, their jobs and contacts.
    pub chatwoot: Arc<dyn ChatwootStore>,
    /// Audiences, recurring schedules and their runs.
    pub schedules: Arc<dyn ScheduleStore>,
    /// Campaigns, their recipients and rejected rows.
    pub campaigns: Arc<dyn CampaignStore>,
    /// Set when limits and locks live in Redis: its health is reported, not
    /// required (it holds only soft state; see [`RedisBackend`]).
    pub redis: Option<RedisBackend>,
    /// The queue table as an outbox for RabbitMQ (PostgreSQL only).
    pub outbox: Option<Arc<dyn Outbox>>,
    /// Set when work flows through RabbitMQ: relays publish the outbox to it
    /// and workers consume it instead of claiming from the queue table.
    pub broker: Option<amqp::Broker>,
}

impl Backends {
    /// Opens the embedded backends under `data_dir`. `exclusive` takes the
    /// file lock that keeps two `serve` processes off one database.
    pub async fn open_embedded(data_dir: &Path, exclusive: bool) -> Result<Self, StoreError> {
        Ok(Self::on_one_database(Arc::new(sqlite::SqliteBackend::open(data_dir, exclusive).await?), data_dir))
    }

    /// Store, queue and webhooks in `db`; limits and locks in process; media
    /// under `data_dir` (the `with_*` methods move them elsewhere).
    fn on_one_database<
        D: Store
            + Queue
            + WebhookStore
            + ProviderPools
            + Inbox
            + MediaIndex
            + ChatwootStore
            + ScheduleStore
            + CampaignStore,
    >(
        db: Arc<D>,
        data_dir: &Path,
    ) -> Self {
        Self {
            store: db.clone(),
            queue: db.clone(),
            webhooks: db.clone(),
            pools: db.clone(),
            inbox: db.clone(),
            chatwoot: db.clone(),
            schedules: db.clone(),
            campaigns: db.clone(),
            media_index: db,
            rate_limiter: Arc::new(InProcessRateLimiter::default()),
            locks: Arc::new(InProcessLocks::default()),
            media: Arc::new(LocalMediaStore::new(data_dir.join("media"))),
            redis: None,
            outbox: None,
            broker: None,
        }
    }

    /// Moves rate limits and locks to Redis, shared by every process (each
    /// falls back to in-process limits and locks while Redis is down).
    pub fn with_redis(mut self, redis: RedisBackend) -> Self {
        self.rate_limiter = Arc::new(redis.clone());
        self.locks = Arc::new(redis.clone());
        self.redis = Some(redis);
        self
    }

    /// Routes work through RabbitMQ (needs an outbox: PostgreSQL).
    pub fn with_broker(mut self, broker: amqp::Broker) -> Self {
        self.broker = Some(broker);
        self
    }

    /// Moves media to an S3-compatible bucket, shared by every process.
    pub fn with_s3(mut self, media: S3MediaStore) -> Self {
        self.media = Arc::new(media);
        self
    }

    /// Opens the PostgreSQL backends (store, queue and webhooks in one
    /// database, shared by any number of processes); migrates the schema.
    /// Media stays under `data_dir` until an object store is configured.
    pub async fn open_postgres(url: &str, max_connections: u32, data_dir: &Path) -> Result<Self, StoreError> {
        let db = Arc::new(postgres::PgBackend::open(url, max_connections).await?);
        Ok(Self { outbox: Some(db.clone()), ..Self::on_one_database(db, data_dir) })
    }
}
