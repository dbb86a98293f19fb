//! The `ScheduleStore` trait: audiences (a tenant's recipients with their
//! variables), recurring schedules over them, and the runs schedules make.
//!
//! A run is keyed by (schedule, occurrence) and is started in the same
//! statement batch that moves the schedule's `next_run_at` on, guarded by
//! the `next_run_at` the scheduler read: of several schedulers that saw an
//! occurrence due, one starts its run. A run is then leased by the scheduler
//! sending it and keeps a cursor (the last audience member done), so a run a
//! crashed scheduler left resumes where it stopped; the messages it accepts
//! carry idempotency keys derived from (schedule, occurrence, member, offset),
//! so the members of the chunk in flight at the crash are not sent twice.
//!
//! The SQL is written once for both backends (`SQL_*`): `$N` placeholders,
//! each first used in increasing order, which SQLite numbers the same way
//! as PostgreSQL (`sql_placeholders_are_in_order` checks it).

use crate::StoreError;
use crate::records::Columns;
use async_trait::async_trait;
use serde::Serialize;
use std::collections::BTreeMap;
use zapgate_domain::{AudienceId, ChatId, InstanceId, Priority, ScheduleId, TemplateId, TenantId, Timestamp};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AudienceRecord {
    pub id: AudienceId,
    #[serde(skip)]
    pub tenant_id: TenantId,
    pub name: String,
    /// How many members it has.
    pub members: u64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AudienceMember {
    /// The recipient (canonical phone, group or LID).
    #[schema(value_type = String)]
    pub to: ChatId,
    /// Values for templates, and dates schedules match (`due_date`).
    pub variables: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ScheduleRecord {
    pub id: ScheduleId,
    #[serde(skip)]
    pub tenant_id: TenantId,
    pub name: String,
    pub instance_id: InstanceId,
    pub audience_id: AudienceId,
    pub template_id: TemplateId,
    /// Cron expression (5 fields, or 6 with seconds first).
    pub cron: String,
    /// IANA time zone the expression and the dates are read in.
    pub time_zone: String,
    /// The member variable holding a date (`YYYY-MM-DD` or `DD/MM/YYYY`);
    /// with it, a run sends to members whose date plus an offset is the run's date.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub date_field: Option<String>,
    /// Day offsets from `date_field` (`[-3, 0]`: three days before, and on the day).
    pub offsets_days: Vec<i32>,
    pub priority: Priority,
    pub enabled: bool,
    /// The next run; absent when disabled or when the expression never fires again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_run_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_run_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Done,
    Failed,
}

impl RunStatus {
    fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Done => "done",
            RunStatus::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ScheduleRun {
    pub schedule_id: ScheduleId,
    #[serde(skip)]
    pub tenant_id: TenantId,
    /// The occurrence this run is for.
    pub occurrence: Timestamp,
    /// Its date in the schedule's time zone (`YYYY-MM-DD`).
    pub run_date: String,
    /// Earlier occurrences not run because no scheduler ran then (caught up by this one).
    pub missed: u32,
    pub status: RunStatus,
    /// Messages accepted.
    pub accepted: u64,
    /// Members not sent to (a variable missing, an unreadable date); `error` has the last reason.
    pub skipped: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip)]
    pub cursor: Option<String>,
    pub created_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
}

/// A run to start: `due` is the `next_run_at` the scheduler read (the
/// guard), `next` what it becomes.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub schedule_id: ScheduleId,
    pub tenant_id: TenantId,
    pub due: Timestamp,
    pub occurrence: Timestamp,
    pub next: Option<Timestamp>,
    pub run_date: String,
    pub missed: u32,
}

/// What a chunk of a run did; `finished` ends the run.
#[derive(Debug, Clone, Default)]
pub struct RunProgress {
    pub cursor: Option<String>,
    pub accepted: u64,
    pub skipped: u64,
    pub error: Option<String>,
    pub finished: Option<RunStatus>,
}

impl RunProgress {
    /// Counts a member not sent to, keeping the reason as the run's last error.
    pub fn skip(&mut self, reason: String) {
        self.skipped += 1;
        self.error = Some(reason);
    }
}

