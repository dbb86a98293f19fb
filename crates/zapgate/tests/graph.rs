//! The WhatsApp Cloud API facade under `/graph`: Meta's own request examples
//! sent through it reach the provider unchanged, Chatwoot's requests work as
//! it sends them, media round-trips with numeric ids, and every failure comes
//! in the Graph error shape.

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);
const META_PNID: &str = "106540352242922";

async fn cloud() -> SimProvider {
    let config = |sim| {
        json!({"access_token": "EAAG-test-token", "phone_number_id": META_PNID, "waba_id": "102290129340398",
               "base_url": format!("http://{sim}"), "api_version": "v21.0", "app_secret": "meta-app-secret"})
    };
    sim_provider("cloud_api", config, &[]).await
}

/// The simulated Meta posts the number's webhooks to zapgate, signed with the app secret.
async fn meta_posts_to_zapgate(p: &SimProvider) {
    let detail: Value = p.server.get(&p.token, &format!("/v1/instances/{}", p.instance)).await.json().await.unwrap();
    p.sim.set_cloud_webhook(Some(zapgate_sim::hooks::Hook {
        url: detail["webhook"]["url"].as_str().unwrap().to_owned(),
        signing: zapgate_sim::hooks::Signing::HubSha256("meta-app-secret".into()),
        headers: vec![],
    }));
}

/// Meta's response examples (tests/fixtures/graph_responses.json).
fn meta_response(name: &str) -> Value {
    let file = format!("{}/tests/fixtures/graph_responses.json", env!("CARGO_MANIFEST_DIR"));
    let all: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    all[name].clone()
}

/// Every field of Meta's example is in zapgate's answer, with the same JSON type.
fn shaped_like(ours: &Value, theirs: &Value, path: &str) {
    match (ours, theirs) {
        (Value::Object(o), Value::Object(t)) => {
            for (k, v) in t {
                let mine = o.get(k).unwrap_or_else(|| panic!("{path}.{k} missing from {ours}"));
                shaped_like(mine, v, &format!("{path}.{k}"));
            }
        }
        (Value::Array(o), Value::Array(t)) => {
            if let (Some(mine), Some(v)) = (o.first(), t.first()) {
                shaped_like(mine, v, &format!("{path}[0]"));
            }
        }
        (o, t) => assert_eq!(std::mem::discriminant(o), std::mem::discriminant(t), "{path}: {o} vs Meta's {t}"),
    }
}

/// The tenant's instance as the facade addresses it: (phone_number_id, waba_id).
async fn graph_ids(s: &Server, token: &str, instance: &str) -> (String, String) {
    let v: Value = s.get(token, &format!("/v1/instances/{instance}")).await.json().await.unwrap();
    (v["phone_number_id"].as_str().unwrap().to_owned(), v["waba_id"].as_str().unwrap().to_owned())
}

/// The zapgate message id a facade send answered with, after checking the answer's shape.
async fn sent_id(r: reqwest::Response, input: &str) -> String {
    assert_eq!(r.status(), 200, "clients take anything but 200 as failure");
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: Value = r.json().await.unwrap();
    shaped_like(&v, &meta_response("send"), "send");
    assert_eq!(v["messaging_product"], "whatsapp");
    assert_eq!(v["contacts"][0]["input"], input);
    assert_eq!(v["contacts"][0]["wa_id"], input.trim_start_matches('+'));
    let wamid = v["messages"][0]["id"].as_str().unwrap();
    wamid.strip_prefix("wamid.").unwrap_or_else(|| panic!("not a wamid: {wamid}")).to_owned()
}

/// The Graph error of a failed facade call: (HTTP status, code, subcode).
async fn graph_error(r: reqwest::Response) -> (u16, u64, u64, Value) {
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    shaped_like(&v, &meta_response("error"), "error");
    let e = v["error"].clone();
    (status, e["code"].as_u64().unwrap(), e["error_subcode"].as_u64().unwrap(), e)
}

