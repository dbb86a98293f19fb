//! Command line: `serve`, `api`, `worker`, `relay`, `ingest`, `scheduler`, `migrate`,
//! `tenant create|list|token`, `campaign create|status`.
//!
//! Every configuration option is a flag with a `ZAPGATE_*` environment
//! variable; `--config <file.toml>` supplies the same keys from a file
//! (flags and env win over the file).

use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use zapgate_backends::Store;
use zapgate_domain::TenantId;
use zapgate_server::Role;
use zapgate_server::config::Config;

#[derive(Parser)]
#[command(name = "zapgate", version, about = "WhatsApp messaging gateway", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every role in one process (embedded: SQLite under the data dir, sandbox provider).
    Serve(Box<ServeArgs>),
    /// Run only the REST API (needs ZAPGATE_DATABASE_URL; workers send what it accepts).
    Api(Box<ServeArgs>),
    /// Run only the workers: dispatch to providers, statuses, webhooks, periodic jobs
    /// (needs ZAPGATE_DATABASE_URL; its listener serves /health/* and /metrics).
    Worker(Box<ServeArgs>),
    /// Run only the relay: moves the PostgreSQL outbox to RabbitMQ (needs ZAPGATE_DATABASE_URL and
    /// ZAPGATE_AMQP_URL; any number may run; its listener serves /health/* and /metrics).
    Relay(Box<ServeArgs>),
    /// Run only provider webhook ingest: POST /providers/{kind}/{account}/webhook, plus /health/*
    /// and /metrics, on ZAPGATE_INGEST_LISTEN (else ZAPGATE_LISTEN); needs ZAPGATE_DATABASE_URL.
    Ingest(Box<ServeArgs>),
    /// Run only the scheduler: starts the runs of recurring schedules and sends them to their
    /// audiences (needs ZAPGATE_DATABASE_URL; any number may run, each run is made once; its
    /// listener serves /health/* and /metrics).
    Scheduler(Box<ServeArgs>),
    /// Create or upgrade the database schema, then exit.
    Migrate(StoreArgs),
    /// Campaigns through a running zapgate's API: create one from a CSV file with a progress bar.
    Campaign {
        #[command(subcommand)]
        command: crate::campaign::CampaignCommand,
    },
    /// Manage tenants directly in the store (works while `serve` runs).
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant and print its first API token (shown once).
    Create {
        /// Display name of the tenant.
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List tenants.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Issue a new API token for a tenant (shown once).
    Token {
        /// Tenant id (`ten_…`).
        tenant_id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Args, Serialize)]
struct StoreArgs {
    /// TOML configuration file with the same keys as the flags (snake_case).
    #[arg(long, env = "ZAPGATE_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Directory of the embedded database, media and admin token.
    #[arg(long, env = "ZAPGATE_DATA_DIR", value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    /// PostgreSQL URL (postgres://user:pass@host/db): store, queue and webhooks in
    /// Postgres, shared by any number of zapgate processes. Unset: embedded SQLite.
    #[arg(long, env = "ZAPGATE_DATABASE_URL", value_name = "URL", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    database_url: Option<String>,
    /// Most PostgreSQL connections per process [default: 16].
    #[arg(long, env = "ZAPGATE_DATABASE_POOL_SIZE", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    database_pool_size: Option<u32>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime_parse(s)
}

fn humantime_parse(s: &str) -> Result<Duration, String> {
    zapgate_server::config::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 2s, 10m, 24h)"))
}

