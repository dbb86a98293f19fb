//! `ScheduleStore` on PostgreSQL, with the statements shared with SQLite
//! (`crate::schedules`). Several schedulers run at once: starting a run is
//! a compare-and-set on the schedule's `next_run_at` plus the run's unique
//! key in one transaction, and a claim takes a run with `SKIP LOCKED` and
//! leases it, so a run is sent by one scheduler at a time and resumed by
//! another only after the lease of a dead one ran out.

use super::PgBackend;
use crate::StoreError;
use crate::schedules::*;
use async_trait::async_trait;
use sqlx::AssertSqlSafe;
use zapgate_domain::{AudienceId, ChatId, ScheduleId, TenantId, Timestamp};

#[async_trait]
impl ScheduleStore for PgBackend {
    async fn create_audience(&self, a: AudienceRecord) -> Result<AudienceRecord, StoreError> {
        sqlx::query(SQL_CREATE_AUDIENCE)
            .bind(a.id.as_str())
            .bind(a.tenant_id.as_str())
            .bind(&a.name)
            .bind(a.created_at.as_millis())
            .execute(self.pool())
            .await?;
        Ok(a)
    }

    async fn list_audiences(&self, tenant: &TenantId) -> Result<Vec<AudienceRecord>, StoreError> {
        let sql = format!("{AUDIENCE_SELECT} WHERE a.tenant_id = $1 ORDER BY a.id");
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(tenant.as_str()).fetch_all(self.pool()).await?;
        rows.iter().map(audience).collect()
    }

    async fn get_audience(&self, tenant: &TenantId, id: &AudienceId) -> Result<Option<AudienceRecord>, StoreError> {
        let sql = format!("{AUDIENCE_SELECT} WHERE a.id = $1 AND a.tenant_id = $2");
        let row =
            sqlx::query(AssertSqlSafe(sql)).bind(id.as_str()).bind(tenant.as_str()).fetch_optional(self.pool()).await?;
        row.as_ref().map(audience).transpose()
    }

    async fn audience_owned(&self, tenant: &TenantId, id: &AudienceId) -> Result<bool, StoreError> {
        let found =
            sqlx::query(SQL_AUDIENCE_OWNED).bind(id.as_str()).bind(tenant.as_str()).fetch_optional(self.pool()).await?;
        Ok(found.is_some())
    }

