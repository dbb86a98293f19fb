//! The REST API as a client sees it: happy path, idempotency, auth and every
//! class of bad input.

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test]
async fn send_goes_queued_sending_sent_delivered_read_with_history_in_order() {
    let s = Server::start(&[]).await;
    let (token, ins) = s.tenant_with_instance("acme", 80).await;
    let id = s.send_text(&token, &ins, "+55 11 99999-8888", "Olá").await;
    let m = s.wait_status(&token, &id, &["read"], Duration::from_secs(10)).await;
    assert_eq!(statuses(&m["history"]), ["queued", "sending", "sent", "delivered", "read"]);
    assert_eq!(m["to"], "+5511999998888");
    assert_eq!(m["text"]["body"], "Olá");
    assert!(m["provider_message_id"].as_str().unwrap().starts_with("sbx_"));
    let times: Vec<&str> = m["history"].as_array().unwrap().iter().map(|e| e["at"].as_str().unwrap()).collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "history is in time order");
    assert_eq!(s.receipts().len(), 1);
}

#[tokio::test]
async fn every_message_kind_is_accepted_and_sent() {
    let s = Server::start(&[]).await;
    let (token, ins) = s.tenant_with_instance("acme", 1000).await;
    let kinds = [
        json!({"type":"image","image":{"link":"https://example.com/a.png","caption":"c"}}),
        json!({"type":"document","document":{"link":"https://example.com/a.pdf","filename":"a.pdf"}}),
        json!({"type":"template","template":{"name":"bill","language":{"code":"pt_BR"}}}),
        json!({"type":"interactive","interactive":{"type":"button","body":{"text":"Pay?"},
            "action":{"buttons":[{"type":"reply","reply":{"id":"y","title":"Yes"}}]}}}),
        json!({"type":"location","location":{"latitude":-23.5,"longitude":-46.6}}),
        json!({"type":"reaction","reaction":{"message_id":"wamid.X","emoji":"👍"}}),
    ];
    for (n, k) in kinds.iter().enumerate() {
        let mut body = k.as_object().unwrap().clone();
        body.insert("instance_id".into(), json!(ins));
        body.insert("to".into(), json!(format!("+55119999900{n:02}")));
        let r = s.post(&token, "/v1/messages", &Value::Object(body)).await;
        assert_eq!(r.status(), 202, "{k}");
        let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
        let m = s.wait_status(&token, &id, &["sent", "delivered", "read"], Duration::from_secs(10)).await;
        assert_eq!(m["type"], k["type"]);
    }
}

