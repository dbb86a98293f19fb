//! Roles apart: `zapgate api` and `zapgate worker` processes sharing one
//! PostgreSQL database split the work; several of each never send a message
//! twice. Embedded mode (one SQLite file) refuses to run roles apart.

mod common;

use common::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test]
async fn two_apis_and_two_workers_send_every_message_exactly_once() {
    if !distributed() {
        return roles_apart_are_refused_without_a_shared_database();
    }
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let env = [("ZAPGATE_TENANT_RATE_LIMIT", "0"), ("ZAPGATE_SANDBOX_DELIVERED_AFTER", "100ms")];
    let apis = [Server::start_role("api", dir.clone(), &env).await, Server::start_role("api", dir.clone(), &env).await];
    let workers =
        [Server::start_role("worker", dir.clone(), &env).await, Server::start_role("worker", dir.clone(), &env).await];
    let _relays = Server::start_relays(2, dir.clone(), &env).await;
    // Workers serve health and metrics, not the API.
    let r = workers[0].get(ADMIN, "/v1/tenants").await;
    assert_eq!(r.status(), 404);
    assert_eq!(workers[1].http.get(workers[1].url("/health/ready")).send().await.unwrap().status(), 200);

    let per_tenant = scaled(1_500).max(30);
    let mut tenants: Vec<(String, String)> = Vec::new();
    for k in 0.. {
        if tenants.len() == 3 {
            break;
        }
        let (token, ins) = apis[0].tenant_with_instance(&format!("t{k}"), 5_000).await;
        // Through RabbitMQ each worker consumes its own shards: instances on
        // one shard would leave the other worker nothing to send.
        let shards: std::collections::HashSet<_> =
            tenants.iter().map(|(_, i)| i).chain([&ins]).map(|i| broker_shard(i)).collect();
        if tenants.len() == 2 && shards.len() == 1 && broker_shard(&ins).is_some() {
            continue;
        }
        tenants.push((token, ins));
    }
    let apis = Arc::new(apis);
    let mut tasks = Vec::new();
    for (t, (token, ins)) in tenants.iter().enumerate() {
        for lane in 0..4 {
            let (apis, token, ins) = (apis.clone(), token.clone(), ins.clone());
            tasks.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for n in (lane..per_tenant).step_by(4) {
                    // Alternate API replicas. Each chat is written by one task, in
                    // order, so its acceptance order is the order of `n`.
                    let api = &apis[n % 2];
                    let to = format!("+55{}1{:09}", 11 + t, lane * 3 + (n / 4) % 3);
                    ids.push((api.send_text(&token, &ins, &to, &format!("m{n}")).await, to, n));
                }
                ids
            }));
        }
    }
    let mut sent: Vec<(String, String, usize)> = Vec::new();
    for t in tasks {
        sent.extend(t.await.unwrap());
    }
    let total = sent.len();
    assert_eq!(total, per_tenant * 3);

    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let receipts = apis[0].receipts();
        if receipts.len() >= total {
            break;
        }
        assert!(Instant::now() < deadline, "only {} of {total} messages reached the provider", receipts.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Give a duplicate time to show up, then count per message id.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let receipts = apis[0].receipts();
    let mut count: HashMap<String, usize> = HashMap::new();
    for r in &receipts {
        *count.entry(r["message_id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    for (id, _, _) in &sent {
        assert_eq!(count.get(id), Some(&1), "message {id} reached the provider {:?} times", count.get(id));
    }
    assert_eq!(receipts.len(), total, "no message beyond the accepted ones reached the provider");
    // Both workers took a share (each counts its own sends in /metrics).
    for w in &workers {
        let sent_here = w.metric("zapgate_send_outcomes_total", "outcome=\"sent\"").await;
        assert!(sent_here > 0.0, "a worker sent nothing:\n{}", w.logs());
    }

    // Per-chat order: within each chat the provider saw messages in acceptance order.
    let position: HashMap<&str, usize> =
        receipts.iter().enumerate().map(|(i, r)| (r["message_id"].as_str().unwrap(), i)).collect();
    let mut by_chat: HashMap<&str, Vec<(usize, usize)>> = HashMap::new();
    for (id, to, n) in &sent {
        by_chat.entry(to.as_str()).or_default().push((*n, position[id.as_str()]));
    }
    for (chat, mut v) in by_chat {
        v.sort();
        assert!(v.windows(2).all(|w| w[0].1 < w[1].1), "chat {chat}: provider order differs from acceptance order");
    }
    // And every message ends delivered, whichever process reads it.
    let (token, _) = &tenants[0];
    let last = sent.iter().rev().find(|(_, to, _)| to.starts_with("+5511")).unwrap();
    apis[1].wait_status(token, &last.0, &["delivered", "read"], Duration::from_secs(30)).await;
}

/// Embedded mode keeps everything in one process's SQLite file: `api` and
/// `worker` refuse to start, saying what to set.
fn roles_apart_are_refused_without_a_shared_database() {
    let dir = tempfile::tempdir().unwrap();
    for role in ["api", "worker"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_zapgate"))
            .arg(role)
            .env("ZAPGATE_DATA_DIR", dir.path())
            .env("ZAPGATE_LISTEN", "127.0.0.1:0")
            .env_remove("ZAPGATE_DATABASE_URL")
            .output()
            .unwrap();
        assert!(!out.status.success(), "zapgate {role} started without a shared database");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("ZAPGATE_DATABASE_URL"), "zapgate {role}: {err}");
    }
}

/// An instance's rate limit holds however many workers run: each instance is
/// paced by the one worker that owns it, not by each worker separately.
#[tokio::test]
async fn two_workers_keep_one_instances_pace() {
    if !distributed() {
        return;
    }
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let env = [("ZAPGATE_TENANT_RATE_LIMIT", "0")];
    let api = Server::start_role("api", dir.clone(), &env).await;
    let _workers =
        [Server::start_role("worker", dir.clone(), &env).await, Server::start_role("worker", dir.clone(), &env).await];
    let _relays = Server::start_relays(1, dir.clone(), &env).await;
    let (_, token) = api.tenant("paced").await;
    let ins =
        api.instance(&token, serde_json::json!({ "name": "slow", "rate_limit_per_second": 10, "burst": 1 })).await;
    let n = 30;
    for i in 0..n {
        api.send_text(&token, &ins, &format!("+5511{i:09}"), "paced").await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while api.receipts().len() < n {
        assert!(Instant::now() < deadline, "only {} of {n} were sent", api.receipts().len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut at: Vec<i64> = api.receipts().iter().map(|r| r["at_ms"].as_i64().expect("at_ms")).collect();
    at.sort();
    // GCRA at 10/s with a burst of 1: at most 11 sends in any second. Two
    // workers pacing separately would manage about 20.
    let busiest = at.iter().map(|t| at.iter().filter(|u| **u >= *t && **u < t + 1000).count()).max().unwrap();
    assert!(busiest <= 12, "{busiest} sends within one second at a 10/s limit");
}

/// A worker killed mid-run (by `kill -9`, or at a named crash point of the
/// send pipeline) loses nothing: the surviving worker takes over its
/// instances and leases at once, every accepted message reaches the provider,
/// none is failed or spends an attempt because of the kill, and duplicates are
/// no more than the messages the dead worker had in flight.
async fn worker_killed_mid_run(crash_at: Option<&str>) {
    fault_mid_run(match crash_at {
        Some(point) => Fault::CrashAt(point),
        None => Fault::Sigkill,
    })
    .await
}

#[derive(Debug, Clone, Copy)]
enum Fault<'a> {
    /// The test kills a worker with SIGKILL.
    Sigkill,
    /// A worker kills itself at a named crash point of the send pipeline.
    CrashAt(&'a str),
    /// Every connection to the database is cut (twice), as by a restart.
    DropDbConnections,
}

async fn fault_mid_run(fault: Fault<'_>) {
    let crash_at = match fault {
        Fault::CrashAt(point) => Some(point),
        _ => None,
    };
    let dir = Arc::new(tempfile::tempdir().unwrap());
    // A provider that takes 100 ms per call keeps sends in flight when the
    // victim dies: the senders below accept more slowly than the instances'
    // pace, so sends go out as they arrive and what is in flight is arrival
    // rate × call time — at 20 ms a crash point landed with none in flight
    // twice in CI.
    let env = [
        ("ZAPGATE_TENANT_RATE_LIMIT", "0"),
        ("ZAPGATE_SANDBOX_DELIVERED_AFTER", "1h"),
        ("ZAPGATE_SANDBOX_SEND_LATENCY", "100ms"),
    ];
    let api = Server::start_role("api", dir.clone(), &env).await;
    let mut victim_env = env.to_vec();
    if let Some(point) = crash_at {
        victim_env.push(("ZAPGATE_CRASH_AT", point));
    }
    let mut victim = Server::start_role("worker", dir.clone(), &victim_env).await;
    let survivor = Server::start_role("worker", dir.clone(), &env).await;
    let _relays = Server::start_relays(1, dir.clone(), &env).await;
    let per_tenant = scaled(400).max(60);
    let mut tenants = Vec::new();
    for name in ["a", "b", "c", "d"] {
        tenants.push(api.tenant_with_instance(name, 400).await);
    }
    let api = Arc::new(api);
    let accepted = accept_all(&api, &tenants, per_tenant).await;
    let total = accepted.len();
    match fault {
        Fault::Sigkill => {
            // Kill it while it is busy sending (it has sends in flight then).
            let deadline = Instant::now() + Duration::from_secs(60);
            while victim.metric("zapgate_provider_calls_total", "").await < 20.0 {
                assert!(Instant::now() < deadline, "the victim never sent (does it own no instance?)");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            victim.kill();
        }
        Fault::CrashAt(point) => {
            let status = victim.wait_exit(Duration::from_secs(60));
            assert!(status.is_some_and(|s| !s.success()), "the worker did not crash at {point}:\n{}", victim.logs());
        }
        Fault::DropDbConnections => {
            let db = api.database.clone().expect("distributed");
            while api.receipts().len() < total / 4 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let cut = terminate_connections(&db.url).await;
            assert!(cut >= 2, "only {cut} connections were cut (each worker holds an owner session)");
            // Again once the processes have reconnected.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let cut = terminate_connections(&db.url).await;
            assert!(cut >= 2, "only {cut} connections were cut the second time");
        }
    }
    let (requeued, per_message) = api.settled_after_fault(&accepted, "the worker's death").await;
    for (_, id) in &accepted {
        assert!(per_message.contains_key(id), "accepted message {id} never reached the provider");
    }
    assert_eq!(per_message.len(), total, "only accepted messages reach the provider");
    let duplicates: usize = per_message.values().map(|n| n - 1).sum();
    assert!(duplicates <= requeued, "{duplicates} duplicates but only {requeued} messages were in flight at the kill");
    if matches!(fault, Fault::DropDbConnections) {
        // The next session check reconnects; it may come after the last
        // message settled (a reclaimer holding the owner lock for a moment
        // makes a check wait for the one after).
        let deadline = Instant::now() + Duration::from_secs(30);
        for w in [&victim, &survivor] {
            while !w.logs().contains("reconnected the PostgreSQL owner session") {
                assert!(Instant::now() < deadline, "{}", w.logs());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    } else if let Fault::CrashAt(point) = fault {
        // A crash point before the outcome is stored fires in the middle of a
        // send, so there is always work to requeue. `before_ack` fires after
        // that send's outcome is durable: only the victim's other sends, if it
        // had any at that instant, are requeued. (A SIGKILL may land between
        // sends; what it must not do is lose, fail or duplicate beyond what
        // was requeued, checked above.)
        if !point.starts_with("before_ack") {
            assert!(requeued > 0, "{point}: the victim had sends in flight to requeue");
        }
    }
    drop(survivor);
    eprintln!("{fault:?}: {total} messages, {requeued} in flight at the kill, {duplicates} duplicates");
}

/// Cuts every other connection to the database `url` names; returns how many.
async fn terminate_connections(url: &str) -> usize {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let pids: Vec<i32> = sqlx::query_scalar(
        // Client backends only: an autovacuum worker on the database is a
        // superuser process that this role may not terminate.
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() \
         AND backend_type = 'client backend'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let mut cut = 0;
    for pid in pids {
        let done: bool =
            sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(pid).fetch_one(&mut conn).await.unwrap();
        cut += usize::from(done);
    }
    cut
}

/// Every PostgreSQL connection of every process is cut mid-run (twice):
/// pools reconnect, owner sessions take their locks back, nothing is lost or
/// failed, and duplicates stay within what was requeued.
#[tokio::test]
async fn cut_database_connections_lose_nothing() {
    if distributed() {
        fault_mid_run(Fault::DropDbConnections).await;
    }
}

#[tokio::test]
async fn a_worker_killed_by_sigkill_loses_nothing() {
    if distributed() {
        worker_killed_mid_run(None).await;
    }
}

#[tokio::test]
async fn a_worker_crashing_at_each_send_step_loses_nothing() {
    if distributed() {
        for point in ["after_begin_sending:5", "after_provider_call:40", "before_ack:60"] {
            worker_killed_mid_run(Some(point)).await;
        }
    }
}

/// Overload: with no worker draining, the API fills the queue up to its
/// limit and then answers 503 + Retry-After (never a silent drop); once a
/// worker runs, every accepted message is delivered.
#[tokio::test]
async fn a_full_queue_refuses_then_drains_when_a_worker_starts() {
    if !distributed() {
        return;
    }
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let env = [("ZAPGATE_TENANT_RATE_LIMIT", "0"), ("ZAPGATE_MAX_QUEUE_DEPTH", "40")];
    let api = Server::start_role("api", dir.clone(), &env).await;
    let (token, ins) = api.tenant_with_instance("flood", 1000).await;
    let accepted = api.flood_until_503(&token, &ins).await;
    assert!(accepted.len() > 40, "refused only past the limit ({} accepted)", accepted.len());
    let _worker = Server::start_role("worker", dir.clone(), &env).await;
    let _relays = Server::start_relays(1, dir.clone(), &env).await;
    for id in &accepted {
        api.wait_status(&token, id, &["sent", "delivered", "read"], Duration::from_secs(60)).await;
    }
    assert_eq!(api.receipts().len(), accepted.len());
}
