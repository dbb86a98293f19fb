//! Request extractors: JSON bodies with API-shaped errors, and bearer-token
//! authentication (tenant or super-admin).

use super::AppState;
use super::error::ApiError;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use zapgate_domain::{ApiToken, TenantId, TokenHash};

/// `Json<T>` whose rejections use the API error shape.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(r) => Err(json_rejection(r)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    let text = r.body_text();
    match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "the request body is too large")
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with Content-Type: application/json",
        ),
        StatusCode::UNPROCESSABLE_ENTITY => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", text),
        _ => ApiError::bad_request("invalid_json", text),
    }
}

/// `Query<T>` whose rejections use the API error shape.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(r @ QueryRejection::FailedToDeserializeQueryString(_)) => {
                Err(ApiError::bad_request("invalid_query", r.body_text()))
            }
            Err(r) => Err(ApiError::bad_request("invalid_query", r.body_text())),
        }
    }
}

pub(super) fn bearer(parts: &Parts) -> Result<ApiToken, ApiError> {
    let value = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token> header"))?;
    let value = value.to_str().map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be Bearer <token>"))?;
    Ok(ApiToken::presented(token.trim()))
}

/// The tenant a request acts for, from its bearer token. Also applies the
/// per-tenant API rate limit (429 + Retry-After).
pub struct TenantAuth(pub TenantId);

impl FromRequestParts<AppState> for TenantAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(TenantAuth(tenant_for(state, bearer(parts)?).await?))
    }
}

/// The tenant a presented token belongs to, with the per-tenant rate limit
/// applied: the one check behind every tenant route, native or facade.
pub async fn tenant_for(state: &AppState, token: ApiToken) -> Result<TenantId, ApiError> {
    let hash = token.hash();
    if hash.ct_eq(&state.admin_hash) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "tenant_token_required",
            "this route acts for a tenant: use a tenant token, not the admin token",
        ));
    }
    let tenant = match state.tokens.get(&hash) {
        Some(t) => t,
        None => {
            let generation = state.tokens.generation();
            let t = state
                .backends
                .store
                .tenant_for_token(&hash)
                .await?
                .ok_or_else(|| ApiError::unauthorized("unknown or revoked token"))?;
            state.tokens.put(hash, t.clone(), generation);
            t
        }
    };
    let limit = state.config.tenant_rate_limit;
    if limit > 0 {
        let key = format!("api:{tenant}");
        if let Err(t) = state.backends.rate_limiter.check(&key, limit, limit.saturating_mul(2)).await {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("more than {limit} requests per second for this tenant"),
            )
            .with_retry_after(t.retry_after));
        }
    }
    Ok(tenant)
}

/// Proof that the request carries the super-admin token.
pub struct AdminAuth;

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if bearer(parts)?.hash().ct_eq(&state.admin_hash) {
            Ok(AdminAuth)
        } else {
            Err(ApiError::unauthorized("this route needs the admin token"))
        }
    }
}

/// Token hash → tenant, for a short time, so the hot path skips the store.
/// Revocation clears it, so a revoked token stops working at once here.
pub struct TokenCache {
    ttl: Duration,
    map: Mutex<HashMap<TokenHash, (TenantId, Instant)>>,
    /// Bumped by every revocation; a lookup that started before one must
    /// not cache what it read (it may be the token just revoked).
    generation: AtomicU64,
}

impl TokenCache {
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, map: Mutex::new(HashMap::new()), generation: AtomicU64::new(0) }
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn get(&self, h: &TokenHash) -> Option<TenantId> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(h).filter(|(_, at)| at.elapsed() < self.ttl).map(|(t, _)| t.clone())
    }

    fn put(&self, h: TokenHash, t: TenantId, read_at_generation: u64) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if self.generation() != read_at_generation {
            return;
        }
        if map.len() > 100_000 {
            map.clear();
        }
        map.insert(h, (t, Instant::now()));
    }

    pub fn clear(&self) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        map.clear();
    }
}
