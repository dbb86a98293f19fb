//! Test harness: runs the real `zapgate serve` binary on a random port with
//! its own data directory, and talks HTTP to it (the zero2prod `spawn_app`
//! idea, with a real process so tests can kill it).
//!
//! With `ZAPGATE_TEST_DATABASE_URL` set (`scripts/test.sh` sets it for its
//! distributed pass, from `scripts/services.sh`), every server runs against
//! PostgreSQL: each new data directory gets a fresh database, created through
//! that URL, and restarts on the same directory reuse it. With
//! `ZAPGATE_TEST_BROKER=1` as well, work goes through RabbitMQ (see [`brokered`]).

#![allow(dead_code)]

use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const ADMIN: &str = "test-admin-token-0123456789";

/// A PostgreSQL URL whose role may create databases; set, it makes every
/// test server distributed (see the module docs).
pub const TEST_DATABASE_URL: &str = "ZAPGATE_TEST_DATABASE_URL";
/// In a server's temp dir: the name of its database, so restarts reuse it.
const DATABASE_NAME_FILE: &str = "postgres-database";

pub struct Server {
    pub base: String,
    pub dir: Arc<tempfile::TempDir>,
    pub http: reqwest::Client,
    /// The PostgreSQL database this server uses (distributed mode only).
    pub database: Option<TestDatabase>,
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
}

#[derive(Clone, Debug)]
pub struct TestDatabase {
    pub name: String,
    /// What the server gets as `ZAPGATE_DATABASE_URL`.
    pub url: String,
}

/// True when the tests run against the distributed backends (PostgreSQL);
/// for skipping a behaviour that only the embedded mode has.
pub fn distributed() -> bool {
    admin_database_url().is_some()
}

/// With `ZAPGATE_TEST_BROKER=1` (and a database), servers route work
/// through the RabbitMQ at `ZAPGATE_TEST_AMQP_URL`: relay → shards → workers.
pub fn brokered() -> bool {
    broker_url().is_some()
}

/// Work shards per test topology in the broker pass (few: each is a quorum queue).
const BROKER_SHARDS: u16 = 2;
/// Wait tiers of the broker pass: short, so retries through them keep the
/// tests quick (`ZAPGATE_AMQP_WAIT_TIERS`, and deleted with the topology).
const BROKER_TIERS: [(&str, u64); 3] = [("250ms", 250), ("1s", 1_000), ("5s", 5_000)];

/// The broker pass's work shard of an instance (None outside it): each
/// shard is consumed by one worker, so a test that needs every worker busy
/// spreads its instances over the shards.
pub fn broker_shard(instance: &str) -> Option<u16> {
    brokered().then(|| zapgate_backends::amqp::shard_of(instance, BROKER_SHARDS))
}

fn broker_url() -> Option<String> {
    admin_database_url()?;
    if std::env::var("ZAPGATE_TEST_BROKER").ok().as_deref() != Some("1") {
        return None;
    }
    Some(
        std::env::var("ZAPGATE_TEST_AMQP_URL")
            .ok()
            .filter(|v| !v.is_empty())
            .expect("ZAPGATE_TEST_BROKER=1 needs ZAPGATE_TEST_AMQP_URL (scripts/services.sh exports it)"),
    )
}

/// The RabbitMQ of the broker pass (None outside it).
pub fn test_amqp_url() -> Option<String> {
    broker_url()
}

/// The `host:port` an AMQP URL names, and the address it resolves to (for
/// putting a proxy in between).
pub async fn amqp_upstream(url: &str) -> (String, std::net::SocketAddr) {
    let rest = url.split_once("://").expect("scheme").1;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let authority = rest.split('/').next().unwrap().to_owned();
    let addr = tokio::net::lookup_host(authority.as_str()).await.expect("resolvable").next().expect("an address");
    (authority, addr)
}

fn admin_database_url() -> Option<String> {
    std::env::var(TEST_DATABASE_URL).ok().filter(|v| !v.trim().is_empty())
}

