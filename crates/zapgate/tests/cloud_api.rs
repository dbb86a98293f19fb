//! The Cloud API provider against `zapgate-sim` over real HTTP: request
//! shape, success, and each error class (throttled, transient, permanent).

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::Duration;
use zapgate_sim::Fault;

const WAIT: Duration = Duration::from_secs(20);

async fn cloud(env: &[(&str, &str)]) -> SimProvider {
    let config = |sim| {
        json!({"access_token": "EAAG-test-token", "phone_number_id": "106540352242922", "waba_id": "102290129340398",
               "base_url": format!("http://{sim}"), "api_version": "v21.0"})
    };
    sim_provider("cloud_api", config, env).await
}

fn fault(status: u16, code: i64) -> Fault {
    Fault { status, code, message: None, retry_after: None }
}

#[tokio::test]
async fn a_text_goes_out_in_the_cloud_api_shape_and_credentials_stay_private() {
    let p = cloud(&[]).await;
    let (s, sim, token, ins) = (&p.server, &p.sim, &p.token, &p.instance);
    let shown: Value = s.get(token, &format!("/v1/instances/{ins}")).await.json().await.unwrap();
    assert_eq!(shown["phone_number_id"], "106540352242922", "the real Meta id addresses it");
    assert!(!shown.to_string().contains("EAAG-test-token"), "the access token is never shown");
    let id = s.send_text(token, ins, "+5511999998888", "Olá").await;
    let m = s.wait_status(token, &id, &["sent"], WAIT).await;
    assert!(m["provider_message_id"].as_str().unwrap().starts_with("wamid."));
    let got = sim.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, "/v21.0/106540352242922/messages");
    assert_eq!(got[0].token.as_deref(), Some("EAAG-test-token"));
    assert_eq!(
        got[0].body,
        json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": "5511999998888",
               "type": "text", "text": {"body": "Olá", "preview_url": false}})
    );
}

