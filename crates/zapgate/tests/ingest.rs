//! Provider webhooks (`/providers/{kind}/{account}/webhook`): authenticated
//! per provider, deduplicated per event, applied in the same transaction as
//! their events; statuses move messages forward, inbound messages are stored
//! once and raise `message.received`.

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

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
    let one: Value =
        s.get(token, &format!("/v1/inbound-messages/{}", got[0]["id"].as_str().unwrap())).await.json().await.unwrap();
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

async fn subscribe(s: &Server, token: &str, url: &str, types: &[&str]) -> String {
    let r = s.post(token, "/v1/webhooks", &json!({"url": url, "event_types": types})).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    r.json::<Value>().await.unwrap()["secret"].as_str().unwrap().to_owned()
}

fn session_status(status: &str) -> Value {
    json!({"event": "session.status", "session": "default", "payload": {"name": "default", "status": status}})
}

#[tokio::test]
async fn a_storm_of_connection_events_is_coalesced_and_flapping_fails_the_instance() {
    let p = sim_provider(
        "waha",
        |sim| json!({"base_url": format!("http://{sim}"), "api_key": "waha-key", "session": "default"}),
        &[],
    )
    .await;
    let (s, token, ins) = (&p.server, &p.token, &p.instance);
    let (receiver, hook) = zapgate_sim::receiver::start().await.unwrap();
    receiver.set_secret(&subscribe(s, token, &hook, &["instance.status", "message.received"]).await);
    let detail: Value = s.get(token, &format!("/v1/instances/{ins}")).await.json().await.unwrap();
    let (url, key) = (detail["webhook"]["url"].as_str().unwrap(), detail["webhook"]["hmac_key"].as_str().unwrap());

    // 150 identical WORKING reports: one change, one event.
    for _ in 0..150 {
        assert_eq!(post_waha(s, url, key, &session_status("WORKING")).await.status(), 200);
    }
    let got = receiver.wait_for(1, |d| d.event_type() == "instance.status", WAIT).await;
    let v: Value = s.get(token, &format!("/v1/instances/{ins}")).await.json().await.unwrap();
    assert_eq!(v["state"], "open");
    assert_eq!(got[0].body["data"]["state"], "open");
    assert!(got[0].body["data"].get("previous_state").is_none(), "{:?}", got[0].body);
    assert!(got[0].verified, "signed per Standard Webhooks");

    // 150 alternating reports: five changes in the window, then `failed`
    // (flapping), then nothing until the window is quiet.
    for i in 0..150 {
        let status = if i % 2 == 0 { "STOPPED" } else { "WORKING" };
        assert_eq!(post_waha(s, url, key, &session_status(status)).await.status(), 200);
    }
    let mut got = receiver.wait_for(6, |d| d.event_type() == "instance.status", WAIT).await;
    // Deliveries run concurrently: `seq` restores the order.
    got.sort_by_key(|d| d.body["data"]["seq"].as_i64());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got_all: Vec<_> = receiver.got().into_iter().filter(|d| d.event_type() == "instance.status").collect();
    assert_eq!(got_all.len(), got.len(), "no events after failing: {got_all:?}");
    let states: Vec<&str> = got.iter().map(|d| d.body["data"]["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["open", "closed", "open", "closed", "open", "failed"], "{states:?}");
    assert_eq!(got[1].body["data"]["reason"], "unknown", "a STOPPED session gives no reason");
    assert_eq!(got[5].body["data"]["reason"], "flapping");
    let v: Value = s.get(token, &format!("/v1/instances/{ins}")).await.json().await.unwrap();
    assert_eq!((v["state"].as_str(), v["state_reason"].as_str()), (Some("failed"), Some("flapping")));
    assert!(s.metric("zapgate_instance_state_changes_total", "state=\"failed\"").await >= 1.0);

    // An inbound message reaches the tenant's webhook as message.received.
    let msg = json!({"event": "message", "session": "default",
        "payload": {"id": "false_5511988887777@c.us_3EB0STORM", "timestamp": 1767225600,
                    "from": "5511988887777@c.us", "fromMe": false, "body": "ainda aí?"}});
    assert_eq!(post_waha(s, url, key, &msg).await.status(), 200);
    let got = receiver.wait_for(1, |d| d.event_type() == "message.received", WAIT).await;
    let data = &got[0].body["data"];
    assert_eq!(data["status"], "received");
    assert_eq!(data["message"]["content"]["text"]["body"], "ainda aí?");
    assert_eq!(data["message"]["chat"], "+5511988887777");
    assert_eq!(data["chat_seq"], 1);
    assert!(got[0].verified);
}

/// Places an instance of `kind` on a sim server, links it by QR and returns
/// (server, sim, token, instance).
async fn pooled(kind: &str) -> (Server, std::sync::Arc<zapgate_sim::Sim>, String, String) {
    let (addr, sim) = zapgate_sim::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    sim.set_qr_scan_after(Duration::from_millis(50));
    let s = Server::start(&[("ZAPGATE_WEBHOOK_ALLOW_PRIVATE", "true")]).await;
    let r = s
        .post(
            ADMIN,
            "/v1/providers",
            &json!({"kind": kind, "name": "pool", "base_url": format!("http://{addr}"), "api_key": "k", "capacity": 5}),
        )
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let (_, token) = s.tenant("acme").await;
    let r = s.post(&token, "/v1/instances", &json!({"name": "n", "provider": kind})).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let instance = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(s.get(&token, &format!("/v1/instances/{instance}/qr")).await.status(), 200);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let v: Value = s.get(&token, &format!("/v1/instances/{instance}")).await.json().await.unwrap();
        if v["connection"]["state"] == "connected" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never connected: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (s, sim, token, instance)
}

/// A pooled instance's session gets zapgate's webhook registered at its
/// server: receipts of a send flow back and move the message to
/// `delivered`, and an inbound message is stored once.
async fn receipts_and_inbound_flow_back(kind: &str) {
    let (s, sim, token, ins) = pooled(kind).await;
    let id = s.send_text(&token, &ins, "+5511999998888", "Olá").await;
    let m = s.wait_status(&token, &id, &["delivered", "read"], WAIT).await;
    assert!(statuses(&m["history"]).contains(&"delivered".to_owned()), "{m}");
    let wa_id = match kind {
        "waha" => sim.waha_inbound_text(&ins, "5511988887777", "oi").await,
        "evolution" => sim.evolution_inbound_text(&ins, "5511988887777", "oi").await,
        "uazapi" => {
            let sim_token = sim.uazapi_token(&ins).expect("the instance exists at the server");
            sim.uazapi_inbound_text(&sim_token, "5511988887777", "oi").await
        }
        _ => unreachable!(),
    };
    let deadline = std::time::Instant::now() + WAIT;
    let got = loop {
        let got = inbound(&s, &token).await;
        if !got.is_empty() || std::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(wa_id.ends_with(got[0]["wa_message_id"].as_str().unwrap()), "{wa_id} vs {}", got[0]);
    assert_eq!(got[0]["chat"], "+5511988887777");
    assert_eq!(got[0]["content"]["text"]["body"], "oi");

    // Marked as read at the provider, in its shape.
    let wa = got[0]["wa_message_id"].as_str().unwrap();
    let r = s.post(&token, &format!("/v1/inbound-messages/{}/read", got[0]["id"].as_str().unwrap()), &json!({})).await;
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    let (path, body) = match kind {
        "waha" => (
            "/api/sendSeen".to_owned(),
            json!({"session": ins, "chatId": "5511988887777@c.us",
            "messageIds": [format!("false_5511988887777@c.us_{wa}")]}),
        ),
        "evolution" => (
            format!("/chat/markMessageAsRead/{ins}"),
            json!({"readMessages": [{"remoteJid": "5511988887777@s.whatsapp.net", "fromMe": false, "id": wa}]}),
        ),
        _ => ("/message/markread".to_owned(), json!({"id": [wa]})),
    };
    let asked = sim.received().into_iter().rev().find(|r| r.path == path).expect("asked to mark it read");
    assert_eq!(asked.body, body);

    // Reactions name messages by zapgate id: the received one, and our own.
    let sent = s.message(&token, &id).await;
    let ours = sent["provider_message_id"].as_str().unwrap().to_owned();
    for (target, wa_id, from_me) in [(got[0]["id"].as_str().unwrap(), wa.to_owned(), false), (id.as_str(), ours, true)]
    {
        let react = json!({"instance_id": ins, "to": "+5511988887777", "type": "reaction",
            "reaction": {"message_id": target, "emoji": "👍"}});
        let r = s.post(&token, "/v1/messages", &react).await;
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
        let reaction = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
        s.wait_status(&token, &reaction, &["sent", "delivered", "read"], WAIT).await;
        let (path, body) = match kind {
            "waha" => {
                let serialized =
                    if wa_id.contains('_') { wa_id.clone() } else { format!("{from_me}_5511988887777@c.us_{wa_id}") };
                ("/api/reaction".to_owned(), json!({"session": ins, "messageId": serialized, "reaction": "👍"}))
            }
            "evolution" => (
                format!("/message/sendReaction/{ins}"),
                json!({"key": {"remoteJid": "5511988887777@s.whatsapp.net",
                "fromMe": from_me, "id": wa_id}, "reaction": "👍"}),
            ),
            _ => ("/message/react".to_owned(), json!({"number": "5511988887777", "text": "👍", "id": wa_id})),
        };
        let asked =
            sim.received().into_iter().rev().find(|r| r.path == path).expect("the reaction reached the provider");
        assert_eq!(asked.body, body, "reacting to {target}");
    }
}

#[tokio::test]
async fn waha_receipts_and_inbound_messages_flow_back_from_a_pooled_session() {
    receipts_and_inbound_flow_back("waha").await;
}

#[tokio::test]
async fn evolution_receipts_and_inbound_messages_flow_back_from_a_pooled_instance() {
    receipts_and_inbound_flow_back("evolution").await;
}

#[tokio::test]
async fn uazapi_receipts_and_inbound_messages_flow_back_from_a_pooled_instance() {
    receipts_and_inbound_flow_back("uazapi").await;
}

#[tokio::test]
async fn cloud_api_statuses_and_messages_arrive_signed_with_the_app_secret() {
    let p = sim_provider(
        "cloud_api",
        |sim| {
            json!({"base_url": format!("http://{sim}"), "access_token": "EAAG", "phone_number_id": "106540352242922",
                   "app_secret": "meta-app-secret", "verify_token": "verify-me"})
        },
        &[],
    )
    .await;
    let (s, sim, token, ins) = (&p.server, &p.sim, &p.token, &p.instance);
    let detail: Value = s.get(token, &format!("/v1/instances/{ins}")).await.json().await.unwrap();
    let url = detail["webhook"]["url"].as_str().unwrap().to_owned();
    assert_eq!(url, s.url(&format!("/providers/cloud_api/{ins}/webhook")));
    assert!(detail["webhook"].get("hmac_key").is_none());

    // Meta's handshake: the challenge comes back only with the right verify token.
    let r = s
        .http
        .get(format!("{url}?hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=1158201444"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "1158201444");
    let r =
        s.http.get(format!("{url}?hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1")).send().await.unwrap();
    assert_eq!(r.status(), 403);

    sim.set_cloud_webhook(Some(zapgate_sim::hooks::Hook {
        url: url.clone(),
        signing: zapgate_sim::hooks::Signing::HubSha256("meta-app-secret".into()),
        headers: vec![],
    }));
    let id = s.send_text(token, ins, "+5511999998888", "Olá").await;
    s.wait_status(token, &id, &["delivered"], WAIT).await;
    sim.cloud_inbound_text("106540352242922", "5511988887777", "oi").await;
    let got = inbound(s, token).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["content"], json!({"type": "text", "text": {"body": "oi"}}));
    let r = s.post(token, &format!("/v1/inbound-messages/{}/read", got[0]["id"].as_str().unwrap()), &json!({})).await;
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    let read = sim.received().into_iter().rev().find(|r| r.body["status"] == "read").expect("marked read at Meta");
    assert_eq!(read.path, "/v21.0/106540352242922/messages");
    assert_eq!(
        read.body,
        json!({"messaging_product": "whatsapp", "status": "read", "message_id": got[0]["wa_message_id"]})
    );

    // Signed with another secret: refused, nothing stored.
    sim.set_cloud_webhook(Some(zapgate_sim::hooks::Hook {
        url,
        signing: zapgate_sim::hooks::Signing::HubSha256("not-the-app-secret".into()),
        headers: vec![],
    }));
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages",
        "value": {"messaging_product": "whatsapp", "metadata": {"phone_number_id": "106540352242922"},
                  "messages": [{"from": "5511988887777", "id": "wamid.FORGED", "timestamp": "1767225600",
                                "type": "text", "text": {"body": "forged"}}]}}]}]});
    assert_eq!(sim.cloud_post(body).await, 401);
    assert_eq!(inbound(s, token).await.len(), 1);
}

