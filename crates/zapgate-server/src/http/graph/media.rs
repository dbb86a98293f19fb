//! `POST /{phone_number_id}/media` (multipart upload), `GET /{media_id}`
//! (where to download it) and `DELETE /{media_id}`, over the native media
//! store. Media ids are digit strings: some clients refuse anything else.

use super::{GraphError, GraphResult, instance};
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::media::{forget, public_link, record, store_upload, too_large};
use axum::Json;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use zapgate_backends::{MediaRecord, MediaStatus};
use zapgate_domain::{MediaId, TenantId, ValidationError};

pub(super) async fn upload(
    s: &AppState,
    tenant: TenantId,
    phone_number_id: &str,
    req: Request,
) -> GraphResult<Response> {
    instance(s, &tenant, phone_number_id, false).await?;
    // `messaging_product` and `type` may come as query parameters only.
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect();
    let mut multipart = Multipart::from_request(req, s).await.map_err(|e| {
        ApiError::bad_request("invalid_multipart", format!("send the file as multipart/form-data: {}", e.body_text()))
    })?;
    let max = s.config.media_max_bytes;
    let (mut file, mut declared) = (None, query.iter().find(|(k, _)| k == "type").map(|(_, v)| v.clone()));
    let bad_part = |e: axum::extract::multipart::MultipartError| {
        ApiError::bad_request("invalid_multipart", format!("the multipart body is malformed: {}", e.body_text()))
    };
    while let Some(mut field) = multipart.next_field().await.map_err(bad_part)? {
        match field.name() {
            Some("file") => {
                let mime = field.content_type().map(str::to_owned);
                let name = field.file_name().map(str::to_owned);
                let mut bytes = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(bad_part)? {
                    if (bytes.len() + chunk.len()) as u64 > max {
                        return Err(too_large(max).into());
                    }
                    bytes.extend_from_slice(&chunk);
                }
                file = Some((bytes, mime, name));
            }
            Some("type") => {
                let mut text = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(bad_part)? {
                    text.extend_from_slice(&chunk);
                    if text.len() > 255 {
                        return Err(ValidationError::new("type", "is not a MIME type").into());
                    }
                }
                declared = Some(String::from_utf8_lossy(&text).into_owned());
            }
            // `messaging_product` and anything else: nothing to keep.
            _ => {}
        }
    }
    let (bytes, part_mime, filename) = file.ok_or_else(|| ValidationError::new("file", "is required"))?;
    let is_mime = |m: &String| m.contains('/') && !m.starts_with("multipart/");
    let mime = declared
        .filter(is_mime)
        .or(part_mime.filter(is_mime).filter(|m| m != "application/octet-stream"))
        .map(|m| m.split(';').next().unwrap_or(&m).trim().to_ascii_lowercase())
        .ok_or_else(|| ValidationError::new("type", "is required: the file's MIME type (e.g. image/jpeg)"))?;
    let rec = store_upload(s, tenant, bytes, mime, filename).await?;
    Ok(Json(json!({"id": rec.id.to_graph()})).into_response())
}

/// A media id as the facade gives it (digits) or zapgate's own (`med_…`).
async fn find(s: &AppState, tenant: &TenantId, raw: &str) -> GraphResult<MediaRecord> {
    let id = MediaId::from_graph(raw).map(|m| m.to_string()).unwrap_or_else(|| raw.to_owned());
    Ok(record(s, tenant, &id).await?)
}

/// `{"messaging_product","url","mime_type","sha256","file_size","id"}`: the
/// `url` is zapgate's media link (downloadable with or without the token).
pub(super) async fn info(s: &AppState, tenant: &TenantId, raw: &str) -> GraphResult<Response> {
    let rec = find(s, tenant, raw).await?;
    if rec.status != MediaStatus::Stored {
        let (status, code) = match rec.status {
            MediaStatus::Pending => (StatusCode::CONFLICT, "media_pending"),
            _ => (StatusCode::GONE, "media_failed"),
        };
        let why = format!("the media is {}; only stored media can be downloaded", rec.status.as_str());
        return Err(GraphError(ApiError::new(status, code, why).with_retry_after(std::time::Duration::from_secs(1))));
    }
    let url = public_link(s.ingest.base_url(), &rec)
        .ok_or_else(|| ApiError::new(StatusCode::GONE, "media_failed", "the media has no checksum to link it by"))?;
    Ok(Json(json!({
        "messaging_product": "whatsapp",
        "url": url,
        "mime_type": rec.mime_type.as_deref().unwrap_or("application/octet-stream"),
        "sha256": rec.sha256,
        "file_size": rec.size,
        "id": rec.id.to_graph(),
    }))
    .into_response())
}

pub(super) async fn delete(s: &AppState, tenant: &TenantId, raw: &str) -> GraphResult<Response> {
    let rec = find(s, tenant, raw).await?;
    forget(s, &rec).await?;
    Ok(Json(json!({"success": true})).into_response())
}