#[tokio::test]
async fn throttling_waits_without_spending_attempts_and_outages_retry() {
    let p = cloud(&[("ZAPGATE_MESSAGE_RETRY_BASE", "50ms"), ("ZAPGATE_MESSAGE_RETRY_LIMIT", "3")]).await;
    let (s, sim, token, ins) = (&p.server, &p.sim, &p.token, &p.instance);
    sim.push_faults([fault(400, 130429), fault(400, 130429), fault(500, 131000), fault(503, 0)]);
    let id = s.send_text(token, ins, "+5511999998888", "eventually").await;
    let m = s.wait_status(token, &id, &["sent"], WAIT).await;
    assert_eq!(m["attempts"], 2, "two outages spent attempts; two throttles did not");
    let codes: Vec<String> = m["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["status"] == "retry_wait")
        .map(|e| e["error_code"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(codes, ["130429", "130429", "131000", "0"]);
    assert_eq!(sim.received().len(), 5);
}

#[tokio::test]
async fn permanent_errors_fail_with_metas_code_and_bad_configs_are_refused() {
    let p = cloud(&[]).await;
    let (s, sim, token, ins) = (&p.server, &p.sim, &p.token, &p.instance);
    sim.push_faults([Fault {
        status: 400,
        code: 131026,
        message: Some("Message undeliverable".into()),
        retry_after: None,
    }]);
    let id = s.send_text(token, ins, "+5511999998888", "nope").await;
    let m = s.wait_status(token, &id, &["failed"], WAIT).await;
    assert_eq!(m["error_code"], "131026");
    assert_eq!(m["error_message"], "Message undeliverable");
    // Groups cannot go through the Cloud API: refused at send, not retried.
    let g = s.send_text(token, ins, "120363012345678901@g.us", "x").await;
    let m = s.wait_status(token, &g, &["failed"], WAIT).await;
    assert_eq!(m["error_code"], "unsupported_recipient");

    for (config, field) in [
        (json!({"phone_number_id": "1"}), "config"),
        (json!({"access_token": "t", "phone_number_id": "abc"}), "config"),
        (
            json!({"access_token": "t", "phone_number_id": "1", "base_url": "ftp://graph.example.com"}),
            "config.base_url",
        ),
    ] {
        let r = s.post(token, "/v1/instances", &json!({"name": "x", "provider": "cloud_api", "config": config})).await;
        assert_eq!(r.status(), 422, "{config}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["details"]["field"], field, "{v}");
    }
    let r = s.post(token, "/v1/instances", &json!({"name": "x", "config": {"a": 1}})).await;
    assert_eq!(r.status(), 422, "the sandbox takes no configuration");
}

/// Twelve outage answers across four messages with a retry limit of 2: spent
/// one by one they would dead-letter at least two messages. The circuit
/// opens after two failures from two messages, the rest wait without
/// spending attempts while one probe at a time tests the endpoint, and all
/// four go out once it answers.
#[tokio::test]
async fn an_outage_opens_the_circuit_and_messages_wait_without_dying() {
    let p = cloud(&[
        ("ZAPGATE_MESSAGE_RETRY_BASE", "50ms"),
        ("ZAPGATE_MESSAGE_RETRY_LIMIT", "2"),
        ("ZAPGATE_PROVIDER_CIRCUIT_COOLDOWN", "100ms"),
    ])
    .await;
    let (s, sim, token, ins) = (&p.server, &p.sim, &p.token, &p.instance);
    let faults = 12;
    sim.push_faults((0..faults).map(|_| fault(503, 0)));
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(s.send_text(token, ins, &format!("+551199999000{n}"), "through an outage").await);
    }
    let mut waited_for_the_circuit = 0;
    for id in &ids {
        let m = s.wait_status(token, id, &["sent"], WAIT).await;
        let history = m["history"].as_array().unwrap();
        assert!(!history.iter().any(|e| ["failed", "dead"].contains(&e["status"].as_str().unwrap())), "{m:#}");
        assert!(m["attempts"].as_u64().unwrap() <= 1, "at most the failure before the circuit opened: {m:#}");
        waited_for_the_circuit += history.iter().filter(|e| e["error_code"] == "circuit_open").count();
    }
    assert!(waited_for_the_circuit > 0, "messages waited for the open circuit");
    // Each fault answered one call, each message then went out once: no call was wasted.
    assert_eq!(sim.received().len(), faults + ids.len());
    assert!(s.metric("zapgate_provider_circuit_opened_total", "").await >= 1.0);
    assert_eq!(
        s.metric("zapgate_provider_circuit_state", "endpoint=\"cloud_api http://127.0.0.1").await,
        0.0,
        "closed"
    );
}

/// A 429 with `Retry-After: 1` is retried no sooner than a second later,
/// without spending an attempt.
#[tokio::test]
async fn a_429_waits_at_least_its_retry_after() {
    let p = cloud(&[("ZAPGATE_MESSAGE_RETRY_BASE", "10ms")]).await;
    let (s, sim, token, ins) = (&p.server, &p.sim, &p.token, &p.instance);
    sim.push_faults([Fault { status: 429, code: 130429, message: None, retry_after: Some(1) }]);
    let id = s.send_text(token, ins, "+5511999998888", "later").await;
    let m = s.wait_status(token, &id, &["sent"], WAIT).await;
    assert_eq!(m["attempts"], 0, "throttling spends no attempt");
    // The first try was before the 429, so the gap between the tries is at least the wait.
    let waited = at(&m, "sending", 1) - at(&m, "sending", 0);
    assert!(waited >= 1000, "retried after {waited} ms, before Retry-After: {m:#}");
}

/// When the `nth` event of `status` happened, in Unix milliseconds.
fn at(m: &Value, status: &str, nth: usize) -> i64 {
    let history = m["history"].as_array().unwrap();
    let e = history.iter().filter(|e| e["status"] == status).nth(nth).unwrap_or_else(|| panic!("{m:#}"));
    zapgate_domain::Timestamp::parse_rfc3339(e["at"].as_str().unwrap()).unwrap().as_millis()
}

/// Meta's pair rate limit, at 1/s with no burst here: the second message to
/// one recipient waits its turn without spending an attempt; another
/// recipient is not held up.
#[tokio::test]
async fn one_recipient_is_paced_by_the_pair_limit_and_others_are_not() {
    let p = cloud(&[("ZAPGATE_PAIR_RATE_PER_MINUTE", "60"), ("ZAPGATE_PAIR_BURST", "1")]).await;
    let (s, sim, token, ins) = (&p.server, &p.sim, &p.token, &p.instance);
    let first = s.send_text(token, ins, "+5511999998888", "one").await;
    let second = s.send_text(token, ins, "+5511999998888", "two").await;
    let other = s.send_text(token, ins, "+5511999997777", "other").await;
    let first = s.wait_status(token, &first, &["sent"], WAIT).await;
    let second = s.wait_status(token, &second, &["sent"], WAIT).await;
    let other = s.wait_status(token, &other, &["sent"], WAIT).await;
    let codes = |m: &Value| -> Vec<String> {
        m["history"].as_array().unwrap().iter().filter_map(|e| e["error_code"].as_str().map(str::to_owned)).collect()
    };
    assert!(codes(&second).contains(&"pair_rate_limit".to_owned()), "{second:#}");
    assert_eq!(second["attempts"], 0, "the pair limit spends no attempt");
    let last_try = second["history"].as_array().unwrap().iter().filter(|e| e["status"] == "sending").count() - 1;
    let gap = at(&second, "sending", last_try) - at(&first, "sending", 0);
    assert!(gap >= 1000, "the second went out {gap} ms after the first");
    assert!(codes(&other).is_empty(), "another recipient is not paced: {other:#}");
    assert_eq!(sim.received().len(), 3, "each went out once");
}

/// Media uploaded to zapgate and sent by id goes to Meta the Cloud API way:
/// uploaded to the number's `/media` (multipart, with its type and name),
/// then sent by the id Meta answered — Meta needs no link back to zapgate.
#[tokio::test]
async fn media_sent_by_id_is_uploaded_to_meta_then_sent_by_metas_id() {
    let p = cloud(&[]).await;
    let (s, sim, token, ins) = (&p.server, &p.sim, &p.token, &p.instance);
    let pdf = b"%PDF-1.4 fatura de dezembro".to_vec();
    let r = s
        .http
        .post(s.url("/v1/media?filename=fatura.pdf"))
        .bearer_auth(token)
        .header("content-type", "application/pdf");
    let r = r.body(pdf.clone()).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let media = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();

    let body = json!({"instance_id": ins, "to": "+5511999998888", "type": "document",
        "document": {"id": media, "caption": "Sua fatura"}});
    let r = s.post(token, "/v1/messages", &body).await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    s.wait_status(token, &id, &["sent", "delivered", "read"], WAIT).await;

    let got = sim.received();
    let upload = got.iter().find(|r| r.path == "/v21.0/106540352242922/media").expect("uploaded to Meta");
    assert_eq!(upload.token.as_deref(), Some("EAAG-test-token"));
    assert_eq!(
        upload.body,
        json!({"messaging_product": "whatsapp", "type": "application/pdf",
               "file": {"filename": "fatura.pdf", "mime_type": "application/pdf", "size": pdf.len()}})
    );
    let send = got.iter().find(|r| r.path == "/v21.0/106540352242922/messages").expect("sent");
    let meta_id = send.body["document"]["id"].as_str().expect("sent by Meta's id");
    assert!(meta_id.bytes().all(|b| b.is_ascii_digit()), "{meta_id}");
    assert_eq!(send.body["document"], json!({"id": meta_id, "caption": "Sua fatura", "filename": "fatura.pdf"}));
    let stored = sim.cloud_uploaded(meta_id).expect("Meta holds the bytes");
    assert_eq!((stored.bytes, stored.mime_type.as_str()), (pdf, "application/pdf"));
}

/// Meta's own request examples (text, image by link, template, reply
/// buttons, location, reaction), sent through zapgate, reach the Graph API
/// exactly as Meta documents them.
#[tokio::test]
async fn every_kind_goes_out_as_metas_examples() {
    let p = cloud(&[]).await;
    send_fixture_cases(&p, "cloud_api", |_| "/v21.0/106540352242922/messages".into()).await;
}

/// A tenant template that is a Cloud API template: a campaign (and a plain
/// send naming it) goes out as template messages with each recipient's
/// values in the component texts.
#[tokio::test]
async fn a_cloud_template_fills_each_recipients_values_in_a_campaign_and_a_send() {
    let p = cloud(&[("ZAPGATE_TENANT_RATE_LIMIT", "0")]).await;
    let (s, sim, token, ins) = (&p.server, &p.sim, &p.token, &p.instance);
    let cloud_template = json!({"name": "billing_reminder", "language": {"code": "pt_BR"}, "components": [
        {"type": "body", "parameters": [{"type": "text", "text": "{{name}}"}, {"type": "text", "text": "R$ {{amount}}"}]}]});
    let r = s.post(token, "/v1/templates", &json!({"name": "billing", "cloud_template": cloud_template})).await;
    assert_eq!(r.status(), 201);
    let tpl: Value = r.json().await.unwrap();
    assert_eq!((tpl["kind"].as_str(), tpl["variables"].clone()), (Some("cloud"), json!(["amount", "name"])));
    let bad = json!({"name": "broken", "cloud_template": {"name": "x", "language": {"code": "pt_BR"},
        "components": [{"type": "body", "parameters": [{"type": "text", "text": "{{Nome}}"}]}]}});
    let r = s.post(token, "/v1/templates", &bad).await;
    assert_eq!(r.status(), 422);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["details"]["field"],
        "cloud_template.components/0/parameters/0/text"
    );

    let c: Value = s
        .post(
            token,
            "/v1/campaigns",
            &json!({"name": "dezembro", "instance_id": ins, "template_id": tpl["id"], "start": true, "recipients": [
                {"to": "+5511900000031", "variables": {"name": "Ana", "amount": "10,00"}},
                {"to": "+5511900000032", "variables": {"name": "Bia", "amount": "20,00"}}]}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(c["total"], 2, "{c:#}");
    let one = json!({"instance_id": ins, "to": "+5511900000033", "template_id": tpl["id"],
                     "variables": {"name": "Caio", "amount": "30,00"}});
    let r = s.post(token, "/v1/messages", &one).await;
    assert_eq!(r.status(), 202);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sim.received().len() < 3 {
        assert!(std::time::Instant::now() < deadline, "only {:?}", sim.received());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut got: Vec<(String, String, String)> = sim
        .received()
        .iter()
        .map(|r| {
            let b = &r.body;
            assert_eq!(
                (b["type"].as_str(), b["template"]["name"].as_str()),
                (Some("template"), Some("billing_reminder"))
            );
            let params = &b["template"]["components"][0]["parameters"];
            (
                b["to"].as_str().unwrap().to_owned(),
                params[0]["text"].as_str().unwrap().to_owned(),
                params[1]["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("5511900000031".to_owned(), "Ana".to_owned(), "R$ 10,00".to_owned()),
            ("5511900000032".into(), "Bia".into(), "R$ 20,00".into()),
            ("5511900000033".into(), "Caio".into(), "R$ 30,00".into())
        ]
    );
}
