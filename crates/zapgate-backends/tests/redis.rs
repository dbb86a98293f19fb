//! The Redis rate limiter and locks against a real Redis server
//! (`ZAPGATE_TEST_REDIS_URL`, set by the distributed pass of
//! `scripts/test.sh`); without it those tests skip. The tests of a Redis that
//! is unreachable or hangs need no server and always run. The outage and
//! recovery test also starts its own throwaway `redis-server` on a free port.

use std::net::TcpListener;
use std::time::{Duration, Instant};
use zapgate_backends::{Locks, RateLimiter, RedisBackend};
use zapgate_sim::redis_server::RedisServer;

fn redis_url(test: &str) -> Option<String> {
    match std::env::var("ZAPGATE_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            println!(
                "skipped {test}: ZAPGATE_TEST_REDIS_URL is not set (the distributed pass of scripts/test.sh sets it)"
            );
            None
        }
    }
}

fn unique(what: &str) -> String {
    format!("test-{what}-{}", uuid::Uuid::new_v4())
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.expect("Redis answers")
}

#[tokio::test]
async fn two_processes_share_one_quota() {
    let Some(url) = redis_url("two_processes_share_one_quota") else { return };
    let (a, b) = (RedisBackend::connect(&url).await.unwrap(), RedisBackend::connect(&url).await.unwrap());
    assert!(a.healthy() && b.healthy(), "Redis at {url} answers");
    let key = unique("quota");

    // 1/s with a burst of 3, taken from both "processes".
    let start = Instant::now();
    a.check(&key, 1, 3).await.expect("1st of the burst");
    b.check(&key, 1, 3).await.expect("2nd of the burst");
    a.check(&key, 1, 3).await.expect("3rd of the burst");
    for limiter in [&a, &b] {
        let t = limiter.check(&key, 1, 3).await.expect_err("the shared burst is spent");
        // The next unit comes 1 s after the first call (µs rounding aside).
        assert!(
            t.retry_after <= Duration::from_secs(1) && start.elapsed() + t.retry_after >= Duration::from_millis(998),
            "wait until the next unit: {:?} after {:?}",
            t.retry_after,
            start.elapsed()
        );
    }
    b.check(&unique("other"), 1, 3).await.expect("keys are independent");

    // Idle keys vanish: the state expires once it no longer limits anything.
    let ttl: i64 = redis::cmd("PTTL").arg(format!("zapgate:rl:{key}")).query_async(&mut raw(&url).await).await.unwrap();
    assert!(ttl > 0 && ttl <= 3_000, "expiry in ms: {ttl}");

    // After the announced wait exactly one more unit is there.
    let wait = a.check(&key, 1, 3).await.unwrap_err().retry_after;
    tokio::time::sleep(wait + Duration::from_millis(20)).await;
    b.check(&key, 1, 3).await.expect("one unit replenished");
    a.check(&key, 1, 3).await.expect_err("only one");
    assert!(a.healthy() && b.healthy());
}

#[tokio::test]
async fn high_rates_pace_evenly() {
    let Some(url) = redis_url("high_rates_pace_evenly") else { return };
    let l = RedisBackend::connect(&url).await.unwrap();
    let key = unique("rate");
    // 100/s, burst 1: a second call right away waits about 10 ms.
    l.check(&key, 100, 1).await.unwrap();
    let t = l.check(&key, 100, 1).await.unwrap_err();
    assert!(t.retry_after > Duration::ZERO && t.retry_after <= Duration::from_millis(10), "{:?}", t.retry_after);
    // Zero values are lifted to 1 as in process.
    let key = unique("zero");
    l.check(&key, 0, 0).await.unwrap();
    assert!(l.check(&key, 0, 0).await.is_err());
}

