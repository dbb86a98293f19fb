//! Provider webhooks (`/providers/{kind}/{account}/webhook`): authenticated
//! per provider, deduplicated per event, applied in the same transaction as
//! their events; statuses move messages forward, inbound messages are stored
//! once and raise `message.received`.

mod common;

use common::*;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn waha_signed(key: &str, body: &Value) -> (Vec<u8>, String) {
    let bytes = serde_json::to_vec(body).unwrap();
    let mut mac = Hmac::<sha2::Sha512>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(&bytes);
    (bytes, hex::encode(mac.finalize().into_bytes()))
}

async fn post_waha(s: &Server, url: &str, key: &str, body: &Value) -> reqwest::Response {
    let (bytes, sig) = waha_signed(key, body);
    s.http
        .post(url)
        .header("content-type", "application/json")
        .header("x-webhook-hmac", sig)
        .header("x-webhook-hmac-algorithm", "sha512")
        .body(bytes)
        .send()
        .await
        .unwrap()
}

async fn inbound(s: &Server, token: &str) -> Vec<Value> {
    let v: Value = s.get(token, "/v1/inbound-messages").await.json().await.unwrap();
    v["data"].as_array().unwrap().clone()
}

fn waha_ack(pid: &str, ack: u8) -> Value {
    // WAHA names a message `<fromMe>_<chat>_<id>`.
    let id = if pid.contains('_') { pid.to_owned() } else { format!("true_5511999998888@c.us_{pid}") };
    let name = ["PENDING", "SERVER", "DEVICE", "READ", "PLAYED"][ack as usize];
    json!({"id": "evt_01", "timestamp": 1767225600000i64, "event": "message.ack", "session": "default",
           "payload": {"id": id, "from": "5511999998888@c.us", "fromMe": true, "ack": ack,
                       "ackName": name}})
}

#[tokio::test]
async fn waha_webhooks_move_statuses_forward_and_store_inbound_messages_once() {
    let p = sim_provider(
        "waha",
        |sim| json!({"base_url": format!("http://{sim}"), "api_key": "waha-key", "session": "default"}),
        &[],
    )
    .await;
    let (s, token, ins) = (&p.server, &p.token, &p.instance);
    // An instance with its own settings shows where to point its provider.
    let detail: Value = s.get(token, &format!("/v1/instances/{ins}")).await.json().await.unwrap();
    let url = detail["webhook"]["url"].as_str().unwrap().to_owned();
    let key = detail["webhook"]["hmac_key"].as_str().unwrap().to_owned();
    assert_eq!(url, s.url(&format!("/providers/waha/{ins}/webhook")));
    assert!(key.len() >= 40, "{key}");

    let id = s.send_text(token, ins, "+5511999998888", "Olá").await;
    let m = s.wait_status(token, &id, &["sent"], WAIT).await;
    let pid = m["provider_message_id"].as_str().unwrap().to_owned();

    // READ applies; the same event again is a duplicate; a late DEVICE
    // (delivered) is history only.
    let r = post_waha(s, &url, &key, &waha_ack(&pid, 3)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"accepted": 1, "duplicates": 0, "ignored": 0}));
    let m = s.wait_status(token, &id, &["read"], WAIT).await;
    let r = post_waha(s, &url, &key, &waha_ack(&pid, 3)).await;
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"accepted": 0, "duplicates": 1, "ignored": 0}));
    let r = post_waha(s, &url, &key, &waha_ack(&pid, 2)).await;
    assert_eq!(r.json::<Value>().await.unwrap()["accepted"], 1);
    let after = s.message(token, &id).await;
    assert_eq!(after["status"], "read");
    let history = statuses(&after["history"]);
    assert_eq!(history, [statuses(&m["history"]), vec!["delivered".to_owned()]].concat());
    assert_eq!(after["history"].as_array().unwrap().last().unwrap()["applied"], false);

    // An inbound message is stored once, however often WAHA re-sends it.
    let msg = json!({"id": "evt_02", "timestamp": 1767225601000i64, "event": "message", "session": "default",
        "payload": {"id": "false_5511988887777@c.us_3EB0INBOUND1", "timestamp": 1767225600,
                    "from": "5511988887777@c.us", "fromMe": false, "body": "oi", "hasMedia": false,
                    "_data": {"notifyName": "Ana"}}});
    for _ in 0..3 {
        assert_eq!(post_waha(s, &url, &key, &msg).await.status(), 200);
    }
    let got = inbound(s, token).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["chat"], "+5511988887777");
    assert_eq!(got[0]["from_me"], false);
    assert_eq!(got[0]["content"], json!({"type": "text", "text": {"body": "oi"}}));
    assert_eq!(got[0]["sender_name"], "Ana");
    let one: Value = s.get(token, &format!("/v1/inbound-messages/{}", got[0]["id"].as_str().unwrap())).await.json().await.unwrap();
    assert_eq!(one["wa_message_id"], got[0]["wa_message_id"]);

    // A bad signature is refused and changes nothing; so is a body that is not WAHA's.
    let other = json!({"event": "message", "session": "default",
        "payload": {"id": "false_5511988887777@c.us_3EB0INBOUND2", "timestamp": 1767225600,
                    "from": "5511988887777@c.us", "fromMe": false, "body": "forged"}});
    let r = post_waha(s, &url, "not-the-key", &other).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "unauthorized");
    let r = s.http.post(&url).json(&other).send().await.unwrap();
    assert_eq!(r.status(), 401, "unsigned");
    let r = post_waha(s, &url, &key, &json!({"hello": "world"})).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "malformed_webhook");
    assert_eq!(inbound(s, token).await.len(), 1);

    // Unknown accounts and kinds without webhooks are 404.
    let r = post_waha(s, &s.url("/providers/waha/ins_0190a4c2d5e87a3b9c1d2e3f4a5b6c7d/webhook"), &key, &msg).await;
    assert_eq!(r.status(), 404);
    let r = post_waha(s, &s.url(&format!("/providers/sandbox/{ins}/webhook")), &key, &msg).await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn another_tenants_account_cannot_touch_a_message() {
    let p = sim_provider(
        "waha",
        |sim| json!({"base_url": format!("http://{sim}"), "api_key": "waha-key", "session": "default"}),
        &[],
    )
    .await;
    let (s, token, ins) = (&p.server, &p.token, &p.instance);
    let id = s.send_text(token, ins, "+5511999998888", "Olá").await;
    let pid = s.wait_status(token, &id, &["sent"], WAIT).await["provider_message_id"].as_str().unwrap().to_owned();

    // Another tenant's WAHA instance on the same session name reports a READ
    // for that id: its account has no such message, so it is parked, not applied.
    let (_, other_token) = s.tenant("mallory").await;
    let other = s
        .instance(
            &other_token,
            json!({"name": "w", "provider": "waha",
                   "config": {"base_url": "http://127.0.0.1:9", "api_key": "k", "session": "default"}}),
        )
        .await;
    let detail: Value = s.get(&other_token, &format!("/v1/instances/{other}")).await.json().await.unwrap();
    let (url, key) = (detail["webhook"]["url"].as_str().unwrap(), detail["webhook"]["hmac_key"].as_str().unwrap());
    assert_eq!(post_waha(s, url, key, &waha_ack(&pid, 3)).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.message(token, &id).await["status"], "sent");
}