    async fn delete_audience(&self, tenant: &TenantId, id: &AudienceId) -> Result<AudienceDeletion, StoreError> {
        let mut tx = self.pool().begin().await?;
        // Lock the audience first, so a schedule created meanwhile (which
        // reads it) is seen or waits.
        let found = sqlx::query(AssertSqlSafe(format!("{SQL_AUDIENCE_OWNED} FOR UPDATE")))
            .bind(id.as_str())
            .bind(tenant.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        if found.is_none() {
            return Ok(AudienceDeletion::NotFound);
        }
        if sqlx::query(SQL_AUDIENCE_USED).bind(id.as_str()).fetch_optional(&mut *tx).await?.is_some() {
            return Ok(AudienceDeletion::InUse);
        }
        sqlx::query(SQL_DELETE_AUDIENCE).bind(id.as_str()).bind(tenant.as_str()).execute(&mut *tx).await?;
        sqlx::query(SQL_DELETE_AUDIENCE_MEMBERS).bind(id.as_str()).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(AudienceDeletion::Deleted)
    }

    async fn upsert_members(
        &self,
        audience: &AudienceId,
        members: Vec<AudienceMember>,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let recipients: Vec<String> = members.iter().map(|m| m.to.to_string()).collect();
        let variables: Vec<String> =
            members.iter().map(|m| serde_json::to_string(&m.variables).unwrap_or_default()).collect();
        let mut tx = self.pool().begin().await?;
        let n = sqlx::query(
            "INSERT INTO audience_members (audience_id, recipient, variables, updated_at) \
             SELECT $1, r, v, $4 FROM UNNEST($2::text[], $3::text[]) AS t(r, v) \
             ON CONFLICT (audience_id, recipient) DO UPDATE SET \
             variables = EXCLUDED.variables, updated_at = EXCLUDED.updated_at",
        )
        .bind(audience.as_str())
        .bind(&recipients)
        .bind(&variables)
        .bind(now.as_millis())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("UPDATE audiences SET updated_at = $1 WHERE id = $2")
            .bind(now.as_millis())
            .bind(audience.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn list_members(
        &self,
        audience: &AudienceId,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<AudienceMember>, StoreError> {
        let rows = sqlx::query(SQL_LIST_MEMBERS)
            .bind(audience.as_str())
            .bind(after.unwrap_or_default())
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(member).collect()
    }

    async fn delete_member(&self, audience: &AudienceId, to: &ChatId) -> Result<bool, StoreError> {
        let r =
            sqlx::query(SQL_DELETE_MEMBER).bind(audience.as_str()).bind(to.to_string()).execute(self.pool()).await?;
        Ok(r.rows_affected() > 0)
    }

    async fn create_schedule(&self, s: ScheduleRecord) -> Result<ScheduleRecord, StoreError> {
        let offsets = serde_json::to_string(&s.offsets_days).unwrap_or_else(|_| "[]".into());
        let mut tx = self.pool().begin().await?;
        // Holds off a concurrent delete of the audience (which locks it FOR UPDATE).
        let audience = sqlx::query(AssertSqlSafe(format!("{SQL_AUDIENCE_OWNED} FOR SHARE")))
            .bind(s.audience_id.as_str())
            .bind(s.tenant_id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        if audience.is_none() {
            return Err(StoreError::NotFound);
        }
        sqlx::query(SQL_CREATE_SCHEDULE)
            .bind(s.id.as_str())
            .bind(s.tenant_id.as_str())
            .bind(&s.name)
            .bind(s.instance_id.as_str())
            .bind(s.audience_id.as_str())
            .bind(s.template_id.as_str())
            .bind(&s.cron)
            .bind(&s.time_zone)
            .bind(&s.date_field)
            .bind(offsets)
            .bind(s.priority.rank())
            .bind(s.enabled)
            .bind(s.next_run_at.map(Timestamp::as_millis))
            .bind(s.last_run_at.map(Timestamp::as_millis))
            .bind(s.created_at.as_millis())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(s)
    }

    async fn list_schedules(&self, tenant: &TenantId) -> Result<Vec<ScheduleRecord>, StoreError> {
        let sql = format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE tenant_id = $1 ORDER BY id");
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(tenant.as_str()).fetch_all(self.pool()).await?;
        rows.iter().map(schedule).collect()
    }

    async fn get_schedule(&self, tenant: &TenantId, id: &ScheduleId) -> Result<Option<ScheduleRecord>, StoreError> {
        let sql = format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = $1 AND tenant_id = $2");
        let row =
            sqlx::query(AssertSqlSafe(sql)).bind(id.as_str()).bind(tenant.as_str()).fetch_optional(self.pool()).await?;
        row.as_ref().map(schedule).transpose()
    }

    async fn set_schedule_enabled(
        &self,
        tenant: &TenantId,
        id: &ScheduleId,
        enabled: bool,
        next_run_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<Option<ScheduleRecord>, StoreError> {
        sqlx::query(SQL_SET_SCHEDULE_ENABLED)
            .bind(enabled)
            .bind(next_run_at.map(Timestamp::as_millis))
            .bind(now.as_millis())
            .bind(id.as_str())
            .bind(tenant.as_str())
            .execute(self.pool())
            .await?;
        self.get_schedule(tenant, id).await
    }

    async fn delete_schedule(&self, tenant: &TenantId, id: &ScheduleId) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let n = sqlx::query(SQL_DELETE_SCHEDULE).bind(id.as_str()).bind(tenant.as_str()).execute(&mut *tx).await?;
        if n.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query(SQL_DELETE_SCHEDULE_RUNS).bind(id.as_str()).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn due_schedules(&self, now: Timestamp, limit: u32) -> Result<Vec<ScheduleRecord>, StoreError> {
        let sql = format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE enabled AND next_run_at <= $1 ORDER BY next_run_at LIMIT $2"
        );
        let rows =
            sqlx::query(AssertSqlSafe(sql)).bind(now.as_millis()).bind(i64::from(limit)).fetch_all(self.pool()).await?;
        rows.iter().map(schedule).collect()
    }

    async fn start_run(&self, r: NewRun, now: Timestamp) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        // The UPDATE's row lock makes a concurrent scheduler's compare-and-set
        // wait for this commit and then find `next_run_at` moved.
        let advanced = sqlx::query(SQL_ADVANCE_SCHEDULE)
            .bind(r.next.map(Timestamp::as_millis))
            .bind(r.occurrence.as_millis())
            .bind(now.as_millis())
            .bind(r.schedule_id.as_str())
            .bind(r.due.as_millis())
            .execute(&mut *tx)
            .await?;
        if advanced.rows_affected() == 0 {
            return Ok(false);
        }
        let inserted = sqlx::query(SQL_INSERT_RUN)
            .bind(r.schedule_id.as_str())
            .bind(r.occurrence.as_millis())
            .bind(r.tenant_id.as_str())
            .bind(&r.run_date)
            .bind(i64::from(r.missed))
            .bind(now.as_millis())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(inserted.rows_affected() > 0)
    }

    async fn claim_run(&self, owner: &str, now: Timestamp, lease_ms: i64) -> Result<Option<ScheduleRun>, StoreError> {
        let sql = format!(
            "UPDATE schedule_runs r SET lease_until = $1, lease_owner = $3 FROM ( \
             SELECT schedule_id, occurrence FROM schedule_runs \
             WHERE status = 'running' AND lease_until <= $2 ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED) c \
             WHERE r.schedule_id = c.schedule_id AND r.occurrence = c.occurrence RETURNING {}",
            RUN_COLUMNS.split(", ").map(|c| format!("r.{c}")).collect::<Vec<_>>().join(", ")
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(now.as_millis() + lease_ms)
            .bind(now.as_millis())
            .bind(owner)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(run).transpose()
    }

    async fn recover_runs(&self) -> Result<u64, StoreError> {
        Ok(sqlx::query(SQL_RECOVER_RUNS).execute(self.pool()).await?.rows_affected())
    }

    async fn record_run_progress(
        &self,
        schedule: &ScheduleId,
        occurrence: Timestamp,
        owner: &str,
        p: RunProgress,
        lease_until: Timestamp,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(SQL_RUN_PROGRESS)
            .bind(&p.cursor)
            .bind(p.accepted as i64)
            .bind(p.skipped as i64)
            .bind(&p.error)
            .bind(progress_status(&p))
            .bind(lease_until.as_millis())
            .bind(p.finished.map(|_| now.as_millis()))
            .bind(schedule.as_str())
            .bind(occurrence.as_millis())
            .bind(owner)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn purge_runs(&self, before: Timestamp) -> Result<u64, StoreError> {
        Ok(sqlx::query(SQL_PURGE_RUNS).bind(before.as_millis()).execute(self.pool()).await?.rows_affected())
    }

    async fn list_runs(&self, schedule: &ScheduleId, limit: u32) -> Result<Vec<ScheduleRun>, StoreError> {
        let sql =
            format!("SELECT {RUN_COLUMNS} FROM schedule_runs WHERE schedule_id = $1 ORDER BY occurrence DESC LIMIT $2");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(schedule.as_str())
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(run).collect()
    }
}