#[tokio::test]
async fn a_crash_right_after_the_ingest_commit_still_delivers_the_status_webhook() {
    let schedule = ("ZAPGATE_WEBHOOK_RETRY_SCHEDULE", "200ms,200ms,200ms,200ms,200ms,200ms,200ms,200ms,200ms,200ms");
    let SimProvider { server: s, sim: _sim, token, instance: ins } = sim_provider(
        "waha",
        |sim| json!({"base_url": format!("http://{sim}"), "api_key": "waha-key", "session": "default"}),
        &[schedule, ("ZAPGATE_CRASH_AT", "after_ingest_commit")],
    )
    .await;
    let (receiver, hook) = zapgate_sim::receiver::start().await.unwrap();
    receiver.set_secret(&subscribe(&s, &token, &hook, &["message.status"]).await);
    // Nothing is delivered before the crash: the receiver fails until then.
    receiver.fail_next(1_000_000);
    let detail: Value = s.get(&token, &format!("/v1/instances/{ins}")).await.json().await.unwrap();
    let (url, key) = (
        detail["webhook"]["url"].as_str().unwrap().to_owned(),
        detail["webhook"]["hmac_key"].as_str().unwrap().to_owned(),
    );
    let id = s.send_text(&token, &ins, "+5511999998888", "Olá").await;
    let pid = s.wait_status(&token, &id, &["sent"], WAIT).await["provider_message_id"].as_str().unwrap().to_owned();

    // The process dies after committing the READ, before answering WAHA.
    let (bytes, sig) = waha_signed(&key, &waha_ack(&pid, 3));
    let r = s.http.post(&url).header("x-webhook-hmac", sig).body(bytes).send().await;
    assert!(r.is_err(), "the process should have died before answering: {r:?}");
    let s = s.restart(&[schedule, ("ZAPGATE_WEBHOOK_ALLOW_PRIVATE", "true")]).await;
    receiver.fail_next(0);
    assert_eq!(s.message(&token, &id).await["status"], "read", "committed before the crash");
    let is_read = |d: &zapgate_sim::receiver::Delivery| d.body["data"]["status"] == "read";
    let got = receiver.wait_for(1, |d| is_read(d) && d.verified, WAIT).await;
    assert_eq!(got[0].body["data"]["message_id"], id.as_str());
    // WAHA re-sends what it got no answer for (to the restarted listener's
    // port): a duplicate, changing nothing.
    let url = s.url(&format!("/providers/waha/{ins}/webhook"));
    let r = post_waha(&s, &url, &key, &waha_ack(&pid, 3)).await;
    assert_eq!(r.json::<Value>().await.unwrap()["duplicates"], 1);
}