#[tokio::test]
async fn same_idempotency_key_and_body_returns_the_first_response() {
    let s = Server::start(&[]).await;
    let (token, ins) = s.tenant_with_instance("acme", 80).await;
    let body = text(&ins, "+5511999998888", "once");
    let send =
        || s.http.post(s.url("/v1/messages")).bearer_auth(&token).header("Idempotency-Key", "k-1").json(&body).send();
    let a: Value = send().await.unwrap().json().await.unwrap();
    let r = send().await.unwrap();
    assert_eq!(r.status(), 202);
    let b: Value = r.json().await.unwrap();
    assert_eq!(a, b, "the replay is the first response");
    // Same meaning, different spelling of the number: still the same request.
    let r = s
        .http
        .post(s.url("/v1/messages"))
        .bearer_auth(&token)
        .header("Idempotency-Key", "k-1")
        .json(&text(&ins, "5511999998888", "once"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.receipts().len(), 1, "sent once");
    let list: Value = s.get(&token, "/v1/messages").await.json().await.unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn idempotency_key_reused_with_a_different_body_is_422() {
    let s = Server::start(&[]).await;
    let (token, ins) = s.tenant_with_instance("acme", 80).await;
    let post = |b: &str| {
        s.http
            .post(s.url("/v1/messages"))
            .bearer_auth(&token)
            .header("Idempotency-Key", "k")
            .json(&text(&ins, "+5511999998888", b))
            .send()
    };
    assert_eq!(post("a").await.unwrap().status(), 202);
    let r = post("b").await.unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "idempotency_key_reused");
}

#[tokio::test]
async fn idempotency_keys_are_scoped_per_tenant() {
    let s = Server::start(&[]).await;
    let (t1, i1) = s.tenant_with_instance("a", 80).await;
    let (t2, i2) = s.tenant_with_instance("b", 80).await;
    for (t, i) in [(&t1, &i1), (&t2, &i2)] {
        let r = s
            .http
            .post(s.url("/v1/messages"))
            .bearer_auth(t)
            .header("Idempotency-Key", "same")
            .json(&text(i, "+5511999998888", "x"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
}

#[tokio::test]
async fn idempotency_key_still_in_flight_is_409_with_retry_after() {
    // The accept-delay test hook holds the first request open.
    let s = Server::start(&[("ZAPGATE_TEST_ACCEPT_DELAY_MS", "800")]).await;
    let (token, ins) = s.tenant_with_instance("acme", 80).await;
    let body = text(&ins, "+5511999998888", "slow");
    let first = {
        let req = s.http.post(s.url("/v1/messages")).bearer_auth(&token).header("Idempotency-Key", "k").json(&body);
        tokio::spawn(async move { req.send().await.unwrap().status() })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = s
        .http
        .post(s.url("/v1/messages"))
        .bearer_auth(&token)
        .header("Idempotency-Key", "k")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "idempotency_key_in_flight");
    assert_eq!(first.await.unwrap(), 202);
}

/// Distributed: the key is claimed in Redis, so a second API process
/// answers 409 while the first still runs the request, and the first's
/// answer is what a retry then gets.
#[tokio::test]
async fn idempotency_key_in_flight_on_another_api_process_is_409() {
    if !distributed() || std::env::var("ZAPGATE_TEST_REDIS_URL").map_or(true, |v| v.is_empty()) {
        return println!("skipped: needs the distributed pass's Redis (ZAPGATE_TEST_REDIS_URL)");
    }
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let slow = Server::start_role("api", dir.clone(), &[("ZAPGATE_TEST_ACCEPT_DELAY_MS", "800")]).await;
    let other = Server::start_role("api", dir.clone(), &[]).await;
    let (token, ins) = slow.tenant_with_instance("acme", 80).await;
    let body = text(&ins, "+5511999998888", "slow");
    let send =
        |s: &Server| s.http.post(s.url("/v1/messages")).bearer_auth(&token).header("Idempotency-Key", "k").json(&body);
    let first = {
        let req = send(&slow);
        tokio::spawn(async move { req.send().await.unwrap().json::<Value>().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = send(&other).send().await.unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "idempotency_key_in_flight");
    let first = first.await.unwrap();
    let r = send(&other).send().await.unwrap();
    assert_eq!(r.status(), 202, "released when the first request ended");
    assert_eq!(r.json::<Value>().await.unwrap()["id"], first["id"], "the retry gets the first request's message");
}

#[tokio::test]
async fn auth_is_required_and_tenants_are_isolated() {
    let s = Server::start(&[]).await;
    let (t1, i1) = s.tenant_with_instance("a", 80).await;
    let (t2, _) = s.tenant_with_instance("b", 80).await;
    let id = s.send_text(&t1, &i1, "+5511999998888", "private").await;

    let r = s.http.get(s.url(&format!("/v1/messages/{id}"))).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "unauthorized");
    assert_eq!(s.get("zg_live_wrong", &format!("/v1/messages/{id}")).await.status(), 401);
    // Another tenant's message does not exist for you (404, not 403).
    let r = s.get(&t2, &format!("/v1/messages/{id}")).await;
    assert_eq!(r.status(), 404);
    assert_eq!(s.get(&t2, &format!("/v1/instances/{i1}")).await.status(), 404);
    let list: Value = s.get(&t2, "/v1/messages").await.json().await.unwrap();
    assert!(list["data"].as_array().unwrap().is_empty());
    // Sending from another tenant's instance is refused.
    let r = s.post(&t2, "/v1/messages", &text(&i1, "+5511999998888", "x")).await;
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "unknown_instance");
    // Admin routes refuse tenant tokens; tenant routes refuse the admin token.
    assert_eq!(s.get(&t1, "/v1/tenants").await.status(), 401);
    assert_eq!(s.get(ADMIN, "/v1/messages").await.status(), 403);
}

#[tokio::test]
async fn revoked_tokens_stop_working_at_once() {
    let s = Server::start(&[]).await;
    let (tenant, token) = s.tenant("a").await;
    assert_eq!(s.get(&token, "/v1/instances").await.status(), 200);
    let toks: Value = s.get(ADMIN, &format!("/v1/tenants/{tenant}/tokens")).await.json().await.unwrap();
    let tok_id = toks["data"][0]["id"].as_str().unwrap();
    assert!(toks.to_string().find(&token).is_none(), "listings never show secrets");
    let r =
        s.http.delete(s.url(&format!("/v1/tenants/{tenant}/tokens/{tok_id}"))).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(s.get(&token, "/v1/instances").await.status(), 401);
    let fresh: Value = s.post(ADMIN, &format!("/v1/tenants/{tenant}/tokens"), &json!({})).await.json().await.unwrap();
    assert_eq!(s.get(fresh["token"].as_str().unwrap(), "/v1/instances").await.status(), 200);
}

/// Each bad input class → its documented 4xx, the error shape, and nothing stored.
#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_stores_nothing() {
    let s = Server::start(&[("ZAPGATE_MAX_BODY_BYTES", "4096")]).await;
    let (token, ins) = s.tenant_with_instance("acme", 80).await;
    let raw = |body: String, ctype: &'static str| {
        s.http.post(s.url("/v1/messages")).bearer_auth(&token).header("content-type", ctype).body(body).send()
    };
    let cases: Vec<(reqwest::Response, u16, &str)> = vec![
        (raw("{\"instance_id\":".into(), "application/json").await.unwrap(), 400, "invalid_json"),
        (raw("[]".into(), "application/json").await.unwrap(), 422, "invalid_body"),
        (
            raw(text(&ins, "+5511999998888", "x").to_string(), "text/plain").await.unwrap(),
            415,
            "unsupported_media_type",
        ),
        (
            raw(format!("{{\"x\":\"{}\"}}", "a".repeat(5000)), "application/json").await.unwrap(),
            413,
            "payload_too_large",
        ),
        (s.post(&token, "/v1/messages", &text(&ins, "not-a-phone", "x")).await, 422, "validation_failed"),
        (s.post(&token, "/v1/messages", &text(&ins, "+12", "x")).await, 422, "validation_failed"),
        (
            s.post(
                &token,
                "/v1/messages",
                &json!({"instance_id": ins, "to": 5511, "type": "text", "text": {"body": "x"}}),
            )
            .await,
            422,
            "validation_failed",
        ),
        (
            s.post(&token, "/v1/messages", &json!({"instance_id": ins, "type": "text", "text": {"body": "x"}})).await,
            422,
            "validation_failed",
        ),
        (
            s.post(&token, "/v1/messages", &json!({"instance_id": ins, "to": "+5511999998888", "type": "text"})).await,
            422,
            "validation_failed",
        ),
        (
            s.post(
                &token,
                "/v1/messages",
                &json!({"instance_id": ins, "to": "+5511999998888", "type": "text",
            "text": {"body": 7}}),
            )
            .await,
            422,
            "validation_failed",
        ),
        (
            s.post(&token, "/v1/messages", &text("ins_0000000000000000000000000000dead", "+5511999998888", "x")).await,
            422,
            "unknown_instance",
        ),
        (s.post(&token, "/v1/messages", &text("nope", "+5511999998888", "x")).await, 422, "validation_failed"),
        (
            s.http
                .post(s.url("/v1/messages"))
                .bearer_auth(&token)
                .header("Idempotency-Key", "bad key with spaces")
                .json(&text(&ins, "+5511999998888", "x"))
                .send()
                .await
                .unwrap(),
            400,
            "invalid_idempotency_key",
        ),
        (s.get(&token, "/v1/messages?limit=100000").await, 400, "invalid_query"),
        (s.get(&token, "/v1/messages?status=flying").await, 400, "invalid_query"),
        (s.get(&token, "/v1/messages/msg_nope").await, 404, "not_found"),
        (s.get(&token, "/v2/everything").await, 404, "route_not_found"),
        (s.http.put(s.url("/v1/messages")).bearer_auth(&token).send().await.unwrap(), 405, "method_not_allowed"),
        (
            s.post(&token, "/v1/instances", &json!({"name": "x", "provider": "telepathy"})).await,
            422,
            "validation_failed",
        ),
        (
            s.post(&token, "/v1/instances", &json!({"name": "x", "rate_limit_per_second": 0})).await,
            422,
            "validation_failed",
        ),
    ];
    for (n, (r, status, code)) in cases.into_iter().enumerate() {
        assert_eq!(r.status().as_u16(), status, "case {n}");
        let v: Value = r.json().await.unwrap_or_else(|e| panic!("case {n}: body is not JSON: {e}"));
        assert_eq!(v["error"]["code"], code, "case {n}: {v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "case {n}");
    }
    let list: Value = s.get(&token, "/v1/messages").await.json().await.unwrap();
    assert!(list["data"].as_array().unwrap().is_empty(), "no partial writes: {list}");
    assert!(s.receipts().is_empty());
    let instances: Value = s.get(&token, "/v1/instances").await.json().await.unwrap();
    assert_eq!(instances["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn the_offending_field_is_named() {
    let s = Server::start(&[]).await;
    let (token, ins) = s.tenant_with_instance("acme", 80).await;
    let r = s.post(&token, "/v1/messages", &text(&ins, "+5511999998888", "")).await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["details"]["field"], "text.body");
}

#[tokio::test]
async fn messages_list_filters_and_paginates() {
    let s = Server::start(&[]).await;
    let (token, ins) = s.tenant_with_instance("acme", 1000).await;
    let mut ids = Vec::new();
    for n in 0..7 {
        ids.push(s.send_text(&token, &ins, &format!("+551199999{:04}", n % 2), "x").await);
    }
    // Two chats: each keeps its own order, so the last message read says
    // nothing of the other chat's; wait for every one.
    for id in &ids {
        s.wait_status(&token, id, &["read"], Duration::from_secs(10)).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("/v1/messages?limit=3&cursor={c}"),
            None => "/v1/messages?limit=3".into(),
        };
        let page: Value = s.get(&token, &q).await.json().await.unwrap();
        for m in page["data"].as_array().unwrap() {
            seen.push(m["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);
    let to0: Value = s.get(&token, "/v1/messages?to=%2B5511999990000").await.json().await.unwrap();
    assert_eq!(to0["data"].as_array().unwrap().len(), 4);
    let read: Value = s.get(&token, &format!("/v1/messages?status=read&instance_id={ins}")).await.json().await.unwrap();
    assert_eq!(read["data"].as_array().unwrap().len(), 7);
    let none: Value = s.get(&token, "/v1/messages?since=2999-01-01T00:00:00Z").await.json().await.unwrap();
    assert!(none["data"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn instances_crud_and_deleting_cancels_unsent_messages() {
    let s = Server::start(&[]).await;
    let (_, token) = s.tenant("acme").await;
    let ins = s.instance(&token, json!({"name": "slow", "rate_limit_per_second": 1, "burst": 1})).await;
    let inst: Value = s.get(&token, &format!("/v1/instances/{ins}")).await.json().await.unwrap();
    assert!(inst["phone_number_id"].as_str().unwrap().chars().all(|c| c.is_ascii_digit()));
    let r = s
        .http
        .patch(s.url(&format!("/v1/instances/{ins}")))
        .bearer_auth(&token)
        .json(&json!({"name": "renamed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["name"], "renamed");
    // At 1 msg/s, most of these are still queued when the instance goes away.
    let mut ids = Vec::new();
    for n in 0..40 {
        ids.push(s.send_text(&token, &ins, &format!("+55119999{n:05}"), "x").await);
    }
    let r = s.http.delete(s.url(&format!("/v1/instances/{ins}"))).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(s.get(&token, &format!("/v1/instances/{ins}")).await.status(), 404);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut cancelled = 0;
    for id in &ids {
        let m = s.message(&token, id).await;
        match m["status"].as_str().unwrap() {
            "cancelled" => cancelled += 1,
            "sent" | "delivered" | "read" => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(cancelled >= 30, "only {cancelled} cancelled");
    let r = s.post(&token, "/v1/messages", &text(&ins, "+5511999998888", "x")).await;
    assert_eq!(r.status(), 422);
}

#[tokio::test]
async fn health_openapi_and_docs_are_served() {
    let s = Server::start(&[]).await;
    let live: Value = s.http.get(s.url("/health/live")).send().await.unwrap().json().await.unwrap();
    assert_eq!(live["status"], "ok");
    let ready = s.http.get(s.url("/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let spec: Value = s.http.get(s.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(spec["paths"]["/v1/messages"]["post"].is_object());
    let page = s.http.get(s.url("/docs")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("/openapi.json") && !page.contains("https://cdn"), "docs page is self-contained");
}

#[tokio::test]
async fn graceful_shutdown_exits_cleanly_and_keeps_accepted_messages() {
    let s = Server::start(&[]).await;
    let (token, ins) = s.tenant_with_instance("acme", 1000).await;
    let id = s.send_text(&token, &ins, "+5511999998888", "bye").await;
    let mut s = s;
    assert!(s.terminate().success(), "{}", s.logs());
    let s = s.restart(&[]).await;
    // The sandbox's pending delivered/read callbacks die with the process;
    // what must survive is the accepted message reaching the provider.
    let m = s.wait_status(&token, &id, &["sent", "delivered", "read"], Duration::from_secs(10)).await;
    assert!(!statuses(&m["history"]).contains(&"failed".to_owned()));
}

#[tokio::test]
async fn metrics_count_accepts_outcomes_and_requests_by_route() {
    let s = Server::start(&[]).await;
    let (token, ins) = s.tenant_with_instance("acme", 80).await;
    let id = s.send_text(&token, &ins, "+5511999998888", "counted").await;
    s.wait_status(&token, &id, &["read"], Duration::from_secs(10)).await;
    let r = s.http.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let line = |prefix: &str| text.lines().find(|l| l.starts_with(prefix)).map(str::to_owned);
    assert_eq!(line("zapgate_messages_accepted_total").as_deref(), Some("zapgate_messages_accepted_total 1"), "{text}");
    assert_eq!(
        line("zapgate_send_outcomes_total{outcome=\"sent\"}").as_deref(),
        Some("zapgate_send_outcomes_total{outcome=\"sent\"} 1")
    );
    assert!(text.contains("route=\"/v1/messages/{message_id}\""), "requests are labelled by route template, not path");
    assert!(!text.contains(&id), "no ids in labels");
    assert!(text.contains("zapgate_provider_statuses_total{status=\"read\",applied=\"applied\"} 1"));
    assert!(text.contains("zapgate_provider_calls_total{provider=\"sandbox\",result=\"ok\"} 1"), "{text}");
    assert!(text.contains("zapgate_provider_call_seconds_count{provider=\"sandbox\"} 1"), "{text}");
}

#[tokio::test]
async fn templates_render_into_text_messages_and_bad_uses_are_named() {
    let s = Server::start(&[]).await;
    let (token, ins) = s.tenant_with_instance("acme", 80).await;
    let (other, _) = s.tenant_with_instance("other", 80).await;
    let body = "Olá {{name}}, sua fatura de {{amount}} vence em {{due_date}}.";
    let r = s.post(&token, "/v1/templates", &json!({"name": "billing", "body": body})).await;
    assert_eq!(r.status(), 201);
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["variables"], json!(["amount", "due_date", "name"]));
    let tid = t["id"].as_str().unwrap();
    let r = s.post(&token, "/v1/templates", &json!({"name": "billing", "body": "x"})).await;
    assert_eq!(r.status(), 409, "names are unique per tenant");
    let r = s.post(&token, "/v1/templates", &json!({"name": "broken", "body": "Olá {{name"})).await;
    assert_eq!(r.status(), 422);

    let send = |vars: Value| json!({"instance_id": ins, "to": "+5511999998888", "template_id": tid, "variables": vars});
    let r = s.post(&token, "/v1/messages", &send(json!({"name": "Ana", "amount": "R$ 10", "due_date": "05/12"}))).await;
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let m = s.message(&token, &id).await;
    assert_eq!(m["type"], "text");
    assert_eq!(m["text"]["body"], "Olá Ana, sua fatura de R$ 10 vence em 05/12.");

    let r = s.post(&token, "/v1/messages", &send(json!({"name": "Ana", "amount": "R$ 10"}))).await;
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["details"]["field"], "variables.due_date");
    let mut both = send(json!({"name": "a", "amount": "b", "due_date": "c"}));
    both["type"] = json!("text");
    assert_eq!(s.post(&token, "/v1/messages", &both).await.status(), 422);
    let theirs = json!({"instance_id": ins, "to": "+5511999998888", "template_id": tid, "variables": {}});
    let r = s.post(&other, "/v1/messages", &theirs).await;
    assert_eq!(r.status(), 422, "another tenant's template does not exist for you");
    let list: Value = s.get(&token, "/v1/messages").await.json().await.unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "refused sends stored nothing");
    let r = s.http.delete(s.url(&format!("/v1/templates/{tid}"))).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(s.get(&token, &format!("/v1/templates/{tid}")).await.status(), 404);
}
