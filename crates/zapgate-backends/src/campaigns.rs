//! The `CampaignStore` trait: broadcasts of one template to a list of
//! recipients (imported in batches, deduplicated, invalid rows kept with
//! their reason), released into the queue a little at a time.
//!
//! The release is a cursor over `campaign_recipients.row_no`, moved by
//! compare-and-set by the process holding the campaign's lease after the
//! messages of a slice are accepted (with idempotency keys derived from the
//! row), so a releaser that dies between the two re-accepts at most that
//! slice, as replays. Progress is counted from the messages themselves
//! (`messages.campaign_id`), never kept in a second place that could drift.
//!
//! The SQL is shared by both backends as in `schedules.rs`.

use crate::StoreError;
use crate::records::Columns;
use crate::schedules::AudienceMember;
use async_trait::async_trait;
use serde::Serialize;
pub use zapgate_domain::CampaignState;
use zapgate_domain::{
    CampaignId, CampaignProgress, ChatId, InstanceId, MessageId, MessageStatus, Priority, TemplateId, TenantId,
    Timestamp,
};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CampaignRecord {
    pub id: CampaignId,
    #[serde(skip)]
    pub tenant_id: TenantId,
    pub name: String,
    pub instance_id: InstanceId,
    pub template_id: TemplateId,
    pub priority: Priority,
    /// A cap below the instance's rate (messages per second).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_per_second: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_at: Option<Timestamp>,
    pub state: CampaignState,
    /// Recipients stored (duplicates and invalid rows not counted).
    pub total: u64,
    /// Rows naming a recipient already in the campaign (sent once).
    pub duplicates: u64,
    /// Rows refused at import (`GET /v1/campaigns/{id}/rejects`).
    pub invalid: u64,
    /// Recipients handed to the queue so far.
    pub released: u64,
    #[serde(skip)]
    pub cursor: u64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
}