/// A QR code the provider shows (Evolution's `qrcode.updated`) reaches the
/// tenant as `instance.qr` with the code, once however often it is re-sent,
/// and moves the instance to `qr`.
#[tokio::test]
async fn a_new_qr_code_reaches_the_tenant_once_as_instance_qr() {
    let (addr, sim) = zapgate_sim::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let s = Server::start(&[("ZAPGATE_WEBHOOK_ALLOW_PRIVATE", "true")]).await;
    let pool = json!({"kind": "evolution", "name": "pool", "base_url": format!("http://{addr}"), "api_key": "k"});
    assert_eq!(s.post(ADMIN, "/v1/providers", &pool).await.status(), 201);
    let (_, token) = s.tenant("acme").await;
    let (receiver, hook) = zapgate_sim::receiver::start().await.unwrap();
    receiver.set_secret(&subscribe(&s, &token, &hook, &["instance.qr"]).await);
    let r = s.post(&token, "/v1/instances", &json!({"name": "n", "provider": "evolution"})).await;
    let ins = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();

    // Asking for the QR makes the server show one, and say so by webhook.
    let qr: Value = s.get(&token, &format!("/v1/instances/{ins}/qr")).await.json().await.unwrap();
    let code = qr["qr"].as_str().unwrap().to_owned();
    let got = receiver.wait_for(1, |d| d.event_type() == "instance.qr", WAIT).await;
    assert_eq!(got[0].body["data"]["qr"], code.as_str(), "{:?}", got[0].body);
    assert_eq!(got[0].body["data"]["instance_id"], ins.as_str());
    assert!(got[0].verified);
    let v: Value = s.get(&token, &format!("/v1/instances/{ins}")).await.json().await.unwrap();
    assert_eq!(v["state"], "qr");

    // The same code again: nothing new.
    let again = zapgate_sim::evolution::envelope(
        &ins,
        "qrcode.updated",
        json!({"qrcode": {"instance": ins, "pairingCode": null, "code": code, "base64": "data:image/png;base64,AA=="}}),
    );
    assert_eq!(sim.evolution_post(&ins, again).await, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.got().iter().filter(|d| d.event_type() == "instance.qr").count(), 1);
}
