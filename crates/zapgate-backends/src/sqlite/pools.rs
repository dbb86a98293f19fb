//! `ProviderPools` on SQLite: placement is one writer job, and the single
//! writer serialises placements, so a count read in the job stays true.

use super::SqliteBackend;
use super::rows::{all, exec, one, provider};
use super::store::insert_instance;
use crate::pools::*;
use crate::{InstanceRecord, NewInstance, StoreError};
use async_trait::async_trait;
use rusqlite::{Connection, params};
use zapgate_domain::{ProviderId, Timestamp};

const PROVIDER_COLUMNS: &str = "id, kind, name, settings, capacity, enabled, created_at, healthy, health_error, \
    health_checked_at, unhealthy_since, \
    (SELECT COUNT(*) FROM instances i WHERE i.provider_id = providers.id AND i.deleted_at IS NULL) AS instances";

fn find(conn: &Connection, id: &str) -> Result<Option<ProviderRecord>, StoreError> {
    let sql = format!("SELECT {PROVIDER_COLUMNS} FROM providers WHERE id = ? AND deleted_at IS NULL");
    one(conn, &sql, [id], provider)
}

#[async_trait]
impl ProviderPools for SqliteBackend {
    async fn create_provider(&self, new: NewProvider) -> Result<ProviderRecord, StoreError> {
        self.writer
            .write(Box::new(move |conn| {
                exec(
                    conn,
                    "INSERT INTO providers (id, kind, name, settings, capacity, enabled, created_at) \
                     VALUES (?, ?, ?, ?, ?, ?, ?)",
                    params![
                        new.id.as_str(),
                        new.kind,
                        new.name,
                        new.settings.to_string(),
                        new.capacity,
                        new.enabled,
                        Timestamp::now().as_millis()
                    ],
                )?;
                find(conn, new.id.as_str())?.ok_or(StoreError::NotFound)
            }))
            .await
    }

    async fn list_providers(&self) -> Result<Vec<ProviderRecord>, StoreError> {
        self.read(|c| {
            let sql = format!("SELECT {PROVIDER_COLUMNS} FROM providers WHERE deleted_at IS NULL ORDER BY id");
            all(c, &sql, [], provider)
        })
        .await
    }

    async fn get_provider(&self, id: &ProviderId) -> Result<Option<ProviderRecord>, StoreError> {
        let id = id.to_string();
        self.read(move |c| find(c, &id)).await
    }

    async fn update_provider(
        &self,
        id: &ProviderId,
        change: ProviderChange,
    ) -> Result<Option<ProviderRecord>, StoreError> {
        let id = id.to_string();
        self.writer
            .write(Box::new(move |conn| {
                let Some(current) = find(conn, &id)? else { return Ok(None) };
                let settings = change.settings.as_ref().map(|s| merged(&current.settings, s));
                exec(
                    conn,
                    "UPDATE providers SET name = COALESCE(?1, name), settings = COALESCE(?2, settings), \
                     capacity = COALESCE(?3, capacity), enabled = COALESCE(?4, enabled) WHERE id = ?5",
                    params![change.name, settings.as_ref().map(|s| s.to_string()), change.capacity, change.enabled, id],
                )?;
                if let Some(settings) = &settings {
                    exec(
                        conn,
                        "UPDATE instances SET provider_config = json_patch(provider_config, ?1) \
                         WHERE provider_id = ?2 AND deleted_at IS NULL",
                        params![settings.to_string(), id],
                    )?;
                }
                find(conn, &id)
            }))
            .await
    }

    async fn delete_provider(&self, id: &ProviderId, now: Timestamp) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.writer
            .write(Box::new(move |conn| {
                let Some(current) = find(conn, &id)? else { return Ok(false) };
                if current.instances > 0 {
                    return Err(StoreError::Conflict(format!(
                        "{} live instances are placed on this provider; delete or move them first",
                        current.instances
                    )));
                }
                exec(conn, "UPDATE providers SET deleted_at = ? WHERE id = ?", params![now.as_millis(), id])?;
                Ok(true)
            }))
            .await
    }

    async fn record_health(&self, id: &ProviderId, error: Option<String>, now: Timestamp) -> Result<(), StoreError> {
        let id = id.to_string();
        self.writer
            .write(Box::new(move |conn| {
                exec(
                    conn,
                    "UPDATE providers SET healthy = ?1 IS NULL, health_error = ?1, health_checked_at = ?2, \
                     unhealthy_since = CASE WHEN ?1 IS NULL THEN NULL ELSE COALESCE(unhealthy_since, ?2) END \
                     WHERE id = ?3",
                    params![error, now.as_millis(), id],
                )?;
                Ok(())
            }))
            .await
    }

    async fn report_circuits(
        &self,
        reporter: &str,
        open: Vec<CircuitReport>,
        forget_before: Timestamp,
    ) -> Result<(), StoreError> {
        let reporter = reporter.to_owned();
        self.writer
            .write(Box::new(move |conn| {
                exec(
                    conn,
                    "DELETE FROM provider_circuits WHERE reporter = ?1 OR reported_at < ?2",
                    params![reporter, forget_before.as_millis()],
                )?;
                for c in &open {
                    exec(
                        conn,
                        "INSERT INTO provider_circuits (reporter, endpoint, provider, state, since, reported_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![
                            reporter,
                            c.endpoint,
                            c.provider,
                            c.state,
                            c.since.as_millis(),
                            c.reported_at.as_millis()
                        ],
                    )?;
                }
                Ok(())
            }))
            .await
    }

    async fn circuits(&self, fresh_after: Timestamp) -> Result<Vec<CircuitReport>, StoreError> {
        self.read(move |c| {
            all(
                c,
                "SELECT provider, endpoint, state, since, reporter, reported_at FROM provider_circuits \
                 WHERE reported_at > ?1 ORDER BY endpoint, reporter",
                [fresh_after.as_millis()],
                |r| {
                    Ok(CircuitReport {
                        provider: r.get(0)?,
                        endpoint: r.get(1)?,
                        state: r.get(2)?,
                        since: Timestamp::from_millis(r.get(3)?),
                        reporter: r.get(4)?,
                        reported_at: Timestamp::from_millis(r.get(5)?),
                    })
                },
            )
        })
        .await
    }

    async fn place_instance(&self, new: NewInstance, placement: Placement) -> Result<InstanceRecord, StoreError> {
        self.writer
            .write(Box::new(move |conn| {
                let sql = format!(
                    "SELECT {PROVIDER_COLUMNS} FROM providers WHERE kind = ? AND enabled AND healthy AND deleted_at IS NULL \
                     ORDER BY instances, id"
                );
                let pools = all(conn, &sql, [&placement.kind], provider)?;
                let rec = placed(new, pools, &placement)?;
                insert_instance(conn, &rec)?;
                Ok(rec)
            }))
            .await
    }
}
