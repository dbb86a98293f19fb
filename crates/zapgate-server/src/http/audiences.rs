//! Audiences: a tenant's recipients with their variables (`name`,
//! `amount`, `due_date`, …), which recurring schedules send to.

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery, TenantAuth};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use zapgate_backends::{AudienceDeletion, AudienceMember, AudienceRecord};
use zapgate_domain::{AudienceId, ChatId, TenantId, Timestamp, ValidationError};

/// The most members one request may add or change.
pub const MAX_MEMBERS_PER_REQUEST: usize = 10_000;
/// Limits of one member's variables.
const MAX_VARIABLES: usize = 64;
const MAX_VALUE_CHARS: usize = 1024;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAudience {
    /// 1–100 characters.
    pub name: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AudienceList {
    pub data: Vec<AudienceRecord>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMembers {
    /// Up to 10 000 members: `{"to": "+5511…", "variables": {"name": "Ana", "due_date": "2026-12-10"}}`.
    /// A recipient already in the audience gets the new variables.
    #[schema(value_type = Vec<Object>)]
    pub members: Vec<Value>,
}

/// One member refused, by its index in the request.
#[derive(Serialize, utoipa::ToSchema)]
pub struct InvalidRow {
    pub index: usize,
    pub field: String,
    pub message: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MembersAdded {
    /// Members added or changed.
    pub upserted: u64,
    /// Members refused (the others are stored).
    pub invalid: Vec<InvalidRow>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MemberPage {
    pub data: Vec<AudienceMember>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

pub(super) fn audience_id(raw: &str) -> ApiResult<AudienceId> {
    AudienceId::parse(raw).ok_or_else(|| ApiError::not_found("audience"))
}

/// The audience, if the tenant has it (a membership check: no member count).
pub(super) async fn owned_audience(s: &AppState, tenant: &TenantId, id: AudienceId) -> ApiResult<AudienceId> {
    if s.backends.schedules.audience_owned(tenant, &id).await? { Ok(id) } else { Err(ApiError::not_found("audience")) }
}

/// Creates an empty audience.
#[utoipa::path(post, path = "/v1/audiences", tag = "schedules", security(("tenant" = [])), request_body = CreateAudience,
    responses((status = 201, body = AudienceRecord), (status = 422, body = super::error::ErrorBody)))]
pub async fn create(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    ApiJson(body): ApiJson<CreateAudience>,
) -> ApiResult<(StatusCode, Json<AudienceRecord>)> {
    let name = super::display_name("name", &body.name)?;
    let now = Timestamp::now();
    let rec = AudienceRecord {
        id: AudienceId::generate(),
        tenant_id: tenant,
        name,
        members: 0,
        created_at: now,
        updated_at: now,
    };
    Ok((StatusCode::CREATED, Json(s.backends.schedules.create_audience(rec).await?)))
}

/// Lists the tenant's audiences with their sizes.
#[utoipa::path(get, path = "/v1/audiences", tag = "schedules", security(("tenant" = [])),
    responses((status = 200, body = AudienceList)))]
pub async fn list(TenantAuth(tenant): TenantAuth, State(s): State<AppState>) -> ApiResult<Json<AudienceList>> {
    Ok(Json(AudienceList { data: s.backends.schedules.list_audiences(&tenant).await? }))
}

/// Gets one audience.
#[utoipa::path(get, path = "/v1/audiences/{audience_id}", tag = "schedules", security(("tenant" = [])),
    params(("audience_id" = String, Path)),
    responses((status = 200, body = AudienceRecord), (status = 404, body = super::error::ErrorBody)))]
