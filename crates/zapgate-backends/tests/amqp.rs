//! The RabbitMQ broker module against a real RabbitMQ (`ZAPGATE_TEST_AMQP_URL`,
//! e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`, exported by
//! `scripts/services.sh`); without it the tests print "skipped" and pass.
//!
//! Every test declares its own topology under a unique prefix (`zgt_<uuid>`)
//! and deletes it afterwards (best effort, also when the test fails), so the
//! tests run in parallel without seeing each other. Connection losses are
//! made with a TCP proxy that the test cuts, or with `rabbitmqctl
//! close_connection` aimed at the test's own connections only (skipped when
//! `rabbitmqctl` cannot reach the node).

use futures::StreamExt;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};
use zapgate_backends::amqp::{
    AckWindow, Broker, BrokerError, BrokerOptions, Consumer, Delivery, Outgoing, PublishResult, Tier, TopologyConfig,
    shard_of, tier_for,
};
use zapgate_sim::tcp::FaultProxy;

fn amqp_url(test: &str) -> Option<String> {
    match std::env::var("ZAPGATE_TEST_AMQP_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            println!("skipped {test}: ZAPGATE_TEST_AMQP_URL is not set (scripts/services.sh exports it)");
            None
        }
    }
}

/// A topology of its own: 2 shards, tiers of 1 s and 1 min.
fn test_topology() -> TopologyConfig {
    TopologyConfig {
        prefix: format!("zgt_{}", uuid::Uuid::new_v4().simple()),
        shards: 2,
        tiers: vec![Tier::new("1s", Duration::from_secs(1)), Tier::new("1m", Duration::from_secs(60))],
        ..Default::default()
    }
}

fn test_options(topology: &TopologyConfig) -> BrokerOptions {
    BrokerOptions {
        connection_name: topology.prefix.clone(),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        ..Default::default()
    }
}

/// Deletes a test's queues and exchanges when dropped (from a thread of its
/// own, so it also runs while a failed test unwinds).
struct Cleanup {
    url: String,
    topology: TopologyConfig,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (url, topology) = (self.url.clone(), self.topology.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            // Bounded: a broker that stopped answering must not hang the test.
            // (The timer is made inside block_on: it needs the runtime.)
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(20), topology.delete(&url)).await.ok() });
        })
        .join();
    }
}

struct Fx {
    url: String,
    topology: TopologyConfig,
    broker: Broker,
    _cleanup: Cleanup,
}

async fn fixture(test: &str, tweak: impl FnOnce(&mut TopologyConfig)) -> Option<Fx> {
    let url = amqp_url(test)?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut topology = test_topology();
    tweak(&mut topology);
    let cleanup = Cleanup { url: url.clone(), topology: topology.clone() };
    let broker = Broker::connect_with(&url, topology.clone(), test_options(&topology)).await.expect("connect");
    assert!(broker.healthy(), "connected and declared");
    Some(Fx { url, topology, broker, _cleanup: cleanup })
}

async fn raw_channel(url: &str) -> (lapin::Connection, lapin::Channel) {
    let conn = lapin::Connection::connect(url, Default::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    (conn, ch)
}

async fn recv(c: &mut Consumer, within: Duration) -> Option<Delivery> {
    match tokio::time::timeout(within, c.next()).await {
        Ok(Some(Ok(d))) => Some(d),
        Ok(Some(Err(e))) => panic!("consumer error: {e}"),
        Ok(None) => panic!("consumer ended"),
        Err(_) => None,
    }
}

async fn recv_n(c: &mut Consumer, n: usize) -> Vec<Delivery> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match recv(c, Duration::from_secs(10)).await {
            Some(d) => out.push(d),
            None => panic!("only {} of {n} deliveries arrived", out.len()),
        }
    }
    out
}

fn batch(shard: u16, n: usize, tag: &str) -> Vec<Outgoing> {
    (0..n).map(|i| Outgoing::work(shard, format!("{tag}-{i}"), format!("payload {tag} {i}").into_bytes())).collect()
}

async fn publish_all_confirmed(broker: &Broker, msgs: Vec<Outgoing>) {
    let n = msgs.len();
    let results = broker.publish_batch(msgs).await.expect("publish");
    assert_eq!(results.len(), n);
    assert!(results.iter().all(|r| r.is_confirmed()), "all confirmed: {results:?}");
}

const QUIET: Duration = Duration::from_millis(600);

