//! [`RateLimiter`] and [`Locks`] on Redis, shared by every process of a
//! distributed deployment.
//!
//! Redis holds only soft state here: a GCRA "theoretical arrival time" per
//! limiter key and short locks. When Redis cannot be reached or answers with
//! an error, [`RedisBackend`] keeps answering from an in-process
//! [`InProcessRateLimiter`] / [`InProcessLocks`] (so each process then enforces
//! the quota on its own, and locks exclude only within one process), warns once
//! per outage, and probes Redis in the background until it answers again.
//!
//! - Rate limits: one Lua script (`EVALSHA`, loaded on `NOSCRIPT`) runs GCRA on
//!   `zapgate:rl:<key>` with the server's `TIME`, so hosts with skewed clocks
//!   share one quota; the key expires once it no longer limits anything.
//! - Locks: `SET zapgate:lock:<key> <token> NX PX <ttl>`; release is a
//!   compare-and-delete script, so only the holder's token deletes the key.
//!   Tokens from Redis are random with the top bit set; tokens from the
//!   fallback count up from zero, so `release` knows where a token came from.

use crate::error::StoreError;
use crate::limits::{InProcessRateLimiter, RateLimiter, Throttled};
use crate::locks::{InProcessLocks, LockToken, Locks};
use ::redis::aio::ConnectionManager;
use ::redis::aio::ConnectionManagerConfig;
use ::redis::{Client, RedisError, Script};
use async_trait::async_trait;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Prefix of every key zapgate writes to Redis.
const PREFIX: &str = "zapgate:";
/// How long one connection attempt, or one answer, may take.
const IO_TIMEOUT: Duration = Duration::from_millis(300);
/// Upper bound for one call (a script call may take three round trips when
/// Redis lost its script cache); past it the call falls back.
const CALL_TIMEOUT: Duration = Duration::from_millis(600);
/// While Redis is down, how often a background probe tries it again.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// Marks tokens issued by Redis (the fallback's tokens never reach it).
const REDIS_TOKEN_BIT: u64 = 1 << 63;

/// GCRA as governor does it (see `limits.rs`), in microseconds of the Redis
/// server's clock. ARGV: emission interval T, burst tolerance tau = T·(burst−1).
/// Returns 0 when allowed, else the wait in microseconds until one would be.
const GCRA_SCRIPT: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local earliest = tat - tau
if now < earliest then
  return earliest - now
end
local next_tat = tat + t
local ttl_ms = math.ceil((next_tat - now) / 1000)
if ttl_ms < 1 then ttl_ms = 1 end
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', string.format('%d', ttl_ms))
return 0
";

/// Deletes the lock only if it still holds our token.
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Rate limits and locks on one Redis server, with in-process fallbacks.
/// Cheap to clone (one `Arc` inside); all clones share connection and health.
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    config: ConnectionManagerConfig,
    /// Replaced by a fresh one when a probe finds Redis back (a connection
    /// that hangs instead of failing is never reused).
    conn: Mutex<ConnectionManager>,
    /// Whether the last call to Redis succeeded. While false, calls go
    /// straight to the fallbacks and only probes talk to Redis.
    healthy: AtomicBool,
    probing: AtomicBool,
    last_probe: Mutex<Option<Instant>>,
    gcra: Script,
    release: Script,
    fallback_limits: InProcessRateLimiter,
    fallback_locks: InProcessLocks,
}

impl RedisBackend {
    /// Connects to `url` (`redis://[user:password@]host[:port][/db]`).
    /// Fails only on a URL that cannot be used; when Redis is merely down it
    /// starts degraded (in-process fallbacks, [`healthy`](Self::healthy) false)
    /// and switches to Redis once it answers.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        // The URL may carry a password: never echo it.
        let client = Client::open(url).map_err(|e| StoreError::Config(format!("invalid Redis URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(IO_TIMEOUT))
            .set_response_timeout(Some(IO_TIMEOUT))
            // One attempt per (re)connection: a caller never waits on a retry loop.
            .set_number_of_retries(0);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
            .map_err(|e| StoreError::Config(format!("Redis connection settings: {e}")))?;
        let backend = Self {
            inner: Arc::new(Inner {
                client,
                config,
                conn: Mutex::new(conn),
                healthy: AtomicBool::new(true),
                probing: AtomicBool::new(false),
                last_probe: Mutex::new(None),
                gcra: Script::new(GCRA_SCRIPT),
                release: Script::new(RELEASE_SCRIPT),
                fallback_limits: InProcessRateLimiter::default(),
                fallback_locks: InProcessLocks::default(),
            }),
        };
        // Logs the warning (once) if Redis is not there yet.
        backend.ping().await;
        Ok(backend)
    }

    /// Whether the last call to Redis succeeded (false: the in-process
    /// fallbacks are answering). Refreshed by calls and by [`ping`](Self::ping).
    pub fn healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Relaxed)
    }

    /// Asks Redis now (bounded by a short timeout) and updates
    /// [`healthy`](Self::healthy). Suits a readiness check.
    pub async fn ping(&self) -> bool {
        if !self.healthy() {
            return self.inner.probe().await;
        }
        let mut conn = self.conn();
        match bounded(::redis::cmd("PING").query_async::<String>(&mut conn)).await {
            Ok(_) => true,
            Err(e) => {
                self.inner.mark_down(&e);
                false
            }
        }
    }

