//! Dead letters: messages that used up their attempts, listable and replayable.

use super::error::{ApiError, ApiResult};
use super::extract::{ApiQuery, TenantAuth};
use super::messages::{MessageAccepted, MessageList, list_page, message_id};
use super::{AppState, PageParams};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use zapgate_backends::MessageFilter;
use zapgate_domain::{MessageStatus, Timestamp};

/// Lists dead-lettered messages, newest first.
#[utoipa::path(get, path = "/v1/dead-letters", tag = "dead letters", security(("tenant" = [])), params(PageParams),
    responses((status = 200, body = MessageList)))]
pub async fn list(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<PageParams>,
) -> ApiResult<Json<MessageList>> {
    let before = q.before(zapgate_domain::MessageId::parse)?;
    let f = MessageFilter { status: Some(MessageStatus::Dead), before, limit: q.limit()?, ..Default::default() };
    Ok(Json(list_page(&s, &tenant, f).await?))
}

/// Puts a dead letter back in the queue with its attempts reset.
#[utoipa::path(post, path = "/v1/dead-letters/{message_id}/replay", tag = "dead letters", security(("tenant" = [])),
    params(("message_id" = String, Path)),
    responses((status = 202, body = MessageAccepted), (status = 404, body = super::error::ErrorBody),
              (status = 409, body = super::error::ErrorBody)))]
pub async fn replay(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<MessageAccepted>)> {
    let id = message_id(&id)?;
    let msg = s.backends.store.get_message(&tenant, &id).await?.ok_or_else(|| ApiError::not_found("message"))?;
    let (store, work, instance) = (s.backends.store.clone(), s.work.clone(), msg.instance_id.clone());
    let (t, i) = (tenant.clone(), id.clone());
    let replayed = super::detached(async move {
        let replayed = store.replay_dead(&t, &i, Timestamp::now()).await;
        if let Ok(true) = replayed {
            work.mark(instance);
        }
        replayed
    })
    .await??;
    if !replayed {
        let (code, message) = if msg.status == MessageStatus::Dead {
            ("instance_deleted", "the message's instance was deleted; it cannot be sent".to_owned())
        } else {
            ("not_a_dead_letter", format!("the message is {}, not dead", msg.status))
        };
        return Err(ApiError::new(StatusCode::CONFLICT, code, message));
    }
    Ok((StatusCode::ACCEPTED, Json(MessageAccepted { id, status: MessageStatus::Queued })))
}