#[tokio::test]
async fn pure_routing_functions() {
    // No server needed.
    assert_eq!(shard_of("inst_1", 16), shard_of("inst_1", 16));
    assert_eq!(shard_of("inst_1", 16), 9, "pinned: FNV-1a-64 % 16");
    assert_eq!(shard_of("inst_2", 16), 0);
    assert!((0..1000).all(|i| shard_of(&format!("i{i}"), 7) < 7));
    assert_eq!(tier_for(Duration::from_secs(1)).name, "5s");
    assert_eq!(tier_for(Duration::from_secs(6)).name, "30s");
    assert_eq!(tier_for(Duration::from_secs(3 * 3600)).name, "6h");
    assert_eq!(tier_for(Duration::from_secs(30 * 86_400)).name, "6h");
    let t = test_topology();
    assert_eq!(t.tier_for(Duration::from_millis(10)).name, "1s");
    assert_eq!(t.tier_for(Duration::from_millis(1001)).name, "1m");
}

#[tokio::test]
async fn bad_urls_fail_fast() {
    let t = test_topology();
    for url in ["not a url", "http://127.0.0.1:5672/", "amqp://[::1"] {
        let err = Broker::connect(url, t.clone()).await.expect_err(url);
        assert!(matches!(err, BrokerError::InvalidUrl(_)), "{url}: {err}");
    }
    let err = Broker::connect("amqps://u:secret@127.0.0.1:5671/%2f", t.clone()).await.unwrap_err();
    assert!(matches!(err, BrokerError::TlsUnsupported), "{err}");
    assert!(!err.to_string().contains("secret"));
    let err = Broker::connect("amqp://127.0.0.1:5672/%2f", TopologyConfig { shards: 0, ..t }).await.unwrap_err();
    assert!(matches!(err, BrokerError::InvalidConfig(_)), "{err}");
}

#[tokio::test]
async fn refused_login_and_vhost_fail_fast() {
    let Some(url) = amqp_url("refused_login_and_vhost_fail_fast") else { return };
    let Some((host, port)) = host_port(&url) else { return };
    let t = test_topology();
    let started = Instant::now();
    let err = Broker::connect(&format!("amqp://guest:wrong-password@{host}:{port}/%2f"), t.clone()).await.unwrap_err();
    assert!(matches!(err, BrokerError::Refused(_)), "wrong password: {err:?}");
    let err = Broker::connect(&format!("amqp://guest:guest@{host}:{port}/no-such-vhost-zgt"), t).await.unwrap_err();
    assert!(matches!(err, BrokerError::Refused(_)), "unknown vhost: {err:?}");
    assert!(started.elapsed() < Duration::from_secs(15), "not retried: {:?}", started.elapsed());
}

