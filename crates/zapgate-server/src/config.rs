//! One typed configuration for every role, from (lowest to highest
//! precedence) built-in defaults, an optional TOML file, `ZAPGATE_*`
//! environment variables and command-line flags. The CLI layer (clap) owns
//! env and flags and hands the values it saw to [`Config::load`].

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the REST API.
    pub listen: SocketAddr,
    /// Address of the provider webhook routes (`zapgate ingest`'s listener;
    /// in `serve` a listener of their own). None: the API listener.
    pub ingest_listen: Option<SocketAddr>,
    /// Externally visible base URL (links to media, docs; providers post
    /// their webhooks under it).
    pub public_url: Option<String>,
    /// Where the embedded database, lock file, media and admin token live.
    pub data_dir: PathBuf,
    /// PostgreSQL URL: store, queue and webhooks in Postgres instead of SQLite.
    pub database_url: Option<String>,
    /// Connections each process opens to PostgreSQL at most.
    pub database_pool_size: u32,
    /// RabbitMQ URL: relays publish the PostgreSQL outbox to it and workers
    /// consume it (unset: workers claim from the queue table).
    pub amqp_url: Option<String>,
    /// Prefix of every RabbitMQ exchange and queue name.
    pub amqp_prefix: String,
    /// Work shards (quorum queues); every process of a deployment must agree.
    pub amqp_shards: u16,
    /// Unacked deliveries per work shard a worker holds at most.
    pub amqp_prefetch: u16,
    /// Delays of the RabbitMQ wait queues (one quorum queue each) that retries
    /// wait in; the same in every process.
    pub amqp_wait_tiers: String,
    /// Most outbox entries a relay takes and publishes per round.
    pub relay_batch: u32,
    /// Most messages of one tenant in RabbitMQ or being sent at once; the
    /// rest waits in PostgreSQL, behind nobody else's messages.
    pub relay_tenant_cap: u32,
    /// Per instance, about this much of its pace goes to RabbitMQ ahead.
    #[serde(with = "humantime_serde")]
    pub relay_lookahead: Duration,
    /// A message RabbitMQ has held this long without a worker taking it is
    /// published again (its copy may be lost: a purged or deleted queue).
    #[serde(with = "humantime_serde")]
    pub relay_republish_after: Duration,
    /// Redis URL: rate limits and locks shared by every process (soft state).
    pub redis_url: Option<String>,
    /// S3-compatible bucket for media (unset: `<data_dir>/media`).
    pub s3_bucket: Option<String>,
    /// S3 endpoint for MinIO and other S3-compatible servers (unset: AWS).
    pub s3_endpoint: Option<String>,
    pub s3_region: String,
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<String>,
    /// Super-admin bearer token; generated and saved to `<data_dir>/admin_token` when unset.
    pub admin_token: Option<String>,
    pub log_format: LogFormat,
    /// Provider-caused failures after which a message is dead-lettered.
    pub message_retry_limit: u32,
    /// First retry delay; doubles per attempt (with jitter) up to `message_retry_max`.
    #[serde(with = "humantime_serde")]
    pub message_retry_base: Duration,
    #[serde(with = "humantime_serde")]
    pub message_retry_max: Duration,
    /// How long one provider call may take before it counts as a failed attempt.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// Outage failures in a row (from at least two messages) that open a
    /// provider endpoint's circuit; 0 = off. Capped at `message_retry_limit`,
    /// so an outage cannot dead-letter a message before the circuit opens.
    pub provider_circuit_failures: u32,
    /// How long an open circuit waits before a probe (doubling per failed probe, up to 8×).
    #[serde(with = "humantime_serde")]
    pub provider_circuit_cooldown: Duration,
    /// How often each provider server (pool) is checked.
    #[serde(with = "humantime_serde")]
    pub provider_health_interval: Duration,
    /// Messages per minute to one recipient through a pair-limited provider
    /// (the Cloud API: about one per 6 s); 0 = off.
    pub pair_rate_per_minute: u32,
    /// How many messages one recipient may get at once before that pace applies.
    pub pair_burst: u32,
    /// Default pace of a new instance, messages per second.
    pub instance_rate: u32,
    /// Sends in flight at once per instance.
    pub instance_concurrency: u32,
    /// API requests per second per tenant (0 = unlimited); bursts of twice that.
    pub tenant_rate_limit: u32,
    /// Refuse new sends (503 + Retry-After) while more messages than this wait in the queue.
    pub max_queue_depth: u64,
    /// The same per tenant: one tenant's backlog cannot fill the whole queue (0 = off).
    pub max_tenant_queue_depth: u64,
    /// Refuse a tenant's sends while its oldest due message has waited longer
    /// than this to be taken (0 = off).
    #[serde(with = "humantime_serde")]
    pub max_tenant_queue_lag: Duration,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// How long an Idempotency-Key is remembered.
    #[serde(with = "humantime_serde")]
    pub idempotency_ttl: Duration,
    /// A message still `sent` this long raises `message.ack_timeout` (once; not a failure).
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// An instance whose connection changes more than this many times within
    /// `instance_flap_window` is declared `failed` (flapping).
    pub instance_flap_limit: u32,
    #[serde(with = "humantime_serde")]
    pub instance_flap_window: Duration,
    /// How often instances are asked for their connection (WAHA, Evolution,
    /// UAZAPI); zero turns the polls and reconnect requests off.
    #[serde(with = "humantime_serde")]
    pub instance_poll_interval: Duration,
    /// How often the scheduler looks for schedules that came due (and runs
    /// left by a scheduler that stopped).
    #[serde(with = "humantime_serde")]
    pub scheduler_interval: Duration,
    /// How many seconds of sending a running campaign may have in the queue
    /// at once (its rate × this): the rest waits in the campaign, so a
    /// pause takes effect within it and one-off messages are not stuck
    /// behind a whole broadcast.
    #[serde(with = "humantime_serde")]
    pub campaign_lookahead: Duration,
    /// First wait between reconnect requests of an instance that stays down;
    /// doubles (with jitter) up to `instance_reconnect_max`.
    #[serde(with = "humantime_serde")]
    pub instance_reconnect_base: Duration,
    #[serde(with = "humantime_serde")]
    pub instance_reconnect_max: Duration,
    /// How long a provider webhook event's dedupe key is kept: a re-send
    /// within it is a duplicate (Meta retries for up to 7 days).
    #[serde(with = "humantime_serde")]
    pub ingest_dedupe_window: Duration,
    /// Delays between webhook delivery attempts; after the last, the delivery is dead.
    pub webhook_retry_schedule: String,
    /// Allow webhooks (and other egress) to loopback/private/link-local addresses.
    pub webhook_allow_private: bool,
    /// Time limit of one webhook delivery attempt.
    #[serde(with = "humantime_serde")]
    pub webhook_timeout: Duration,
    /// How long finished webhook deliveries and their attempts are kept.
    #[serde(with = "humantime_serde")]
    pub webhook_retention: Duration,
    /// How long a rotated-out webhook secret keeps signing alongside the new one.
    #[serde(with = "humantime_serde")]
    pub webhook_secret_grace: Duration,
    /// Webhook attempts in flight per endpoint at most, so one slow receiver
    /// does not hold up the others.
    pub webhook_endpoint_concurrency: u32,
    /// Largest media zapgate fetches (inbound attachments) or accepts (uploads).
    pub media_max_bytes: u64,
    /// Time limit of one inbound media download.
    #[serde(with = "humantime_serde")]
    pub media_fetch_timeout: Duration,
    /// How long media is kept; then its bytes and record are deleted.
    #[serde(with = "humantime_serde")]
    pub media_retention: Duration,
    /// How long the lock on one Chatwoot message (its webhook, then its job)
    /// is held, in milliseconds: replicas receiving the same webhook at once
    /// wait on it instead of racing.
    pub chatwoot_lock_ttl_ms: u64,
    /// Chatwoot webhooks accepted per second per integration, and per client IP.
    pub chatwoot_rate_per_sec: u32,
    pub chatwoot_burst: u32,
    /// How long a handled Chatwoot message's key is kept (at least a day:
    /// Chatwoot re-delivers late).
    #[serde(with = "humantime_serde")]
    pub chatwoot_job_retention: Duration,
    /// Sandbox provider: how long each send call takes (a provider's latency).
    #[serde(with = "humantime_serde")]
    pub sandbox_send_latency: Duration,
    /// Sandbox provider: delay from sent to delivered.
    #[serde(with = "humantime_serde")]
    pub sandbox_delivered_after: Duration,
    /// Sandbox provider: delay from delivered to read.
    #[serde(with = "humantime_serde")]
    pub sandbox_read_after: Duration,
    /// Sandbox provider: append a JSON line per accepted send to this file.
    pub sandbox_receipts_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".parse().expect("valid default address"),
            ingest_listen: None,
            public_url: None,
            data_dir: PathBuf::from("./data"),
            database_url: None,
            database_pool_size: 16,
            amqp_url: None,
            amqp_prefix: "zapgate".into(),
            amqp_shards: 16,
            amqp_prefetch: 512,
            amqp_wait_tiers: "5s,30s,2m,10m,1h,6h".into(),
            relay_batch: 512,
            relay_tenant_cap: 5_000,
            relay_lookahead: Duration::from_secs(2),
            relay_republish_after: Duration::from_secs(900),
            redis_url: None,
            s3_bucket: None,
            s3_endpoint: None,
            s3_region: "us-east-1".into(),
            s3_access_key_id: None,
            s3_secret_access_key: None,
            admin_token: None,
            log_format: LogFormat::Text,
            message_retry_limit: 5,
            message_retry_base: Duration::from_secs(2),
            message_retry_max: Duration::from_secs(600),
            send_timeout: Duration::from_secs(30),
            provider_circuit_failures: 5,
            provider_circuit_cooldown: Duration::from_secs(30),
            provider_health_interval: Duration::from_secs(30),
            pair_rate_per_minute: 10,
            pair_burst: 45,
            instance_rate: 80,
            instance_concurrency: 32,
            tenant_rate_limit: 1000,
            max_queue_depth: 1_000_000,
            max_tenant_queue_depth: 250_000,
            max_tenant_queue_lag: Duration::ZERO,
            max_body_bytes: 1024 * 1024,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            ingest_dedupe_window: Duration::from_secs(7 * 24 * 3600),
            instance_flap_limit: 5,
            instance_flap_window: Duration::from_secs(60),
            instance_poll_interval: Duration::from_secs(30),
            scheduler_interval: Duration::from_secs(1),
            campaign_lookahead: Duration::from_secs(2),
            instance_reconnect_base: Duration::from_secs(10),
            instance_reconnect_max: Duration::from_secs(300),
            ack_timeout: Duration::from_secs(600),
            webhook_retry_schedule: "5s,30s,2m,10m,1h,6h,24h".into(),
            webhook_allow_private: false,
            webhook_timeout: Duration::from_secs(10),
            webhook_secret_grace: Duration::from_secs(24 * 3600),
            webhook_endpoint_concurrency: 64,
            media_max_bytes: 64 * 1024 * 1024,
            media_fetch_timeout: Duration::from_secs(60),
            media_retention: Duration::from_secs(30 * 24 * 3600),
            webhook_retention: Duration::from_secs(30 * 24 * 3600),
            chatwoot_lock_ttl_ms: 5000,
            chatwoot_rate_per_sec: 100,
            chatwoot_burst: 50,
            chatwoot_job_retention: Duration::from_secs(48 * 3600),
            sandbox_send_latency: Duration::ZERO,
            sandbox_delivered_after: Duration::from_secs(1),
            sandbox_read_after: Duration::from_secs(2),
            sandbox_receipts_file: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("could not read configuration: {0}")]
    Load(#[from] Box<figment::Error>),
}

