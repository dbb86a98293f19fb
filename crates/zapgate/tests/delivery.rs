//! Failure paths through the sandbox's magic numbers: retry with backoff,
//! permanent failure, dead letters and replay, expiry, per-chat order.

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn retryable_failures_are_retried_with_backoff_then_succeed() {
    let s = Server::start(&[("ZAPGATE_MESSAGE_RETRY_BASE", "100ms"), ("ZAPGATE_MESSAGE_RETRY_MAX", "1s")]).await;
    let (token, ins) = s.tenant_with_instance("acme", 80).await;
    let id = s.send_text(&token, &ins, "+15550120002", "flaky").await;
    let m = s.wait_status(&token, &id, &["read"], WAIT).await;
    let h = statuses(&m["history"]);
    assert_eq!(h, ["queued", "sending", "retry_wait", "sending", "retry_wait", "sending", "sent", "delivered", "read"]);
    assert_eq!(m["attempts"], 2, "two provider-caused failures");
    let events = m["history"].as_array().unwrap();
    let waits: Vec<&Value> = events.iter().filter(|e| e["status"] == "retry_wait").collect();
    assert_eq!(waits[0]["error_code"], "sandbox_unavailable");
    // Backoff: the second wait is scheduled further out than the first (base·2^n with jitter in [½, 1]).
    let gap = |e: &Value| {
        let at = e["at"].as_str().unwrap();
        let next = e["next_attempt_at"].as_str().unwrap();
        millis(next) - millis(at)
    };
    assert!((50..=100).contains(&gap(waits[0])), "first backoff {}ms", gap(waits[0]));
    assert!((100..=200).contains(&gap(waits[1])), "second backoff {}ms", gap(waits[1]));
    // Never early: each retry's attempt starts at or after its next_attempt_at.
    for (i, e) in events.iter().enumerate().filter(|(_, e)| e["status"] == "retry_wait") {
        let retried = &events[i + 1];
        assert!(millis(retried["at"].as_str().unwrap()) >= millis(e["next_attempt_at"].as_str().unwrap()), "{m:#}");
    }
    assert_eq!(s.receipts().len(), 1, "only the successful call reached the provider's log");
    if brokered() {
        // Through RabbitMQ both waits were spent in a wait queue, not the table.
        assert_eq!(s.metric("zapgate_retries_parked_total", "").await, 2.0, "{}", s.logs());
    }
}

fn millis(rfc3339: &str) -> i64 {
    // "2026-11-25T13:23:04.370Z" → ms within the day is enough for gaps.
    let t = &rfc3339[11..23];
    let (h, m, s) = (&t[0..2], &t[3..5], &t[6..]);
    let secs: f64 = s.parse().unwrap();
    (h.parse::<i64>().unwrap() * 3600 + m.parse::<i64>().unwrap() * 60) * 1000 + (secs * 1000.0).round() as i64
}

#[tokio::test]
async fn permanent_failure_is_failed_with_reason_and_code_without_retries() {
    let s = Server::start(&[]).await;
    let (token, ins) = s.tenant_with_instance("acme", 80).await;
    let id = s.send_text(&token, &ins, "+15550110000", "nope").await;
    let m = s.wait_status(&token, &id, &["failed"], WAIT).await;
    assert_eq!(statuses(&m["history"]), ["queued", "sending", "failed"]);
    assert_eq!(m["error_code"], "sandbox_rejected");
    assert!(m["error_message"].as_str().unwrap().contains("not on WhatsApp"));
    assert!(s.receipts().is_empty());
}

#[tokio::test]
async fn exhausted_retries_dead_letter_then_replay_delivers() {
    let s = Server::start(&[("ZAPGATE_MESSAGE_RETRY_LIMIT", "2")]).await;
    let (token, ins) = s.tenant_with_instance("acme", 80).await;
    // Fails its first 3 calls: 2 attempts use up the limit, the replay's second call succeeds.
    let id = s.send_text(&token, &ins, "+15550120003", "persistent").await;
    let m = s.wait_status(&token, &id, &["dead"], WAIT).await;
    assert_eq!(m["attempts"], 2);
    assert_eq!(m["error_code"], "sandbox_unavailable");
    let dl: Value = s.get(&token, "/v1/dead-letters").await.json().await.unwrap();
    assert_eq!(dl["data"][0]["id"], id.as_str());

    let r = s.post(&token, &format!("/v1/dead-letters/{id}/replay"), &json!({})).await;
    assert_eq!(r.status(), 202);
    let m = s.wait_status(&token, &id, &["read"], WAIT).await;
    let h = statuses(&m["history"]);
    assert!(h.windows(2).any(|w| w == ["dead", "queued"]), "{h:?}");
    assert_eq!(h.last().unwrap(), "read");
    let dl: Value = s.get(&token, "/v1/dead-letters").await.json().await.unwrap();
    assert!(dl["data"].as_array().unwrap().is_empty());
    // Replaying something that is not dead is a conflict, not a silent no-op.
    let r = s.post(&token, &format!("/v1/dead-letters/{id}/replay"), &json!({})).await;
    assert_eq!(r.status(), 409);
}

