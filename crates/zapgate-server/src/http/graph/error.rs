//! Errors in the Graph API shape, `{"error":{"message","type","code",
//! "error_subcode","error_data","fbtrace_id"}}`, with the codes Cloud API
//! clients branch on. Every facade failure is an [`ApiError`] first (one
//! mapping from failures to statuses); only its rendering differs.

use crate::http::error::ApiError;
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use serde_json::json;
use zapgate_backends::StoreError;
use zapgate_domain::ValidationError;

#[derive(Debug)]
pub struct GraphError(pub ApiError);

impl From<ApiError> for GraphError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl From<StoreError> for GraphError {
    fn from(e: StoreError) -> Self {
        Self(e.into())
    }
}

impl From<ValidationError> for GraphError {
    fn from(e: ValidationError) -> Self {
        Self(e.into())
    }
}

pub type GraphResult<T> = Result<T, GraphError>;

/// Meta's code, subcode and error type for a zapgate failure.
fn meta_code(e: &ApiError) -> (u32, u32, &'static str) {
    match (e.status, e.code) {
        (StatusCode::UNAUTHORIZED, _) => (190, 0, "OAuthException"),
        (StatusCode::FORBIDDEN, _) => (10, 0, "OAuthException"),
        (_, "route_not_found" | "method_not_allowed") => (2500, 0, "OAuthException"),
        // "Unsupported post request. Object with ID … does not exist".
        (StatusCode::NOT_FOUND, _) | (_, "unknown_instance" | "unknown_media") => (100, 33, "GraphMethodException"),
        (StatusCode::TOO_MANY_REQUESTS, _) => (130429, 0, "OAuthException"),
        (StatusCode::SERVICE_UNAVAILABLE, _) => (131016, 0, "OAuthException"),
        (s, _) if s.is_server_error() => (131000, 0, "OAuthException"),
        _ => (100, 0, "OAuthException"),
    }
}

/// What Meta calls a trace id; here only a handle to find the log line.
fn trace_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..23).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

impl IntoResponse for GraphError {
    fn into_response(self) -> Response {
        let e = self.0;
        let (code, subcode, kind) = meta_code(&e);
        let fbtrace_id = trace_id();
        tracing::debug!(%fbtrace_id, code = e.code, status = %e.status, message = %e.message, "graph facade error");
        // Meta answers parameter errors with 400; 422 is zapgate's own.
        let status = if e.status == StatusCode::UNPROCESSABLE_ENTITY { StatusCode::BAD_REQUEST } else { e.status };
        let mut details = json!({"messaging_product": "whatsapp", "details": e.message, "zapgate_code": e.code});
        if let Some(field) = e.details.as_ref().and_then(|d| d.get("field")) {
            details["field"] = field.clone();
        }
        let body = json!({"error": {
            "message": format!("(#{code}) {}", e.message),
            "type": kind,
            "code": code,
            "error_subcode": subcode,
            "error_data": details,
            "fbtrace_id": fbtrace_id,
        }});
        let mut res = (status, Json(body)).into_response();
        if let Some(d) = e.retry_after {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(d.as_secs().max(1)));
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn render(e: ApiError) -> (StatusCode, serde_json::Value) {
        let res = GraphError(e).into_response();
        let status = res.status();
        let body = axum::body::to_bytes(res.into_body(), 1 << 16).await.unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn failures_get_the_codes_clients_expect() {
        let (status, body) = render(ApiError::unauthorized("unknown or revoked token")).await;
        assert_eq!((status, body["error"]["code"].as_u64()), (StatusCode::UNAUTHORIZED, Some(190)));
        let (status, body) = render(ValidationError::new("to", "not a phone number").into()).await;
        assert_eq!((status, body["error"]["code"].as_u64()), (StatusCode::BAD_REQUEST, Some(100)));
        assert_eq!(body["error"]["error_data"]["field"], "to");
        let (_, body) = render(ApiError::not_found("media")).await;
        assert_eq!((body["error"]["code"].as_u64(), body["error"]["error_subcode"].as_u64()), (Some(100), Some(33)));
        let (status, body) = render(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "slow down")).await;
        assert_eq!((status, body["error"]["code"].as_u64()), (StatusCode::TOO_MANY_REQUESTS, Some(130429)));
        let e = &body["error"];
        for field in ["message", "type", "code", "error_subcode", "fbtrace_id"] {
            assert!(!e[field].is_null(), "{field} missing in {e}");
        }
        assert!(e["message"].as_str().unwrap().starts_with("(#130429) "));
    }
}