pub async fn get(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<AudienceRecord>> {
    let found = s.backends.schedules.get_audience(&tenant, &audience_id(&id)?).await?;
    found.map(Json).ok_or_else(|| ApiError::not_found("audience"))
}

/// Deletes an audience and its members; refused (409) while a schedule sends to it.
#[utoipa::path(delete, path = "/v1/audiences/{audience_id}", tag = "schedules", security(("tenant" = [])),
    params(("audience_id" = String, Path)),
    responses((status = 204), (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
pub async fn delete(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    match s.backends.schedules.delete_audience(&tenant, &audience_id(&id)?).await? {
        AudienceDeletion::Deleted => Ok(StatusCode::NO_CONTENT),
        AudienceDeletion::NotFound => Err(ApiError::not_found("audience")),
        AudienceDeletion::InUse => Err(ApiError::new(
            StatusCode::CONFLICT,
            "audience_in_use",
            "a schedule sends to this audience: delete the schedule first",
        )),
    }
}

/// Adds members or replaces their variables. Each row is checked on its
/// own: invalid rows are listed by index and the rest are stored.
#[utoipa::path(post, path = "/v1/audiences/{audience_id}/members", tag = "schedules", security(("tenant" = [])),
    params(("audience_id" = String, Path)), request_body = AddMembers,
    responses((status = 200, body = MembersAdded), (status = 404, body = super::error::ErrorBody),
              (status = 422, body = super::error::ErrorBody)))]
pub async fn add_members(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<AddMembers>,
) -> ApiResult<Json<MembersAdded>> {
    let audience = owned_audience(&s, &tenant, audience_id(&id)?).await?;
    if body.members.len() > MAX_MEMBERS_PER_REQUEST {
        return Err(ValidationError::new(
            "members",
            format!("at most {MAX_MEMBERS_PER_REQUEST} per request (send the rest in further requests)"),
        )
        .into());
    }
    let mut invalid = Vec::new();
    // A recipient named twice keeps its last row, as two requests would.
    let mut rows: HashMap<ChatId, BTreeMap<String, String>> = HashMap::new();
    for (index, raw) in body.members.into_iter().enumerate() {
        match parse_member(raw) {
            Ok(m) => {
                rows.insert(m.to, m.variables);
            }
            Err(e) => invalid.push(InvalidRow { index, field: e.field, message: e.message }),
        }
    }
    let members: Vec<AudienceMember> =
        rows.into_iter().map(|(to, variables)| AudienceMember { to, variables }).collect();
    let upserted = if members.is_empty() {
        0
    } else {
        s.backends.schedules.upsert_members(&audience, members, Timestamp::now()).await?
    };
    Ok(Json(MembersAdded { upserted, invalid }))
}

/// One member row: `to` (any phone spelling, a group or a LID) and
/// `variables` (an object of strings; numbers are taken as their text).
pub fn parse_member(raw: Value) -> Result<AudienceMember, ValidationError> {
    let Value::Object(mut o) = raw else {
        return Err(ValidationError::new("", "must be an object with to and variables"));
    };
    let to = match o.remove("to") {
        Some(Value::String(s)) => ChatId::parse(&s)?,
        Some(_) => return Err(ValidationError::new("to", "must be a string")),
        None => return Err(ValidationError::new("to", "is required")),
    };
    let variables = match o.remove("variables") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(vars)) => variables(vars)?,
        Some(_) => return Err(ValidationError::new("variables", "must be an object of strings")),
    };
    if let Some(k) = o.keys().next() {
        return Err(ValidationError::new(k.clone(), "is not a member field (to, variables)"));
    }
    Ok(AudienceMember { to, variables })
}

fn variables(vars: serde_json::Map<String, Value>) -> Result<BTreeMap<String, String>, ValidationError> {
    if vars.len() > MAX_VARIABLES {
        return Err(ValidationError::new("variables", format!("at most {MAX_VARIABLES} variables")));
    }
    let mut out = BTreeMap::new();
    for (k, v) in vars {
        // The name goes into error fields (and stored rejects): only a sane one.
        if k.is_empty() || k.len() > 64 || k.chars().any(char::is_control) {
            let m = format!("{k:?} is not a variable name (1 to 64 characters, no control characters)");
            return Err(ValidationError::new("variables", m));
        }
        let field = format!("variables.{k}");
        let text = match v {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => return Err(ValidationError::new(field, "must be a string")),
        };
        if text.contains('\0') {
            return Err(ValidationError::new(field, "must not contain NUL characters"));
        }
        if text.chars().count() > MAX_VALUE_CHARS {
            return Err(ValidationError::new(field, format!("must be at most {MAX_VALUE_CHARS} characters")));
        }
        out.insert(k, text);
    }
    Ok(out)
}

/// Lists members in recipient order.
#[utoipa::path(get, path = "/v1/audiences/{audience_id}/members", tag = "schedules", security(("tenant" = [])),
    params(("audience_id" = String, Path), super::LongPage),
    responses((status = 200, body = MemberPage), (status = 404, body = super::error::ErrorBody)))]
pub async fn list_members(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<super::LongPage>,
) -> ApiResult<Json<MemberPage>> {
    let audience = owned_audience(&s, &tenant, audience_id(&id)?).await?;
    let limit = q.limit()?;
    let data = s.backends.schedules.list_members(&audience, q.cursor, limit).await?;
    let next_cursor = (data.len() == limit as usize).then(|| data.last().map(|m| m.to.to_string())).flatten();
    Ok(Json(MemberPage { data, next_cursor }))
}

/// Removes one member (`to` in any spelling, URL-encoded).
#[utoipa::path(delete, path = "/v1/audiences/{audience_id}/members/{to}", tag = "schedules", security(("tenant" = [])),
    params(("audience_id" = String, Path), ("to" = String, Path)),
    responses((status = 204), (status = 404, body = super::error::ErrorBody)))]
pub async fn delete_member(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path((id, to)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let audience = owned_audience(&s, &tenant, audience_id(&id)?).await?;
    let to = ChatId::parse(&to).map_err(|_| ApiError::not_found("member"))?;
    if s.backends.schedules.delete_member(&audience, &to).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("member"))
    }
}