#[tokio::test]
async fn topology_is_idempotent_and_has_its_arguments() {
    let Some(fx) = fixture("topology_is_idempotent_and_has_its_arguments", |_| {}).await else { return };
    let t = &fx.topology;

    // Declared again by another "process", and by several at once on a fresh prefix.
    let again = Broker::connect_with(&fx.url, t.clone(), test_options(t)).await.expect("second declaration");
    assert!(again.healthy());
    again.close().await;
    let fresh = test_topology();
    let _fresh_cleanup = Cleanup { url: fx.url.clone(), topology: fresh.clone() };
    let racing =
        futures::future::join_all((0..4).map(|_| Broker::connect_with(&fx.url, fresh.clone(), test_options(&fresh))))
            .await;
    for b in racing {
        let b = b.expect("concurrent declarations");
        assert!(b.healthy());
        b.close().await;
    }

    // Every queue exists with exactly these arguments: re-declaring with the
    // same ones is accepted, any difference is refused (PRECONDITION_FAILED).
    let (conn, _) = raw_channel(&fx.url).await;
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    let declare = |name: String, args: FieldTable| {
        let conn = &conn;
        async move {
            let ch = conn.create_channel().await.unwrap();
            ch.queue_declare(name.into(), durable, args).await.map(|_| ())
        }
    };
    let with = |mut args: FieldTable, key: &str, value: Option<AMQPValue>| {
        let mut inner = args.inner().clone();
        match value {
            Some(v) => {
                inner.insert(key.into(), v);
            }
            None => {
                inner.remove(key);
            }
        }
        args = FieldTable::from(inner);
        args
    };
    let s = |v: &str| Some(AMQPValue::LongString(LongString::from(v)));
    for shard in 0..t.shards {
        let q = t.work_queue(shard);
        let args = t.work_queue_args();
        declare(q.clone(), args.clone()).await.expect("same arguments");
        for (key, value) in [
            ("x-max-length", Some(AMQPValue::LongLongInt(7))),
            ("x-single-active-consumer", None),
            ("x-overflow", s("drop-head")),
            ("x-queue-type", s("classic")),
        ] {
            let err = declare(q.clone(), with(args.clone(), key, value)).await.expect_err(key);
            assert!(err.to_string().contains("PRECONDITION_FAILED"), "{q} {key}: {err}");
        }
    }
    for tier in &t.tiers {
        let q = t.wait_queue(tier);
        let args = t.wait_queue_args(tier);
        declare(q.clone(), args.clone()).await.expect("same arguments");
        for (key, value) in [
            ("x-message-ttl", Some(AMQPValue::LongLongInt(5))),
            ("x-dead-letter-exchange", s("elsewhere")),
            ("x-dead-letter-routing-key", s("0")),
            ("x-dead-letter-strategy", s("at-most-once")),
            ("x-overflow", s("drop-head")),
            ("x-max-length", Some(AMQPValue::LongLongInt(7))),
            ("x-queue-type", s("classic")),
        ] {
            let err = declare(q.clone(), with(args.clone(), key, value)).await.expect_err(key);
            assert!(err.to_string().contains("PRECONDITION_FAILED"), "{q} {key}: {err}");
        }
    }
    // The argument lists as RabbitMQ shows them, when rabbitmqctl can reach
    // the node.
    if let Some(listing) = rabbitmqctl(&["-q", "list_queues", "name", "arguments"]) {
        let line = |q: &str| listing.lines().find(|l| l.starts_with(&format!("{q}\t"))).unwrap_or_default().to_string();
        let work = line(&t.work_queue(0));
        for part in
            ["x-max-length\",50000", "x-overflow\",\"reject-publish", "x-single-active-consumer\",true", "quorum"]
        {
            assert!(work.replace(' ', "").contains(part), "{part} in {work}");
        }
        let wait = line(&t.wait_queue(&t.tiers[0]));
        for part in [
            "x-message-ttl\",1000",
            &format!("x-dead-letter-exchange\",\"{}", t.work_exchange()),
            "x-dead-letter-strategy\",\"at-least-once",
            "x-overflow\",\"reject-publish",
            "x-max-length\",100000",
            "quorum",
        ] {
            assert!(wait.replace(' ', "").contains(part), "{part} in {wait}");
        }
        assert!(!wait.contains("x-dead-letter-routing-key"), "{wait}");
        println!("arguments checked with rabbitmqctl: {work} / {wait}");
    }

    // A process with other settings is refused clearly, at start.
    let mut other = t.clone();
    other.work_max_length = 10;
    let err = Broker::connect(&fx.url, other).await.expect_err("inequivalent topology");
    assert!(matches!(err, BrokerError::Declare { .. }), "{err:?}");
    assert!(err.to_string().contains("PRECONDITION_FAILED"), "{err}");
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test]
async fn publish_confirm_consume_ack_round_trip() {
    let Some(fx) = fixture("publish_confirm_consume_ack_round_trip", |_| {}).await else { return };
    fx.broker.ping().await.expect("ping");
    publish_all_confirmed(&fx.broker, batch(1, 100, "rt")).await;

    let mut c = fx.broker.consume(1, 200).await.unwrap();
    assert_eq!(c.shard(), 1);
    let got = recv_n(&mut c, 100).await;
    for (i, d) in got.iter().enumerate() {
        assert_eq!(d.message_id.as_deref(), Some(format!("rt-{i}").as_str()), "in order");
        assert_eq!(d.payload, format!("payload rt {i}").into_bytes());
        assert!(!d.redelivered);
        assert_eq!(d.routing_key, "1");
        assert_eq!(d.exchange, fx.topology.work_exchange());
    }
    assert!(recv(&mut c, QUIET).await.is_none(), "nothing more");
    let other = fx.broker.consume(0, 10).await.unwrap();
    let mut other = other;
    assert!(recv(&mut other, QUIET).await.is_none(), "shard 0 got nothing");

    // Settled out of order; acked in one multiple ack.
    let mut window = AckWindow::new();
    let mut last = None;
    for d in got.iter().rev() {
        last = window.settle(d.delivery_tag).or(last);
    }
    assert_eq!(last, Some(got.last().unwrap().delivery_tag));
    c.acker().ack_up_to(last.unwrap()).await.unwrap();
    c.close().await.unwrap();

    let mut again = fx.broker.consume(1, 100).await.unwrap();
    assert!(recv(&mut again, QUIET).await.is_none(), "the acks landed: nothing is redelivered");
}

