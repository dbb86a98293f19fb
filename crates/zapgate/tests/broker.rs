//! Faults of the broker path (the broker pass only: `ZAPGATE_TEST_BROKER=1`):
//! RabbitMQ going away mid-run, a relay killed by SIGKILL, relays stopped
//! until the outbox is full. Each time every accepted message reaches the
//! provider exactly once, with no attempt spent and nothing failed.
//!
//! RabbitMQ is shared by every test running at once, so "going away" is
//! made with a TCP proxy between zapgate and the broker: cutting its
//! connections is what a client sees of a restart (the quorum queues keep
//! their contents), and closing its port is the broker being down.

mod common;

use common::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use zapgate_sim::tcp::FaultProxy;

/// Accepts `per_tenant` messages for each of `tenants` concurrently; their ids.
async fn accept_all(api: &Arc<Server>, tenants: &[(String, String)], per_tenant: usize) -> Vec<(String, String)> {
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
/// provider exactly once (a broker fault never costs a duplicate: a copy
/// RabbitMQ redelivers loses the worker's compare-and-set).
async fn assert_each_sent_once(api: &Server, accepted: &[(String, String)]) {
    let (_, per_message) = api.settled_after_fault(accepted, "a broker fault").await;
    for (_, id) in accepted {
        assert_eq!(per_message.get(id), Some(&1), "message {id} reached the provider {:?} times", per_message.get(id));
    }
    assert_eq!(per_message.len(), accepted.len(), "only accepted messages reach the provider");
}

async fn wait_receipts(api: &Server, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while api.receipts().len() < n {
        assert!(Instant::now() < deadline, "only {} of {n} sends happened", api.receipts().len());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn ready_rabbitmq(server: &Server) -> String {
    let r = server.http.get(server.url("/health/ready")).send().await.unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    format!("{}/{}", v["status"].as_str().unwrap_or("?"), v["rabbitmq"].as_str().unwrap_or("none"))
}

#[tokio::test]
async fn rabbitmq_going_away_mid_run_loses_nothing() {
    let Some(amqp) = test_amqp_url() else { return };
    let (url_authority, upstream) = amqp_upstream(&amqp).await;
    let mut proxy = FaultProxy::start(upstream, 0).await.unwrap();
    let proxied = proxy.url(&amqp, &url_authority);
    let env = [
        ("ZAPGATE_TENANT_RATE_LIMIT", "0"),
        ("ZAPGATE_SANDBOX_DELIVERED_AFTER", "1h"),
        ("ZAPGATE_SANDBOX_SEND_LATENCY", "5ms"),
        ("ZAPGATE_AMQP_URL", proxied.as_str()),
    ];
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let api = Arc::new(Server::start_role("api", dir.clone(), &env).await);
    let _worker = Server::start_role("worker", dir.clone(), &env).await;
    let relay = Server::start_role("relay", dir.clone(), &env).await;
    let mut tenants = Vec::new();
    for name in ["a", "b", "c"] {
        tenants.push(api.tenant_with_instance(name, 200).await);
    }
    let per_tenant = scaled(300).max(60);
    let total = per_tenant * tenants.len();
    let sending = tokio::spawn({
        let (api, tenants) = (api.clone(), tenants.clone());
        async move { accept_all(&api, &tenants, per_tenant).await }
    });

    // A restart, as the clients see it: every connection drops at once.
    wait_receipts(&api, total / 5).await;
    proxy.cut();
    // Down for a while: the API still accepts (into the outbox), the relay says so.
    wait_receipts(&api, total / 3).await;
    proxy.stop();
    let deadline = Instant::now() + Duration::from_secs(20);
    while ready_rabbitmq(&relay).await != "degraded/down" {
        assert!(Instant::now() < deadline, "the relay never reported RabbitMQ down: {}", ready_rabbitmq(&relay).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let during = api.receipts().len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.resume().await.unwrap();

    let accepted = sending.await.unwrap();
    assert_eq!(accepted.len(), total, "the API accepted every message while RabbitMQ was away");
    assert_each_sent_once(&api, &accepted).await;
    assert!(during < total, "the outage came before the end of the run ({during} of {total} sent)");
    assert_eq!(ready_rabbitmq(&relay).await, "ok/ok", "reconnected");
}

#[tokio::test]
async fn a_relay_killed_by_sigkill_loses_nothing() {
    if !brokered() {
        return;
    }
    let env = [("ZAPGATE_TENANT_RATE_LIMIT", "0"), ("ZAPGATE_SANDBOX_DELIVERED_AFTER", "1h")];
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let api = Arc::new(Server::start_role("api", dir.clone(), &env).await);
    let _worker = Server::start_role("worker", dir.clone(), &env).await;
    let mut relays = Server::start_relays(2, dir.clone(), &env).await;
    let mut tenants = Vec::new();
    for name in ["a", "b", "c", "d"] {
        tenants.push(api.tenant_with_instance(name, 300).await);
    }
    let per_tenant = scaled(400).max(60);
    let total = per_tenant * tenants.len();
    let sending = tokio::spawn({
        let (api, tenants) = (api.clone(), tenants.clone());
        async move { accept_all(&api, &tenants, per_tenant).await }
    });
    wait_receipts(&api, total / 4).await;
    relays[0].kill();
    let accepted = sending.await.unwrap();
    assert_each_sent_once(&api, &accepted).await;
}

/// With no relay running the outbox fills: the API answers 503 +
/// Retry-After at the limit (never a silent drop), and once a relay runs
/// every accepted message is delivered.
#[tokio::test]
async fn stopped_relays_fill_the_outbox_to_503_then_resume() {
    if !brokered() {
        return;
    }
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let env = [("ZAPGATE_TENANT_RATE_LIMIT", "0"), ("ZAPGATE_MAX_QUEUE_DEPTH", "40")];
    let api = Server::start_role("api", dir.clone(), &env).await;
    let _worker = Server::start_role("worker", dir.clone(), &env).await;
    let (token, ins) = api.tenant_with_instance("flood", 1000).await;
    let accepted: Vec<(String, String)> =
        api.flood_until_503(&token, &ins).await.into_iter().map(|id| (token.clone(), id)).collect();
    assert!(accepted.len() > 40, "refused only past the limit ({} accepted)", accepted.len());
    assert!(api.receipts().is_empty(), "nothing is sent while no relay runs");
    let _relays = Server::start_relays(1, dir.clone(), &env).await;
    assert_each_sent_once(&api, &accepted).await;
}

/// A copy lost in RabbitMQ (here: the work queues purged while no worker
/// runs) is published again after `ZAPGATE_RELAY_REPUBLISH_AFTER`, so the
/// message is still sent, once.
#[tokio::test]
async fn messages_whose_broker_copy_was_lost_are_published_again() {
    if !brokered() {
        return;
    }
    let env = [("ZAPGATE_TENANT_RATE_LIMIT", "0"), ("ZAPGATE_RELAY_REPUBLISH_AFTER", "1s")];
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let api = Arc::new(Server::start_role("api", dir.clone(), &env).await);
    let relays = Server::start_relays(1, dir.clone(), &env).await;
    let tenants = vec![api.tenant_with_instance("lost", 100).await];
    let accepted = accept_all(&api, &tenants, 20).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while relays[0].metric("zapgate_relay_published_total", "result=\"confirmed\"").await < 20.0 {
        assert!(Instant::now() < deadline, "the relay never published the messages");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The harness names the topology after the database.
    let prefix = api.database.as_ref().expect("distributed").name.clone();
    for shard in 0..2 {
        let queue = format!("{prefix}.work.{shard}");
        let Some(out) = rabbitmqctl(&["purge_queue", &queue]) else {
            return println!("skipped: rabbitmqctl cannot reach the node");
        };
        assert!(out.status.success(), "purging {queue}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let _worker = Server::start_role("worker", dir.clone(), &env).await;
    assert_each_sent_once(&api, &accepted).await;
    assert!(relays[0].metric("zapgate_relay_republished_total", "").await >= 20.0, "{}", relays[0].logs());
}

/// `rabbitmqctl ARGS` with a time limit; None when it cannot run at all.
fn rabbitmqctl(args: &[&str]) -> Option<std::process::Output> {
    let out =
        std::process::Command::new("timeout").args(["-k", "5", "30", "rabbitmqctl", "-q"]).args(args).output().ok()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    (!stderr.contains("unable to perform an operation") && out.status.code() != Some(127)).then_some(out)
}
