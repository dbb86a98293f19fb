//! The owner session: one connection, outside the pool, holding this
//! process's session advisory locks — `(OWNER, id)` for its whole life,
//! `(WORKER, id)` once it runs workers, `(INSTANCE, hashtext(id))` per
//! instance it paces. Others read these locks to tell a live process from a
//! dead one, so they must be held exactly while the process lives.
//!
//! If the connection drops (a PostgreSQL restart, a network cut), the server
//! frees the locks; [`OwnerSession::check`] notices, reconnects and takes
//! them back under the same owner id. Whatever another process took in the
//! meantime stays with it: a lease it reclaimed is sent again by it (at-least-once,
//! duplicates bounded by the sends in flight), an instance it adopted is
//! dropped here ([`OwnerSession::owns`] turns false and the dispatcher retires
//! the lane).

use super::lock_ns;
use crate::StoreError;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub struct OwnerSession {
    options: PgConnectOptions,
    /// This process's lease owner id.
    pub owner: i64,
    conn: tokio::sync::Mutex<Option<PgConnection>>,
    worker: AtomicBool,
    /// Instances whose lock this session holds (session locks stack, so each
    /// is taken once and released once).
    owned: Mutex<HashSet<String>>,
}

impl OwnerSession {
    pub async fn open(options: PgConnectOptions) -> Result<Self, StoreError> {
        let mut conn = PgConnection::connect_with(&options).await?;
        let owner = loop {
            // Positive: 0 and negative values mean other things (`lease`).
            let candidate = rand::random::<i32>() & i32::MAX;
            if candidate > 0 && try_lock(&mut conn, lock_ns::OWNER, candidate).await? {
                break i64::from(candidate);
            }
        };
        Ok(Self {
            options,
            owner,
            conn: tokio::sync::Mutex::new(Some(conn)),
            worker: AtomicBool::new(false),
            owned: Mutex::new(HashSet::new()),
        })
    }

    fn owned(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.owned.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn owns(&self, instance: &str) -> bool {
        self.owned().contains(instance)
    }

    /// Makes sure the session is alive and holds its locks, reconnecting if
    /// it dropped. Cheap when healthy (one `SELECT 1`).
    pub async fn check(&self) -> Result<(), StoreError> {
        // Bounded: a half-open socket must not stall the dispatcher.
        tokio::time::timeout(CHECK_TIMEOUT, self.check_inner())
            .await
            .map_err(|_| StoreError::Commit("the owner session did not answer in time".into()))?
    }

    async fn check_inner(&self) -> Result<(), StoreError> {
        let mut guard = self.conn.lock().await;
        if let Some(conn) = guard.as_mut()
            && sqlx::query("SELECT 1").execute(&mut *conn).await.is_ok()
        {
            return Ok(());
        }
        *guard = None;
        let mut conn = PgConnection::connect_with(&self.options).await?;
        let id = self.owner as i32;
        if !try_lock(&mut conn, lock_ns::OWNER, id).await? {
            // Only a reclaimer's momentary lock can hold it: try again next check.
            return Err(StoreError::Commit("the owner lock is held by another session; retrying".into()));
        }
        if self.worker.load(Ordering::Acquire) {
            try_lock(&mut conn, lock_ns::WORKER, id).await?;
        }
        let owned: Vec<String> = self.owned().iter().cloned().collect();
        for instance in owned {
            if !try_lock_instance(&mut conn, &instance).await? {
                self.owned().remove(&instance);
            }
        }
        tracing::warn!(owner = self.owner, "reconnected the PostgreSQL owner session and took its locks back");
        *guard = Some(conn);
        Ok(())
    }

    async fn conn(&self) -> Result<tokio::sync::MappedMutexGuard<'_, PgConnection>, StoreError> {
        self.check().await?;
        let guard = self.conn.lock().await;
        tokio::sync::MutexGuard::try_map(guard, Option::as_mut).map_err(|_| StoreError::Closed)
    }

    pub async fn register_worker(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        if !self.worker.swap(true, Ordering::AcqRel) {
            try_lock(&mut conn, lock_ns::WORKER, self.owner as i32).await?;
        }
        Ok(())
    }

    pub async fn try_own(&self, instance: &str) -> Result<bool, StoreError> {
        if self.owns(instance) {
            return Ok(true);
        }
        let mut conn = self.conn().await?;
        let got = try_lock_instance(&mut conn, instance).await?;
        if got {
            self.owned().insert(instance.to_owned());
        }
        Ok(got)
    }

    pub async fn disown(&self, instance: &str) -> Result<(), StoreError> {
        if !self.owned().remove(instance) {
            return Ok(());
        }
        let mut conn = self.conn().await?;
        sqlx::query("SELECT pg_advisory_unlock($1, hashtext($2))")
            .bind(lock_ns::INSTANCE)
            .bind(instance)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

async fn try_lock(conn: &mut PgConnection, ns: i32, id: i32) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)").bind(ns).bind(id).fetch_one(conn).await?)
}

async fn try_lock_instance(conn: &mut PgConnection, instance: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
        .bind(lock_ns::INSTANCE)
        .bind(instance)
        .fetch_one(conn)
        .await?)
}
