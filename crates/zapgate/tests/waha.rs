//! The WAHA provider against `zapgate-sim` over real HTTP.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;
use zapgate_sim::Fault;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn sends_go_to_the_session_in_waha_shape_and_errors_are_classified() {
    let p = sim_provider(
        "waha",
        |sim| json!({"base_url": format!("http://{sim}"), "api_key": "waha-key", "session": "default"}),
        &[("ZAPGATE_MESSAGE_RETRY_BASE", "50ms")],
    )
    .await;
    let (s, sim, token, ins) = (&p.server, &p.sim, &p.token, &p.instance);
    let id = s.send_text(token, ins, "+5511999998888", "Olá").await;
    let m = s.wait_status(token, &id, &["sent"], WAIT).await;
    let pid = m["provider_message_id"].as_str().unwrap();
    assert!(pid.starts_with("true_5511999998888@c.us_3EB0"), "{pid}");
    let got = sim.received();
    assert_eq!(got[0].path, "/api/sendText");
    assert_eq!(got[0].token.as_deref(), Some("waha-key"));
    assert_eq!(
        got[0].body,
        json!({"session": "default", "chatId": "5511999998888@c.us", "text": "Olá", "linkPreview": false})
    );

    // A session that is not WORKING (422) is retried; a 400 fails the message.
    sim.push_faults([
        Fault { status: 422, code: 0, message: Some("Session status is not as expected".into()), retry_after: None },
        Fault { status: 400, code: 0, message: Some("chatId must be valid".into()), retry_after: None },
    ]);
    let bad = s.send_text(token, ins, "+5511999990000", "x").await;
    let m = s.wait_status(token, &bad, &["failed"], WAIT).await;
    assert_eq!(m["attempts"], 1);
    assert_eq!(m["error_code"], "waha_400");
}

/// Every kind WAHA takes goes out in its shape (texts, media, groups,
/// POST `sendLocation`, PUT `reaction` on the received message's serialized id).
#[tokio::test]
async fn every_kind_goes_out_in_waha_shape() {
    let p = sim_provider(
        "waha",
        |sim| json!({"base_url": format!("http://{sim}"), "api_key": "waha-key", "session": "default"}),
        &[],
    )
    .await;
    send_fixture_cases(&p, "waha", |route| format!("/api/{route}")).await;

    // A kind only the Cloud API sends fails at once, saying so, and nothing reaches WAHA.
    let before = p.sim.received().len();
    let card = json!({"instance_id": p.instance, "to": "+5511999998888", "type": "contacts",
                      "contacts": [{"name": {"formatted_name": "Ana Souza"}, "phones": [{"phone": "+5511988887777"}]}]});
    let r = p.server.post(&p.token, "/v1/messages", &card).await;
    assert_eq!(r.status(), 202);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let m = p.server.wait_status(&p.token, &id, &["failed"], WAIT).await;
    assert_eq!((m["error_code"].as_str(), m["attempts"].as_u64()), (Some("unsupported_message"), Some(0)));
    assert_eq!(p.sim.received().len(), before);
}
