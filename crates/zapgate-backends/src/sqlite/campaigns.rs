//! `CampaignStore` on SQLite, with the statements shared with PostgreSQL
//! (`crate::campaigns`). One writer: an import batch, a claim and a cursor
//! move are each one job, serialised.

use super::SqliteBackend;
use super::rows::{all, exec, insert_instance_event, one};
use crate::StoreError;
use crate::campaigns::*;
use crate::schedules::AudienceMember;
use async_trait::async_trait;
use rusqlite::{Row, params};
use zapgate_domain::{CampaignId, CampaignProgress, EventType, MessageId, MessageStatus, TenantId, Timestamp};

fn campaign_row(row: &Row<'_>) -> Result<CampaignRecord, StoreError> {
    campaign(row)
}
fn recipient_row(row: &Row<'_>) -> Result<(u64, AudienceMember), StoreError> {
    recipient(row)
}
fn reject_row(row: &Row<'_>) -> Result<RejectedRow, StoreError> {
    reject(row)
}
fn status_count(row: &Row<'_>) -> Result<(MessageStatus, u64), StoreError> {
    status_count_of(row)
}

#[async_trait]
impl CampaignStore for SqliteBackend {
    async fn create_campaign(&self, c: CampaignRecord) -> Result<CampaignRecord, StoreError> {
        let rec = c.clone();
        self.writer
            .write(Box::new(move |conn| {
                let p = params![
                    c.id.as_str(),
                    c.tenant_id.as_str(),
                    c.name,
                    c.instance_id.as_str(),
                    c.template_id.as_str(),
                    c.priority.rank(),
                    c.rate_per_second,
                    c.start_at.map(Timestamp::as_millis),
                    c.state.as_str(),
                    c.created_at.as_millis()
                ];
                exec(conn, SQL_CREATE_CAMPAIGN, p).map(|_| ())
            }))
            .await?;
        Ok(rec)
    }

    async fn list_campaigns(&self, tenant: &TenantId) -> Result<Vec<CampaignRecord>, StoreError> {
        let tenant = tenant.to_string();
        let sql = format!("SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE tenant_id = $1 ORDER BY id DESC");
        self.read(move |c| all(c, &sql, [tenant], campaign_row)).await
    }

