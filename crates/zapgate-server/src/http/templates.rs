//! Tenant message templates (`Olá {{name}}, …`), used by sends that give
//! `template_id` and `variables` instead of a message body.

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, TenantAuth};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use zapgate_backends::{TemplateKind, TemplateRecord};
use zapgate_domain::template::{CloudTemplate, TextTemplate};
use zapgate_domain::{InstanceId, TemplateId, TenantId, Timestamp, ValidationError};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTemplate {
    /// Unique per tenant, 1–100 characters.
    pub name: String,
    /// Text with `{{variables}}` (lower-case letters, digits, `_`): sent as a text message.
    pub body: Option<String>,
    /// Instead of `body`: a Cloud API template approved at Meta (`name`, `language`,
    /// `components`), whose component texts may hold `{{variables}}`; sent as a template
    /// message (from Cloud API numbers).
    #[schema(value_type = Option<Object>)]
    pub cloud_template: Option<Value>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TemplateList {
    pub data: Vec<TemplateRecord>,
}

fn template_id(raw: &str) -> ApiResult<TemplateId> {
    TemplateId::parse(raw).ok_or_else(|| ApiError::not_found("template"))
}

/// Creates a template; the body is checked now, not at send time.
#[utoipa::path(post, path = "/v1/templates", tag = "templates", security(("tenant" = [])), request_body = CreateTemplate,
    responses((status = 201, body = TemplateRecord), (status = 409, body = super::error::ErrorBody),
              (status = 422, body = super::error::ErrorBody)))]
pub async fn create(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    ApiJson(body): ApiJson<CreateTemplate>,
) -> ApiResult<(StatusCode, Json<TemplateRecord>)> {
    let name = body.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ValidationError::new("name", "must be 1 to 100 characters").into());
    }
    let (kind, text, cloud_template, variables) = match (body.body, body.cloud_template) {
        (Some(text), None) => {
            let variables = TextTemplate::parse(&text)?.variables();
            (TemplateKind::Text, text, None, variables)
        }
        (None, Some(cloud)) => {
            let variables = CloudTemplate::parse(&cloud)?.variables();
            (TemplateKind::Cloud, String::new(), Some(cloud), variables)
        }
        _ => return Err(ValidationError::new("body", "give either body (text) or cloud_template").into()),
    };
    let rec = TemplateRecord {
        id: TemplateId::generate(),
        tenant_id: tenant,
        name,
        kind,
        body: text,
        cloud_template,
        variables,
        created_at: Timestamp::now(),
    };
    Ok((StatusCode::CREATED, Json(s.backends.store.create_template(rec).await?)))
}

/// Lists the tenant's templates.
#[utoipa::path(get, path = "/v1/templates", tag = "templates", security(("tenant" = [])),
    responses((status = 200, body = TemplateList)))]
pub async fn list(TenantAuth(tenant): TenantAuth, State(s): State<AppState>) -> ApiResult<Json<TemplateList>> {
    Ok(Json(TemplateList { data: s.backends.store.list_templates(&tenant).await? }))
}

/// Gets one template.
#[utoipa::path(get, path = "/v1/templates/{template_id}", tag = "templates", security(("tenant" = [])),
    params(("template_id" = String, Path)),
    responses((status = 200, body = TemplateRecord), (status = 404, body = super::error::ErrorBody)))]
pub async fn get(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<TemplateRecord>> {
    let id = template_id(&id)?;
    s.backends.store.get_template(&tenant, &id).await?.map(Json).ok_or_else(|| ApiError::not_found("template"))
}

/// Deletes a template (messages already accepted are not affected).
#[utoipa::path(delete, path = "/v1/templates/{template_id}", tag = "templates", security(("tenant" = [])),
    params(("template_id" = String, Path)), responses((status = 204), (status = 404, body = super::error::ErrorBody)))]
pub async fn delete(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = template_id(&id)?;
    if s.backends.store.delete_template(&tenant, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("template"))
    }
}

/// The tenant's template `raw`, if `instance` can send it: a Cloud API
/// template goes out only from a Cloud API number (elsewhere every message
/// of a schedule or campaign would fail at the provider).
pub async fn sendable(s: &AppState, tenant: &TenantId, raw: &str, instance: &InstanceId) -> ApiResult<TemplateRecord> {
    let unknown = || ValidationError::new("template_id", "no such template for this tenant");
    let id = TemplateId::parse(raw).ok_or_else(unknown)?;
    let template = s.backends.store.get_template(tenant, &id).await?.ok_or_else(unknown)?;
    if template.kind == TemplateKind::Cloud {
        let instance = s.backends.store.get_instance(tenant, instance).await?;
        if instance.is_some_and(|i| i.provider != "cloud_api") {
            let m = "is a Cloud API template: the instance must be a Cloud API number";
            return Err(ValidationError::new("template_id", m).into());
        }
    }
    Ok(template)
}

/// A send naming `template_id` (+ `variables`) becomes the message the
/// template renders (text, or a Cloud API template); any other send is left
/// as it is.
pub async fn expand(s: &AppState, tenant: &TenantId, body: &mut Map<String, Value>) -> ApiResult<()> {
    let Some(raw) = body.remove("template_id") else {
        if body.contains_key("variables") {
            return Err(ValidationError::new("variables", "only goes with template_id").into());
        }
        return Ok(());
    };
    if body.contains_key("type") {
        return Err(ValidationError::new("template_id", "give either template_id or a message type, not both").into());
    }
    let id = raw
        .as_str()
        .and_then(TemplateId::parse)
        .ok_or_else(|| ValidationError::new("template_id", "is not a template id"))?;
    let values: BTreeMap<String, String> = match body.remove("variables") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(v) => serde_json::from_value(v)
            .map_err(|_| ValidationError::new("variables", "must be an object of strings, e.g. {\"name\": \"Ana\"}"))?,
    };
    let template = s
        .backends
        .store
        .get_template(tenant, &id)
        .await?
        .ok_or_else(|| ValidationError::new("template_id", "no such template for this tenant"))?;
    let content = template.compile()?.render(&values)?;
    if let Ok(Value::Object(fields)) = serde_json::to_value(&content) {
        body.extend(fields);
    }
    Ok(())
}
