//! Tenant webhooks end to end: a real receiver on a local port verifies
//! every request with its own Standard Webhooks check (independent of
//! zapgate's signing code), counts what arrives, and fails on demand.

mod common;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::*;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug)]
struct Received {
    id: String,
    timestamp: String,
    signatures: Vec<String>,
    body: Vec<u8>,
    custom: Option<String>,
}

#[derive(Default)]
struct Receiver {
    got: Mutex<Vec<Received>>,
    /// Answer 500 to this many more requests.
    fail: AtomicU32,
    /// Answer `410 Gone` (with a body) to every request.
    gone: AtomicBool,
    /// Take this long to answer each request.
    hold_ms: AtomicU64,
    in_flight: AtomicU32,
    max_in_flight: AtomicU32,
}

impl Receiver {
    async fn start() -> (Arc<Receiver>, String) {
        let r = Arc::new(Receiver::default());
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .route(
                "/moved",
                axum::routing::post(|| async { (StatusCode::TEMPORARY_REDIRECT, [("location", "/hook")]) }),
            )
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (r, url)
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    async fn wait_for(&self, n: usize) -> Vec<Received> {
        for _ in 0..400 {
            if self.got.lock().unwrap().len() >= n {
                return self.got();
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("only {} of {n} webhook requests arrived", self.got.lock().unwrap().len());
    }
}

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: axum::body::Bytes) -> (StatusCode, String) {
    let now = r.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    r.max_in_flight.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(r.hold_ms.load(Ordering::SeqCst))).await;
    r.in_flight.fetch_sub(1, Ordering::SeqCst);
    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    r.got.lock().unwrap().push(Received {
        id: h("webhook-id"),
        timestamp: h("webhook-timestamp"),
        signatures: h("webhook-signature").split(' ').map(str::to_owned).collect(),
        body: body.to_vec(),
        custom: headers.get("x-token").map(|v| v.to_str().unwrap().to_owned()),
    });
    if r.gone.load(Ordering::SeqCst) {
        return (StatusCode::GONE, "no such subscription".into());
    }
    let fail = r.fail.load(Ordering::SeqCst);
    if fail > 0 {
        r.fail.store(fail - 1, Ordering::SeqCst);
        return (StatusCode::INTERNAL_SERVER_ERROR, "receiver broke".into());
    }
    (StatusCode::NO_CONTENT, String::new())
}

/// The Standard Webhooks check, written from the specification.
fn verifies(secret: &str, r: &Received) -> bool {
    let key = STANDARD.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", r.id, r.timestamp).as_bytes());
    mac.update(&r.body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    r.signatures.contains(&expected)
}

fn body(r: &Received) -> Value {
    serde_json::from_slice(&r.body).unwrap()
}

const PRIVATE_OK: (&str, &str) = ("ZAPGATE_WEBHOOK_ALLOW_PRIVATE", "true");

async fn webhook(s: &Server, token: &str, spec: Value) -> (String, String) {
    let r = s.post(token, "/v1/webhooks", &spec).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let v: Value = r.json().await.unwrap();
    (v["id"].as_str().unwrap().to_owned(), v["secret"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn status_changes_reach_the_webhook_signed_per_standard_webhooks() {
    let s = Server::start(&[PRIVATE_OK]).await;
    let (rx, url) = Receiver::start().await;
    let (token, ins) = s.tenant_with_instance("acme", 80).await;
    let (_, secret) = webhook(&s, &token, json!({"url": url, "headers": {"X-Token": "t0k"}})).await;
    let id = s.send_text(&token, &ins, "+5511999998888", "hook me").await;
    let mut got = rx.wait_for(3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got_all = rx.got();
    assert_eq!(got_all.len(), 3, "only public statuses by default: {:?}", got_all.iter().map(body).collect::<Vec<_>>());
    got.sort_by_key(|r| body(r)["data"]["seq"].as_i64().unwrap());
    let statuses: Vec<String> = got.iter().map(|r| body(r)["data"]["status"].as_str().unwrap().to_owned()).collect();
    assert_eq!(statuses, ["sent", "delivered", "read"]);
    let m = s.message(&token, &id).await;
    for r in &got {
        assert!(verifies(&secret, r), "signature does not verify: {r:?}");
        let b = body(r);
        assert_eq!(b["type"], "message.status");
        assert_eq!(b["data"]["message_id"], id.as_str());
        assert_eq!(r.custom.as_deref(), Some("t0k"), "custom headers are sent");
        // webhook-id is the event id from the message's history.
        assert!(m["history"].as_array().unwrap().iter().any(|e| e["id"] == r.id.as_str()));
    }
}

#[tokio::test]
async fn internal_steps_only_when_asked_for() {
    let s = Server::start(&[PRIVATE_OK]).await;
    let (rx, url) = Receiver::start().await;
    let (token, ins) = s.tenant_with_instance("acme", 80).await;
    webhook(&s, &token, json!({"url": url, "include_internal": true})).await;
    s.send_text(&token, &ins, "+5511999998888", "all of it").await;
    let got = rx.wait_for(5).await;
    // Deliveries run concurrently and may arrive out of order; `seq` restores it.
    let mut events: Vec<Value> = got.iter().map(|r| body(r)["data"].clone()).collect();
    events.sort_by_key(|e| e["seq"].as_i64().unwrap());
    let statuses: Vec<&str> = events.iter().map(|e| e["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["queued", "sending", "sent", "delivered", "read"]);
}

#[tokio::test]
async fn a_failing_receiver_is_retried_with_one_webhook_id_then_dead_then_replayed() {
    let s = Server::start(&[PRIVATE_OK, ("ZAPGATE_WEBHOOK_RETRY_SCHEDULE", "100ms,200ms")]).await;
    let (rx, url) = Receiver::start().await;
    rx.fail.store(3, Ordering::SeqCst);
    let (token, ins) = s.tenant_with_instance("acme", 80).await;
    // The tenant's failure URL: an endpoint subscribed to failed deliveries.
    let (failures, failure_url) = Receiver::start().await;
    webhook(&s, &token, json!({"url": failure_url, "event_types": ["webhook.delivery_failed"]})).await;
    // Only the failure path's one event: the sandbox rejects this number.
    let (hook, _) = webhook(&s, &token, json!({"url": url, "event_types": ["message.status"]})).await;
    s.send_text(&token, &ins, "+15550110000", "x").await;
    let got = rx.wait_for(3).await;
    assert!(got.iter().all(|r| r.id == got[0].id), "every attempt carries the same webhook-id");
    let list: Value = s.get(&token, &format!("/v1/webhooks/{hook}/deliveries")).await.json().await.unwrap();
    let mut delivery = list["data"][0].clone();
    for _ in 0..100 {
        if delivery["status"] == "dead" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let list: Value = s.get(&token, &format!("/v1/webhooks/{hook}/deliveries")).await.json().await.unwrap();
        delivery = list["data"][0].clone();
    }
    assert_eq!(delivery["status"], "dead", "{delivery}");
    assert_eq!(delivery["attempts"], 3, "first try + the schedule's two retries");
    let did = delivery["id"].as_str().unwrap();
    let detail: Value = s.get(&token, &format!("/v1/deliveries/{did}")).await.json().await.unwrap();
    let codes: Vec<i64> =
        detail["attempt_history"].as_array().unwrap().iter().map(|a| a["status_code"].as_i64().unwrap()).collect();
    assert_eq!(codes, [500, 500, 500]);
    let notices = failures.wait_for(1).await;
    let notice = body(&notices[0]);
    assert_eq!(notice["type"], "webhook.delivery_failed");
    assert_eq!(notice["data"]["delivery_id"], did);
    assert_eq!(notice["data"]["endpoint_id"], hook.as_str());
    assert_eq!(notice["data"]["failed_event_id"], got[0].id.as_str());
    assert_eq!(notice["data"]["status_code"], 500);

    // The receiver is fixed: replay sends the same event id once more.
    let r = s.post(&token, &format!("/v1/deliveries/{did}/replay"), &json!({})).await;
    assert_eq!(r.status(), 202);
    let got = rx.wait_for(4).await;
    assert_eq!(got[3].id, got[0].id);
    for _ in 0..100 {
        let d: Value = s.get(&token, &format!("/v1/deliveries/{did}")).await.json().await.unwrap();
        if d["status"] == "succeeded" {
            assert_eq!(d["attempts"], 4);
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the replay never succeeded");
}

#[tokio::test]
async fn rotating_the_secret_signs_with_both_during_the_grace_period() {
    let s = Server::start(&[PRIVATE_OK]).await;
    let (rx, url) = Receiver::start().await;
    let (token, ins) = s.tenant_with_instance("acme", 80).await;
    let (hook, old) = webhook(&s, &token, json!({"url": url})).await;
    let r = s.post(&token, &format!("/v1/webhooks/{hook}/rotate-secret"), &json!({})).await;
    let new = r.json::<Value>().await.unwrap()["secret"].as_str().unwrap().to_owned();
    assert_ne!(old, new);
    let shown: Value = s.get(&token, &format!("/v1/webhooks/{hook}/secret")).await.json().await.unwrap();
    assert_eq!(shown["secret"], new.as_str());
    s.send_text(&token, &ins, "+15550110000", "x").await;
    let got = rx.wait_for(1).await;
    assert_eq!(got[0].signatures.len(), 2);
    assert!(verifies(&old, &got[0]) && verifies(&new, &got[0]));
}

#[tokio::test]
async fn internal_addresses_are_refused_by_default_and_tenants_are_isolated() {
    let s = Server::start(&[]).await;
    let (a, _) = s.tenant_with_instance("a", 80).await;
    let (b, _) = s.tenant_with_instance("b", 80).await;
    for url in ["http://127.0.0.1:9/hook", "http://localhost/hook", "http://169.254.169.254/x", "ftp://example.com"] {
        let r = s.post(&a, "/v1/webhooks", &json!({"url": url})).await;
        assert_eq!(r.status(), 422, "{url}");
        assert_eq!(r.json::<Value>().await.unwrap()["error"]["details"]["field"], "url");
    }
    let r = s.post(&a, "/v1/webhooks", &json!({"url": "https://example.com/hook", "event_types": ["nope"]})).await;
    assert_eq!(r.status(), 422);
    let (hook, _) = webhook(&s, &a, json!({"url": "https://example.com/hook"})).await;
    assert_eq!(s.get(&b, &format!("/v1/webhooks/{hook}")).await.status(), 404);
    let r = s.http.delete(s.url(&format!("/v1/webhooks/{hook}"))).bearer_auth(&b).send().await.unwrap();
    assert_eq!(r.status(), 404, "another tenant cannot delete it");
    assert_eq!(s.get(&a, &format!("/v1/webhooks/{hook}")).await.status(), 200);
    assert_eq!(s.get(&b, &format!("/v1/webhooks/{hook}/secret")).await.status(), 404);
    let list: Value = s.get(&b, "/v1/webhooks").await.json().await.unwrap();
    assert!(list["data"].as_array().unwrap().is_empty());
    let r = s.http.delete(s.url(&format!("/v1/webhooks/{hook}"))).bearer_auth(&a).send().await.unwrap();
    assert_eq!(r.status(), 204);
}

#[tokio::test]
async fn a_redirect_is_a_failed_attempt_not_followed() {
    let s = Server::start(&[PRIVATE_OK, ("ZAPGATE_WEBHOOK_RETRY_SCHEDULE", "10m")]).await;
    let (rx, url) = Receiver::start().await;
    let (token, ins) = s.tenant_with_instance("acme", 80).await;
    let (hook, _) = webhook(&s, &token, json!({"url": url.replace("/hook", "/moved")})).await;
    s.send_text(&token, &ins, "+15550110000", "x").await;
    for _ in 0..100 {
        let list: Value = s.get(&token, &format!("/v1/webhooks/{hook}/deliveries")).await.json().await.unwrap();
        if list["data"][0]["attempts"] == 1 {
            assert_eq!(list["data"][0]["last_status_code"], 307);
            assert_eq!(list["data"][0]["status"], "pending", "retried later, per the schedule");
            assert!(rx.got().is_empty(), "the redirect target was never called");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no attempt recorded");
}

/// Polls a webhook's deliveries until `done` holds for the list.
async fn deliveries_until(s: &Server, token: &str, hook: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let mut data = Vec::new();
    for _ in 0..200 {
        let list: Value = s.get(token, &format!("/v1/webhooks/{hook}/deliveries")).await.json().await.unwrap();
        data = list["data"].as_array().unwrap().clone();
        if done(&data) {
            return data;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the deliveries never got there: {data:?}");
}

#[tokio::test]
async fn a_slow_receiver_gets_at_most_its_concurrency_and_does_not_delay_others() {
    let s = Server::start(&[PRIVATE_OK, ("ZAPGATE_WEBHOOK_ENDPOINT_CONCURRENCY", "2")]).await;
    let (slow, slow_url) = Receiver::start().await;
    slow.hold_ms.store(400, Ordering::SeqCst);
    let (fast, fast_url) = Receiver::start().await;
    let (token, ins) = s.tenant_with_instance("acme", 80).await;
    webhook(&s, &token, json!({"url": slow_url})).await;
    webhook(&s, &token, json!({"url": fast_url})).await;
    for n in 0..5 {
        s.send_text(&token, &ins, &format!("+551199999{n:04}"), "x").await;
    }
    // 15 statuses (sent, delivered, read of 5 messages) to each receiver.
    fast.wait_for(15).await;
    let slow_so_far = slow.got().len();
    assert!(slow_so_far < 15, "the fast receiver was not held up behind the slow one ({slow_so_far} slow ones done)");
    slow.wait_for(15).await;
    assert_eq!(slow.max_in_flight.load(Ordering::SeqCst), 2, "two requests in flight at most, and used");
    assert!(fast.max_in_flight.load(Ordering::SeqCst) <= 2);
}

#[tokio::test]
async fn a_receiver_answering_gone_has_its_webhook_disabled_until_enabled_again() {
    let s = Server::start(&[PRIVATE_OK, ("ZAPGATE_WEBHOOK_ENDPOINT_CONCURRENCY", "1")]).await;
    let (rx, url) = Receiver::start().await;
    rx.gone.store(true, Ordering::SeqCst);
    let (token, ins) = s.tenant_with_instance("acme", 80).await;
    let (hook, _) = webhook(&s, &token, json!({"url": url})).await;
    s.send_text(&token, &ins, "+5511999998888", "x").await;
    let data = deliveries_until(&s, &token, &hook, |d| d.iter().any(|d| d["status"] == "dead")).await;
    let dead = data.iter().find(|d| d["status"] == "dead").unwrap();
    assert_eq!(dead["last_status_code"], 410);
    let detail: Value =
        s.get(&token, &format!("/v1/deliveries/{}", dead["id"].as_str().unwrap())).await.json().await.unwrap();
    assert_eq!(detail["attempt_history"][0]["response"], "no such subscription", "the answer's start is kept");
    let endpoint: Value = s.get(&token, &format!("/v1/webhooks/{hook}")).await.json().await.unwrap();
    assert_eq!(endpoint["enabled"], false, "410 Gone disables the webhook");
    // Nothing more goes to a disabled webhook: statuses already queued for
    // it wait, later ones are not queued for it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.got().len(), 1, "nothing more is sent to a disabled webhook");
    let parked = deliveries_until(&s, &token, &hook, |_| true).await;
    assert!(parked.iter().all(|d| d["status"] != "succeeded"), "{parked:?}");

    rx.gone.store(false, Ordering::SeqCst);
    let r = s
        .http
        .patch(s.url(&format!("/v1/webhooks/{hook}")))
        .bearer_auth(&token)
        .json(&json!({"enabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = s.send_text(&token, &ins, "+5511999997777", "after").await;
    for _ in 0..200 {
        let arrived = rx.got().iter().filter(|r| body(r)["data"]["message_id"] == id.as_str()).count();
        if arrived == 3 {
            let pending = parked.iter().filter(|d| d["status"] == "pending").count();
            rx.wait_for(1 + pending + 3).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the enabled webhook did not get the new message's statuses");
}

#[tokio::test]
async fn dead_deliveries_since_a_time_are_replayed_together() {
    let s = Server::start(&[PRIVATE_OK, ("ZAPGATE_WEBHOOK_RETRY_SCHEDULE", "50ms")]).await;
    let (rx, url) = Receiver::start().await;
    rx.fail.store(u32::MAX, Ordering::SeqCst);
    let (token, ins) = s.tenant_with_instance("acme", 80).await;
    let (hook, _) = webhook(&s, &token, json!({"url": url, "event_types": ["message.status"]})).await;
    let before = zapgate_domain::Timestamp::now().to_rfc3339();
    // The sandbox rejects this number: one `failed` status per message.
    for _ in 0..2 {
        s.send_text(&token, &ins, "+15550110000", "x").await;
    }
    deliveries_until(&s, &token, &hook, |d| d.len() == 2 && d.iter().all(|d| d["status"] == "dead")).await;
    assert_eq!(rx.got().len(), 4, "two attempts each");

    let replay = |since: Value| {
        let (s, token, hook) = (&s, &token, &hook);
        async move { s.post(token, &format!("/v1/webhooks/{hook}/replay"), &json!({"since": since})).await }
    };
    let r = replay(json!("2999-01-01T00:00:00Z")).await;
    assert_eq!((r.status().as_u16(), r.json::<Value>().await.unwrap()["replayed"].clone()), (202, json!(0)));
    assert_eq!(replay(json!("yesterday")).await.status(), 422, "not a time");
    let (_, other) = s.tenant("other").await;
    let r = s.post(&other, &format!("/v1/webhooks/{hook}/replay"), &json!({"since": before})).await;
    assert_eq!(r.status(), 404, "another tenant's webhook");

    rx.fail.store(0, Ordering::SeqCst);
    let r = replay(json!(before)).await;
    assert_eq!((r.status().as_u16(), r.json::<Value>().await.unwrap()["replayed"].clone()), (202, json!(2)));
    let got = rx.wait_for(6).await;
    let mut first_ids: Vec<_> = got[..4].iter().map(|r| r.id.clone()).collect();
    let mut replayed_ids: Vec<_> = got[4..].iter().map(|r| r.id.clone()).collect();
    first_ids.sort();
    first_ids.dedup();
    replayed_ids.sort();
    assert_eq!(replayed_ids, first_ids, "each replay keeps its webhook-id");
    deliveries_until(&s, &token, &hook, |d| d.iter().all(|d| d["status"] == "succeeded")).await;
}

/// An endpoint narrowed to one instance and to failures (an alerting
/// receiver) gets exactly those events; the other instance's and the
/// successful statuses never reach it.
#[tokio::test]
async fn an_endpoint_filtered_by_instance_and_status_gets_only_those_events() {
    let s = Server::start(&[PRIVATE_OK]).await;
    let (token, ins) = s.tenant_with_instance("acme", 100).await;
    let other_ins = s.instance(&token, json!({"name": "second", "rate_limit_per_second": 100})).await;
    let (rx, url) = Receiver::start().await;
    let body = json!({"url": url, "instance_id": ins, "statuses": ["failed"]});
    let r = s.post(&token, "/v1/webhooks", &body).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let created: Value = r.json().await.unwrap();
    assert_eq!((created["instance_id"].as_str(), &created["statuses"]), (Some(ins.as_str()), &json!(["failed"])));
    let bad = json!({"url": url, "statuses": ["exploded"]});
    assert_eq!(s.post(&token, "/v1/webhooks", &bad).await.status(), 422);

    let ok = s.send_text(&token, &ins, "+5511999990001", "fine").await;
    let elsewhere = s.send_text(&token, &other_ins, "+15550110000", "rejected elsewhere").await;
    let rejected = s.send_text(&token, &ins, "+15550110000", "rejected here").await;
    for id in [&ok, &elsewhere, &rejected] {
        s.wait_status(&token, id, &["read", "failed"], Duration::from_secs(20)).await;
    }
    rx.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got: Vec<Value> = rx.got().iter().map(|r| serde_json::from_slice(&r.body).unwrap()).collect();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0]["data"]["message_id"].as_str(), got[0]["data"]["status"].as_str()),
        (Some(rejected.as_str()), Some("failed"))
    );
}
