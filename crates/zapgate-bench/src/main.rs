//! `zapgate-bench`: one command that measures, in the same run on the same
//! machine, the raw ceilings and zapgate's own figures, and prints each
//! figure with its ratio to the matching ceiling. Timings are reported,
//! never asserted.
//!
//! Embedded mode (the default): the HTTP hello-world ceiling; zapgate's API
//! accept rate and latency (202 after the durable write); end-to-end accepted
//! → provider rate and latency at a light and a saturating load, send-only and
//! with provider status callbacks; signed webhook delivery; idle and peak RSS.
//!
//! Distributed mode (`--mode distributed`): the PostgreSQL commit and Redis
//! command ceilings as well, then the same scenarios with zapgate on
//! PostgreSQL (+ Redis), as `zapgate serve` and as 1 `api` + N `worker`s,
//! each on a fresh database created for the run and dropped at its end.
//! With a RabbitMQ URL, its publish-with-confirms and consume-with-ack
//! ceilings too, then `zapgate serve` with work routed through RabbitMQ
//! (outbox → relay → work shards → workers), under a topology of its own.

mod kv;
mod loadgen;
mod mq;
mod pg;
mod report;
mod scenarios;
mod server;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "zapgate-bench", version, about = "Measure zapgate against this machine's raw ceilings")]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Which deployment to measure.
    #[arg(long, value_enum, default_value_t = Mode::Embedded)]
    mode: Mode,
    /// Run every scenario briefly (proves the tool works; figures are not meaningful).
    #[arg(long)]
    quick: bool,
    /// The zapgate binary to measure [default: the `zapgate` next to this binary].
    #[arg(long)]
    zapgate: Option<PathBuf>,
    /// Where to write the JSON results [default: bench/results, or target/bench-quick with --quick].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seconds per load phase [default: 10, or 1 with --quick].
    #[arg(long)]
    seconds: Option<u64>,
    /// Connections of the closed-loop load generator.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Extra environment for every zapgate process, e.g. `--env ZAPGATE_DATABASE_POOL_SIZE=32` (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Distributed mode: a PostgreSQL URL whose role may CREATE DATABASE
    /// [default: $ZAPGATE_BENCH_DATABASE_URL, else $ZAPGATE_TEST_DATABASE_URL].
    #[arg(long)]
    database_url: Option<String>,
    /// Distributed mode: a Redis URL [default: $ZAPGATE_BENCH_REDIS_URL, else $ZAPGATE_TEST_REDIS_URL;
    /// without one, Redis is skipped].
    #[arg(long)]
    redis_url: Option<String>,
    /// Distributed mode: a RabbitMQ URL [default: $ZAPGATE_BENCH_AMQP_URL, else $ZAPGATE_TEST_AMQP_URL;
    /// without one, RabbitMQ is skipped].
    #[arg(long)]
    amqp_url: Option<String>,
    /// Distributed mode: work shards (quorum queues) of the RabbitMQ configuration.
    #[arg(long, default_value_t = 16)]
    amqp_shards: u16,
    /// Distributed mode: connections of the PostgreSQL, Redis and RabbitMQ ceilings.
    #[arg(long, default_value_t = 32)]
    service_connections: usize,
    /// Distributed mode: rows per transaction and commands per pipeline of the batched ceilings.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Distributed mode: workers beside the one `zapgate api` of the roles-apart configuration (0 skips it).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Distributed mode: keep the databases the run created (their names are printed at the end).
    #[arg(long)]
    keep_databases: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// One `zapgate serve` on SQLite.
    Embedded,
    /// PostgreSQL and Redis ceilings, then zapgate on them.
    Distributed,
    /// Embedded, then distributed.
    All,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the hello-world ceiling server (used by the benchmark itself).
    #[command(hide = true)]
    Hello,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got `{s}`")),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Some(Cmd::Hello) => rt.block_on(server::run_hello()),
        None => rt.block_on(run(cli)),
    }
}

