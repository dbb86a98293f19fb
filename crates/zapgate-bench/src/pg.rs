//! PostgreSQL for the distributed mode: the run's own databases (created
//! fresh, dropped at the end), the raw commit ceilings, and what the server
//! did while zapgate ran (write transactions, WAL, what its backends waited on).

use crate::loadgen::{self, histogram};
use anyhow::Context;
use hdrhistogram::Histogram;
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Creates and drops the run's databases through a URL whose role may `CREATE DATABASE`.
pub struct Admin {
    url: String,
    run: String,
    created: Mutex<Vec<String>>,
    /// Keep the scenarios' databases (for looking into a run afterwards).
    keep: bool,
}

impl Admin {
    pub async fn connect(url: &str, keep: bool) -> anyhow::Result<Self> {
        let conn = connect(url).await?;
        let _ = conn.close().await;
        Ok(Self {
            url: url.to_owned(),
            run: format!("zg_bench_{}", random_hex()),
            created: Mutex::new(Vec::new()),
            keep,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether the scenarios' databases are to be kept (`--keep-databases`).
    pub fn keep(&self) -> bool {
        self.keep
    }

    /// `zg_bench_<12 hex digits>`: every database of this run starts with it.
    pub fn run(&self) -> &str {
        &self.run
    }

    /// `SHOW server_version`.
    pub async fn version(&self) -> anyhow::Result<String> {
        let mut conn = connect(&self.url).await?;
        let v: String = sqlx::query_scalar("SHOW server_version").fetch_one(&mut conn).await?;
        let _ = conn.close().await;
        Ok(v)
    }

    /// A fresh, empty database `zg_bench_<run>_<what>`; returns (name, URL).
    pub async fn create_database(&self, what: &str) -> anyhow::Result<(String, String)> {
        let name = format!("{}_{what}", self.run);
        self.exec(format!("CREATE DATABASE \"{name}\"")).await.with_context(|| format!("creating database {name}"))?;
        self.created.lock().expect("lock").push(name.clone());
        let url = with_database(&self.url, &name);
        Ok((name, url))
    }

    /// Drops every database this run created (best effort: warns on failure).
    pub async fn drop_all(&self) {
        let names = std::mem::take(&mut *self.created.lock().expect("lock"));
        if self.keep && !names.is_empty() {
            eprintln!("kept databases (--keep-databases): {}", names.join(", "));
            return;
        }
        for name in names {
            self.drop_now(&name).await;
        }
    }

    /// Drops one database of this run now (best effort: warns on failure).
    pub async fn drop_database(&self, name: &str) {
        self.created.lock().expect("lock").retain(|n| n != name);
        self.drop_now(name).await;
    }

    /// Plain `DROP DATABASE` first: it waits a few seconds for closing
    /// connections and stops an autovacuum worker there, which `WITH (FORCE)`
    /// may not (a non-superuser cannot terminate it); then `FORCE` for
    /// connections left open. A few tries, then a warning naming the database.
    async fn drop_now(&self, name: &str) {
        let mut last = None;
        for attempt in 0..4 {
            let force = if attempt % 2 == 1 { " WITH (FORCE)" } else { "" };
            match self.exec(format!("DROP DATABASE IF EXISTS \"{name}\"{force}")).await {
                Ok(()) => return,
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if let Some(e) = last {
            eprintln!("warning: could not drop database {name} (drop it by hand): {e:#}");
        }
    }

    async fn exec(&self, sql: String) -> anyhow::Result<()> {
        let mut conn = connect(&self.url).await?;
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn).await?;
        let _ = conn.close().await;
        Ok(())
    }

    /// Cluster-wide counters, read now (not through the delayed statistics views).
    pub async fn counters(&self) -> anyhow::Result<Counters> {
        let mut conn = connect(&self.url).await?;
        // The next transaction id (taking none itself) and the WAL position.
        let row = sqlx::query(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xid, \
             pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint AS wal",
        )
        .fetch_one(&mut conn)
        .await?;
        let _ = conn.close().await;
        Ok(Counters { xids: row.try_get("xid")?, wal_bytes: row.try_get("wal")? })
    }
}

/// Write transactions (transaction ids handed out) and WAL bytes so far, for
/// the whole cluster: deltas are the run's own only while nothing else writes.
#[derive(Clone, Copy, Debug)]
pub struct Counters {
    pub xids: i64,
    pub wal_bytes: i64,
}

impl Counters {
    pub fn since(self, before: Counters) -> Counters {
        Counters { xids: self.xids - before.xids, wal_bytes: self.wal_bytes - before.wal_bytes }
    }
}

/// Provider statuses zapgate stored as not applied (overtaken by a later
/// status of the same message): they get no webhook. Reads zapgate's schema.
pub async fn not_applied_statuses(url: &str) -> anyhow::Result<u64> {
    let mut conn = connect(url).await?;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE detail::jsonb ->> 'applied' = 'false'")
        .fetch_one(&mut conn)
        .await?;
    let _ = conn.close().await;
    Ok(n as u64)
}

async fn connect(url: &str) -> anyhow::Result<PgConnection> {
    let work = PgConnection::connect(url);
    match tokio::time::timeout(Duration::from_secs(15), work).await {
        Ok(conn) => conn.context("connecting to PostgreSQL"),
        Err(_) => anyhow::bail!("connecting to PostgreSQL timed out after 15 s"),
    }
}

/// `url` with its database (the path) replaced by `name`; the query string stays.
pub fn with_database(url: &str, name: &str) -> String {
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

/// `url` without its password, for reports.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.to_owned() };
    let rest = &url[scheme_end..];
    let Some(at) = rest.find('@') else { return url.to_owned() };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end], &rest[at..]),
        None => url.to_owned(),
    }
}

/// 12 random hex digits (std only: a randomly seeded hasher).
pub fn random_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
}