#[tokio::test]
async fn batch_ack_with_multiple_and_redelivery() {
    let Some(fx) = fixture("batch_ack_with_multiple_and_redelivery", |_| {}).await else { return };
    publish_all_confirmed(&fx.broker, batch(0, 20, "m")).await;

    let mut c = fx.broker.consume(0, 50).await.unwrap();
    let got = recv_n(&mut c, 20).await;
    // One multiple ack for the first 10; the rest stay unacked.
    c.acker().ack_up_to(got[9].delivery_tag).await.unwrap();
    c.close().await.unwrap();

    let mut c = fx.broker.consume(0, 50).await.unwrap();
    let again = recv_n(&mut c, 10).await;
    let ids: Vec<_> = again.iter().map(|d| d.message_id.clone().unwrap()).collect();
    assert_eq!(ids, (10..20).map(|i| format!("m-{i}")).collect::<Vec<_>>(), "exactly the unacked ten");
    assert!(again.iter().all(|d| d.redelivered), "flagged redelivered");
    assert!(recv(&mut c, QUIET).await.is_none());

    // nack_requeue returns one delivery, which comes back redelivered.
    let acker = c.acker();
    acker.nack_requeue(again[0].delivery_tag).await.unwrap();
    let back = recv(&mut c, Duration::from_secs(5)).await.expect("requeued delivery");
    assert_eq!(back.message_id.as_deref(), Some("m-10"));
    assert!(back.redelivered);
    acker.ack_up_to(back.delivery_tag).await.unwrap();

    // Dropping a consumer (no close) also returns what it did not ack.
    drop(acker);
    drop(c);
    let mut c = fx.broker.consume(0, 50).await.unwrap();
    assert!(recv(&mut c, QUIET).await.is_none(), "everything was acked");
    publish_all_confirmed(&fx.broker, batch(0, 3, "d")).await;
    let first = recv_n(&mut c, 3).await;
    assert!(first.iter().all(|d| !d.redelivered));
    drop(c);
    let mut c = fx.broker.consume(0, 50).await.unwrap();
    let second = recv_n(&mut c, 3).await;
    assert!(second.iter().all(|d| d.redelivered), "redelivered after the channel closed");
    c.acker().ack_up_to(second[2].delivery_tag).await.unwrap();
}

#[tokio::test]
async fn full_queue_nacks_instead_of_dropping() {
    let Some(fx) = fixture("full_queue_nacks_instead_of_dropping", |t| t.work_max_length = 3).await else { return };
    // Quorum queues learn that they are over the limit asynchronously: a
    // burst can overshoot by what is in flight, later publishes are nacked.
    let mut msgs = Vec::new();
    let mut results = Vec::new();
    for round in 0..4 {
        let b = batch(1, 10, &format!("o{round}"));
        results.extend(fx.broker.publish_batch(b.clone()).await.unwrap());
        msgs.extend(b);
        println!("after round {round}: {:?}", &results[results.len() - 10..]);
    }
    let confirmed: BTreeSet<String> =
        msgs.iter().zip(&results).filter(|(_, r)| r.is_confirmed()).map(|(m, _)| m.message_id.clone()).collect();
    let nacked = results.iter().filter(|r| **r == PublishResult::Nacked).count();
    println!("x-max-length 3: {} confirmed, {nacked} nacked", confirmed.len());
    assert_eq!(confirmed.len() + nacked, msgs.len(), "each is confirmed or nacked: {results:?}");
    assert!(nacked >= 10 && confirmed.len() >= 3, "{results:?}");

    // Exactly the confirmed ones are in the queue.
    let mut c = fx.broker.consume(1, 100).await.unwrap();
    let got = recv_n(&mut c, confirmed.len()).await;
    assert!(recv(&mut c, QUIET).await.is_none(), "no nacked message was stored");
    let delivered: BTreeSet<String> = got.iter().map(|d| d.message_id.clone().unwrap()).collect();
    assert_eq!(delivered, confirmed);
    c.acker().ack_up_to(got.last().unwrap().delivery_tag).await.unwrap();

    // Room again: accepted again.
    tokio::time::sleep(Duration::from_millis(200)).await;
    publish_all_confirmed(&fx.broker, batch(1, 1, "after")).await;
}

