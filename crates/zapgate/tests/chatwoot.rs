//! Chatwoot connected as an API-channel inbox with an account webhook:
//! agents' replies reach WhatsApp once however often Chatwoot's webhook
//! arrives, with their attachments; notes, incoming messages and echoes are
//! not sent; unsigned webhooks are refused when a secret is set.

mod common;

use common::*;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use zapgate_sim::chatwoot::{Chatwoot, Message};

const WAIT: Duration = Duration::from_secs(20);
const CONTACT: &str = "+5511988887777";
const SECRET: &str = "cw-webhook-secret";

/// Connects a Chatwoot inbox to the tenant's instance; returns the integration.
async fn integrate(s: &Server, token: &str, instance: &str, chatwoot: &str, secret: Option<&str>) -> Value {
    let body = json!({"instance_id": instance, "base_url": chatwoot, "account_id": 1, "inbox_id": 7,
                      "api_access_token": "cw-agent-token", "webhook_secret": secret});
    let r = s.post(token, "/v1/chatwoot-integrations", &body).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    r.json().await.unwrap()
}

/// The sandbox receipts of sends to `to`.
fn sends_to(s: &Server, to: &str) -> Vec<Value> {
    s.receipts().into_iter().filter(|r| r["to"] == to.trim_start_matches('+')).collect()
}

