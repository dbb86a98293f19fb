//! Fault injection rules, flapping health and counters, over real HTTP.

use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zapgate_sim::hooks::{Hook, Signing};
use zapgate_sim::{Fault, FaultRule, Latency, Provider, RouteKind, Sim};

async fn sim() -> (String, Arc<Sim>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (addr, sim) = zapgate_sim::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    (format!("http://{addr}"), sim)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

/// Status, `Retry-After` and JSON body of a response.
async fn parts(res: reqwest::Response) -> (u16, Option<String>, Value) {
    let status = res.status().as_u16();
    let retry = res.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    (status, retry, res.json().await.unwrap_or(Value::Null))
}

async fn waha_send(base: &str, to: &str, text: &str) -> reqwest::Response {
    client()
        .post(format!("{base}/api/sendText"))
        .header("x-api-key", "k")
        .json(&json!({"session": "default", "chatId": to, "text": text}))
        .send()
        .await
        .unwrap()
}

async fn cloud_send(base: &str, to: &str, text: &str, reference: Option<&str>) -> reqwest::Response {
    let mut body = json!({"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": text}});
    if let Some(r) = reference {
        body["biz_opaque_callback_data"] = json!(r);
    }
    client().post(format!("{base}/v21.0/1065/messages")).bearer_auth("t").json(&body).send().await.unwrap()
}

async fn evolution_send(base: &str, instance: &str) -> Result<reqwest::Response, reqwest::Error> {
    client()
        .post(format!("{base}/message/sendText/{instance}"))
        .header("apikey", "k")
        .json(&json!({"number": "5511999990000", "text": "oi"}))
        .send()
        .await
}

