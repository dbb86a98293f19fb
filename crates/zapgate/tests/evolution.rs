//! The Evolution API v2 provider against `zapgate-sim` over real HTTP.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;
use zapgate_sim::Fault;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn texts_and_media_go_out_in_evolution_v2_shape_and_errors_are_classified() {
    let p = sim_provider(
        "evolution",
        |sim| json!({"base_url": format!("http://{sim}/"), "api_key": "B6D711FCDE4D4FD5936544120E713976", "instance": "loja"}),
        &[("ZAPGATE_MESSAGE_RETRY_BASE", "50ms")],
    )
    .await;
    let (s, sim, token, ins) = (&p.server, &p.sim, &p.token, &p.instance);
    sim.add_evolution_instance("loja");
    let text = s.send_text(token, ins, "+5511999998888", "Olá").await;
    let m = s.wait_status(token, &text, &["sent"], WAIT).await;
    assert!(m["provider_message_id"].as_str().unwrap().starts_with("3EB0"));
    assert_eq!(m["wa_id"], "5511999998888");
    let image = json!({"instance_id": ins, "to": "+5511999998888", "type": "image",
        "image": {"link": "https://example.com/a.png", "caption": "c"}});
    let r = s.post(token, "/v1/messages", &image).await;
    let img = r.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    s.wait_status(token, &img, &["sent"], WAIT).await;
    let got = sim.received();
    assert_eq!(got[0].path, "/message/sendText/loja");
    assert_eq!(got[0].token.as_deref(), Some("B6D711FCDE4D4FD5936544120E713976"));
    assert_eq!(got[0].body, json!({"number": "5511999998888", "text": "Olá", "linkPreview": false}));
    assert_eq!(got[1].path, "/message/sendMedia/loja");
    assert_eq!(got[1].body["mediatype"], "image");

    // A 502 is retried; a 400 (e.g. the number is not on WhatsApp) fails the message.
    sim.push_faults([
        Fault { status: 502, code: 0, message: None, retry_after: None },
        Fault { status: 400, code: 0, message: Some("exists false".into()), retry_after: None },
    ]);
    let bad = s.send_text(token, ins, "+5511999990000", "x").await;
    let m = s.wait_status(token, &bad, &["failed"], WAIT).await;
    assert_eq!(m["attempts"], 1);
    assert_eq!(m["error_code"], "evolution_400");
    assert!(m["error_message"].as_str().unwrap().contains("exists false"));
}

/// Every kind Evolution takes goes out in its v2 shape (texts, media, groups,
/// stickers, locations, reactions).
#[tokio::test]
async fn every_kind_goes_out_in_evolution_v2_shape() {
    let p = sim_provider(
        "evolution",
        |sim| json!({"base_url": format!("http://{sim}/"), "api_key": "B6D711FCDE4D4FD5936544120E713976", "instance": "loja"}),
        &[],
    )
    .await;
    p.sim.add_evolution_instance("loja");
    send_fixture_cases(&p, "evolution", |route| format!("/message/{route}/loja")).await;
}
