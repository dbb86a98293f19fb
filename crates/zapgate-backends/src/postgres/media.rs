//! `MediaIndex` on PostgreSQL.

use super::PgBackend;
use crate::StoreError;
use crate::media_index::*;
use crate::records::{MEDIA_COLUMNS, media};
use async_trait::async_trait;
use sqlx::{AssertSqlSafe, PgConnection, Row};
use zapgate_domain::{MediaId, TenantId, Timestamp};

#[async_trait]
impl MediaIndex for PgBackend {
    async fn add_media(&self, new: NewMedia, now: Timestamp) -> Result<MediaRecord, StoreError> {
        let mut conn = self.pool().acquire().await?;
        insert_media(&mut conn, &new, now).await?;
        drop(conn);
        self.get_media(&new.tenant_id, &new.id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("media vanished after insert".into()))
    }

    async fn get_media(&self, tenant: &TenantId, id: &MediaId) -> Result<Option<MediaRecord>, StoreError> {
        let sql = format!("SELECT {MEDIA_COLUMNS} FROM media WHERE id = $1 AND tenant_id = $2");
        let row =
            sqlx::query(AssertSqlSafe(sql)).bind(id.as_str()).bind(tenant.as_str()).fetch_optional(self.pool()).await?;
        row.as_ref().map(media).transpose()
    }

    async fn claim_media(&self, now: Timestamp, limit: u32, lease_ms: i64) -> Result<Vec<MediaJob>, StoreError> {
        let rows = sqlx::query(
            "UPDATE media SET next_attempt_at = $1 WHERE id IN ( \
               SELECT id FROM media WHERE status = 'pending' AND next_attempt_at <= $2 \
               ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING id, recipe, mime_type, attempts::bigint AS attempts",
        )
        .bind(now.as_millis() + lease_ms)
        .bind(now.as_millis())
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let fetch: String = r.try_get("recipe")?;
                Ok(MediaJob {
                    id: MediaId::from_trusted(r.try_get::<String, _>("id")?),
                    fetch: serde_json::from_str(&fetch).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    mime_type: r.try_get("mime_type")?,
                    attempts: r.try_get::<i64, _>("attempts")? as u32,
                })
            })
            .collect()
    }

    async fn media_fetched(&self, id: &MediaId, outcome: MediaFetched, now: Timestamp) -> Result<(), StoreError> {
        let now = now.as_millis();
        let q = match outcome {
            MediaFetched::Stored { size, sha256, mime_type } => sqlx::query(
                "UPDATE media SET status = 'stored', recipe = NULL, next_attempt_at = NULL, error = NULL, \
                 size = $1, sha256 = $2, mime_type = COALESCE(mime_type, $3), attempts = attempts + 1, \
                 updated_at = $4 WHERE id = $5 AND status = 'pending'",
            )
            .bind(size as i64)
            .bind(sha256)
            .bind(mime_type),
            MediaFetched::Retry { error, at } => sqlx::query(
                "UPDATE media SET next_attempt_at = $1, error = $2, attempts = attempts + 1, updated_at = $3 \
                 WHERE id = $4 AND status = 'pending'",
            )
            .bind(at.as_millis())
            .bind(error),
            MediaFetched::Failed { error } => sqlx::query(
                "UPDATE media SET status = 'failed', recipe = NULL, next_attempt_at = NULL, error = $1, \
                 attempts = attempts + 1, updated_at = $2 WHERE id = $3 AND status = 'pending'",
            )
            .bind(error),
        };
        q.bind(now).bind(id.as_str()).execute(self.pool()).await?;
        Ok(())
    }

    async fn expired_media(&self, before: Timestamp, limit: u32) -> Result<Vec<MediaId>, StoreError> {
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT id FROM media WHERE created_at < $1 ORDER BY created_at LIMIT $2")
                .bind(before.as_millis())
                .bind(i64::from(limit))
                .fetch_all(self.pool())
                .await?;
        Ok(ids.into_iter().map(MediaId::from_trusted).collect())
    }

    /// Other processes may be fetching: their leases run out if they crashed.
    async fn recover_media(&self, _now: Timestamp) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn forget_media(&self, ids: &[MediaId]) -> Result<u64, StoreError> {
        let ids: Vec<&str> = ids.iter().map(|i| i.as_str()).collect();
        let done = sqlx::query("DELETE FROM media WHERE id = ANY($1)").bind(&ids).execute(self.pool()).await?;
        Ok(done.rows_affected())
    }
}

/// Writes a media row (in the caller's transaction: the ingest's, for an
/// inbound attachment).
pub(super) async fn insert_media(conn: &mut PgConnection, m: &NewMedia, now: Timestamp) -> Result<(), StoreError> {
    let (status, fetch, size, sha256, due) = match &m.state {
        NewMediaState::Fetch(f) => ("pending", Some(f.to_string()), None, None, Some(now.as_millis())),
        NewMediaState::Stored { size, sha256 } => ("stored", None, Some(*size as i64), Some(sha256.clone()), None),
    };
    sqlx::query(
        "INSERT INTO media (id, tenant_id, instance_id, message_id, status, recipe, mime_type, filename, size, sha256, \
         next_attempt_at, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)",
    )
    .bind(m.id.as_str())
    .bind(m.tenant_id.as_str())
    .bind(m.instance_id.as_ref().map(|i| i.as_str()))
    .bind(m.message_id.as_ref().map(|i| i.as_str()))
    .bind(status)
    .bind(fetch)
    .bind(&m.mime_type)
    .bind(&m.filename)
    .bind(size)
    .bind(sha256)
    .bind(due)
    .bind(now.as_millis())
    .execute(&mut *conn)
    .await?;
    Ok(())
}
