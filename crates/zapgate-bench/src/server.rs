//! Processes under test: the hello-world ceiling server and zapgate (`serve`,
//! or `api` + `worker`s apart), each started as its own process, as they would
//! run in production.

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

pub const ADMIN: &str = "bench-admin-token-0123456789";

/// Settings every zapgate process of a run gets; a deployment adds its own.
fn zapgate_command(exe: &Path, role: &str, dir: &Path, receipts: &Path) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg(role)
        .env("ZAPGATE_LISTEN", "127.0.0.1:0")
        .env("ZAPGATE_DATA_DIR", dir.join("data"))
        .env("ZAPGATE_ADMIN_TOKEN", ADMIN)
        .env("ZAPGATE_TENANT_RATE_LIMIT", "0")
        .env("ZAPGATE_SANDBOX_RECEIPTS_FILE", receipts)
        .env("RUST_LOG", "warn,zapgate_server::app=info");
    cmd
}

/// Which zapgate processes a deployment runs.
#[derive(Clone, Copy, Debug)]
pub enum Layout {
    /// One `zapgate serve`: every role in one process.
    Serve,
    /// One `zapgate api` and this many `zapgate worker` processes (PostgreSQL only).
    Apart { workers: usize },
}

/// The zapgate processes of one scenario, sharing a data directory, a receipts
/// file and (distributed) a database. The first process serves the API.
pub struct Deployment {
    pub procs: Vec<Proc>,
    pub receipts: PathBuf,
}

impl Deployment {
    /// Starts `layout` on a fresh data directory `dir`; `env` goes to every process.
    pub fn start(exe: &Path, layout: Layout, dir: &Path, env: &[(String, String)]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let receipts = dir.join("receipts.jsonl");
        let roles: Vec<&str> = match layout {
            Layout::Serve => vec!["serve"],
            Layout::Apart { workers } => std::iter::once("api").chain(std::iter::repeat_n("worker", workers)).collect(),
        };
        let mut procs = Vec::new();
        for role in roles {
            let mut cmd = zapgate_command(exe, role, dir, &receipts);
            cmd.envs(env.iter().map(|(k, v)| (k, v)));
            procs.push(start(cmd)?);
        }
        Ok(Self { procs, receipts })
    }

    /// Address of the API.
    pub fn addr(&self) -> SocketAddr {
        self.procs[0].addr
    }

    /// CPU seconds used by all its processes.
    pub fn cpu_seconds(&self) -> f64 {
        self.procs.iter().map(Proc::cpu_seconds).sum()
    }

    /// (current RSS, peak RSS) in KiB, summed over its processes.
    pub fn rss_kib(&self) -> (u64, u64) {
        self.procs.iter().map(Proc::rss_kib).fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
    }
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
