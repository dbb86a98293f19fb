//! `ScheduleStore` on SQLite, with the statements shared with PostgreSQL
//! (`crate::schedules`). The single writer serialises the start of a run
//! and its claims, so neither needs row locks.

use super::SqliteBackend;
use super::rows::{all, exec, one};
use crate::StoreError;
use crate::schedules::*;
use async_trait::async_trait;
use rusqlite::{Row, params};
use zapgate_domain::{AudienceId, ChatId, ScheduleId, TenantId, Timestamp};

fn audience_row(row: &Row<'_>) -> Result<AudienceRecord, StoreError> {
    audience(row)
}
fn schedule_row(row: &Row<'_>) -> Result<ScheduleRecord, StoreError> {
    schedule(row)
}
fn run_row(row: &Row<'_>) -> Result<ScheduleRun, StoreError> {
    run(row)
}
fn member_row(row: &Row<'_>) -> Result<AudienceMember, StoreError> {
    member(row)
}

#[async_trait]
impl ScheduleStore for SqliteBackend {
    async fn create_audience(&self, a: AudienceRecord) -> Result<AudienceRecord, StoreError> {
        let rec = a.clone();
        self.writer
            .write(Box::new(move |conn| {
                let p = params![a.id.as_str(), a.tenant_id.as_str(), a.name, a.created_at.as_millis()];
                exec(conn, SQL_CREATE_AUDIENCE, p).map(|_| ())
            }))
            .await?;
        Ok(rec)
    }

    async fn list_audiences(&self, tenant: &TenantId) -> Result<Vec<AudienceRecord>, StoreError> {
        let tenant = tenant.to_string();
        let sql = format!("{AUDIENCE_SELECT} WHERE a.tenant_id = $1 ORDER BY a.id");
        self.read(move |c| all(c, &sql, [tenant], audience_row)).await
    }

