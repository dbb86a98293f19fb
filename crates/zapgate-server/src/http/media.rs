//! Media: the attachments of inbound messages (fetched from the provider
//! right after receipt, named by `media_id` in the message's content) and
//! tenants' uploads, tenant-scoped.

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiQuery, TenantAuth};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::time::Duration;
use zapgate_backends::{MediaRecord, MediaStatus, NewMedia, NewMediaState};
use zapgate_domain::{MediaId, TenantId, Timestamp};

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// The file name to keep with it (shown when it is downloaded).
    pub filename: Option<String>,
}

/// Uploads media (the raw bytes as the body, with their `Content-Type`), up
/// to `ZAPGATE_MEDIA_MAX_BYTES`.
#[utoipa::path(post, path = "/v1/media", tag = "media", security(("tenant" = [])), params(UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = MediaRecord), (status = 400, body = super::error::ErrorBody),
              (status = 413, body = super::error::ErrorBody), (status = 415, body = super::error::ErrorBody)))]
pub async fn upload(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<MediaRecord>)> {
    let mime = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_ascii_lowercase())
        .filter(|m| m.contains('/') && !m.starts_with("multipart/"))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the file itself as the body, with its Content-Type (e.g. image/jpeg)",
            )
        })?;
    let max = s.config.media_max_bytes;
    let bytes =
        axum::body::to_bytes(body, usize::try_from(max).unwrap_or(usize::MAX)).await.map_err(|_| too_large(max))?;
    let rec = store_upload(&s, tenant, bytes.to_vec(), mime, q.filename).await?;
    Ok((StatusCode::CREATED, Json(rec)))
}

pub(super) fn too_large(max: u64) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", format!("media is limited to {max} bytes"))
}

fn store_unavailable() -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "media_store_unavailable", "the media store is unavailable")
        .with_retry_after(Duration::from_secs(5))
}

/// Keeps an upload (here or through the Cloud API facade): the bytes first,
/// then the record, so a record never names bytes that are not there.
pub(super) async fn store_upload(
    s: &AppState,
    tenant: TenantId,
    bytes: Vec<u8>,
    mime: String,
    filename: Option<String>,
) -> ApiResult<MediaRecord> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request("empty_body", "the file is empty"));
    }
    let filename = filename.map(|f| f.trim().to_owned()).filter(|f| !f.is_empty());
    if filename.as_ref().is_some_and(|f| f.len() > 255 || f.chars().any(char::is_control)) {
        return Err(ApiError::bad_request("invalid_query", "filename is not valid"));
    }
    let id = MediaId::generate();
    s.backends.media.put(id.as_str(), &bytes).await.map_err(|e| {
        tracing::error!(error = %e, "storing uploaded media failed");
        store_unavailable()
    })?;
    let new = NewMedia {
        id,
        tenant_id: tenant,
        instance_id: None,
        message_id: None,
        mime_type: Some(mime),
        filename,
        state: NewMediaState::Stored { size: bytes.len() as u64, sha256: hex::encode(Sha256::digest(&bytes)) },
    };
    Ok(s.backends.media_index.add_media(new, Timestamp::now()).await?)
}

/// Deletes media: its bytes, then its record (a record never names bytes
/// that are gone). Messages already sent with it are not affected.
#[utoipa::path(delete, path = "/v1/media/{media_id}", tag = "media", security(("tenant" = [])),
    params(("media_id" = String, Path)),
    responses((status = 204), (status = 404, body = super::error::ErrorBody)))]
pub async fn delete(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let rec = record(&s, &tenant, &id).await?;
    forget(&s, &rec).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn forget(s: &AppState, rec: &MediaRecord) -> ApiResult<()> {
    s.backends.media.delete(rec.id.as_str()).await.map_err(|e| {
        tracing::error!(media = %rec.id, error = %e, "deleting media failed");
        store_unavailable()
    })?;
    s.backends.media_index.forget_media(std::slice::from_ref(&rec.id)).await?;
    Ok(())
}

fn media_id(raw: &str) -> ApiResult<MediaId> {
    MediaId::parse(raw).ok_or_else(|| ApiError::not_found("media"))
}

pub(super) async fn record(s: &AppState, tenant: &TenantId, raw: &str) -> ApiResult<MediaRecord> {
    let id = media_id(raw)?;
    s.backends.media_index.get_media(tenant, &id).await?.ok_or_else(|| ApiError::not_found("media"))
}

/// What is known about a media object: status (`pending` until an inbound
/// attachment is fetched, `stored`, `failed` with `error`), type, size, SHA-256.
#[utoipa::path(get, path = "/v1/media/{media_id}/info", tag = "media", security(("tenant" = [])),
    params(("media_id" = String, Path)),
    responses((status = 200, body = MediaRecord), (status = 404, body = super::error::ErrorBody)))]