impl Config {
    /// Defaults ← `file` (if given) ← `overrides` (env and flags, as clap saw them).
    pub fn load(file: Option<&Path>, overrides: impl Serialize) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigError::Invalid(format!("config file {} does not exist", f.display())));
            }
            fig = fig.merge(Toml::file(f));
        }
        let cfg: Config = fig.merge(Serialized::globals(overrides)).extract().map_err(Box::new)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The per-recipient quota of pair-limited providers (None: off).
    pub fn pair_quota(&self) -> Option<governor::Quota> {
        let per_minute = std::num::NonZeroU32::new(self.pair_rate_per_minute)?;
        let burst = std::num::NonZeroU32::new(self.pair_burst)?;
        Some(governor::Quota::per_minute(per_minute).allow_burst(burst))
    }

    /// When an instance's connection changes count as flapping.
    pub fn flap_policy(&self) -> zapgate_domain::instance_state::FlapPolicy {
        zapgate_domain::instance_state::FlapPolicy {
            max_changes: self.instance_flap_limit,
            window: self.instance_flap_window,
        }
    }

    /// `ZAPGATE_WEBHOOK_RETRY_SCHEDULE` parsed: the delay before each retry.
    pub fn webhook_retry_delays(&self) -> Result<Vec<Duration>, String> {
        let delays: Result<Vec<Duration>, _> =
            self.webhook_retry_schedule.split(',').map(|d| parse_duration(d.trim())).collect();
        match delays {
            Ok(d) if !d.is_empty() && d.len() <= 50 => Ok(d),
            _ => Err("ZAPGATE_WEBHOOK_RETRY_SCHEDULE must be 1 to 50 comma-separated durations, e.g. 5s,30s,2m".into()),
        }
    }

    /// The RabbitMQ wait tiers, each named by its delay as written (`5s` →
    /// queue `{prefix}.wait.5s`).
    pub fn amqp_tiers(&self) -> Result<Vec<zapgate_backends::amqp::Tier>, String> {
        let tiers: Result<Vec<_>, _> = self
            .amqp_wait_tiers
            .split(',')
            .map(str::trim)
            .map(|name| parse_duration(name).map(|ttl| zapgate_backends::amqp::Tier::new(name, ttl)))
            .collect();
        match tiers {
            Ok(t) if !t.is_empty() && t.len() <= 20 && t.iter().all(|t| !t.ttl.is_zero()) => Ok(t),
            _ => {
                Err("ZAPGATE_AMQP_WAIT_TIERS must be 1 to 20 comma-separated durations above 0, e.g. 5s,30s,2m".into())
            }
        }
    }

    /// Names this deployment among others sharing one Redis (its store: the
    /// database URL, or the data directory), for keys every one of its
    /// processes must share and no other deployment may.
    pub fn deployment_key(&self) -> String {
        use sha2::Digest;
        let store = self.database_url.clone().unwrap_or_else(|| self.data_dir.display().to_string());
        hex::encode(sha2::Sha256::digest(store.as_bytes()))[..16].to_owned()
    }

    /// Refuses mixes that cannot work, with a message saying what to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.amqp_url.is_some() && self.database_url.is_none() {
            return bad("ZAPGATE_AMQP_URL needs ZAPGATE_DATABASE_URL (RabbitMQ relays from the PostgreSQL outbox)");
        }
        if self.amqp_shards == 0 || self.amqp_prefetch == 0 {
            return bad("ZAPGATE_AMQP_SHARDS and ZAPGATE_AMQP_PREFETCH must be at least 1");
        }
        if self.relay_batch == 0
            || self.relay_tenant_cap == 0
            || self.relay_lookahead.is_zero()
            || self.relay_republish_after.is_zero()
        {
            return bad("ZAPGATE_RELAY_BATCH, ZAPGATE_RELAY_TENANT_CAP and ZAPGATE_RELAY_LOOKAHEAD must be above 0");
        }
        if self.s3_bucket.is_some() && (self.s3_access_key_id.is_none() || self.s3_secret_access_key.is_none()) {
            return bad("ZAPGATE_S3_BUCKET needs ZAPGATE_S3_ACCESS_KEY_ID and ZAPGATE_S3_SECRET_ACCESS_KEY");
        }
        if self.redis_url.is_some() && self.database_url.is_none() {
            return bad("ZAPGATE_REDIS_URL needs ZAPGATE_DATABASE_URL (Redis shares limits between processes; \
                 embedded mode is one process)");
        }
        if let Some(url) = &self.database_url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return bad("ZAPGATE_DATABASE_URL must be a postgres:// URL");
        }
        if self.database_pool_size < 2 {
            return bad("ZAPGATE_DATABASE_POOL_SIZE must be at least 2");
        }
        if self.message_retry_limit == 0 {
            return bad("ZAPGATE_MESSAGE_RETRY_LIMIT must be at least 1");
        }
        if self.provider_circuit_failures > 0 && self.provider_circuit_cooldown.is_zero() {
            return bad(
                "ZAPGATE_PROVIDER_CIRCUIT_COOLDOWN must be more than 0 (ZAPGATE_PROVIDER_CIRCUIT_FAILURES=0 turns the circuit off)",
            );
        }
        if self.pair_rate_per_minute > 0 && self.pair_burst == 0 {
            return bad(
                "ZAPGATE_PAIR_BURST must be at least 1 (ZAPGATE_PAIR_RATE_PER_MINUTE=0 turns the pair limit off)",
            );
        }
        if self.provider_health_interval < Duration::from_millis(100) {
            return bad("ZAPGATE_PROVIDER_HEALTH_INTERVAL must be at least 100ms");
        }
        if self.idempotency_ttl < Duration::from_secs(3600) {
            // Schedule runs and campaign slices resume on their keys after a crash.
            return bad("ZAPGATE_IDEMPOTENCY_TTL must be at least 1h");
        }
        if self.scheduler_interval < Duration::from_millis(10) || self.scheduler_interval > Duration::from_secs(60) {
            return bad("ZAPGATE_SCHEDULER_INTERVAL must be between 10ms and 60s");
        }
        if self.campaign_lookahead < Duration::from_millis(200) || self.campaign_lookahead > Duration::from_secs(600) {
            return bad("ZAPGATE_CAMPAIGN_LOOKAHEAD must be between 200ms and 10m");
        }
        if !self.instance_poll_interval.is_zero() && self.instance_poll_interval < Duration::from_millis(100) {
            return bad("ZAPGATE_INSTANCE_POLL_INTERVAL must be 0 (off) or at least 100ms");
        }
        if self.instance_reconnect_base.is_zero() || self.instance_reconnect_max < self.instance_reconnect_base {
            return bad("ZAPGATE_INSTANCE_RECONNECT_BASE must be above 0 and at most ZAPGATE_INSTANCE_RECONNECT_MAX");
        }
        if self.instance_rate == 0 || self.instance_concurrency == 0 {
            return bad("ZAPGATE_INSTANCE_RATE and ZAPGATE_INSTANCE_CONCURRENCY must be at least 1");
        }
        if self.max_body_bytes < 1024 {
            return bad("ZAPGATE_MAX_BODY_BYTES must be at least 1024");
        }
        if self.chatwoot_lock_ttl_ms == 0 || self.chatwoot_rate_per_sec == 0 || self.chatwoot_burst == 0 {
            return bad(
                "ZAPGATE_CHATWOOT_LOCK_TTL_MS, ZAPGATE_CHATWOOT_RATE_PER_SEC and ZAPGATE_CHATWOOT_BURST must be above 0",
            );
        }
        if self.chatwoot_job_retention < Duration::from_secs(24 * 3600) {
            return bad("ZAPGATE_CHATWOOT_JOB_RETENTION must be at least 24h (Chatwoot re-delivers late)");
        }
        if let Err(e) = self.webhook_retry_delays().and(self.amqp_tiers()) {
            return bad(&e);
        }
        if let Some(t) = &self.admin_token
            && t.len() < 16
        {
            return bad("ZAPGATE_ADMIN_TOKEN must be at least 16 characters");
        }
        Ok(())
    }
}

/// Parses `500ms`, `2s`, `10m`, `24h` (humantime syntax).
pub fn parse_duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn file_then_overrides() {
        let dir = tempfile_dir();
        let file = dir.join("z.toml");
        std::fs::write(&file, "listen = \"0.0.0.0:9000\"\nmessage_retry_limit = 3\nsend_timeout = \"5s\"\n").unwrap();
        let mut o = BTreeMap::new();
        o.insert("message_retry_limit", 7);
        let c = Config::load(Some(&file), o).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.message_retry_limit, 7);
        assert_eq!(c.send_timeout, Duration::from_secs(5));
    }

    #[test]
    fn unknown_keys_and_bad_mixes_are_refused() {
        let dir = tempfile_dir();
        let file = dir.join("z.toml");
        std::fs::write(&file, "lisen = \"x\"\n").unwrap();
        assert!(Config::load(Some(&file), BTreeMap::<String, String>::new()).is_err());
        let mut o = BTreeMap::new();
        o.insert("amqp_url", "amqp://x");
        let e = Config::load(None, o).unwrap_err().to_string();
        assert!(e.contains("ZAPGATE_DATABASE_URL"), "{e}");
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("zapgate-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