#[tokio::test]
async fn delay_tier_returns_the_message_to_its_shard() {
    let Some(fx) = fixture("delay_tier_returns_the_message_to_its_shard", |_| {}).await else { return };
    let tier = fx.topology.tier_for(Duration::from_millis(700)).clone();
    assert_eq!(tier.name, "1s");
    let mut shard1 = fx.broker.consume(1, 10).await.unwrap();
    let mut shard0 = fx.broker.consume(0, 10).await.unwrap();

    let sent = Instant::now();
    let results =
        fx.broker.publish_batch(vec![Outgoing::wait(1, tier.name.clone(), "late", b"later".to_vec())]).await.unwrap();
    assert_eq!(results, vec![PublishResult::Confirmed]);
    let d = recv(&mut shard1, Duration::from_secs(10)).await.expect("came back from the wait queue");
    let waited = sent.elapsed();
    assert!(waited >= tier.ttl - Duration::from_millis(20), "waited the TTL: {waited:?}");
    assert!(waited < Duration::from_secs(5), "not much longer: {waited:?}");
    assert_eq!(d.message_id.as_deref(), Some("late"));
    assert_eq!(d.payload, b"later");
    assert_eq!(d.routing_key, "1", "returned under its shard");
    assert!(recv(&mut shard0, QUIET).await.is_none(), "the other shard got nothing");
    shard1.acker().ack_up_to(d.delivery_tag).await.unwrap();

    // Unknown tiers and shards are refused before anything is sent.
    let err = fx.broker.publish_batch(vec![Outgoing::wait(0, "7s", "x", vec![])]).await.unwrap_err();
    assert!(matches!(err, BrokerError::InvalidTarget(_)), "{err}");
    let err = fx.broker.publish_batch(vec![Outgoing::work(2, "x", vec![])]).await.unwrap_err();
    assert!(matches!(err, BrokerError::InvalidTarget(_)), "{err}");
    assert!(matches!(fx.broker.consume(2, 1).await, Err(BrokerError::InvalidTarget(_))));
}

