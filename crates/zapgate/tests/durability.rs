//! Crash points: the server is killed between every pair of steps of the
//! send pipeline (ZAPGATE_CRASH_AT, compiled into test builds only). After a
//! restart on the same data, every accepted message reaches the provider —
//! none lost, none failed because of the crash — and the duplicates the
//! provider saw are no more than the messages that were in flight.

mod common;

use common::*;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

const MESSAGES: usize = 60;

async fn crash_and_recover(point: &str, after_passes: u32) {
    let crash = format!("{point}:{after_passes}");
    let s = Server::start(&[("ZAPGATE_CRASH_AT", &crash), ("ZAPGATE_SANDBOX_DELIVERED_AFTER", "1h")]).await;
    // Set-up commits count toward after_commit, so create them first.
    let (token, ins) = s.tenant_with_instance("acme", 2000).await;
    let s = Arc::new(s);
    let mut accepted = Vec::new();
    let mut tasks = Vec::new();
    for n in 0..MESSAGES {
        let (s, token, ins) = (s.clone(), token.clone(), ins.clone());
        tasks.push(tokio::spawn(async move {
            let body = text(&ins, &format!("+55119{:08}", n % 20), &format!("m{n}"));
            let r = s.http.post(s.url("/v1/messages")).bearer_auth(&token).json(&body).send().await.ok()?;
            (r.status() == 202).then_some(())?;
            let v: Value = r.json().await.ok()?;
            Some(v["id"].as_str()?.to_owned())
        }));
        if n % 6 == 5 {
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    }
    for t in tasks {
        if let Some(id) = t.await.unwrap() {
            accepted.push(id);
        }
    }
    let mut s = Arc::into_inner(s).expect("no other handles");
    let status = s.wait_exit(Duration::from_secs(20));
    assert!(
        status.is_some_and(|st| !st.success()),
        "the server should have crashed at {crash} (is the binary built with --features test-hooks?)\n{}",
        s.logs()
    );
    assert!(!accepted.is_empty(), "{point}: nothing was accepted before the crash");

    let s = s.restart(&[("ZAPGATE_SANDBOX_DELIVERED_AFTER", "1h")]).await;
    let mut requeued = 0;
    for id in &accepted {
        let m = s.wait_status(&token, id, &["sent"], Duration::from_secs(30)).await;
        let h = m["history"].as_array().unwrap();
        assert!(
            !h.iter().any(|e| ["failed", "dead", "retry_wait"].contains(&e["status"].as_str().unwrap())),
            "{point}: a crash must not count as a failure: {m:#}"
        );
        assert_eq!(m["attempts"], 0, "{point}: the crash spent no attempt");
        requeued += h.iter().filter(|e| e["reason"].as_str().is_some_and(|r| r.starts_with("requeued"))).count();
    }
    let receipts = s.receipts();
    let mut per_message: HashMap<String, usize> = HashMap::new();
    for r in &receipts {
        *per_message.entry(r["message_id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    let accepted_set: HashSet<&String> = accepted.iter().collect();
    for id in &accepted {
        assert!(per_message.contains_key(id), "{point}: accepted message {id} never reached the provider");
    }
    // `requeued` counts the accepted messages only, so do the duplicates.
    let duplicates: usize = accepted.iter().map(|id| per_message[id] - 1).sum();
    assert!(
        duplicates <= requeued,
        "{point}: {duplicates} duplicates but only {requeued} messages were in flight at the crash"
    );
    // Messages committed but never acknowledged (the crash came between a
    // commit and its 202) are durable and sent too; only requests that got no
    // answer can be such messages, and one of them in flight at the crash is
    // sent again at most once.
    let extra: Vec<usize> = per_message.iter().filter(|(k, _)| !accepted_set.contains(k)).map(|(_, n)| *n).collect();
    let unanswered = MESSAGES - accepted.len();
    assert!(
        extra.len() <= unanswered,
        "{point}: {} unknown messages reached the provider, {unanswered} requests unanswered",
        extra.len()
    );
    assert!(extra.iter().all(|n| *n <= 2), "{point}: an unacknowledged message was sent {extra:?} times");
    eprintln!("{point}: accepted {}, in flight at crash {requeued}, duplicates {duplicates}", accepted.len());
}

#[tokio::test]
async fn crash_after_commit_before_reply() {
    crash_and_recover("after_commit", 25).await;
}

/// Embedded mode claims and marks `sending` in one transaction, so "after
/// claim" and "after marking sending" are the same point here.
#[tokio::test]
async fn crash_after_claiming_and_marking_sending() {
    crash_and_recover("after_begin_sending", 3).await;
}

#[tokio::test]
async fn crash_after_provider_call_before_storing_the_result() {
    crash_and_recover("after_provider_call", 10).await;
}

#[tokio::test]
async fn crash_after_storing_the_result_before_settling_the_queue() {
    crash_and_recover("before_ack", 10).await;
}