    async fn get_campaign(&self, tenant: &TenantId, id: &CampaignId) -> Result<Option<CampaignRecord>, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        let sql = format!("SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE id = $1 AND tenant_id = $2");
        self.read(move |c| one(c, &sql, [id, tenant], campaign_row)).await
    }

    async fn import_rows(
        &self,
        campaign: &CampaignId,
        rows: Vec<ImportRow>,
        now: Timestamp,
    ) -> Result<ImportCounts, StoreError> {
        let campaign = campaign.to_string();
        self.writer
            .write(Box::new(move |conn| {
                let found =
                    one(conn, SQL_CAMPAIGN_ROWS, [&campaign], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
                let Some((state, next_row)) = found else { return Err(StoreError::NotFound) };
                if state != CampaignState::Draft.as_str() {
                    return Err(StoreError::Conflict(format!("the campaign is {state}; recipients go into drafts")));
                }
                let plan = plan_import(next_row, rows);
                let mut added = 0u64;
                for (n, to, vars) in &plan.valid {
                    added += exec(conn, SQL_INSERT_RECIPIENT, params![campaign, n, to, vars])? as u64;
                }
                for (n, field, message) in &plan.invalid {
                    exec(conn, SQL_INSERT_REJECT, params![campaign, n, field, message])?;
                }
                let counts = ImportCounts {
                    added,
                    duplicates: plan.valid.len() as u64 - added,
                    invalid: plan.invalid.len() as u64,
                };
                let p = params![
                    plan.rows(),
                    counts.added as i64,
                    counts.duplicates as i64,
                    counts.invalid as i64,
                    now.as_millis(),
                    campaign
                ];
                exec(conn, SQL_COUNT_IMPORT, p)?;
                Ok(counts)
            }))
            .await
    }

    async fn list_rejects(
        &self,
        campaign: &CampaignId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<RejectedRow>, StoreError> {
        let campaign = campaign.to_string();
        self.read(move |c| all(c, SQL_LIST_REJECTS, params![campaign, after as i64, limit], reject_row)).await
    }

    async fn set_campaign_state(
        &self,
        tenant: &TenantId,
        id: &CampaignId,
        from: &[CampaignState],
        to: CampaignState,
        now: Timestamp,
    ) -> Result<Option<CampaignRecord>, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        let sql = state_change_sql(from);
        self.writer
            .write(Box::new(move |conn| {
                if exec(conn, &sql, params![to.as_str(), now.as_millis(), id, tenant])? == 0 {
                    return Ok(None);
                }
                let sql = format!("SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE id = $1");
                let Some(c) = one(conn, &sql, [&id], campaign_row)? else { return Ok(None) };
                let statuses = all(conn, SQL_CAMPAIGN_STATUSES, [&id], status_count)?;
                let detail = status_detail(&c, CampaignProgress::tally(c.total, c.released, &statuses));
                let kind = EventType::CampaignStatus;
                insert_instance_event(conn, kind, c.tenant_id.as_str(), c.instance_id.as_str(), &detail, now)?;
                Ok(Some(c))
            }))
            .await
    }

    async fn claim_campaigns(
        &self,
        owner: &str,
        now: Timestamp,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<CampaignRecord>, StoreError> {
        let owner = owner.to_owned();
        let recent = now.as_millis() - CANCEL_SWEEP_MS;
        // Releasers poll: look on a read connection first, so an idle tick
        // costs the one writer nothing.
        let any = self
            .read(move |c| {
                let sql = "SELECT 1 FROM campaigns WHERE state = 'running' \
                           OR (state = 'cancelled' AND finished_at > ?1) LIMIT 1";
                one(c, sql, [recent], |_| Ok(()))
            })
            .await?;
        if any.is_none() {
            return Ok(Vec::new());
        }
        self.writer
            .write(Box::new(move |conn| {
                let sql = format!(
                    "UPDATE campaigns SET lease_owner = ?1, lease_until = ?2 WHERE id IN ( \
                     SELECT id FROM campaigns WHERE ((state = 'running' AND (start_at IS NULL OR start_at <= ?3)) \
                     OR (state = 'cancelled' AND finished_at > ?5)) \
                     AND (lease_until <= ?3 OR lease_owner = ?1) ORDER BY lease_until LIMIT ?4) \
                     RETURNING {CAMPAIGN_COLUMNS}"
                );
                let p = params![owner, now.as_millis() + lease_ms, now.as_millis(), limit, recent];
                all(conn, &sql, p, campaign_row)
            }))
            .await
    }

    async fn next_recipients(
        &self,
        campaign: &CampaignId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, AudienceMember)>, StoreError> {
        let campaign = campaign.to_string();
        self.read(move |c| all(c, SQL_NEXT_RECIPIENTS, params![campaign, after as i64, limit], recipient_row)).await
    }

    async fn advance_campaign(
        &self,
        id: &CampaignId,
        owner: &str,
        step: CursorStep,
    ) -> Result<Option<CampaignState>, StoreError> {
        let (id, owner) = (id.to_string(), owner.to_owned());
        let CursorStep { from, to, released, now, lease_until } = step;
        self.writer
            .write(Box::new(move |conn| {
                let p = params![
                    to as i64,
                    released as i64,
                    now.as_millis(),
                    lease_until.as_millis(),
                    id,
                    owner,
                    from as i64
                ];
                let state = one(conn, SQL_ADVANCE_CAMPAIGN, p, |r| Ok(r.get::<_, String>(0)?))?;
                Ok(state.as_deref().and_then(CampaignState::parse))
            }))
            .await
    }

    async fn record_campaign_progress(
        &self,
        c: &CampaignRecord,
        progress: CampaignProgress,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let (tenant, instance, detail) =
            (c.tenant_id.to_string(), c.instance_id.to_string(), status_detail(c, progress));
        self.writer
            .write(Box::new(move |conn| {
                insert_instance_event(conn, EventType::CampaignProgress, &tenant, &instance, &detail, now)
            }))
            .await
    }

    async fn campaign_statuses(&self, id: &CampaignId) -> Result<Vec<(MessageStatus, u64)>, StoreError> {
        let id = id.to_string();
        self.read(move |c| all(c, SQL_CAMPAIGN_STATUSES, [id], status_count)).await
    }

    async fn campaign_waiting(&self, id: &CampaignId) -> Result<u64, StoreError> {
        let id = id.to_string();
        let n = self.read(move |c| one(c, SQL_CAMPAIGN_WAITING, [id], |r| Ok(r.get::<_, i64>(0)?))).await?;
        Ok(n.unwrap_or(0).max(0) as u64)
    }

    async fn campaign_pending_messages(&self, id: &CampaignId, limit: u32) -> Result<Vec<MessageId>, StoreError> {
        let id = id.to_string();
        self.read(move |c| {
            all(c, SQL_CAMPAIGN_PENDING, params![id, limit], |r| Ok(MessageId::from_trusted(r.get::<_, String>(0)?)))
        })
        .await
    }
}