pub async fn info(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<MediaRecord>> {
    Ok(Json(record(&s, &tenant, &id).await?))
}

/// The media's bytes, with its `Content-Type` and `X-Media-Sha256`. 409 while
/// an inbound attachment is still being fetched (retry after
/// `Retry-After`); 410 when it could not be fetched or has been purged.
#[utoipa::path(get, path = "/v1/media/{media_id}", tag = "media", security(("tenant" = [])),
    params(("media_id" = String, Path)),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
              (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody),
              (status = 410, body = super::error::ErrorBody)))]
pub async fn download(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let rec = record(&s, &tenant, &id).await?;
    serve(&s, rec).await
}

/// The proof a fetch of `/media/{tenant}/{id}/{token}` comes from a link
/// zapgate gave out: the first 32 hex digits of the media's SHA-256, which
/// only whoever holds the bytes (the tenant, zapgate) can know. No secret to
/// share between processes, and nothing to store.
fn link_token(rec: &MediaRecord) -> Option<&str> {
    rec.sha256.as_deref().filter(|h| h.len() >= 32).map(|h| &h[..32])
}

/// A link a provider fetches stored media with, without credentials (the
/// worker gives it for messages that name media by `id`); under `base`, the
/// address providers reach zapgate at (`ZAPGATE_PUBLIC_URL`).
pub fn public_link(base: &str, rec: &MediaRecord) -> Option<String> {
    let token = link_token(rec)?;
    Some(format!("{}/media/{}/{}/{token}", base.trim_end_matches('/'), rec.tenant_id, rec.id))
}

/// `GET /media/{tenant_id}/{media_id}/{token}`: stored media for a provider
/// following a link from [`public_link`]. 404 for anything else, whatever
/// was wrong (no hint for guessing).
pub async fn public_download(
    State(s): State<AppState>,
    Path((tenant, id, token)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    let not_found = || ApiError::not_found("media");
    let tenant = TenantId::parse(&tenant).ok_or_else(not_found)?;
    let rec = record(&s, &tenant, &id).await?;
    let expected = link_token(&rec).ok_or_else(not_found)?;
    // Constant time: a timing difference must not reveal the token digit by digit.
    let same = zapgate_domain::token::constant_time_eq(expected.as_bytes(), token.as_bytes());
    if !same || rec.status != MediaStatus::Stored {
        return Err(not_found());
    }
    serve(&s, rec).await
}

pub(super) async fn serve(s: &AppState, rec: MediaRecord) -> ApiResult<Response> {
    match rec.status {
        MediaStatus::Pending => {
            return Err(ApiError::new(StatusCode::CONFLICT, "media_pending", "the media is still being fetched")
                .with_retry_after(Duration::from_secs(1)));
        }
        MediaStatus::Failed => {
            let why = rec.error.as_deref().unwrap_or("unknown error");
            return Err(ApiError::new(
                StatusCode::GONE,
                "media_failed",
                format!("the media could not be fetched: {why}"),
            ));
        }
        MediaStatus::Stored => {}
    }
    let bytes = s.backends.media.get(rec.id.as_str()).await.map_err(|e| {
        tracing::error!(media = %rec.id, error = %e, "reading media failed");
        store_unavailable()
    })?;
    let Some(bytes) = bytes else {
        return Err(ApiError::new(StatusCode::GONE, "media_gone", "the media has been purged"));
    };
    let mut res = bytes.into_response();
    let h = res.headers_mut();
    let mime = rec.mime_type.as_deref().unwrap_or("application/octet-stream");
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(mime).unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    if let Some(sha) = rec.sha256.as_deref().and_then(|s| HeaderValue::from_str(s).ok()) {
        h.insert("x-media-sha256", sha);
    }
    if let Some(name) = &rec.filename {
        let safe: String =
            name.chars().filter(|c| c.is_ascii_graphic() || *c == ' ').filter(|c| *c != '"' && *c != '\\').collect();
        if let Ok(v) = HeaderValue::from_str(&format!("inline; filename=\"{safe}\"")) {
            h.insert(header::CONTENT_DISPOSITION, v);
        }
    }
    Ok(res)
}