#[tokio::test]
async fn metas_request_examples_sent_through_the_facade_reach_the_provider_unchanged() {
    let p = cloud().await;
    let (s, sim, token) = (&p.server, &p.sim, &p.token);
    let file = format!("{}/../zapgate-providers/fixtures/cloud_api/send_requests.json", env!("CARGO_MANIFEST_DIR"));
    let fixtures: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    for case in fixtures["cases"].as_array().unwrap() {
        let (name, request) = (case["name"].as_str().unwrap(), &case["expected"]);
        // Clients send any version; zapgate sends with the instance's own.
        let r = s.post(token, &format!("/graph/v23.0/{META_PNID}/messages"), request).await;
        let id = sent_id(r, request["to"].as_str().unwrap()).await;
        let m = s.wait_status(token, &id, &["sent", "delivered", "read"], WAIT).await;
        assert_eq!(m["instance_id"], p.instance.as_str(), "{name}");
        let got = sim.received().into_iter().rev().find(|r| r.path == format!("/v21.0/{META_PNID}/messages"));
        assert_eq!(got.unwrap_or_else(|| panic!("{name}: nothing sent")).body, *request, "{name}");
    }
}

#[tokio::test]
async fn chatwoots_calls_work_as_it_makes_them() {
    let s = Server::start(&[]).await;
    let (token, ins) = s.tenant_with_instance("acme", 100).await;
    let (pnid, waba) = graph_ids(&s, &token, &ins).await;

    // Inbox set-up: templates with the token as a query parameter (older Chatwoot).
    let r = s.http.get(s.url(&format!("/graph/v17.0/{waba}/message_templates?access_token={token}"))).send().await;
    let r = r.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"data": [], "paging": {}}));

    // An agent's reply, exactly as Chatwoot's WhatsApp Cloud service posts it.
    let body = json!({"messaging_product": "whatsapp", "context": null, "to": "5511999998888", "type": "text",
                      "text": {"body": "Olá! Como posso ajudar?"}});
    let id = sent_id(s.post(&token, &format!("/graph/v17.0/{pnid}/messages"), &body).await, "5511999998888").await;
    let m = s.wait_status(&token, &id, &["sent", "delivered", "read"], WAIT).await;
    assert_eq!(
        (&m["type"], &m["text"]),
        (&json!("text"), &json!({"body": "Olá! Como posso ajudar?", "preview_url": false}))
    );
    assert_eq!(m["to"], "+5511999998888");

    // An attachment: Chatwoot links its own storage; `caption` may be null.
    let body = json!({"messaging_product": "whatsapp", "context": null, "to": "5511999998888", "type": "document",
                      "document": {"link": "https://chatwoot.example/rails/active_storage/blobs/x/fatura.pdf",
                                   "caption": null, "filename": "fatura.pdf"}});
    let id = sent_id(s.post(&token, &format!("/graph/v17.0/{pnid}/messages"), &body).await, "5511999998888").await;
    let m = s.wait_status(&token, &id, &["sent", "delivered", "read"], WAIT).await;
    assert_eq!(m["document"]["filename"], "fatura.pdf");
    let receipts = s.receipts();
    assert!(receipts.iter().any(|r| r["message_id"] == id.as_str()), "the sandbox got it: {receipts:?}");
}