#[tokio::test]
async fn single_active_consumer_per_shard() {
    let Some(fx) = fixture("single_active_consumer_per_shard", |_| {}).await else { return };
    let mut first = fx.broker.consume(0, 100).await.unwrap();
    let mut second = fx.broker.consume(0, 100).await.unwrap();
    publish_all_confirmed(&fx.broker, batch(0, 5, "a")).await;
    let got = recv_n(&mut first, 5).await;
    assert!(recv(&mut second, QUIET).await.is_none(), "the second consumer stays idle");
    first.acker().ack_up_to(got[4].delivery_tag).await.unwrap();
    publish_all_confirmed(&fx.broker, batch(0, 2, "b")).await;
    let unacked = recv_n(&mut first, 2).await;
    assert!(recv(&mut second, QUIET).await.is_none(), "still idle");

    // The first goes away: the second takes over, with what the first left.
    first.close().await.unwrap();
    publish_all_confirmed(&fx.broker, batch(0, 3, "c")).await;
    let took_over = recv_n(&mut second, 5).await;
    let ids: Vec<_> = took_over.iter().map(|d| d.message_id.clone().unwrap()).collect();
    assert_eq!(ids, ["b-0", "b-1", "c-0", "c-1", "c-2"]);
    assert!(took_over[..2].iter().all(|d| d.redelivered) && unacked.len() == 2);
    second.acker().ack_up_to(took_over[4].delivery_tag).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_are_confirmed_per_message() {
    let Some(fx) = fixture("concurrent_batches_are_confirmed_per_message", |_| {}).await else { return };
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let broker = fx.broker.clone();
            tokio::spawn(async move {
                let results = broker.publish_batch(batch((t % 2) as u16, 250, &format!("t{t}"))).await.unwrap();
                assert!(results.iter().all(|r| r.is_confirmed()), "{results:?}");
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let mut ids = HashSet::new();
    for shard in 0..2 {
        let mut c = fx.broker.consume(shard, 1000).await.unwrap();
        let got = recv_n(&mut c, 1000).await;
        assert!(recv(&mut c, QUIET).await.is_none());
        for d in &got {
            assert!(ids.insert(d.message_id.clone().unwrap()), "no duplicates");
        }
        c.acker().ack_up_to(got.last().unwrap().delivery_tag).await.unwrap();
    }
    assert_eq!(ids.len(), 2000);
}

#[tokio::test]
async fn closed_broker_refuses_work() {
    let Some(fx) = fixture("closed_broker_refuses_work", |_| {}).await else { return };
    let mut c = fx.broker.consume(0, 1).await.unwrap();
    fx.broker.close().await;
    assert!(!fx.broker.healthy());
    assert!(matches!(fx.broker.publish_batch(batch(0, 1, "x")).await, Err(BrokerError::Closed)));
    assert!(matches!(fx.broker.consume(0, 1).await, Err(BrokerError::Closed)));
    assert!(fx.broker.ping().await.is_err());
    match tokio::time::timeout(Duration::from_secs(5), c.next()).await {
        Ok(Some(Err(BrokerError::ConsumerLost(_)))) => {}
        other => panic!("the consumer ends with ConsumerLost: {other:?}"),
    }
    assert!(c.next().await.is_none());
}

// --- connection loss ---------------------------------------------------------

fn host_port(url: &str) -> Option<(String, u16)> {
    let uri: lapin::uri::AMQPUri = url.parse().ok()?;
    Some((uri.authority.host, uri.authority.port))
}

/// `url` through `proxy`.
fn via(proxy: &FaultProxy, url: &str) -> String {
    let (host, port) = host_port(url).unwrap();
    proxy.url(url, &format!("{host}:{port}"))
}

async fn proxied(test: &str) -> Option<(String, FaultProxy)> {
    let url = amqp_url(test)?;
    let (host, port) = host_port(&url)?;
    if !url.contains(&format!("{host}:{port}")) {
        println!("skipped {test}: ZAPGATE_TEST_AMQP_URL must name host:port explicitly");
        return None;
    }
    let upstream = tokio::net::lookup_host((host.as_str(), port)).await.ok()?.next()?;
    Some((url, FaultProxy::start(upstream, 0).await.expect("proxy port")))
}

async fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn reconnects_redeclares_and_resumes_after_connection_loss() {
    let Some((url, proxy)) = proxied("reconnects_redeclares_and_resumes_after_connection_loss").await else { return };
    let topology = test_topology();
    let _cleanup = Cleanup { url: url.clone(), topology: topology.clone() };
    let broker = Broker::connect_with(&via(&proxy, &url), topology.clone(), test_options(&topology)).await.unwrap();
    assert!(broker.healthy());
    publish_all_confirmed(&broker, batch(0, 5, "pre")).await;
    let mut c = broker.consume(0, 10).await.unwrap();
    let unacked = recv_n(&mut c, 5).await;
    let old_acker = c.acker();

    proxy.cut();
    // The consumer ends with one ConsumerLost, then the stream is over.
    match tokio::time::timeout(Duration::from_secs(10), c.next()).await {
        Ok(Some(Err(BrokerError::ConsumerLost(_)))) => {}
        other => panic!("expected ConsumerLost, got {other:?}"),
    }
    assert!(c.next().await.is_none());
    assert!(!old_acker.is_open());

    // Back within the backoff; the topology was redeclared (delete a queue
    // while disconnected to see it come back).
    // Each connection notices the cut on its own: wait until both were
    // re-established (one may still look live for a moment after the cut).
    wait_until("both connections reconnected", Duration::from_secs(10), || {
        let (p, q) = broker.reconnects();
        p >= 1 && q >= 1 && broker.healthy()
    })
    .await;
    assert!(broker.wait_connected(Duration::from_secs(10)).await, "reconnected");
    publish_all_confirmed(&broker, batch(0, 2, "post")).await;
    broker.ping().await.unwrap();

    // A new consumer gets the unacked messages again, then the new ones; the
    // old acker cannot ack on the new channel.
    assert!(old_acker.ack_up_to(unacked[4].delivery_tag).await.is_err());
    let mut c = broker.consume(0, 10).await.unwrap();
    let got = recv_n(&mut c, 7).await;
    let ids: Vec<_> = got.iter().map(|d| d.message_id.clone().unwrap()).collect();
    assert_eq!(ids, ["pre-0", "pre-1", "pre-2", "pre-3", "pre-4", "post-0", "post-1"]);
    assert!(got[..5].iter().all(|d| d.redelivered) && !got[5].redelivered);
    c.acker().ack_up_to(got[6].delivery_tag).await.unwrap();
    broker.close().await;
}

#[tokio::test]
async fn topology_is_redeclared_on_reconnect() {
    let Some((url, proxy)) = proxied("topology_is_redeclared_on_reconnect").await else { return };
    let topology = test_topology();
    let _cleanup = Cleanup { url: url.clone(), topology: topology.clone() };
    let broker = Broker::connect_with(&via(&proxy, &url), topology.clone(), test_options(&topology)).await.unwrap();
    // Someone deletes a shard queue; after the next reconnect it is back.
    let (conn, ch) = raw_channel(&url).await;
    ch.queue_delete(topology.work_queue(1).into(), QueueDeleteOptions::default()).await.unwrap();
    let results = broker.publish_batch(batch(1, 1, "lost")).await.unwrap();
    assert_eq!(results, vec![PublishResult::Returned], "no queue for the routing key: returned, not dropped silently");
    proxy.cut();
    wait_until("the loss is noticed", Duration::from_secs(10), || !broker.healthy()).await;
    assert!(broker.wait_connected(Duration::from_secs(10)).await);
    publish_all_confirmed(&broker, batch(1, 1, "back")).await;
    let _ = conn.close(200, "done".into()).await;
    broker.close().await;
}

#[tokio::test]
async fn starts_while_rabbitmq_is_unreachable() {
    let Some((url, mut proxy)) = proxied("starts_while_rabbitmq_is_unreachable").await else { return };
    proxy.stop(); // the port is closed once the accept task is gone
    tokio::time::sleep(Duration::from_millis(50)).await;
    let topology = test_topology();
    let _cleanup = Cleanup { url: url.clone(), topology: topology.clone() };
    let broker = Broker::connect_with(&via(&proxy, &url), topology.clone(), test_options(&topology))
        .await
        .expect("an unreachable RabbitMQ is not an error at start");
    assert!(!broker.healthy());
    assert!(matches!(broker.publish_batch(batch(0, 1, "x")).await, Err(BrokerError::NotConnected)));
    assert!(matches!(broker.ping().await, Err(BrokerError::NotConnected)));
    // consume waits for the connection.
    let pending = tokio::spawn({
        let broker = broker.clone();
        async move { broker.consume(0, 10).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished());

    proxy.resume().await.unwrap(); // RabbitMQ "comes up"
    assert!(broker.wait_connected(Duration::from_secs(10)).await, "connected in the background");
    let mut c = tokio::time::timeout(Duration::from_secs(10), pending).await.unwrap().unwrap().unwrap();
    publish_all_confirmed(&broker, batch(0, 1, "up")).await;
    let d = recv(&mut c, Duration::from_secs(5)).await.unwrap();
    assert_eq!(d.message_id.as_deref(), Some("up-0"));
    c.acker().ack_up_to(d.delivery_tag).await.unwrap();
    assert_eq!(broker.reconnects(), (0, 0), "first connections are not reconnects");
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_lost_mid_batch_reports_unconfirmed() {
    let Some((url, proxy)) = proxied("connection_lost_mid_batch_reports_unconfirmed").await else { return };
    let topology = TopologyConfig { shards: 1, ..test_topology() };
    let _cleanup = Cleanup { url: url.clone(), topology: topology.clone() };
    let broker = Broker::connect_with(&via(&proxy, &url), topology.clone(), test_options(&topology)).await.unwrap();
    let msgs: Vec<_> = (0..5000).map(|i| Outgoing::work(0, format!("b-{i}"), vec![b'x'; 512])).collect();
    let publishing = tokio::spawn({
        let (broker, msgs) = (broker.clone(), msgs.clone());
        async move { broker.publish_batch(msgs).await }
    });
    tokio::time::sleep(Duration::from_millis(15)).await;
    proxy.cut();
    let results = match publishing.await.unwrap() {
        Ok(results) => results,
        Err(BrokerError::NotConnected) => vec![PublishResult::Unconfirmed; msgs.len()],
        Err(e) => panic!("{e}"),
    };
    let confirmed: HashSet<&str> =
        msgs.iter().zip(&results).filter(|(_, r)| r.is_confirmed()).map(|(m, _)| m.message_id.as_str()).collect();
    let unconfirmed = results.iter().filter(|r| **r == PublishResult::Unconfirmed).count();
    println!("cut mid-batch: {} confirmed, {unconfirmed} unconfirmed", confirmed.len());
    assert_eq!(confirmed.len() + unconfirmed, msgs.len(), "nothing nacked or returned: {results:?}");

    // Every confirmed message is in the queue (unconfirmed ones may be too).
    assert!(broker.wait_connected(Duration::from_secs(10)).await);
    let mut c = broker.consume(0, 1000).await.unwrap();
    let mut seen = HashSet::new();
    while let Some(d) = recv(&mut c, Duration::from_secs(1)).await {
        seen.insert(d.message_id.unwrap());
        c.acker().ack_up_to(d.delivery_tag).await.unwrap();
    }
    let missing = confirmed.iter().filter(|id| !seen.contains(**id)).count();
    assert_eq!(missing, 0, "confirmed but not stored");
    broker.close().await;
}

#[tokio::test]
async fn publish_gives_up_after_the_confirm_timeout() {
    let Some((url, proxy)) = proxied("publish_gives_up_after_the_confirm_timeout").await else { return };
    let topology = test_topology();
    let _cleanup = Cleanup { url: url.clone(), topology: topology.clone() };
    let options = BrokerOptions { confirm_timeout: Duration::from_millis(400), ..test_options(&topology) };
    let broker = Broker::connect_with(&via(&proxy, &url), topology.clone(), options).await.unwrap();
    publish_all_confirmed(&broker, batch(0, 3, "before")).await;

    // RabbitMQ stops answering (the connection stays open): the batch comes
    // back unconfirmed after the timeout instead of hanging.
    proxy.stall(true);
    let started = Instant::now();
    let results = broker.publish_batch(batch(0, 5, "stalled")).await.unwrap();
    let took = started.elapsed();
    assert_eq!(results, vec![PublishResult::Unconfirmed; 5]);
    assert!(took >= Duration::from_millis(390) && took < Duration::from_secs(3), "{took:?}");

    // Answers again: the next batch goes out on a fresh channel. The stalled
    // batch may or may not have been stored (it is retried: at-least-once).
    proxy.stall(false);
    publish_all_confirmed(&broker, batch(0, 2, "after")).await;
    let mut c = broker.consume(0, 100).await.unwrap();
    let mut ids = Vec::new();
    while let Some(d) = recv(&mut c, QUIET).await {
        ids.push(d.message_id.unwrap());
        c.acker().ack_up_to(d.delivery_tag).await.unwrap();
    }
    for id in ["before-0", "before-1", "before-2", "after-0", "after-1"] {
        assert!(ids.iter().any(|i| i == id), "{id} in {ids:?}");
    }
    broker.close().await;
}

/// Runs `rabbitmqctl`, or `None` when it cannot reach the node.
fn rabbitmqctl(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("rabbitmqctl").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn reconnects_after_the_server_closes_the_connections() {
    let Some(fx) = fixture("reconnects_after_the_server_closes_the_connections", |_| {}).await else { return };
    let Some(listing) = rabbitmqctl(&["-q", "list_connections", "pid", "client_properties"]) else {
        println!("skipped reconnects_after_the_server_closes_the_connections: rabbitmqctl cannot reach the node");
        return;
    };
    // Only this test's two connections (named after its unique prefix).
    let pids: Vec<&str> = listing
        .lines()
        .filter(|l| l.contains(&fx.topology.prefix))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(pids.len(), 2, "publish and consume connections in {listing}");
    let mut c = fx.broker.consume(1, 10).await.unwrap();
    for pid in pids {
        rabbitmqctl(&["close_connection", pid, "zapgate test"]).expect("close_connection");
    }
    match tokio::time::timeout(Duration::from_secs(10), c.next()).await {
        Ok(Some(Err(BrokerError::ConsumerLost(_)))) => {}
        other => panic!("expected ConsumerLost, got {other:?}"),
    }
    assert!(fx.broker.wait_connected(Duration::from_secs(10)).await);
    wait_until("both reconnected", Duration::from_secs(10), || {
        let (p, q) = fx.broker.reconnects();
        p >= 1 && q >= 1
    })
    .await;
    publish_all_confirmed(&fx.broker, batch(1, 3, "after")).await;
    let mut c = fx.broker.consume(1, 10).await.unwrap();
    let got = recv_n(&mut c, 3).await;
    c.acker().ack_up_to(got[2].delivery_tag).await.unwrap();
}