async fn wait_sends(s: &Server, to: &str, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = sends_to(s, to);
        if got.len() >= n {
            return got;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {} of {n} sends to {to}", got.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn status_of(r: reqwest::Response) -> (u16, String) {
    let code = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    (code, v["status"].as_str().or(v["error"]["code"].as_str()).unwrap_or_default().to_owned())
}

/// Seed 003's promise: the same Chatwoot webhook, delivered at once to three
/// ingest processes (one in embedded mode, three requests at once) and again
/// later, after every lock has expired, makes exactly one send.
#[tokio::test]
async fn one_chatwoot_message_delivered_three_times_at_once_and_again_later_is_sent_once() {
    let env = [("ZAPGATE_WEBHOOK_ALLOW_PRIVATE", "true"), ("ZAPGATE_CHATWOOT_LOCK_TTL_MS", "300")];
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let main = Server::start_in(dir.clone(), &env).await;
    let mut ingests = Vec::new();
    if distributed() {
        for _ in 0..3 {
            ingests.push(Server::start_role("ingest", dir.clone(), &env).await);
        }
    }
    let (_, token) = main.tenant("acme").await;
    let ins = main.instance(&token, json!({"name": "main", "rate_limit_per_second": 100})).await;
    let (cw, base) = zapgate_sim::chatwoot::start().await.unwrap();
    let integration = integrate(&main, &token, &ins, &base, Some(SECRET)).await;
    let id = integration["id"].as_str().unwrap();
    assert!(integration["webhook_url"].as_str().unwrap().ends_with(&format!("/webhooks/chatwoot/{id}")));
    assert!(integration.get("api_access_token").is_none() && integration.get("webhook_secret").is_none());

    let payload = cw.message_created(&Message::reply(4321, 42, CONTACT, "Sua fatura vence amanhã."));
    let urls: Vec<String> = if ingests.is_empty() {
        vec![main.url(&format!("/webhooks/chatwoot/{id}")); 3]
    } else {
        ingests.iter().map(|i| i.url(&format!("/webhooks/chatwoot/{id}"))).collect()
    };
    let copies: Vec<_> = urls
        .iter()
        .map(|u| {
            let (u, payload) = (u.clone(), payload.clone());
            tokio::spawn(async move { status_of(Chatwoot::fire(&u, &payload, Some(SECRET)).await.unwrap()).await })
        })
        .collect();
    let mut answers = Vec::new();
    for copy in copies {
        answers.push(copy.await.unwrap());
    }
    let queued = answers.iter().filter(|a| a.1 == "queued").count();
    assert!(answers.iter().all(|(code, _)| *code == 200), "{answers:?}");
    assert_eq!(queued, 1, "one copy queues it, the others find it queued: {answers:?}");
    assert!(answers.iter().all(|a| a.1 == "queued" || a.1 == "already_queued"), "{answers:?}");
    let sent = wait_sends(&main, CONTACT, 1).await;

    // Later (every lock long expired), Chatwoot delivers it again.
    tokio::time::sleep(Duration::from_millis(800)).await;
    for u in &urls {
        assert_eq!(
            status_of(Chatwoot::fire(u, &payload, Some(SECRET)).await.unwrap()).await,
            (200, "already_queued".into())
        );
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(sends_to(&main, CONTACT).len(), 1, "sent once: {sent:?}");
    let m = main.message(&token, sent[0]["message_id"].as_str().unwrap()).await;
    assert_eq!(m["text"]["body"], "Sua fatura vence amanhã.");
    assert_eq!(m["instance_id"], ins.as_str());
}

/// An agent's reply with a file: zapgate fetches it from Chatwoot (following
/// Active Storage's redirect), keeps it, and sends it by media id with the
/// text as its caption.
#[tokio::test]
async fn an_agents_reply_with_an_attachment_reaches_the_provider() {
    let s = Server::start(&[("ZAPGATE_WEBHOOK_ALLOW_PRIVATE", "true")]).await;
    let (token, ins) = s.tenant_with_instance("acme", 100).await;
    let (cw, base) = zapgate_sim::chatwoot::start().await.unwrap();
    let integration = integrate(&s, &token, &ins, &base, None).await;
    let url = integration["webhook_url"].as_str().unwrap();
    let pdf = b"%PDF-1.4 a bill".to_vec();
    let mut reply = Message::reply(77, 42, CONTACT, "Segue a fatura");
    reply.attachments.push(("file".into(), cw.add_file("fatura.pdf", "application/pdf", &pdf)));
    let r = Chatwoot::fire(url, &cw.message_created(&reply), None).await.unwrap();
    assert_eq!(status_of(r).await, (200, "queued".into()));

    let sent = wait_sends(&s, CONTACT, 1).await;
    let m = s.message(&token, sent[0]["message_id"].as_str().unwrap()).await;
    assert_eq!((m["type"].as_str(), m["document"]["caption"].as_str()), (Some("document"), Some("Segue a fatura")));
    assert_eq!(m["document"]["filename"], "fatura.pdf");
    let media = m["document"]["id"].as_str().unwrap();
    let r = s.get(&token, &format!("/v1/media/{media}")).await;
    assert_eq!(r.headers()["content-type"], "application/pdf");
    assert_eq!(r.bytes().await.unwrap().to_vec(), pdf, "the bytes Chatwoot stored");
}

/// With a secret, unsigned and wrongly signed webhooks are refused (401);
/// notes, incoming messages, zapgate's own echoes and other events are
/// acknowledged and dropped; nothing of it reaches WhatsApp.
#[tokio::test]
async fn unsigned_webhooks_are_refused_and_what_is_not_an_agents_reply_is_not_sent() {
    let s = Server::start(&[("ZAPGATE_WEBHOOK_ALLOW_PRIVATE", "true")]).await;
    let (token, ins) = s.tenant_with_instance("acme", 100).await;
    let (cw, base) = zapgate_sim::chatwoot::start().await.unwrap();
    let integration = integrate(&s, &token, &ins, &base, Some(SECRET)).await;
    let (id, url) = (integration["id"].as_str().unwrap(), integration["webhook_url"].as_str().unwrap());
    let reply = cw.message_created(&Message::reply(1, 42, CONTACT, "oi"));

    assert_eq!(status_of(Chatwoot::fire(url, &reply, None).await.unwrap()).await, (401, "unauthorized".into()));
    let wrong = Chatwoot::fire(url, &reply, Some("not-the-secret")).await.unwrap();
    assert_eq!(status_of(wrong).await, (401, "unauthorized".into()));
    // Signed right, but captured long ago and replayed.
    let raw = serde_json::to_vec(&reply).unwrap();
    let stale = "1767225600";
    let r = s
        .http
        .post(url)
        .header("content-type", "application/json")
        .header("x-chatwoot-timestamp", stale)
        .header("x-chatwoot-signature", zapgate_sim::chatwoot::signature(SECRET, stale, &raw))
        .body(raw)
        .send();
    assert_eq!(status_of(r.await.unwrap()).await, (401, "unauthorized".into()));
    let unknown = url.replace(id, "cwi_0193a1b2c3d47e8f9a0b1c2d3e4f5a6b");
    assert_eq!(status_of(Chatwoot::fire(&unknown, &reply, Some(SECRET)).await.unwrap()).await.0, 404);

    let mut note = Message::reply(2, 42, CONTACT, "nota interna");
    note.private = true;
    let mut incoming = Message::reply(3, 42, CONTACT, "mensagem do cliente");
    incoming.message_type = "incoming";
    let mut echo = Message::reply(4, 42, CONTACT, "criada pelo zapgate");
    echo.message_source_id = Some("zapgate:msg_0193a1b2c3d47e8f9a0b1c2d3e4f5a6b".into());
    let mut other = cw.message_created(&Message::reply(5, 42, CONTACT, "x"));
    other["event"] = json!("conversation_status_changed");
    // The account webhook fires for every inbox: another inbox's reply is not ours to send.
    let mut elsewhere = Message::reply(6, 43, CONTACT, "from the e-mail inbox");
    elsewhere.inbox_id = 8;
    let others = [cw.message_created(&note), cw.message_created(&incoming), cw.message_created(&echo), other];
    for body in others.into_iter().chain([cw.message_created(&elsewhere)]) {
        let r = Chatwoot::fire(url, &body, Some(SECRET)).await.unwrap();
        assert_eq!(status_of(r).await, (200, "ignored".into()), "{body}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sends_to(&s, CONTACT).is_empty(), "nothing was sent: {:?}", s.receipts());

    // Without a secret, the unsigned reply goes through.
    let r = s.http.patch(s.url(&format!("/v1/chatwoot-integrations/{id}"))).bearer_auth(&token);
    let r = r.json(&json!({"webhook_secret": ""})).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["signed"], false);
    assert_eq!(status_of(Chatwoot::fire(url, &reply, None).await.unwrap()).await, (200, "queued".into()));
    wait_sends(&s, CONTACT, 1).await;
}

#[tokio::test]
async fn integrations_are_checked_and_scoped_to_their_tenant() {
    let s = Server::start(&[]).await;
    let (token, ins) = s.tenant_with_instance("acme", 100).await;
    let (other, other_ins) = s.tenant_with_instance("globex", 100).await;
    let bad = [
        (
            json!({"instance_id": other_ins, "base_url": "https://chatwoot.example.com", "account_id": 1, "inbox_id": 7,
                "api_access_token": "t"}),
            "instance_id",
        ),
        (
            json!({"instance_id": ins, "base_url": "http://127.0.0.1:3000", "account_id": 1, "inbox_id": 7,
                "api_access_token": "t"}),
            "base_url",
        ),
        (
            json!({"instance_id": ins, "base_url": "https://chatwoot.example.com", "account_id": 0, "inbox_id": 7,
                "api_access_token": "t"}),
            "account_id",
        ),
    ];
    for (body, field) in bad {
        let r = s.post(&token, "/v1/chatwoot-integrations", &body).await;
        assert_eq!(r.status(), 422);
        assert_eq!(r.json::<Value>().await.unwrap()["error"]["details"]["field"], field);
    }
    let created = integrate(&s, &token, &ins, "https://chatwoot.example.com", None).await;
    let id = created["id"].as_str().unwrap();
    // Its inbound side is an endpoint only the integration changes.
    let hooks: Value = s.get(&token, "/v1/webhooks").await.json().await.unwrap();
    let managed = hooks["data"].as_array().unwrap().iter().find(|h| h["format"] == "chatwoot").unwrap().clone();
    assert_eq!(managed["instance_id"], ins.as_str());
    let r = s.http.delete(s.url(&format!("/v1/webhooks/{}", managed["id"].as_str().unwrap()))).bearer_auth(&token);
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "managed_by_integration");
    assert_eq!(s.get(&other, &format!("/v1/chatwoot-integrations/{id}")).await.status(), 404);
    let listed: Value = s.get(&token, "/v1/chatwoot-integrations").await.json().await.unwrap();
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    let r = s.http.delete(s.url(&format!("/v1/chatwoot-integrations/{id}"))).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = Chatwoot::fire(created["webhook_url"].as_str().unwrap(), &json!({"event": "message_created"}), None).await;
    assert_eq!(r.unwrap().status(), 404, "a deleted integration's webhook is refused");
    let hooks: Value = s.get(&token, "/v1/webhooks").await.json().await.unwrap();
    assert_eq!(hooks["data"], json!([]), "and its endpoint is gone with it");
}

/// Seed 003's limits: per integration and per client IP, with a burst.
#[tokio::test]
async fn chatwoot_webhooks_beyond_the_rate_limit_get_429() {
    let s = Server::start(&[("ZAPGATE_CHATWOOT_RATE_PER_SEC", "1"), ("ZAPGATE_CHATWOOT_BURST", "2")]).await;
    let (token, ins) = s.tenant_with_instance("acme", 100).await;
    let created = integrate(&s, &token, &ins, "https://chatwoot.example.com", None).await;
    let url = created["webhook_url"].as_str().unwrap();
    let ignored = json!({"event": "conversation_created"});
    let mut codes = Vec::new();
    for _ in 0..5 {
        let r = Chatwoot::fire(url, &ignored, None).await.unwrap();
        if r.status() == 429 {
            assert!(r.headers().contains_key("retry-after"));
        }
        codes.push(r.status().as_u16());
    }
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 2, "the burst passes: {codes:?}");
    assert!(codes[2..].iter().all(|c| *c == 429), "then 429: {codes:?}");
}

/// A WAHA message as its webhook carries it: text, or an attachment at `media`.
fn waha_message(wa_id: &str, from: &str, body: &str, media: Option<(&str, &str)>) -> Value {
    let mut payload = json!({"id": format!("false_{from}@c.us_{wa_id}"), "timestamp": 1767225600,
        "from": format!("{from}@c.us"), "fromMe": false, "body": body, "hasMedia": media.is_some(),
        "_data": {"notifyName": "Ana"}});
    if let Some((url, mime)) = media {
        payload["media"] = json!({"url": url, "mimetype": mime, "filename": "foto.jpg"});
    }
    json!({"id": format!("evt_{wa_id}"), "timestamp": 1767225601000i64, "event": "message", "session": "default",
           "payload": payload})
}

/// A WAHA instance (on the sim) connected to a simulated Chatwoot; returns
/// what posting WAHA webhooks needs: (url, key).
async fn waha_with_chatwoot(p: &SimProvider, chatwoot: &str) -> (String, String) {
    integrate(&p.server, &p.token, &p.instance, chatwoot, None).await;
    let detail: Value = p.server.get(&p.token, &format!("/v1/instances/{}", p.instance)).await.json().await.unwrap();
    let webhook = &detail["webhook"];
    (webhook["url"].as_str().unwrap().to_owned(), webhook["hmac_key"].as_str().unwrap().to_owned())
}

async fn wait_conversation(cw: &Chatwoot, phone: &str, messages: usize) -> zapgate_sim::chatwoot::Conversation {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let contact = cw.contacts().into_iter().find(|c| c.phone_number.as_deref() == Some(phone));
        let conversation = contact.and_then(|c| cw.conversations().into_iter().find(|v| v.contact_id == c.id));
        if let Some(c) = conversation.filter(|c| c.messages.len() >= messages) {
            return c;
        }
        assert!(tokio::time::Instant::now() < deadline, "no conversation with {messages} messages for {phone}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// WhatsApp → Chatwoot: a new contact's messages make its contact and one
/// conversation in the inbox, the text as an incoming message, the photo as
/// its attachment (the bytes zapgate fetched from the provider).
#[tokio::test]
async fn an_inbound_whatsapp_message_appears_in_the_chatwoot_conversation_with_its_attachment() {
    let config = |sim| json!({"base_url": format!("http://{sim}"), "api_key": "waha-key", "session": "default"});
    let p = sim_provider("waha", config, &[]).await;
    let (cw, base) = zapgate_sim::chatwoot::start().await.unwrap();
    let (url, key) = waha_with_chatwoot(&p, &base).await;
    let photo = b"\xff\xd8\xff\xe0 a photo".to_vec();
    let photo_url = cw.add_file("foto.jpg", "image/jpeg", &photo);

    assert_eq!(
        post_waha(&p.server, &url, &key, &waha_message("3EB0A", "5511988887777", "oi", None)).await.status(),
        200
    );
    let media = Some((photo_url.as_str(), "image/jpeg"));
    let with_photo = waha_message("3EB0B", "5511988887777", "olha a foto", media);
    assert_eq!(post_waha(&p.server, &url, &key, &with_photo).await.status(), 200);

    let conversation = wait_conversation(&cw, CONTACT, 2).await;
    let contact = cw.contacts().into_iter().find(|c| c.id == conversation.contact_id).unwrap();
    assert_eq!((contact.name.as_str(), conversation.inbox_id), ("Ana", 7));
    let texts: Vec<_> = conversation.messages.iter().map(|m| (m.content.as_str(), m.message_type.as_str())).collect();
    assert!(texts.contains(&("oi", "incoming")), "{texts:?}");
    let photo_message = conversation.messages.iter().find(|m| m.content == "olha a foto").unwrap();
    assert_eq!(photo_message.message_type, "incoming");
    assert!(photo_message.source_id.as_deref().unwrap().starts_with("zapgate:"), "marked as zapgate's");
    let (name, mime, bytes) = &photo_message.attachments[0];
    assert_eq!((name.as_str(), mime.as_str(), bytes), ("foto.jpg", "image/jpeg", &photo));

    // Chatwoot's webhook for what zapgate posted comes back: not sent to WhatsApp.
    let mut echo = Message::reply(900, conversation.id, CONTACT, "oi");
    echo.message_type = "incoming";
    echo.message_source_id = photo_message.source_id.clone();
    let integration: Value = p.server.get(&p.token, "/v1/chatwoot-integrations").await.json().await.unwrap();
    let hook = integration["data"][0]["webhook_url"].as_str().unwrap();
    assert_eq!(status_of(Chatwoot::fire(hook, &cw.message_created(&echo), None).await.unwrap()).await.1, "ignored");
}

/// Two first messages of a new contact arriving together: one contact and
/// one conversation in Chatwoot, holding both (Chatwoot answers slowly here,
/// so both deliveries are in flight at once).
#[tokio::test]
async fn two_first_messages_of_a_new_contact_arriving_together_make_one_conversation() {
    let config = |sim| json!({"base_url": format!("http://{sim}"), "api_key": "waha-key", "session": "default"});
    let p = sim_provider("waha", config, &[]).await;
    let (cw, base) = zapgate_sim::chatwoot::start().await.unwrap();
    cw.set_latency(Duration::from_millis(150));
    let (url, key) = waha_with_chatwoot(&p, &base).await;
    let first = waha_message("3EB0C1", "5511977776666", "bom dia", None);
    let second = waha_message("3EB0C2", "5511977776666", "tudo bem?", None);
    let (a, b) = tokio::join!(post_waha(&p.server, &url, &key, &first), post_waha(&p.server, &url, &key, &second));
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));

    let conversation = wait_conversation(&cw, "+5511977776666", 2).await;
    let contacts = cw.contacts().into_iter().filter(|c| c.phone_number.as_deref() == Some("+5511977776666")).count();
    assert_eq!(contacts, 1, "one contact");
    let of_contact = cw.conversations().into_iter().filter(|c| c.contact_id == conversation.contact_id).count();
    assert_eq!(of_contact, 1, "one conversation");
    let mut texts: Vec<_> = conversation.messages.iter().map(|m| m.content.clone()).collect();
    texts.sort();
    assert_eq!(texts, ["bom dia", "tudo bem?"]);
}

/// An agent's reply that WhatsApp refuses comes back to its conversation as
/// a private note saying why.
#[tokio::test]
async fn a_reply_that_fails_becomes_a_private_note_in_its_conversation() {
    let s = Server::start(&[("ZAPGATE_WEBHOOK_ALLOW_PRIVATE", "true")]).await;
    let (token, ins) = s.tenant_with_instance("acme", 100).await;
    let (cw, base) = zapgate_sim::chatwoot::start().await.unwrap();
    let integration = integrate(&s, &token, &ins, &base, None).await;
    // The conversation exists in Chatwoot (the contact wrote first).
    let made = reqwest::Client::new()
        .post(format!("{base}/api/v1/accounts/1/contacts"))
        .header("api_access_token", zapgate_sim::chatwoot::API_TOKEN)
        .json(&json!({"inbox_id": 7, "name": "Rejeitado", "phone_number": "+15550110000"}))
        .send()
        .await
        .unwrap();
    let contact = made.json::<Value>().await.unwrap()["payload"]["contact"]["id"].as_u64().unwrap();
    let made = reqwest::Client::new()
        .post(format!("{base}/api/v1/accounts/1/conversations"))
        .header("api_access_token", zapgate_sim::chatwoot::API_TOKEN)
        .json(&json!({"inbox_id": 7, "contact_id": contact, "source_id": "x"}))
        .send()
        .await
        .unwrap();
    let conversation = made.json::<Value>().await.unwrap()["id"].as_u64().unwrap();

    // The sandbox refuses +15550110000 for good.
    let reply = cw.message_created(&Message::reply(31, conversation, "+15550110000", "Olá!"));
    let r = Chatwoot::fire(integration["webhook_url"].as_str().unwrap(), &reply, None).await.unwrap();
    assert_eq!(status_of(r).await.1, "queued");
    let deadline = tokio::time::Instant::now() + WAIT;
    let note = loop {
        let c = cw.conversations().into_iter().find(|c| c.id == conversation).unwrap();
        if let Some(n) = c.messages.into_iter().find(|m| m.private) {
            break n;
        }
        assert!(tokio::time::Instant::now() < deadline, "no private note");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(note.content.contains("could not deliver") && note.content.contains("failed"), "{}", note.content);
    assert!(note.source_id.as_deref().unwrap().starts_with("zapgate:"));
}