#[tokio::test]
async fn failures_come_in_the_graph_error_shape_with_metas_codes() {
    let s = Server::start(&[]).await;
    let (token, ins) = s.tenant_with_instance("acme", 100).await;
    let (other_token, other_ins) = s.tenant_with_instance("globex", 100).await;
    let (pnid, _) = graph_ids(&s, &token, &ins).await;
    let (other_pnid, _) = graph_ids(&s, &other_token, &other_ins).await;
    let path = format!("/graph/v20.0/{pnid}/messages");
    let text = json!({"messaging_product": "whatsapp", "to": "5511999998888", "type": "text", "text": {"body": "x"}});

    let r = s.http.post(s.url(&path)).bearer_auth("zg_live_not-a-token").json(&text).send().await.unwrap();
    assert_eq!(graph_error(r).await.1, 190);
    let r = s.http.post(s.url(&path)).json(&text).send().await.unwrap();
    let (status, code, _, _) = graph_error(r).await;
    assert_eq!((status, code), (401, 190), "no token at all");

    // Another tenant's number does not exist for this one.
    let r = s.post(&token, &format!("/graph/v20.0/{other_pnid}/messages"), &text).await;
    let (status, code, subcode, _) = graph_error(r).await;
    assert_eq!((status, code, subcode), (404, 100, 33));

    let mut bad_to = text.clone();
    bad_to["to"] = json!("abc");
    let (status, code, _, e) = graph_error(s.post(&token, &path, &bad_to).await).await;
    assert_eq!((status, code, e["error_data"]["field"].as_str()), (400, 100, Some("to")));
    assert!(e["message"].as_str().unwrap().starts_with("(#100) "), "{e}");

    let r = s.http.post(s.url(&path)).bearer_auth(&token).body("{not json").send().await.unwrap();
    assert_eq!(graph_error(r).await.1, 100);
    let mut unknown_kind = text.clone();
    unknown_kind["type"] = json!("carousel");
    assert_eq!(graph_error(s.post(&token, &path, &unknown_kind).await).await.1, 100);
    let r = s.post(&token, &format!("/graph/v20.0/{pnid}/block_users"), &json!({})).await;
    assert_eq!(graph_error(r).await.1, 2500, "unknown edges are unknown path components");

    let listed: Value = s.get(&token, "/v1/messages").await.json().await.unwrap();
    assert_eq!(listed["data"], json!([]), "no failed call wrote anything");
}

#[tokio::test]
async fn media_uploads_with_numeric_ids_download_and_send_by_id() {
    let s = Server::start(&[]).await;
    let (token, ins) = s.tenant_with_instance("acme", 100).await;
    let (pnid, _) = graph_ids(&s, &token, &ins).await;
    let photo = b"\xff\xd8\xff\xe0 a photo's bytes".to_vec();

    // `messaging_product` only as a query parameter; the type from the part.
    let part = reqwest::multipart::Part::bytes(photo.clone()).file_name("foto.jpg").mime_str("image/jpeg").unwrap();
    let form = reqwest::multipart::Form::new().part("file", part);
    let url = s.url(&format!("/graph/v20.0/{pnid}/media?messaging_product=whatsapp"));
    let r = s.http.post(url).bearer_auth(&token).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let uploaded: Value = r.json().await.unwrap();
    shaped_like(&uploaded, &meta_response("upload"), "upload");
    let media_id = uploaded["id"].as_str().unwrap().to_owned();
    assert!(media_id.bytes().all(|b| b.is_ascii_digit()), "media ids are digit strings: {media_id}");

    let info: Value = s.get(&token, &format!("/graph/v20.0/{media_id}")).await.json().await.unwrap();
    shaped_like(&info, &meta_response("retrieve"), "retrieve");
    assert_eq!(info["id"], media_id.as_str());
    assert_eq!(info["mime_type"], "image/jpeg");
    assert_eq!(info["file_size"], photo.len());
    assert_eq!(info["sha256"], hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&photo)));
    // Clients download the url with their Bearer token.
    let r = s.http.get(info["url"].as_str().unwrap()).bearer_auth(&token).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.bytes().await.unwrap().to_vec()), (200, photo.clone()));

    let body = json!({"messaging_product": "whatsapp", "to": "5511999998888", "type": "image",
                      "image": {"id": media_id, "caption": "a foto"}});
    let id = sent_id(s.post(&token, &format!("/graph/v20.0/{pnid}/messages"), &body).await, "5511999998888").await;
    s.wait_status(&token, &id, &["sent", "delivered", "read"], WAIT).await;

    // Another tenant cannot see it; its owner can delete it, and then it is gone.
    let (other, _) = s.tenant_with_instance("globex", 100).await;
    assert_eq!(graph_error(s.get(&other, &format!("/graph/v20.0/{media_id}")).await).await.1, 100);
    let r = s.http.delete(s.url(&format!("/graph/v20.0/{media_id}"))).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), meta_response("delete"));
    let (status, code, subcode, _) = graph_error(s.get(&token, &format!("/graph/v20.0/{media_id}")).await).await;
    assert_eq!((status, code, subcode), (404, 100, 33));

    // No file part: a clear parameter error.
    let form = reqwest::multipart::Form::new().text("messaging_product", "whatsapp");
    let url = s.url(&format!("/graph/v20.0/{pnid}/media"));
    let r = s.http.post(url).bearer_auth(&token).multipart(form).send().await.unwrap();
    let (status, code, _, e) = graph_error(r).await;
    assert_eq!((status, code, e["error_data"]["field"].as_str()), (400, 100, Some("file")));
}

