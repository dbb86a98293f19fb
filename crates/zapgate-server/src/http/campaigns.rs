//! Campaigns (broadcasts): a tenant template to a list of recipients.
//! Recipients come as CSV (streamed: parsed and stored in batches as the
//! body arrives, so a million rows never sit in memory) or JSON; each row
//! is checked on its own, duplicates are kept once, and bad rows are kept
//! with their reason. Once started, `worker/campaigns.rs` releases it.

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiQuery, TenantAuth};
use crate::csv_rows::CsvRows;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use zapgate_backends::{AudienceMember, CampaignRecord, CampaignState, ImportCounts, ImportRow, RejectedRow};
use zapgate_domain::template::TenantTemplate;
use zapgate_domain::{
    CampaignId, CampaignProgress, ChatId, Priority, TemplateId, TenantId, Timestamp, ValidationError,
};

/// Rows stored per batch while importing.
const IMPORT_BATCH: usize = 1000;
/// The largest CSV upload.
pub const MAX_CSV_BYTES: usize = 1 << 30;
/// Rejected rows shown in an upload's answer (all are kept: `GET …/rejects`).
const REJECTS_SHOWN: usize = 100;
/// Columns that name the recipient, in the order they are looked for.
const RECIPIENT_COLUMNS: [&str; 5] = ["to", "phone", "telefone", "whatsapp", "number"];

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCampaign {
    /// 1–100 characters.
    pub name: String,
    pub instance_id: String,
    /// A tenant template; each recipient's variables fill it.
    pub template_id: String,
    /// Default `low`, so one-off messages of the tenant overtake the campaign.
    pub priority: Option<Priority>,
    /// Messages per second, below the instance's rate (default: the instance's rate).
    pub rate_per_second: Option<u32>,
    /// Start releasing at this time (RFC 3339; default: when started).
    pub start_at: Option<Timestamp>,
    /// Recipients as JSON (up to 10 000; more as CSV through `…/recipients`).
    #[schema(value_type = Option<Vec<Object>>)]
    pub recipients: Option<Vec<Value>>,
    /// Start at once (default `false`: a draft that takes more recipients).
    pub start: Option<bool>,
}

