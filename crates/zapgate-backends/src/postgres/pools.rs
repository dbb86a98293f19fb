//! `ProviderPools` on PostgreSQL. Placement locks the candidate pools
//! (`FOR UPDATE`) before counting their instances, in a second statement
//! that sees every placement committed while it waited: concurrent
//! placements across processes never exceed a capacity.

use super::PgBackend;
use super::rows::provider;
use super::store::insert_instance;
use crate::pools::*;
use crate::{InstanceRecord, NewInstance, StoreError};
use async_trait::async_trait;
use sqlx::{AssertSqlSafe, PgConnection};
use zapgate_domain::{ProviderId, Timestamp};

const PROVIDER_COLUMNS: &str = "id, kind, name, settings, capacity, enabled, created_at, healthy, health_error, \
    health_checked_at, unhealthy_since, \
    (SELECT COUNT(*) FROM instances i WHERE i.provider_id = providers.id AND i.deleted_at IS NULL) AS instances";

async fn find(conn: &mut PgConnection, id: &str) -> Result<Option<ProviderRecord>, StoreError> {
    let sql = format!("SELECT {PROVIDER_COLUMNS} FROM providers WHERE id = $1 AND deleted_at IS NULL");
    let row = sqlx::query(AssertSqlSafe(sql)).bind(id).fetch_optional(conn).await?;
    row.as_ref().map(provider).transpose()
}

#[async_trait]
impl ProviderPools for PgBackend {
    async fn create_provider(&self, new: NewProvider) -> Result<ProviderRecord, StoreError> {
        let mut conn = self.pool().acquire().await?;
        sqlx::query(
            "INSERT INTO providers (id, kind, name, settings, capacity, enabled, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(new.id.as_str())
        .bind(&new.kind)
        .bind(&new.name)
        .bind(new.settings.to_string())
        .bind(i64::from(new.capacity))
        .bind(new.enabled)
        .bind(Timestamp::now().as_millis())
        .execute(&mut *conn)
        .await?;
        find(&mut conn, new.id.as_str()).await?.ok_or(StoreError::NotFound)
    }

    async fn list_providers(&self) -> Result<Vec<ProviderRecord>, StoreError> {
        let sql = format!("SELECT {PROVIDER_COLUMNS} FROM providers WHERE deleted_at IS NULL ORDER BY id");
        let rows = sqlx::query(AssertSqlSafe(sql)).fetch_all(self.pool()).await?;
        rows.iter().map(provider).collect()
    }

    async fn get_provider(&self, id: &ProviderId) -> Result<Option<ProviderRecord>, StoreError> {
        find(&mut *self.pool().acquire().await?, id.as_str()).await
    }

    async fn update_provider(
        &self,
        id: &ProviderId,
        change: ProviderChange,
    ) -> Result<Option<ProviderRecord>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let locked: Option<String> =
            sqlx::query_scalar("SELECT settings FROM providers WHERE id = $1 AND deleted_at IS NULL FOR UPDATE")
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        let Some(current) = locked else { return Ok(None) };
        let current: serde_json::Value =
            serde_json::from_str(&current).map_err(|e| StoreError::Corrupt(format!("providers.settings: {e}")))?;
        let settings = change.settings.as_ref().map(|s| merged(&current, s));
        sqlx::query(
            "UPDATE providers SET name = COALESCE($1, name), settings = COALESCE($2, settings), \
             capacity = COALESCE($3, capacity), enabled = COALESCE($4, enabled) WHERE id = $5",
        )
        .bind(change.name)
        .bind(settings.as_ref().map(|s| s.to_string()))
        .bind(change.capacity.map(i64::from))
        .bind(change.enabled)
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
        if let Some(settings) = &settings {
            sqlx::query(
                "UPDATE instances SET provider_config = (provider_config::jsonb || $1::jsonb)::text \
                 WHERE provider_id = $2 AND deleted_at IS NULL",
            )
            .bind(settings.to_string())
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        }
        let rec = find(&mut tx, id.as_str()).await?;
        tx.commit().await?;
        Ok(rec)
    }

    async fn delete_provider(&self, id: &ProviderId, now: Timestamp) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        // Locked first, so no placement lands between the count and the delete.
        let locked = sqlx::query("SELECT 1 FROM providers WHERE id = $1 AND deleted_at IS NULL FOR UPDATE")
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        if locked.is_none() {
            return Ok(false);
        }
        let current = find(&mut tx, id.as_str()).await?.ok_or(StoreError::NotFound)?;
        if current.instances > 0 {
            return Err(StoreError::Conflict(format!(
                "{} live instances are placed on this provider; delete or move them first",
                current.instances
            )));
        }
        sqlx::query("UPDATE providers SET deleted_at = $1 WHERE id = $2")
            .bind(now.as_millis())
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn record_health(&self, id: &ProviderId, error: Option<String>, now: Timestamp) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE providers SET healthy = $1::text IS NULL, health_error = $1, health_checked_at = $2, \
             unhealthy_since = CASE WHEN $1::text IS NULL THEN NULL ELSE COALESCE(unhealthy_since, $2) END \
             WHERE id = $3",
        )
        .bind(error)
        .bind(now.as_millis())
        .bind(id.as_str())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn report_circuits(
        &self,
        reporter: &str,
        open: Vec<CircuitReport>,
        forget_before: Timestamp,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM provider_circuits WHERE reporter = $1 OR reported_at < $2")
            .bind(reporter)
            .bind(forget_before.as_millis())
            .execute(&mut *tx)
            .await?;
        for c in &open {
            sqlx::query(
                "INSERT INTO provider_circuits (reporter, endpoint, provider, state, since, reported_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(reporter)
            .bind(&c.endpoint)
            .bind(&c.provider)
            .bind(&c.state)
            .bind(c.since.as_millis())
            .bind(c.reported_at.as_millis())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn circuits(&self, fresh_after: Timestamp) -> Result<Vec<CircuitReport>, StoreError> {
        let rows = sqlx::query(
            "SELECT provider, endpoint, state, since, reporter, reported_at FROM provider_circuits \
             WHERE reported_at > $1 ORDER BY endpoint, reporter",
        )
        .bind(fresh_after.as_millis())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                use sqlx::Row;
                Ok(CircuitReport {
                    provider: r.try_get("provider")?,
                    endpoint: r.try_get("endpoint")?,
                    state: r.try_get("state")?,
                    since: Timestamp::from_millis(r.try_get("since")?),
                    reporter: r.try_get("reporter")?,
                    reported_at: Timestamp::from_millis(r.try_get("reported_at")?),
                })
            })
            .collect()
    }

    async fn place_instance(&self, new: NewInstance, placement: Placement) -> Result<InstanceRecord, StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "SELECT 1 FROM providers WHERE kind = $1 AND enabled AND deleted_at IS NULL ORDER BY id FOR UPDATE",
        )
        .bind(&placement.kind)
        .fetch_all(&mut *tx)
        .await?;
        let sql = format!(
            "SELECT {PROVIDER_COLUMNS} FROM providers WHERE kind = $1 AND enabled AND healthy AND deleted_at IS NULL \
             ORDER BY instances, id"
        );
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(&placement.kind).fetch_all(&mut *tx).await?;
        let pools = rows.iter().map(provider).collect::<Result<Vec<_>, _>>()?;
        let rec = placed(new, pools, &placement)?;
        insert_instance(&mut tx, &rec).await?;
        tx.commit().await?;
        Ok(rec)
    }
}
