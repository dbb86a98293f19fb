//! Campaigns: CSV import (streamed, deduplicated, bad rows reported), the
//! paced release with pause/resume/cancel, exact counts, priorities, and a
//! releaser crash, in both modes.

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn setup(s: &Server, rate: u32) -> (String, String, String) {
    let (token, ins) = s.tenant_with_instance("acme", rate).await;
    let r = s.post(&token, "/v1/templates", &json!({"name": "promo", "body": "Oi {{name}}, {{offer}}"})).await;
    assert_eq!(r.status(), 201);
    let tpl: Value = r.json().await.unwrap();
    (token, ins, tpl["id"].as_str().unwrap().to_owned())
}

async fn create(s: &Server, token: &str, body: Value) -> Value {
    let r = s.post(token, "/v1/campaigns", &body).await;
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{v:#}");
    v
}

async fn upload(s: &Server, token: &str, id: &str, csv: String) -> reqwest::Response {
    s.http
        .post(s.url(&format!("/v1/campaigns/{id}/recipients")))
        .bearer_auth(token)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap()
}

async fn action(s: &Server, token: &str, id: &str, verb: &str) -> Value {
    let r = s.post(token, &format!("/v1/campaigns/{id}/{verb}"), &json!({})).await;
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{verb}: {v:#}");
    v
}

async fn campaign(s: &Server, token: &str, id: &str) -> Value {
    s.get(token, &format!("/v1/campaigns/{id}")).await.json().await.unwrap()
}

async fn wait_campaign(s: &Server, token: &str, id: &str, done: impl Fn(&Value) -> bool, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let c = campaign(s, token, id).await;
        if done(&c) {
            return c;
        }
        if Instant::now() >= deadline {
            let stuck: Value = s.get(token, "/v1/messages?status=queued&limit=3").await.json().await.unwrap();
            let first = stuck["data"][0]["id"].as_str().map(str::to_owned).unwrap_or_default();
            let m = if first.is_empty() { Value::Null } else { s.message(token, &first).await };
            panic!("campaign never got there: {c:#}\nqueued: {m:#}\n{}", s.logs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `n` data rows: every 97th is a bad number, every 101st repeats the row
/// before it. Returns (csv, valid unique recipients, duplicates, invalid).
fn recipients_csv(n: usize) -> (String, usize, usize, usize) {
    let mut csv = String::from("phone;name;offer\n");
    let (mut unique, mut dups, mut bad) = (0, 0, 0);
    let mut last = String::new();
    for i in 1..=n {
        if i % 97 == 0 {
            csv.push_str(&format!("not-a-number-{i};N{i};x\n"));
            bad += 1;
        } else if i % 101 == 0 && !last.is_empty() {
            csv.push_str(&format!("{last};again;x\n"));
            dups += 1;
        } else {
            last = format!("+55119{i:08}");
            csv.push_str(&format!("{last};N{i};\"10% off, today\"\n"));
            unique += 1;
        }
    }
    (csv, unique, dups, bad)
}

/// The 100 000 recipients (scaled by ZAPGATE_TEST_SCALE): every
/// valid recipient gets exactly one message, duplicates and bad rows are
/// counted, and pausing stops the release until resumed.
#[tokio::test]
async fn a_large_campaign_completes_with_exact_counts_and_pauses_on_request() {
    let n = scaled(if distributed() { 20_000 } else { 100_000 });
    let s = Server::start(&[("ZAPGATE_SANDBOX_DELIVERED_AFTER", "0ms"), ("ZAPGATE_TENANT_RATE_LIMIT", "0")]).await;
    let (token, ins, tpl) = setup(&s, 20_000).await;
    let c = create(&s, &token, json!({"name": "black friday", "instance_id": ins, "template_id": tpl})).await;
    let id = c["id"].as_str().unwrap().to_owned();
    assert_eq!(c["state"], "draft");
    let (csv, unique, dups, bad) = recipients_csv(n);
    let r = upload(&s, &token, &id, csv).await;
    assert_eq!(r.status(), 200);
    let added: Value = r.json().await.unwrap();
    assert_eq!(
        (added["rows"].as_u64(), added["added"].as_u64(), added["duplicates"].as_u64(), added["invalid"].as_u64()),
        (Some(n as u64), Some(unique as u64), Some(dups as u64), Some(bad as u64)),
        "{added:#}"
    );
    assert_eq!(added["rejects"][0]["row"], 97);
    assert_eq!(added["rejects"][0]["field"], "to");
    let rejects: Value = s.get(&token, &format!("/v1/campaigns/{id}/rejects?limit=1000")).await.json().await.unwrap();
    assert_eq!(rejects["data"].as_array().unwrap().len(), bad.min(1000));

    action(&s, &token, &id, "start").await;
    // Let some go, then pause: the release stops and what was queued drains.
    wait_campaign(&s, &token, &id, |c| c["progress"]["sent"].as_u64() > Some(1000), Duration::from_secs(60)).await;
    let paused = action(&s, &token, &id, "pause").await;
    assert_eq!(paused["state"], "paused");
    let drained = wait_campaign(&s, &token, &id, |c| c["progress"]["queued"] == 0, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let still = campaign(&s, &token, &id).await;
    assert_eq!(still["released"], drained["released"], "nothing released while paused");
    assert!(still["progress"]["pending"].as_u64().unwrap() > 0, "paused before the end: {still:#}");
    // A draft-only action is refused with the state named.
    let r = upload(&s, &token, &id, "to,name,offer\n+5511900000001,a,b\n".into()).await;
    assert_eq!(r.status(), 409);

    action(&s, &token, &id, "resume").await;
    let done = wait_campaign(&s, &token, &id, |c| c["state"] == "completed", Duration::from_secs(300)).await;
    let p = &done["progress"];
    assert_eq!(done["total"], unique as u64);
    assert_eq!(done["released"], unique as u64);
    assert_eq!((p["pending"].as_u64(), p["queued"].as_u64()), (Some(0), Some(0)), "{done:#}");
    assert_eq!(p["sent"], unique as u64, "{done:#}");
    assert_eq!(p["delivered"], unique as u64, "{done:#}");
    assert_eq!(p["failed"], 0);
    // The provider saw each recipient exactly once.
    let receipts = s.receipts();
    let mut per_to: HashMap<String, usize> = HashMap::new();
    for r in &receipts {
        *per_to.entry(r["to"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    assert_eq!(per_to.len(), unique);
    assert!(per_to.values().all(|&k| k == 1), "a recipient got two messages");
}

/// A one-off `high` message sent while a campaign has a backlog goes out
/// within the campaign's lookahead, ahead of the rest of the backlog.
#[tokio::test]
async fn an_urgent_message_overtakes_a_running_campaign() {
    let s = Server::start(&[("ZAPGATE_TENANT_RATE_LIMIT", "0"), ("ZAPGATE_CAMPAIGN_LOOKAHEAD", "1s")]).await;
    let (token, ins, tpl) = setup(&s, 300).await;
    let (csv, unique, _, _) = recipients_csv(1500);
    let c = create(&s, &token, json!({"name": "slow", "instance_id": ins, "template_id": tpl})).await;
    let id = c["id"].as_str().unwrap().to_owned();
    assert_eq!(upload(&s, &token, &id, csv).await.status(), 200);
    action(&s, &token, &id, "start").await;
    wait_campaign(&s, &token, &id, |c| c["progress"]["sent"].as_u64() > Some(200), Duration::from_secs(30)).await;
    let mut body = text(&ins, "+5511988887777", "your code is 123456");
    body["priority"] = json!("high");
    let accepted = Instant::now();
    let v: Value = s.post(&token, "/v1/messages", &body).await.json().await.unwrap();
    let urgent = v["id"].as_str().unwrap().to_owned();
    s.wait_status(&token, &urgent, &["sent", "delivered", "read"], Duration::from_secs(30)).await;
    let waited = accepted.elapsed();
    let receipts = s.receipts();
    let at = receipts.iter().position(|r| r["message_id"] == urgent.as_str()).unwrap();
    let after = receipts.len() - at - 1;
    let c = campaign(&s, &token, &id).await;
    let left = c["total"].as_u64().unwrap() as usize - c["progress"]["sent"].as_u64().unwrap() as usize;
    assert!(waited < Duration::from_millis(1500), "the urgent message waited {waited:?} (lookahead 1s)");
    assert!(left + after > unique / 2, "it went out ahead of most of the campaign ({left} + {after} left)");
}

#[tokio::test]
async fn bad_campaign_input_gets_clear_errors_and_json_recipients_work() {
    let s = Server::start(&[]).await;
    let (token, ins, tpl) = setup(&s, 80).await;
    let base = json!({"name": "x", "instance_id": ins, "template_id": tpl});
    for (change, field) in [
        (json!({"template_id": "tpl_0193a1b2c3d47e8f9a0b1c2d3e4f5a6b"}), "template_id"),
        (json!({"instance_id": "nope"}), "instance_id"),
        (json!({"rate_per_second": 0}), "rate_per_second"),
        (json!({"name": " "}), "name"),
    ] {
        let mut body = base.clone();
        body.as_object_mut().unwrap().extend(change.as_object().unwrap().clone());
        let r = s.post(&token, "/v1/campaigns", &body).await;
        assert_eq!(r.status(), 422, "{change}");
        assert_eq!(r.json::<Value>().await.unwrap()["error"]["details"]["field"], field);
    }
    // A Cloud API template goes out only from a Cloud API number.
    let cloud = json!({"name": "cloud", "cloud_template": {"name": "hello_world", "language": {"code": "en_US"}}});
    let cloud: Value = s.post(&token, "/v1/templates", &cloud).await.json().await.unwrap();
    let mut body = base.clone();
    body["template_id"] = cloud["id"].clone();
    let r = s.post(&token, "/v1/campaigns", &body).await;
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["details"]["field"], "template_id");
    let c = create(&s, &token, base.clone()).await;
    let id = c["id"].as_str().unwrap();
    // The CSV must name the recipient and every template variable.
    for (csv, message) in
        [("name,offer\nAna,x\n", "recipient column"), ("to,name\n+5511900000001,Ana\n", "offer"), ("", "empty")]
    {
        let r = upload(&s, &token, id, csv.into()).await;
        assert_eq!(r.status(), 422, "{csv:?}");
        let e: Value = r.json().await.unwrap();
        assert!(e["error"]["message"].as_str().unwrap().contains(message), "{e:#}");
    }
    let r = s.http.post(s.url(&format!("/v1/campaigns/{id}/recipients"))).bearer_auth(&token);
    let r = r.header("content-type", "application/xml").body("<x/>").send().await.unwrap();
    assert_eq!(r.status(), 415);
    // Per-row errors, numbered within the upload.
    let r = upload(&s, &token, id, "to,name,offer\n+5511900000001,Ana,x\n12,Bia,y\n+5511900000002,Caio\n".into()).await;
    let added: Value = r.json().await.unwrap();
    assert_eq!(added["added"], 1);
    let rows: Vec<(u64, &str)> = added["rejects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["row"].as_u64().unwrap(), r["field"].as_str().unwrap()))
        .collect();
    assert_eq!(rows, [(2, "to"), (3, "row")]);
    // JSON recipients, started at creation; another tenant sees nothing.
    let c = create(
        &s,
        &token,
        json!({"name": "json", "instance_id": ins, "template_id": tpl, "start": true, "recipients": [
            {"to": "+5511900000011", "variables": {"name": "Ana", "offer": "a"}},
            {"to": "+5511900000011", "variables": {"name": "Ana", "offer": "a"}},
            {"to": "+5511900000012", "variables": {"name": "Bia"}}
        ]}),
    )
    .await;
    assert_eq!(
        (c["state"].as_str(), c["total"].as_u64(), c["duplicates"].as_u64()),
        (Some("running"), Some(1), Some(1))
    );
    assert_eq!(c["invalid"], 1, "a row missing a template variable is refused: {c:#}");
    let cid = c["id"].as_str().unwrap();
    let done = wait_campaign(&s, &token, cid, |c| c["state"] == "completed", Duration::from_secs(30)).await;
    assert_eq!(done["progress"]["sent"], 1);
    let (_, other) = s.tenant("other").await;
    assert_eq!(s.get(&other, &format!("/v1/campaigns/{cid}")).await.status(), 404);
    // Finished campaigns cannot be paused or cancelled.
    let r = s.post(&token, &format!("/v1/campaigns/{cid}/pause"), &json!({})).await;
    assert_eq!(r.status(), 409);
}

/// Cancelling stops the release and cancels what was queued but not sent.
#[tokio::test]
async fn a_cancelled_campaign_sends_nothing_more() {
    let s = Server::start(&[("ZAPGATE_TENANT_RATE_LIMIT", "0")]).await;
    let (token, ins, tpl) = setup(&s, 50).await;
    let (csv, _, _, _) = recipients_csv(2000);
    let c = create(&s, &token, json!({"name": "c", "instance_id": ins, "template_id": tpl})).await;
    let id = c["id"].as_str().unwrap().to_owned();
    assert_eq!(upload(&s, &token, &id, csv).await.status(), 200);
    action(&s, &token, &id, "start").await;
    wait_campaign(&s, &token, &id, |c| c["progress"]["sent"].as_u64() > Some(20), Duration::from_secs(30)).await;
    let cancelled = action(&s, &token, &id, "cancel").await;
    assert_eq!(cancelled["state"], "cancelled");
    // What was queued is cancelled (through RabbitMQ, a message a worker
    // held at the cancel, paced and parked, is cancelled when it is back).
    let c = wait_campaign(&s, &token, &id, |c| c["progress"]["queued"] == 0, Duration::from_secs(30)).await;
    let p = &c["progress"];
    let sent = s.receipts().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.receipts().len(), sent, "nothing is sent after the cancel");
    assert_eq!(
        p["sent"].as_u64().unwrap() + p["cancelled"].as_u64().unwrap() + p["pending"].as_u64().unwrap(),
        c["total"].as_u64().unwrap(),
        "{c:#}"
    );
}

/// The releaser killed after accepting a slice, before moving its cursor:
/// after the restart the campaign completes and nobody gets two messages.
#[tokio::test]
async fn a_releaser_crash_costs_no_duplicate() {
    if distributed() {
        return; // embedded restart path; a distributed releaser's lease passes to another the same way
    }
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let env = [("ZAPGATE_TENANT_RATE_LIMIT", "0"), ("ZAPGATE_CRASH_AT", "campaign_slice_accepted:3")];
    let s = Server::start_in(dir.clone(), &env).await;
    let (token, ins, tpl) = setup(&s, 1000).await;
    let (csv, unique, _, _) = recipients_csv(3000);
    let c = create(&s, &token, json!({"name": "c", "instance_id": ins, "template_id": tpl})).await;
    let id = c["id"].as_str().unwrap().to_owned();
    assert_eq!(upload(&s, &token, &id, csv).await.status(), 200);
    action(&s, &token, &id, "start").await;
    let mut s = s;
    assert!(s.wait_exit(Duration::from_secs(30)).is_some(), "the releaser should crash on its third slice");
    let s = Server::start_in(dir.clone(), &env[..1]).await;
    let done = wait_campaign(&s, &token, &id, |c| c["state"] == "completed", Duration::from_secs(60)).await;
    assert_eq!(done["progress"]["sent"], unique as u64, "{done:#}");
    // One message per recipient: the slice accepted before the crash was
    // replayed, not accepted again. (A send the crash cut between the
    // provider call and its outcome is re-sent under the same message id:
    // the gateway's at-least-once, not a second message.)
    let mut per_to: HashMap<String, HashSet<String>> = HashMap::new();
    for r in s.receipts() {
        let id = r["message_id"].as_str().unwrap().to_owned();
        per_to.entry(r["to"].as_str().unwrap().to_owned()).or_default().insert(id);
    }
    assert_eq!(per_to.len(), unique);
    assert!(per_to.values().all(|ids| ids.len() == 1), "a recipient got two messages");
}

/// `zapgate campaign create --csv … --follow` against a running server:
/// uploads, starts, follows to the end; bad rows are printed.
#[tokio::test]
async fn the_cli_creates_and_follows_a_campaign_from_a_csv_file() {
    let s = Server::start(&[("ZAPGATE_TENANT_RATE_LIMIT", "0")]).await;
    let (token, ins, tpl) = setup(&s, 1000).await;
    let (csv, unique, dups, bad) = recipients_csv(500);
    let file = s.dir.path().join("clientes.csv");
    std::fs::write(&file, csv).unwrap();
    // The server is another process: blocking this test's thread is harmless.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zapgate"))
        .args([
            "campaign",
            "create",
            "--csv",
            file.to_str().unwrap(),
            "--instance",
            &ins,
            "--template",
            &tpl,
            "--follow",
        ])
        .env("ZAPGATE_URL", &s.base)
        .env("ZAPGATE_TOKEN", &token)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let id = stdout.lines().next().unwrap().trim().to_owned();
    assert!(id.starts_with("cmp_"), "{stdout}");
    assert!(stderr.contains(&format!("500 rows: {unique} recipients, {dups} duplicates, {bad} invalid")), "{stderr}");
    assert!(stderr.contains("row 97: \"to\""), "{stderr}");
    let c = campaign(&s, &token, &id).await;
    assert_eq!((c["state"].as_str(), c["name"].as_str()), (Some("completed"), Some("clientes")));
    assert_eq!(c["progress"]["sent"], unique as u64);
    // A wrong token is a clear error, not a panic.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zapgate"))
        .args(["campaign", "status", &id, "--url", &s.base, "--token", "zg_live_wrong"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A campaign's state changes (`campaign.status`) and its progress as it
/// passes each tenth (`campaign.progress`) reach webhooks subscribed to them.
#[tokio::test]
async fn campaign_state_changes_are_webhook_events() {
    let s = Server::start(&[("ZAPGATE_WEBHOOK_ALLOW_PRIVATE", "true")]).await;
    let (token, ins, tpl) = setup(&s, 1000).await;
    let got = Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::Json<Value>| async move {
            sink.lock().unwrap().push(body.0);
            axum::http::StatusCode::NO_CONTENT
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let types = json!(["campaign.status", "campaign.progress"]);
    let r = s.post(&token, "/v1/webhooks", &json!({"url": url, "event_types": types})).await;
    assert_eq!(r.status(), 201);
    let c = create(
        &s,
        &token,
        json!({"name": "events", "instance_id": ins, "template_id": tpl, "start": true, "recipients": [
            {"to": "+5511900000021", "variables": {"name": "Ana", "offer": "a"}},
            {"to": "+5511900000022", "variables": {"name": "Bia", "offer": "b"}}
        ]}),
    )
    .await;
    let id = c["id"].as_str().unwrap();
    wait_campaign(&s, &token, id, |c| c["state"] == "completed", Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.lock().unwrap().len() < 3 {
        assert!(Instant::now() < deadline, "events: {:?}", got.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut events = got.lock().unwrap().clone();
    events.sort_by_key(|e| e["data"]["seq"].as_i64());
    let seen: Vec<(&str, &str, u64, u64)> = events
        .iter()
        .map(|e| {
            let d = &e["data"];
            assert_eq!(d["campaign_id"], id);
            let released = d["released"].as_u64().unwrap();
            assert_eq!(d["progress"]["total"], 2);
            assert_eq!(d["progress"]["pending"].as_u64(), Some(2 - released), "{e:#}");
            (e["type"].as_str().unwrap(), d["campaign_state"].as_str().unwrap(), released, d["total"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("campaign.status", "running", 0, 2),
            ("campaign.progress", "running", 2, 2),
            ("campaign.status", "completed", 2, 2)
        ]
    );
    assert_eq!(events[2]["data"]["progress"]["sent"], 2, "the last event counts every message sent");
}

/// `start_at` holds the release until then, and `rate_per_second` paces a
/// campaign below its instance's rate.
#[tokio::test]
async fn a_campaign_waits_for_its_start_time_and_keeps_to_its_own_rate() {
    let s = Server::start(&[("ZAPGATE_TENANT_RATE_LIMIT", "0"), ("ZAPGATE_CAMPAIGN_LOOKAHEAD", "1s")]).await;
    let (token, ins, tpl) = setup(&s, 1000).await;
    let start_at = zapgate_domain::Timestamp::now().plus_millis(1500);
    let recipients: Vec<Value> =
        (0..30).map(|i| json!({"to": format!("+55119{i:08}"), "variables": {"name": "x", "offer": "y"}})).collect();
    let c = create(
        &s,
        &token,
        json!({"name": "paced", "instance_id": ins, "template_id": tpl, "rate_per_second": 10,
               "start_at": start_at.to_rfc3339(), "start": true, "recipients": recipients}),
    )
    .await;
    assert_eq!((c["state"].as_str(), c["waiting_for_start"].as_bool()), (Some("running"), Some(true)));
    let id = c["id"].as_str().unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(s.receipts().is_empty(), "nothing before start_at");
    wait_campaign(&s, &token, id, |c| c["state"] == "completed", Duration::from_secs(30)).await;
    let times: Vec<i64> = s.receipts().iter().map(|r| r["at_ms"].as_i64().unwrap()).collect();
    assert_eq!(times.len(), 30);
    let (first, last) = (*times.iter().min().unwrap(), *times.iter().max().unwrap());
    assert!(first >= start_at.as_millis(), "the first went out {} ms before start_at", start_at.as_millis() - first);
    // 30 at 10/s, the first second's worth at once: at least two seconds from first to last.
    assert!(last - first >= 1800, "30 messages at 10/s went out in {} ms", last - first);
}