async fn waha_status(base: &str) -> String {
    let res = client().get(format!("{base}/api/sessions/default")).send().await.unwrap();
    res.json::<Value>().await.unwrap()["status"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_error_rate_one_rule_fails_every_send_of_its_provider_and_nothing_else() {
    let (base, sim) = sim().await;
    sim.add_evolution_instance("i1");
    let res = client()
        .post(format!("{base}/_sim/faults/rules"))
        .json(&json!({"route": "send", "provider": "waha", "error_rate": 1.0, "status": 500}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    for _ in 0..5 {
        let (status, _, body) = parts(waha_send(&base, "5511999990000@c.us", "hi").await).await;
        assert_eq!(status, 500);
        assert_eq!(body["statusCode"], 500, "WAHA's error shape: {body}");
    }
    assert_eq!(parts(cloud_send(&base, "5511999990000", "hi", None).await).await.0, 200);
    assert_eq!(evolution_send(&base, "i1").await.unwrap().status(), 201);
    assert_eq!(waha_status(&base).await, "WORKING", "a send rule leaves the status route alone");
    let rules = sim.rules();
    assert_eq!((rules.len(), rules[0].hits), (1, 5));
    // The faulted sends were received all the same.
    assert_eq!(sim.received().iter().filter(|r| r.provider == "waha").count(), 5);
}

#[tokio::test]
async fn a_rule_with_a_count_expires_after_that_many_hits() {
    let (base, sim) = sim().await;
    sim.add_rule(FaultRule { provider: Provider::Cloud, status: Some(503), count: Some(2), ..Default::default() });
    assert_eq!(sim.rules()[0].remaining, Some(2));
    assert_eq!(parts(cloud_send(&base, "1", "a", None).await).await.0, 503);
    let listed: Value = client().get(format!("{base}/_sim/faults/rules")).send().await.unwrap().json().await.unwrap();
    assert_eq!((listed[0]["hits"].as_u64(), listed[0]["remaining"].as_u64()), (Some(1), Some(1)));
    assert_eq!(parts(cloud_send(&base, "1", "a", None).await).await.0, 503);
    assert_eq!(parts(cloud_send(&base, "1", "a", None).await).await.0, 200);
    assert!(sim.rules().is_empty(), "the expired rule is gone");
}

#[tokio::test]
async fn a_latency_rule_delays_answers_by_at_least_its_min() {
    let (base, sim) = sim().await;
    sim.add_uazapi_instance("tok");
    let status = || client().get(format!("{base}/instance/status")).header("token", "tok").send();
    sim.add_rule(FaultRule {
        route: RouteKind::Status,
        provider: Provider::Uazapi,
        latency_ms: Some(Latency { min: 200, max: 250 }),
        ..Default::default()
    });
    for _ in 0..3 {
        let t = Instant::now();
        let res = status().await.unwrap();
        let took = t.elapsed();
        assert_eq!(res.status(), 200, "a latency rule only delays");
        assert!(took >= Duration::from_millis(200), "answered after {took:?}");
    }
    sim.clear_rules();
    let t = Instant::now();
    assert_eq!(status().await.unwrap().status(), 200);
    assert!(t.elapsed() < Duration::from_millis(200), "no delay without the rule: {:?}", t.elapsed());
}

#[tokio::test]
async fn a_429_rule_sends_retry_after_in_the_providers_shape() {
    let (base, sim) = sim().await;
    let rule = json!([{"provider": "cloud", "route": "send", "status": 429, "code": 130429, "retry_after": 2},
                      {"provider": "uazapi", "status": 429, "retry_after": 7, "message": "slow down"}]);
    let res = client().post(format!("{base}/_sim/faults/rules")).json(&rule).send().await.unwrap();
    assert_eq!(res.status(), 201);
    let (status, retry, body) = parts(cloud_send(&base, "1", "a", None).await).await;
    assert_eq!((status, retry.as_deref()), (429, Some("2")));
    assert_eq!(body["error"]["code"], 130429, "{body}");
    sim.add_uazapi_instance("tok");
    let res = client().get(format!("{base}/instance/status")).header("token", "tok").send().await.unwrap();
    let (status, retry, body) = parts(res).await;
    assert_eq!((status, retry.as_deref(), &body), (429, Some("7"), &json!({"error": "slow down"})));
}

#[tokio::test]
async fn counters_count_sends_and_duplicates() {
    let (base, sim) = sim().await;
    assert_eq!(parts(waha_send(&base, "5511@c.us", "hi").await).await.0, 201);
    assert_eq!(parts(waha_send(&base, "5511@c.us", "hi").await).await.0, 201, "the same message again");
    assert_eq!(parts(waha_send(&base, "5511@c.us", "bye").await).await.0, 201);
    // Same text and recipient, different client references: two messages.
    assert_eq!(parts(cloud_send(&base, "5522", "x", Some("msg_a")).await).await.0, 200);
    assert_eq!(parts(cloud_send(&base, "5522", "x", Some("msg_b")).await).await.0, 200);
    // A send a rule refused was not sent.
    sim.add_rule(FaultRule { provider: Provider::Cloud, status: Some(500), count: Some(1), ..Default::default() });
    assert_eq!(parts(cloud_send(&base, "5522", "x", Some("msg_a")).await).await.0, 500);
    // Nor one the one-shot queue refused.
    sim.push_faults([Fault { status: 502, code: 0, message: None, retry_after: None }]);
    assert_eq!(parts(waha_send(&base, "5511@c.us", "hi").await).await.0, 502);

    let c = sim.counters();
    assert_eq!((c.attempts, c.sends, c.unique, c.duplicates), (7, 5, 4, 1));
    let hi = c.by_content.iter().find(|e| e.key.text == "hi").unwrap();
    assert_eq!(
        (hi.key.provider, hi.key.instance.as_str(), hi.key.to.as_str(), hi.count),
        ("waha", "default", "5511@c.us", 2)
    );
    assert_eq!(c.by_message_id.len(), 5);
    assert!(c.by_message_id.keys().any(|id| id.starts_with("wamid.")));
    let waha = &c.by_route["waha POST /api/{route}"];
    assert_eq!((waha.requests, waha.ok, waha.failed, waha.faulted), (4, 3, 1, 0));
    let cloud = &c.by_route["cloud POST /{version}/{phone_number_id}/messages"];
    assert_eq!((cloud.requests, cloud.ok, cloud.failed, cloud.faulted), (3, 2, 1, 1));

    let http: Value = client().get(format!("{base}/_sim/counters")).send().await.unwrap().json().await.unwrap();
    assert_eq!((&http["sends"], &http["unique"], &http["duplicates"]), (&json!(5), &json!(4), &json!(1)));
    assert_eq!(http, serde_json::to_value(&c).unwrap());
    let res = client().post(format!("{base}/_sim/counters/reset")).send().await.unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(sim.counters(), zapgate_sim::Counters::default());
}

#[tokio::test]
async fn clearing_the_rules_restores_normal_answers() {
    let (base, sim) = sim().await;
    sim.add_rule(FaultRule { status: Some(500), ..Default::default() });
    assert_eq!(parts(waha_send(&base, "1@c.us", "a").await).await.0, 500);
    assert_eq!(parts(cloud_send(&base, "1", "a", None).await).await.0, 500);
    assert_eq!(client().get(format!("{base}/api/sessions/default")).send().await.unwrap().status(), 500);
    let res = client().delete(format!("{base}/_sim/faults/rules")).send().await.unwrap();
    assert_eq!(res.status(), 204);
    let listed: Value = client().get(format!("{base}/_sim/faults/rules")).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed, json!([]));
    assert_eq!(parts(waha_send(&base, "1@c.us", "a").await).await.0, 201);
    assert_eq!(parts(cloud_send(&base, "1", "a", None).await).await.0, 200);
    assert_eq!(waha_status(&base).await, "WORKING");
}

#[tokio::test]
async fn bad_rules_are_refused() {
    let (base, sim) = sim().await;
    for bad in [
        json!({"error_rate": 2.0, "status": 500}),
        json!({"status": 700}),
        json!({"provider": "twilio"}),
        json!({"latency_ms": {"min": 9, "max": 1}}),
    ] {
        let res = client().post(format!("{base}/_sim/faults/rules")).json(&bad).send().await.unwrap();
        assert_eq!(res.status(), 400, "{bad}");
    }
    assert!(sim.rules().is_empty());
}

#[tokio::test]
async fn a_reset_rule_closes_the_connection_without_an_answer() {
    let (base, sim) = sim().await;
    sim.add_evolution_instance("i1");
    sim.add_rule(FaultRule { provider: Provider::Evolution, reset: true, count: Some(1), ..Default::default() });
    let t = Instant::now();
    let err = evolution_send(&base, "i1").await.expect_err("no answer");
    assert!(!err.is_timeout() && err.status().is_none(), "{err:?}");
    // A true TCP reset: the client's read fails with ECONNRESET.
    let mut source: Option<&dyn std::error::Error> = Some(&err);
    let mut reset = false;
    while let Some(e) = source {
        reset |= e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionReset);
        source = e.source();
    }
    assert!(reset, "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(evolution_send(&base, "i1").await.unwrap().status(), 201, "the next connection is answered");
}

#[tokio::test]
async fn a_timeout_rule_hangs_until_the_client_gives_up() {
    let (base, sim) = sim().await;
    sim.add_rule(FaultRule {
        route: RouteKind::Session,
        provider: Provider::Waha,
        timeout: true,
        ..Default::default()
    });
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    let res = impatient.post(format!("{base}/api/sessions")).json(&json!({"name": "s1"})).send().await;
    assert!(res.expect_err("no answer in time").is_timeout());
    assert_eq!(waha_status(&base).await, "WORKING", "status routes are not sessions routes");
}

#[tokio::test]
async fn a_timeout_rule_answers_504_after_its_timeout_ms() {
    let (base, sim) = sim().await;
    sim.add_rule(FaultRule { provider: Provider::Cloud, timeout: true, timeout_ms: Some(150), ..Default::default() });
    let t = Instant::now();
    assert_eq!(parts(cloud_send(&base, "1", "a", None).await).await.0, 504);
    assert!(t.elapsed() >= Duration::from_millis(150));
}

/// A webhook receiver keeping the bodies it is sent.
async fn hook_receiver() -> (Hook, Arc<Mutex<Vec<Value>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let keep = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let keep = keep.clone();
            async move {
                keep.lock().unwrap().push(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (Hook { url: format!("http://{addr}/hook"), signing: Signing::None, headers: vec![] }, got)
}

/// The run lengths of `seen` with equal neighbours merged.
fn changes(seen: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in seen {
        if out.last() != Some(s) {
            out.push(s.clone());
        }
    }
    out
}

#[tokio::test]
async fn flapping_alternates_the_status_answer_and_posts_the_changes() {
    let (base, sim) = sim().await;
    let (hook, got) = hook_receiver().await;
    assert!(sim.set_waha_hook("default", Some(hook)));
    let res = client()
        .post(format!("{base}/_sim/flap"))
        .json(&json!({"instance": "default", "period_ms": 150}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let listed: Value = client().get(format!("{base}/_sim/flap")).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed, json!(["default"]));
    let mut seen = Vec::new();
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(1000) {
        seen.push(waha_status(&base).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let runs = changes(&seen);
    assert!(runs.len() >= 4, "{runs:?}");
    assert_eq!(runs[0], "WORKING");
    for pair in runs.windows(2) {
        assert!(
            matches!((pair[0].as_str(), pair[1].as_str()), ("WORKING", "STOPPED") | ("STOPPED", "WORKING")),
            "{runs:?}"
        );
    }
    // Each change was posted as session.status.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let posted: Vec<String> = got
        .lock()
        .unwrap()
        .iter()
        .filter(|b| b["event"] == "session.status")
        .map(|b| b["payload"]["status"].as_str().unwrap().to_owned())
        .collect();
    assert!(posted.len() >= 3 && changes(&posted) == posted, "{posted:?}");

    let res = client().delete(format!("{base}/_sim/flap/default")).send().await.unwrap();
    assert_eq!(res.status(), 204);
    for _ in 0..10 {
        assert_eq!(waha_status(&base).await, "WORKING", "stopped flapping, connected");
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert_eq!(client().delete(format!("{base}/_sim/flap/default")).send().await.unwrap().status(), 404);
}

#[tokio::test]
async fn flapping_works_for_evolution_and_uazapi_and_unknown_instances_are_refused() {
    let (base, sim) = sim().await;
    sim.add_evolution_instance("i1");
    sim.add_uazapi_instance("tok");
    assert!(sim.flap("i1", Duration::from_millis(100)));
    assert!(sim.flap("existing", Duration::from_millis(100)), "UAZAPI by name");
    assert!(!sim.flap("nope", Duration::from_millis(100)));
    let res =
        client().post(format!("{base}/_sim/flap")).json(&json!({"instance": "nope", "period_ms": 100})).send().await;
    assert_eq!(res.unwrap().status(), 404);
    let (mut evolution, mut uazapi) = (Vec::new(), Vec::new());
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(700) {
        let res = client().get(format!("{base}/instance/connectionState/i1")).header("apikey", "k").send().await;
        let body: Value = res.unwrap().json().await.unwrap();
        evolution.push(body["instance"]["state"].as_str().unwrap().to_owned());
        let res = client().get(format!("{base}/instance/status")).header("token", "tok").send().await;
        let body: Value = res.unwrap().json().await.unwrap();
        uazapi.push(body["status"]["connected"].to_string());
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let (evolution, uazapi) = (changes(&evolution), changes(&uazapi));
    assert!(evolution.len() >= 4 && evolution[..2] == ["open", "close"], "{evolution:?}");
    assert!(uazapi.len() >= 4 && uazapi[..2] == ["true", "false"], "{uazapi:?}");
    sim.stop_flaps();
    assert!(sim.flapping().is_empty());
    assert_eq!(evolution_send(&base, "i1").await.unwrap().status(), 201, "left connected");
}

#[tokio::test]
async fn one_shot_faults_still_answer_the_next_sends() {
    let (base, sim) = sim().await;
    sim.push_faults([Fault { status: 400, code: 131026, message: None, retry_after: None }]);
    let (status, _, body) = parts(cloud_send(&base, "1", "a", None).await).await;
    assert_eq!((status, &body["error"]["code"]), (400, &json!(131026)));
    assert_eq!(parts(cloud_send(&base, "1", "a", None).await).await.0, 200);
}
