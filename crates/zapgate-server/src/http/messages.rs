//! Sending and reading messages.

use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery, TenantAuth};
use super::{AppState, PageParams};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::sync::Arc;
use zapgate_backends::{
    AcceptMessage, Accepted, Cancel, IdempotencyKey, LockToken, Locks, MessageFilter, MessageRecord,
};
use zapgate_domain::{
    ChatId, InstanceId, MediaId, MessageContent, MessageEvent, MessageId, MessageStatus, Priority, SendRequest,
    TenantId, Timestamp, ValidationError,
};

/// Body of `POST /v1/messages` (documentation shape; parsing is in [`parse_send`]).
#[derive(Deserialize, utoipa::ToSchema)]
pub struct SendMessage {
    /// The instance (WhatsApp number) to send from.
    pub instance_id: String,
    /// Phone in E.164 (`+5511999998888`), group (`…@g.us`) or LID (`…@lid`).
    pub to: String,
    #[serde(flatten)]
    pub content: MessageContent,
    /// `high`, `normal` (default) or `low`; orders messages within the tenant.
    pub priority: Option<Priority>,
    /// Send no earlier than this time (RFC 3339).
    pub send_at: Option<Timestamp>,
    /// Give up (status `expired`) if not sent by this time (RFC 3339).
    pub expires_at: Option<Timestamp>,
    /// Instead of `type` and its content: a tenant template, rendered as text.
    pub template_id: Option<String>,
    /// Values of the template's variables.
    pub variables: Option<std::collections::BTreeMap<String, String>>,
    /// Quote this message (a reply): a zapgate message id (`msg_…`, sent or
    /// received) or a WhatsApp message id.
    pub reply_to: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MessageAccepted {
    pub id: MessageId,
    pub status: MessageStatus,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MessageWithHistory {
    #[serde(flatten)]
    pub message: MessageRecord,
    /// Every status change, oldest first.
    pub history: Vec<MessageEvent>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MessageList {
    pub data: Vec<MessageRecord>,
    /// Pass as `cursor` to get the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

const ENVELOPE: [&str; 6] = ["instance_id", "to", "priority", "send_at", "expires_at", "reply_to"];

/// Parses the JSON object of a send into a [`SendRequest`], naming the
/// offending field on failure. The envelope fields are taken out first; what
/// remains must be exactly one message content in the Cloud API shape.
pub fn parse_send(mut body: Map<String, Value>, now: Timestamp) -> Result<SendRequest, ValidationError> {
    let mut take_str = |field: &str, required: bool| -> Result<Option<String>, ValidationError> {
        match body.remove(field) {
            None | Some(Value::Null) if !required => Ok(None),
            None | Some(Value::Null) => Err(ValidationError::new(field, "is required")),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ValidationError::new(field, "must be a string")),
        }
    };
    let instance = take_str("instance_id", true)?.unwrap_or_default();
    let instance_id =
        InstanceId::parse(&instance).ok_or_else(|| ValidationError::new("instance_id", "is not an instance id"))?;
    let to = ChatId::parse(&take_str("to", true)?.unwrap_or_default())?;
    let priority = match take_str("priority", false)? {
        None => Priority::Normal,
        Some(p) => serde_json::from_value(Value::String(p))
            .map_err(|_| ValidationError::new("priority", "must be high, normal or low"))?,
    };
    let mut time = |field: &str| -> Result<Option<Timestamp>, ValidationError> {
        take_str(field, false)?
            .map(|s| {
                Timestamp::parse_rfc3339(&s)
                    .ok_or_else(|| ValidationError::new(field, "must be an RFC 3339 time such as 2026-01-31T09:00:00Z"))
            })
            .transpose()
    };
    let send_at = time("send_at")?;
    let expires_at = time("expires_at")?;
    let reply_to = take_str("reply_to", false)?;
    if reply_to.as_ref().is_some_and(|r| r.is_empty() || r.len() > 256 || r.chars().any(char::is_control)) {
        return Err(ValidationError::new("reply_to", "must be a message id (msg_… or WhatsApp's)"));
    }
    if let Some(e) = expires_at {
        if e <= now {
            return Err(ValidationError::new("expires_at", "is already in the past"));
        }
        if send_at.is_some_and(|s| s >= e) {
            return Err(ValidationError::new("expires_at", "must be after send_at"));
        }
    }
    debug_assert!(ENVELOPE.iter().all(|f| !body.contains_key(*f)));
    let content: MessageContent = serde_json::from_value(Value::Object(body)).map_err(|e| {
        let m = e.to_string();
        let m = m.replace("internally tagged enum MessageContent", "message type");
        ValidationError::new("type", m)
    })?;
    content.validate()?;
    Ok(SendRequest { instance_id, to, content, priority, send_at, expires_at, reply_to })
}

/// How long an Idempotency-Key stays claimed when its request never ends
/// (its API process died): retries then wait at most this long.
const KEY_CLAIM_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// An Idempotency-Key claimed while its first request runs, in every API
/// process (a Redis lock in distributed mode): a concurrent request with the
/// same key is answered 409 instead of racing it. Correctness does not rest
/// on it (the store's unique key does): it is the fast pre-check.
struct KeyClaim {
    locks: Arc<dyn Locks>,
    name: String,
    token: Option<LockToken>,
}

impl KeyClaim {
    async fn take(locks: &Arc<dyn Locks>, tenant: &TenantId, key: &str) -> Option<KeyClaim> {
        let name = format!("idem:{tenant}:{key}");
        let token = locks.try_acquire(&name, KEY_CLAIM_TTL).await?;
        Some(KeyClaim { locks: locks.clone(), name, token: Some(token) })
    }

    /// Released before the answer goes out, so a retry right after it finds the key free.
    async fn release(mut self) {
        if let Some(token) = self.token.take() {
            self.locks.release(&self.name, token).await;
        }
    }
}

impl Drop for KeyClaim {
    /// A request dropped midway (the client went away) releases in the
    /// background; with no runtime left (shutdown) the lock's TTL does it.
    fn drop(&mut self) {
        if let (Some(token), Ok(rt)) = (self.token.take(), tokio::runtime::Handle::try_current()) {
            let (locks, name) = (self.locks.clone(), std::mem::take(&mut self.name));
            rt.spawn(async move { locks.release(&name, token).await });
        }
    }
}

pub(super) fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let ok = v.to_str().ok().filter(|s| (1..=255).contains(&s.len()) && s.bytes().all(|b| (0x21..0x7f).contains(&b)));
    match ok {
        Some(s) => Ok(Some(s.to_owned())),
        None => Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )),
    }
}

