//! The scenarios and how each figure is derived.

use crate::loadgen::{self, CpuMeter, LoadResult, MakeRequest, request};
use crate::report::Figure;
use crate::server::{self, ADMIN, Deployment, Layout};
use crate::{kv, mq, pg};
use anyhow::Context;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Settings {
    pub quick: bool,
    pub phase: Duration,
    pub connections: usize,
    pub bench_exe: PathBuf,
    pub zapgate: PathBuf,
    /// Extra environment for every zapgate process (`--env KEY=VALUE`), applied last.
    pub env: Vec<(String, String)>,
}

/// What the distributed mode runs against.
pub struct DistributedSettings {
    /// A PostgreSQL URL whose role may `CREATE DATABASE`.
    pub database_url: String,
    pub redis_url: Option<String>,
    pub amqp_url: Option<String>,
    /// Work shards of the RabbitMQ configuration.
    pub amqp_shards: u16,
    /// Connections of the PostgreSQL, Redis and RabbitMQ ceilings.
    pub service_connections: usize,
    /// Rows per transaction (PostgreSQL) and commands per pipeline (Redis) of the batched ceilings.
    pub batch: usize,
    /// Workers of the roles-apart configuration (1 api + this many workers); 0 skips it.
    pub workers: usize,
    /// Leave the scenarios' databases in place at the end.
    pub keep_databases: bool,
}

/// Instances per run: enough that per-instance pacing is not the limit.
const INSTANCES: usize = 4;

/// The ceilings zapgate's figures are compared with.
struct Ceilings {
    hello: Figure,
    pg_commit: Option<Figure>,
}

/// The shared services of a distributed run.
struct Services {
    admin: pg::Admin,
    redis: Option<String>,
    amqp: Option<String>,
    amqp_shards: u16,
}

/// One way of running zapgate.
struct Config<'a> {
    /// Names the configuration in RSS figures ("embedded", "distributed serve", …).
    label: String,
    /// Appended to the other figures' names ("" for the configuration of record).
    suffix: String,
    /// Names its data directories and databases.
    slug: &'static str,
    layout: Layout,
    services: Option<&'a Services>,
    /// Route work through the services' RabbitMQ.
    broker: bool,
}

/// A started configuration: its processes, (distributed) its database's
/// name and (through RabbitMQ) its topology.
struct Running {
    dep: Deployment,
    database: Option<String>,
    topology: Option<(String, zapgate_backends::amqp::TopologyConfig)>,
}

impl Config<'_> {
    /// Starts the configuration on a fresh data directory and (distributed) a fresh database.
    async fn start(&self, s: &Settings, work: &Path, scenario: &str, env: &[(&str, &str)]) -> anyhow::Result<Running> {
        let mut all: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let (mut database, mut topology) = (None, None);
        if let Some(services) = self.services {
            settle(s).await;
            let (name, url) = services.admin.create_database(&format!("{}_{scenario}", self.slug)).await?;
            all.push(("ZAPGATE_DATABASE_URL".into(), url));
            if let Some(redis) = &services.redis {
                all.push(("ZAPGATE_REDIS_URL".into(), redis.clone()));
                // Every request then runs the Redis GCRA script, as in production, but is never limited.
                all.push(("ZAPGATE_TENANT_RATE_LIMIT".into(), TENANT_LIMIT_WITH_REDIS.into()));
            }
            if let (true, Some(amqp)) = (self.broker, &services.amqp) {
                let prefix = format!("{}_{}_{scenario}", services.admin.run(), self.slug);
                all.push(("ZAPGATE_AMQP_URL".into(), amqp.clone()));
                all.push(("ZAPGATE_AMQP_PREFIX".into(), prefix.clone()));
                all.push(("ZAPGATE_AMQP_SHARDS".into(), services.amqp_shards.to_string()));
                let config = zapgate_backends::amqp::TopologyConfig {
                    prefix,
                    shards: services.amqp_shards,
                    ..Default::default()
                };
                topology = Some((amqp.clone(), config));
            }
            database = Some(name);
        }
        all.extend(s.env.iter().cloned());
        let dir = work.join(format!("{}-{scenario}", self.slug));
        let dep = Deployment::start(&s.zapgate, self.layout, &dir, &all)?;
        Ok(Running { dep, database, topology })
    }

    /// Stops the processes and (distributed) drops the database at once, so
    /// neither autovacuum nor anything else of this scenario runs into the next.
    async fn finish(&self, run: Running) {
        drop(run.dep);
        if let Some((url, topology)) = run.topology
            && let Err(e) = topology.delete(&url).await
        {
            eprintln!("warning: could not delete the RabbitMQ topology {}: {e}", topology.prefix);
        }
        if let (Some(services), Some(db)) = (self.services, run.database)
            && !services.admin.keep()
        {
            services.admin.drop_database(&db).await;
        }
    }

    fn name(&self, base: &str) -> String {
        format!("{base}{}", self.suffix)
    }
}

