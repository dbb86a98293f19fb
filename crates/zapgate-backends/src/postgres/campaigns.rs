//! `CampaignStore` on PostgreSQL, with the statements shared with SQLite
//! (`crate::campaigns`). An import batch locks its campaign row (so two
//! uploads at once number their rows apart) and writes its rows with one
//! multi-row statement each; claims use `SKIP LOCKED`.

use super::PgBackend;
use crate::StoreError;
use crate::campaigns::*;
use crate::schedules::AudienceMember;
use async_trait::async_trait;
use sqlx::{AssertSqlSafe, Row};
use zapgate_domain::{CampaignId, CampaignProgress, EventType, MessageId, MessageStatus, TenantId, Timestamp};

#[async_trait]
impl CampaignStore for PgBackend {
    async fn create_campaign(&self, c: CampaignRecord) -> Result<CampaignRecord, StoreError> {
        sqlx::query(SQL_CREATE_CAMPAIGN)
            .bind(c.id.as_str())
            .bind(c.tenant_id.as_str())
            .bind(&c.name)
            .bind(c.instance_id.as_str())
            .bind(c.template_id.as_str())
            .bind(c.priority.rank())
            .bind(c.rate_per_second.map(i64::from))
            .bind(c.start_at.map(Timestamp::as_millis))
            .bind(c.state.as_str())
            .bind(c.created_at.as_millis())
            .execute(self.pool())
            .await?;
        Ok(c)
    }

    async fn list_campaigns(&self, tenant: &TenantId) -> Result<Vec<CampaignRecord>, StoreError> {
        let sql = format!("SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE tenant_id = $1 ORDER BY id DESC");
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(tenant.as_str()).fetch_all(self.pool()).await?;
        rows.iter().map(campaign).collect()
    }

    async fn get_campaign(&self, tenant: &TenantId, id: &CampaignId) -> Result<Option<CampaignRecord>, StoreError> {
        let sql = format!("SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE id = $1 AND tenant_id = $2");
        let row =
            sqlx::query(AssertSqlSafe(sql)).bind(id.as_str()).bind(tenant.as_str()).fetch_optional(self.pool()).await?;
        row.as_ref().map(campaign).transpose()
    }