/// Options of `serve`. Unset options fall back to the config file, then to
/// the defaults shown.
#[derive(Args, Serialize)]
struct ServeArgs {
    #[command(flatten)]
    #[serde(flatten)]
    store: StoreArgs,
    /// Address of the REST API [default: 127.0.0.1:8080].
    #[arg(long, env = "ZAPGATE_LISTEN", value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    /// Address of the provider webhook routes: `serve` then serves them there instead of on the
    /// API listener; `zapgate ingest` listens here [default: the API listener].
    #[arg(long, env = "ZAPGATE_INGEST_LISTEN", value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    ingest_listen: Option<SocketAddr>,
    /// Externally visible base URL, e.g. https://zapgate.example.com (providers are told to post
    /// their webhooks under it).
    #[arg(long, env = "ZAPGATE_PUBLIC_URL", value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    public_url: Option<String>,
    /// RabbitMQ URL (amqp://user:pass@host:5672/vhost): relays publish the outbox to it, workers
    /// consume it; needs ZAPGATE_DATABASE_URL.
    #[arg(long, env = "ZAPGATE_AMQP_URL", value_name = "URL", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    amqp_url: Option<String>,
    /// Prefix of RabbitMQ exchange and queue names [default: zapgate].
    #[arg(long, env = "ZAPGATE_AMQP_PREFIX", value_name = "PREFIX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    amqp_prefix: Option<String>,
    /// Work shards (quorum queues); the same in every process [default: 16].
    #[arg(long, env = "ZAPGATE_AMQP_SHARDS", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    amqp_shards: Option<u16>,
    /// Unacked deliveries per work shard a worker holds [default: 512].
    #[arg(long, env = "ZAPGATE_AMQP_PREFETCH", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    amqp_prefetch: Option<u16>,
    /// Delays of the RabbitMQ wait queues retries wait in; the same in every process
    /// [default: 5s,30s,2m,10m,1h,6h].
    #[arg(long, env = "ZAPGATE_AMQP_WAIT_TIERS", value_name = "DURATIONS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    amqp_wait_tiers: Option<String>,
    /// Outbox entries a relay publishes per round [default: 512].
    #[arg(long, env = "ZAPGATE_RELAY_BATCH", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    relay_batch: Option<u32>,
    /// Messages of one tenant in RabbitMQ or being sent at most; the rest waits in PostgreSQL
    /// [default: 5000].
    #[arg(long, env = "ZAPGATE_RELAY_TENANT_CAP", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    relay_tenant_cap: Option<u32>,
    /// Per instance, this much of its pace is relayed ahead [default: 2s].
    #[arg(long, env = "ZAPGATE_RELAY_LOOKAHEAD", value_parser = parse_duration, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    relay_lookahead: Option<Duration>,
    /// A message RabbitMQ has held this long without a worker taking it is published again
    /// (its copy may have been lost to a purged queue; a late copy is dropped) [default: 15m].
    #[arg(long, env = "ZAPGATE_RELAY_REPUBLISH_AFTER", value_parser = parse_duration, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    relay_republish_after: Option<Duration>,
    /// Redis URL (redis://host:6379): rate limits and locks shared by every process; needs ZAPGATE_DATABASE_URL.
    #[arg(long, env = "ZAPGATE_REDIS_URL", value_name = "URL", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_url: Option<String>,
    /// S3-compatible bucket for media, shared by every process (unset: <data_dir>/media).
    #[arg(long, env = "ZAPGATE_S3_BUCKET", value_name = "BUCKET")]
    #[serde(skip_serializing_if = "Option::is_none")]
    s3_bucket: Option<String>,
    /// S3 endpoint of MinIO or another S3-compatible server, e.g. http://minio:9000 (unset: AWS).
    #[arg(long, env = "ZAPGATE_S3_ENDPOINT", value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    s3_endpoint: Option<String>,
    /// S3 region [default: us-east-1].
    #[arg(long, env = "ZAPGATE_S3_REGION", value_name = "REGION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    s3_region: Option<String>,
    /// S3 access key id.
    #[arg(long, env = "ZAPGATE_S3_ACCESS_KEY_ID", value_name = "ID", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    s3_access_key_id: Option<String>,
    /// S3 secret access key.
    #[arg(long, env = "ZAPGATE_S3_SECRET_ACCESS_KEY", value_name = "KEY", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    s3_secret_access_key: Option<String>,
    /// Super-admin token (≥ 16 chars). Unset: generated once, saved to <data_dir>/admin_token.
    #[arg(long, env = "ZAPGATE_ADMIN_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    admin_token: Option<String>,
    /// Log format: text or json [default: text]. Filter with RUST_LOG.
    #[arg(long, env = "ZAPGATE_LOG_FORMAT", value_enum, value_name = "FORMAT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    log_format: Option<LogFormatArg>,
    /// Provider-caused failures before a message is dead-lettered [default: 5].
    #[arg(long, env = "ZAPGATE_MESSAGE_RETRY_LIMIT", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    message_retry_limit: Option<u32>,
    /// First retry delay, doubled per attempt with jitter [default: 2s].
    #[arg(long, env = "ZAPGATE_MESSAGE_RETRY_BASE", value_parser = parse_duration, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    message_retry_base: Option<Duration>,
    /// Longest retry delay [default: 10m].
    #[arg(long, env = "ZAPGATE_MESSAGE_RETRY_MAX", value_parser = parse_duration, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    message_retry_max: Option<Duration>,
    /// Time limit of one provider call; exceeding it is a failed attempt [default: 30s].
    #[arg(long, env = "ZAPGATE_SEND_TIMEOUT", value_parser = parse_duration, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    send_timeout: Option<Duration>,
    /// Outage failures in a row, from two or more messages, that open a provider
    /// endpoint's circuit (sends then wait without spending attempts); 0 = off [default: 5].
    #[arg(long, env = "ZAPGATE_PROVIDER_CIRCUIT_FAILURES", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    provider_circuit_failures: Option<u32>,
    /// How long an open circuit waits before one probe send; doubles per failed probe up to 8× [default: 30s].
    #[arg(long, env = "ZAPGATE_PROVIDER_CIRCUIT_COOLDOWN", value_parser = parse_duration, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    provider_circuit_cooldown: Option<Duration>,
    /// How often each provider server (pool) is health-checked; unhealthy ones get no new instances [default: 30s].
    #[arg(long, env = "ZAPGATE_PROVIDER_HEALTH_INTERVAL", value_parser = parse_duration, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    provider_health_interval: Option<Duration>,
    /// Messages per minute to one recipient on the Cloud API (Meta's pair rate limit); 0 = off [default: 10].
    #[arg(long, env = "ZAPGATE_PAIR_RATE_PER_MINUTE", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pair_rate_per_minute: Option<u32>,
    /// Messages one recipient may get at once before that pace applies [default: 45].
    #[arg(long, env = "ZAPGATE_PAIR_BURST", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pair_burst: Option<u32>,
    /// Default pace of new instances, messages/second [default: 80].
    #[arg(long, env = "ZAPGATE_INSTANCE_RATE", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    instance_rate: Option<u32>,
    /// Provider calls in flight at once per instance [default: 32].
    #[arg(long, env = "ZAPGATE_INSTANCE_CONCURRENCY", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    instance_concurrency: Option<u32>,
    /// API requests/second per tenant, 0 = unlimited [default: 1000].
    #[arg(long, env = "ZAPGATE_TENANT_RATE_LIMIT", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant_rate_limit: Option<u32>,
    /// Answer 503 + Retry-After to sends while this many messages wait [default: 1000000].
    #[arg(long, env = "ZAPGATE_MAX_QUEUE_DEPTH", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_queue_depth: Option<u64>,
    /// Answer 503 + Retry-After to a tenant's sends while this many of its messages wait; 0 = off
    /// [default: 250000].
    #[arg(long, env = "ZAPGATE_MAX_TENANT_QUEUE_DEPTH", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tenant_queue_depth: Option<u64>,
    /// Answer 503 + Retry-After to a tenant's sends while its oldest due message has waited
    /// longer than this to be taken (outbox lag); 0 = off [default: 0].
    #[arg(long, env = "ZAPGATE_MAX_TENANT_QUEUE_LAG", value_parser = parse_duration, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    max_tenant_queue_lag: Option<Duration>,
    /// Largest request body in bytes [default: 1048576].
    #[arg(long, env = "ZAPGATE_MAX_BODY_BYTES", value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_body_bytes: Option<usize>,
    /// How long Idempotency-Keys are remembered [default: 24h].
    #[arg(long, env = "ZAPGATE_IDEMPOTENCY_TTL", value_parser = parse_duration, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    idempotency_ttl: Option<Duration>,
    /// A message still `sent` this long raises message.ack_timeout once [default: 10m].
    #[arg(long, env = "ZAPGATE_ACK_TIMEOUT", value_parser = parse_duration, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    ack_timeout: Option<Duration>,
    /// An instance whose connection changes more than this many times within
    /// ZAPGATE_INSTANCE_FLAP_WINDOW goes to `failed` (flapping) [default: 5].
    #[arg(long, env = "ZAPGATE_INSTANCE_FLAP_LIMIT", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    instance_flap_limit: Option<u32>,
    /// The window of ZAPGATE_INSTANCE_FLAP_LIMIT [default: 60s].
    #[arg(long, env = "ZAPGATE_INSTANCE_FLAP_WINDOW", value_parser = parse_duration, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    instance_flap_window: Option<Duration>,
    /// How often WAHA, Evolution and UAZAPI instances are asked for their connection, so a
    /// missed webhook cannot leave one shown open while dead; 0 = off [default: 30s].
    #[arg(long, env = "ZAPGATE_INSTANCE_POLL_INTERVAL", value_parser = parse_duration, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    instance_poll_interval: Option<Duration>,
    /// How often the scheduler looks for recurring schedules that came due [default: 1s].
    #[arg(long, env = "ZAPGATE_SCHEDULER_INTERVAL", value_parser = parse_duration, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    scheduler_interval: Option<Duration>,
    /// How many seconds of sending a running campaign may have queued at once (its rate × this);
    /// the rest waits in the campaign [default: 2s].
    #[arg(long, env = "ZAPGATE_CAMPAIGN_LOOKAHEAD", value_parser = parse_duration, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    campaign_lookahead: Option<Duration>,
    /// First wait between reconnect requests of an instance that stays closed; doubles
    /// with jitter up to ZAPGATE_INSTANCE_RECONNECT_MAX [default: 10s].
    #[arg(long, env = "ZAPGATE_INSTANCE_RECONNECT_BASE", value_parser = parse_duration, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    instance_reconnect_base: Option<Duration>,
    /// Longest wait between reconnect requests [default: 5m].
    #[arg(long, env = "ZAPGATE_INSTANCE_RECONNECT_MAX", value_parser = parse_duration, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    instance_reconnect_max: Option<Duration>,
    /// A provider webhook event re-sent within this long is a duplicate [default: 7d].
    #[arg(long, env = "ZAPGATE_INGEST_DEDUPE_WINDOW", value_parser = parse_duration, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    ingest_dedupe_window: Option<Duration>,
    /// Delays between webhook delivery attempts, comma-separated [default: 5s,30s,2m,10m,1h,6h,24h].
    #[arg(long, env = "ZAPGATE_WEBHOOK_RETRY_SCHEDULE", value_name = "DURATIONS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook_retry_schedule: Option<String>,
    /// Let webhooks call loopback/private/link-local addresses [default: false].
    #[arg(long, env = "ZAPGATE_WEBHOOK_ALLOW_PRIVATE", value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook_allow_private: Option<bool>,
    /// Time limit of one webhook delivery attempt [default: 10s].
    #[arg(long, env = "ZAPGATE_WEBHOOK_TIMEOUT", value_parser = parse_duration, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    webhook_timeout: Option<Duration>,
    /// How long finished webhook deliveries and attempts are kept [default: 30days].
    #[arg(long, env = "ZAPGATE_WEBHOOK_RETENTION", value_parser = parse_duration, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    webhook_retention: Option<Duration>,
    /// How long a rotated-out webhook secret still signs [default: 24h].
    #[arg(long, env = "ZAPGATE_WEBHOOK_SECRET_GRACE", value_parser = parse_duration, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    webhook_secret_grace: Option<Duration>,
    /// Webhook attempts in flight per endpoint at most, so one slow receiver does not hold up
    /// the others [default: 64].
    #[arg(long, env = "ZAPGATE_WEBHOOK_ENDPOINT_CONCURRENCY", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook_endpoint_concurrency: Option<u32>,
    /// Largest media fetched with an inbound message or uploaded, in bytes [default: 67108864].
    #[arg(long, env = "ZAPGATE_MEDIA_MAX_BYTES", value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    media_max_bytes: Option<u64>,
    /// Time limit of one inbound media download [default: 60s].
    #[arg(long, env = "ZAPGATE_MEDIA_FETCH_TIMEOUT", value_parser = parse_duration, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    media_fetch_timeout: Option<Duration>,
    /// How long media is kept before it is deleted [default: 30days].
    #[arg(long, env = "ZAPGATE_MEDIA_RETENTION", value_parser = parse_duration, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    media_retention: Option<Duration>,
    /// Lock on one Chatwoot message while a replica handles it, in ms [default: 5000].
    #[arg(long, env = "ZAPGATE_CHATWOOT_LOCK_TTL_MS", value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    chatwoot_lock_ttl_ms: Option<u64>,
    /// Chatwoot webhooks per second per integration and per client IP [default: 100].
    #[arg(long, env = "ZAPGATE_CHATWOOT_RATE_PER_SEC", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    chatwoot_rate_per_sec: Option<u32>,
    /// Burst of Chatwoot webhooks above that rate [default: 50].
    #[arg(long, env = "ZAPGATE_CHATWOOT_BURST", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    chatwoot_burst: Option<u32>,
    /// How long a handled Chatwoot message's key is kept, so a late re-delivery is a duplicate [default: 48h].
    #[arg(long, env = "ZAPGATE_CHATWOOT_JOB_RETENTION", value_parser = parse_duration, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    chatwoot_job_retention: Option<Duration>,
    /// Sandbox provider: how long each send call takes [default: 0s].
    #[arg(long, env = "ZAPGATE_SANDBOX_SEND_LATENCY", value_parser = parse_duration, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    sandbox_send_latency: Option<Duration>,
    /// Sandbox provider: delay from sent to delivered [default: 1s].
    #[arg(long, env = "ZAPGATE_SANDBOX_DELIVERED_AFTER", value_parser = parse_duration, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    sandbox_delivered_after: Option<Duration>,
    /// Sandbox provider: delay from delivered to read [default: 2s].
    #[arg(long, env = "ZAPGATE_SANDBOX_READ_AFTER", value_parser = parse_duration, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    sandbox_read_after: Option<Duration>,
    /// Sandbox provider: append one JSON line per accepted send to this file.
    #[arg(long, env = "ZAPGATE_SANDBOX_RECEIPTS_FILE", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    sandbox_receipts_file: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum LogFormatArg {
    Text,
    Json,
}

