//! Tenants and their API tokens (super-admin only).

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{AdminAuth, ApiJson};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use zapgate_backends::{NewToken, TenantRecord, TokenRecord};
use zapgate_domain::{ApiToken, TenantId, TokenId};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// Display name, 1–200 characters.
    pub name: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TenantCreated {
    pub tenant: TenantRecord,
    pub token: TokenCreated,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TokenCreated {
    #[serde(flatten)]
    pub record: TokenRecord,
    /// The secret. Shown only in this response; store it now.
    pub token: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TenantList {
    pub data: Vec<TenantRecord>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TokenList {
    pub data: Vec<TokenRecord>,
}

/// Creates a tenant and its first API token.
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", security(("admin" = [])), request_body = CreateTenant,
    responses((status = 201, body = TenantCreated), (status = 401, body = super::error::ErrorBody),
              (status = 422, body = super::error::ErrorBody)))]
pub async fn create(
    _: AdminAuth,
    State(s): State<AppState>,
    ApiJson(body): ApiJson<CreateTenant>,
) -> ApiResult<(StatusCode, Json<TenantCreated>)> {
    let name = body.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(zapgate_domain::ValidationError::new("name", "must be 1 to 200 characters").into());
    }
    let (tenant, token) = create_tenant_with_token(&s.backends.store, name).await?;
    Ok((StatusCode::CREATED, Json(TenantCreated { tenant, token })))
}

/// Shared by the API and the CLI: a tenant is never created without a token.
pub async fn create_tenant_with_token(
    store: &std::sync::Arc<dyn zapgate_backends::Store>,
    name: String,
) -> Result<(TenantRecord, TokenCreated), zapgate_backends::StoreError> {
    let (secret, new) = new_token();
    let (tenant, record) = store.create_tenant(TenantId::generate(), name, new).await?;
    Ok((tenant, TokenCreated { record, token: secret.reveal().to_owned() }))
}

pub async fn issue_token(
    store: &std::sync::Arc<dyn zapgate_backends::Store>,
    tenant: &TenantId,
) -> Result<TokenCreated, zapgate_backends::StoreError> {
    let (secret, new) = new_token();
    let record = store.create_token(tenant, new).await?;
    Ok(TokenCreated { record, token: secret.reveal().to_owned() })
}

fn new_token() -> (ApiToken, NewToken) {
    let secret = ApiToken::generate();
    let new = NewToken { id: TokenId::generate(), hash: secret.hash(), hint: secret.hint() };
    (secret, new)
}

/// Lists tenants.
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants", security(("admin" = [])),
    responses((status = 200, body = TenantList)))]
pub async fn list(_: AdminAuth, State(s): State<AppState>) -> ApiResult<Json<TenantList>> {
    Ok(Json(TenantList { data: s.backends.store.list_tenants().await? }))
}

fn tenant_id(raw: &str) -> ApiResult<TenantId> {
    TenantId::parse(raw).ok_or_else(|| ApiError::not_found("tenant"))
}

/// Issues another API token for a tenant (e.g. to rotate).
#[utoipa::path(post, path = "/v1/tenants/{tenant_id}/tokens", tag = "tenants", security(("admin" = [])),
    params(("tenant_id" = String, Path)),
    responses((status = 201, body = TokenCreated), (status = 404, body = super::error::ErrorBody)))]
pub async fn create_token(
    _: AdminAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<TokenCreated>)> {
    let id = tenant_id(&id)?;
    match issue_token(&s.backends.store, &id).await {
        Ok(t) => Ok((StatusCode::CREATED, Json(t))),
        Err(zapgate_backends::StoreError::NotFound) => Err(ApiError::not_found("tenant")),
        Err(e) => Err(e.into()),
    }
}

/// Lists a tenant's tokens (hints only, never secrets).
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/tokens", tag = "tenants", security(("admin" = [])),
    params(("tenant_id" = String, Path)), responses((status = 200, body = TokenList)))]
pub async fn list_tokens(
    _: AdminAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<TokenList>> {
    let id = tenant_id(&id)?;
    if s.backends.store.get_tenant(&id).await?.is_none() {
        return Err(ApiError::not_found("tenant"));
    }
    Ok(Json(TokenList { data: s.backends.store.list_tokens(&id).await? }))
}

/// Revokes a token; it stops working immediately.
#[utoipa::path(delete, path = "/v1/tenants/{tenant_id}/tokens/{token_id}", tag = "tenants",
    security(("admin" = [])), params(("tenant_id" = String, Path), ("token_id" = String, Path)),
    responses((status = 204), (status = 404, body = super::error::ErrorBody)))]
pub async fn revoke_token(
    _: AdminAuth,
    State(s): State<AppState>,
    Path((tenant, token)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let tenant = tenant_id(&tenant)?;
    let token = TokenId::parse(&token).ok_or_else(|| ApiError::not_found("token"))?;
    if s.backends.store.revoke_token(&tenant, &token).await? {
        s.tokens.clear();
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("token"))
    }
}
