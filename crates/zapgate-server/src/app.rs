//! One zapgate process: `serve` runs every role; with a shared database
//! (PostgreSQL) the roles can also run apart — `api` (REST, back-pressure),
//! `worker` (dispatch, provider statuses, webhooks, periodic jobs) and, with
//! RabbitMQ, `relay` (outbox → broker) — any number of each.

use crate::config::Config;
use crate::egress::Egress;
use crate::http::{self, AppState, extract::TokenCache};
use crate::relay::{self, Relay};
use crate::worker::lane::WorkerCtx;
use crate::worker::retry::RetryPolicy;
use crate::worker::webhooks::{self, WebhookSender};
use crate::worker::{WorkSignal, consumer, dispatcher, janitor, statuses};
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use zapgate_backends::Backends;
use zapgate_domain::Timestamp;
use zapgate_providers::Providers;
use zapgate_providers::cloud_api::CloudApi;
use zapgate_providers::evolution::Evolution;
use zapgate_providers::sandbox::{Sandbox, SandboxConfig};
use zapgate_providers::uazapi::Uazapi;
use zapgate_providers::waha::Waha;

/// How long shutdown waits for in-flight sends before exiting anyway (what
/// is left is resent after the next start).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens the backends the configuration names: PostgreSQL when
/// `database_url` is set, else the embedded SQLite file (`exclusive` takes
/// its lock file, for processes that run workers).
pub async fn open_backends(config: &Config, exclusive: bool) -> anyhow::Result<Backends> {
    let mut backends = open_stores(config, exclusive).await?;
    if let Some(bucket) = &config.s3_bucket {
        let s3 = zapgate_backends::S3Config {
            bucket: bucket.clone(),
            endpoint: config.s3_endpoint.clone(),
            region: config.s3_region.clone(),
            access_key_id: config.s3_access_key_id.clone().unwrap_or_default(),
            secret_access_key: config.s3_secret_access_key.clone().unwrap_or_default(),
            allow_http: config.s3_endpoint.as_deref().is_some_and(|e| e.starts_with("http://")),
        };
        backends = backends.with_s3(zapgate_backends::S3MediaStore::new(s3).context("S3 media (ZAPGATE_S3_*)")?);
    }
    Ok(match &config.redis_url {
        Some(url) => backends.with_redis(
            zapgate_backends::RedisBackend::connect(url).await.context("connecting to Redis (ZAPGATE_REDIS_URL)")?,
        ),
        None => backends,
    })
}

async fn open_stores(config: &Config, exclusive: bool) -> anyhow::Result<Backends> {
    match &config.database_url {
        Some(url) => Backends::open_postgres(url, config.database_pool_size, &config.data_dir)
            .await
            .context("opening the PostgreSQL store (ZAPGATE_DATABASE_URL)"),
        None => Backends::open_embedded(&config.data_dir, exclusive)
            .await
            .with_context(|| format!("opening the embedded store in {}", config.data_dir.display())),
    }
}

/// What one process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Every role (the embedded default).
    All,
    /// The REST API only; workers elsewhere send what it accepts.
    Api,
    /// Dispatch, provider statuses, webhook delivery and periodic jobs; its
    /// listener serves only `/health/*` and `/metrics`.
    Worker,
    /// Moves the outbox to RabbitMQ; its listener serves only `/health/*`
    /// and `/metrics`.
    Relay,
    /// Provider webhooks only (`/providers/{kind}/{account}/webhook`), on
    /// `ZAPGATE_INGEST_LISTEN` (else `ZAPGATE_LISTEN`).
    Ingest,
    /// Recurring schedules: starts their runs and sends them; its listener
    /// serves only `/health/*` and `/metrics`.
    Scheduler,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::All => "serve",
            Role::Api => "api",
            Role::Worker => "worker",
            Role::Relay => "relay",
            Role::Ingest => "ingest",
            Role::Scheduler => "scheduler",
        }
    }

    fn runs_workers(self) -> bool {
        matches!(self, Role::All | Role::Worker)
    }

    fn runs_scheduler(self) -> bool {
        matches!(self, Role::All | Role::Scheduler)
    }

    /// Relays the outbox when RabbitMQ is configured.
    fn runs_relay(self) -> bool {
        matches!(self, Role::All | Role::Relay)
    }
}

/// `zapgate serve`: every role in one process.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    run(config, Role::All).await
}

