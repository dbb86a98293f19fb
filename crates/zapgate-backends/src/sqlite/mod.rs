//! The embedded backend: one SQLite file (WAL, `synchronous=FULL`) holding
//! the store and the queue.
//!
//! All writes go through one writer thread that group-commits ([`writer`]);
//! reads use a few read-only connections on the blocking pool ([`Readers`]).
//! A lock file keeps a second `serve` off the same database.
//!
//! Why rusqlite and a plain thread rather than an async driver: the writer
//! is the embedded mode's bottleneck, and it runs ~15 statements per
//! message. Measured with sqlx's SQLite driver, each statement was a
//! round trip to a worker thread (~50 µs on 2 vCPUs), the writer was
//! latency-bound at ~1.1k messages/s with a third of the CPU idle. Here a
//! job is one hand-off to the writer thread and its statements run inline
//! from a prepared-statement cache.

mod campaigns;
mod chatwoot;
mod inbox;
mod media;
mod pools;
mod queue;
mod rows;
mod schedules;
mod store;
mod webhooks;
mod writer;

use crate::StoreError;
use rusqlite::{Connection, OpenFlags};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use writer::Writer;

pub const DB_FILE: &str = "zapgate.db";
const LOCK_FILE: &str = "serve.lock";

/// Schema versions, applied in order; `PRAGMA user_version` records the last.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/sqlite/0001_init.sql"),
    include_str!("../../migrations/sqlite/0002_webhooks.sql"),
    include_str!("../../migrations/sqlite/0003_ack_timeout.sql"),
    include_str!("../../migrations/sqlite/0004_templates.sql"),
    include_str!("../../migrations/sqlite/0005_provider_config.sql"),
    include_str!("../../migrations/sqlite/0006_providers.sql"),
    include_str!("../../migrations/sqlite/0007_provider_health.sql"),
    include_str!("../../migrations/sqlite/0008_inbound.sql"),
    include_str!("../../migrations/sqlite/0009_webhook_delivery.sql"),
    include_str!("../../migrations/sqlite/0010_instance_state.sql"),
    include_str!("../../migrations/sqlite/0011_media.sql"),
    include_str!("../../migrations/sqlite/0012_circuits.sql"),
    include_str!("../../migrations/sqlite/0013_cloud_webhooks.sql"),
    include_str!("../../migrations/sqlite/0014_chatwoot.sql"),
    include_str!("../../migrations/sqlite/0015_endpoint_filters.sql"),
    include_str!("../../migrations/sqlite/0016_reply_to.sql"),
    include_str!("../../migrations/sqlite/0017_schedules.sql"),
    include_str!("../../migrations/sqlite/0018_campaigns.sql"),
    include_str!("../../migrations/sqlite/0019_cloud_templates.sql"),
];

pub struct SqliteBackend {
    writer: Writer,
    committed: Arc<tokio::sync::Notify>,
    readers: Arc<Readers>,
    _lock: Option<File>,
}

/// Turns off SQLite's memory statistics (process-wide, before its first
/// connection): with them on, every allocation SQLite makes takes a global
/// mutex — about 7 % of the writer thread under accept load (perf). Nothing
/// reads them.
fn without_memory_statistics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: SQLITE_CONFIG_MEMSTATUS takes one int; called before any
        // connection of this process (later it is refused with SQLITE_MISUSE).
        let rc = unsafe { rusqlite::ffi::sqlite3_config(rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS, 0 as std::ffi::c_int) };
        if rc != rusqlite::ffi::SQLITE_OK {
            tracing::debug!(rc, "SQLite memory statistics stay on (SQLite was initialised already)");
        }
    });
}

impl SqliteBackend {
    /// Opens (creating if needed) and migrates `data_dir/zapgate.db`.
    pub async fn open(data_dir: &Path, exclusive: bool) -> Result<Self, StoreError> {
        without_memory_statistics();
        std::fs::create_dir_all(data_dir)?;
        let lock = if exclusive {
            let path = data_dir.join(LOCK_FILE);
            let f = File::options().create(true).truncate(false).write(true).open(&path)?;
            f.try_lock().map_err(|_| StoreError::Locked(path.display().to_string()))?;
            Some(f)
        } else {
            None
        };
        let path = data_dir.join(DB_FILE);
        let p = path.clone();
        let conn = tokio::task::spawn_blocking(move || -> Result<Connection, StoreError> {
            let mut conn = Connection::open(&p)?;
            configure(&conn)?;
            // FULL: a 202 promises the message survives a power cut, not only a crash.
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            migrate(&mut conn)?;
            Ok(conn)
        })
        .await
        .map_err(|e| StoreError::Migrate(e.to_string()))??;
        let committed = Arc::new(tokio::sync::Notify::new());
        Ok(Self {
            writer: Writer::spawn(conn, committed.clone())?,
            committed,
            readers: Arc::new(Readers::new(path)),
            _lock: lock,
        })
    }
}

fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "cache_size", -16000)?;
    // Each writer job runs in a savepoint; keep its sub-journal in memory
    // instead of a temp file (measured: ~5 % of the writer's time was
    // sub-journal page writes).
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current = conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))? as usize;
    if current > MIGRATIONS.len() {
        return Err(StoreError::Migrate(format!(
            "the database is at schema version {current}, newer than this zapgate ({}); upgrade zapgate",
            MIGRATIONS.len()
        )));
    }
    for (n, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql).map_err(|e| StoreError::Migrate(format!("migration {}: {e}", n + 1)))?;
        tx.pragma_update(None, "user_version", (n + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// Read-only connections, used on tokio's blocking pool. WAL lets them read
/// while the writer writes; each read sees the last committed state.
struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    fn new(path: PathBuf) -> Self {
        Self { path, idle: Mutex::new(Vec::new()) }
    }

    fn take(&self) -> Result<Connection, StoreError> {
        if let Some(c) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(c);
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(&self.path, flags)?;
        configure(&conn)?;
        Ok(conn)
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < 8 {
            idle.push(conn);
        }
    }
}

impl SqliteBackend {
    /// Runs a read on a pooled read-only connection.
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = readers.take()?;
            let r = f(&conn);
            readers.give_back(conn);
            r
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }
}
