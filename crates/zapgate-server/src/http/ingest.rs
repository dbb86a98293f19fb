//! Provider webhooks: `POST /providers/{kind}/{account}/webhook` (and the
//! Cloud API's `GET` handshake on the same URL).
//!
//! The route authenticates the POST the provider's way, reads its events
//! (one POST may carry several), maps each to the account's instance it
//! names, and stores them all in one transaction (`Inbox::ingest`: dedupe
//! key, change, event) before answering 200. A re-sent event is a
//! duplicate: 200, nothing changes. Nothing slow happens before the answer.

use super::AppState;
use super::error::{ApiError, ApiResult};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zapgate_backends::{
    InboundEvent, InboundItem, InboundOutcome, IngestAccount, NewInbound, NewMedia, NewMediaState, ProviderStatusReport,
};
use zapgate_domain::instance_state::FlapPolicy;
use zapgate_domain::{ChatId, InstanceState, MediaId, MessageId, ReceivedMessage, Timestamp};
use zapgate_providers::{Provider, ProviderEvent, ProviderEventKind, WebhookAuth, WebhookRequest, cloud_api};

/// How long an account (its secret and instances) is reused before it is read again.
const ACCOUNT_TTL: Duration = Duration::from_secs(5);

/// Accounts as last read, so a busy webhook URL costs no store round trip
/// for its lookup. An event naming an instance the cached account does not
/// have re-reads it once (a new instance must not wait for the TTL).
pub struct IngestAccounts {
    /// What provider webhook URLs start with (`ZAPGATE_PUBLIC_URL`, else the ingest listener).
    base_url: String,
    cached: Mutex<HashMap<AccountKey, CachedAccount>>,
}

/// (provider kind, account) as the webhook URL names them.
type AccountKey = (String, String);
/// When it was read, and the account (`None`: none by that name).
type CachedAccount = (Instant, Option<Arc<IngestAccount>>);

/// Where a provider account posts its webhooks, and the secret they prove
/// themselves with: the `?token=` of Evolution and UAZAPI (already in
/// `url_with_token`), WAHA's HMAC key. The Cloud API signs with the app's
/// own secret instead.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WebhookTarget {
    /// The URL without credentials, which zapgate registers at a provider
    /// together with `secret`.
    #[serde(skip)]
    pub base: String,
    #[serde(skip)]
    pub secret: String,
    /// The URL to configure at the provider (with `?token=` for providers that do not sign).
    pub url: String,
    /// WAHA's `hmac.key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hmac_key: Option<String>,
}

impl IngestAccounts {
    pub fn new(base_url: String) -> Self {
        Self { base_url, cached: Mutex::default() }
    }

    /// Where providers (and media links) reach zapgate.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The webhook target of a provider account (None: unknown account, or a
    /// kind without webhooks). Makes the account's secret on first use.
    pub async fn target(&self, s: &AppState, kind: &str, account: &str) -> ApiResult<Option<WebhookTarget>> {
        let Some(auth) = s.providers.get(kind).and_then(|p| p.webhook_auth()) else { return Ok(None) };
        let Some(found) = self.get(s, kind, account, false).await? else { return Ok(None) };
        let url = format!("{}/providers/{kind}/{account}/webhook", self.base_url);
        let secret = found.secret.clone();
        let (shown, hmac_key) = match auth {
            WebhookAuth::Token => (format!("{url}?token={secret}"), None),
            WebhookAuth::WahaHmac => (url.clone(), Some(secret.clone())),
            WebhookAuth::HubSignature => (url.clone(), None),
        };
        Ok(Some(WebhookTarget { base: url, secret, url: shown, hmac_key }))
    }

    async fn get(&self, s: &AppState, kind: &str, account: &str, fresh: bool) -> ApiResult<Option<Arc<IngestAccount>>> {
        let key = (kind.to_owned(), account.to_owned());
        if !fresh {
            let cached = self.cached.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned();
            if let Some((_, found)) = cached.filter(|(at, _)| at.elapsed() < ACCOUNT_TTL) {
                return Ok(found);
            }
        }
        let found = s.backends.inbox.ingest_account(kind, account).await?.map(Arc::new);
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if cached.len() > 10_000 {
            cached.retain(|_, (at, _)| at.elapsed() < ACCOUNT_TTL);
        }
        cached.insert(key, (Instant::now(), found.clone()));
        Ok(found)
    }
}

#[derive(Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

/// What the POST took in.
#[derive(Serialize, utoipa::ToSchema)]
pub struct IngestAnswer {
    /// Events stored now.
    pub accepted: usize,
    /// Events taken in before (re-sent by the provider): nothing changed.
    pub duplicates: usize,
    /// Events about instances this account does not have, or of kinds zapgate does not use.
    pub ignored: usize,
}