/// The database of the data directory `dir`: created on first use, then
/// remembered in the directory. None in embedded mode.
async fn database_for(dir: &Path) -> Option<TestDatabase> {
    let admin = admin_database_url()?;
    let file = dir.join(DATABASE_NAME_FILE);
    let name = match std::fs::read_to_string(&file) {
        Ok(name) => name.trim().to_owned(),
        Err(_) => {
            let name = fresh_database_name();
            if let Err(e) = pg_admin(&admin, format!("CREATE DATABASE \"{name}\""), Duration::from_secs(30)).await {
                panic!(
                    "{TEST_DATABASE_URL} is set, but creating database {name} through it failed: {e}\n\
                     (is PostgreSQL up? scripts/services.sh starts it)"
                );
            }
            std::fs::write(&file, &name).expect("write the database name file");
            name
        }
    };
    Some(TestDatabase { url: with_database(&admin, &name), name })
}

/// `zg_t_` and 16 random hex digits.
fn fresh_database_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u64(SEQ.fetch_add(1, Ordering::Relaxed));
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    format!("zg_t_{:016x}", h.finish())
}

/// `url` with its database (the path) replaced by `name`; the query string stays.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority = base.find("://").map_or(0, |i| i + 3);
    let path = base[authority..].find('/').map_or(base.len(), |i| authority + i);
    match query {
        Some(query) => format!("{}/{name}?{query}", &base[..path]),
        None => format!("{}/{name}", &base[..path]),
    }
}

/// Runs one statement on its own connection to `admin_url`.
async fn pg_admin(admin_url: &str, sql: String, timeout: Duration) -> Result<(), String> {
    use sqlx::Connection;
    let work = async {
        let mut conn = sqlx::PgConnection::connect(admin_url).await.map_err(|e| format!("connecting: {e}"))?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await.map_err(|e| e.to_string())?;
        let _ = conn.close().await;
        Ok(())
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| format!("timed out after {timeout:?}"))?
}

/// Best effort, from synchronous code (`Drop`), inside or outside a runtime.
fn drop_database(name: &str) {
    let Some(admin) = admin_database_url() else { return };
    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
        rt.block_on(pg_admin(&admin, sql, Duration::from_secs(10))).ok()
    })
    .join();
}

/// The broker pass's topology of one test (prefix = its database): quorum
/// queues left behind by hundreds of tests weigh on a 2-core RabbitMQ. Best
/// effort and bounded, from `Drop`.
fn drop_broker_topology(prefix: &str) {
    let Some(url) = broker_url() else { return };
    let topology = zapgate_backends::amqp::TopologyConfig {
        prefix: prefix.to_owned(),
        shards: BROKER_SHARDS,
        tiers: BROKER_TIERS
            .iter()
            .map(|(name, ms)| zapgate_backends::amqp::Tier::new(*name, Duration::from_millis(*ms)))
            .collect(),
        ..Default::default()
    };
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
        // The timer is made inside block_on: it needs the runtime.
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), topology.delete(&url)).await.ok() })
    })
    .join();
}