#[tokio::test]
async fn a_received_message_is_marked_read_and_replied_to_through_the_facade() {
    let p = cloud().await;
    let (s, sim, token) = (&p.server, &p.sim, &p.token);
    meta_posts_to_zapgate(&p).await;
    sim.cloud_inbound_text(META_PNID, "5511988887777", "oi").await;
    let got: Value = s.get(token, "/v1/inbound-messages").await.json().await.unwrap();
    let received = &got["data"][0];
    let wamid = format!("wamid.{}", received["id"].as_str().unwrap());
    let body = json!({"messaging_product": "whatsapp", "status": "read", "message_id": wamid});
    let r = s.post(token, &format!("/graph/v20.0/{META_PNID}/messages"), &body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), meta_response("mark_read"));
    let read = sim.received().into_iter().rev().find(|r| r.body["status"] == "read").expect("marked read at Meta");
    assert_eq!(read.body["message_id"], received["wa_message_id"]);

    let body = json!({"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.unknown"});
    let r = s.post(token, &format!("/graph/v20.0/{META_PNID}/messages"), &body).await;
    assert_eq!(graph_error(r).await.1, 100);

    // The number's templates are Meta's (the sim answers its sample one).
    let r = s.get(token, "/graph/v20.0/102290129340398/message_templates").await;
    assert_eq!(r.status(), 200);
    let listed: Value = r.json().await.unwrap();
    assert_eq!(
        (listed["data"][0]["name"].as_str(), listed["data"][0]["status"].as_str()),
        (Some("hello_world"), Some("APPROVED"))
    );

    // A reply quoting it by the facade's id reaches Meta quoting WhatsApp's id.
    let reply = json!({"messaging_product": "whatsapp", "context": {"message_id": wamid}, "to": "5511988887777",
                       "type": "text", "text": {"body": "respondendo"}});
    let id = sent_id(s.post(token, &format!("/graph/v20.0/{META_PNID}/messages"), &reply).await, "5511988887777").await;
    let m = s.wait_status(token, &id, &["sent", "delivered", "read"], WAIT).await;
    assert_eq!(m["reply_to"], received["id"], "kept as the send named it");
    let got = sim.received().into_iter().rev().find(|r| r.body["text"]["body"] == "respondendo").unwrap();
    assert_eq!(got.body["context"], json!({"message_id": received["wa_message_id"]}));
    // Quoting a zapgate id that names nothing fails the message, saying why.
    let ghost = json!({"messaging_product": "whatsapp", "context": {"message_id": "wamid.msg_0193a1b2c3d47e8f9a0b1c2d3e4f5a6b"},
                       "to": "5511988887777", "type": "text", "text": {"body": "?"}});
    let id = sent_id(s.post(token, &format!("/graph/v20.0/{META_PNID}/messages"), &ghost).await, "5511988887777").await;
    let m = s.wait_status(token, &id, &["failed"], WAIT).await;
    assert_eq!(m["error_code"], "reply_target_unknown");
}