pub async fn run(config: Config, role: Role) -> anyhow::Result<()> {
    anyhow::ensure!(
        role == Role::All || config.database_url.is_some(),
        "`zapgate {}` runs one role against a shared database: set ZAPGATE_DATABASE_URL (embedded mode runs \
         every role in `zapgate serve`)",
        role.name()
    );
    anyhow::ensure!(
        role != Role::Relay || config.amqp_url.is_some(),
        "`zapgate relay` moves the PostgreSQL outbox to RabbitMQ: set ZAPGATE_AMQP_URL"
    );
    crate::egress::install_tls_provider();
    crate::metrics::install();
    let config = Arc::new(config);
    let mut backends = open_backends(&config, true).await?;
    if let Some(url) =
        config.amqp_url.as_deref().filter(|_| !matches!(role, Role::Api | Role::Ingest | Role::Scheduler))
    {
        backends = backends.with_broker(connect_broker(&config, url, role).await?);
    }
    let admin =
        crate::admin::resolve(config.admin_token.as_deref(), &config.data_dir).context("resolving the admin token")?;
    if role.runs_workers() || role.runs_relay() {
        let recovered = backends.queue.recover(Timestamp::now()).await.context("recovering the queue")?;
        if recovered > 0 {
            tracing::warn!(messages = recovered, "requeued messages that were being sent when zapgate last stopped");
        }
    }
    if role.runs_workers() {
        let media = backends.media_index.recover_media(Timestamp::now()).await.context("recovering media fetches")?;
        if media > 0 {
            tracing::warn!(media, "media fetches that were under way when zapgate last stopped are due again");
        }
    }

    let (status_tx, status_rx) = tokio::sync::mpsc::unbounded_channel();
    let sandbox = SandboxConfig {
        send_latency: config.sandbox_send_latency,
        delivered_after: config.sandbox_delivered_after,
        read_after: config.sandbox_read_after,
        receipts_file: config.sandbox_receipts_file.clone(),
    };
    let egress = Egress::new(config.webhook_allow_private, config.webhook_timeout).context("egress HTTP client")?;
    let providers = Providers::default()
        .with(Arc::new(Sandbox::new(sandbox, status_tx).context("sandbox provider")?))
        .with(Arc::new(CloudApi::new(egress.client().clone())))
        .with(Arc::new(Evolution::new(egress.client().clone())))
        .with(Arc::new(Waha::new(egress.client().clone())))
        .with(Arc::new(Uazapi::new(egress.client().clone())));

    let signal = Arc::new(WorkSignal::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let media_base = Arc::new(std::sync::OnceLock::new());
    let ctx = Arc::new(WorkerCtx {
        media_base: media_base.clone(),
        backends: backends.clone(),
        providers: providers.clone(),
        signal: signal.clone(),
        retry: RetryPolicy { base: config.message_retry_base, max: config.message_retry_max },
        retry_limit: config.message_retry_limit,
        send_timeout: config.send_timeout,
        concurrency: config.instance_concurrency,
        pair_quota: config.pair_quota(),
        circuits: zapgate_providers::Circuits::new(zapgate_providers::CircuitConfig {
            failures: config.provider_circuit_failures.min(config.message_retry_limit),
            cooldown: config.provider_circuit_cooldown,
        }),
        parking: match (&backends.broker, &backends.outbox) {
            (Some(broker), Some(outbox)) => {
                Some(crate::worker::parking::Parking { broker: broker.clone(), outbox: outbox.clone() })
            }
            _ => None,
        },
    });
    let queue_depth = Arc::new(janitor::Backlog::default());
    let janitor = janitor::Janitor {
        depth: queue_depth.clone(),
        tenant_limit: config.max_tenant_queue_depth,
        tenant_lag_limit: config.max_tenant_queue_lag,
        sweeps: role.runs_workers(),
        store: backends.store.clone(),
        queue: backends.queue.clone(),
        webhooks: backends.webhooks.clone(),
        webhook_retention: config.webhook_retention,
        idempotency_ttl: config.idempotency_ttl,
        ack_timeout: config.ack_timeout,
        inbox: backends.inbox.clone(),
        ingest_dedupe_window: config.ingest_dedupe_window,
        media_index: backends.media_index.clone(),
        media: backends.media.clone(),
        media_retention: config.media_retention,
    };
    tokio::spawn(janitor::run(janitor, stop_rx.clone()));
    let mut drained = Vec::new();
    if let (true, Some(broker), Some(outbox)) = (role.runs_relay(), &backends.broker, &backends.outbox) {
        let relay = Relay {
            outbox: outbox.clone(),
            queue: backends.queue.clone(),
            broker: broker.clone(),
            limits: zapgate_backends::RelayLimits {
                batch: config.relay_batch,
                tenant_cap: config.relay_tenant_cap,
                lookahead_ms: config.relay_lookahead.as_millis().min(u128::from(u32::MAX)) as u32,
                ..Default::default()
            },
            republish_after: config.relay_republish_after,
            signal: signal.clone(),
        };
        drained.push(tokio::spawn(relay::run(relay, stop_rx.clone())));
    }
    if role.runs_scheduler() {
        let scheduler = Arc::new(crate::worker::scheduler::Scheduler {
            schedules: backends.schedules.clone(),
            store: backends.store.clone(),
            work: signal.clone(),
            interval: config.scheduler_interval,
            clock: crate::worker::scheduler::Clock::from_env(),
            recover: config.database_url.is_none(),
            owner: format!("{:016x}", rand::random::<u64>()),
            runs: Arc::new(tokio::sync::Semaphore::new(crate::worker::scheduler::RUNS_AT_ONCE)),
        });
        drained.push(tokio::spawn(crate::worker::scheduler::run(scheduler, stop_rx.clone())));
        let releaser = Arc::new(crate::worker::campaigns::Releaser {
            campaigns: backends.campaigns.clone(),
            store: backends.store.clone(),
            work: signal.clone(),
            lookahead: config.campaign_lookahead,
            // Embedded: one process owns the database, so a restarted one
            // takes its campaigns back at once instead of after the lease.
            owner: match config.database_url {
                None => "embedded".to_owned(),
                Some(_) => format!("{:016x}", rand::random::<u64>()),
            },
        });
        drained.push(tokio::spawn(crate::worker::campaigns::run(releaser, stop_rx.clone())));
    }
    if role.runs_workers() {
        let reporter = crate::worker::circuits::CircuitReporter {
            circuits: ctx.circuits.clone(),
            pools: backends.pools.clone(),
            reporter: format!("{:016x}", rand::random::<u64>()),
        };
        tokio::spawn(crate::worker::circuits::run(reporter, stop_rx.clone()));
        match (&backends.broker, &backends.outbox) {
            (Some(broker), Some(outbox)) => {
                let consumers = consumer::Consumers {
                    ctx,
                    outbox: outbox.clone(),
                    broker: broker.clone(),
                    prefetch: config.amqp_prefetch,
                };
                drained.push(tokio::spawn(consumer::run(consumers, stop_rx.clone())));
            }
            _ => drained.push(tokio::spawn(dispatcher::run(ctx, stop_rx.clone()))),
        }
        tokio::spawn(statuses::run(backends.store.clone(), status_rx));
        let checks = crate::worker::health::HealthChecks {
            pools: backends.pools.clone(),
            providers: providers.clone(),
            locks: backends.locks.clone(),
            interval: config.provider_health_interval,
        };
        tokio::spawn(crate::worker::health::run(checks, stop_rx.clone()));
        let watch = crate::worker::connections::ConnectionWatch {
            backends: backends.clone(),
            providers: providers.clone(),
            interval: config.instance_poll_interval,
            reconnect: crate::worker::retry::RetryPolicy {
                base: config.instance_reconnect_base,
                max: config.instance_reconnect_max,
            },
            flap: config.flap_policy(),
            lock_key: crate::worker::connections::ConnectionWatch::lock_key(&config.deployment_key()),
        };
        tokio::spawn(crate::worker::connections::run(watch, stop_rx.clone()));
        let sender = Arc::new(WebhookSender {
            store: backends.webhooks.clone(),
            egress: egress.clone(),
            schedule: config.webhook_retry_delays().map_err(anyhow::Error::msg)?,
            timeout: config.webhook_timeout,
            endpoint_concurrency: config.webhook_endpoint_concurrency,
            cloud: crate::worker::cloud_shape::CloudShaper {
                store: backends.store.clone(),
                media: backends.media_index.clone(),
            },
            chatwoot: crate::chatwoot::forward::Forwarder {
                integrations: backends.chatwoot.clone(),
                messages: backends.store.clone(),
                media_index: backends.media_index.clone(),
                media: backends.media.clone(),
                locks: backends.locks.clone(),
                egress: egress.clone(),
            },
        });
        drained.push(tokio::spawn(webhooks::run(sender, stop_rx.clone())));
        let fetcher = Arc::new(crate::worker::media::MediaFetcher {
            index: backends.media_index.clone(),
            store: backends.media.clone(),
            egress: egress.clone(),
            max_bytes: config.media_max_bytes,
            timeout: config.media_fetch_timeout,
        });
        let chatwoot = Arc::new(crate::worker::chatwoot::ChatwootWorker {
            jobs: backends.chatwoot.clone(),
            store: backends.store.clone(),
            locks: backends.locks.clone(),
            media: fetcher.clone(),
            work: signal.clone(),
            lock_ttl: Duration::from_millis(config.chatwoot_lock_ttl_ms),
            retention: config.chatwoot_job_retention,
        });
        drained.push(tokio::spawn(crate::worker::chatwoot::run(chatwoot, stop_rx.clone())));
        drained.push(tokio::spawn(crate::worker::media::run(fetcher, stop_rx)));
    }

    let role_name = role.name();
    let listener = bind(
        match role {
            Role::Ingest => config.ingest_listen.unwrap_or(config.listen),
            _ => config.listen,
        },
        role_name,
    )
    .await?;
    let addr = listener.local_addr()?;
    let own_ingest = match config.ingest_listen.filter(|_| role == Role::All) {
        Some(at) => Some(bind(at, "ingest").await?),
        None => None,
    };
    let ingest_addr = match &own_ingest {
        Some(l) => l.local_addr()?,
        None => addr,
    };
    let public_base = ingest_base_url(&config, ingest_addr);
    let state = AppState {
        backends,
        providers,
        config: config.clone(),
        admin_hash: admin.hash(),
        tokens: Arc::new(TokenCache::new(Duration::from_secs(30))),
        work: signal,
        egress,
        queue_depth,
        ingest: Arc::new(http::ingest::IngestAccounts::new(public_base.clone())),
    };
    // Providers fetch media sent by id where they post their webhooks.
    let _ = media_base.set(public_base);
    if let Some(listener) = own_ingest {
        let at = listener.local_addr()?;
        tracing::info!(addr = %at, "provider webhooks on http://{at}/providers/{{kind}}/{{account}}/webhook");
        let router = http::ingest_router(state.clone());
        let router = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, router).with_graceful_shutdown(shutdown_signal()).await });
    }
    let router = match role {
        Role::All | Role::Api => http::router(state, role == Role::All && config.ingest_listen.is_none()),
        Role::Ingest => http::ingest_router(state),
        Role::Worker | Role::Relay | Role::Scheduler => http::ops_router(state),
    };
    tracing::info!(%addr, role = role_name, "zapgate listening on http://{addr} (docs at /docs)");
    // The peer address is what per-IP limits (Chatwoot webhooks) key on.
    let router = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, router).with_graceful_shutdown(shutdown_signal()).await?;

    tracing::info!("stopped accepting requests; draining");
    let _ = stop_tx.send(true);
    for task in drained {
        if tokio::time::timeout(DRAIN_TIMEOUT, task).await.is_err() {
            tracing::warn!("in-flight work did not finish in time; it is resent after the next start");
        }
    }
    tracing::info!("bye");
    Ok(())
}

