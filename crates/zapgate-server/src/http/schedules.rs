//! Recurring schedules: a cron expression in a time zone sends a tenant
//! template to an audience, optionally only to the members whose date
//! (`date_field`) is a given number of days away (`offsets_days`).

use super::AppState;
use super::audiences::{audience_id, owned_audience};
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, TenantAuth};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use zapgate_backends::{ScheduleRecord, ScheduleRun};
use zapgate_domain::schedule::{CronSchedule, check_offsets};
use zapgate_domain::{Priority, ScheduleId, Timestamp, ValidationError};

/// How many upcoming runs a schedule shows.
const NEXT_RUNS: usize = 5;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSchedule {
    /// 1–100 characters.
    pub name: String,
    /// The instance (WhatsApp number) the messages go out from.
    pub instance_id: String,
    pub audience_id: String,
    /// A tenant template; each member's variables fill it.
    pub template_id: String,
    /// Cron expression: 5 fields (`0 9 * * *`: daily at 09:00), or 6 with seconds first.
    pub cron: String,
    /// IANA time zone of the expression and of members' dates (default `UTC`).
    pub time_zone: Option<String>,
    /// A member variable holding a date (`2026-12-10` or `10/12/2026`).
    pub date_field: Option<String>,
    /// Days from `date_field` a member is sent to (default `[0]`: on the day; `-3`: three days before).
    pub offsets_days: Option<Vec<i32>>,
    /// `high`, `normal` (default) or `low`.
    pub priority: Option<Priority>,
    /// Default `true`.
    pub enabled: Option<bool>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSchedule {
    /// Pause (`false`) or resume (`true`); runs missed while paused are not caught up.
    pub enabled: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ScheduleDetail {
    #[serde(flatten)]
    pub schedule: ScheduleRecord,
    /// The next runs (up to five), in UTC.
    pub next_runs: Vec<Timestamp>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ScheduleList {
    pub data: Vec<ScheduleDetail>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RunList {
    pub data: Vec<ScheduleRun>,
}

fn schedule_id(raw: &str) -> ApiResult<ScheduleId> {
    ScheduleId::parse(raw).ok_or_else(|| ApiError::not_found("schedule"))
}

fn detail(schedule: ScheduleRecord) -> ScheduleDetail {
    let next_runs = match (schedule.enabled, schedule.next_run_at) {
        (true, Some(next)) => CronSchedule::parse(&schedule.cron, &schedule.time_zone)
            .map(|c| std::iter::once(next).chain(c.next_runs(next, NEXT_RUNS - 1)).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    ScheduleDetail { schedule, next_runs }
}

/// Creates a schedule; everything it names is checked now.
#[utoipa::path(post, path = "/v1/schedules", tag = "schedules", security(("tenant" = [])), request_body = CreateSchedule,
    responses((status = 201, body = ScheduleDetail), (status = 422, body = super::error::ErrorBody)))]
pub async fn create(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    ApiJson(body): ApiJson<CreateSchedule>,
) -> ApiResult<(StatusCode, Json<ScheduleDetail>)> {
    let name = super::display_name("name", &body.name)?;
    let time_zone = body.time_zone.unwrap_or_else(|| "UTC".into());
    let cron = CronSchedule::parse(&body.cron, &time_zone)?;
    let date_field = body.date_field.map(|f| f.trim().to_owned());
    if date_field.as_ref().is_some_and(|f| f.is_empty() || f.len() > 64 || f.chars().any(char::is_control)) {
        return Err(
            ValidationError::new("date_field", "must be 1 to 64 characters, none of them control characters").into()
        );
    }
    let offsets_days = match (&date_field, body.offsets_days) {
        (None, Some(_)) => return Err(ValidationError::new("offsets_days", "only goes with date_field").into()),
        (None, None) => Vec::new(),
        (Some(_), None) => vec![0],
        (Some(_), Some(o)) if o.is_empty() => {
            return Err(ValidationError::new("offsets_days", "must name at least one offset").into());
        }
        (Some(_), Some(o)) => o,
    };
    check_offsets(&offsets_days)?;
    let instance_id = super::instances::owned_instance(&s, &tenant, &body.instance_id, "instance_id").await?;
    let unknown = |field: &str, what: &str| ValidationError::new(field, format!("no such {what} for this tenant"));
    let audience = audience_id(&body.audience_id).map_err(|_| unknown("audience_id", "audience"))?;
    let audience = owned_audience(&s, &tenant, audience).await.map_err(|_| unknown("audience_id", "audience"))?;
    let template_id = super::templates::sendable(&s, &tenant, &body.template_id, &instance_id).await?.id;
    let now = crate::worker::scheduler::Clock::from_env().now();
    let enabled = body.enabled.unwrap_or(true);
    let rec = ScheduleRecord {
        id: ScheduleId::generate(),
        tenant_id: tenant,
        name,
        instance_id,
        audience_id: audience,
        template_id,
        cron: body.cron.trim().to_owned(),
        time_zone,
        date_field,
        offsets_days,
        priority: body.priority.unwrap_or_default(),
        enabled,
        next_run_at: if enabled { cron.next_after(now) } else { None },
        last_run_at: None,
        created_at: now,
        updated_at: now,
    };
    Ok((StatusCode::CREATED, Json(detail(s.backends.schedules.create_schedule(rec).await?))))
}

/// Lists the tenant's schedules with their next runs.
#[utoipa::path(get, path = "/v1/schedules", tag = "schedules", security(("tenant" = [])),
    responses((status = 200, body = ScheduleList)))]
pub async fn list(TenantAuth(tenant): TenantAuth, State(s): State<AppState>) -> ApiResult<Json<ScheduleList>> {
    let data = s.backends.schedules.list_schedules(&tenant).await?.into_iter().map(detail).collect();
    Ok(Json(ScheduleList { data }))
}

/// Gets one schedule with its next runs.
#[utoipa::path(get, path = "/v1/schedules/{schedule_id}", tag = "schedules", security(("tenant" = [])),
    params(("schedule_id" = String, Path)),
    responses((status = 200, body = ScheduleDetail), (status = 404, body = super::error::ErrorBody)))]