/// Waits until the machine is quiet (under a quarter of a core busy, and Redis
/// under 2 % of one, over half a second), so what one phase left running
/// (expiring keys, WAL writes, a previous process's exit) is not counted
/// against the next; gives up after 15 s.
async fn settle(s: &Settings) {
    let started = Instant::now();
    let end = started + if s.quick { Duration::from_secs(2) } else { Duration::from_secs(15) };
    loop {
        let (machine, redis) = (loadgen::machine_busy_seconds(), loadgen::comm_cpu_seconds("redis-server"));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let busy = (loadgen::machine_busy_seconds() - machine) / 0.5;
        let redis = (loadgen::comm_cpu_seconds("redis-server") - redis) / 0.5;
        if busy < 0.25 && redis < 0.02 {
            return;
        }
        if Instant::now() > end {
            eprintln!(
                "warning: the machine is still busy ({busy:.2} cores, Redis {redis:.2}) after {:.0} s of waiting \
                 before the next phase; going on",
                started.elapsed().as_secs_f64()
            );
            return;
        }
    }
}

/// The per-tenant API limit with Redis: high enough never to limit the benchmark.
pub const TENANT_LIMIT_WITH_REDIS: &str = "1000000";

fn work_path() -> PathBuf {
    std::env::temp_dir().join(format!("zapgate-bench-{}", std::process::id()))
}

/// A fresh, empty work directory for this run's data directories.
fn work_dir() -> PathBuf {
    let work = work_path();
    let _ = std::fs::remove_dir_all(&work);
    work
}

pub async fn run_embedded(s: &Settings) -> anyhow::Result<Vec<Figure>> {
    let mut figs = Vec::new();
    let work = work_dir();
    let hello = server::hello(&s.bench_exe)?;
    let ceilings = Ceilings { hello: hello_world(s, hello.addr, &mut figs).await?, pg_commit: None };
    let cfg = Config {
        label: "embedded".into(),
        suffix: String::new(),
        slug: "embedded",
        layout: Layout::Serve,
        services: None,
        broker: false,
    };
    send_only(s, &cfg, &ceilings, &work, &mut figs).await?;
    full_loop(s, &cfg, &work, &mut figs).await?;
    webhooks(s, &cfg, &ceilings, hello.addr, &work, &mut figs).await?;
    ingest(s, &cfg, &ceilings, &work, &mut figs).await?;
    chatwoot_ingest(s, &cfg, &ceilings, &work, &mut figs).await?;
    campaign_import(s, &cfg, &work, &mut figs).await?;
    drop(hello);
    let _ = std::fs::remove_dir_all(&work);
    Ok(figs)
}

