//! The API's one error shape, `{"error":{"code","message","details"}}`, and
//! the one mapping from failures to HTTP status codes.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::time::Duration;
use zapgate_backends::StoreError;
use zapgate_domain::ValidationError;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `validation_failed`.
    pub code: &'static str,
    /// What went wrong, for humans.
    pub message: String,
    /// Structured context (e.g. the offending `field`), when there is any.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<serde_json::Value>,
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), details: None, retry_after: None }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn with_retry_after(mut self, d: Duration) -> Self {
        self.retry_after = Some(d);
        self
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn validation(e: ValidationError) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", e.to_string())
            .with_details(serde_json::json!({ "field": e.field }))
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        Self::validation(e)
    }
}

/// A provider's answer to an instance call (create, QR, logout, …): its
/// refusals are 409 with its code, its outages 502.
impl From<zapgate_providers::ProviderError> for ApiError {
    fn from(e: zapgate_providers::ProviderError) -> Self {
        use zapgate_providers::ProviderError as P;
        match e {
            P::Rejected { code, message } => {
                let api_code = match code.as_str() {
                    "not_waiting_for_qr" => "not_waiting_for_qr",
                    "no_qr" => "no_qr",
                    _ => "provider_rejected",
                };
                Self::new(StatusCode::CONFLICT, api_code, message)
                    .with_details(serde_json::json!({ "provider_code": code }))
            }
            other => Self::new(StatusCode::BAD_GATEWAY, "provider_unavailable", other.to_string())
                .with_retry_after(Duration::from_secs(5)),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::not_found("resource"),
            StoreError::Conflict(m) => Self::new(StatusCode::CONFLICT, "conflict", m),
            StoreError::NoCapacity(m) => Self::new(StatusCode::CONFLICT, "no_provider_capacity", m),
            StoreError::Closed => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "zapgate is shutting down")
                    .with_retry_after(Duration::from_secs(5))
            }
            other => {
                // Log the cause; never send database internals to a client.
                tracing::error!(error = %other, "store failure while serving a request");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the store could not complete the request",
                )
                .with_retry_after(Duration::from_secs(1))
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code, message: self.message, details: self.details } };
        let mut res = (self.status, Json(body)).into_response();
        if let Some(d) = self.retry_after {
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        res
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