#[tokio::test]
async fn timeouts_are_retryable_failures() {
    let s = Server::start(&[("ZAPGATE_SEND_TIMEOUT", "100ms"), ("ZAPGATE_MESSAGE_RETRY_LIMIT", "2")]).await;
    let (token, ins) = s.tenant_with_instance("acme", 80).await;
    let id = s.send_text(&token, &ins, "+15550130000", "hang").await;
    let m = s.wait_status(&token, &id, &["dead"], WAIT).await;
    assert_eq!(m["error_code"], "timeout");
    assert_eq!(m["attempts"], 2);
}

#[tokio::test]
async fn a_failed_status_callback_after_sent_marks_the_message_failed() {
    let s = Server::start(&[]).await;
    let (token, ins) = s.tenant_with_instance("acme", 80).await;
    let id = s.send_text(&token, &ins, "+15550150000", "x").await;
    let m = s.wait_status(&token, &id, &["failed"], WAIT).await;
    assert_eq!(statuses(&m["history"]), ["queued", "sending", "sent", "failed"]);
    assert_eq!(m["error_code"], "sandbox_failed");
}

#[tokio::test]
async fn expired_messages_are_not_sent() {
    let s = Server::start(&[("ZAPGATE_MESSAGE_RETRY_BASE", "1s"), ("ZAPGATE_MESSAGE_RETRY_MAX", "1s")]).await;
    let (token, ins) = s.tenant_with_instance("acme", 80).await;
    let expires = time_in(Duration::from_millis(600));
    let mut body = text(&ins, "+15550120005", "short-lived");
    body["expires_at"] = json!(expires);
    let r = s.post(&token, "/v1/messages", &body).await;
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let m = s.wait_status(&token, &id, &["expired"], WAIT).await;
    assert_eq!(m["error_code"], "expired");
    assert!(s.receipts().is_empty());
}

#[tokio::test]
async fn send_at_in_the_future_waits_then_sends() {
    let s = Server::start(&[]).await;
    let (token, ins) = s.tenant_with_instance("acme", 80).await;
    let mut body = text(&ins, "+5511999998888", "later");
    body["send_at"] = json!(time_in(Duration::from_millis(1500)));
    let r = s.post(&token, "/v1/messages", &body).await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "scheduled");
    let id = v["id"].as_str().unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(s.receipts().is_empty(), "not sent before send_at");
    s.wait_status(&token, id, &["sent", "delivered", "read"], WAIT).await;
    assert_eq!(s.receipts().len(), 1);
}

fn time_in(d: Duration) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap() + d;
    let ms = now.as_millis() as i64;
    zapgate_domain::Timestamp::from_millis(ms).to_rfc3339()
}

/// Per-chat order: messages to one chat reach the provider in acceptance
/// order, also when every one of them is retried on the way.
#[tokio::test]
async fn per_chat_order_holds_with_and_without_retries() {
    let s = Server::start(&[("ZAPGATE_MESSAGE_RETRY_BASE", "20ms"), ("ZAPGATE_MESSAGE_RETRY_MAX", "40ms")]).await;
    let (token, ins) = s.tenant_with_instance("acme", 1000).await;
    let mut plain = Vec::new();
    let mut flaky = Vec::new();
    for n in 0..50 {
        plain.push(s.send_text(&token, &ins, "+5511999998888", &format!("p{n}")).await);
        // Every message to this number fails its first call, so each is retried.
        flaky.push(s.send_text(&token, &ins, "+15550120001", &format!("f{n}")).await);
    }
    for id in plain.iter().chain(&flaky) {
        s.wait_status(&token, id, &["sent", "delivered", "read"], Duration::from_secs(60)).await;
    }
    let receipts = s.receipts();
    let order = |to: &str| -> Vec<String> {
        receipts.iter().filter(|r| r["to"] == to).map(|r| r["message_id"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(order("5511999998888"), plain);
    assert_eq!(order("15550120001"), flaky);
    for id in &flaky[..3] {
        let m = s.message(&token, id).await;
        assert!(statuses(&m["history"]).contains(&"retry_wait".to_owned()));
    }
}

#[tokio::test]
async fn a_scheduled_message_can_be_cancelled_before_it_is_sent() {
    let s = Server::start(&[]).await;
    let (token, ins) = s.tenant_with_instance("acme", 80).await;
    let mut body = text(&ins, "+5511999998888", "never");
    body["send_at"] = json!(time_in(Duration::from_millis(800)));
    let id =
        s.post(&token, "/v1/messages", &body).await.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let r = s.http.delete(s.url(&format!("/v1/messages/{id}"))).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "cancelled");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let m = s.message(&token, &id).await;
    assert_eq!(statuses(&m["history"]), ["scheduled", "cancelled"]);
    assert!(s.receipts().is_empty(), "a cancelled message never reaches the provider");
    // Too late once sent; unknown ids are 404.
    let sent = s.send_text(&token, &ins, "+5511999998888", "now").await;
    s.wait_status(&token, &sent, &["sent", "delivered", "read"], WAIT).await;
    let r = s.http.delete(s.url(&format!("/v1/messages/{sent}"))).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "not_cancellable");
    let r = s
        .http
        .delete(s.url("/v1/messages/msg_0193a1b2c3d47e8f9a0b1c2d3e4f5a6b"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after_instead_of_growing() {
    let s = Server::start(&[("ZAPGATE_MAX_QUEUE_DEPTH", "5")]).await;
    let (token, ins) = s.tenant_with_instance("acme", 1).await;
    for n in 0..10 {
        s.send_text(&token, &ins, &format!("+55119999{n:05}"), "slow lane").await;
    }
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = s.post(&token, "/v1/messages", &text(&ins, "+5511999998888", "one more")).await;
        if r.status() == 503 {
            assert_eq!(r.headers()["retry-after"], "5");
            assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "queue_full");
            return;
        }
    }
    panic!("the queue never reported full");
}

#[tokio::test]
async fn one_tenants_backlog_gets_503_while_other_tenants_still_send() {
    let s = Server::start(&[("ZAPGATE_MAX_TENANT_QUEUE_DEPTH", "5")]).await;
    let (busy, busy_ins) = s.tenant_with_instance("busy", 1).await;
    let (calm, calm_ins) = s.tenant_with_instance("calm", 80).await;
    for n in 0..10 {
        s.send_text(&busy, &busy_ins, &format!("+55119999{n:05}"), "slow lane").await;
    }
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = s.post(&busy, "/v1/messages", &text(&busy_ins, "+5511999998888", "one more")).await;
        if r.status() == 503 {
            assert_eq!(r.headers()["retry-after"], "5");
            assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "tenant_queue_full");
            // Only the tenant over its limit is refused.
            let other = s.send_text(&calm, &calm_ins, "+5521999990000", "unaffected").await;
            s.wait_status(&calm, &other, &["sent", "delivered", "read"], WAIT).await;
            return;
        }
    }
    panic!("the tenant's queue never reported full");
}

