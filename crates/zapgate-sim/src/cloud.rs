//! The WhatsApp Cloud API's webhooks, simulated. Meta has no per-number
//! webhook API (an app subscribes once, in Meta's tools), so the sim has one
//! sim-wide webhook: [`Sim::set_cloud_webhook`], signed as the `Hook` says
//! (Meta: [`Signing::HubSha256`](crate::hooks::Signing::HubSha256) with the
//! app secret).
//!
//! - After each successful send (`POST /{v}/{phone_number_id}/messages`),
//!   the statuses `sent` (~20 ms) and `delivered` (~60 ms) for the returned
//!   `wamid`, named by that `phone_number_id` (`metadata.phone_number_id`).
//! - [`Sim::cloud_inbound_text`] posts a contact's text now,
//!   [`Sim::cloud_post`] any body.
//!
//! Bodies are the shapes of Meta's webhook reference, serialised as Meta
//! sends them: ASCII only (`\u00e9`, surrogate pairs for emoji) and `/`
//! escaped as `\/`; the signature covers exactly those bytes. Non-2xx
//! answers to the status posts are retried a few times, a second apart.

use crate::Sim;
use crate::hooks::{Hook, signature_headers};
use serde_json::{Value, json};
use std::fmt::Write;
use std::time::Duration;

/// The WhatsApp Business Account every simulated number belongs to.
const WABA_ID: &str = "102290129340398";
/// The display number every simulated number has (digits, no `+`).
const DISPLAY_PHONE_NUMBER: &str = "15550783881";
/// The profile name of simulated contacts (not ASCII, so it gets escaped).
const CONTACT_NAME: &str = "Zé Sim";

/// Media uploaded to the simulated Cloud API.
#[derive(Debug, Clone, PartialEq)]
pub struct Uploaded {
    pub mime_type: String,
    pub filename: Option<String>,
    pub bytes: Vec<u8>,
}

/// `POST /{v}/{phone_number_id}/media`, multipart with `messaging_product`
/// (`whatsapp`), `type` (the MIME type) and `file`: `{"id":"<digits>"}` as
/// Meta answers. Recorded with the form's fields (the file as its name,
/// type and size).
pub(crate) async fn upload(
    axum::extract::State(sim): axum::extract::State<std::sync::Arc<Sim>>,
    axum::extract::Path((version, phone_number_id)): axum::extract::Path<(String, String)>,
    headers: axum::http::HeaderMap,
    mut form: axum::extract::Multipart,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let token = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let (mut product, mut kind, mut file) = (None, None, None);
    while let Ok(Some(field)) = form.next_field().await {
        match field.name().unwrap_or_default() {
            "messaging_product" => product = field.text().await.ok(),
            "type" => kind = field.text().await.ok(),
            "file" => {
                let (name, mime) = (field.file_name().map(str::to_owned), field.content_type().map(str::to_owned));
                file = field.bytes().await.ok().map(|b| (name, mime, b.to_vec()));
            }
            _ => {}
        }
    }
    let recorded = json!({"messaging_product": product, "type": kind,
        "file": file.as_ref().map(|(name, mime, bytes)| json!({"filename": name, "mime_type": mime, "size": bytes.len()}))});
    sim.record("cloud_api", format!("/{version}/{phone_number_id}/media"), token.map(str::to_owned), &recorded);
    if token.is_none() {
        return crate::graph_error(401, 190, "Invalid OAuth access token - Cannot parse access token", None);
    }
    let (Some("whatsapp"), Some(kind), Some((filename, _, bytes))) = (product.as_deref(), kind, file) else {
        return crate::graph_error(400, 100, "(#100) messaging_product, type and file are required", None);
    };
    let id = format!("{}", 1_000_000_000_000_000u128 + uuid::Uuid::new_v4().as_u128() % 1_000_000_000_000_000);
    let uploaded = Uploaded { mime_type: kind, filename, bytes };
    sim.cloud_media.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), uploaded);
    axum::Json(json!({"id": id})).into_response()
}