/// The distributed mode: PostgreSQL and Redis ceilings, then zapgate on them
/// (`serve`, then 1 `api` + N `worker`s). Every database it creates is dropped
/// at the end, also on failure or Ctrl-C.
pub async fn run_distributed(
    s: &Settings,
    d: &DistributedSettings,
    versions: &mut serde_json::Map<String, Value>,
) -> anyhow::Result<Vec<Figure>> {
    let admin = pg::Admin::connect(&d.database_url, d.keep_databases).await.with_context(|| {
        format!("PostgreSQL at {} (is it up? scripts/services.sh starts it)", pg::redact(&d.database_url))
    })?;
    let services = Services { admin, redis: d.redis_url.clone(), amqp: d.amqp_url.clone(), amqp_shards: d.amqp_shards };
    let result = tokio::select! {
        r = distributed(s, d, &services, versions) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    services.admin.drop_all().await;
    let _ = std::fs::remove_dir_all(work_path());
    result
}

async fn distributed(
    s: &Settings,
    d: &DistributedSettings,
    services: &Services,
    versions: &mut serde_json::Map<String, Value>,
) -> anyhow::Result<Vec<Figure>> {
    let mut figs = Vec::new();
    let work = work_dir();
    let admin = &services.admin;
    versions.insert("postgresql".into(), admin.version().await?.into());
    if let Some(redis) = &services.redis {
        versions
            .insert("redis".into(), kv::version(redis).await.context("Redis (scripts/services.sh starts it)")?.into());
    }

    // 1. Ceilings: HTTP, PostgreSQL commits, Redis commands.
    let hello = server::hello(&s.bench_exe)?;
    let hello_fig = hello_world(s, hello.addr, &mut figs).await?;
    let conns = d.service_connections;
    let (_, url) = admin.create_database("ceilings").await?;
    let cpu = CpuMeter::start();
    let single = pg::commit_ceiling(&url, conns, 1, s.phase).await?;
    eprintln!("postgres single-row commits: {:.0}/s", single.rate());
    let pg_commit =
        Figure::new(format!("PostgreSQL single-row INSERT + COMMIT, {conns} connections"), single.rate(), "commits/s")
            .note(format!("{}; {}", ceiling_note(&single), cpu.describe(true)));
    figs.push(pg_commit.clone());
    let cpu = CpuMeter::start();
    let batched = pg::commit_ceiling(&url, conns, d.batch, s.phase).await?;
    eprintln!("postgres {}-row commits: {:.0} rows/s", d.batch, batched.rate());
    figs.push(
        Figure::new(
            format!("PostgreSQL {}-row INSERT (UNNEST) per COMMIT, {conns} connections", d.batch),
            batched.rate(),
            "rows/s",
        )
        .note(format!(
            "{:.0} commits/s; {}; {}",
            batched.round_trip_rate(),
            ceiling_note(&batched),
            cpu.describe(true)
        )),
    );
    if let Some(redis) = &services.redis {
        for pipeline in [1, d.batch] {
            let cpu = CpuMeter::start();
            let r = kv::set_nx_ceiling(redis, conns, pipeline, s.phase).await?;
            eprintln!("redis SET NX PX, pipeline {pipeline}: {:.0}/s", r.rate());
            let name = if pipeline == 1 {
                format!("Redis SET NX PX, one command per round trip, {conns} connections")
            } else {
                format!("Redis SET NX PX, pipelined {pipeline} per round trip, {conns} connections")
            };
            figs.push(Figure::new(name, r.rate(), "commands/s").note(format!(
                "{}; {}",
                ceiling_note(&r),
                cpu.describe(true)
            )));
        }
    } else {
        eprintln!(
            "warning: no Redis URL (--redis-url, ZAPGATE_BENCH_REDIS_URL, ZAPGATE_TEST_REDIS_URL): Redis ceilings skipped, zapgate runs with in-process limits"
        );
    }
    if let Some(amqp) = &services.amqp {
        versions.insert(
            "rabbitmq".into(),
            mq::version(amqp).await.context("RabbitMQ (scripts/services.sh starts it)")?.into(),
        );
        let cpu = CpuMeter::start();
        let mq = mq::ceilings(amqp, conns, d.batch, s.phase).await?;
        eprintln!("rabbitmq publish+confirm: {:.0}/s, consume+ack: {:.0}/s", mq.publish.rate(), mq.consume.rate());
        figs.push(
            Figure::new(
                format!("RabbitMQ publish with confirms, quorum queue, {conns} connections × {} in flight", d.batch),
                mq.publish.rate(),
                "msg/s",
            )
            .note(format!("{}; {}", ceiling_note(&mq.publish), cpu.describe(true))),
        );
        figs.push(
            Figure::new(
                format!("RabbitMQ consume + ack (multiple, every {}), quorum queue, 1 consumer", d.batch),
                mq.consume.rate(),
                "msg/s",
            )
            .note(format!(
                "{} messages; client used {:.2} cores",
                mq.consume.ops,
                mq.consume.client_cores()
            )),
        );
    } else {
        eprintln!(
            "warning: no RabbitMQ URL (--amqp-url, ZAPGATE_BENCH_AMQP_URL, ZAPGATE_TEST_AMQP_URL): RabbitMQ ceilings and the broker configuration skipped"
        );
    }
    // The ceiling tables are large; drop them before zapgate runs (settled first: see `settle`).
    admin.drop_database(&format!("{}_ceilings", admin.run())).await;
    let ceilings = Ceilings { hello: hello_fig, pg_commit: Some(pg_commit) };

    // 2. zapgate serve on PostgreSQL: every scenario of the embedded mode.
    let serve = Config {
        label: "distributed serve".into(),
        suffix: String::new(),
        slug: "serve",
        layout: Layout::Serve,
        services: Some(services),
        broker: false,
    };
    send_only(s, &serve, &ceilings, &work, &mut figs).await?;
    full_loop(s, &serve, &work, &mut figs).await?;
    webhooks(s, &serve, &ceilings, hello.addr, &work, &mut figs).await?;
    ingest(s, &serve, &ceilings, &work, &mut figs).await?;
    chatwoot_ingest(s, &serve, &ceilings, &work, &mut figs).await?;
    campaign_import(s, &serve, &work, &mut figs).await?;

    // 3. zapgate serve with work through RabbitMQ: outbox → relay → shards → workers.
    if services.amqp.is_some() {
        let brokered = Config {
            label: "distributed serve, RabbitMQ".into(),
            suffix: " [serve, RabbitMQ]".into(),
            slug: "mq",
            layout: Layout::Serve,
            services: Some(services),
            broker: true,
        };
        send_only(s, &brokered, &ceilings, &work, &mut figs).await?;
        full_loop(s, &brokered, &work, &mut figs).await?;
    }

    // 4. Roles apart: one API process and N workers on the same database.
    if d.workers > 0 {
        let apart = Config {
            label: format!("distributed, {}, summed", apart_name(d.workers)),
            suffix: format!(" [{}]", apart_name(d.workers)),
            slug: "apart",
            layout: Layout::Apart { workers: d.workers },
            services: Some(services),
            broker: false,
        };
        send_only(s, &apart, &ceilings, &work, &mut figs).await?;
        full_loop(s, &apart, &work, &mut figs).await?;
        webhooks(s, &apart, &ceilings, hello.addr, &work, &mut figs).await?;
    }
    drop(hello);
    let _ = std::fs::remove_dir_all(&work);
    Ok(figs)
}

/// The configurations a distributed run measures, by name.
pub fn configurations(d: &DistributedSettings) -> Vec<String> {
    let mut names = vec!["serve".to_owned()];
    if d.amqp_url.is_some() {
        names.push("serve, RabbitMQ".to_owned());
    }
    if d.workers > 0 {
        names.push(apart_name(d.workers));
    }
    names
}

/// "1 api + 2 workers".
pub fn apart_name(workers: usize) -> String {
    format!("1 api + {workers} worker{}", if workers == 1 { "" } else { "s" })
}

fn ceiling_note(c: &pg::Ceiling) -> String {
    format!(
        "per round trip p50 {:.2} ms, p99 {:.2} ms; {} errors; client used {:.2} cores",
        c.quantile_ms(0.5),
        c.quantile_ms(0.99),
        c.errors,
        c.client_cores()
    )
}

/// The HTTP ceiling: a bare axum handler, same generator, same connections.
async fn hello_world(s: &Settings, addr: SocketAddr, figs: &mut Vec<Figure>) -> anyhow::Result<Figure> {
    let make: MakeRequest = Arc::new(move |_| request(Method::GET, addr, "/", None, None));
    let r = loadgen::closed_loop(addr, s.connections, s.phase, StatusCode::OK, make).await?;
    let ceiling = Figure::new("HTTP hello-world (axum), closed loop", r.rate(), "req/s").note(latency_note(&r));
    eprintln!("hello-world: {:.0} req/s", r.rate());
    figs.push(ceiling.clone());
    Ok(ceiling)
}

/// Send-only (provider callbacks off, so every write is the send path's own):
/// accept rate and latency, then end-to-end saturating, then at a light load.
async fn send_only(
    s: &Settings,
    cfg: &Config<'_>,
    ceilings: &Ceilings,
    work: &Path,
    figs: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    let env = &[("ZAPGATE_SANDBOX_DELIVERED_AFTER", "24h"), ("ZAPGATE_SANDBOX_READ_AFTER", "24h")];
    let run = cfg.start(s, work, "send_only", env).await?;
    let z = &run.dep;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (idle_rss, _) = z.rss_kib();
    figs.push(Figure::new(
        format!("zapgate idle RSS ({}, after start-up)", cfg.label),
        idle_rss as f64 / 1024.0,
        "MiB",
    ));
    let target = Target::setup(z.addr()).await?;
    let mut receipts = Receipts::new(&z.receipts);

    let services = cfg.services.zip(run.database.as_deref());
    let counters0 = match services {
        Some((svc, _)) => Some(svc.admin.counters().await?),
        None => None,
    };
    let sampler = match services {
        Some((svc, db)) => Some(pg::WaitSampler::start(svc.admin.url(), db).await?),
        None => None,
    };
    let cpu = CpuMeter::start();
    let cpu0 = z.cpu_seconds();
    let accept = loadgen::closed_loop(z.addr(), s.connections, s.phase, StatusCode::ACCEPTED, target.sender(0)).await?;
    let server_cores = (z.cpu_seconds() - cpu0) / accept.elapsed.as_secs_f64();
    let machine = cpu.describe(cfg.services.is_some());
    let waits = match sampler {
        Some(sampler) => Some(sampler.finish().await?),
        None => None,
    };
    eprintln!("accept{}: {:.0} msg/s", cfg.suffix, accept.rate());
    let mut fig = Figure::new(cfg.name("API accept (202 after durable write), closed loop"), accept.rate(), "msg/s")
        .against(&ceilings.hello)
        .note(format!("{}; zapgate used {server_cores:.2} cores; {machine}", latency_note(&accept)));
    if let Some(pg_commit) = &ceilings.pg_commit {
        fig = fig.against(pg_commit);
    }
    figs.push(fig);
    for (q, name) in [(0.5, "p50"), (0.99, "p99"), (0.999, "p99.9")] {
        figs.push(Figure::new(cfg.name(&format!("API accept latency {name}")), accept.quantile_ms(q), "ms"));
    }
    let drained = receipts.wait_for(accept.ok, drain_timeout(s)).await?;
    let sat = receipts.summary(0..drained);
    eprintln!("end-to-end send-only{}: {:.0} msg/s", cfg.suffix, sat.rate);
    figs.push(Figure::new(cfg.name("end-to-end accepted → provider, saturating, send-only"), sat.rate, "msg/s").note(
        format!("{} messages; latency p50 {:.0} ms, p99 {:.0} ms (backlog included)", sat.count, sat.p50, sat.p99),
    ));
    if let (Some((svc, _)), Some(before)) = (services, counters0) {
        let d = svc.admin.counters().await?.since(before);
        let n = drained.max(1) as f64;
        figs.push(
            Figure::new(
                cfg.name("PostgreSQL write transactions per message, accept → provider, send-only"),
                d.xids as f64 / n,
                "tx",
            )
            .note(format!("{} transaction ids for {drained} messages (cluster-wide counter)", d.xids)),
        );
        figs.push(
            Figure::new(
                cfg.name("PostgreSQL WAL per message, accept → provider, send-only"),
                d.wal_bytes as f64 / n,
                "bytes",
            )
            .note("cluster-wide WAL position"),
        );
    }
    if let Some(w) = waits {
        figs.push(
            Figure::new(cfg.name("PostgreSQL backends busy during accept (mean)"), w.busy(), "backends")
                .note(w.describe()),
        );
    }

    // Light load: a fixed rate well under capacity; latency is the pipeline's own.
    let light_rate = if s.quick { 50.0 } else { 500.0 };
    let start = receipts.len();
    let light =
        loadgen::open_loop(z.addr(), light_rate, 8, s.phase, StatusCode::ACCEPTED, target.sender(1 << 30)).await?;
    let end = receipts.wait_for(start as u64 + light.ok, drain_timeout(s)).await?;
    let l = receipts.summary(start..end);
    figs.push(Figure::new(cfg.name(&format!("end-to-end latency p50 at {light_rate:.0} msg/s")), l.p50, "ms"));
    figs.push(Figure::new(cfg.name(&format!("end-to-end latency p99 at {light_rate:.0} msg/s")), l.p99, "ms"));
    let (_, peak) = z.rss_kib();
    figs.push(Figure::new(format!("zapgate peak RSS ({}, send-only run)", cfg.label), peak as f64 / 1024.0, "MiB"));
    cfg.finish(run).await;
    Ok(())
}

/// Full loop: the sandbox reports delivered and read, which zapgate stores.
async fn full_loop(s: &Settings, cfg: &Config<'_>, work: &Path, figs: &mut Vec<Figure>) -> anyhow::Result<()> {
    let env = &[("ZAPGATE_SANDBOX_DELIVERED_AFTER", "50ms"), ("ZAPGATE_SANDBOX_READ_AFTER", "50ms")];
    let run = cfg.start(s, work, "full", env).await?;
    let z = &run.dep;
    let target = Target::setup(z.addr()).await?;
    let mut receipts = Receipts::new(&z.receipts);
    let loaded = loadgen::closed_loop(z.addr(), s.connections, s.phase, StatusCode::ACCEPTED, target.sender(0)).await?;
    let drained = receipts.wait_for(loaded.ok, drain_timeout(s)).await?;
    let f = receipts.summary(0..drained);
    eprintln!("end-to-end full loop{}: {:.0} msg/s", cfg.suffix, f.rate);
    figs.push(
        Figure::new(cfg.name("end-to-end accepted → provider, saturating, full loop"), f.rate, "msg/s")
            .note(format!("accept {:.0} msg/s while statuses flow; no tenant webhooks yet", loaded.rate())),
    );
    let (_, peak) = z.rss_kib();
    figs.push(Figure::new(format!("zapgate peak RSS ({}, full loop)", cfg.label), peak as f64 / 1024.0, "MiB"));
    cfg.finish(run).await;
    Ok(())
}

/// Full loop with a tenant webhook: every sent/delivered/read status is
/// delivered, signed, to a local receiver (the hello-world process at `hooks`).
async fn webhooks(
    s: &Settings,
    cfg: &Config<'_>,
    ceilings: &Ceilings,
    hooks: SocketAddr,
    work: &Path,
    figs: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    let env = &[
        ("ZAPGATE_SANDBOX_DELIVERED_AFTER", "50ms"),
        ("ZAPGATE_SANDBOX_READ_AFTER", "50ms"),
        ("ZAPGATE_WEBHOOK_ALLOW_PRIVATE", "true"),
    ];
    let run = cfg.start(s, work, "webhooks", env).await?;
    let z = &run.dep;
    let target = Target::setup(z.addr()).await?;
    target.webhook(&format!("http://{hooks}/hook")).await?;
    let hooks_before = hook_count(hooks).await?;
    let started = Instant::now();
    let loaded = loadgen::closed_loop(z.addr(), s.connections, s.phase, StatusCode::ACCEPTED, target.sender(0)).await?;
    let sent = loaded.ok * 3;
    // Distributed: statuses of one message may be stored out of order (read
    // before delivered); the overtaken one is recorded as not applied, and
    // gets no webhook, by design. Ask the database how many there were.
    let database = match (cfg.services, run.database.as_deref()) {
        (Some(svc), Some(db)) => Some(pg::with_database(svc.admin.url(), db)),
        _ => None,
    };
    let mut not_applied = 0;
    let mut expected = sent;
    let deadline = Instant::now() + drain_timeout(s);
    let mut delivered = 0;
    let mut polls = 0u64;
    while Instant::now() < deadline {
        if let Some(url) = &database
            && polls.is_multiple_of(10)
        {
            not_applied = pg::not_applied_statuses(url).await.unwrap_or(0);
            expected = sent.saturating_sub(not_applied);
        }
        polls += 1;
        delivered = hook_count(hooks).await? - hooks_before;
        if delivered >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if delivered < expected {
        eprintln!("warning: only {delivered} of {expected} webhook events arrived in {:?}", drain_timeout(s));
    }
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!("webhooks{}: {:.0} events/s", cfg.suffix, delivered as f64 / elapsed);
    let overtaken = if database.is_some() {
        format!(
            " ({not_applied} of {sent} statuses were overtaken by a later status of their message: not applied, no webhook)"
        )
    } else {
        String::new()
    };
    figs.push(
        Figure::new(cfg.name("signed webhook delivery, full loop (3 statuses per message)"), delivered as f64 / elapsed, "events/s")
            .against(&ceilings.hello)
            .note(format!(
                "{delivered} of {expected} events delivered{overtaken}; accept {:.0} msg/s while sending, receiving statuses and delivering webhooks",
                loaded.rate()
            )),
    );
    cfg.finish(run).await;
    Ok(())
}

/// Provider webhook ingest: WAHA `message` events, each a new inbound
/// message, signed with HMAC-SHA512 — verified, deduplicated and stored
/// (message, dedupe key, event) before the 200. The signing happens in the
/// load generator and counts against its CPU, not zapgate's.
async fn ingest(
    s: &Settings,
    cfg: &Config<'_>,
    ceilings: &Ceilings,
    work: &Path,
    figs: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    let run = cfg.start(s, work, "ingest", &[]).await?;
    let z = &run.dep;
    let target = Target::setup(z.addr()).await?;
    let http = reqwest::Client::new();
    let base = format!("http://{}", z.addr());
    let i: Value = http
        .post(format!("{base}/v1/instances"))
        .bearer_auth(&target.token)
        .json(&json!({"name": "waha", "provider": "waha",
                      "config": {"base_url": "http://93.184.216.34", "api_key": "k", "session": "default"}}))
        .send()
        .await?
        .json()
        .await?;
    let id = i["id"].as_str().context("instance id")?;
    let detail: Value =
        http.get(format!("{base}/v1/instances/{id}")).bearer_auth(&target.token).send().await?.json().await?;
    let key = detail["webhook"]["hmac_key"].as_str().context("webhook hmac key")?.to_owned();
    let path = format!("/providers/waha/{id}/webhook");
    let addr = z.addr();
    let make: MakeRequest = Arc::new(move |n| {
        use hmac::{Hmac, KeyInit, Mac};
        let body = serde_json::to_vec(&json!({"event": "message", "session": "default",
            "payload": {"id": format!("false_5511{:09}@c.us_BENCH{n:016X}", n % 1_000_000_000),
                        "timestamp": 1767225600, "from": format!("5511{:09}@c.us", n % 1_000_000_000),
                        "fromMe": false, "body": "benchmark inbound message", "hasMedia": false}}))
        .expect("json");
        let mut mac = Hmac::<sha2::Sha512>::new_from_slice(key.as_bytes()).expect("any key");
        mac.update(&body);
        let mut req = request(Method::POST, addr, &path, None, Some(body));
        let sig = hex::encode(mac.finalize().into_bytes());
        req.headers_mut().insert("x-webhook-hmac", sig.parse().expect("hex is a header value"));
        req
    });
    let what = IngestFigures {
        title: "provider webhook ingest",
        detail: "(WAHA HMAC + dedupe + durable write)",
        each: "each request one new inbound message",
    };
    what.measure(s, cfg, ceilings, z, make, figs).await?;
    cfg.finish(run).await;
    Ok(())
}

/// What an ingest scenario's figures are called.
struct IngestFigures {
    title: &'static str,
    detail: &'static str,
    each: &'static str,
}

impl IngestFigures {
    /// Drives `make`'s requests closed-loop at `z` and records the rate
    /// (against hello-world) and p50/p99.
    async fn measure(
        &self,
        s: &Settings,
        cfg: &Config<'_>,
        ceilings: &Ceilings,
        z: &Deployment,
        make: MakeRequest,
        figs: &mut Vec<Figure>,
    ) -> anyhow::Result<()> {
        let cpu0 = z.cpu_seconds();
        let r = loadgen::closed_loop(z.addr(), s.connections, s.phase, StatusCode::OK, make).await?;
        let cores = (z.cpu_seconds() - cpu0) / r.elapsed.as_secs_f64();
        eprintln!("{}{}: {:.0} req/s", self.title, cfg.suffix, r.rate());
        let note = format!("{}; zapgate used {cores:.2} cores; {}", latency_note(&r), self.each);
        let name = cfg.name(&format!("{} {}, closed loop", self.title, self.detail));
        figs.push(Figure::new(name, r.rate(), "req/s").against(&ceilings.hello).note(note));
        for (q, p) in [(0.5, "p50"), (0.99, "p99")] {
            figs.push(Figure::new(cfg.name(&format!("{} latency {p}", self.title)), r.quantile_ms(q), "ms"));
        }
        Ok(())
    }
}

/// Chatwoot webhook ingest: signed `message_created` events of agents'
/// replies, each a new Chatwoot message — signature checked, deduplicated
/// and stored as a job before the `{"status":"queued"}` (workers then turn
/// the jobs into sends meanwhile, as in production). Limits are raised so
/// the rate is zapgate's, not seed 003's 100/s.
async fn chatwoot_ingest(
    s: &Settings,
    cfg: &Config<'_>,
    ceilings: &Ceilings,
    work: &Path,
    figs: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    let env = [("ZAPGATE_CHATWOOT_RATE_PER_SEC", "1000000"), ("ZAPGATE_CHATWOOT_BURST", "1000000")];
    let run = cfg.start(s, work, "chatwoot", &env).await?;
    let z = &run.dep;
    let target = Target::setup(z.addr()).await?;
    let secret = "bench-chatwoot-secret";
    let made: Value = reqwest::Client::new()
        .post(format!("http://{}/v1/chatwoot-integrations", z.addr()))
        .bearer_auth(&target.token)
        .json(&json!({"instance_id": target.instances[0], "base_url": "http://93.184.216.34", "account_id": 1,
                      "inbox_id": 7, "api_access_token": "t", "webhook_secret": secret}))
        .send()
        .await?
        .json()
        .await?;
    let id = made["id"].as_str().context("integration id")?;
    let path = format!("/webhooks/chatwoot/{id}");
    let addr = z.addr();
    let make: MakeRequest = Arc::new(move |n| {
        use hmac::{Hmac, KeyInit, Mac};
        let phone = format!("+5511{:09}", n % 1_000_000_000);
        let body = serde_json::to_vec(&json!({"event": "message_created", "id": n, "content": "benchmark reply",
            "message_type": "outgoing", "content_type": "text", "private": false, "source_id": null,
            "conversation": {"id": n % 100_000 + 1, "inbox_id": 7,
                "contact_inbox": {"source_id": phone.trim_start_matches('+')},
                "meta": {"sender": {"phone_number": phone, "type": "contact"}}}}))
        .expect("json");
        // Now: zapgate refuses timestamps more than 5 minutes off.
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default()
            .to_string();
        let ts = ts.as_str();
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
        mac.update(ts.as_bytes());
        mac.update(b".");
        mac.update(&body);
        let sig = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        let mut req = request(Method::POST, addr, &path, None, Some(body));
        req.headers_mut().insert("x-chatwoot-timestamp", ts.parse().expect("digits are a header value"));
        req.headers_mut().insert("x-chatwoot-signature", sig.parse().expect("hex is a header value"));
        req
    });
    let what = IngestFigures {
        title: "Chatwoot webhook ingest",
        detail: "(signature + dedupe key + durable job)",
        each: "each request one new Chatwoot message (jobs turn into sends meanwhile)",
    };
    what.measure(s, cfg, ceilings, z, make, figs).await?;
    cfg.finish(run).await;
    Ok(())
}

/// Rows of the campaign import scenario: the million (50 000 quick).
fn campaign_rows(s: &Settings) -> u64 {
    if s.quick { 50_000 } else { 1_000_000 }
}

/// A CSV of `rows` recipients, generated as it is sent (`chunk` rows a
/// piece), so the benchmark holds no file and no copy of it.
fn campaign_csv(rows: u64, chunk: u64) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    let header = std::iter::once(b"phone;name;amount;due_date\n".to_vec());
    let body = (0..rows.div_ceil(chunk)).map(move |c| {
        let mut out = Vec::with_capacity((chunk * 48) as usize);
        for n in c * chunk..((c + 1) * chunk).min(rows) {
            use std::io::Write;
            let _ =
                writeln!(out, "+55119{:08};Cliente {n};R$ {}.{:02};2026-12-{:02}", n, n % 1000, n % 100, n % 28 + 1);
        }
        out
    });
    futures::stream::iter(header.chain(body).map(Ok))
}

/// Importing a campaign's recipients from one big CSV upload (streamed,
/// parsed and stored 1000 rows at a time), with zapgate's peak RSS: the
/// issue's bound is 150 MB for a million rows.
async fn campaign_import(s: &Settings, cfg: &Config<'_>, work: &Path, figs: &mut Vec<Figure>) -> anyhow::Result<()> {
    let run = cfg.start(s, work, "campaign", &[]).await?;
    let z = &run.dep;
    let target = Target::setup(z.addr()).await?;
    let http = reqwest::Client::new();
    let base = format!("http://{}", z.addr());
    let tpl: Value = http
        .post(format!("{base}/v1/templates"))
        .bearer_auth(&target.token)
        .json(&json!({"name": "bill", "body": "Olá {{name}}, sua fatura de {{amount}} vence em {{due_date}}."}))
        .send()
        .await?
        .json()
        .await?;
    let campaign: Value = http
        .post(format!("{base}/v1/campaigns"))
        .bearer_auth(&target.token)
        .json(&json!({"name": "bench", "instance_id": target.instances[0], "template_id": tpl["id"]}))
        .send()
        .await?
        .json()
        .await?;
    let id = campaign["id"].as_str().context("campaign id")?;
    let rows = campaign_rows(s);
    let (idle, _) = z.rss_kib();
    let started = Instant::now();
    let r = http
        .post(format!("{base}/v1/campaigns/{id}/recipients"))
        .bearer_auth(&target.token)
        .header("content-type", "text/csv")
        .body(reqwest::Body::wrap_stream(campaign_csv(rows, 2000)))
        .send()
        .await?;
    let status = r.status();
    let added: Value = r.json().await?;
    let took = started.elapsed();
    anyhow::ensure!(status == 200 && added["added"] == rows, "the import failed: {status} {added}");
    let (_, peak) = z.rss_kib();
    eprintln!("campaign import: {rows} rows in {took:.1?}, peak RSS {:.1} MiB", peak as f64 / 1024.0);
    figs.push(
        Figure::new(
            cfg.name(&format!("Campaign import, {rows}-row CSV upload")),
            rows as f64 / took.as_secs_f64(),
            "rows/s",
        )
        .note(format!(
            "{:.1} s for the upload (streamed; parsed and stored 1000 rows per transaction)",
            took.as_secs_f64()
        )),
    );
    figs.push(
        Figure::new(
            cfg.name(&format!("Peak RSS importing {rows} campaign rows ({})", cfg.label)),
            peak as f64 / 1024.0,
            "MiB",
        )
        .note(format!("goal < 150 MB for a million rows; {:.1} MiB idle before the upload", idle as f64 / 1024.0)),
    );
    cfg.finish(run).await;
    Ok(())
}

async fn hook_count(addr: SocketAddr) -> anyhow::Result<u64> {
    Ok(reqwest::get(format!("http://{addr}/count")).await?.text().await?.trim().parse()?)
}

fn drain_timeout(s: &Settings) -> Duration {
    if s.quick { Duration::from_secs(60) } else { Duration::from_secs(300) }
}

fn latency_note(r: &LoadResult) -> String {
    format!(
        "p50 {:.2} ms, p99 {:.2} ms; {} errors; load generator used {:.2} cores",
        r.quantile_ms(0.5),
        r.quantile_ms(0.99),
        r.errors,
        r.loadgen_cores()
    )
}

/// A tenant with `INSTANCES` unthrottled sandbox instances.
struct Target {
    addr: SocketAddr,
    token: String,
    instances: Vec<String>,
}

impl Target {
    async fn setup(addr: SocketAddr) -> anyhow::Result<Self> {
        let http = reqwest::Client::new();
        let base = format!("http://{addr}");
        let t: Value = http
            .post(format!("{base}/v1/tenants"))
            .bearer_auth(ADMIN)
            .json(&json!({"name": "bench"}))
            .send()
            .await?
            .json()
            .await?;
        let token = t["token"]["token"].as_str().context("tenant token")?.to_owned();
        let mut instances = Vec::new();
        for n in 0..INSTANCES {
            let i: Value = http
                .post(format!("{base}/v1/instances"))
                .bearer_auth(&token)
                .json(&json!({"name": format!("bench-{n}"), "rate_limit_per_second": 100000, "burst": 100000}))
                .send()
                .await?
                .json()
                .await?;
            instances.push(i["id"].as_str().context("instance id")?.to_owned());
        }
        Ok(Self { addr, token, instances })
    }

    async fn webhook(&self, url: &str) -> anyhow::Result<()> {
        let r = reqwest::Client::new()
            .post(format!("http://{}/v1/webhooks", self.addr))
            .bearer_auth(&self.token)
            .json(&json!({"url": url}))
            .send()
            .await?;
        anyhow::ensure!(r.status() == 201, "creating the webhook: {}", r.text().await?);
        Ok(())
    }

    /// Text messages spread over the instances, each to its own chat.
    fn sender(&self, offset: u64) -> MakeRequest {
        let (addr, token, instances) = (self.addr, self.token.clone(), self.instances.clone());
        Arc::new(move |i| {
            let n = i + offset;
            let body = json!({
                "instance_id": instances[(n % instances.len() as u64) as usize],
                "to": format!("+55119{:08}", n % 100_000_000),
                "type": "text",
                "text": {"body": "benchmark message"},
            });
            request(Method::POST, addr, "/v1/messages", Some(&token), Some(serde_json::to_vec(&body).expect("json")))
        })
    }
}

/// Follows the sandbox's receipts file: (accepted at, reached provider at) per send.
struct Receipts {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    rows: Vec<(i64, i64)>,
}

struct Summary {
    count: usize,
    rate: f64,
    p50: f64,
    p99: f64,
}

impl Receipts {
    fn new(path: &Path) -> Self {
        Self { path: path.to_owned(), offset: 0, partial: Vec::new(), rows: Vec::new() }
    }

    fn len(&self) -> usize {
        self.rows.len()
    }

    fn poll(&mut self) -> anyhow::Result<()> {
        let Ok(mut f) = std::fs::File::open(&self.path) else { return Ok(()) };
        f.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        let Some(last_nl) = self.partial.iter().rposition(|b| *b == b'\n') else { return Ok(()) };
        let complete: Vec<u8> = self.partial.drain(..=last_nl).collect();
        for line in complete.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: Value = serde_json::from_slice(line)?;
            let accepted = v["message_id"].as_str().and_then(uuid_v7_millis).unwrap_or(0);
            self.rows.push((accepted, v["at_ms"].as_i64().unwrap_or(0)));
        }
        Ok(())
    }

    /// Waits until `n` receipts exist (or the timeout passes); returns how many.
    async fn wait_for(&mut self, n: u64, timeout: Duration) -> anyhow::Result<usize> {
        let end = Instant::now() + timeout;
        loop {
            self.poll()?;
            if self.rows.len() as u64 >= n || Instant::now() > end {
                if (self.rows.len() as u64) < n {
                    eprintln!("warning: only {} of {n} messages reached the provider in {timeout:?}", self.rows.len());
                }
                return Ok(self.rows.len());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn summary(&self, range: std::ops::Range<usize>) -> Summary {
        let rows = &self.rows[range];
        if rows.is_empty() {
            return Summary { count: 0, rate: 0.0, p50: 0.0, p99: 0.0 };
        }
        let first_accept = rows.iter().map(|r| r.0).min().unwrap_or(0);
        let last_receipt = rows.iter().map(|r| r.1).max().unwrap_or(0);
        let span = ((last_receipt - first_accept).max(1)) as f64 / 1000.0;
        let mut lat: Vec<i64> = rows.iter().map(|r| (r.1 - r.0).max(0)).collect();
        lat.sort_unstable();
        let q = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize] as f64;
        Summary { count: rows.len(), rate: rows.len() as f64 / span, p50: q(0.5), p99: q(0.99) }
    }
}

/// Accept time of a message: its id is `msg_` + a UUIDv7, whose first 48
/// bits are the Unix time in milliseconds it was minted (at accept).
fn uuid_v7_millis(id: &str) -> Option<i64> {
    let hex = id.strip_prefix("msg_")?.get(..12)?;
    i64::from_str_radix(hex, 16).ok()
}