fn unknown_account() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "unknown_account", "no such provider account")
}

fn provider(s: &AppState, kind: &str) -> ApiResult<(Arc<dyn Provider>, WebhookAuth)> {
    let p = s.providers.get(kind).ok_or_else(unknown_account)?;
    let auth = p.webhook_auth().ok_or_else(unknown_account)?;
    Ok((p, auth))
}

/// A provider's webhook POST.
#[utoipa::path(post, path = "/providers/{kind}/{account}/webhook", tag = "ingest",
    params(("kind" = String, Path, description = "cloud_api, waha, evolution or uazapi"),
           ("account" = String, Path, description = "a provider server (prv_…) or an instance with its own settings (ins_…)"),
           ("token" = Option<String>, Query, description = "the account's webhook token (Evolution, UAZAPI)")),
    request_body(content = Object, description = "the provider's webhook body, as it sends it"),
    responses((status = 200, body = IngestAnswer), (status = 400, body = super::error::ErrorBody),
              (status = 401, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody)))]
pub async fn receive(
    State(s): State<AppState>,
    Path((kind, account)): Path<(String, String)>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<IngestAnswer>> {
    let started = Instant::now();
    let (p, auth) = provider(&s, &kind)?;
    let mut found = s.ingest.get(&s, &kind, &account, false).await?.ok_or_else(unknown_account)?;
    let req = WebhookRequest { headers: &headers, token: q.token.as_deref(), body: &body };
    if !secret_of(&found, auth).is_some_and(|secret| auth.verify(&secret, &req)) {
        metrics::counter!("zapgate_ingest_events_total", "provider" => p.kind(), "outcome" => "unauthorized")
            .increment(1);
        return Err(ApiError::unauthorized("the webhook's signature or token does not match this account"));
    }
    let events = p.parse_webhook(&body).map_err(|e| ApiError::bad_request("malformed_webhook", e.to_string()))?;
    let policy = s.config.flap_policy();
    let mut items = items(&*p, &found, &events, policy);
    if items.unplaced > 0 {
        // An instance made after the account was cached: read it again once.
        found = s.ingest.get(&s, &kind, &account, true).await?.ok_or_else(unknown_account)?;
        items = self::items(&*p, &found, &events, policy);
    }
    let outcomes = s.backends.inbox.ingest(items.items, Timestamp::now()).await?;
    zapgate_backends::crash_point("after_ingest_commit");
    let duplicates = outcomes.iter().filter(|o| **o == InboundOutcome::Duplicate).count();
    for o in &outcomes {
        metrics::counter!("zapgate_ingest_events_total", "provider" => p.kind(), "outcome" => o.as_str()).increment(1);
        if let InboundOutcome::Connection(Some(state)) = o {
            metrics::counter!("zapgate_instance_state_changes_total", "state" => state.as_str()).increment(1);
        }
    }
    if items.unplaced + items.unused > 0 {
        metrics::counter!("zapgate_ingest_events_total", "provider" => p.kind(), "outcome" => "ignored")
            .increment((items.unplaced + items.unused) as u64);
    }
    if items.unplaced > 0 {
        tracing::warn!(provider = p.kind(), %account, events = items.unplaced, "webhook events for instances this account does not have were dropped");
    }
    metrics::histogram!("zapgate_ingest_seconds", "provider" => p.kind()).record(started.elapsed().as_secs_f64());
    Ok(Json(IngestAnswer { accepted: outcomes.len() - duplicates, duplicates, ignored: items.unplaced + items.unused }))
}

/// The secret the account's webhooks are checked against: the Cloud API
/// signs with the app secret in its instance's settings; the others with
/// the account's own secret.
fn secret_of(account: &IngestAccount, auth: WebhookAuth) -> Option<String> {
    match auth {
        WebhookAuth::HubSignature => account.owner.as_ref().and_then(|o| cloud_api::app_secret(&o.config)),
        WebhookAuth::WahaHmac | WebhookAuth::Token => Some(account.secret.clone()),
    }
}

struct Items {
    items: Vec<InboundItem>,
    /// Events naming an instance the account does not have.
    unplaced: usize,
    /// Events zapgate does not act on.
    unused: usize,
}

fn items(p: &dyn Provider, account: &IngestAccount, events: &[ProviderEvent], policy: FlapPolicy) -> Items {
    let by_name: HashMap<String, &zapgate_backends::AccountInstance> =
        account.instances.iter().filter_map(|i| Some((p.webhook_instance(&i.config)?, i))).collect();
    let mut out = Items { items: Vec::with_capacity(events.len()), unplaced: 0, unused: 0 };
    for e in events {
        let Some(instance) = by_name.get(&e.instance) else {
            out.unplaced += 1;
            continue;
        };
        let event = match &e.kind {
            ProviderEventKind::Status(r) => InboundEvent::Status(ProviderStatusReport {
                provider_message_id: r.provider_message_id.clone(),
                instance_id: Some(instance.instance_id.clone()),
                status: r.status,
                at: r.at,
                error_code: r.error_code.clone(),
                error_message: r.error_message.clone(),
            }),
            ProviderEventKind::Message(m) => InboundEvent::Message(new_inbound(p, instance, m)),
            ProviderEventKind::Connection { state, reason } => {
                let (state, reason) = state.machine_state(reason.as_deref());
                InboundEvent::Connection { state, reason, policy, qr: None }
            }
            ProviderEventKind::Qr { raw } => {
                InboundEvent::Connection { state: InstanceState::Qr, reason: None, policy, qr: raw.clone() }
            }
        };
        out.items.push(InboundItem {
            tenant_id: instance.tenant_id.clone(),
            instance_id: instance.instance_id.clone(),
            event,
        });
    }
    out
}

/// The message as stored, with its attachment (if any) to fetch: a media
/// id minted now, shown in the content as `media_id` (`GET /v1/media/{id}`).
fn new_inbound(
    p: &dyn Provider,
    instance: &zapgate_backends::AccountInstance,
    m: &zapgate_providers::InboundMessage,
) -> NewInbound {
    let id = MessageId::generate();
    let mut content = m.content.clone();
    let media = m.media.as_ref().and_then(|media| {
        let fetch = p.media_fetch(&instance.config, &media.source)?;
        let media_id = MediaId::generate();
        let kind = content["type"].as_str().unwrap_or_default().to_owned();
        if let Some(o) = content.get_mut(&kind).and_then(|k| k.as_object_mut()) {
            o.insert("media_id".into(), media_id.to_string().into());
        }
        Some(Box::new(NewMedia {
            id: media_id,
            tenant_id: instance.tenant_id.clone(),
            instance_id: Some(instance.instance_id.clone()),
            message_id: Some(id.clone()),
            mime_type: media.mime_type.clone(),
            filename: media.filename.clone(),
            state: NewMediaState::Fetch(serde_json::to_value(fetch).expect("recipes serialise")),
        }))
    });
    NewInbound {
        id,
        chat: m.chat.key(),
        media,
        body: ReceivedMessage {
            wa_message_id: m.wa_message_id.clone(),
            chat: m.chat.shown(),
            sender: m.sender.as_ref().map(ChatId::shown),
            sender_name: m.sender_name.clone(),
            from_me: m.from_me,
            content,
            context_id: m.context_id.clone(),
            sent_at: m.at,
        },
    }
}

#[derive(Deserialize)]
pub struct Handshake {
    #[serde(rename = "hub.mode")]
    mode: Option<String>,
    #[serde(rename = "hub.verify_token")]
    verify_token: Option<String>,
    #[serde(rename = "hub.challenge")]
    challenge: Option<String>,
}

/// Meta's verification of a callback URL: echoes `hub.challenge` when the
/// verify token matches the instance's `verify_token` setting.
#[utoipa::path(get, path = "/providers/{kind}/{account}/webhook", tag = "ingest",
    params(("kind" = String, Path, description = "cloud_api (the only kind with a handshake)"),
           ("account" = String, Path, description = "a Cloud API instance (ins_…)"),
           ("hub.mode" = String, Query), ("hub.verify_token" = String, Query), ("hub.challenge" = String, Query)),
    responses((status = 200, description = "the challenge, as plain text"), (status = 403, body = super::error::ErrorBody),
              (status = 404, body = super::error::ErrorBody)))]
pub async fn handshake(
    State(s): State<AppState>,
    Path((kind, account)): Path<(String, String)>,
    Query(q): Query<Handshake>,
) -> ApiResult<Response> {
    if kind != "cloud_api" {
        return Err(unknown_account());
    }
    let found = s.ingest.get(&s, "cloud_api", &account, false).await?.ok_or_else(unknown_account)?;
    let expected = found.owner.as_ref().and_then(|o| cloud_api::verify_token(&o.config));
    let token_matches = matches!((&expected, &q.verify_token), (Some(e), Some(g)) if e == g);
    match (q.mode.as_deref(), q.challenge) {
        (Some("subscribe"), Some(challenge)) if token_matches => Ok((StatusCode::OK, challenge).into_response()),
        _ => Err(ApiError::new(StatusCode::FORBIDDEN, "verification_failed", "hub.verify_token does not match")),
    }
}