    fn conn(&self) -> ConnectionManager {
        self.inner.conn.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether to use Redis for this call; while it is down, starts a probe
    /// now and then and says no.
    fn use_redis(&self) -> bool {
        if self.healthy() {
            return true;
        }
        self.inner.clone().maybe_probe_in_background();
        false
    }

    async fn redis_check(&self, key: &str, per_second: u32, burst: u32) -> Result<u64, CallError> {
        // The same quota as `limits::quota`: zero values lifted to 1.
        let t_us = (1_000_000 / u64::from(per_second.max(1))).max(1);
        let tau_us = t_us * u64::from(burst.max(1) - 1);
        let mut conn = self.conn();
        bounded(self.inner.gcra.key(format!("{PREFIX}rl:{key}")).arg(t_us).arg(tau_us).invoke_async(&mut conn)).await
    }

    async fn redis_acquire(&self, key: &str, ttl: Duration) -> Result<Option<LockToken>, CallError> {
        let token = rand::random::<u64>() | REDIS_TOKEN_BIT;
        // PX needs at least 1 ms; round a sub-millisecond TTL up.
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut conn = self.conn();
        let set: Option<String> = bounded(
            ::redis::cmd("SET")
                .arg(format!("{PREFIX}lock:{key}"))
                .arg(token)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .query_async(&mut conn),
        )
        .await?;
        Ok(set.map(|_| LockToken::new(token)))
    }

    async fn redis_release(&self, key: &str, token: LockToken) -> Result<bool, CallError> {
        let mut conn = self.conn();
        let deleted: i64 =
            bounded(self.inner.release.key(format!("{PREFIX}lock:{key}")).arg(token.get()).invoke_async(&mut conn))
                .await?;
        Ok(deleted == 1)
    }
}

impl Inner {
    fn mark_up(&self) {
        if !self.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!("Redis answers again; rate limits and locks are shared across processes again");
        }
    }

    fn mark_down(&self, e: &CallError) {
        if self.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                error = %e,
                "Redis is unavailable; rate limits and locks fall back to this process until it answers again"
            );
        }
    }

    /// Starts a background probe unless one runs or one started less than
    /// [`PROBE_INTERVAL`] ago.
    fn maybe_probe_in_background(self: Arc<Self>) {
        {
            let mut last = self.last_probe.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|at| at.elapsed() < PROBE_INTERVAL) {
                return;
            }
            if self.probing.swap(true, Ordering::AcqRel) {
                return;
            }
            *last = Some(Instant::now());
        }
        tokio::spawn(async move {
            self.probe_once().await;
            self.probing.store(false, Ordering::Release);
        });
    }

    async fn probe(&self) -> bool {
        *self.last_probe.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.probe_once().await
    }

    /// Tries a fresh connection; on success it replaces the current one and
    /// Redis is used again.
    async fn probe_once(&self) -> bool {
        let result = async {
            let mut conn = ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())?;
            ::redis::cmd("PING").query_async::<String>(&mut conn).await?;
            Ok::<_, RedisError>(conn)
        };
        match bounded(result).await {
            Ok(conn) => {
                *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = conn;
                self.mark_up();
                true
            }
            Err(e) => {
                self.mark_down(&e);
                tracing::debug!(error = %e, "Redis probe failed");
                false
            }
        }
    }
}

#[async_trait]
impl RateLimiter for RedisBackend {
    async fn check(&self, key: &str, per_second: u32, burst: u32) -> Result<(), Throttled> {
        if self.use_redis() {
            match self.redis_check(key, per_second, burst).await {
                Ok(0) => return Ok(()),
                Ok(wait_us) => return Err(Throttled { retry_after: Duration::from_micros(wait_us) }),
                Err(e) => self.inner.mark_down(&e),
            }
        }
        self.inner.fallback_limits.check(key, per_second, burst).await
    }
}

#[async_trait]
impl Locks for RedisBackend {
    async fn try_acquire(&self, key: &str, ttl: Duration) -> Option<LockToken> {
        if self.use_redis() {
            // A lock this process took from the fallback during an outage
            // still excludes others here until it expires or is released.
            if self.inner.fallback_locks.is_held(key) {
                return None;
            }
            match self.redis_acquire(key, ttl).await {
                Ok(token) => return token,
                Err(e) => self.inner.mark_down(&e),
            }
        }
        self.inner.fallback_locks.try_acquire(key, ttl).await
    }

    async fn release(&self, key: &str, token: LockToken) -> bool {
        if token.get() & REDIS_TOKEN_BIT == 0 {
            return self.inner.fallback_locks.release(key, token).await;
        }
        // A Redis lock that cannot be released now expires on its own.
        if !self.use_redis() {
            return false;
        }
        match self.redis_release(key, token).await {
            Ok(released) => released,
            Err(e) => {
                self.inner.mark_down(&e);
                false
            }
        }
    }
}

/// A Redis error or a call that ran past [`CALL_TIMEOUT`].
#[derive(Debug)]
enum CallError {
    Redis(RedisError),
    TimedOut,
}

impl From<RedisError> for CallError {
    fn from(e: RedisError) -> Self {
        Self::Redis(e)
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Redis(e) => e.fmt(f),
            Self::TimedOut => write!(f, "no answer within {CALL_TIMEOUT:?}"),
        }
    }
}

async fn bounded<T>(call: impl Future<Output = Result<T, RedisError>>) -> Result<T, CallError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => result.map_err(CallError::from),
        Err(_) => Err(CallError::TimedOut),
    }
}