/// The first non-empty value of `flag`, then of each environment variable.
fn setting(flag: Option<String>, vars: &[&str]) -> Option<String> {
    flag.into_iter()
        .chain(vars.iter().filter_map(|v| std::env::var(v).ok()))
        .map(|v| v.trim().to_owned())
        .find(|v| !v.is_empty())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let me = std::env::current_exe()?;
    let zapgate = cli.zapgate.clone().unwrap_or_else(|| me.with_file_name("zapgate"));
    anyhow::ensure!(zapgate.exists(), "no zapgate binary at {} (build it, or pass --zapgate)", zapgate.display());
    // Checked before anything runs, so `--mode all` does not fail after the embedded half.
    let distributed = if matches!(cli.mode, Mode::Distributed | Mode::All) {
        let database_url = setting(
            cli.database_url.clone(),
            &["ZAPGATE_BENCH_DATABASE_URL", "ZAPGATE_TEST_DATABASE_URL"],
        )
        .context(
            "--mode distributed needs PostgreSQL: pass --database-url postgres://USER:PASSWORD@HOST/DB (a role that \
                 may CREATE DATABASE), or set ZAPGATE_BENCH_DATABASE_URL (ZAPGATE_TEST_DATABASE_URL also works; \
                 `eval \"$(scripts/services.sh)\"` starts PostgreSQL and Redis and sets it)",
        )?;
        anyhow::ensure!(
            database_url.starts_with("postgres://") || database_url.starts_with("postgresql://"),
            "the database URL must be a postgres:// URL"
        );
        Some(scenarios::DistributedSettings {
            database_url,
            redis_url: setting(cli.redis_url.clone(), &["ZAPGATE_BENCH_REDIS_URL", "ZAPGATE_TEST_REDIS_URL"]),
            amqp_url: setting(cli.amqp_url.clone(), &["ZAPGATE_BENCH_AMQP_URL", "ZAPGATE_TEST_AMQP_URL"]),
            amqp_shards: cli.amqp_shards.max(1),
            service_connections: cli.service_connections.max(1),
            batch: cli.batch.max(2),
            workers: cli.workers,
            keep_databases: cli.keep_databases,
        })
    } else {
        None
    };
    let settings = scenarios::Settings {
        quick: cli.quick,
        phase: std::time::Duration::from_secs(cli.seconds.unwrap_or(if cli.quick { 1 } else { 10 })),
        connections: cli.connections,
        bench_exe: me,
        zapgate,
        env: cli.env.clone(),
    };
    let out = cli.out.clone().unwrap_or_else(|| {
        if cli.quick { PathBuf::from("target/bench-quick") } else { PathBuf::from("bench/results") }
    });
    if matches!(cli.mode, Mode::Embedded | Mode::All) {
        let started = std::time::Instant::now();
        let results = scenarios::run_embedded(&settings).await?;
        let report = report::Report::new("embedded", &settings, serde_json::json!({}), Default::default(), results);
        println!("{}", report.markdown());
        let path = report.write_json(&out)?;
        eprintln!("results written to {} ({:.0} s)", path.display(), started.elapsed().as_secs_f64());
    }
    if let Some(d) = distributed {
        let started = std::time::Instant::now();
        let mut versions = serde_json::Map::new();
        let results = scenarios::run_distributed(&settings, &d, &mut versions).await?;
        let pool = settings.env.iter().find(|(k, _)| k == "ZAPGATE_DATABASE_POOL_SIZE").map(|(_, v)| v.clone());
        let extra = serde_json::json!({
            "database_url": pg::redact(&d.database_url),
            "redis_url": d.redis_url.as_deref().map(pg::redact),
            "amqp_url": d.amqp_url.as_deref().map(pg::redact),
            "amqp_shards": d.amqp_url.as_ref().map(|_| d.amqp_shards),
            "service_connections": d.service_connections,
            "batch": d.batch,
            "configurations": scenarios::configurations(&d),
            "zapgate_database_pool_size": pool.unwrap_or_else(|| "16 (zapgate default)".into()),
            "zapgate_tenant_rate_limit": if d.redis_url.is_some() {
                format!("{} (through Redis, never limits)", scenarios::TENANT_LIMIT_WITH_REDIS)
            } else {
                "0 (off)".into()
            },
            "seconds_total": started.elapsed().as_secs_f64().round(),
        });
        let report = report::Report::new("distributed", &settings, extra, versions, results);
        println!("{}", report.markdown());
        let path = report.write_json(&out)?;
        eprintln!("results written to {} ({:.0} s)", path.display(), started.elapsed().as_secs_f64());
    }
    Ok(())
}