mod opt_duration {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&zapgate_server::config::format_duration(*d)),
            None => s.serialize_none(),
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("zapgate: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zapgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => run_role(&args, Role::All).await,
        Command::Api(args) => run_role(&args, Role::Api).await,
        Command::Worker(args) => run_role(&args, Role::Worker).await,
        Command::Relay(args) => run_role(&args, Role::Relay).await,
        Command::Ingest(args) => run_role(&args, Role::Ingest).await,
        Command::Scheduler(args) => run_role(&args, Role::Scheduler).await,
        Command::Migrate(store) => {
            let config = Config::load(store.config.as_deref(), &store)?;
            zapgate_server::open_backends(&config, false).await?;
            match &config.database_url {
                Some(_) => println!("PostgreSQL database is up to date"),
                None => println!("database in {} is up to date", config.data_dir.display()),
            }
            Ok(())
        }
        Command::Tenant { command } => tenant(command).await,
        Command::Campaign { command } => crate::campaign::run(command).await,
    }
}

async fn run_role(args: &ServeArgs, role: Role) -> anyhow::Result<()> {
    let config = Config::load(args.store.config.as_deref(), args)?;
    zapgate_server::logging::init(config.log_format);
    zapgate_server::run(config, role).await
}

async fn open_store(store: &StoreArgs) -> anyhow::Result<std::sync::Arc<dyn Store>> {
    let config = Config::load(store.config.as_deref(), store)?;
    Ok(zapgate_server::open_backends(&config, false).await?.store)
}

