//! `POST /webhooks/chatwoot/{integration_id}`: Chatwoot's account webhook.
//!
//! Answers in milliseconds, having only stored a job: rate limits (per
//! client IP, then per integration), the signature when the integration has
//! a secret, then what the webhook means ([`crate::chatwoot::webhook::decide`]).
//! A message to send becomes a job keyed (integration, Chatwoot message id),
//! a unique key in the store, so the same webhook at several replicas, or
//! again a day later, is one job (`{"status":"already_queued"}`). A lock on
//! the key while the job is written (`ZAPGATE_CHATWOOT_LOCK_TTL_MS` at most)
//! answers the concurrent copies without a write. `worker/chatwoot.rs` turns jobs into messages.

use super::AppState;
use super::error::{ApiError, ApiResult};
use crate::chatwoot::webhook::{Decision, decide, signature_ok};
use axum::Json;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use zapgate_backends::NewChatwootJob;
use zapgate_domain::{IntegrationId, Timestamp};

/// Waits (at most the lock's TTL) for the copy holding the lock to store
/// the job: `already_queued` once it is there; 503 if it never came (that
/// copy failed, and this one must be delivered again).
async fn settled_copy(s: &AppState, id: &IntegrationId, message: &str, ttl: Duration) -> ApiResult<Json<Value>> {
    let deadline = tokio::time::Instant::now() + ttl;
    loop {
        if s.backends.chatwoot.get_chatwoot_job(id, message).await?.is_some() {
            return Ok(Json(json!({"status": "already_queued"})));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "chatwoot_message_busy",
                "another copy of this webhook is being handled; deliver it again",
            )
            .with_retry_after(Duration::from_secs(1)));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn limit(s: &AppState, key: String) -> ApiResult<()> {
    let (rate, burst) = (s.config.chatwoot_rate_per_sec, s.config.chatwoot_burst);
    s.backends.rate_limiter.check(&key, rate, burst).await.map_err(|t| {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", format!("more than {rate} webhooks per second"))
            .with_retry_after(t.retry_after)
    })
}

pub async fn receive(State(s): State<AppState>, Path(raw): Path<String>, req: Request) -> ApiResult<Json<Value>> {
    if let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>() {
        // Per deployment: others may share the Redis.
        limit(&s, format!("chatwoot-ip:{}:{}", s.config.deployment_key(), peer.ip())).await?;
    }
    let not_found = || ApiError::not_found("chatwoot integration");
    let id = IntegrationId::parse(&raw).ok_or_else(not_found)?;
    let integration = s.backends.chatwoot.integration(&id).await?.filter(|i| i.enabled).ok_or_else(not_found)?;
    limit(&s, format!("chatwoot:{id}")).await?;
    let headers = req.headers().clone();
    let body = axum::body::to_bytes(req.into_body(), s.config.max_body_bytes).await.map_err(|_| {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "the request body is too large")
    })?;
    if let Some(secret) = &integration.webhook_secret {
        let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let now = Timestamp::now().as_millis() / 1000;
        if !signature_ok(secret, header("x-chatwoot-timestamp"), &body, header("x-chatwoot-signature"), now) {
            return Err(ApiError::unauthorized(
                "X-Chatwoot-Signature is missing or wrong, or X-Chatwoot-Timestamp is more than 5 minutes off",
            ));
        }
    }
    let payload: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}")))?;
    let outgoing = match decide(&payload, integration.inbox_id) {
        Ok(Decision::Send(o)) => o,
        Ok(Decision::Ignore(reason)) => return Ok(Json(json!({"status": "ignored", "reason": reason}))),
        Err(why) => return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_webhook", why)),
    };
    // Copies arriving while this one writes are answered by the lock; once
    // the job is stored, by its key (the lock is released so the worker
    // can take it at once).
    let key = format!("chatwoot:{id}:{}", outgoing.chatwoot_message_id);
    let ttl = Duration::from_millis(s.config.chatwoot_lock_ttl_ms);
    let Some(token) = s.backends.locks.try_acquire(&key, ttl).await else {
        // Another copy is being written: answer what became of it.
        return settled_copy(&s, &id, &outgoing.chatwoot_message_id, ttl).await;
    };
    let job = NewChatwootJob {
        integration_id: id,
        chatwoot_message_id: outgoing.chatwoot_message_id.clone(),
        tenant_id: integration.tenant_id,
        payload: serde_json::to_value(&outgoing).expect("jobs serialise"),
        now: Timestamp::now(),
    };
    let (store, locks) = (s.backends.chatwoot.clone(), s.backends.locks.clone());
    // Detached: a client that hangs up must not cancel the write (or leave the lock).
    let new = super::detached(async move {
        let new = store.enqueue_chatwoot_job(job).await;
        locks.release(&key, token).await;
        new
    })
    .await??;
    metrics::counter!("zapgate_chatwoot_webhooks_total", "result" => if new { "queued" } else { "duplicate" })
        .increment(1);
    Ok(Json(json!({"status": if new { "queued" } else { "already_queued" }})))
}