/// Settings every test server gets; tests add or override per case.
fn base_env(dir: &Path) -> Vec<(String, String)> {
    [
        ("ZAPGATE_LISTEN", "127.0.0.1:0".to_owned()),
        ("ZAPGATE_DATA_DIR", dir.join("data").display().to_string()),
        ("ZAPGATE_ADMIN_TOKEN", ADMIN.to_owned()),
        ("ZAPGATE_SANDBOX_RECEIPTS_FILE", dir.join("receipts.jsonl").display().to_string()),
        ("ZAPGATE_SANDBOX_DELIVERED_AFTER", "50ms".to_owned()),
        ("ZAPGATE_SANDBOX_READ_AFTER", "50ms".to_owned()),
        ("ZAPGATE_MESSAGE_RETRY_BASE", "50ms".to_owned()),
        ("ZAPGATE_MESSAGE_RETRY_MAX", "200ms".to_owned()),
        // ZAPGATE_TEST_LOG=debug,… shows more of a failing test's server.
        ("RUST_LOG", std::env::var("ZAPGATE_TEST_LOG").unwrap_or_else(|_| "warn,zapgate_server::app=info".to_owned())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

impl Server {
    pub async fn start(env: &[(&str, &str)]) -> Server {
        Self::start_in(Arc::new(tempfile::tempdir().expect("temp dir")), env).await
    }

    /// Starts a server on `dir`; with the same `dir` again (a restart), on the same data.
    pub async fn start_in(dir: Arc<tempfile::TempDir>, env: &[(&str, &str)]) -> Server {
        Self::start_role("serve", dir, env).await
    }

    /// Starts `zapgate <role>` (serve, api, worker) on `dir`: processes started
    /// on one `dir` share its database (distributed mode) and receipts file.
    pub async fn start_role(role: &str, dir: Arc<tempfile::TempDir>, env: &[(&str, &str)]) -> Server {
        // A test that sets the database itself gets no fresh one.
        let own_database = env.iter().any(|(k, _)| *k == "ZAPGATE_DATABASE_URL");
        let database = if own_database { None } else { database_for(dir.path()).await };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_zapgate"));
        cmd.arg(role).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        for (k, v) in base_env(dir.path()) {
            cmd.env(k, v);
        }
        if let Some(db) = &database {
            cmd.env("ZAPGATE_DATABASE_URL", &db.url);
            // Tests run several processes at once against one server: few connections each.
            cmd.env("ZAPGATE_DATABASE_POOL_SIZE", "4");
            // Distributed servers share limits and locks through Redis when the pass has one.
            if let Some(redis) = std::env::var("ZAPGATE_TEST_REDIS_URL").ok().filter(|v| !v.is_empty()) {
                cmd.env("ZAPGATE_REDIS_URL", redis);
            }
            // The broker pass: work flows through RabbitMQ, under a topology of
            // this database's own (processes on one `dir` share it).
            if let Some(amqp) = broker_url() {
                cmd.env("ZAPGATE_AMQP_URL", amqp);
                cmd.env("ZAPGATE_AMQP_PREFIX", &db.name);
                cmd.env("ZAPGATE_AMQP_SHARDS", BROKER_SHARDS.to_string());
                let tiers: Vec<&str> = BROKER_TIERS.iter().map(|(name, _)| *name).collect();
                cmd.env("ZAPGATE_AMQP_WAIT_TIERS", tiers.join(","));
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn zapgate");
        let stderr = child.stderr.take().expect("stderr piped");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or_default().to_owned();
                    let _ = tx.send(addr);
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60))).await.unwrap() {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("zapgate did not start; stderr:\n{}", logs.lock().unwrap().join("\n"));
            }
        };
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        Server { base: format!("http://{addr}"), dir, http, database, child, logs }
    }

    /// In the broker pass, `n` `zapgate relay` processes on `dir` (work reaches
    /// workers only through a relay); none otherwise.
    pub async fn start_relays(n: usize, dir: Arc<tempfile::TempDir>, env: &[(&str, &str)]) -> Vec<Server> {
        let mut relays = Vec::new();
        if brokered() {
            for _ in 0..n {
                relays.push(Server::start_role("relay", dir.clone(), env).await);
            }
        }
        relays
    }

    /// Posts messages to one chat until the API refuses with 503 (its queue
    /// is full), checking the refusal's `Retry-After`; the accepted ids.
    pub async fn flood_until_503(&self, token: &str, instance: &str) -> Vec<String> {
        let mut accepted = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.post(token, "/v1/messages", &text(instance, "+5511999990000", "flood")).await;
            match r.status().as_u16() {
                202 => accepted.push(r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()),
                503 => {
                    assert_eq!(r.headers()["retry-after"], "5");
                    return accepted;
                }
                other => panic!("unexpected {other}: {}", r.text().await.unwrap()),
            }
            assert!(Instant::now() < deadline, "the queue never reported full ({} accepted)", accepted.len());
            // The depth is measured about every second.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// After a fault: waits until every accepted `(token, message id)` is
    /// sent (or later), asserting that the fault failed, dead-lettered or
    /// delayed none and spent no attempt. Returns how many were requeued (in
    /// flight at the fault) and how often the provider saw each message id.
    pub async fn settled_after_fault(
        &self,
        accepted: &[(String, String)],
        fault: &str,
    ) -> (usize, std::collections::HashMap<String, usize>) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut requeued = 0;
        for (token, id) in accepted {
            let m = loop {
                let m = self.message(token, id).await;
                if ["sent", "delivered", "read"].contains(&m["status"].as_str().unwrap()) {
                    break m;
                }
                assert!(Instant::now() < deadline, "message {id} stuck after {fault}: {m:#}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let h = m["history"].as_array().unwrap();
            assert!(
                !h.iter().any(|e| ["failed", "dead", "retry_wait"].contains(&e["status"].as_str().unwrap())),
                "{fault} must not count as a failure: {m:#}"
            );
            assert_eq!(m["attempts"], 0, "{fault} spent no attempt");
            requeued += h.iter().filter(|e| e["reason"].as_str().is_some_and(|r| r.starts_with("requeued"))).count();
        }
        let mut per_message = std::collections::HashMap::new();
        for r in self.receipts() {
            *per_message.entry(r["message_id"].as_str().unwrap().to_owned()).or_default() += 1;
        }
        (requeued, per_message)
    }

    /// Starts a fresh server process on the same data directory (and database).
    pub async fn restart(mut self, env: &[(&str, &str)]) -> Server {
        self.kill();
        let dir = self.dir.clone();
        drop(self);
        Server::start_in(dir, env).await
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a graceful exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        self.wait_exit(Duration::from_secs(40)).expect("zapgate exits after SIGTERM")
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    pub fn receipts_path(&self) -> PathBuf {
        self.dir.path().join("receipts.jsonl")
    }

    /// Every send the sandbox accepted, in order (across restarts).
    pub fn receipts(&self) -> Vec<Value> {
        match std::fs::read_to_string(self.receipts_path()) {
            // Only whole lines: a line another process is still appending
            // may be read in part.
            Ok(s) => s
                .split_inclusive('\n')
                .filter_map(|l| l.strip_suffix('\n'))
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_str(l).unwrap())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The sum of a metric's series in `/metrics` whose labels contain
    /// `labels` (e.g. `outcome="sent"`); 0 when it has none (or no answer).
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        let Ok(r) = self.http.get(self.url("/metrics")).send().await else { return 0.0 };
        let text = r.text().await.unwrap_or_default();
        text.lines()
            .filter(|l| l.split(['{', ' ']).next() == Some(name) && l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// `/health/ready` as `status/<backend>` (e.g. `degraded/down`); `?`
    /// for a field it lacks and `none` for a backend it does not use.
    pub async fn readiness(&self, backend: &str) -> String {
        let r = self.http.get(self.url("/health/ready")).send().await.unwrap();
        let v: Value = r.json().await.unwrap();
        format!("{}/{}", v["status"].as_str().unwrap_or("?"), v[backend].as_str().unwrap_or("none"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn post(&self, token: &str, path: &str, body: &Value) -> reqwest::Response {
        self.http.post(self.url(path)).bearer_auth(token).json(body).send().await.expect("request")
    }

    pub async fn get(&self, token: &str, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).bearer_auth(token).send().await.expect("request")
    }

    /// Creates a tenant; returns (tenant id, token).
    pub async fn tenant(&self, name: &str) -> (String, String) {
        let r = self.post(ADMIN, "/v1/tenants", &json!({ "name": name })).await;
        assert_eq!(r.status(), 201);
        let v: Value = r.json().await.unwrap();
        (v["tenant"]["id"].as_str().unwrap().to_owned(), v["token"]["token"].as_str().unwrap().to_owned())
    }

    pub async fn instance(&self, token: &str, body: Value) -> String {
        let r = self.post(token, "/v1/instances", &body).await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        let v: Value = r.json().await.unwrap();
        v["id"].as_str().unwrap().to_owned()
    }

    /// A tenant with one sandbox instance: (token, instance id).
    pub async fn tenant_with_instance(&self, name: &str, rate: u32) -> (String, String) {
        let (_, token) = self.tenant(name).await;
        let ins = self.instance(&token, json!({ "name": "main", "rate_limit_per_second": rate })).await;
        (token, ins)
    }

    /// Sends a text; returns the message id (panics unless 202).
    pub async fn send_text(&self, token: &str, instance: &str, to: &str, body: &str) -> String {
        let r = self.post(token, "/v1/messages", &text(instance, to, body)).await;
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
        let v: Value = r.json().await.unwrap();
        v["id"].as_str().unwrap().to_owned()
    }

    pub async fn message(&self, token: &str, id: &str) -> Value {
        let r = self.get(token, &format!("/v1/messages/{id}")).await;
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    /// Polls a message until its status is one of `want`.
    pub async fn wait_status(&self, token: &str, id: &str, want: &[&str], timeout: Duration) -> Value {
        let end = Instant::now() + timeout;
        loop {
            let m = self.message(token, id).await;
            if want.contains(&m["status"].as_str().unwrap()) {
                return m;
            }
            if Instant::now() > end {
                panic!("message {id} never reached {want:?}: {m:#}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what the server said (nextest prints it with the failure).
        if std::thread::panicking() {
            eprintln!("--- zapgate {} stderr ---\n{}", self.base, self.logs());
        }
        // The last holder of the data directory also drops its database
        // (`restart` holds the directory across this drop).
        if let Some(db) = &self.database
            && Arc::strong_count(&self.dir) == 1
        {
            drop_database(&db.name);
            drop_broker_topology(&db.name);
        }
    }
}

pub fn text(instance: &str, to: &str, body: &str) -> Value {
    json!({ "instance_id": instance, "to": to, "type": "text", "text": { "body": body } })
}

pub fn statuses(history: &Value) -> Vec<String> {
    history.as_array().unwrap().iter().map(|e| e["status"].as_str().unwrap().to_owned()).collect()
}

/// Scale knob for the big tests: `ZAPGATE_TEST_SCALE=0.1` runs a tenth.
pub fn scaled(n: usize) -> usize {
    let f: f64 = std::env::var("ZAPGATE_TEST_SCALE").ok().and_then(|v| v.parse().ok()).unwrap_or(1.0);
    ((n as f64 * f).round() as usize).max(1)
}

/// A provider under test: `zapgate-sim` in this process, a server allowed
/// to reach it (it is on loopback), one tenant and one instance of
/// `provider` whose config `config` builds from the sim's address.
pub struct SimProvider {
    pub server: Server,
    pub sim: std::sync::Arc<zapgate_sim::Sim>,
    pub token: String,
    pub instance: String,
}

pub async fn sim_provider(
    provider: &str,
    config: impl FnOnce(std::net::SocketAddr) -> Value,
    env: &[(&str, &str)],
) -> SimProvider {
    let (addr, sim) = zapgate_sim::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut env = env.to_vec();
    env.push(("ZAPGATE_WEBHOOK_ALLOW_PRIVATE", "true"));
    let server = Server::start(&env).await;
    let (_, token) = server.tenant("acme").await;
    let instance =
        server.instance(&token, json!({"name": provider, "provider": provider, "config": config(addr)})).await;
    SimProvider { server, sim, token, instance }
}

/// Waits (up to 20 s) until each of `servers` reads `want` (e.g.
/// `degraded/down`) in `/health/ready` for `backend`.
pub async fn wait_readiness(servers: &[&Server], backend: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for server in servers {
        while server.readiness(backend).await != want {
            assert!(
                Instant::now() < deadline,
                "{backend} readiness never became {want}: {}",
                server.readiness(backend).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A tenant with an instance paced at `rate` for each of `names`, and a task
/// accepting `per_tenant` messages for each of them concurrently (see
/// [`accept_all`]); the task and how many messages it sends in all.
pub async fn send_in_background(
    api: &Arc<Server>,
    names: &[&str],
    rate: u32,
    per_tenant: usize,
) -> (tokio::task::JoinHandle<Vec<(String, String)>>, usize) {
    let mut tenants = Vec::new();
    for name in names {
        tenants.push(api.tenant_with_instance(name, rate).await);
    }
    let total = per_tenant * tenants.len();
    let api = api.clone();
    (tokio::spawn(async move { accept_all(&api, &tenants, per_tenant).await }), total)
}

/// Accepts `per_tenant` messages for each of `tenants` concurrently; their ids.
pub async fn accept_all(api: &Arc<Server>, tenants: &[(String, String)], per_tenant: usize) -> Vec<(String, String)> {
    let mut tasks = Vec::new();
    for (t, (token, ins)) in tenants.iter().enumerate() {
        let (api, token, ins) = (api.clone(), token.clone(), ins.clone());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in 0..per_tenant {
                ids.push((token.clone(), api.send_text(&token, &ins, &format!("+55{}1{n:09}", 11 + t), "x").await));
            }
            ids
        }));
    }
    let mut accepted = Vec::new();
    for task in tasks {
        accepted.extend(task.await.unwrap());
    }
    accepted
}

/// Every accepted message ends sent (or later) with no attempt spent, and reached the
/// provider exactly once (a fault of RabbitMQ or Redis never costs a
/// duplicate: a copy RabbitMQ redelivers loses the worker's compare-and-set).
pub async fn assert_each_sent_once(api: &Server, accepted: &[(String, String)]) {
    let (_, per_message) = api.settled_after_fault(accepted, "the fault").await;
    for (_, id) in accepted {
        assert_eq!(per_message.get(id), Some(&1), "message {id} reached the provider {:?} times", per_message.get(id));
    }
    assert_eq!(per_message.len(), accepted.len(), "only accepted messages reach the provider");
}

pub async fn wait_receipts(api: &Server, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while api.receipts().len() < n {
        assert!(Instant::now() < deadline, "only {} of {n} sends happened", api.receipts().len());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A WAHA webhook body and its `X-Webhook-Hmac` (HMAC-SHA512 with `key`).
pub fn waha_signed(key: &str, body: &Value) -> (Vec<u8>, String) {
    let bytes = serde_json::to_vec(body).unwrap();
    let mut mac = Hmac::<sha2::Sha512>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(&bytes);
    (bytes, hex::encode(mac.finalize().into_bytes()))
}

/// Posts a WAHA webhook signed with `key`.
pub async fn post_waha(s: &Server, url: &str, key: &str, body: &Value) -> reqwest::Response {
    let (bytes, sig) = waha_signed(key, body);
    s.http
        .post(url)
        .header("content-type", "application/json")
        .header("x-webhook-hmac", sig)
        .header("x-webhook-hmac-algorithm", "sha512")
        .body(bytes)
        .send()
        .await
        .unwrap()
}

/// Sends every case of `zapgate-providers/fixtures/{kind}/send_requests.json`
/// (each message kind the provider takes, from its docs) through zapgate to
/// the simulated provider and checks that it is sent and that the provider
/// got exactly the fixture's body at `path(route)`. Cloud API cases are
/// Meta's own request examples: the message is their content, sent to their
/// `to`, at the number's messages endpoint.
pub async fn send_fixture_cases(p: &SimProvider, kind: &str, path: impl Fn(&str) -> String) {
    let file = format!("{}/../zapgate-providers/fixtures/{kind}/send_requests.json", env!("CARGO_MANIFEST_DIR"));
    let fixtures: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    for case in fixtures["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (mut body, to, reply_to) = match case.get("content") {
            Some(content) => (content.clone(), case["to"].clone(), case.get("reply_to").cloned()),
            None => {
                let mut content = case["expected"].clone();
                let o = content.as_object_mut().unwrap();
                let to = format!("+{}", o["to"].as_str().unwrap());
                for k in ["messaging_product", "recipient_type", "to"] {
                    o.remove(k);
                }
                let reply_to = o.remove("context").map(|c| c["message_id"].clone());
                (content, json!(to), reply_to)
            }
        };
        body["instance_id"] = json!(p.instance);
        body["to"] = to;
        if let Some(r) = reply_to {
            body["reply_to"] = r;
        }
        let r = p.server.post(&p.token, "/v1/messages", &body).await;
        assert_eq!(r.status(), 202, "{name}: {}", r.text().await.unwrap());
        let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
        p.server.wait_status(&p.token, &id, &["sent", "delivered", "read"], Duration::from_secs(20)).await;
        let route = path(case["route"].as_str().unwrap_or_default());
        let got = p
            .sim
            .received()
            .into_iter()
            .rev()
            .find(|r| r.path == route)
            .unwrap_or_else(|| panic!("{name}: nothing at {route}"));
        assert_eq!(got.body, case["expected"], "{name}");
    }
}
