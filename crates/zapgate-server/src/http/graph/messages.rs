//! `POST /{phone_number_id}/messages` (sends and `status: "read"`) and
//! `GET /{waba_id}/message_templates`.

use super::{GraphResult, instance};
use crate::http::AppState;
use crate::http::error::ApiError;
use axum::Json;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use zapgate_domain::{ChatId, InstanceId, MediaId, MessageId, TenantId, ValidationError};

pub(super) async fn send(s: &AppState, tenant: TenantId, phone_number_id: &str, req: Request) -> GraphResult<Response> {
    let key = crate::http::messages::idempotency_key(req.headers())?;
    let body = json_body(s, req).await?;
    let number = instance(s, &tenant, phone_number_id, false).await?;
    if body.contains_key("status") {
        return mark_read(s, &tenant, body).await;
    }
    let (native, input) = native_send(body, &number.id)?;
    let wa_id = ChatId::parse(&input).map(|c| c.wa_id()).unwrap_or_default();
    let accepted = crate::http::messages::accept(s, tenant, key, native).await?;
    let answer = json!({
        "messaging_product": "whatsapp",
        "contacts": [{"input": input, "wa_id": wa_id}],
        "messages": [{"id": accepted.id.to_wamid()}],
    });
    // 200, not 202: some clients take anything else (even 201) as a failure.
    Ok((StatusCode::OK, Json(answer)).into_response())
}

/// The JSON object of a request, read with the API's body limit.
async fn json_body(s: &AppState, req: Request) -> GraphResult<Map<String, Value>> {
    let max = s.config.max_body_bytes;
    let bytes = axum::body::to_bytes(req.into_body(), max).await.map_err(|_| {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "the request body is too large")
    })?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_request("invalid_json", "the body must be a JSON object").into()),
        Err(e) => Err(ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}")).into()),
    }
}

/// `{"messaging_product":"whatsapp","status":"read","message_id":"wamid.…"}`.
async fn mark_read(s: &AppState, tenant: &TenantId, body: Map<String, Value>) -> GraphResult<Response> {
    if body.get("status").and_then(Value::as_str) != Some("read") {
        return Err(ValidationError::new("status", "only \"read\" can be set").into());
    }
    let raw = body.get("message_id").and_then(Value::as_str).unwrap_or_default();
    let id = MessageId::from_wamid(raw).ok_or_else(|| {
        ValidationError::new("message_id", "names no message zapgate received (wamid.… from a webhook)")
    })?;
    crate::http::inbound::read(s, tenant, &id).await?;
    Ok(Json(json!({"success": true})).into_response())
}

/// A Cloud API send body as a native one: the envelope fields taken out
/// (`messaging_product`, `recipient_type`, `to`, …) and the spellings real
/// clients use made canonical (`null` fields, upper-case component types,
/// interactive `action` as a JSON string). Returns it with the `to` as given.
pub(crate) fn native_send(
    mut body: Map<String, Value>,
    instance: &InstanceId,
) -> Result<(Map<String, Value>, String), ValidationError> {
    body.values_mut().for_each(drop_nulls);
    body.retain(|_, v| !v.is_null());
    match body.remove("messaging_product") {
        Some(Value::String(p)) if p == "whatsapp" => {}
        None => return Err(ValidationError::new("messaging_product", "is required (\"whatsapp\")")),
        Some(_) => return Err(ValidationError::new("messaging_product", "must be \"whatsapp\"")),
    }
    let group = match body.remove("recipient_type").as_ref().map(|v| v.as_str()) {
        None | Some(Some("individual")) => false,
        Some(Some("group")) => true,
        Some(_) => return Err(ValidationError::new("recipient_type", "must be \"individual\" or \"group\"")),
    };
    // Meta echoes this in statuses; zapgate's own events carry the message id instead.
    body.remove("biz_opaque_callback_data");
    if let Some(context) = body.remove("context") {
        let quoted = context.get("message_id").and_then(Value::as_str).filter(|id| !id.is_empty());
        let quoted = quoted.ok_or_else(|| ValidationError::new("context.message_id", "is required in a context"))?;
        // The facade's own ids (`wamid.msg_…`) name zapgate messages; others are WhatsApp's.
        let id = MessageId::from_wamid(quoted).map(|m| m.to_string()).unwrap_or_else(|| quoted.to_owned());
        body.insert("reply_to".into(), Value::String(id));
    }
    let to = match body.remove("to") {
        Some(Value::String(t)) => t,
        Some(Value::Number(n)) => n.to_string(),
        None => return Err(ValidationError::new("to", "is required")),
        Some(_) => return Err(ValidationError::new("to", "must be a string")),
    };
    let chat = if group && !to.contains('@') { format!("{to}@g.us") } else { to.clone() };
    body.insert("to".into(), Value::String(chat));
    body.insert("instance_id".into(), Value::String(instance.to_string()));
    body.entry("type").or_insert_with(|| Value::String("text".into()));
    if let Some(Value::Object(t)) = body.get_mut("template")
        && let Some(Value::Array(components)) = t.get_mut("components")
    {
        components.iter_mut().for_each(lowercase_types);
    }
    // Media uploaded through the facade is named by its Graph id (digits).
    for kind in ["image", "video", "audio", "document", "sticker"] {
        if let Some(Value::String(id)) = body.get_mut(kind).and_then(|m| m.get_mut("id"))
            && let Some(media) = MediaId::from_graph(id)
        {
            *id = media.to_string();
        }
    }
    if let Some(Value::Object(i)) = body.get_mut("interactive")
        && let Some(Value::String(action)) = i.get("action")
    {
        let parsed: Value = serde_json::from_str(action)
            .map_err(|_| ValidationError::new("interactive.action", "is a string but not JSON"))?;
        i.insert("action".into(), parsed);
    }
    Ok((body, to))
}