#[tokio::test]
async fn locks_are_exclusive_across_processes() {
    let Some(url) = redis_url("locks_are_exclusive_across_processes") else { return };
    let (a, b) = (RedisBackend::connect(&url).await.unwrap(), RedisBackend::connect(&url).await.unwrap());
    let key = unique("lock");
    let ttl = Duration::from_secs(60);

    let ta = a.try_acquire(&key, ttl).await.expect("free");
    assert!(b.try_acquire(&key, ttl).await.is_none(), "held by the other process");
    assert!(a.try_acquire(&key, ttl).await.is_none(), "held, also for the holder");
    assert!(b.try_acquire(&unique("other"), ttl).await.is_some(), "keys are independent");
    assert!(!b.release(&unique("other-key"), ta).await, "a token releases only its own key");
    assert!(a.release(&key, ta).await);
    assert!(!a.release(&key, ta).await, "released once");
    let tb = b.try_acquire(&key, ttl).await.expect("released locks can be taken");
    assert!(b.release(&key, tb).await);
    assert!(a.healthy() && b.healthy());
}

#[tokio::test]
async fn locks_expire_and_only_the_holder_releases() {
    let Some(url) = redis_url("locks_expire_and_only_the_holder_releases") else { return };
    let (a, b) = (RedisBackend::connect(&url).await.unwrap(), RedisBackend::connect(&url).await.unwrap());
    let key = unique("expiry");

    let old = a.try_acquire(&key, Duration::from_millis(100)).await.expect("free");
    assert!(b.try_acquire(&key, Duration::from_secs(60)).await.is_none());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let new = b.try_acquire(&key, Duration::from_secs(60)).await.expect("an expired lock can be taken");
    assert!(!a.release(&key, old).await, "the expired holder cannot release the new holder's lock");
    assert!(a.try_acquire(&key, Duration::from_secs(60)).await.is_none(), "still held by the new holder");
    assert!(b.release(&key, new).await);

    let ttl: i64 = {
        let t = a.try_acquire(&key, Duration::from_millis(1500)).await.unwrap();
        let ttl =
            redis::cmd("PTTL").arg(format!("zapgate:lock:{key}")).query_async(&mut raw(&url).await).await.unwrap();
        assert!(a.release(&key, t).await);
        ttl
    };
    assert!(ttl > 1000 && ttl <= 1500, "PX ttl: {ttl}");
}

#[tokio::test]
async fn malformed_urls_fail_at_connect() {
    for url in ["not a url", "http://127.0.0.1:6379", "redis://:99999999"] {
        let err = RedisBackend::connect(url).await.err().unwrap_or_else(|| panic!("{url} must be refused"));
        assert!(err.to_string().contains("Redis URL"), "{err}");
    }
}

#[tokio::test]
async fn an_unreachable_redis_falls_back_in_process_quickly() {
    let started = Instant::now();
    let l = RedisBackend::connect("redis://127.0.0.1:1").await.expect("a down Redis is not a start failure");
    assert!(!l.healthy());
    assert!(started.elapsed() < Duration::from_secs(1), "connect: {:?}", started.elapsed());

    let key = unique("fallback");
    for i in 0..3 {
        let t = Instant::now();
        l.check(&key, 1, 3).await.unwrap_or_else(|_| panic!("unit {i} of the burst"));
        assert!(t.elapsed() < Duration::from_secs(1), "check: {:?}", t.elapsed());
    }
    let t = l.check(&key, 1, 3).await.expect_err("the in-process quota holds");
    assert!(t.retry_after > Duration::ZERO && t.retry_after <= Duration::from_secs(1));

    let lock = l.try_acquire(&key, Duration::from_secs(60)).await.expect("in-process lock");
    assert!(l.try_acquire(&key, Duration::from_secs(60)).await.is_none());
    assert!(l.release(&key, lock).await);

    let t = Instant::now();
    assert!(!l.ping().await);
    assert!(t.elapsed() < Duration::from_secs(1), "ping: {:?}", t.elapsed());
    assert!(!l.healthy());
    assert!(started.elapsed() < Duration::from_secs(3), "all calls: {:?}", started.elapsed());
}