/// Back-pressure: 503 + Retry-After, refusing loudly rather than queueing
/// without bound.
fn backlogged(code: &'static str, why: String) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, format!("{why}; try again shortly"))
        .with_retry_after(std::time::Duration::from_secs(5))
}

/// Accepts a message for sending. Answers 202 only once the message, its
/// first event and its queue entry are committed together.
#[utoipa::path(post, path = "/v1/messages", tag = "messages", security(("tenant" = [])),
    request_body = SendMessage,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Same key and body → the first response; different body → 422; first still running → 409")),
    responses(
        (status = 202, body = MessageAccepted),
        (status = 400, body = super::error::ErrorBody), (status = 401, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody), (status = 413, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody), (status = 429, body = super::error::ErrorBody)))]
pub async fn send(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> ApiResult<(StatusCode, Json<MessageAccepted>)> {
    let accepted = accept(&s, tenant, idempotency_key(&headers)?, body).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

/// The accept path shared by `POST /v1/messages` and the Cloud API facade:
/// back-pressure, template expansion, parsing, the media check, the
/// Idempotency-Key claim, and the durable write. `Ok` only after COMMIT.
pub(super) async fn accept(
    s: &AppState,
    tenant: TenantId,
    key: Option<String>,
    mut body: Map<String, Value>,
) -> ApiResult<MessageAccepted> {
    let now = Timestamp::now();
    let depth = s.queue_depth.total.load(std::sync::atomic::Ordering::Relaxed);
    if depth > s.config.max_queue_depth {
        return Err(backlogged("queue_full", format!("{depth} messages are waiting")));
    }
    if s.queue_depth.tenants_over.contains(&tenant) {
        let limit = s.config.max_tenant_queue_depth;
        return Err(backlogged("tenant_queue_full", format!("more than {limit} of your messages are waiting")));
    }
    if s.queue_depth.tenants_lagging.contains(&tenant) {
        let lag = humantime::format_duration(s.config.max_tenant_queue_lag);
        return Err(backlogged(
            "tenant_queue_lagging",
            format!("your oldest waiting message has waited more than {lag}"),
        ));
    }
    super::templates::expand(s, &tenant, &mut body).await?;
    let request = parse_send(body, now)?;
    check_media(s, &tenant, &request).await?;
    let claim = match &key {
        Some(k) => Some(KeyClaim::take(&s.backends.locks, &tenant, k).await.ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_in_flight",
                "a request with this Idempotency-Key is still being processed",
            )
            .with_retry_after(std::time::Duration::from_secs(1))
        })?),
        None => None,
    };
    test_hook_accept_delay().await;
    let instance = request.instance_id.clone();
    let idempotency = key.map(|k| IdempotencyKey { key: k, fingerprint: request.fingerprint() });
    let msg =
        AcceptMessage { campaign_id: None, id: MessageId::generate(), tenant_id: tenant, request, idempotency, now };
    let (store, work) = (s.backends.store.clone(), s.work.clone());
    let accepted = super::detached(async move {
        let accepted = store.accept(msg).await;
        if let Ok(Accepted::New { .. }) = &accepted {
            metrics::counter!("zapgate_messages_accepted_total").increment(1);
            work.mark(instance);
        }
        accepted
    })
    .await;
    if let Some(claim) = claim {
        claim.release().await;
    }
    match accepted?? {
        Accepted::New { id, status } | Accepted::Replayed { id, status } => Ok(MessageAccepted { id, status }),
        Accepted::KeyReused => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request body",
        )),
        Accepted::UnknownInstance => {
            Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown_instance", "no such instance for this tenant")
                .with_details(serde_json::json!({ "field": "instance_id" })))
        }
    }
}