    async fn get_audience(&self, tenant: &TenantId, id: &AudienceId) -> Result<Option<AudienceRecord>, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        let sql = format!("{AUDIENCE_SELECT} WHERE a.id = $1 AND a.tenant_id = $2");
        self.read(move |c| one(c, &sql, [id, tenant], audience_row)).await
    }

    async fn audience_owned(&self, tenant: &TenantId, id: &AudienceId) -> Result<bool, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        Ok(self.read(move |c| one(c, SQL_AUDIENCE_OWNED, [id, tenant], |_| Ok(()))).await?.is_some())
    }

    async fn delete_audience(&self, tenant: &TenantId, id: &AudienceId) -> Result<AudienceDeletion, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.writer
            .write(Box::new(move |conn| {
                if one(conn, SQL_AUDIENCE_OWNED, [&id, &tenant], |_| Ok(()))?.is_none() {
                    return Ok(AudienceDeletion::NotFound);
                }
                if one(conn, SQL_AUDIENCE_USED, [&id], |_| Ok(()))?.is_some() {
                    return Ok(AudienceDeletion::InUse);
                }
                exec(conn, SQL_DELETE_AUDIENCE, [&id, &tenant])?;
                exec(conn, SQL_DELETE_AUDIENCE_MEMBERS, [&id])?;
                Ok(AudienceDeletion::Deleted)
            }))
            .await
    }

    async fn upsert_members(
        &self,
        audience: &AudienceId,
        members: Vec<AudienceMember>,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let audience = audience.to_string();
        let rows: Vec<(String, String)> = members
            .iter()
            .map(|m| (m.to.to_string(), serde_json::to_string(&m.variables).unwrap_or_default()))
            .collect();
        self.writer
            .write(Box::new(move |conn| {
                let mut n = 0;
                for (to, vars) in &rows {
                    n += exec(
                        conn,
                        "INSERT INTO audience_members (audience_id, recipient, variables, updated_at) \
                         VALUES (?1, ?2, ?3, ?4) ON CONFLICT (audience_id, recipient) DO UPDATE SET \
                         variables = excluded.variables, updated_at = excluded.updated_at",
                        params![audience, to, vars, now.as_millis()],
                    )? as u64;
                }
                exec(conn, "UPDATE audiences SET updated_at = ?1 WHERE id = ?2", params![now.as_millis(), audience])?;
                Ok(n)
            }))
            .await
    }

    async fn list_members(
        &self,
        audience: &AudienceId,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<AudienceMember>, StoreError> {
        let audience = audience.to_string();
        let after = after.unwrap_or_default();
        self.read(move |c| all(c, SQL_LIST_MEMBERS, params![audience, after, limit], member_row)).await
    }

    async fn delete_member(&self, audience: &AudienceId, to: &ChatId) -> Result<bool, StoreError> {
        let (audience, to) = (audience.to_string(), to.to_string());
        self.writer.write(Box::new(move |conn| Ok(exec(conn, SQL_DELETE_MEMBER, [audience, to])? > 0))).await
    }

    async fn create_schedule(&self, s: ScheduleRecord) -> Result<ScheduleRecord, StoreError> {
        let rec = s.clone();
        let offsets = serde_json::to_string(&s.offsets_days).unwrap_or_else(|_| "[]".into());
        self.writer
            .write(Box::new(move |conn| {
                let p = params![
                    s.id.as_str(),
                    s.tenant_id.as_str(),
                    s.name,
                    s.instance_id.as_str(),
                    s.audience_id.as_str(),
                    s.template_id.as_str(),
                    s.cron,
                    s.time_zone,
                    s.date_field,
                    offsets,
                    s.priority.rank(),
                    s.enabled,
                    s.next_run_at.map(Timestamp::as_millis),
                    s.last_run_at.map(Timestamp::as_millis),
                    s.created_at.as_millis()
                ];
                exec(conn, SQL_CREATE_SCHEDULE, p).map(|_| ())
            }))
            .await?;
        Ok(rec)
    }

    async fn list_schedules(&self, tenant: &TenantId) -> Result<Vec<ScheduleRecord>, StoreError> {
        let tenant = tenant.to_string();
        let sql = format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE tenant_id = $1 ORDER BY id");
        self.read(move |c| all(c, &sql, [tenant], schedule_row)).await
    }

    async fn get_schedule(&self, tenant: &TenantId, id: &ScheduleId) -> Result<Option<ScheduleRecord>, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        let sql = format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = $1 AND tenant_id = $2");
        self.read(move |c| one(c, &sql, [id, tenant], schedule_row)).await
    }

    async fn set_schedule_enabled(
        &self,
        tenant: &TenantId,
        id: &ScheduleId,
        enabled: bool,
        next_run_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<Option<ScheduleRecord>, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.writer
            .write(Box::new(move |conn| {
                let p = params![enabled, next_run_at.map(Timestamp::as_millis), now.as_millis(), id, tenant];
                exec(conn, SQL_SET_SCHEDULE_ENABLED, p)?;
                let sql = format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = $1 AND tenant_id = $2");
                one(conn, &sql, [id, tenant], schedule_row)
            }))
            .await
    }

    async fn delete_schedule(&self, tenant: &TenantId, id: &ScheduleId) -> Result<bool, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.writer
            .write(Box::new(move |conn| {
                if exec(conn, SQL_DELETE_SCHEDULE, [&id, &tenant])? == 0 {
                    return Ok(false);
                }
                exec(conn, SQL_DELETE_SCHEDULE_RUNS, [&id])?;
                Ok(true)
            }))
            .await
    }

    async fn due_schedules(&self, now: Timestamp, limit: u32) -> Result<Vec<ScheduleRecord>, StoreError> {
        let sql = format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE enabled AND next_run_at <= $1 ORDER BY next_run_at LIMIT $2"
        );
        self.read(move |c| all(c, &sql, params![now.as_millis(), limit], schedule_row)).await
    }

    async fn start_run(&self, r: NewRun, now: Timestamp) -> Result<bool, StoreError> {
        self.writer
            .write(Box::new(move |conn| {
                let advanced = exec(
                    conn,
                    SQL_ADVANCE_SCHEDULE,
                    params![
                        r.next.map(Timestamp::as_millis),
                        r.occurrence.as_millis(),
                        now.as_millis(),
                        r.schedule_id.as_str(),
                        r.due.as_millis()
                    ],
                )?;
                if advanced == 0 {
                    return Ok(false);
                }
                let p = params![
                    r.schedule_id.as_str(),
                    r.occurrence.as_millis(),
                    r.tenant_id.as_str(),
                    r.run_date,
                    r.missed,
                    now.as_millis()
                ];
                Ok(exec(conn, SQL_INSERT_RUN, p)? > 0)
            }))
            .await
    }

    async fn claim_run(&self, owner: &str, now: Timestamp, lease_ms: i64) -> Result<Option<ScheduleRun>, StoreError> {
        let owner = owner.to_owned();
        // Schedulers poll: look on a read connection first, so an idle poll
        // costs the writer nothing.
        let open = self
            .read(move |c| {
                let sql = "SELECT 1 FROM schedule_runs WHERE status = 'running' AND lease_until <= ?1 LIMIT 1";
                one(c, sql, [now.as_millis()], |_| Ok(()))
            })
            .await?;
        if open.is_none() {
            return Ok(None);
        }
        self.writer
            .write(Box::new(move |conn| {
                let sql = format!(
                    "UPDATE schedule_runs SET lease_until = ?1, lease_owner = ?3 WHERE (schedule_id, occurrence) = ( \
                     SELECT schedule_id, occurrence FROM schedule_runs \
                     WHERE status = 'running' AND lease_until <= ?2 ORDER BY created_at LIMIT 1) \
                     RETURNING {RUN_COLUMNS}"
                );
                one(conn, &sql, params![now.as_millis() + lease_ms, now.as_millis(), owner], run_row)
            }))
            .await
    }

    async fn recover_runs(&self) -> Result<u64, StoreError> {
        self.writer.write(Box::new(|conn| Ok(exec(conn, SQL_RECOVER_RUNS, [])? as u64))).await
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
        let (schedule, owner) = (schedule.to_string(), owner.to_owned());
        self.writer
            .write(Box::new(move |conn| {
                let params = params![
                    p.cursor,
                    p.accepted as i64,
                    p.skipped as i64,
                    p.error,
                    progress_status(&p),
                    lease_until.as_millis(),
                    p.finished.map(|_| now.as_millis()),
                    schedule,
                    occurrence.as_millis(),
                    owner
                ];
                Ok(exec(conn, SQL_RUN_PROGRESS, params)? > 0)
            }))
            .await
    }

    async fn purge_runs(&self, before: Timestamp) -> Result<u64, StoreError> {
        self.writer.write(Box::new(move |conn| Ok(exec(conn, SQL_PURGE_RUNS, [before.as_millis()])? as u64))).await
    }

    async fn list_runs(&self, schedule: &ScheduleId, limit: u32) -> Result<Vec<ScheduleRun>, StoreError> {
        let schedule = schedule.to_string();
        let sql =
            format!("SELECT {RUN_COLUMNS} FROM schedule_runs WHERE schedule_id = $1 ORDER BY occurrence DESC LIMIT $2");
        self.read(move |c| all(c, &sql, params![schedule, limit], run_row)).await
    }
}
