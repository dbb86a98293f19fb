//! An instance's session at its provider: its connection state, the QR code
//! to link a phone, logout. Each is one call to the provider, bounded by
//! [`PROVIDER_CALL_TIMEOUT`]; its refusals answer 409, its outages 502.

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::TenantAuth;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use zapgate_backends::InstanceRecord;
use zapgate_domain::{InstanceId, TenantId};
use zapgate_providers::{Connection, Provider, ProviderError};

/// Longest an API request waits on a provider.
pub const PROVIDER_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs one provider call within [`PROVIDER_CALL_TIMEOUT`].
pub async fn call<T>(f: impl Future<Output = Result<T, ProviderError>>) -> Result<T, ProviderError> {
    tokio::time::timeout(PROVIDER_CALL_TIMEOUT, f).await.unwrap_or(Err(ProviderError::Timeout))
}

/// The tenant's instance and its provider, or 404.
pub async fn instance_and_provider(
    s: &AppState,
    tenant: &TenantId,
    raw_id: &str,
) -> ApiResult<(InstanceRecord, Arc<dyn Provider>)> {
    let id = InstanceId::parse(raw_id).ok_or_else(|| ApiError::not_found("instance"))?;
    let rec = s.backends.store.get_instance(tenant, &id).await?.ok_or_else(|| ApiError::not_found("instance"))?;
    let provider = s.providers.get(&rec.provider).ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "unknown_provider",
            format!("this process has no provider {:?}", rec.provider),
        )
    })?;
    Ok((rec, provider))
}

/// `connection` of `GET /v1/instances/{id}`: what the provider says now.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ConnectionView {
    Known(Connection),
    /// The provider could not be asked (`state: "unknown"`, with why).
    Unknown {
        state: &'static str,
        error: String,
    },
}

pub async fn connection(provider: &dyn Provider, rec: &InstanceRecord) -> Option<ConnectionView> {
    match call(provider.connection(&rec.provider_config)).await {
        Ok(known) => known.map(ConnectionView::Known),
        Err(e) => Some(ConnectionView::Unknown { state: "unknown", error: e.to_string() }),
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct QrCode {
    /// The string the QR code encodes (null when the provider gives only the image).
    pub qr: Option<String>,
    /// The QR code as a PNG data URL.
    pub image: String,
}

/// The QR code to link a phone to the instance: JSON, or the PNG itself
/// with `Accept: image/png`. 409 `not_waiting_for_qr` once it is linked.
#[utoipa::path(get, path = "/v1/instances/{instance_id}/qr", tag = "instances", security(("tenant" = [])),
    params(("instance_id" = String, Path)),
    responses((status = 200, body = QrCode), (status = 404, body = super::error::ErrorBody),
              (status = 409, body = super::error::ErrorBody), (status = 502, body = super::error::ErrorBody)))]
pub async fn qr(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (rec, provider) = instance_and_provider(&s, &tenant, &id).await?;
    let qr = call(provider.qr(&rec.provider_config)).await?;
    let wants_png = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("image/png"));
    if wants_png {
        return Ok(([(header::CONTENT_TYPE, "image/png")], qr.png).into_response());
    }
    let image = format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(&qr.png));
    Ok(Json(QrCode { qr: qr.raw, image }).into_response())
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PairingRequest {
    /// The phone to link, in international format (`+5511999998888`).
    pub phone: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PairingCode {
    /// Typed on the phone: WhatsApp → Linked devices → Link with phone number.
    pub code: String,
}

/// A pairing code to link the phone without scanning the QR code (WAHA,
/// Evolution, UAZAPI). 409 `not_waiting_for_qr` once linked,
/// `no_pairing_code` for kinds without one.
#[utoipa::path(post, path = "/v1/instances/{instance_id}/pairing-code", tag = "instances", security(("tenant" = [])),
    params(("instance_id" = String, Path)), request_body = PairingRequest,
    responses((status = 200, body = PairingCode), (status = 404, body = super::error::ErrorBody),
              (status = 409, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody),
              (status = 502, body = super::error::ErrorBody)))]
pub async fn pairing_code(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
    super::extract::ApiJson(body): super::extract::ApiJson<PairingRequest>,
) -> ApiResult<Json<PairingCode>> {
    let phone = match zapgate_domain::ChatId::parse(&body.phone) {
        Ok(chat @ zapgate_domain::ChatId::Phone(_)) => chat.e164().map(|e| e[1..].to_owned()),
        _ => None,
    }
    .ok_or_else(|| {
        ApiError::from(zapgate_domain::ValidationError::new("phone", "must be a phone number such as +5511999998888"))
    })?;
    let (rec, provider) = instance_and_provider(&s, &tenant, &id).await?;
    let code = call(provider.pairing_code(&rec.provider_config, &phone)).await?;
    Ok(Json(PairingCode { code }))
}

/// Logs the number out at the provider; a new QR scan links it again.
#[utoipa::path(post, path = "/v1/instances/{instance_id}/logout", tag = "instances", security(("tenant" = [])),
    params(("instance_id" = String, Path)),
    responses((status = 204), (status = 404, body = super::error::ErrorBody),
              (status = 409, body = super::error::ErrorBody), (status = 502, body = super::error::ErrorBody)))]
pub async fn logout(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let (rec, provider) = instance_and_provider(&s, &tenant, &id).await?;
    call(provider.logout(&rec.provider_config)).await?;
    // Stored at once, so the connection watch does not take the closed
    // session for a dropped one and ask it to reconnect.
    let item = zapgate_backends::InboundItem {
        tenant_id: rec.tenant_id.clone(),
        instance_id: rec.id.clone(),
        event: zapgate_backends::InboundEvent::Connection {
            state: zapgate_domain::InstanceState::LoggedOut,
            reason: Some("logged_out".into()),
            policy: s.config.flap_policy(),
            qr: None,
        },
    };
    s.backends.inbox.ingest(vec![item], zapgate_domain::Timestamp::now()).await?;
    Ok(StatusCode::NO_CONTENT)
}