/// Where providers are told to post their webhooks: `ZAPGATE_PUBLIC_URL`,
/// else the ingest listener's own address (right when provider and zapgate
/// share a host or network, as in tests and single-host setups).
fn ingest_base_url(config: &Config, ingest: std::net::SocketAddr) -> String {
    match &config.public_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None if ingest.ip().is_unspecified() => format!("http://127.0.0.1:{}", ingest.port()),
        None => format!("http://{ingest}"),
    }
}

async fn bind(at: std::net::SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(at).await.with_context(|| format!("binding the {what} listener to {at}"))
}

/// Connects to RabbitMQ and declares the topology; an unreachable broker is
/// retried in the background (messages wait in the outbox meanwhile).
async fn connect_broker(config: &Config, url: &str, role: Role) -> anyhow::Result<zapgate_backends::amqp::Broker> {
    use zapgate_backends::amqp::{Broker, BrokerOptions, TopologyConfig};
    let topology = TopologyConfig {
        prefix: config.amqp_prefix.clone(),
        shards: config.amqp_shards,
        tiers: config.amqp_tiers().map_err(anyhow::Error::msg)?,
        ..Default::default()
    };
    let options = BrokerOptions { connection_name: format!("zapgate-{}", role.name()), ..Default::default() };
    let broker =
        Broker::connect_with(url, topology, options).await.context("connecting to RabbitMQ (ZAPGATE_AMQP_URL)")?;
    if !broker.healthy() {
        tracing::warn!("RabbitMQ is not reachable yet; accepted messages wait in the outbox until it is");
    }
    Ok(broker)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
