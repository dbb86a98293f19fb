//! The UAZAPI provider against `zapgate-sim` over real HTTP.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;
use zapgate_sim::Fault;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn sends_use_the_instance_token_and_messageid_and_errors_are_classified() {
    let p = sim_provider(
        "uazapi",
        |sim| json!({"base_url": format!("http://{sim}"), "token": "inst-tok"}),
        &[("ZAPGATE_MESSAGE_RETRY_BASE", "50ms")],
    )
    .await;
    let (s, sim, token, ins) = (&p.server, &p.sim, &p.token, &p.instance);
    sim.add_uazapi_instance("inst-tok");
    let id = s.send_text(token, ins, "+5511999998888", "Olá").await;
    let m = s.wait_status(token, &id, &["sent"], WAIT).await;
    let pid = m["provider_message_id"].as_str().unwrap();
    assert!(pid.starts_with("3EB0") && !pid.contains(':'), "the messageid, not the owner-prefixed id: {pid}");
    assert_eq!(m["wa_id"], "5511999998888");
    let got = sim.received();
    assert_eq!(got[0].path, "/send/text");
    assert_eq!(got[0].token.as_deref(), Some("inst-tok"));
    assert_eq!(got[0].body, json!({"number": "5511999998888", "text": "Olá", "linkPreview": false}));

    sim.push_faults([
        Fault { status: 500, code: 0, message: None, retry_after: None },
        Fault { status: 400, code: 0, message: Some("Missing number or text".into()), retry_after: None },
    ]);
    let bad = s.send_text(token, ins, "+5511999990000", "x").await;
    let m = s.wait_status(token, &bad, &["failed"], WAIT).await;
    assert_eq!(m["attempts"], 1);
    assert_eq!(m["error_code"], "uazapi_400");
    assert_eq!(m["error_message"], "Missing number or text");
}

/// Every kind UAZAPI takes goes out in its shape (`/send/text`,
/// `/send/media`, `/send/location`, `/message/react`).
#[tokio::test]
async fn every_kind_goes_out_in_uazapi_shape() {
    let p = sim_provider("uazapi", |sim| json!({"base_url": format!("http://{sim}"), "token": "inst-tok"}), &[]).await;
    p.sim.add_uazapi_instance("inst-tok");
    send_fixture_cases(&p, "uazapi", |route| match route {
        "react" => "/message/react".into(),
        other => format!("/send/{other}"),
    })
    .await;
}