/// What deleting an audience did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudienceDeletion {
    Deleted,
    NotFound,
    /// A schedule still sends to it.
    InUse,
}

#[async_trait]
pub trait ScheduleStore: Send + Sync + 'static {
    async fn create_audience(&self, audience: AudienceRecord) -> Result<AudienceRecord, StoreError>;
    async fn list_audiences(&self, tenant: &TenantId) -> Result<Vec<AudienceRecord>, StoreError>;
    async fn get_audience(&self, tenant: &TenantId, id: &AudienceId) -> Result<Option<AudienceRecord>, StoreError>;
    /// Whether the tenant has this audience (without counting its members).
    async fn audience_owned(&self, tenant: &TenantId, id: &AudienceId) -> Result<bool, StoreError>;
    async fn delete_audience(&self, tenant: &TenantId, id: &AudienceId) -> Result<AudienceDeletion, StoreError>;
    /// Adds members or replaces their variables (by recipient); `members`
    /// names each recipient once. Returns how many rows were written.
    async fn upsert_members(
        &self,
        audience: &AudienceId,
        members: Vec<AudienceMember>,
        now: Timestamp,
    ) -> Result<u64, StoreError>;
    /// Members in recipient order, after `after` (a recipient), up to `limit`.
    async fn list_members(
        &self,
        audience: &AudienceId,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<AudienceMember>, StoreError>;
    async fn delete_member(&self, audience: &AudienceId, to: &ChatId) -> Result<bool, StoreError>;

    async fn create_schedule(&self, schedule: ScheduleRecord) -> Result<ScheduleRecord, StoreError>;
    async fn list_schedules(&self, tenant: &TenantId) -> Result<Vec<ScheduleRecord>, StoreError>;
    async fn get_schedule(&self, tenant: &TenantId, id: &ScheduleId) -> Result<Option<ScheduleRecord>, StoreError>;
    /// Enables or disables; `next_run_at` is the next run from now when
    /// enabling (runs missed while disabled are not caught up).
    async fn set_schedule_enabled(
        &self,
        tenant: &TenantId,
        id: &ScheduleId,
        enabled: bool,
        next_run_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<Option<ScheduleRecord>, StoreError>;
    /// Deletes a schedule and its runs (a run under way stops at its next chunk).
    async fn delete_schedule(&self, tenant: &TenantId, id: &ScheduleId) -> Result<bool, StoreError>;
    /// Enabled schedules whose next run is at or before `now`.
    async fn due_schedules(&self, now: Timestamp, limit: u32) -> Result<Vec<ScheduleRecord>, StoreError>;
    /// Starts a run if the schedule is still due at `run.due` (no other
    /// scheduler started it), moving `next_run_at` to `run.next`. Returns
    /// whether this call started it.
    async fn start_run(&self, run: NewRun, now: Timestamp) -> Result<bool, StoreError>;
    /// Leases one running run whose lease ran out (new runs have none) to `owner`.
    async fn claim_run(&self, owner: &str, now: Timestamp, lease_ms: i64) -> Result<Option<ScheduleRun>, StoreError>;
    /// Returns every running run's lease (embedded start: the one process
    /// that owns the database holds none any more). Returns how many.
    async fn recover_runs(&self) -> Result<u64, StoreError>;
    /// Adds a chunk's counts, moves the cursor, extends the lease (or ends
    /// the run), if `owner` still holds it; false if not (the lease passed
    /// to another scheduler, or the run was deleted with its schedule).
    async fn record_run_progress(
        &self,
        schedule: &ScheduleId,
        occurrence: Timestamp,
        owner: &str,
        progress: RunProgress,
        lease_until: Timestamp,
        now: Timestamp,
    ) -> Result<bool, StoreError>;
    /// Deletes finished runs that ended before `before`; returns how many.
    async fn purge_runs(&self, before: Timestamp) -> Result<u64, StoreError>;
    /// The schedule's latest runs, newest first.
    async fn list_runs(&self, schedule: &ScheduleId, limit: u32) -> Result<Vec<ScheduleRun>, StoreError>;
}

// ---- SQL shared by both backends ----------------------------------------

pub(crate) const AUDIENCE_SELECT: &str = "SELECT a.id, a.tenant_id, a.name, a.created_at, a.updated_at, \
     (SELECT COUNT(*) FROM audience_members m WHERE m.audience_id = a.id) AS members FROM audiences a";
pub(crate) const SQL_CREATE_AUDIENCE: &str =
    "INSERT INTO audiences (id, tenant_id, name, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)";
pub(crate) const SQL_AUDIENCE_OWNED: &str = "SELECT 1 FROM audiences WHERE id = $1 AND tenant_id = $2";
pub(crate) const SQL_AUDIENCE_USED: &str = "SELECT 1 FROM schedules WHERE audience_id = $1 LIMIT 1";
pub(crate) const SQL_DELETE_AUDIENCE: &str = "DELETE FROM audiences WHERE id = $1 AND tenant_id = $2";
pub(crate) const SQL_DELETE_AUDIENCE_MEMBERS: &str = "DELETE FROM audience_members WHERE audience_id = $1";
pub(crate) const SQL_LIST_MEMBERS: &str = "SELECT recipient, variables FROM audience_members \
     WHERE audience_id = $1 AND recipient > $2 ORDER BY recipient LIMIT $3";
pub(crate) const SQL_DELETE_MEMBER: &str = "DELETE FROM audience_members WHERE audience_id = $1 AND recipient = $2";

pub(crate) const SCHEDULE_COLUMNS: &str = "id, tenant_id, name, instance_id, audience_id, template_id, cron, \
     time_zone, date_field, offsets_days, priority, enabled, next_run_at, last_run_at, created_at, updated_at";
pub(crate) const SQL_CREATE_SCHEDULE: &str = "INSERT INTO schedules (id, tenant_id, name, instance_id, audience_id, \
     template_id, cron, time_zone, date_field, offsets_days, priority, enabled, next_run_at, last_run_at, \
     created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15)";
pub(crate) const SQL_SET_SCHEDULE_ENABLED: &str =
    "UPDATE schedules SET enabled = $1, next_run_at = $2, updated_at = $3 WHERE id = $4 AND tenant_id = $5";
pub(crate) const SQL_DELETE_SCHEDULE: &str = "DELETE FROM schedules WHERE id = $1 AND tenant_id = $2";
pub(crate) const SQL_DELETE_SCHEDULE_RUNS: &str = "DELETE FROM schedule_runs WHERE schedule_id = $1";
pub(crate) const SQL_ADVANCE_SCHEDULE: &str = "UPDATE schedules SET next_run_at = $1, last_run_at = $2, \
     updated_at = $3 WHERE id = $4 AND enabled AND next_run_at = $5";
pub(crate) const SQL_INSERT_RUN: &str = "INSERT INTO schedule_runs (schedule_id, occurrence, tenant_id, run_date, \
     missed, status, created_at) VALUES ($1, $2, $3, $4, $5, 'running', $6) ON CONFLICT DO NOTHING";
pub(crate) const RUN_COLUMNS: &str = "schedule_id, occurrence, tenant_id, run_date, missed, status, cursor, accepted, \
     skipped, error, created_at, finished_at";
pub(crate) const SQL_RUN_PROGRESS: &str = "UPDATE schedule_runs SET cursor = COALESCE($1, cursor), \
     accepted = accepted + $2, skipped = skipped + $3, error = COALESCE($4, error), status = $5, \
     lease_until = $6, finished_at = $7 WHERE schedule_id = $8 AND occurrence = $9 AND status = 'running' \
     AND lease_owner = $10";
pub(crate) const SQL_PURGE_RUNS: &str = "DELETE FROM schedule_runs WHERE status <> 'running' AND finished_at < $1";

pub(crate) const SQL_RECOVER_RUNS: &str =
    "UPDATE schedule_runs SET lease_until = 0 WHERE status = 'running' AND lease_until > 0";

/// A member's row from `SQL_LIST_MEMBERS`.
pub(crate) fn member(row: &(impl Columns + ?Sized)) -> Result<AudienceMember, StoreError> {
    let to = row.text("recipient")?;
    Ok(AudienceMember {
        to: ChatId::parse(&to).map_err(|e| StoreError::Corrupt(format!("recipient {to}: {e}")))?,
        variables: row.json("variables")?,
    })
}

pub(crate) fn audience(row: &(impl Columns + ?Sized)) -> Result<AudienceRecord, StoreError> {
    Ok(AudienceRecord {
        id: AudienceId::from_trusted(row.text("id")?),
        tenant_id: TenantId::from_trusted(row.text("tenant_id")?),
        name: row.text("name")?,
        members: row.int("members")?.max(0) as u64,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
    })
}

pub(crate) fn schedule(row: &(impl Columns + ?Sized)) -> Result<ScheduleRecord, StoreError> {
    Ok(ScheduleRecord {
        id: ScheduleId::from_trusted(row.text("id")?),
        tenant_id: TenantId::from_trusted(row.text("tenant_id")?),
        name: row.text("name")?,
        instance_id: InstanceId::from_trusted(row.text("instance_id")?),
        audience_id: AudienceId::from_trusted(row.text("audience_id")?),
        template_id: TemplateId::from_trusted(row.text("template_id")?),
        cron: row.text("cron")?,
        time_zone: row.text("time_zone")?,
        date_field: row.text_opt("date_field")?,
        offsets_days: row.json("offsets_days")?,
        priority: Priority::from_rank(row.int("priority")?),
        enabled: row.flag("enabled")?,
        next_run_at: row.time_opt("next_run_at")?,
        last_run_at: row.time_opt("last_run_at")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
    })
}

pub(crate) fn run(row: &(impl Columns + ?Sized)) -> Result<ScheduleRun, StoreError> {
    let status = match row.text("status")?.as_str() {
        "running" => RunStatus::Running,
        "done" => RunStatus::Done,
        "failed" => RunStatus::Failed,
        other => return Err(StoreError::Corrupt(format!("run status {other}"))),
    };
    Ok(ScheduleRun {
        schedule_id: ScheduleId::from_trusted(row.text("schedule_id")?),
        tenant_id: TenantId::from_trusted(row.text("tenant_id")?),
        occurrence: row.time("occurrence")?,
        run_date: row.text("run_date")?,
        missed: row.int("missed")?.clamp(0, u32::MAX as i64) as u32,
        status,
        cursor: row.text_opt("cursor")?,
        accepted: row.int("accepted")?.max(0) as u64,
        skipped: row.int("skipped")?.max(0) as u64,
        error: row.text_opt("error")?,
        created_at: row.time("created_at")?,
        finished_at: row.time_opt("finished_at")?,
    })
}

/// The values a progress update binds after the cursor, in `SQL_RUN_PROGRESS` order.
pub(crate) fn progress_status(p: &RunProgress) -> &'static str {
    p.finished.unwrap_or(RunStatus::Running).as_str()
}

