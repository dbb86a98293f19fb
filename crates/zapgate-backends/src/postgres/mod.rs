//! The PostgreSQL backend (distributed mode): the store, the webhook store
//! and a queue table, shared by any number of zapgate processes.
//!
//! Writes are ordinary transactions on a connection pool; several processes
//! may claim from the queue at once (`FOR UPDATE SKIP LOCKED`). A claim
//! leases entries to this process's *owner id*; the process holds a session
//! advisory lock on that id for its whole life, so when it dies Postgres
//! drops the lock and any other process can tell that the leases are
//! orphaned and return them at once (see [`queue`]), instead of waiting for
//! a lease timeout.

mod accepts;
mod attempts;
mod campaigns;
mod chatwoot;
mod group_commit;
mod inbox;
mod media;
mod outbox;
mod outcomes;
mod pools;
mod queue;
mod rows;
mod schedules;
mod session;
mod store;
mod webhooks;

use crate::StoreError;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Schema versions, applied in order; `schema_migrations` records each.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/postgres/0001_init.sql"),
    include_str!("../../migrations/postgres/0002_providers.sql"),
    include_str!("../../migrations/postgres/0003_provider_health.sql"),
    include_str!("../../migrations/postgres/0004_inbound.sql"),
    include_str!("../../migrations/postgres/0005_webhook_delivery.sql"),
    include_str!("../../migrations/postgres/0006_instance_state.sql"),
    include_str!("../../migrations/postgres/0007_media.sql"),
    include_str!("../../migrations/postgres/0008_circuits.sql"),
    include_str!("../../migrations/postgres/0009_cloud_webhooks.sql"),
    include_str!("../../migrations/postgres/0010_chatwoot.sql"),
    include_str!("../../migrations/postgres/0011_endpoint_filters.sql"),
    include_str!("../../migrations/postgres/0012_reply_to.sql"),
    include_str!("../../migrations/postgres/0013_schedules.sql"),
    include_str!("../../migrations/postgres/0014_campaigns.sql"),
    include_str!("../../migrations/postgres/0015_cloud_templates.sql"),
];

/// Advisory lock key serialising migrations across processes.
const MIGRATION_LOCK: i64 = 0x7a61_7067_6174_6531; // "zapgate1"

/// Namespaces of the two-key advisory locks `(namespace, id)` a process holds
/// on its owner connection for its whole life (or until it lets go).
pub(crate) mod lock_ns {
    /// `(OWNER, owner id)`: this process is alive; its leases are its own.
    pub const OWNER: i32 = 0x7a67_0001;
    /// `(WORKER, owner id)`: this process runs workers (counted for fair shares).
    pub const WORKER: i32 = 0x7a67_0002;
    /// `(INSTANCE, hashtext(instance id))`: this process paces that instance.
    pub const INSTANCE: i32 = 0x7a67_0003;
}

/// Who holds a queue entry: `queue_entries.lease_owner`. Owner ids are
/// positive (`OwnerSession`), so one column tells every state apart.
pub(crate) mod lease {
    // NULL: the entry waits in the table (ready when it is a due chat head).

    /// RabbitMQ holds it: the relay published it and got the confirm.
    pub const IN_BROKER: i64 = 0;

    /// Process `owner` is sending it (claimed from the table, or delivered
    /// by the broker and won the compare-and-set).
    pub fn sending(owner: i64) -> i64 {
        owner
    }

    /// Process `owner` is relaying it: taken, published, confirm not yet seen.
    pub fn relaying(owner: i64) -> i64 {
        -owner
    }
}

pub struct PgBackend {
    pool: PgPool,
    accepts: accepts::Accepts,
    outcomes: outcomes::Outcomes,
    ingests: inbox::Ingests,
    attempts: attempts::Attempts,
    /// The connection holding this process's session locks.
    session: session::OwnerSession,
    /// Notified after writes that add events or deliveries in this process.
    committed: Arc<Notify>,
}

impl PgBackend {
    /// Connects, migrates and takes a lease owner id.
    pub async fn open(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Config(format!("database URL: {e}")))?
            // The server notices a vanished client host within about a minute
            // (default: two hours), so a dead worker's session locks — its
            // instances and leases — are freed for the others.
            .options([("tcp_keepalives_idle", "30"), ("tcp_keepalives_interval", "10"), ("tcp_keepalives_count", "3")]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await?;
        migrate(&pool).await?;
        let session = session::OwnerSession::open(options).await?;
        let accepts = accepts::Accepts::start(pool.clone());
        let committed = Arc::new(Notify::new());
        let outcomes = outcomes::Outcomes::start(pool.clone(), session.owner, committed.clone());
        let ingests = inbox::Ingests::start(pool.clone(), committed.clone());
        let attempts = attempts::Attempts::start(pool.clone(), committed.clone());
        Ok(Self { pool, accepts, outcomes, ingests, attempts, session, committed })
    }

    /// This process's lease owner id (held by the owner session's lock).
    fn owner(&self) -> i64 {
        self.session.owner
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn wake(&self) {
        self.committed.notify_one();
    }
}

async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(MIGRATION_LOCK).execute(&mut *tx).await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *tx)
    .await?;
    let current: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetch_one(&mut *tx).await?;
    if current as usize > MIGRATIONS.len() {
        return Err(StoreError::Migrate(format!(
            "the database is at schema version {current}, newer than this zapgate ({}); upgrade zapgate",
            MIGRATIONS.len()
        )));
    }
    for (n, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        sqlx::raw_sql(AssertSqlSafe(*sql))
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::Migrate(format!("migration {}: {e}", n + 1)))?;
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
            .bind((n + 1) as i64)
            .bind(zapgate_domain::Timestamp::now().as_millis())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Whether to run a whole transaction again after `result`: yes (up to 3
/// times, after a short random pause) when PostgreSQL aborted it as a
/// deadlock victim or a serialization failure — it rolled back whole, so
/// running it again is safe, and the caller never sees a 5xx for what two
/// concurrent writers did to each other.
///
/// ```ignore
/// let mut tries = 0;
/// loop {
///     let r = self.work_once().await;
///     if !again(&r, &mut tries).await { return r; }
/// }
/// ```
pub(crate) async fn again<T>(result: &Result<T, StoreError>, tries: &mut u64) -> bool {
    let Err(StoreError::Postgres(sqlx::Error::Database(d))) = result else { return false };
    if *tries >= 3 || !matches!(d.code().as_deref(), Some("40P01" | "40001")) {
        return false;
    }
    *tries += 1;
    tracing::debug!(code = ?d.code(), tries = *tries, "transaction aborted by a concurrent one; running it again");
    tokio::time::sleep(Duration::from_millis(rand::random_range(1..10 * *tries))).await;
    true
}

/// True when `e` is a unique-constraint violation.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505"))
}