/// One imported row, in file order.
#[derive(Debug, Clone)]
pub enum ImportRow {
    Valid(AudienceMember),
    Invalid { field: String, message: String },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ImportCounts {
    pub added: u64,
    pub duplicates: u64,
    pub invalid: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RejectedRow {
    /// The row's number in the campaign (the first imported row is 1).
    pub row: u64,
    pub field: String,
    pub message: String,
}

/// A move of a campaign's release cursor: rows `from` (exclusive) to `to`,
/// `released` of them (duplicates leave gaps in the numbering).
#[derive(Debug, Clone, Copy)]
pub struct CursorStep {
    pub from: u64,
    pub to: u64,
    pub released: u64,
    pub now: Timestamp,
    /// The releaser's lease, renewed with every move.
    pub lease_until: Timestamp,
}

#[async_trait]
pub trait CampaignStore: Send + Sync + 'static {
    async fn create_campaign(&self, campaign: CampaignRecord) -> Result<CampaignRecord, StoreError>;
    async fn list_campaigns(&self, tenant: &TenantId) -> Result<Vec<CampaignRecord>, StoreError>;
    async fn get_campaign(&self, tenant: &TenantId, id: &CampaignId) -> Result<Option<CampaignRecord>, StoreError>;
    /// Appends rows to a draft campaign (numbered on from its `next_row`):
    /// valid ones once per recipient, invalid ones as rejects. `Conflict`
    /// unless the campaign is a draft.
    async fn import_rows(
        &self,
        campaign: &CampaignId,
        rows: Vec<ImportRow>,
        now: Timestamp,
    ) -> Result<ImportCounts, StoreError>;
    async fn list_rejects(&self, campaign: &CampaignId, after: u64, limit: u32)
    -> Result<Vec<RejectedRow>, StoreError>;
    /// Moves the campaign from one of `from` to `to`; `None` if it is in
    /// none of them (or not the tenant's).
    async fn set_campaign_state(
        &self,
        tenant: &TenantId,
        id: &CampaignId,
        from: &[CampaignState],
        to: CampaignState,
        now: Timestamp,
    ) -> Result<Option<CampaignRecord>, StoreError>;
    /// Leases running campaigns that are due (`start_at` passed) to
    /// `owner`: those whose lease ran out, and those `owner` holds already.
    /// Campaigns cancelled in the last `CANCEL_SWEEP_MS` come too: a message
    /// in a worker's hands at the cancel may come back to the queue (paced,
    /// parked) and is cancelled then.
    async fn claim_campaigns(
        &self,
        owner: &str,
        now: Timestamp,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<CampaignRecord>, StoreError>;
    /// Recipients after row `after`, in row order.
    async fn next_recipients(
        &self,
        campaign: &CampaignId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, AudienceMember)>, StoreError>;
    /// Moves the release cursor `from → to` (adding `released`) and renews
    /// the lease to `lease_until` if `owner` still holds the campaign at
    /// `from` — also if it was paused meanwhile: what was accepted is
    /// released. Returns the campaign's state, `None` if the cursor did not move.
    async fn advance_campaign(
        &self,
        id: &CampaignId,
        owner: &str,
        step: CursorStep,
    ) -> Result<Option<CampaignState>, StoreError>;
    /// Records a `campaign.progress` event (the releaser's, as the campaign
    /// passes each tenth of its recipients).
    async fn record_campaign_progress(
        &self,
        campaign: &CampaignRecord,
        progress: CampaignProgress,
        now: Timestamp,
    ) -> Result<(), StoreError>;
    /// How many of the campaign's messages are in each status.
    async fn campaign_statuses(&self, id: &CampaignId) -> Result<Vec<(MessageStatus, u64)>, StoreError>;
    /// How many of the campaign's messages wait to be sent (scheduled,
    /// queued, sending, retry_wait): an index range, cheap at any size.
    async fn campaign_waiting(&self, id: &CampaignId) -> Result<u64, StoreError>;
    /// Messages of the campaign not yet handed to a provider (to cancel them).
    async fn campaign_pending_messages(&self, id: &CampaignId, limit: u32) -> Result<Vec<MessageId>, StoreError>;
}

/// How long after a cancel the releaser keeps cancelling what comes back.
pub const CANCEL_SWEEP_MS: i64 = 15 * 60 * 1000;

// ---- SQL shared by both backends ----------------------------------------

pub(crate) const CAMPAIGN_COLUMNS: &str = "id, tenant_id, name, instance_id, template_id, priority, rate_per_second, \
     start_at, state, total, duplicates, invalid, released, cursor, created_at, updated_at, started_at, finished_at";
pub(crate) const SQL_CREATE_CAMPAIGN: &str = "INSERT INTO campaigns (id, tenant_id, name, instance_id, template_id, \
     priority, rate_per_second, start_at, state, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)";
pub(crate) const SQL_CAMPAIGN_ROWS: &str = "SELECT state, next_row FROM campaigns WHERE id = $1";
pub(crate) const SQL_INSERT_RECIPIENT: &str = "INSERT INTO campaign_recipients (campaign_id, row_no, recipient, \
     variables) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";
pub(crate) const SQL_INSERT_REJECT: &str =
    "INSERT INTO campaign_rejects (campaign_id, row_no, field, message) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";
pub(crate) const SQL_COUNT_IMPORT: &str = "UPDATE campaigns SET next_row = next_row + $1, total = total + $2, \
     duplicates = duplicates + $3, invalid = invalid + $4, updated_at = $5 WHERE id = $6";
pub(crate) const SQL_LIST_REJECTS: &str = "SELECT row_no, field, message FROM campaign_rejects \
     WHERE campaign_id = $1 AND row_no > $2 ORDER BY row_no LIMIT $3";
pub(crate) const SQL_NEXT_RECIPIENTS: &str = "SELECT row_no, recipient, variables FROM campaign_recipients \
     WHERE campaign_id = $1 AND row_no > $2 ORDER BY row_no LIMIT $3";
pub(crate) const SQL_ADVANCE_CAMPAIGN: &str = "UPDATE campaigns SET cursor = $1, released = released + $2, \
     updated_at = $3, lease_until = $4 WHERE id = $5 AND lease_owner = $6 AND cursor = $7 RETURNING state";
pub(crate) const SQL_CAMPAIGN_STATUSES: &str =
    "SELECT status, COUNT(*) AS n FROM messages WHERE campaign_id = $1 GROUP BY status";
pub(crate) const SQL_CAMPAIGN_WAITING: &str = "SELECT COUNT(*) AS n FROM messages WHERE campaign_id = $1 \
     AND status IN ('scheduled','queued','sending','retry_wait')";
pub(crate) const SQL_CAMPAIGN_PENDING: &str = "SELECT id FROM messages WHERE campaign_id = $1 \
     AND status IN ('scheduled','queued','retry_wait') LIMIT $2";

pub(crate) fn campaign(row: &(impl Columns + ?Sized)) -> Result<CampaignRecord, StoreError> {
    let state = row.text("state")?;
    let count = |col: &str| -> Result<u64, StoreError> { Ok(row.int(col)?.max(0) as u64) };
    Ok(CampaignRecord {
        id: CampaignId::from_trusted(row.text("id")?),
        tenant_id: TenantId::from_trusted(row.text("tenant_id")?),
        name: row.text("name")?,
        instance_id: InstanceId::from_trusted(row.text("instance_id")?),
        template_id: TemplateId::from_trusted(row.text("template_id")?),
        priority: Priority::from_rank(row.int("priority")?),
        rate_per_second: row.int_opt("rate_per_second")?.map(|r| r.clamp(0, u32::MAX as i64) as u32),
        start_at: row.time_opt("start_at")?,
        state: CampaignState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("campaign state {state}")))?,
        total: count("total")?,
        duplicates: count("duplicates")?,
        invalid: count("invalid")?,
        released: count("released")?,
        cursor: count("cursor")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
        started_at: row.time_opt("started_at")?,
        finished_at: row.time_opt("finished_at")?,
    })
}