    async fn import_rows(
        &self,
        campaign: &CampaignId,
        rows: Vec<ImportRow>,
        now: Timestamp,
    ) -> Result<ImportCounts, StoreError> {
        let mut tx = self.pool().begin().await?;
        let sql = format!("{SQL_CAMPAIGN_ROWS} FOR UPDATE");
        let found = sqlx::query(AssertSqlSafe(sql)).bind(campaign.as_str()).fetch_optional(&mut *tx).await?;
        let Some(found) = found else { return Err(StoreError::NotFound) };
        let (state, next_row): (String, i64) = (found.try_get("state")?, found.try_get("next_row")?);
        if state != CampaignState::Draft.as_str() {
            return Err(StoreError::Conflict(format!("the campaign is {state}; recipients go into drafts")));
        }
        let plan = plan_import(next_row, rows);
        let column = |rows: &[(i64, String, String)], k: usize| -> Vec<String> {
            rows.iter().map(|r| if k == 1 { r.1.clone() } else { r.2.clone() }).collect()
        };
        let added = sqlx::query(
            "INSERT INTO campaign_recipients (campaign_id, row_no, recipient, variables) \
             SELECT $1, n, r, v FROM UNNEST($2::bigint[], $3::text[], $4::text[]) AS t(n, r, v) \
             ON CONFLICT DO NOTHING",
        )
        .bind(campaign.as_str())
        .bind(plan.valid.iter().map(|r| r.0).collect::<Vec<_>>())
        .bind(column(&plan.valid, 1))
        .bind(column(&plan.valid, 2))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if !plan.invalid.is_empty() {
            sqlx::query(
                "INSERT INTO campaign_rejects (campaign_id, row_no, field, message) \
                 SELECT $1, n, f, m FROM UNNEST($2::bigint[], $3::text[], $4::text[]) AS t(n, f, m) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(campaign.as_str())
            .bind(plan.invalid.iter().map(|r| r.0).collect::<Vec<_>>())
            .bind(column(&plan.invalid, 1))
            .bind(column(&plan.invalid, 2))
            .execute(&mut *tx)
            .await?;
        }
        let counts =
            ImportCounts { added, duplicates: plan.valid.len() as u64 - added, invalid: plan.invalid.len() as u64 };
        sqlx::query(SQL_COUNT_IMPORT)
            .bind(plan.rows())
            .bind(counts.added as i64)
            .bind(counts.duplicates as i64)
            .bind(counts.invalid as i64)
            .bind(now.as_millis())
            .bind(campaign.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(counts)
    }

    async fn list_rejects(
        &self,
        campaign: &CampaignId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<RejectedRow>, StoreError> {
        let rows = sqlx::query(SQL_LIST_REJECTS)
            .bind(campaign.as_str())
            .bind(after as i64)
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(reject).collect()
    }

    async fn set_campaign_state(
        &self,
        tenant: &TenantId,
        id: &CampaignId,
        from: &[CampaignState],
        to: CampaignState,
        now: Timestamp,
    ) -> Result<Option<CampaignRecord>, StoreError> {
        let sql = format!("{} RETURNING {CAMPAIGN_COLUMNS}", state_change_sql(from));
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(to.as_str())
            .bind(now.as_millis())
            .bind(id.as_str())
            .bind(tenant.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(c) = row.as_ref().map(campaign).transpose()? else { return Ok(None) };
        let rows = sqlx::query(SQL_CAMPAIGN_STATUSES).bind(c.id.as_str()).fetch_all(&mut *tx).await?;
        let statuses = rows.iter().map(status_count_of).collect::<Result<Vec<_>, _>>()?;
        let progress = CampaignProgress::tally(c.total, c.released, &statuses);
        let (kind, detail) = (EventType::CampaignStatus, status_detail(&c, progress));
        super::rows::insert_instance_event(&mut tx, kind, c.tenant_id.as_str(), c.instance_id.as_str(), &detail, now)
            .await?;
        tx.commit().await?;
        Ok(Some(c))
    }

    async fn claim_campaigns(
        &self,
        owner: &str,
        now: Timestamp,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<CampaignRecord>, StoreError> {
        let sql = format!(
            "UPDATE campaigns SET lease_owner = $1, lease_until = $2 WHERE id IN ( \
             SELECT id FROM campaigns WHERE ((state = 'running' AND (start_at IS NULL OR start_at <= $3)) \
             OR (state = 'cancelled' AND finished_at > $5)) \
             AND (lease_until <= $3 OR lease_owner = $1) ORDER BY lease_until LIMIT $4 FOR UPDATE SKIP LOCKED) \
             RETURNING {CAMPAIGN_COLUMNS}"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(owner)
            .bind(now.as_millis() + lease_ms)
            .bind(now.as_millis())
            .bind(i64::from(limit))
            .bind(now.as_millis() - CANCEL_SWEEP_MS)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(campaign).collect()
    }

    async fn next_recipients(
        &self,
        campaign: &CampaignId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, AudienceMember)>, StoreError> {
        let rows = sqlx::query(SQL_NEXT_RECIPIENTS)
            .bind(campaign.as_str())
            .bind(after as i64)
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(recipient).collect()
    }

    async fn advance_campaign(
        &self,
        id: &CampaignId,
        owner: &str,
        step: CursorStep,
    ) -> Result<Option<CampaignState>, StoreError> {
        let CursorStep { from, to, released, now, lease_until } = step;
        let row = sqlx::query(SQL_ADVANCE_CAMPAIGN)
            .bind(to as i64)
            .bind(released as i64)
            .bind(now.as_millis())
            .bind(lease_until.as_millis())
            .bind(id.as_str())
            .bind(owner)
            .bind(from as i64)
            .fetch_optional(self.pool())
            .await?;
        let state: Option<String> = row.map(|r| r.try_get(0)).transpose()?;
        Ok(state.as_deref().and_then(CampaignState::parse))
    }

    async fn record_campaign_progress(
        &self,
        c: &CampaignRecord,
        progress: CampaignProgress,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut conn = self.pool().acquire().await?;
        let detail = status_detail(c, progress);
        let (tenant, instance) = (c.tenant_id.as_str(), c.instance_id.as_str());
        super::rows::insert_instance_event(&mut conn, EventType::CampaignProgress, tenant, instance, &detail, now).await
    }

    async fn campaign_statuses(&self, id: &CampaignId) -> Result<Vec<(MessageStatus, u64)>, StoreError> {
        let rows = sqlx::query(SQL_CAMPAIGN_STATUSES).bind(id.as_str()).fetch_all(self.pool()).await?;
        rows.iter().map(status_count_of).collect()
    }

    async fn campaign_waiting(&self, id: &CampaignId) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(SQL_CAMPAIGN_WAITING).bind(id.as_str()).fetch_one(self.pool()).await?;
        Ok(n.max(0) as u64)
    }

    async fn campaign_pending_messages(&self, id: &CampaignId, limit: u32) -> Result<Vec<MessageId>, StoreError> {
        let rows =
            sqlx::query(SQL_CAMPAIGN_PENDING).bind(id.as_str()).bind(i64::from(limit)).fetch_all(self.pool()).await?;
        rows.iter().map(|r| Ok(MessageId::from_trusted(r.try_get::<String, _>(0)?))).collect()
    }
}
