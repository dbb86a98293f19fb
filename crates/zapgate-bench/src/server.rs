//! Processes under test: the hello-world ceiling server and `zapgate serve`,
//! each started as its own process, as they would run in production.

use anyhow::{Context, bail};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Proc {
    pub addr: SocketAddr,
    child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// (current RSS, peak RSS) in KiB.
    pub fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    pub fn cpu_seconds(&self) -> f64 {
        crate::loadgen::proc_cpu_seconds(&self.pid().to_string())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd` and waits for the line naming its address (`listening on http://ADDR`).
fn start(mut cmd: Command) -> anyhow::Result<Proc> {
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent && let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_owned());
                sent = true;
            }
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(a) => a.parse().context("parsing the listen address")?,
        Err(_) => {
            let _ = child.kill();
            bail!("{cmd:?} did not report its address");
        }
    };
    Ok(Proc { addr, child })
}

pub fn hello(bench_exe: &Path) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(bench_exe);
    cmd.arg("hello");
    start(cmd)
}

pub struct Zapgate {
    pub proc: Proc,
    pub receipts: PathBuf,
}

pub const ADMIN: &str = "bench-admin-token-0123456789";

/// `zapgate serve` on a fresh data directory under `dir`.
pub fn zapgate(exe: &Path, dir: &Path, env: &[(&str, &str)]) -> anyhow::Result<Zapgate> {
    let receipts = dir.join("receipts.jsonl");
    let mut cmd = Command::new(exe);
    cmd.arg("serve")
        .env("ZAPGATE_LISTEN", "127.0.0.1:0")
        .env("ZAPGATE_DATA_DIR", dir.join("data"))
        .env("ZAPGATE_ADMIN_TOKEN", ADMIN)
        .env("ZAPGATE_TENANT_RATE_LIMIT", "0")
        .env("ZAPGATE_SANDBOX_RECEIPTS_FILE", &receipts)
        .env("RUST_LOG", "warn,zapgate_server::app=info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Ok(Zapgate { proc: start(cmd)?, receipts })
}

/// The hello-world server: a bare axum handler, the HTTP ceiling. It also
/// serves as the tenant's webhook receiver (`POST /hook`, counted at `/count`).
pub async fn run_hello() -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let hooks = Arc::new(AtomicU64::new(0));
    let (h1, h2) = (hooks.clone(), hooks);
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "hello" }))
        .route(
            "/hook",
            axum::routing::post(move || async move {
                h1.fetch_add(1, Ordering::Relaxed);
                axum::http::StatusCode::NO_CONTENT
            }),
        )
        .route("/count", axum::routing::get(move || async move { h2.load(Ordering::Relaxed).to_string() }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    eprintln!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