/// A campaign with its progress.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CampaignDetail {
    #[serde(flatten)]
    pub campaign: CampaignRecord,
    /// `true` while running but before `start_at`.
    pub waiting_for_start: bool,
    pub progress: CampaignProgress,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CampaignList {
    pub data: Vec<CampaignRecord>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RecipientsAdded {
    /// Rows read (header excluded).
    pub rows: u64,
    #[serde(flatten)]
    pub counts: ImportCounts,
    /// The first refused rows (`row` is the row's number in this upload, header excluded).
    pub rejects: Vec<RejectedRow>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RejectPage {
    pub data: Vec<RejectedRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

fn campaign_id(raw: &str) -> ApiResult<CampaignId> {
    CampaignId::parse(raw).ok_or_else(|| ApiError::not_found("campaign"))
}

async fn owned(s: &AppState, tenant: &TenantId, raw: &str) -> ApiResult<CampaignRecord> {
    let id = campaign_id(raw)?;
    s.backends.campaigns.get_campaign(tenant, &id).await?.ok_or_else(|| ApiError::not_found("campaign"))
}

async fn template_of(s: &AppState, tenant: &TenantId, id: &TemplateId) -> ApiResult<TenantTemplate> {
    let t = s.backends.store.get_template(tenant, id).await?;
    let t = t.ok_or_else(|| ValidationError::new("template_id", "no such template for this tenant"))?;
    Ok(t.compile()?)
}

pub async fn detail(s: &AppState, campaign: CampaignRecord) -> ApiResult<CampaignDetail> {
    let statuses = s.backends.campaigns.campaign_statuses(&campaign.id).await?;
    let p = CampaignProgress::tally(campaign.total, campaign.released, &statuses);
    let waiting_for_start =
        campaign.state == CampaignState::Running && campaign.start_at.is_some_and(|t| t > Timestamp::now());
    Ok(CampaignDetail { campaign, waiting_for_start, progress: p })
}

/// Creates a campaign (a draft, unless `start` is true).
#[utoipa::path(post, path = "/v1/campaigns", tag = "campaigns", security(("tenant" = [])), request_body = CreateCampaign,
    responses((status = 201, body = CampaignDetail), (status = 422, body = super::error::ErrorBody)))]
pub async fn create(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    super::extract::ApiJson(body): super::extract::ApiJson<CreateCampaign>,
) -> ApiResult<(StatusCode, Json<CampaignDetail>)> {
    let name = super::display_name("name", &body.name)?;
    if body.rate_per_second == Some(0) {
        return Err(ValidationError::new("rate_per_second", "must be at least 1").into());
    }
    let instance_id = super::instances::owned_instance(&s, &tenant, &body.instance_id, "instance_id").await?;
    let record = super::templates::sendable(&s, &tenant, &body.template_id, &instance_id).await?;
    let (template_id, template) = (record.id.clone(), record.compile()?);
    let recipients = body.recipients.unwrap_or_default();
    if recipients.len() > super::audiences::MAX_MEMBERS_PER_REQUEST {
        return Err(ValidationError::new("recipients", "at most 10000 as JSON; upload more as CSV").into());
    }
    let now = Timestamp::now();
    let rec = CampaignRecord {
        id: CampaignId::generate(),
        tenant_id: tenant.clone(),
        name,
        instance_id,
        template_id,
        priority: body.priority.unwrap_or(Priority::Low),
        rate_per_second: body.rate_per_second,
        start_at: body.start_at,
        state: CampaignState::Draft,
        total: 0,
        duplicates: 0,
        invalid: 0,
        released: 0,
        cursor: 0,
        created_at: now,
        updated_at: now,
        started_at: None,
        finished_at: None,
    };
    let mut campaign = s.backends.campaigns.create_campaign(rec).await?;
    if !recipients.is_empty() {
        let rows = recipients.into_iter().map(|r| json_row(&template, r)).collect();
        s.backends.campaigns.import_rows(&campaign.id, rows, now).await?;
    }
    if body.start == Some(true) {
        let started = s.backends.campaigns.set_campaign_state(
            &tenant,
            &campaign.id,
            &[CampaignState::Draft],
            CampaignState::Running,
            Timestamp::now(),
        );
        campaign = started.await?.ok_or_else(|| ApiError::not_found("campaign"))?;
    } else {
        campaign = s.backends.campaigns.get_campaign(&tenant, &campaign.id).await?.unwrap_or(campaign);
    }
    Ok((StatusCode::CREATED, Json(detail(&s, campaign).await?)))
}

/// A JSON recipient (`{"to": …, "variables": {…}}`), checked against the template.
fn json_row(template: &TenantTemplate, raw: Value) -> ImportRow {
    match super::audiences::parse_member(raw).and_then(|m| renders(template, m)) {
        Ok(m) => ImportRow::Valid(m),
        Err(e) => ImportRow::Invalid { field: e.field, message: e.message },
    }
}

/// A member the template renders for (every variable given, text not too long).
fn renders(template: &TenantTemplate, m: AudienceMember) -> Result<AudienceMember, ValidationError> {
    template.render_from(&m.variables)?;
    Ok(m)
}

/// Lists the tenant's campaigns, newest first.
#[utoipa::path(get, path = "/v1/campaigns", tag = "campaigns", security(("tenant" = [])),
    responses((status = 200, body = CampaignList)))]
pub async fn list(TenantAuth(tenant): TenantAuth, State(s): State<AppState>) -> ApiResult<Json<CampaignList>> {
    Ok(Json(CampaignList { data: s.backends.campaigns.list_campaigns(&tenant).await? }))
}

/// One campaign with its progress.
#[utoipa::path(get, path = "/v1/campaigns/{campaign_id}", tag = "campaigns", security(("tenant" = [])),
    params(("campaign_id" = String, Path)),
    responses((status = 200, body = CampaignDetail), (status = 404, body = super::error::ErrorBody)))]
pub async fn get(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<CampaignDetail>> {
    let campaign = owned(&s, &tenant, &id).await?;
    Ok(Json(detail(&s, campaign).await?))
}

/// Adds recipients to a draft: `text/csv` (a header row with a `to` or
/// `phone` column and one column per variable; `,` or `;`), streamed, up to
/// 1 GiB; or JSON `{"recipients": [{"to": …, "variables": {…}}]}`.
#[utoipa::path(post, path = "/v1/campaigns/{campaign_id}/recipients", tag = "campaigns", security(("tenant" = [])),
    params(("campaign_id" = String, Path)),
    request_body(content = String, content_type = "text/csv"),
    responses((status = 200, body = RecipientsAdded), (status = 409, body = super::error::ErrorBody),
              (status = 422, body = super::error::ErrorBody)))]
