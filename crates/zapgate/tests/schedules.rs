//! Scheduled messages (`send_at`), audiences and recurring schedules, in
//! both modes. Runs over simulated days set the scheduler's clock through
//! `ZAPGATE_TEST_CLOCK_FILE` (a `test-hooks` build).

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

fn time_in(d: Duration) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap() + d;
    zapgate_domain::Timestamp::from_millis(now.as_millis() as i64).to_rfc3339()
}

async fn created(r: reqwest::Response) -> Value {
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{v:#}");
    v
}

/// A tenant with an instance, a template, and an audience holding `members`.
async fn billing_setup(s: &Server, body: &str, members: Value) -> (String, String, String, String) {
    let (token, ins) = s.tenant_with_instance("acme", 1000).await;
    let tpl = created(s.post(&token, "/v1/templates", &json!({"name": "reminder", "body": body})).await).await;
    let aud = created(s.post(&token, "/v1/audiences", &json!({"name": "customers"})).await).await;
    let aud = aud["id"].as_str().unwrap().to_owned();
    let r = s.post(&token, &format!("/v1/audiences/{aud}/members"), &json!({ "members": members })).await;
    assert_eq!(r.status(), 200);
    let added: Value = r.json().await.unwrap();
    assert_eq!(added["invalid"], json!([]), "{added:#}");
    (token, ins, tpl["id"].as_str().unwrap().to_owned(), aud)
}

fn set_clock(file: &Path, at: &str) {
    // Written aside and renamed over: a scheduler reading the file while it
    // is rewritten in place finds it empty and falls back to the real time.
    let aside = file.with_extension("next");
    std::fs::write(&aside, at).unwrap();
    std::fs::rename(&aside, file).unwrap();
}

/// Waits until the schedule has a finished run for `occurrence`; returns it.
async fn wait_run(s: &Server, token: &str, schedule: &str, occurrence: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let runs: Value = s.get(token, &format!("/v1/schedules/{schedule}/runs")).await.json().await.unwrap();
        let run = runs["data"].as_array().unwrap().iter().find(|r| r["occurrence"] == occurrence);
        if let Some(r) = run.filter(|r| r["status"] != "running") {
            return r.clone();
        }
        assert!(Instant::now() < deadline, "no finished run for {occurrence}: {runs:#}\n{}", s.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every message of the tenant: recipient → texts, oldest first.
async fn texts_by_recipient(s: &Server, token: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut cursor = String::new();
    loop {
        let page: Value = s.get(token, &format!("/v1/messages?limit=500{cursor}")).await.json().await.unwrap();
        for m in page["data"].as_array().unwrap() {
            out.entry(m["to"].as_str().unwrap().to_owned())
                .or_default()
                .push(m["text"]["body"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    for texts in out.values_mut() {
        texts.reverse();
    }
    out
}

#[tokio::test]
async fn a_send_at_message_survives_a_restart_before_it_is_due() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let s = Server::start_in(dir.clone(), &[]).await;
    let (token, ins) = s.tenant_with_instance("acme", 80).await;
    let mut body = text(&ins, "+5511999998888", "after the restart");
    body["send_at"] = json!(time_in(Duration::from_millis(2500)));
    let v: Value = s.post(&token, "/v1/messages", &body).await.json().await.unwrap();
    assert_eq!(v["status"], "scheduled");
    let id = v["id"].as_str().unwrap().to_owned();
    let s = s.restart(&[]).await;
    assert!(s.receipts().is_empty(), "not sent before send_at");
    let m = s.wait_status(&token, &id, &["sent", "delivered", "read"], WAIT).await;
    let sent_at = zapgate_domain::Timestamp::parse_rfc3339(
        m["history"].as_array().unwrap().iter().find(|e| e["status"] == "sending").unwrap()["at"].as_str().unwrap(),
    )
    .unwrap();
    let due = zapgate_domain::Timestamp::parse_rfc3339(body["send_at"].as_str().unwrap()).unwrap();
    assert!(sent_at >= due, "sent at {sent_at:?}, due {due:?}");
    assert_eq!(s.receipts().len(), 1);
}

/// Distributed: two workers and two schedulers; messages with `send_at` are
/// each released (and sent) once.
#[tokio::test]
async fn scheduled_messages_are_released_once_by_several_processes() {
    if !distributed() {
        return;
    }
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let env = [("ZAPGATE_TENANT_RATE_LIMIT", "0")];
    let api = Server::start_role("api", dir.clone(), &env).await;
    let _others = [
        Server::start_role("worker", dir.clone(), &env).await,
        Server::start_role("worker", dir.clone(), &env).await,
        Server::start_role("scheduler", dir.clone(), &env).await,
        Server::start_role("scheduler", dir.clone(), &env).await,
    ];
    let _relays = Server::start_relays(2, dir.clone(), &env).await;
    let (token, ins) = api.tenant_with_instance("acme", 1000).await;
    let at = time_in(Duration::from_millis(2000));
    let mut ids = Vec::new();
    for n in 0..40 {
        let mut body = text(&ins, &format!("+55119999{n:05}"), "at once");
        body["send_at"] = json!(at);
        let v: Value = api.post(&token, "/v1/messages", &body).await.json().await.unwrap();
        assert_eq!(v["status"], "scheduled", "{v:#}");
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        api.wait_status(&token, id, &["sent", "delivered", "read"], WAIT).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let receipts = api.receipts();
    for id in &ids {
        assert_eq!(receipts.iter().filter(|r| r["message_id"] == id.as_str()).count(), 1, "{id} sent once");
    }
}

#[tokio::test]
async fn schedules_and_audiences_refuse_bad_input_with_the_field_named() {
    let s = Server::start(&[]).await;
    let (token, ins, tpl, aud) = billing_setup(&s, "Oi {{name}}", json!([{"to": "+5511999990001"}])).await;
    let base = json!({"name": "daily", "instance_id": ins, "audience_id": aud, "template_id": tpl,
                      "cron": "0 9 * * *", "time_zone": "America/Sao_Paulo"});
    let cases = [
        (json!({"cron": "0 9 * *"}), "cron"),
        (json!({"cron": "0 0 30 2 *"}), "cron"),
        (json!({"time_zone": "Mars/Olympus"}), "time_zone"),
        (json!({"offsets_days": [-3, 0]}), "offsets_days"),
        (json!({"date_field": "due_date", "offsets_days": [0, 0]}), "offsets_days"),
        (json!({"date_field": "due_date", "offsets_days": [999]}), "offsets_days"),
        (json!({"audience_id": "aud_0193a1b2c3d47e8f9a0b1c2d3e4f5a6b"}), "audience_id"),
        (json!({"template_id": "nope"}), "template_id"),
        (json!({"instance_id": "ins_0193a1b2c3d47e8f9a0b1c2d3e4f5a6b"}), "instance_id"),
        (json!({"name": ""}), "name"),
    ];
    for (change, field) in cases {
        let mut body = base.clone();
        body.as_object_mut().unwrap().extend(change.as_object().unwrap().clone());
        let r = s.post(&token, "/v1/schedules", &body).await;
        assert_eq!(r.status(), 422, "{change}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["details"]["field"], field, "{change}: {e:#}");
    }
    // Another tenant's audience is as unknown as a made-up one.
    let (_, other) = s.tenant("other").await;
    let theirs = created(s.post(&other, "/v1/audiences", &json!({"name": "x"})).await).await;
    let mut body = base.clone();
    body["audience_id"] = theirs["id"].clone();
    let r = s.post(&token, "/v1/schedules", &body).await;
    assert_eq!(r.status(), 422);
    assert_eq!(s.get(&other, &format!("/v1/audiences/{aud}")).await.status(), 404);

    // Members are checked one by one: bad rows are named, the rest stored.
    let r = s
        .post(
            &token,
            &format!("/v1/audiences/{aud}/members"),
            &json!({"members": [
                {"to": "+5511999990002", "variables": {"name": "Bia", "amount": 10}},
                {"to": "not a phone"},
                {"to": "+5511999990003", "variables": {"name": ["x"]}},
                {"to": "+5511999990004", "extra": 1},
                "just a string",
                {"to": "(11) 99999-0005", "variables": {"name": "Caio"}}
            ]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let added: Value = r.json().await.unwrap();
    assert_eq!(added["upserted"], 2);
    let invalid: Vec<(u64, String)> = added["invalid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["index"].as_u64().unwrap(), i["field"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(invalid, [(1, "to".into()), (2, "variables.name".into()), (3, "extra".into()), (4, String::new())]);
    let a: Value = s.get(&token, &format!("/v1/audiences/{aud}")).await.json().await.unwrap();
    assert_eq!(a["members"], 3);

    // A good schedule lists its next runs: 09:00 in São Paulo is 12:00Z.
    let sch = created(s.post(&token, "/v1/schedules", &base).await).await;
    let runs = sch["next_runs"].as_array().unwrap();
    assert_eq!(runs.len(), 5);
    assert!(runs.iter().all(|r| r.as_str().unwrap().ends_with("T12:00:00.000Z")), "{sch:#}");
    assert!(runs.windows(2).all(|w| w[0].as_str() < w[1].as_str()));
    // An audience a schedule sends to cannot be deleted.
    let r = s.http.delete(s.url(&format!("/v1/audiences/{aud}"))).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 409);
    let paused: Value = s
        .http
        .patch(s.url(&format!("/v1/schedules/{}", sch["id"].as_str().unwrap())))
        .bearer_auth(&token)
        .json(&json!({"enabled": false}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(paused["enabled"], false);
    assert_eq!(paused["next_runs"], json!([]));
}

/// Seed 004's reminders as one schedule: daily at 09:00 São Paulo time,
/// "3 days before" and "due today" ([-3, 0]) from each member's due date.
/// Over simulated days, each of three customers gets exactly their two
/// reminders, on the right days; after three days of downtime the schedule
/// runs once, not three times.
#[tokio::test]
async fn billing_reminders_over_simulated_days_reach_each_customer_once_per_offset() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let clock = dir.path().join("clock");
    set_clock(&clock, "2026-12-05T10:00:00Z");
    let clock_env = clock.display().to_string();
    let env = [("ZAPGATE_TEST_CLOCK_FILE", clock_env.as_str()), ("ZAPGATE_SCHEDULER_INTERVAL", "20ms")];
    let s = Server::start_in(dir.clone(), &env).await;
    let members = json!([
        {"to": "+5511900000001", "variables": {"name": "Ana", "amount": "R$ 10", "due_date": "2026-12-10"}},
        {"to": "+5511900000002", "variables": {"name": "Bia", "amount": "R$ 20", "due_date": "12/12/2026"}},
        {"to": "+5511900000003", "variables": {"name": "Caio", "amount": "R$ 30", "due_date": "2026-12-15"}},
    ]);
    let (token, ins, tpl, aud) =
        billing_setup(&s, "Olá {{name}}, sua fatura de {{amount}} vence em {{due_date}}.", members).await;
    let sch = created(
        s.post(
            &token,
            "/v1/schedules",
            &json!({"name": "billing", "instance_id": ins, "audience_id": aud, "template_id": tpl,
                    "cron": "0 9 * * *", "time_zone": "America/Sao_Paulo",
                    "date_field": "due_date", "offsets_days": [-3, 0]}),
        )
        .await,
    )
    .await;
    let id = sch["id"].as_str().unwrap();
    assert_eq!(sch["next_runs"][0], "2026-12-05T12:00:00.000Z");

    let mut sent_on: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut seen = 0;
    for day in 5..=16 {
        let occurrence = format!("2026-12-{day:02}T12:00:00.000Z");
        // 09:00:30 local, twice (a tick that sees the same day again adds nothing).
        set_clock(&clock, &format!("2026-12-{day:02}T12:00:30Z"));
        let run = wait_run(&s, &token, id, &occurrence).await;
        assert_eq!(run["status"], "done", "{run:#}");
        assert_eq!(run["missed"], 0);
        assert_eq!(run["run_date"], format!("2026-12-{day:02}"));
        set_clock(&clock, &format!("2026-12-{day:02}T12:00:40Z"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let texts = texts_by_recipient(&s, &token).await;
        let total: usize = texts.values().map(Vec::len).sum();
        assert_eq!(total as u64, seen + run["accepted"].as_u64().unwrap(), "day {day}: {texts:#?}");
        seen = total as u64;
        for (to, t) in &texts {
            let already = sent_on.get(to).map_or(0, Vec::len);
            for _ in already..t.len() {
                sent_on.entry(to.clone()).or_default().push(format!("12-{day:02}"));
            }
        }
    }
    let expected: BTreeMap<String, Vec<String>> = [
        ("+5511900000001", ["12-07", "12-10"]),
        ("+5511900000002", ["12-09", "12-12"]),
        ("+5511900000003", ["12-12", "12-15"]),
    ]
    .into_iter()
    .map(|(to, days)| (to.to_owned(), days.iter().map(|d| d.to_string()).collect()))
    .collect();
    assert_eq!(sent_on, expected);
    let texts = texts_by_recipient(&s, &token).await;
    assert_eq!(texts["+5511900000002"][0], "Olá Bia, sua fatura de R$ 20 vence em 12/12/2026.");
    for id in texts.keys() {
        assert_eq!(texts[id].len(), 2);
    }

    // Down from the 16th to the 20th at 10:00 local: the 17th, 18th and 19th
    // are missed and the 20th's run is made once, at start.
    set_clock(&clock, "2026-12-20T13:00:00Z");
    let run = wait_run(&s, &token, id, "2026-12-20T12:00:00.000Z").await;
    assert_eq!(run["missed"], 3, "{run:#}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let runs: Value = s.get(&token, &format!("/v1/schedules/{id}/runs")).await.json().await.unwrap();
    assert_eq!(runs["data"].as_array().unwrap().len(), 13, "one run per simulated day plus the catch-up");
    let sch: Value = s.get(&token, &format!("/v1/schedules/{id}")).await.json().await.unwrap();
    assert_eq!(sch["next_runs"][0], "2026-12-21T12:00:00.000Z");
    assert_eq!(sch["last_run_at"], "2026-12-20T12:00:00.000Z");
}

/// A scheduler killed after accepting a chunk, before recording it: the run
/// resumes after the restart and nobody gets the message twice.
#[tokio::test]
async fn a_run_interrupted_by_a_crash_resumes_without_sending_twice() {
    if distributed() {
        return; // the embedded restart path; distributed schedulers resume after the lease (same code)
    }
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let clock = dir.path().join("clock");
    set_clock(&clock, "2026-12-05T11:59:00Z");
    let clock_env = clock.display().to_string();
    let env = [
        ("ZAPGATE_TEST_CLOCK_FILE", clock_env.as_str()),
        ("ZAPGATE_SCHEDULER_INTERVAL", "20ms"),
        ("ZAPGATE_CRASH_AT", "schedule_chunk_accepted:2"),
    ];
    let s = Server::start_in(dir.clone(), &env).await;
    let n = 1_200;
    let members: Vec<Value> =
        (0..n).map(|i| json!({"to": format!("+55119{i:08}"), "variables": {"name": format!("c{i}")}})).collect();
    let (token, ins, tpl, aud) = billing_setup(&s, "Oi {{name}}", Value::Array(members)).await;
    let sch = created(
        s.post(
            &token,
            "/v1/schedules",
            &json!({"name": "once", "instance_id": ins, "audience_id": aud, "template_id": tpl, "cron": "0 12 * * *"}),
        )
        .await,
    )
    .await;
    set_clock(&clock, "2026-12-05T12:00:01Z");
    let mut s = s;
    assert!(s.wait_exit(Duration::from_secs(30)).is_some(), "the scheduler should crash in the second chunk");
    let s = Server::start_in(dir.clone(), &env[..2]).await;
    let run = wait_run(&s, &token, sch["id"].as_str().unwrap(), "2026-12-05T12:00:00.000Z").await;
    assert_eq!(run["status"], "done");
    let texts = texts_by_recipient(&s, &token).await;
    assert_eq!(texts.len(), n);
    assert!(texts.values().all(|t| t.len() == 1), "each member got one message");
    wait_receipts(&s, n).await;
}

/// Distributed: two schedulers on one database make each occurrence once
/// and send each run once.
#[tokio::test]
async fn two_schedulers_make_each_run_once() {
    if !distributed() {
        return;
    }
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let clock = dir.path().join("clock");
    set_clock(&clock, "2026-12-05T12:00:30Z");
    let clock_env = clock.display().to_string();
    let env = [
        ("ZAPGATE_TENANT_RATE_LIMIT", "0"),
        ("ZAPGATE_SCHEDULER_INTERVAL", "20ms"),
        ("ZAPGATE_TEST_CLOCK_FILE", clock_env.as_str()),
    ];
    let api = Server::start_role("api", dir.clone(), &env).await;
    let _others = [
        Server::start_role("worker", dir.clone(), &env).await,
        Server::start_role("scheduler", dir.clone(), &env).await,
        Server::start_role("scheduler", dir.clone(), &env).await,
    ];
    let _relays = Server::start_relays(1, dir.clone(), &env).await;
    let members: Vec<Value> = (0..20).map(|i| json!({"to": format!("+55119{i:08}"), "variables": {}})).collect();
    let (token, ins, tpl, aud) = billing_setup(&api, "ping", Value::Array(members)).await;
    // Every minute, over three simulated minutes.
    let sch = created(
        api.post(
            &token,
            "/v1/schedules",
            &json!({"name": "often", "instance_id": ins, "audience_id": aud, "template_id": tpl, "cron": "* * * * *"}),
        )
        .await,
    )
    .await;
    let id = sch["id"].as_str().unwrap();
    for minute in 1..=3 {
        set_clock(&clock, &format!("2026-12-05T12:0{minute}:05Z"));
        let run = wait_run(&api, &token, id, &format!("2026-12-05T12:0{minute}:00.000Z")).await;
        assert_eq!((run["status"].as_str(), run["accepted"].as_u64()), (Some("done"), Some(20)), "{run:#}");
    }
    let runs: Value = api.get(&token, &format!("/v1/schedules/{id}/runs")).await.json().await.unwrap();
    assert_eq!(runs["data"].as_array().unwrap().len(), 3, "one run per occurrence: {runs:#}");
    wait_receipts(&api, 60).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(api.receipts().len(), 60, "no run sent twice");
}
