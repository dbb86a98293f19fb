//! `MediaIndex` on SQLite.

use super::SqliteBackend;
use super::rows::{all, exec, one};
use crate::StoreError;
use crate::media_index::*;
use crate::records::{MEDIA_COLUMNS, media};
use async_trait::async_trait;
use rusqlite::{Connection, params};
use zapgate_domain::{MediaId, TenantId, Timestamp};

#[async_trait]
impl MediaIndex for SqliteBackend {
    async fn add_media(&self, new: NewMedia, now: Timestamp) -> Result<MediaRecord, StoreError> {
        let (id, tenant) = (new.id.clone(), new.tenant_id.clone());
        self.writer.write(Box::new(move |conn| insert_media(conn, &new, now))).await?;
        self.get_media(&tenant, &id).await?.ok_or_else(|| StoreError::Corrupt("media vanished after insert".into()))
    }

    async fn get_media(&self, tenant: &TenantId, id: &MediaId) -> Result<Option<MediaRecord>, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        let sql = format!("SELECT {MEDIA_COLUMNS} FROM media WHERE id = ? AND tenant_id = ?");
        self.read(move |c| one(c, &sql, [id, tenant], |r| media(r))).await
    }

    async fn claim_media(&self, now: Timestamp, limit: u32, lease_ms: i64) -> Result<Vec<MediaJob>, StoreError> {
        self.writer
            .write(Box::new(move |conn| {
                all(
                    conn,
                    "UPDATE media SET next_attempt_at = ?1 WHERE id IN ( \
                       SELECT id FROM media WHERE status = 'pending' AND next_attempt_at <= ?2 \
                       ORDER BY next_attempt_at LIMIT ?3) \
                     RETURNING id, recipe, mime_type, attempts",
                    params![now.as_millis() + lease_ms, now.as_millis(), limit],
                    |r| {
                        let fetch: String = r.get(1)?;
                        Ok(MediaJob {
                            id: MediaId::from_trusted(r.get::<_, String>(0)?),
                            fetch: serde_json::from_str(&fetch).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                            mime_type: r.get(2)?,
                            attempts: r.get::<_, i64>(3)? as u32,
                        })
                    },
                )
            }))
            .await
    }

    async fn media_fetched(&self, id: &MediaId, outcome: MediaFetched, now: Timestamp) -> Result<(), StoreError> {
        let id = id.to_string();
        self.writer
            .write(Box::new(move |conn| {
                let now = now.as_millis();
                match outcome {
                    MediaFetched::Stored { size, sha256, mime_type } => exec(
                        conn,
                        "UPDATE media SET status = 'stored', recipe = NULL, next_attempt_at = NULL, error = NULL, \
                         size = ?, sha256 = ?, mime_type = COALESCE(mime_type, ?), attempts = attempts + 1, \
                         updated_at = ? WHERE id = ? AND status = 'pending'",
                        params![size as i64, sha256, mime_type, now, id],
                    )?,
                    MediaFetched::Retry { error, at } => exec(
                        conn,
                        "UPDATE media SET next_attempt_at = ?, error = ?, attempts = attempts + 1, updated_at = ? \
                         WHERE id = ? AND status = 'pending'",
                        params![at.as_millis(), error, now, id],
                    )?,
                    MediaFetched::Failed { error } => exec(
                        conn,
                        "UPDATE media SET status = 'failed', recipe = NULL, next_attempt_at = NULL, error = ?, \
                         attempts = attempts + 1, updated_at = ? WHERE id = ? AND status = 'pending'",
                        params![error, now, id],
                    )?,
                };
                Ok(())
            }))
            .await
    }

    async fn expired_media(&self, before: Timestamp, limit: u32) -> Result<Vec<MediaId>, StoreError> {
        self.read(move |c| {
            all(
                c,
                "SELECT id FROM media WHERE created_at < ? ORDER BY created_at LIMIT ?",
                params![before.as_millis(), limit],
                |r| Ok(MediaId::from_trusted(r.get::<_, String>(0)?)),
            )
        })
        .await
    }

    /// Leases and retry waits alike: a retry right after a restart is harmless.
    async fn recover_media(&self, now: Timestamp) -> Result<u64, StoreError> {
        self.writer
            .write(Box::new(move |conn| {
                let n = exec(
                    conn,
                    "UPDATE media SET next_attempt_at = ?1 WHERE status = 'pending' AND next_attempt_at > ?1",
                    [now.as_millis()],
                )?;
                Ok(n as u64)
            }))
            .await
    }

    async fn forget_media(&self, ids: &[MediaId]) -> Result<u64, StoreError> {
        let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        self.writer
            .write(Box::new(move |conn| {
                let mut n = 0;
                for id in &ids {
                    n += exec(conn, "DELETE FROM media WHERE id = ?", [id])? as u64;
                }
                Ok(n)
            }))
            .await
    }
}

/// Writes a media row (in the caller's transaction: the ingest's, for an
/// inbound attachment).
pub(super) fn insert_media(conn: &Connection, m: &NewMedia, now: Timestamp) -> Result<(), StoreError> {
    let (status, fetch, size, sha256, due) = match &m.state {
        NewMediaState::Fetch(f) => ("pending", Some(f.to_string()), None, None, Some(now.as_millis())),
        NewMediaState::Stored { size, sha256 } => ("stored", None, Some(*size as i64), Some(sha256.clone()), None),
    };
    exec(
        conn,
        "INSERT INTO media (id, tenant_id, instance_id, message_id, status, recipe, mime_type, filename, size, sha256, \
         next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        params![
            m.id.as_str(),
            m.tenant_id.as_str(),
            m.instance_id.as_ref().map(|i| i.as_str()),
            m.message_id.as_ref().map(|i| i.as_str()),
            status,
            fetch,
            m.mime_type,
            m.filename,
            size,
            sha256,
            due,
            now.as_millis(),
            now.as_millis()
        ],
    )?;
    Ok(())
}
