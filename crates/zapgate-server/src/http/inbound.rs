//! Inbound messages: what arrived in the tenant's chats through provider
//! webhooks (each also raised a `message.received` event).

use super::error::{ApiError, ApiResult};
use super::extract::{ApiQuery, TenantAuth};
use super::messages::message_id;
use super::{AppState, PageParams};
use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use zapgate_backends::{InboundFilter, InboundRecord};
use zapgate_domain::{ChatId, InstanceId, MessageId};

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct InboundQuery {
    /// Only this instance's messages.
    pub instance_id: Option<String>,
    /// Only this chat's messages (a number, group or LID, in any spelling `to` accepts).
    pub chat: Option<String>,
    /// Opaque cursor from a previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// Page size, 1–500 (default 50).
    pub limit: Option<u32>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct InboundList {
    pub data: Vec<InboundRecord>,
    /// Pass as `cursor` to get the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Lists inbound messages, newest first.
#[utoipa::path(get, path = "/v1/inbound-messages", tag = "inbound", security(("tenant" = [])), params(InboundQuery),
    responses((status = 200, body = InboundList), (status = 400, body = super::error::ErrorBody)))]
pub async fn list(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<InboundQuery>,
) -> ApiResult<Json<InboundList>> {
    let page = PageParams { cursor: q.cursor.clone(), limit: q.limit };
    let bad = |what: &str| ApiError::bad_request("invalid_query", format!("{what} is not valid"));
    let filter = InboundFilter {
        instance_id: q
            .instance_id
            .as_deref()
            .map(|i| InstanceId::parse(i).ok_or_else(|| bad("instance_id")))
            .transpose()?,
        chat: q.chat.as_deref().map(|c| ChatId::parse(c).map(|c| c.key()).map_err(|_| bad("chat"))).transpose()?,
        before: page.before(MessageId::parse)?,
        limit: page.limit()?,
    };
    let data = s.backends.inbox.list_inbound(&tenant, &filter).await?;
    let next_cursor = super::next_cursor(&data, filter.limit, |m| m.id.to_string());
    Ok(Json(InboundList { data, next_cursor }))
}

/// Gets one inbound message.
#[utoipa::path(get, path = "/v1/inbound-messages/{message_id}", tag = "inbound", security(("tenant" = [])),
    params(("message_id" = String, Path)),
    responses((status = 200, body = InboundRecord), (status = 404, body = super::error::ErrorBody)))]
pub async fn get(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<InboundRecord>> {
    let id = message_id(&id)?;
    let found = s.backends.inbox.get_inbound(&tenant, &id).await?;
    Ok(Json(found.ok_or_else(|| ApiError::not_found("message"))?))
}

/// Marks a received message as read at the provider (the sender sees blue
/// ticks). 409 `no_mark_read` for kinds that cannot; 502 when the provider
/// cannot be reached.
#[utoipa::path(post, path = "/v1/inbound-messages/{message_id}/read", tag = "inbound", security(("tenant" = [])),
    params(("message_id" = String, Path)),
    responses((status = 204), (status = 404, body = super::error::ErrorBody),
              (status = 409, body = super::error::ErrorBody), (status = 502, body = super::error::ErrorBody)))]
pub async fn mark_read(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::http::StatusCode> {
    read(&s, &tenant, &message_id(&id)?).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// Marks the tenant's received message `id` read at its provider (also the
/// Cloud API facade's `status: "read"`).
pub(super) async fn read(s: &AppState, tenant: &zapgate_domain::TenantId, id: &MessageId) -> ApiResult<()> {
    let found = s.backends.inbox.get_inbound(tenant, id).await?.ok_or_else(|| ApiError::not_found("message"))?;
    let chat = ChatId::parse(&found.message.chat).map_err(|_| ApiError::not_found("message"))?;
    let (rec, provider) = super::sessions::instance_and_provider(s, tenant, found.instance_id.as_str()).await?;
    super::sessions::call(provider.mark_read(&rec.provider_config, &chat, &found.message.wa_message_id)).await?;
    Ok(())
}