/// What a raw ceiling did: operations (rows or commands), round trips, latency per round trip.
pub struct Ceiling {
    pub ops: u64,
    pub round_trips: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Round-trip latency in microseconds.
    pub hist: Histogram<u64>,
    /// CPU seconds this process (the client) used.
    pub client_cpu: f64,
}

impl Ceiling {
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
    pub fn round_trip_rate(&self) -> f64 {
        self.round_trips as f64 / self.elapsed.as_secs_f64()
    }
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
    pub fn client_cores(&self) -> f64 {
        self.client_cpu / self.elapsed.as_secs_f64()
    }
}

/// Runs `op` (which does `per_call` operations in one round trip) on each of
/// `workers` states as fast as it completes, for `duration`.
pub async fn drive<S, F, Fut>(states: Vec<S>, per_call: u64, duration: Duration, op: F) -> anyhow::Result<Ceiling>
where
    S: Send + 'static,
    F: Fn(S, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = (S, anyhow::Result<()>)> + Send + 'static,
{
    let cpu0 = loadgen::process_cpu_seconds();
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for state in states {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut errors, mut hist, mut state, mut n) = (0u64, 0u64, histogram(), state, 0u64);
            while Instant::now() < deadline {
                let t = Instant::now();
                let (s, r) = op(state, n).await;
                state = s;
                n += 1;
                match r {
                    Ok(()) => {
                        ok += 1;
                        hist.record(t.elapsed().as_micros().max(1) as u64).ok();
                    }
                    Err(e) => {
                        errors += 1;
                        if errors == 1 {
                            eprintln!("warning: ceiling operation failed: {e:#}");
                        }
                    }
                }
            }
            (ok, errors, hist)
        }));
    }
    let mut out =
        Ceiling { ops: 0, round_trips: 0, errors: 0, elapsed: Duration::ZERO, hist: histogram(), client_cpu: 0.0 };
    for t in tasks {
        let (ok, errors, hist) = t.await?;
        out.round_trips += ok;
        out.errors += errors;
        out.hist.add(&hist).ok();
    }
    out.ops = out.round_trips * per_call;
    out.elapsed = start.elapsed();
    out.client_cpu = loadgen::process_cpu_seconds() - cpu0;
    Ok(out)
}

/// A message-sized row, as the ceiling writes it.
const BODY: &str = r#"{"type":"text","text":{"body":"benchmark message, about the size of a real one with its JSON envelope and a recipient"}}"#;