/// Media named by `id` must be this tenant's and stored: refused now rather
/// than failed later.
async fn check_media(s: &AppState, tenant: &TenantId, request: &SendRequest) -> ApiResult<()> {
    let Some(raw) = request.content.media().and_then(|m| m.id.as_deref()) else { return Ok(()) };
    let field = format!("{}.id", request.content.kind());
    let media = match MediaId::parse(raw) {
        Some(id) => s.backends.media_index.get_media(tenant, &id).await?,
        None => None,
    };
    match media.map(|m| m.status) {
        Some(zapgate_backends::MediaStatus::Stored) => Ok(()),
        Some(status) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "media_not_stored",
            format!("the media is {} (only stored media can be sent)", status.as_str()),
        )
        .with_details(serde_json::json!({ "field": field }))),
        None => Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown_media", "no such media for this tenant")
            .with_details(serde_json::json!({ "field": field }))),
    }
}

#[cfg(feature = "test-hooks")]
async fn test_hook_accept_delay() {
    if let Some(ms) = std::env::var("ZAPGATE_TEST_ACCEPT_DELAY_MS").ok().and_then(|v| v.parse().ok()) {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}

#[cfg(not(feature = "test-hooks"))]
async fn test_hook_accept_delay() {}

pub(super) fn message_id(raw: &str) -> ApiResult<MessageId> {
    MessageId::parse(raw).ok_or_else(|| ApiError::not_found("message"))
}

/// Gets a message with its full status history.
#[utoipa::path(get, path = "/v1/messages/{message_id}", tag = "messages", security(("tenant" = [])),
    params(("message_id" = String, Path)),
    responses((status = 200, body = MessageWithHistory), (status = 404, body = super::error::ErrorBody)))]
pub async fn get(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<MessageWithHistory>> {
    let id = message_id(&id)?;
    let message = s.backends.store.get_message(&tenant, &id).await?.ok_or_else(|| ApiError::not_found("message"))?;
    let history = s.backends.store.message_history(&tenant, &id).await?;
    Ok(Json(MessageWithHistory { message, history }))
}

/// Cancels a message that has not been handed to the provider yet
/// (`scheduled`, `queued` or `retry_wait`).
#[utoipa::path(delete, path = "/v1/messages/{message_id}", tag = "messages", security(("tenant" = [])),
    params(("message_id" = String, Path)),
    responses((status = 200, body = MessageAccepted), (status = 404, body = super::error::ErrorBody),
              (status = 409, body = super::error::ErrorBody)))]
