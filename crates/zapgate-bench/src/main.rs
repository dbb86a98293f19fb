//! `zapgate-bench`: one command that measures, in the same run on the same
//! machine, the raw ceilings and zapgate's own figures, and prints each
//! figure with its ratio to the matching ceiling. Timings are reported,
//! never asserted.
//!
//! Scenarios today (embedded mode): the HTTP hello-world ceiling; zapgate's
//! API accept rate and latency (202 after the durable write); end-to-end
//! accepted → provider rate and latency at a light and a saturating load,
//! send-only and with provider status callbacks; idle and peak RSS.
//! Distributed-mode ceilings (PostgreSQL, RabbitMQ, Redis) arrive with it.

mod loadgen;
mod report;
mod scenarios;
mod server;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "zapgate-bench", version, about = "Measure zapgate against this machine's raw ceilings")]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
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
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the hello-world ceiling server (used by the benchmark itself).
    #[command(hide = true)]
    Hello,
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

async fn run(cli: Cli) -> anyhow::Result<()> {
    let me = std::env::current_exe()?;
    let zapgate = cli.zapgate.clone().unwrap_or_else(|| me.with_file_name("zapgate"));
    anyhow::ensure!(zapgate.exists(), "no zapgate binary at {} (build it, or pass --zapgate)", zapgate.display());
    let settings = scenarios::Settings {
        quick: cli.quick,
        phase: std::time::Duration::from_secs(cli.seconds.unwrap_or(if cli.quick { 1 } else { 10 })),
        connections: cli.connections,
        bench_exe: me,
        zapgate,
    };
    let results = scenarios::run_embedded(&settings).await?;
    let out = cli.out.unwrap_or_else(|| {
        if cli.quick { PathBuf::from("target/bench-quick") } else { PathBuf::from("bench/results") }
    });
    let report = report::Report::new("embedded", &settings, results);
    println!("{}", report.markdown());
    let path = report.write_json(&out)?;
    eprintln!("results written to {}", path.display());
    Ok(())
}
