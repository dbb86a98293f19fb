//! The embedded backend: one SQLite file (WAL, `synchronous=FULL`) holding
//! the store and the queue. All writes go through one writer task that
//! group-commits ([`writer`]); reads use a small pool of read-only
//! connections. A lock file keeps a second `serve` off the same database.

mod queue;
mod rows;
mod store;
mod writer;

use crate::StoreError;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, SqliteConnection};
use std::fs::File;
use std::path::Path;
use std::time::Duration;
use writer::Writer;

pub const DB_FILE: &str = "zapgate.db";
const LOCK_FILE: &str = "serve.lock";

/// Migrations compiled into the binary; no migration files at run time.
fn migrator() -> Migrator {
    Migrator::with_migrations(vec![Migration::new(
        1,
        "init".into(),
        MigrationType::Simple,
        sqlx::SqlSafeStr::into_sql_str(include_str!("../../migrations/sqlite/0001_init.sql")),
        false,
    )])
}

pub struct SqliteBackend {
    writer: Writer,
    read: SqlitePool,
    _lock: Option<File>,
}

impl SqliteBackend {
    /// Opens (creating if needed) and migrates `data_dir/zapgate.db`.
    pub async fn open(data_dir: &Path, exclusive: bool) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir)?;
        let lock = if exclusive {
            let path = data_dir.join(LOCK_FILE);
            let f = File::options().create(true).truncate(false).write(true).open(&path)?;
            f.try_lock().map_err(|_| StoreError::Locked(path.display().to_string()))?;
            Some(f)
        } else {
            None
        };
        let opts = SqliteConnectOptions::new()
            .filename(data_dir.join(DB_FILE))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a 202 promises the message survives a power cut, not only a crash.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            .pragma("cache_size", "-16000");
        let mut conn = SqliteConnection::connect_with(&opts).await?;
        migrator().run(&mut conn).await?;
        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            // No cached statements on readers: a cached statement that was not
            // stepped to the end keeps its WAL snapshot open, and the next read
            // on that connection would miss rows committed since.
            .connect_with(opts.read_only(true).statement_cache_capacity(0))
            .await?;
        Ok(Self { writer: Writer::spawn(conn), read, _lock: lock })
    }
}