/// Outbox lag: a tenant whose oldest due message has waited past
/// `ZAPGATE_MAX_TENANT_QUEUE_LAG` to be taken gets 503 + Retry-After (its
/// backlog is not growing faster than it drains), others still send; the lag
/// is the `zapgate_queue_oldest_due_seconds` gauge.
#[tokio::test]
async fn a_tenant_whose_oldest_message_waits_too_long_gets_503() {
    let s = Server::start(&[("ZAPGATE_MAX_TENANT_QUEUE_LAG", "1s")]).await;
    let (slow, slow_ins) = s.tenant_with_instance("slow", 1).await;
    let (calm, calm_ins) = s.tenant_with_instance("calm", 80).await;
    // More than the relay takes ahead for a 1/s instance (32), so some wait
    // in the outbox in the broker pass too.
    for n in 0..60 {
        s.send_text(&slow, &slow_ins, &format!("+55119999{n:05}"), "slow lane").await;
    }
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = s.post(&slow, "/v1/messages", &text(&slow_ins, "+5511999998888", "one more")).await;
        if r.status() == 503 {
            assert_eq!(r.headers()["retry-after"], "5");
            assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "tenant_queue_lagging");
            let lag = s.metric("zapgate_queue_oldest_due_seconds", "").await;
            assert!(lag >= 1.0, "the lag gauge says {lag} s");
            // Only the lagging tenant is refused.
            let other = s.send_text(&calm, &calm_ins, "+5521999990000", "unaffected").await;
            s.wait_status(&calm, &other, &["sent", "delivered", "read"], WAIT).await;
            return;
        }
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    }
    panic!("the tenant's lag never refused a send");
}

#[tokio::test]
async fn a_message_never_acknowledged_raises_ack_timeout_once_without_failing_it() {
    let s = Server::start(&[("ZAPGATE_ACK_TIMEOUT", "400ms"), ("ZAPGATE_SANDBOX_DELIVERED_AFTER", "1h")]).await;
    let (token, ins) = s.tenant_with_instance("acme", 80).await;
    let silent = s.send_text(&token, &ins, "+15550140000", "into the void").await;
    s.wait_status(&token, &silent, &["sent"], WAIT).await;
    let mut timeouts = 0;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let m = s.message(&token, &silent).await;
        timeouts = m["history"].as_array().unwrap().iter().filter(|e| e["type"] == "message.ack_timeout").count();
        if timeouts > 0 {
            break;
        }
    }
    assert_eq!(timeouts, 1, "raised once the timeout passed");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let m = s.message(&token, &silent).await;
    let h = m["history"].as_array().unwrap();
    assert_eq!(h.iter().filter(|e| e["type"] == "message.ack_timeout").count(), 1, "raised only once");
    assert_eq!(m["status"], "sent", "an ack timeout is not a failure");
    let text = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.lines().any(|l| l == "zapgate_ack_timeouts_total 1"), "{text}");
}