pub async fn add_recipients(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<RecipientsAdded>> {
    let campaign = owned(&s, &tenant, &id).await?;
    if campaign.state != CampaignState::Draft {
        return Err(not_draft(campaign.state));
    }
    let template = template_of(&s, &tenant, &campaign.template_id).await?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let mut import =
        Import { s: &s, campaign: &campaign.id, template: &template, added: empty_added(), batch: Vec::new() };
    if content_type.starts_with("application/json") {
        let bytes = axum::body::to_bytes(body, s.config.max_body_bytes).await.map_err(|_| {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "JSON recipients are limited; upload CSV")
        })?;
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Recipients {
            recipients: Vec<Value>,
        }
        let parsed: Recipients = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request("invalid_json", format!("expected {{\"recipients\": [...]}}: {e}")))?;
        for raw in parsed.recipients {
            import.row(json_row(&template, raw)).await?;
        }
    } else if content_type.starts_with("text/csv") || content_type.is_empty() {
        import_csv(&mut import, body).await?;
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send text/csv or application/json",
        ));
    }
    import.flush().await?;
    Ok(Json(import.added))
}

fn empty_added() -> RecipientsAdded {
    RecipientsAdded { rows: 0, counts: ImportCounts::default(), rejects: Vec::new() }
}

fn not_draft(state: CampaignState) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "campaign_not_draft",
        format!("the campaign is {}; recipients can only be added to a draft", state.as_str()),
    )
}

/// An upload under way: rows are stored a batch at a time.
struct Import<'a> {
    s: &'a AppState,
    campaign: &'a CampaignId,
    template: &'a TenantTemplate,
    added: RecipientsAdded,
    batch: Vec<ImportRow>,
}

impl Import<'_> {
    async fn row(&mut self, row: ImportRow) -> ApiResult<()> {
        self.added.rows += 1;
        if let ImportRow::Invalid { field, message } = &row
            && self.added.rejects.len() < REJECTS_SHOWN
        {
            self.added.rejects.push(RejectedRow {
                row: self.added.rows,
                field: field.clone(),
                message: message.clone(),
            });
        }
        self.batch.push(row);
        if self.batch.len() >= IMPORT_BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> ApiResult<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.batch);
        let counts = self.s.backends.campaigns.import_rows(self.campaign, rows, Timestamp::now()).await.map_err(
            |e| match e {
                zapgate_backends::StoreError::Conflict(m) => {
                    ApiError::new(StatusCode::CONFLICT, "campaign_not_draft", m)
                }
                other => other.into(),
            },
        )?;
        self.added.counts.added += counts.added;
        self.added.counts.duplicates += counts.duplicates;
        self.added.counts.invalid += counts.invalid;
        Ok(())
    }
}

/// Which column is what, from the header row.
struct Columns {
    recipient: usize,
    names: Vec<String>,
    /// The columns the template uses: only these are kept.
    used: Vec<String>,
}

impl Columns {
    fn from_header(header: &[String], template: &TenantTemplate) -> ApiResult<Self> {
        let names: Vec<String> =
            header.iter().map(|h| h.trim().trim_start_matches('\u{feff}').to_lowercase()).collect();
        let recipient = RECIPIENT_COLUMNS
            .iter()
            .find_map(|c| names.iter().position(|n| n == c))
            .ok_or_else(|| ValidationError::new("csv", "the header row has no recipient column (to or phone)"))?;
        let used = template.variables();
        if let Some(missing) = used.iter().find(|v| !names.contains(v)) {
            return Err(ValidationError::new("csv", format!("the template's variable {missing} has no column")).into());
        }
        Ok(Self { recipient, names, used })
    }

    fn row(&self, fields: Vec<String>, template: &TenantTemplate) -> ImportRow {
        if fields.len() != self.names.len() {
            let message = format!("has {} fields, the header {}", fields.len(), self.names.len());
            return ImportRow::Invalid { field: "row".into(), message };
        }
        if fields.iter().any(|f| f.contains('\0')) {
            return ImportRow::Invalid { field: "row".into(), message: "contains a NUL character".into() };
        }
        let to = match ChatId::parse(&fields[self.recipient]) {
            Ok(to) => to,
            Err(e) => return ImportRow::Invalid { field: "to".into(), message: e.message },
        };
        let variables: BTreeMap<String, String> = self
            .names
            .iter()
            .zip(fields)
            .enumerate()
            .filter(|(i, (k, _))| *i != self.recipient && self.used.contains(k))
            .map(|(_, (k, v))| (k.clone(), v))
            .collect();
        match renders(template, AudienceMember { to, variables }) {
            Ok(m) => ImportRow::Valid(m),
            Err(e) => ImportRow::Invalid { field: e.field, message: e.message },
        }
    }
}