/// INSERT + COMMIT rate on `url` (a fresh database) with `conns` connections:
/// `batch` = 1 is one autocommitted single-row INSERT per round trip (one
/// commit, one WAL flush each); more is one multi-row `INSERT … SELECT FROM
/// UNNEST` per transaction, as a batch writer would do it.
pub async fn commit_ceiling(url: &str, conns: usize, batch: usize, duration: Duration) -> anyhow::Result<Ceiling> {
    let mut setup = connect(url).await?;
    let table = format!("bench_rows_{batch}");
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE {table} (id bigserial PRIMARY KEY, k text NOT NULL, body text NOT NULL, created_at bigint NOT NULL)"
    )))
    .execute(&mut setup)
    .await?;
    let _ = setup.close().await;
    let mut states = Vec::new();
    for c in 0..conns {
        states.push((connect(url).await?, c));
    }
    let sql: std::sync::Arc<str> = if batch <= 1 {
        format!("INSERT INTO {table} (k, body, created_at) VALUES ($1, $2, $3)").into()
    } else {
        format!("INSERT INTO {table} (k, body, created_at) SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[])")
            .into()
    };
    let result = drive(states, batch.max(1) as u64, duration, move |(mut conn, c), n| {
        let sql = sql.clone();
        async move {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let now = now.as_millis() as i64;
            let r = if batch <= 1 {
                sqlx::query(AssertSqlSafe(&*sql))
                    .bind(format!("c{c}-{n}"))
                    .bind(BODY)
                    .bind(now)
                    .execute(&mut conn)
                    .await
            } else {
                let keys: Vec<String> = (0..batch).map(|i| format!("c{c}-{n}-{i}")).collect();
                sqlx::query(AssertSqlSafe(&*sql))
                    .bind(keys)
                    .bind(vec![BODY; batch])
                    .bind(vec![now; batch])
                    .execute(&mut conn)
                    .await
            };
            ((conn, c), r.map(|_| ()).map_err(anyhow::Error::from))
        }
    })
    .await?;
    Ok(result)
}

/// What PostgreSQL's backends of one database were doing, sampled every
/// 10 ms from `pg_stat_activity`.
pub struct WaitSampler {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<WaitProfile>>,
}

#[derive(Default, Debug)]
pub struct WaitProfile {
    pub samples: u64,
    /// Backend-samples per state (`running`, `IO:WALSync`, …).
    pub counts: BTreeMap<String, u64>,
}

impl WaitSampler {
    pub async fn start(admin_url: &str, database: &str) -> anyhow::Result<Self> {
        let mut conn = connect(admin_url).await?;
        let database = database.to_owned();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut profile = WaitProfile::default();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while !*stopped.borrow() {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                let rows = sqlx::query(
                    "SELECT CASE WHEN state = 'active' THEN coalesce(wait_event_type || ':' || wait_event, 'running') \
                     WHEN state = 'idle in transaction' THEN 'in transaction, waiting for zapgate' \
                     ELSE coalesce(state, 'unknown') END AS what, count(*) AS n \
                     FROM pg_stat_activity \
                     WHERE datname = $1 AND backend_type = 'client backend' AND pid <> pg_backend_pid() \
                     GROUP BY 1",
                )
                .bind(&database)
                .fetch_all(&mut conn)
                .await?;
                profile.samples += 1;
                for row in rows {
                    let (what, n): (String, i64) = (row.try_get("what")?, row.try_get("n")?);
                    *profile.counts.entry(what).or_default() += n as u64;
                }
            }
            let _ = conn.close().await;
            Ok(profile)
        });
        Ok(Self { stop, task })
    }

    pub async fn finish(self) -> anyhow::Result<WaitProfile> {
        let _ = self.stop.send(true);
        self.task.await?
    }
}

impl WaitProfile {
    /// Mean number of backends not idle (running, waiting, or in a transaction).
    pub fn busy(&self) -> f64 {
        self.counts.iter().filter(|(k, _)| k.as_str() != "idle").map(|(_, n)| *n).sum::<u64>() as f64
            / self.samples.max(1) as f64
    }

    /// "3.1 in transaction, waiting for zapgate; 1.2 IO:WALSync; …", largest first.
    pub fn describe(&self) -> String {
        let mut v: Vec<(&String, &u64)> = self.counts.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1));
        let parts: Vec<String> = v
            .iter()
            .filter(|(_, n)| **n as f64 / self.samples.max(1) as f64 >= 0.05)
            .map(|(k, n)| format!("{:.1} {k}", **n as f64 / self.samples.max(1) as f64))
            .collect();
        format!("mean backends over {} samples: {}", self.samples, parts.join("; "))
    }
}
