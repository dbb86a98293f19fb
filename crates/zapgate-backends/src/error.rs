/// Errors from a backend. Callers map `NotFound`/`Conflict` to 4xx and the
/// rest to 503/500 without leaking details.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    /// No provider pool can take a new instance.
    #[error("no provider capacity: {0}")]
    NoCapacity(String),
    #[error("the data directory is in use by another zapgate process ({0})")]
    Locked(String),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database error: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("invalid backend configuration: {0}")]
    Config(String),
    #[error("migration error: {0}")]
    Migrate(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the store is shutting down")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("commit failed: {0}")]
    Commit(String),
}