async fn tenant(command: TenantCommand) -> anyhow::Result<()> {
    match command {
        TenantCommand::Create { name, store } => {
            let name = name.trim().to_owned();
            anyhow::ensure!(!name.is_empty() && name.chars().count() <= 200, "the name must be 1 to 200 characters");
            let store = open_store(&store).await?;
            let (tenant, token) = zapgate_server::http::tenants::create_tenant_with_token(&store, name).await?;
            println!("tenant  {}  {}", tenant.id, tenant.name);
            println!("token   {}", token.token);
            eprintln!("(the token is shown only now; keep it somewhere safe)");
        }
        TenantCommand::List { store } => {
            let store = open_store(&store).await?;
            for t in store.list_tenants().await? {
                println!("{}  {}  {}", t.id, t.created_at.to_rfc3339(), t.name);
            }
        }
        TenantCommand::Token { tenant_id, store } => {
            let id = TenantId::parse(&tenant_id).ok_or_else(|| anyhow::anyhow!("{tenant_id:?} is not a tenant id"))?;
            let store = open_store(&store).await?;
            anyhow::ensure!(store.get_tenant(&id).await?.is_some(), "no tenant {id}");
            let token = zapgate_server::http::tenants::issue_token(&store, &id).await?;
            println!("token   {}", token.token);
            eprintln!("(the token is shown only now; keep it somewhere safe)");
        }
    }
    Ok(())
}