async fn import_csv(import: &mut Import<'_>, body: Body) -> ApiResult<()> {
    let mut csv = CsvRows::default();
    let mut stream = body.into_data_stream();
    let mut columns: Option<Columns> = None;
    let mut records = Vec::new();
    let mut bytes = 0usize;
    let bad_csv = |e: crate::csv_rows::CsvError| ApiError::from(ValidationError::new("csv", e.to_string()));
    loop {
        let chunk = stream.next().await;
        match &chunk {
            Some(Ok(c)) => {
                bytes += c.len();
                if bytes > MAX_CSV_BYTES {
                    return Err(ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        "CSV uploads are limited to 1 GiB",
                    ));
                }
                csv.push(c, &mut records).map_err(bad_csv)?;
            }
            Some(Err(_)) => return Err(ApiError::bad_request("body_read", "the upload was cut off")),
            None => csv.finish(&mut records).map_err(bad_csv)?,
        }
        for fields in records.drain(..) {
            match &columns {
                None => columns = Some(Columns::from_header(&fields, import.template)?),
                Some(c) => import.row(c.row(fields, import.template)).await?,
            }
        }
        if chunk.is_none() {
            break;
        }
    }
    if columns.is_none() {
        return Err(ValidationError::new("csv", "the upload is empty (a header row is required)").into());
    }
    Ok(())
}

/// Rows refused at import, in row order.
#[utoipa::path(get, path = "/v1/campaigns/{campaign_id}/rejects", tag = "campaigns", security(("tenant" = [])),
    params(("campaign_id" = String, Path), super::LongPage),
    responses((status = 200, body = RejectPage), (status = 404, body = super::error::ErrorBody)))]
pub async fn rejects(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<super::LongPage>,
) -> ApiResult<Json<RejectPage>> {
    let campaign = owned(&s, &tenant, &id).await?;
    let limit = q.limit()?;
    let after = match q.cursor.as_deref() {
        None => 0,
        Some(c) => c.parse().map_err(|_| ApiError::bad_request("invalid_query", "cursor is not valid"))?,
    };
    let data = s.backends.campaigns.list_rejects(&campaign.id, after, limit).await?;
    let next_cursor = (data.len() == limit as usize).then(|| data.last().map(|r| r.row.to_string())).flatten();
    Ok(Json(RejectPage { data, next_cursor }))
}

/// Moves a campaign between states: `start` (draft → running), `pause`,
/// `resume`, `cancel` (also cancels its messages not yet sent).
async fn transition(
    s: &AppState,
    tenant: &TenantId,
    id: &str,
    from: &[CampaignState],
    to: CampaignState,
) -> ApiResult<Json<CampaignDetail>> {
    let campaign = owned(s, tenant, id).await?;
    let moved = s.backends.campaigns.set_campaign_state(tenant, &campaign.id, from, to, Timestamp::now()).await?;
    let Some(moved) = moved else {
        let now = s.backends.campaigns.get_campaign(tenant, &campaign.id).await?.map_or(campaign.state, |c| c.state);
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "campaign_state",
            format!("the campaign is {}; cannot {} it", now.as_str(), verb(to)),
        ));
    };
    if to == CampaignState::Cancelled {
        let (campaigns, store) = (&s.backends.campaigns, &s.backends.store);
        crate::worker::campaigns::cancel_pending(campaigns.as_ref(), store.as_ref(), tenant, &moved.id).await?;
    }
    Ok(Json(detail(s, moved).await?))
}

fn verb(to: CampaignState) -> &'static str {
    match to {
        CampaignState::Running => "start or resume",
        CampaignState::Paused => "pause",
        CampaignState::Cancelled => "cancel",
        _ => "change",
    }
}

macro_rules! state_route {
    ($name:ident, $path:literal, $doc:literal, [$($from:ident),+] => $to:ident) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, tag = "campaigns", security(("tenant" = [])),
            params(("campaign_id" = String, Path)),
            responses((status = 200, body = CampaignDetail), (status = 404, body = super::error::ErrorBody),
                      (status = 409, body = super::error::ErrorBody)))]
        pub async fn $name(
            TenantAuth(tenant): TenantAuth,
            State(s): State<AppState>,
            Path(id): Path<String>,
        ) -> ApiResult<Json<CampaignDetail>> {
            transition(&s, &tenant, &id, &[$(CampaignState::$from),+], CampaignState::$to).await
        }
    };
}

state_route!(start, "/v1/campaigns/{campaign_id}/start", "Starts a draft (at `start_at`, if set).", [Draft] => Running);
state_route!(pause, "/v1/campaigns/{campaign_id}/pause", "Stops releasing; what is queued still goes.", [Running] => Paused);
state_route!(resume, "/v1/campaigns/{campaign_id}/resume", "Releases again from where it paused.", [Paused] => Running);
state_route!(cancel, "/v1/campaigns/{campaign_id}/cancel", "Ends the campaign and cancels its messages not yet sent.",
    [Draft, Running, Paused] => Cancelled);
