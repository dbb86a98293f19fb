//! Media: an inbound attachment is fetched from the provider right after
//! receipt (with the provider's credentials, within the size cap) and served
//! tenant-scoped at `GET /v1/media/{id}`; uploads round-trip.

mod common;

use axum::http::{HeaderMap, StatusCode};
use common::*;
use serde_json::{Value, json};
use sha2::Digest;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PHOTO: &[u8] = b"\xff\xd8\xff\xe0 not really a jpeg, but bytes all the same";

/// A provider's file server: `/files/photo.jpeg` needs the WAHA key,
/// `/files/big.bin` is larger than the test's cap, `/files/broken` fails.
async fn file_server() -> (String, Arc<Mutex<Vec<Option<String>>>>) {
    let keys = Arc::new(Mutex::new(Vec::new()));
    let seen = keys.clone();
    let app = axum::Router::new()
        .route(
            "/files/photo.jpeg",
            axum::routing::get(move |headers: HeaderMap| {
                let seen = seen.clone();
                async move {
                    let key = headers.get("x-api-key").map(|v| v.to_str().unwrap().to_owned());
                    seen.lock().unwrap().push(key.clone());
                    if key.as_deref() != Some("waha-key") {
                        return (StatusCode::UNAUTHORIZED, [("content-type", "text/plain")], Vec::new());
                    }
                    (StatusCode::OK, [("content-type", "image/jpeg")], PHOTO.to_vec())
                }
            }),
        )
        .route("/files/big.bin", axum::routing::get(|| async { vec![7u8; 5000] }))
        .route("/files/broken", axum::routing::get(|| async { StatusCode::NOT_FOUND }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, keys)
}

fn waha_media_message(wa_id: &str, url: &str, mime: &str) -> Value {
    json!({"id": format!("evt_{wa_id}"), "timestamp": 1767225601000i64, "event": "message", "session": "default",
        "payload": {"id": format!("false_5511988887777@c.us_{wa_id}"), "timestamp": 1767225600,
                    "from": "5511988887777@c.us", "fromMe": false, "body": "olha", "hasMedia": true,
                    "media": {"url": url, "mimetype": mime, "filename": "photo.jpeg"}}})
}

/// The `media_id` the inbound message with this WhatsApp id names.
async fn media_of(s: &Server, token: &str, wa_id: &str) -> String {
    let v: Value = s.get(token, "/v1/inbound-messages").await.json().await.unwrap();
    let m = v["data"].as_array().unwrap().iter().find(|m| m["wa_message_id"].as_str().unwrap().ends_with(wa_id));
    let m = m.unwrap_or_else(|| panic!("no inbound message {wa_id}: {v}"));
    let kind = m["content"]["type"].as_str().unwrap();
    m["content"][kind]["media_id"].as_str().unwrap_or_else(|| panic!("no media_id: {m}")).to_owned()
}

/// Polls the media's info until it is no longer pending.
async fn settled(s: &Server, token: &str, id: &str) -> Value {
    for _ in 0..200 {
        let info: Value = s.get(token, &format!("/v1/media/{id}/info")).await.json().await.unwrap();
        if info["status"] != "pending" {
            return info;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("media {id} stayed pending");
}

#[tokio::test]
async fn inbound_media_is_fetched_with_the_providers_key_and_served_to_its_tenant_only() {
    let p = sim_provider(
        "waha",
        |sim| json!({"base_url": format!("http://{sim}"), "api_key": "waha-key", "session": "default"}),
        &[("ZAPGATE_MEDIA_MAX_BYTES", "1000")],
    )
    .await;
    let (s, token, ins) = (&p.server, &p.token, &p.instance);
    let (files, keys) = file_server().await;
    let detail: Value = s.get(token, &format!("/v1/instances/{ins}")).await.json().await.unwrap();
    let (url, key) = (detail["webhook"]["url"].as_str().unwrap(), detail["webhook"]["hmac_key"].as_str().unwrap());

    let photo = waha_media_message("3EB0PHOTO", &format!("{files}/files/photo.jpeg"), "image/jpeg");
    assert_eq!(post_waha(s, url, key, &photo).await.status(), 200);
    let id = media_of(s, token, "3EB0PHOTO").await;
    let early = s.get(token, &format!("/v1/media/{id}")).await;
    assert!(early.status() == 200 || early.status() == 409, "{}", early.status());
    let info = settled(s, token, &id).await;
    assert_eq!(info["status"], "stored", "{info}");
    assert_eq!(info["size"], PHOTO.len());
    assert_eq!(info["sha256"], hex::encode(sha2::Sha256::digest(PHOTO)));
    assert_eq!(keys.lock().unwrap().as_slice(), [Some("waha-key".to_owned())], "fetched once, with WAHA's key");

    let r = s.get(token, &format!("/v1/media/{id}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    assert_eq!(r.headers()["x-media-sha256"], info["sha256"].as_str().unwrap());
    assert_eq!(r.bytes().await.unwrap().as_ref(), PHOTO);

    // Re-sent by WAHA: still one message and one fetch.
    assert_eq!(post_waha(s, url, key, &photo).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(keys.lock().unwrap().len(), 1);

    // Another tenant sees nothing; unknown ids are 404.
    let (_, other) = s.tenant("other").await;
    assert_eq!(s.get(&other, &format!("/v1/media/{id}")).await.status(), 404);
    assert_eq!(s.get(&other, &format!("/v1/media/{id}/info")).await.status(), 404);
    assert_eq!(s.get(token, "/v1/media/med_nope").await.status(), 404);

    // Too big, or gone at the provider: failed with the reason, the message kept.
    let big = waha_media_message("3EB0BIG", &format!("{files}/files/big.bin"), "application/pdf");
    assert_eq!(post_waha(s, url, key, &big).await.status(), 200);
    let big_id = media_of(s, token, "3EB0BIG").await;
    let info = settled(s, token, &big_id).await;
    assert_eq!(info["status"], "failed");
    assert!(info["error"].as_str().unwrap().contains("ZAPGATE_MEDIA_MAX_BYTES"), "{info}");
    let r = s.get(token, &format!("/v1/media/{big_id}")).await;
    assert_eq!(r.status(), 410);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "media_failed");

    let broken = waha_media_message("3EB0BROKEN", &format!("{files}/files/broken"), "image/png");
    assert_eq!(post_waha(s, url, key, &broken).await.status(), 200);
    let info = settled(s, token, &media_of(s, token, "3EB0BROKEN").await).await;
    assert_eq!(info["status"], "failed");
    assert!(info["error"].as_str().unwrap().contains("404"), "{info}");
}

#[tokio::test]
async fn media_on_internal_addresses_is_refused_by_default() {
    // The egress guard: a provider webhook naming a loopback URL does not
    // make zapgate fetch it.
    let s = Server::start(&[]).await;
    let (_, token) = s.tenant("acme").await;
    let r = s
        .post(
            &token,
            "/v1/instances",
            &json!({"name": "w", "provider": "waha",
                    "config": {"base_url": "http://93.184.216.34", "api_key": "waha-key", "session": "default"}}),
        )
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let ins = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let (files, keys) = file_server().await;
    let detail: Value = s.get(&token, &format!("/v1/instances/{ins}")).await.json().await.unwrap();
    let (url, key) = (detail["webhook"]["url"].as_str().unwrap(), detail["webhook"]["hmac_key"].as_str().unwrap());
    let photo = waha_media_message("3EB0LOCAL", &format!("{files}/files/photo.jpeg"), "image/jpeg");
    assert_eq!(post_waha(&s, url, key, &photo).await.status(), 200);
    let info = settled(&s, &token, &media_of(&s, &token, "3EB0LOCAL").await).await;
    assert_eq!(info["status"], "failed", "{info}");
    assert!(info["error"].as_str().unwrap().contains("internal address"), "{info}");
    assert!(keys.lock().unwrap().is_empty(), "the internal address was never called");
}

#[tokio::test]
async fn uploads_round_trip_and_bad_ones_are_refused() {
    let s = Server::start(&[("ZAPGATE_MEDIA_MAX_BYTES", "1000")]).await;
    let (_, token) = s.tenant("acme").await;
    let upload = |body: Vec<u8>, mime: Option<&str>, query: &str| {
        let mut req = s.http.post(s.url(&format!("/v1/media{query}"))).bearer_auth(&token).body(body);
        if let Some(m) = mime {
            req = req.header("content-type", m);
        }
        req.send()
    };
    let r = upload(PHOTO.to_vec(), Some("image/jpeg"), "?filename=foto.jpeg").await.unwrap();
    assert_eq!(r.status(), 201);
    let rec: Value = r.json().await.unwrap();
    assert_eq!(rec["status"], "stored");
    assert_eq!(rec["mime_type"], "image/jpeg");
    assert_eq!(rec["filename"], "foto.jpeg");
    assert_eq!(rec["sha256"], hex::encode(sha2::Sha256::digest(PHOTO)));
    let id = rec["id"].as_str().unwrap();
    assert!(id.starts_with("med_"));
    let r = s.get(&token, &format!("/v1/media/{id}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-disposition"], "inline; filename=\"foto.jpeg\"");
    assert_eq!(r.bytes().await.unwrap().as_ref(), PHOTO);

    let code = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        (status, r.json::<Value>().await.unwrap()["error"]["code"].as_str().unwrap().to_owned())
    };
    let too_big = upload(vec![1; 1001], Some("application/pdf"), "").await.unwrap();
    assert_eq!(code(too_big).await, (413, "payload_too_large".to_owned()));
    let untyped = upload(PHOTO.to_vec(), None, "").await.unwrap();
    assert_eq!(code(untyped).await, (415, "unsupported_media_type".to_owned()));
    let empty = upload(Vec::new(), Some("image/png"), "").await.unwrap();
    assert_eq!(code(empty).await, (400, "empty_body".to_owned()));
    let anonymous = s.http.post(s.url("/v1/media")).header("content-type", "image/png").body("x").send().await.unwrap();
    assert_eq!(anonymous.status(), 401);

    // Deleted: the bytes and the record go, for its tenant only.
    let bytes_at = s.dir.path().join("data/media").join(id);
    assert!(bytes_at.exists(), "kept in the data dir's media store");
    let (_, other) = s.tenant("globex").await;
    let r = s.http.delete(s.url(&format!("/v1/media/{id}"))).bearer_auth(&other).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = s.http.delete(s.url(&format!("/v1/media/{id}"))).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(s.get(&token, &format!("/v1/media/{id}")).await.status(), 404);
    assert!(!bytes_at.exists(), "the bytes are gone too");
}

/// Media uploaded to zapgate is sent by `id`, as on the Cloud API: the
/// message keeps the id, and the provider gets a link to zapgate it can
/// fetch without credentials (only with the link's proof). Media that is not
/// the tenant's is refused at accept.
#[tokio::test]
async fn uploaded_media_is_sent_by_id_through_a_link_the_provider_can_fetch() {
    let p = sim_provider(
        "waha",
        |sim| json!({"base_url": format!("http://{sim}"), "api_key": "waha-key", "session": "default"}),
        &[],
    )
    .await;
    let (s, sim, token, ins) = (&p.server, &p.sim, &p.token, &p.instance);
    let r =
        s.http.post(s.url("/v1/media?filename=fatura.jpeg")).bearer_auth(token).header("content-type", "image/jpeg");
    let r = r.body(PHOTO.to_vec()).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let media = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();

    let body = json!({"instance_id": ins, "to": "+5511999998888", "type": "image",
        "image": {"id": media, "caption": "sua fatura"}});
    let r = s.post(token, "/v1/messages", &body).await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let m = s.wait_status(token, &id, &["sent", "delivered", "read"], Duration::from_secs(20)).await;
    assert_eq!(m["image"], json!({"id": media, "caption": "sua fatura"}), "the message keeps the id: {m}");

    let sent = sim.received().into_iter().find(|r| r.path == "/api/sendImage").expect("sent to WAHA");
    assert_eq!(sent.body["caption"], "sua fatura");
    let link = sent.body["file"]["url"].as_str().unwrap().to_owned();
    assert!(link.starts_with(&format!("{}/media/", s.base)), "{link}");
    let fetched = reqwest::get(&link).await.unwrap();
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.headers()["content-type"], "image/jpeg");
    assert_eq!(fetched.bytes().await.unwrap().as_ref(), PHOTO);
    // Without the link's proof, nothing.
    let (head, proof) = link.rsplit_once('/').unwrap();
    let forged = format!("{head}/{}", "0".repeat(proof.len()));
    assert_eq!(reqwest::get(&forged).await.unwrap().status(), 404);
    assert_eq!(reqwest::get(head).await.unwrap().status(), 404);

    // Another tenant cannot send it; an unknown id is named.
    let (_, other) = s.tenant("outra").await;
    for (who, media_id) in [(other.as_str(), media.as_str()), (token.as_str(), "med_01a24cac6c677683b945aac9ad555ee7")]
    {
        let body = json!({"instance_id": ins, "to": "+5511999998888", "type": "image", "image": {"id": media_id}});
        let r = s.post(who, "/v1/messages", &body).await;
        assert_eq!(r.status(), 422);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "unknown_media", "{e}");
        assert_eq!(e["error"]["details"]["field"], "image.id", "{e}");
    }
}

/// Killed right after the fetched bytes are stored, before the row says so:
/// after a restart the media is fetched again and served — never left
/// pending or lost. (Embedded: the restart makes it due at once. On a shared
/// PostgreSQL store the lease must run out first, which takes longer than a
/// test should: that pass checks the crash and that nothing is half-done.)
#[tokio::test]
async fn a_crash_between_storing_the_bytes_and_recording_them_refetches_after_restart() {
    let p = sim_provider(
        "waha",
        |sim| json!({"base_url": format!("http://{sim}"), "api_key": "waha-key", "session": "default"}),
        &[("ZAPGATE_CRASH_AT", "after_media_stored")],
    )
    .await;
    let (mut s, token, ins) = (p.server, p.token, p.instance);
    let (files, keys) = file_server().await;
    let detail: Value = s.get(&token, &format!("/v1/instances/{ins}")).await.json().await.unwrap();
    let (url, key) = (detail["webhook"]["url"].as_str().unwrap(), detail["webhook"]["hmac_key"].as_str().unwrap());
    let photo = waha_media_message("3EB0CRASH", &format!("{files}/files/photo.jpeg"), "image/jpeg");
    assert_eq!(post_waha(&s, url, key, &photo).await.status(), 200);
    let id = media_of(&s, &token, "3EB0CRASH").await;
    // (Waiting here without blocking: the file server runs on this runtime.)
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while keys.lock().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "never fetched");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = s.wait_exit(Duration::from_secs(20));
    assert!(status.is_some_and(|st| !st.success()), "the server should have crashed:\n{}", s.logs());
    assert_eq!(keys.lock().unwrap().len(), 1, "fetched once before the crash");

    let s = s.restart(&[("ZAPGATE_WEBHOOK_ALLOW_PRIVATE", "true")]).await;
    if distributed() {
        let info: Value = s.get(&token, &format!("/v1/media/{id}/info")).await.json().await.unwrap();
        assert_eq!(info["status"], "pending", "the crash came before the row was updated: {info}");
        return;
    }
    let info = settled(&s, &token, &id).await;
    assert_eq!(info["status"], "stored", "{info}");
    // A second fetch: the row was not updated before the crash.
    assert_eq!(keys.lock().unwrap().len(), 2, "fetched again after the restart");
    let r = s.get(&token, &format!("/v1/media/{id}")).await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), PHOTO);
}