pub(crate) fn recipient(row: &(impl Columns + ?Sized)) -> Result<(u64, AudienceMember), StoreError> {
    let to = row.text("recipient")?;
    let member = AudienceMember {
        to: ChatId::parse(&to).map_err(|e| StoreError::Corrupt(format!("recipient {to}: {e}")))?,
        variables: row.json("variables")?,
    };
    Ok((row.int("row_no")?.max(0) as u64, member))
}

/// A row of `SQL_CAMPAIGN_STATUSES`.
pub(crate) fn status_count_of(row: &(impl Columns + ?Sized)) -> Result<(MessageStatus, u64), StoreError> {
    let status = row.text("status")?;
    let status = status.parse().map_err(|e| StoreError::Corrupt(format!("status {status}: {e}")))?;
    Ok((status, row.int("n")?.max(0) as u64))
}

pub(crate) fn reject(row: &(impl Columns + ?Sized)) -> Result<RejectedRow, StoreError> {
    Ok(RejectedRow { row: row.int("row_no")?.max(0) as u64, field: row.text("field")?, message: row.text("message")? })
}

/// The state change's SQL: `from` states inline (fixed words, not input).
pub(crate) fn state_change_sql(from: &[CampaignState]) -> String {
    let from: Vec<String> = from.iter().map(|s| format!("'{}'", s.as_str())).collect();
    format!(
        "UPDATE campaigns SET state = $1, updated_at = $2, \
         started_at = CASE WHEN $1 = 'running' AND started_at IS NULL THEN $2 ELSE started_at END, \
         finished_at = CASE WHEN $1 IN ('completed', 'cancelled') THEN $2 ELSE finished_at END \
         WHERE id = $3 AND tenant_id = $4 AND state IN ({})",
        from.join(", ")
    )
}

/// The detail of a `campaign.status` or `campaign.progress` event.
pub(crate) fn status_detail(c: &CampaignRecord, progress: CampaignProgress) -> zapgate_domain::event::StatusDetail {
    zapgate_domain::event::StatusDetail {
        campaign_id: Some(c.id.clone()),
        campaign_state: Some(c.state),
        released: Some(progress.total - progress.pending),
        total: Some(c.total),
        progress: Some(progress),
        // (`Default` says false: "a report that changed nothing".)
        applied: true,
        ..Default::default()
    }
}

/// How an import batch's rows are numbered and counted.
pub(crate) struct ImportPlan {
    pub valid: Vec<(i64, String, String)>,
    pub invalid: Vec<(i64, String, String)>,
}

pub(crate) fn plan_import(first_row: i64, rows: Vec<ImportRow>) -> ImportPlan {
    let mut plan = ImportPlan { valid: Vec::new(), invalid: Vec::new() };
    for (i, row) in rows.into_iter().enumerate() {
        let n = first_row + i as i64;
        match row {
            ImportRow::Valid(m) => {
                let vars = serde_json::to_string(&m.variables).unwrap_or_else(|_| "{}".into());
                plan.valid.push((n, m.to.to_string(), vars));
            }
            ImportRow::Invalid { field, message } => plan.invalid.push((n, field, message)),
        }
    }
    plan
}

impl ImportPlan {
    pub fn rows(&self) -> i64 {
        (self.valid.len() + self.invalid.len()) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_placeholders_are_in_order() {
        for sql in [
            SQL_CREATE_CAMPAIGN,
            SQL_CAMPAIGN_ROWS,
            SQL_INSERT_RECIPIENT,
            SQL_INSERT_REJECT,
            SQL_COUNT_IMPORT,
            SQL_LIST_REJECTS,
            SQL_NEXT_RECIPIENTS,
            SQL_ADVANCE_CAMPAIGN,
            SQL_CAMPAIGN_STATUSES,
            SQL_CAMPAIGN_PENDING,
            SQL_CAMPAIGN_WAITING,
            &state_change_sql(&[CampaignState::Draft]),
        ] {
            crate::schedules::assert_placeholders_in_order(sql);
        }
    }
}
