//! The built-in HTTP load generator: HTTP/1.1 keep-alive connections driven
//! directly through hyper (no pooling layer in the way), closed-loop (N
//! connections as fast as the server answers) or open-loop (a target rate;
//! latency is measured from each request's *intended* start, so a stalled
//! server cannot hide its stall — no coordinated omission).

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Builds request number `i`.
pub type MakeRequest = Arc<dyn Fn(u64) -> Request<Full<Bytes>> + Send + Sync>;

pub struct LoadResult {
    pub ok: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Latency in microseconds.
    pub hist: Histogram<u64>,
    /// CPU seconds the generator itself used (to show it was not the bottleneck).
    pub loadgen_cpu: f64,
}

impl LoadResult {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
    /// Share of one core the generator used.
    pub fn loadgen_cores(&self) -> f64 {
        self.loadgen_cpu / self.elapsed.as_secs_f64()
    }
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds")
}

/// Builds a request with a JSON body and optional bearer token.
pub fn request(
    method: Method,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(path).header("host", addr.to_string());
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    b.body(Full::new(Bytes::from(body.unwrap_or_default()))).expect("valid request")
}

struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

async fn connect(addr: SocketAddr) -> anyhow::Result<Conn> {
    let stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(Conn { sender })
}

async fn send(conn: &mut Conn, req: Request<Full<Bytes>>) -> anyhow::Result<StatusCode> {
    conn.sender.ready().await?;
    let res = conn.sender.send_request(req).await?;
    let status = res.status();
    res.into_body().collect().await?;
    Ok(status)
}

/// `conns` connections, each sending the next request as soon as the last
/// answered, for `duration`.
pub async fn closed_loop(
    addr: SocketAddr,
    conns: usize,
    duration: Duration,
    expect: StatusCode,
    make: MakeRequest,
) -> anyhow::Result<LoadResult> {
    let counter = Arc::new(AtomicU64::new(0));
    let cpu0 = process_cpu_seconds();
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(conns);
    for _ in 0..conns {
        let (counter, make) = (counter.clone(), make.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let (mut ok, mut errors) = (0u64, 0u64);
            let mut conn = connect(addr).await?;
            while Instant::now() < deadline {
                let req = make(counter.fetch_add(1, Ordering::Relaxed));
                let t = Instant::now();
                match send(&mut conn, req).await {
                    Ok(s) if s == expect => {
                        ok += 1;
                        hist.record(t.elapsed().as_micros().max(1) as u64).ok();
                    }
                    Ok(_) => errors += 1,
                    Err(_) => {
                        errors += 1;
                        conn = connect(addr).await?;
                    }
                }
            }
            anyhow::Ok((ok, errors, hist))
        }));
    }
    collect(tasks, start, cpu0).await
}

/// Requests at `rate` per second spread over `conns` connections; latency
/// counts from each request's intended start.
pub async fn open_loop(
    addr: SocketAddr,
    rate: f64,
    conns: usize,
    duration: Duration,
    expect: StatusCode,
    make: MakeRequest,
) -> anyhow::Result<LoadResult> {
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let cpu0 = process_cpu_seconds();
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(conns);
    for w in 0..conns as u64 {
        let make = make.clone();
        let conns = conns as u64;
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let (mut ok, mut errors) = (0u64, 0u64);
            let mut conn = connect(addr).await?;
            let mut i = w;
            while i < total {
                let intended = start + interval * i as u32;
                tokio::time::sleep_until(intended.into()).await;
                match send(&mut conn, make(i)).await {
                    Ok(s) if s == expect => {
                        ok += 1;
                        hist.record(intended.elapsed().as_micros().max(1) as u64).ok();
                    }
                    Ok(_) => errors += 1,
                    Err(_) => {
                        errors += 1;
                        conn = connect(addr).await?;
                    }
                }
                i += conns;
            }
            anyhow::Ok((ok, errors, hist))
        }));
    }
    collect(tasks, start, cpu0).await
}

type Task = tokio::task::JoinHandle<anyhow::Result<(u64, u64, Histogram<u64>)>>;

async fn collect(tasks: Vec<Task>, start: Instant, cpu0: f64) -> anyhow::Result<LoadResult> {
    let mut out = LoadResult { ok: 0, errors: 0, elapsed: Duration::ZERO, hist: histogram(), loadgen_cpu: 0.0 };
    for t in tasks {
        let (ok, errors, hist) = t.await??;
        out.ok += ok;
        out.errors += errors;
        out.hist.add(&hist).ok();
    }
    out.elapsed = start.elapsed();
    out.loadgen_cpu = process_cpu_seconds() - cpu0;
    Ok(out)
}

/// User + system CPU seconds of this process (Linux `/proc/self/stat`, 100 Hz ticks).
pub fn process_cpu_seconds() -> f64 {
    proc_cpu_seconds("self")
}

pub fn proc_cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the parenthesised command name; utime and stime are 14th and 15th overall.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds of every process whose name (`/proc/PID/comm`) is `comm`,
/// including children they reaped (so backends that exited still count).
pub fn comm_cpu_seconds(comm: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0.0 };
    let mut total = 0.0;
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|p| p.bytes().all(|b| b.is_ascii_digit())) else { continue };
        if std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm) {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
            let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            total += (ticks(11) + ticks(12) + ticks(13) + ticks(14)) / 100.0;
        }
    }
    total
}

/// Busy CPU seconds of the whole machine so far (`/proc/stat`: all but idle and iowait).
pub fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else { return 0.0 };
    let f: Vec<f64> = cpu.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    let busy: f64 = f.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum();
    busy / 100.0
}

/// CPU used over a phase, per process group, in cores.
pub struct CpuMeter {
    start: std::time::Instant,
    machine: f64,
    postgres: f64,
    redis: f64,
}

impl CpuMeter {
    pub fn start() -> Self {
        Self {
            start: Instant::now(),
            machine: machine_busy_seconds(),
            postgres: comm_cpu_seconds("postgres"),
            redis: comm_cpu_seconds("redis-server"),
        }
    }

    /// "machine 1.95 of 2 cores busy; PostgreSQL 0.80 cores; Redis 0.05 cores"
    pub fn describe(&self, services: bool) -> String {
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let mut out = format!("machine {:.2} of {cores} cores busy", (machine_busy_seconds() - self.machine) / secs);
        if services {
            out += &format!(
                "; PostgreSQL (all backends) {:.2} cores; Redis {:.2} cores",
                (comm_cpu_seconds("postgres") - self.postgres) / secs,
                (comm_cpu_seconds("redis-server") - self.redis) / secs
            );
        }
        out
    }
}