pub async fn get(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<ScheduleDetail>> {
    let found = s.backends.schedules.get_schedule(&tenant, &schedule_id(&id)?).await?;
    found.map(|r| Json(detail(r))).ok_or_else(|| ApiError::not_found("schedule"))
}

/// Pauses or resumes a schedule.
#[utoipa::path(patch, path = "/v1/schedules/{schedule_id}", tag = "schedules", security(("tenant" = [])),
    params(("schedule_id" = String, Path)), request_body = UpdateSchedule,
    responses((status = 200, body = ScheduleDetail), (status = 404, body = super::error::ErrorBody)))]
pub async fn update(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateSchedule>,
) -> ApiResult<Json<ScheduleDetail>> {
    let id = schedule_id(&id)?;
    let current =
        s.backends.schedules.get_schedule(&tenant, &id).await?.ok_or_else(|| ApiError::not_found("schedule"))?;
    let now = crate::worker::scheduler::Clock::from_env().now();
    let next = match body.enabled {
        true if current.enabled => current.next_run_at,
        true => CronSchedule::parse(&current.cron, &current.time_zone)?.next_after(now),
        false => None,
    };
    let updated = s.backends.schedules.set_schedule_enabled(&tenant, &id, body.enabled, next, now).await?;
    updated.map(|r| Json(detail(r))).ok_or_else(|| ApiError::not_found("schedule"))
}

/// Deletes a schedule and its run history.
#[utoipa::path(delete, path = "/v1/schedules/{schedule_id}", tag = "schedules", security(("tenant" = [])),
    params(("schedule_id" = String, Path)), responses((status = 204), (status = 404, body = super::error::ErrorBody)))]
pub async fn delete(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    if s.backends.schedules.delete_schedule(&tenant, &schedule_id(&id)?).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("schedule"))
    }
}

/// The schedule's latest runs (up to 100), newest first.
#[utoipa::path(get, path = "/v1/schedules/{schedule_id}/runs", tag = "schedules", security(("tenant" = [])),
    params(("schedule_id" = String, Path)),
    responses((status = 200, body = RunList), (status = 404, body = super::error::ErrorBody)))]
pub async fn runs(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<RunList>> {
    let id = schedule_id(&id)?;
    s.backends.schedules.get_schedule(&tenant, &id).await?.ok_or_else(|| ApiError::not_found("schedule"))?;
    Ok(Json(RunList { data: s.backends.schedules.list_runs(&id, 100).await? }))
}