/// A Cloud API-shaped webhook subscription, as Chatwoot's WhatsApp Cloud
/// inbox takes them: verified with the hub.challenge handshake first, then
/// every status of a facade send and every received message arrives in
/// Meta's shape, ASCII-only, with a length, signed with the app secret, and
/// naming messages by the ids the facade gave out.
#[tokio::test]
async fn cloud_shaped_webhooks_reach_a_cloud_receiver_as_meta_sends_them() {
    let p = cloud().await;
    let (s, sim, token, ins) = (&p.server, &p.sim, &p.token, &p.instance);
    meta_posts_to_zapgate(&p).await;
    let r = s.http.patch(s.url(&format!("/v1/instances/{ins}"))).bearer_auth(token);
    let r = r.json(&json!({"phone_number": "+1 555 078 3881"})).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["phone_number"], "15550783881");

    let (receiver, base) = zapgate_sim::cloud_receiver::start("chatwoot-app-secret", "chatwoot-verify").await.unwrap();
    let url = format!("{base}/webhooks/whatsapp/+15550783881");
    let subscribe = |verify_token: &str, types: Value| {
        json!({"url": url, "format": "cloud_api", "app_secret": "chatwoot-app-secret",
               "verify_token": verify_token, "event_types": types})
    };
    let r = s.post(token, "/v1/webhooks", &subscribe("wrong-token", json!([]))).await;
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "verification_failed");
    let r = s.post(token, "/v1/webhooks", &subscribe("chatwoot-verify", json!(["instance.status"]))).await;
    assert_eq!(r.status(), 422, "the Cloud API has no webhook for instance events");
    let r = s.post(token, "/v1/webhooks", &subscribe("chatwoot-verify", json!([]))).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let created: Value = r.json().await.unwrap();
    assert_eq!(
        (created["format"].as_str(), created["app_secret"].as_str()),
        (Some("cloud_api"), Some("chatwoot-app-secret"))
    );
    let patch = s.http.patch(s.url(&format!("/v1/webhooks/{}", created["id"].as_str().unwrap()))).bearer_auth(token);
    let r = patch.json(&json!({"event_types": []})).send().await.unwrap();
    assert_eq!(r.status(), 422, "a cloud_api webhook cannot be widened to every event type");

    let body = json!({"messaging_product": "whatsapp", "to": "5511999998888", "type": "text", "text": {"body": "Olá"}});
    let id = sent_id(s.post(token, &format!("/graph/v21.0/{META_PNID}/messages"), &body).await, "5511999998888").await;
    let wamid = format!("wamid.{id}");
    let status_of = |d: &zapgate_sim::cloud_receiver::CloudDelivery| {
        d.body["entry"][0]["changes"][0]["value"]["statuses"][0]["status"].as_str().unwrap_or_default().to_owned()
    };
    let got = receiver.wait_for(2, |d| ["sent", "delivered"].contains(&status_of(d).as_str()), WAIT).await;
    for d in &got {
        assert!(d.verified, "X-Hub-Signature-256 checks out: {:?}", d.body);
        assert_eq!(d.phone, "+15550783881");
        assert_eq!(d.content_length, Some(d.raw.len()), "sent with a Content-Length");
        assert_eq!(d.body["object"], "whatsapp_business_account");
        assert_eq!(d.body["entry"][0]["id"], "102290129340398");
        let value = &d.body["entry"][0]["changes"][0]["value"];
        assert_eq!(value["metadata"], json!({"display_phone_number": "15550783881", "phone_number_id": META_PNID}));
        assert_eq!(value["statuses"][0]["id"], wamid.as_str(), "the id the send answered with");
        assert_eq!(value["statuses"][0]["recipient_id"], "5511999998888");
        assert_eq!(value["contacts"][0]["user_id"], "5511999998888");
    }

    sim.cloud_inbound_text(META_PNID, "5511988887777", "Olá 😀").await;
    let got = receiver.wait_for(1, |d| !d.body["entry"][0]["changes"][0]["value"]["messages"].is_null(), WAIT).await;
    let d = &got[0];
    assert!(d.verified);
    assert!(d.raw.is_ascii(), "non-ASCII is escaped as Meta does");
    let raw = String::from_utf8(d.raw.clone()).unwrap();
    assert!(raw.contains(r"Ol\u00e1 \ud83d\ude00"), "{raw}");
    let value = &d.body["entry"][0]["changes"][0]["value"];
    assert_eq!(value["contacts"][0]["wa_id"], "5511988887777");
    assert!(value["contacts"][0]["user_id"].is_string());
    let m = &value["messages"][0];
    assert_eq!((m["from"].as_str(), m["type"].as_str()), (Some("5511988887777"), Some("text")));
    assert_eq!(m["text"]["body"], "Olá 😀");
    // The receiver marks it read with the id it got, through the facade.
    let read = json!({"messaging_product": "whatsapp", "status": "read", "message_id": m["id"]});
    let r = s.post(token, &format!("/graph/v21.0/{META_PNID}/messages"), &read).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}
