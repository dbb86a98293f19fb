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
    let (sending, total) = send_in_background(&api, &["a", "b", "c"], 200, scaled(300).max(60)).await;

    // A restart, as the clients see it: every connection drops at once.
    wait_receipts(&api, total / 5).await;
    proxy.cut();
    // Down for a while: the API still accepts (into the outbox), the relay says so.
    wait_receipts(&api, total / 3).await;
    proxy.stop();
    wait_readiness(&[&relay], "rabbitmq", "degraded/down").await;
    let during = api.receipts().len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.resume().await.unwrap();

    let accepted = sending.await.unwrap();
    assert_eq!(accepted.len(), total, "the API accepted every message while RabbitMQ was away");
    assert_each_sent_once(&api, &accepted).await;
    assert!(during < total, "the outage came before the end of the run ({during} of {total} sent)");
    assert_eq!(relay.readiness("rabbitmq").await, "ok/ok", "reconnected");
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
    let (sending, total) = send_in_background(&api, &["a", "b", "c", "d"], 300, scaled(400).max(60)).await;
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

/// A real restart of the shared RabbitMQ node's application (`rabbitmqctl
/// stop_app`, then `start_app`): listeners close, every connection drops, the
/// quorum queues stop and recover from their logs. Every other test would see
/// it, so it runs only in a pass of its own (`ZAPGATE_TEST_RABBITMQ_RESTART=1`,
/// after the broker pass in `scripts/test.sh`).
#[tokio::test]
async fn rabbitmq_restarting_mid_run_loses_nothing() {
    if !brokered() || std::env::var("ZAPGATE_TEST_RABBITMQ_RESTART").ok().as_deref() != Some("1") {
        return;
    }
    let env = [
        ("ZAPGATE_TENANT_RATE_LIMIT", "0"),
        ("ZAPGATE_SANDBOX_DELIVERED_AFTER", "1h"),
        ("ZAPGATE_SANDBOX_SEND_LATENCY", "5ms"),
    ];
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let api = Arc::new(Server::start_role("api", dir.clone(), &env).await);
    let worker = Server::start_role("worker", dir.clone(), &env).await;
    let relays = Server::start_relays(1, dir.clone(), &env).await;
    let (sending, total) = send_in_background(&api, &["a", "b", "c"], 200, scaled(300).max(60)).await;

    wait_receipts(&api, total / 5).await;
    let stop = rabbitmqctl(&["stop_app"]).expect("rabbitmqctl reaches the node");
    assert!(stop.status.success(), "stop_app: {}", String::from_utf8_lossy(&stop.stderr));
    let restarted = scopeguard(|| {
        let _ = rabbitmqctl(&["start_app"]);
    });
    wait_readiness(&[&relays[0], &worker], "rabbitmq", "degraded/down").await;
    let during = api.receipts().len();
    drop(restarted);
    let up = rabbitmqctl(&["await_startup"]).expect("rabbitmqctl reaches the node");
    assert!(up.status.success(), "start_app: {}", String::from_utf8_lossy(&up.stderr));

    let accepted = sending.await.unwrap();
    assert_eq!(accepted.len(), total, "the API accepted every message while RabbitMQ was away");
    assert_each_sent_once(&api, &accepted).await;
    assert!(during < total, "the restart came before the end of the run ({during} of {total} sent)");
    for server in [&relays[0], &worker] {
        assert_eq!(server.readiness("rabbitmq").await, "ok/ok", "reconnected");
    }
}

/// Runs `f` when dropped, also when an assertion fails first: a node left
/// stopped would fail every later test.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