pub async fn cancel(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<MessageAccepted>> {
    let id = message_id(&id)?;
    match s.backends.store.cancel_message(&tenant, &id, Timestamp::now()).await? {
        Cancel::Cancelled => Ok(Json(MessageAccepted { id, status: MessageStatus::Cancelled })),
        Cancel::NotFound => Err(ApiError::not_found("message")),
        Cancel::TooLate(status) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_cancellable",
            format!("the message is {status}; only scheduled, queued or retry_wait messages can be cancelled"),
        )),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// Only messages in this status.
    pub status: Option<String>,
    /// Only messages to this recipient.
    pub to: Option<String>,
    pub instance_id: Option<String>,
    /// Accepted at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Accepted before this time (RFC 3339).
    pub until: Option<String>,
    /// Opaque cursor from a previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// Page size, 1–500 (default 50).
    pub limit: Option<u32>,
}

impl ListQuery {
    fn filter(&self) -> ApiResult<MessageFilter> {
        let bad = |m: &str| ApiError::bad_request("invalid_query", m.to_owned());
        let time = |s: &Option<String>, name: &str| {
            s.as_deref()
                .map(|v| Timestamp::parse_rfc3339(v).ok_or_else(|| bad(&format!("{name} must be an RFC 3339 time"))))
                .transpose()
        };
        let page = PageParams { cursor: self.cursor.clone(), limit: self.limit };
        Ok(MessageFilter {
            status: self.status.as_deref().map(|v| v.parse().map_err(|e: String| bad(&e))).transpose()?,
            recipient: self.to.as_deref().map(|v| ChatId::parse(v).map_err(|e| bad(&e.to_string()))).transpose()?,
            instance_id: self
                .instance_id
                .as_deref()
                .map(|v| InstanceId::parse(v).ok_or_else(|| bad("instance_id is not an instance id")))
                .transpose()?,
            since: time(&self.since, "since")?,
            until: time(&self.until, "until")?,
            before: page.before(MessageId::parse)?,
            limit: page.limit()?,
        })
    }
}

pub(super) async fn list_page(s: &AppState, tenant: &TenantId, f: MessageFilter) -> ApiResult<MessageList> {
    let data = s.backends.store.list_messages(tenant, &f).await?;
    let next_cursor = super::next_cursor(&data, f.limit, |m| m.id.to_string());
    Ok(MessageList { data, next_cursor })
}

/// Lists messages, newest first, with filters and cursor pagination.
#[utoipa::path(get, path = "/v1/messages", tag = "messages", security(("tenant" = [])), params(ListQuery),
    responses((status = 200, body = MessageList), (status = 400, body = super::error::ErrorBody)))]
pub async fn list(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<MessageList>> {
    Ok(Json(list_page(&s, &tenant, q.filter()?).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<SendRequest, ValidationError> {
        parse_send(v.as_object().unwrap().clone(), Timestamp::now())
    }

    const INS: &str = "ins_0193a1b2c3d47e8f9a0b1c2d3e4f5a6b";

    #[test]
    fn a_full_send_parses() {
        let r = parse(json!({"instance_id": INS, "to": "+5511999998888", "type": "text", "text": {"body": "oi"},
            "priority": "high", "expires_at": "2999-01-01T00:00:00Z"}))
        .unwrap();
        assert_eq!(r.priority, Priority::High);
        assert_eq!(r.to, ChatId::Phone("5511999998888".into()));
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (json!({"to": "+5511999998888", "type": "text", "text": {"body": "x"}}), "instance_id"),
            (json!({"instance_id": INS, "to": 5511999998888u64, "type": "text", "text": {"body": "x"}}), "to"),
            (json!({"instance_id": INS, "to": "abc", "type": "text", "text": {"body": "x"}}), "to"),
            (json!({"instance_id": INS, "to": "+5511999998888", "type": "text"}), "type"),
            (json!({"instance_id": INS, "to": "+5511999998888", "type": "text", "text": {"body": ""}}), "text.body"),
            (
                json!({"instance_id": INS, "to": "+5511999998888", "type": "text", "text": {"body": "x"},
                "priority": "urgent"}),
                "priority",
            ),
            (
                json!({"instance_id": INS, "to": "+5511999998888", "type": "text", "text": {"body": "x"},
                "expires_at": "2000-01-01T00:00:00Z"}),
                "expires_at",
            ),
            (
                json!({"instance_id": INS, "to": "+5511999998888", "type": "text", "text": {"body": "x"},
                "colour": "red"}),
                "type",
            ),
        ];
        for (v, field) in cases {
            let e = parse(v.clone()).unwrap_err();
            assert_eq!(e.field, field, "{v}: {e}");
        }
    }
}