#[tokio::test]
async fn a_redis_that_never_answers_times_out_into_the_fallback() {
    // Accepts connections (the kernel completes the handshake) but never reads or answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://127.0.0.1:{}", silent.local_addr().unwrap().port());
    let started = Instant::now();
    let l = RedisBackend::connect(&url).await.unwrap();
    assert!(!l.healthy());
    assert!(started.elapsed() < Duration::from_secs(1), "connect: {:?}", started.elapsed());

    let key = unique("silent");
    let t = Instant::now();
    l.check(&key, 10, 1).await.expect("the fallback answers");
    assert!(l.check(&key, 10, 1).await.is_err(), "the in-process quota holds");
    assert!(l.try_acquire(&key, Duration::from_secs(5)).await.is_some());
    assert!(t.elapsed() < Duration::from_millis(250), "calls skip a hanging Redis: {:?}", t.elapsed());

    let t = Instant::now();
    assert!(!l.ping().await);
    assert!(t.elapsed() < Duration::from_secs(1), "ping: {:?}", t.elapsed());
    drop(silent);
}

async fn exists(url: &str, key: &str) -> bool {
    redis::cmd("EXISTS").arg(key).query_async::<i64>(&mut raw(url).await).await.unwrap() == 1
}

#[tokio::test]
async fn falls_back_while_redis_is_down_and_recovers_when_it_returns() {
    let Some(_) = redis_url("falls_back_while_redis_is_down_and_recovers_when_it_returns") else { return };
    if !RedisServer::available() {
        println!("skipped the outage part: no redis-server binary on PATH");
        return;
    }
    let port = RedisServer::free_port();
    let mut server = RedisServer::start(port).unwrap();
    server.wait_until_up().await;
    let url = server.url();

    let l = RedisBackend::connect(&url).await.unwrap();
    assert!(l.healthy() && l.ping().await);
    let key = unique("outage");
    l.check(&key, 1, 3).await.unwrap();
    assert!(exists(&url, &format!("zapgate:rl:{key}")).await, "the quota lives in Redis");
    let redis_lock = l.try_acquire(&key, Duration::from_secs(60)).await.expect("Redis lock");

    // Redis goes away: calls answer quickly from this process.
    server.kill();
    let t = Instant::now();
    l.check(&key, 1, 3).await.expect("the fallback starts with a fresh quota");
    assert!(t.elapsed() < Duration::from_secs(1), "the call that finds Redis gone: {:?}", t.elapsed());
    assert!(!l.healthy());
    let t = Instant::now();
    for _ in 0..2 {
        l.check(&key, 1, 3).await.unwrap();
    }
    assert!(l.check(&key, 1, 3).await.is_err(), "the in-process quota holds");
    assert!(t.elapsed() < Duration::from_millis(250), "calls skip Redis while it is down: {:?}", t.elapsed());
    let fallback_key = unique("outage-lock");
    let fallback_lock = l.try_acquire(&fallback_key, Duration::from_secs(60)).await.expect("in-process lock");
    assert!(l.try_acquire(&fallback_key, Duration::from_secs(60)).await.is_none());
    assert!(!l.release(&key, redis_lock).await, "a Redis lock cannot be released while Redis is down");
    assert!(!l.ping().await);

    // Redis comes back (empty) on the same port: the next calls find it.
    let server = RedisServer::start(port).unwrap();
    server.wait_until_up().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let probe_key = unique("probe");
    while !l.healthy() {
        assert!(Instant::now() < deadline, "Redis was not used again within 10 s");
        let _ = l.check(&probe_key, 1000, 1000).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let key2 = unique("recovered");
    l.check(&key2, 1, 3).await.unwrap();
    assert!(exists(&url, &format!("zapgate:rl:{key2}")).await, "the quota lives in Redis again");
    assert!(l.ping().await && l.healthy());

    // The lock taken during the outage still excludes here until released
    // (by its in-process token); then the key is taken in Redis.
    assert!(l.try_acquire(&fallback_key, Duration::from_secs(60)).await.is_none());
    assert!(l.release(&fallback_key, fallback_lock).await);
    let t = l.try_acquire(&fallback_key, Duration::from_secs(60)).await.expect("free again");
    assert!(exists(&url, &format!("zapgate:lock:{fallback_key}")).await, "the lock lives in Redis");
    assert!(l.release(&fallback_key, t).await);
    assert!(!exists(&url, &format!("zapgate:lock:{fallback_key}")).await);
    drop(server);
}