/// SQLite numbers `$N` parameters in order of first use; a statement
/// shared by both backends only works if that order is 1, 2, 3, …
#[cfg(test)]
pub(crate) fn assert_placeholders_in_order(sql: &str) {
    let mut seen = Vec::new();
    for part in sql.split('$').skip(1) {
        let n: usize = part.chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap();
        if !seen.contains(&n) {
            seen.push(n);
        }
    }
    let expected: Vec<usize> = (1..=seen.len()).collect();
    assert_eq!(seen, expected, "{sql}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_placeholders_are_in_order() {
        for sql in [
            SQL_CREATE_AUDIENCE,
            SQL_AUDIENCE_OWNED,
            SQL_AUDIENCE_USED,
            SQL_DELETE_AUDIENCE,
            SQL_DELETE_AUDIENCE_MEMBERS,
            SQL_LIST_MEMBERS,
            SQL_DELETE_MEMBER,
            SQL_CREATE_SCHEDULE,
            SQL_SET_SCHEDULE_ENABLED,
            SQL_DELETE_SCHEDULE,
            SQL_DELETE_SCHEDULE_RUNS,
            SQL_ADVANCE_SCHEDULE,
            SQL_INSERT_RUN,
            SQL_RUN_PROGRESS,
            SQL_RECOVER_RUNS,
            SQL_PURGE_RUNS,
        ] {
            assert_placeholders_in_order(sql);
        }
    }
}