fn drop_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(drop_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// `"type": "BODY"` → `"body"` in a template component and its parameters
/// (Meta takes either; zapgate stores one spelling).
fn lowercase_types(component: &mut Value) {
    for key in ["type", "sub_type"] {
        if let Some(Value::String(t)) = component.get_mut(key) {
            *t = t.to_ascii_lowercase();
        }
    }
    if let Some(Value::Array(params)) = component.get_mut("parameters") {
        for p in params {
            if let Some(Value::String(t)) = p.get_mut("type") {
                *t = t.to_ascii_lowercase();
            }
        }
    }
}

/// `GET /{waba_id}/message_templates`: always 2xx for a known account
/// (Chatwoot calls it to set its inbox up, and again to sync templates):
/// the provider's approved templates when it has them (a Cloud API number),
/// else none. A provider that cannot answer now gives an empty list, logged,
/// rather than failing an inbox set-up.
pub(super) async fn templates(s: &AppState, tenant: &TenantId, waba_id: &str) -> GraphResult<Response> {
    let number = instance(s, tenant, waba_id, true).await?;
    let provider = s.providers.get(&number.provider);
    let listed = match provider {
        Some(p) => crate::http::sessions::call(p.templates(&number.provider_config)).await,
        None => Ok(None),
    };
    let data = listed.unwrap_or_else(|e| {
        tracing::warn!(instance = %number.id, error = %e, "listing the provider's templates failed");
        None
    });
    Ok(Json(json!({"data": data.unwrap_or_default(), "paging": {}})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn native(v: Value) -> Result<Value, ValidationError> {
        let ins = InstanceId::generate();
        native_send(v.as_object().unwrap().clone(), &ins).map(|(m, _)| Value::Object(m))
    }

    #[test]
    fn chatwoots_text_send_becomes_a_native_one() {
        let n = native(json!({"messaging_product":"whatsapp","context":null,"to":"5511999998888","type":"text",
            "text":{"body":"oi"}}))
        .unwrap();
        assert_eq!(n["to"], "5511999998888");
        assert_eq!(n["text"]["body"], "oi");
        assert!(n.get("messaging_product").is_none() && n.get("context").is_none());
        let m = MessageId::generate();
        let n = native(json!({"messaging_product":"whatsapp","context":{"message_id": m.to_wamid()},
            "to":"5511999998888","text":{"body":"sim"}}))
        .unwrap();
        assert_eq!(n["reply_to"], m.as_str(), "a facade id names the zapgate message");
        let n = native(json!({"messaging_product":"whatsapp","context":{"message_id":"wamid.HBgLMTY0"},
            "to":"5511999998888","text":{"body":"sim"}}))
        .unwrap();
        assert_eq!(n["reply_to"], "wamid.HBgLMTY0", "WhatsApp's ids pass as given");
    }

    #[test]
    fn client_spellings_are_made_canonical() {
        let n = native(json!({"messaging_product":"whatsapp","recipient_type":"individual","to":"+5511999998888",
            "type":"image","image":{"link":"https://x.test/a.png","caption":null}}))
        .unwrap();
        assert!(n["image"].get("caption").is_none());
        let n = native(json!({"messaging_product":"whatsapp","to":"5511999998888","type":"template",
            "template":{"name":"hello","language":{"code":"en_US","policy":"deterministic"},
            "components":[{"type":"BODY","parameters":[{"type":"TEXT","text":"x"}]}]}}))
        .unwrap();
        assert_eq!(n["template"]["components"][0]["type"], "body");
        assert_eq!(n["template"]["components"][0]["parameters"][0]["type"], "text");
        let n = native(json!({"messaging_product":"whatsapp","to":"5511999998888","type":"interactive",
            "interactive":{"type":"button","body":{"text":"?"},
            "action":"{\"buttons\":[{\"type\":\"reply\",\"reply\":{\"id\":\"a\",\"title\":\"A\"}}]}"}}))
        .unwrap();
        assert_eq!(n["interactive"]["action"]["buttons"][0]["reply"]["id"], "a");
        let n = native(
            json!({"messaging_product":"whatsapp","recipient_type":"group","to":"120363025","text":{"body":"x"}}),
        )
        .unwrap();
        assert_eq!((n["to"].as_str(), n["type"].as_str()), (Some("120363025@g.us"), Some("text")));
        let n = native(
            json!({"messaging_product":"whatsapp","to":"5511999998888","type":"document","document":{"id":"12"}}),
        )
        .unwrap();
        assert_eq!(n["document"]["id"], "med_0000000000000000000000000000000c");
    }

    #[test]
    fn bad_envelopes_name_their_field() {
        let cases = [
            (json!({"to":"5511999998888","text":{"body":"x"}}), "messaging_product"),
            (json!({"messaging_product":"sms","to":"5511999998888","text":{"body":"x"}}), "messaging_product"),
            (json!({"messaging_product":"whatsapp","text":{"body":"x"}}), "to"),
            (json!({"messaging_product":"whatsapp","to":["x"],"text":{"body":"x"}}), "to"),
            (json!({"messaging_product":"whatsapp","recipient_type":"channel","to":"1"}), "recipient_type"),
        ];
        for (v, field) in cases {
            assert_eq!(native(v.clone()).unwrap_err().field, field, "{v}");
        }
    }
}
