//! Redis restarting under a running gateway (the distributed passes only).
//! Each test runs its own `redis-server` (the pass's shared one cannot be
//! killed under the other tests) and kills it with SIGKILL mid-run, then
//! starts it again, empty, on the same port.
//!
//! Redis holds only soft state: while it is down, rate limits fall back to
//! in-process limits and locks to the store, `/health/ready` says
//! `degraded`, and nothing is lost, failed or sent twice.

mod common;

use common::*;
use std::sync::Arc;
use std::time::Duration;
use zapgate_sim::redis_server::RedisServer;

/// A Redis of the test's own, or None (with the reason printed) when the
/// test cannot run here.
async fn own_redis(test: &str) -> Option<RedisServer> {
    if !distributed() {
        return None;
    }
    if !RedisServer::available() {
        println!("skipped {test}: no redis-server binary on PATH");
        return None;
    }
    let redis = RedisServer::start(RedisServer::free_port()).expect("redis-server starts");
    redis.wait_until_up().await;
    Some(redis)
}

#[tokio::test]
async fn redis_restarting_mid_run_loses_nothing() {
    let Some(mut redis) = own_redis("redis_restarting_mid_run_loses_nothing").await else { return };
    let url = redis.url();
    let env = [
        ("ZAPGATE_TENANT_RATE_LIMIT", "0"),
        ("ZAPGATE_SANDBOX_DELIVERED_AFTER", "1h"),
        ("ZAPGATE_SANDBOX_SEND_LATENCY", "5ms"),
        ("ZAPGATE_REDIS_URL", url.as_str()),
    ];
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let api = Arc::new(Server::start_role("api", dir.clone(), &env).await);
    let workers =
        [Server::start_role("worker", dir.clone(), &env).await, Server::start_role("worker", dir.clone(), &env).await];
    let _relays = Server::start_relays(1, dir.clone(), &env).await;
    wait_readiness(&[&api, &workers[0], &workers[1]], "redis", "ok/ok").await;
    let (sending, total) = send_in_background(&api, &["a", "b", "c"], 300, scaled(300).max(60)).await;

    wait_receipts(&api, total / 5).await;
    redis.kill();
    wait_readiness(&[&api, &workers[0], &workers[1]], "redis", "degraded/down").await;
    // Sends go on without Redis (the pacing and the locks fall back).
    let during = api.receipts().len();
    wait_receipts(&api, during + total / 10).await;

    let redis = RedisServer::start(redis.port()).expect("redis-server starts again");
    redis.wait_until_up().await;
    wait_readiness(&[&api, &workers[0], &workers[1]], "redis", "ok/ok").await;

    let accepted = sending.await.unwrap();
    assert_eq!(accepted.len(), total, "the API accepted every message while Redis was away");
    assert_each_sent_once(&api, &accepted).await;
    assert!(during < total, "the outage came before the end of the run ({during} of {total} sent)");
}

/// Posts (as `token`) until the API answers 429; how many it accepted
/// first. The refusal carries a Retry-After; anything but 202/429 fails.
async fn accepted_until_429(api: &Server, token: &str, instance: &str) -> usize {
    for accepted in 0..100 {
        let r = api.post(token, "/v1/messages", &text(instance, "+5511999990000", "limit")).await;
        match r.status().as_u16() {
            202 => {}
            429 => {
                let wait: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
                assert!(wait >= 1, "Retry-After: {wait}");
                return accepted;
            }
            other => panic!("unexpected {other}: {}", r.text().await.unwrap()),
        }
    }
    panic!("no 429 after 100 requests at 1/s");
}

/// The tenant API limit (1/s, bursts of 2) is shared by two API processes
/// through Redis, holds in each process while Redis is down, and is shared
/// again once Redis is back.
#[tokio::test]
async fn tenant_limits_hold_through_a_redis_restart() {
    let Some(mut redis) = own_redis("tenant_limits_hold_through_a_redis_restart").await else { return };
    let url = redis.url();
    let env = [("ZAPGATE_TENANT_RATE_LIMIT", "1"), ("ZAPGATE_REDIS_URL", url.as_str())];
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let a = Server::start_role("api", dir.clone(), &env).await;
    let b = Server::start_role("api", dir.clone(), &env).await;
    let (token, ins) = a.tenant_with_instance("limited", 100).await;
    // The burst refills in 2 s: spend what is left after the set-up.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let on_a = accepted_until_429(&a, &token, &ins).await;
    assert!(on_a <= 2, "one burst at most: {on_a}");
    assert_eq!(accepted_until_429(&b, &token, &ins).await, 0, "the other process shares the spent quota");

    redis.kill();
    wait_readiness(&[&a, &b], "redis", "degraded/down").await;
    // Each process now limits on its own, from a fresh quota: still refused past it.
    for api in [&a, &b] {
        let n = accepted_until_429(api, &token, &ins).await;
        assert!((1..=2).contains(&n), "the in-process fallback limits too: {n}");
    }

    let redis = RedisServer::start(redis.port()).expect("redis-server starts again");
    redis.wait_until_up().await;
    wait_readiness(&[&a, &b], "redis", "ok/ok").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let on_a = accepted_until_429(&a, &token, &ins).await;
    assert!((1..=2).contains(&on_a), "a fresh quota in the empty Redis: {on_a}");
    assert_eq!(accepted_until_429(&b, &token, &ins).await, 0, "shared through Redis again");
    drop(redis);
}
