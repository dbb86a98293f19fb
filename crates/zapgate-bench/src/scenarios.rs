//! The scenarios and how each figure is derived.

use crate::loadgen::{self, LoadResult, MakeRequest, request};
use crate::report::Figure;
use crate::server::{self, ADMIN};
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
}

/// Instances per run: enough that per-instance pacing is not the limit.
const INSTANCES: usize = 4;

pub async fn run_embedded(s: &Settings) -> anyhow::Result<Vec<Figure>> {
    let mut figs = Vec::new();
    let work = std::env::temp_dir().join(format!("zapgate-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);

    // 1. Ceiling: a bare axum handler, same generator, same connections.
    let hello = server::hello(&s.bench_exe)?;
    let addr = hello.addr;
    let make: MakeRequest = Arc::new(move |_| request(Method::GET, addr, "/", None, None));
    let r = loadgen::closed_loop(addr, s.connections, s.phase, StatusCode::OK, make).await?;
    let ceiling = Figure::new("HTTP hello-world (axum), closed loop", r.rate(), "req/s").note(latency_note(&r));
    eprintln!("hello-world: {:.0} req/s", r.rate());
    figs.push(ceiling.clone());

    // 2. Send-only: provider callbacks off, so every write is the send path's own.
    let send_only = &[("ZAPGATE_SANDBOX_DELIVERED_AFTER", "24h"), ("ZAPGATE_SANDBOX_READ_AFTER", "24h")];
    let z = server::zapgate(&s.zapgate, &work.join("send-only"), send_only)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (idle_rss, _) = z.proc.rss_kib();
    figs.push(Figure::new("zapgate idle RSS (embedded, after start-up)", idle_rss as f64 / 1024.0, "MiB"));
    let target = Target::setup(z.proc.addr).await?;
    let mut receipts = Receipts::new(&z.receipts);

    let cpu0 = z.proc.cpu_seconds();
    let accept =
        loadgen::closed_loop(z.proc.addr, s.connections, s.phase, StatusCode::ACCEPTED, target.sender(0)).await?;
    let server_cores = (z.proc.cpu_seconds() - cpu0) / accept.elapsed.as_secs_f64();
    eprintln!("accept: {:.0} msg/s", accept.rate());
    figs.push(
        Figure::new("API accept (202 after durable write), closed loop", accept.rate(), "msg/s")
            .against(&ceiling)
            .note(format!("{}; zapgate used {server_cores:.2} cores", latency_note(&accept))),
    );
    for (q, name) in [(0.5, "p50"), (0.99, "p99"), (0.999, "p99.9")] {
        figs.push(Figure::new(format!("API accept latency {name}"), accept.quantile_ms(q), "ms"));
    }
    let drained = receipts.wait_for(accept.ok, drain_timeout(s)).await?;
    let sat = receipts.summary(0..drained);
    figs.push(Figure::new("end-to-end accepted → provider, saturating, send-only", sat.rate, "msg/s").note(format!(
        "{} messages; latency p50 {:.0} ms, p99 {:.0} ms (backlog included)",
        sat.count, sat.p50, sat.p99
    )));

    // Light load: a fixed rate well under capacity; latency is the pipeline's own.
    let light_rate = if s.quick { 50.0 } else { 500.0 };
    let start = receipts.len();
    let light =
        loadgen::open_loop(z.proc.addr, light_rate, 8, s.phase, StatusCode::ACCEPTED, target.sender(1 << 30)).await?;
    let end = receipts.wait_for(start as u64 + light.ok, drain_timeout(s)).await?;
    let l = receipts.summary(start..end);
    figs.push(Figure::new(format!("end-to-end latency p50 at {light_rate:.0} msg/s"), l.p50, "ms"));
    figs.push(Figure::new(format!("end-to-end latency p99 at {light_rate:.0} msg/s"), l.p99, "ms"));
    let (_, peak) = z.proc.rss_kib();
    figs.push(Figure::new("zapgate peak RSS (embedded, send-only run)", peak as f64 / 1024.0, "MiB"));
    drop(z);

    // 3. Full loop: the sandbox reports delivered and read, which zapgate stores.
    let full = &[("ZAPGATE_SANDBOX_DELIVERED_AFTER", "50ms"), ("ZAPGATE_SANDBOX_READ_AFTER", "50ms")];
    let z = server::zapgate(&s.zapgate, &work.join("full"), full)?;
    let target = Target::setup(z.proc.addr).await?;
    let mut receipts = Receipts::new(&z.receipts);
    let loaded =
        loadgen::closed_loop(z.proc.addr, s.connections, s.phase, StatusCode::ACCEPTED, target.sender(0)).await?;
    let drained = receipts.wait_for(loaded.ok, drain_timeout(s)).await?;
    let f = receipts.summary(0..drained);
    figs.push(
        Figure::new("end-to-end accepted → provider, saturating, full loop", f.rate, "msg/s")
            .note(format!("accept {:.0} msg/s while statuses flow; no tenant webhooks yet", loaded.rate())),
    );
    let (_, peak) = z.proc.rss_kib();
    figs.push(Figure::new("zapgate peak RSS (embedded, full loop)", peak as f64 / 1024.0, "MiB"));
    drop(z);

    // 4. Full loop with a tenant webhook: every sent/delivered/read status is
    //    delivered, signed, to a local receiver (the hello-world process).
    let with_hooks = &[
        ("ZAPGATE_SANDBOX_DELIVERED_AFTER", "50ms"),
        ("ZAPGATE_SANDBOX_READ_AFTER", "50ms"),
        ("ZAPGATE_WEBHOOK_ALLOW_PRIVATE", "true"),
    ];
    let z = server::zapgate(&s.zapgate, &work.join("webhooks"), with_hooks)?;
    let target = Target::setup(z.proc.addr).await?;
    target.webhook(&format!("http://{}/hook", hello.addr)).await?;
    let hooks_before = hook_count(hello.addr).await?;
    let started = Instant::now();
    let loaded =
        loadgen::closed_loop(z.proc.addr, s.connections, s.phase, StatusCode::ACCEPTED, target.sender(0)).await?;
    let expected = loaded.ok * 3;
    let deadline = Instant::now() + drain_timeout(s);
    let mut delivered = 0;
    while Instant::now() < deadline {
        delivered = hook_count(hello.addr).await? - hooks_before;
        if delivered >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    figs.push(
        Figure::new("signed webhook delivery, full loop (3 statuses per message)", delivered as f64 / elapsed, "events/s")
            .against(&ceiling)
            .note(format!(
                "{delivered} of {expected} events delivered; accept {:.0} msg/s while sending, receiving statuses and delivering webhooks",
                loaded.rate()
            )),
    );
    drop(z);
    drop(hello);
    let _ = std::fs::remove_dir_all(&work);
    Ok(figs)
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