impl Sim {
    /// Media uploaded to the simulated Cloud API under `id`.
    pub fn cloud_uploaded(&self, id: &str) -> Option<Uploaded> {
        self.cloud_media.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    /// Where (and signed how) Cloud API webhooks go; None: nowhere.
    pub fn set_cloud_webhook(&self, hook: Option<Hook>) {
        *self.cloud_hook.lock().unwrap_or_else(|p| p.into_inner()) = hook;
    }

    fn cloud_hook(&self) -> Option<Hook> {
        self.cloud_hook.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Posts a text from `from` (a number) to `phone_number_id` now, as Meta
    /// does when a contact writes; the message's `wamid`. Panics without a
    /// Cloud webhook, or when the POST fails.
    pub async fn cloud_inbound_text(&self, phone_number_id: &str, from: &str, text: &str) -> String {
        let from = from.trim_start_matches('+');
        let wamid = wamid();
        let message = json!({"from": from, "id": wamid, "timestamp": now_secs().to_string(), "type": "text",
            "text": {"body": text}});
        let value = json!({"messaging_product": "whatsapp", "metadata": metadata(phone_number_id),
            "contacts": [{"profile": {"name": CONTACT_NAME}, "wa_id": from}], "messages": [message]});
        self.cloud_post(envelope(value)).await;
        wamid
    }

    /// Posts `body` to the Cloud webhook as Meta would (escaped, signed);
    /// zapgate's HTTP status. Panics without a Cloud webhook, or when the
    /// POST fails.
    pub async fn cloud_post(&self, body: Value) -> u16 {
        let hook = self.cloud_hook().expect("no Cloud API webhook set (Sim::set_cloud_webhook)");
        post(&hook, &body).await.unwrap_or_else(|e| panic!("posting to {}: {e}", hook.url))
    }
}

/// After a send the sim accepted: `sent` and `delivered` for `wamid`.
pub(crate) fn sent(sim: &Sim, phone_number_id: &str, to: &str, wamid: &str) {
    let Some(hook) = sim.cloud_hook() else { return };
    for (status, after) in [("sent", 20), ("delivered", 60)] {
        post_later(
            hook.clone(),
            envelope(status_value(phone_number_id, to, wamid, status)),
            Duration::from_millis(after),
        );
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn wamid() -> String {
    format!("wamid.{}", uuid::Uuid::new_v4().simple())
}

fn metadata(phone_number_id: &str) -> Value {
    json!({"display_phone_number": DISPLAY_PHONE_NUMBER, "phone_number_id": phone_number_id})
}

/// One `messages` change of the sim's WABA around `value`.
fn envelope(value: Value) -> Value {
    json!({"object": "whatsapp_business_account",
        "entry": [{"id": WABA_ID, "changes": [{"value": value, "field": "messages"}]}]})
}

/// A `statuses` value: `sent` and `delivered` carry the conversation and
/// pricing, as Meta's do.
fn status_value(phone_number_id: &str, to: &str, wamid: &str, status: &str) -> Value {
    let now = now_secs();
    let mut s = json!({"id": wamid, "status": status, "timestamp": now.to_string(), "recipient_id": to});
    if matches!(status, "sent" | "delivered") {
        let conversation = uuid::Uuid::new_v4().simple().to_string();
        s["conversation"] = json!({"id": conversation, "origin": {"type": "service"}});
        if status == "sent" {
            s["conversation"]["expiration_timestamp"] = json!((now + 86_400).to_string());
        }
        s["pricing"] = json!({"billable": true, "pricing_model": "CBP", "category": "service"});
    }
    json!({"messaging_product": "whatsapp", "metadata": metadata(phone_number_id), "statuses": [s]})
}

/// `v` as Meta serialises webhook bodies: ASCII only, `/` as `\/`.
pub fn meta_json(v: &Value) -> Vec<u8> {
    let plain = serde_json::to_string(v).expect("JSON serialises");
    let mut out = String::with_capacity(plain.len() + 16);
    // `/` and non-ASCII only occur inside strings, so escaping them
    // everywhere keeps the JSON equal.
    for c in plain.chars() {
        match c {
            '/' => out.push_str("\\/"),
            c if c.is_ascii() => out.push(c),
            c => {
                for unit in c.encode_utf16(&mut [0; 2]) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.into_bytes()
}

/// Posts `body` once, Meta-serialised and signed; the HTTP status.
async fn post(hook: &Hook, body: &Value) -> Result<u16, String> {
    let bytes = meta_json(body);
    let mut req = crate::hooks::client().post(&hook.url).header("content-type", "application/json");
    for (k, v) in signature_headers(&hook.signing, &bytes).into_iter().chain(hook.headers.iter().cloned()) {
        req = req.header(k, v);
    }
    req.body(bytes).send().await.map(|r| r.status().as_u16()).map_err(|e| e.to_string())
}

/// Posts `body` after `delay`, retrying non-2xx answers as `hooks::post_later` does.
fn post_later(hook: Hook, body: Value, delay: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        for _ in 0..5 {
            if matches!(post(&hook, &body).await, Ok(200..=299)) {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

/// `GET /{version}/{waba_id}/message_templates`: Meta's sample template, as
/// its template list answers it (a Bearer token is required).
pub async fn templates(headers: axum::http::HeaderMap) -> axum::response::Response {
    use axum::response::IntoResponse;
    if headers.get("authorization").and_then(|v| v.to_str().ok()).is_none_or(|v| !v.starts_with("Bearer ")) {
        return super::graph_error(401, 190, "Invalid OAuth access token.", None);
    }
    axum::Json(json!({
        "data": [{
            "name": "hello_world",
            "components": [
                {"type": "HEADER", "format": "TEXT", "text": "Hello World"},
                {"type": "BODY", "text": "Welcome and congratulations!! This message demonstrates your ability to send a WhatsApp message notification from the Cloud API, hosted by Meta."},
                {"type": "FOOTER", "text": "WhatsApp Business Platform sample message"}
            ],
            "language": "en_US",
            "status": "APPROVED",
            "category": "UTILITY",
            "id": "1192339204654487"
        }],
        "paging": {"cursors": {"before": "MAZDZD", "after": "MjQZD"}}
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_ascii_with_escaped_slashes_and_mean_the_same() {
        let v = json!({"url": "https://a.example/x", "name": "Zé 😀", "back": "a\\/b"});
        let bytes = meta_json(&v);
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.is_ascii(), "{text}");
        assert!(text.contains(r#""https:\/\/a.example\/x""#), "{text}");
        assert!(text.contains(r"Z\u00e9 \ud83d\ude00"), "{text}");
        assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap(), v);
    }

    #[test]
    fn statuses_have_metas_shape() {
        let body = envelope(status_value("106540352242922", "5511999990000", "wamid.X", "sent"));
        assert_eq!(body["object"], "whatsapp_business_account");
        let change = &body["entry"][0]["changes"][0];
        assert_eq!(change["field"], "messages");
        assert_eq!(change["value"]["metadata"]["phone_number_id"], "106540352242922");
        let s = &change["value"]["statuses"][0];
        assert_eq!(
            (&s["id"], &s["status"], &s["recipient_id"]),
            (&json!("wamid.X"), &json!("sent"), &json!("5511999990000"))
        );
        assert!(s["timestamp"].as_str().unwrap().parse::<u64>().is_ok());
        assert_eq!(s["pricing"]["category"], "service");
        let read = status_value("1", "2", "wamid.Y", "read");
        assert!(read["statuses"][0].get("pricing").is_none(), "read omits pricing");
    }

    #[test]
    fn the_cloud_webhook_is_set_and_cleared() {
        let sim = Sim::default();
        assert!(sim.cloud_hook().is_none());
        let hook = Hook {
            url: "http://127.0.0.1:1/x".into(),
            signing: crate::hooks::Signing::HubSha256("app-secret".into()),
            headers: vec![],
        };
        sim.set_cloud_webhook(Some(hook.clone()));
        assert_eq!(sim.cloud_hook(), Some(hook));
        sim.set_cloud_webhook(None);
        assert!(sim.cloud_hook().is_none());
    }
}
