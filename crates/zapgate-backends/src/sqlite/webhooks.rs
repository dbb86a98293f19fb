//! `WebhookStore` on SQLite.

use super::SqliteBackend;
use super::rows::{self, EVENT_COLUMNS, all, exec, one};
use super::rows::{delivery, endpoint};
use crate::StoreError;
use crate::webhooks::*;
use async_trait::async_trait;
use rusqlite::{Connection, params};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::Notify;
use zapgate_domain::event::StatusDetail;
use zapgate_domain::webhook::{WebhookFormat, WebhookSecret};
use zapgate_domain::{DeliveryId, EndpointId, EventId, EventType, TenantId, Timestamp};

const ENDPOINT_COLUMNS: &str = "id, tenant_id, url, description, event_types, include_internal, instance_id, \
    statuses, headers, format, enabled, created_at, updated_at";
const DELIVERY_COLUMNS: &str = "id, endpoint_id, event_id, status, attempts, next_attempt_at, last_status_code, \
    last_error, created_at, updated_at";
const FANOUT_CURSOR: &str = "webhook_fanout";

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("serialisable")
}

#[async_trait]
impl WebhookStore for SqliteBackend {
    async fn create_endpoint(&self, new: NewEndpoint) -> Result<EndpointRecord, StoreError> {
        let now = Timestamp::now();
        self.writer
            .write(Box::new(move |conn| {
                let sql = format!(
                    "INSERT INTO webhook_endpoints (id, tenant_id, url, description, event_types, include_internal, \
                     headers, secret, from_event_seq, created_at, updated_at, format, app_secret, instance_id, \
                     statuses) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, (SELECT COALESCE(MAX(seq), 0) FROM events), ?9, ?9, \
                     ?10, ?11, ?12, ?13) \
                     RETURNING {ENDPOINT_COLUMNS}"
                );
                let rec = one(
                    conn,
                    &sql,
                    params![
                        new.id.as_str(),
                        new.tenant_id.as_str(),
                        new.url,
                        new.description,
                        to_json(&new.event_types),
                        new.include_internal,
                        to_json(&new.headers),
                        new.secret.reveal(),
                        now.as_millis(),
                        new.format.as_str(),
                        new.app_secret,
                        new.instance_id.as_ref().map(|i| i.as_str()),
                        to_json(&new.statuses)
                    ],
                    endpoint,
                )?;
                rec.ok_or_else(|| StoreError::Corrupt("insert returned nothing".into()))
            }))
            .await
    }

    async fn list_endpoints(&self, tenant: &TenantId) -> Result<Vec<EndpointRecord>, StoreError> {
        let tenant = tenant.to_string();
        self.read(move |c| {
            let sql = format!(
                "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE tenant_id = ? AND deleted_at IS NULL ORDER BY id"
            );
            all(c, &sql, [tenant], endpoint)
        })
        .await
    }

    async fn get_endpoint(&self, tenant: &TenantId, id: &EndpointId) -> Result<Option<EndpointRecord>, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.read(move |c| {
            let sql = format!(
                "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = ? AND tenant_id = ? AND deleted_at IS NULL"
            );
            one(c, &sql, [id, tenant], endpoint)
        })
        .await
    }

    async fn endpoint_secret(&self, tenant: &TenantId, id: &EndpointId) -> Result<Option<WebhookSecret>, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.read(move |c| {
            one(
                c,
                "SELECT secret FROM webhook_endpoints WHERE id = ? AND tenant_id = ? AND deleted_at IS NULL",
                [id, tenant],
                |r| secret(r.get::<_, String>(0)?),
            )
        })
        .await
    }

    async fn update_endpoint(
        &self,
        tenant: &TenantId,
        id: &EndpointId,
        change: EndpointChange,
    ) -> Result<Option<EndpointRecord>, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.writer
            .write(Box::new(move |conn| {
                let sql = format!(
                    "UPDATE webhook_endpoints SET url = COALESCE(?1, url), description = COALESCE(?2, description), \
                     event_types = COALESCE(?3, event_types), include_internal = COALESCE(?4, include_internal), \
                     headers = COALESCE(?5, headers), enabled = COALESCE(?6, enabled), updated_at = ?7, \
                     instance_id = CASE WHEN ?10 THEN ?11 ELSE instance_id END, \
                     statuses = COALESCE(?12, statuses) \
                     WHERE id = ?8 AND tenant_id = ?9 AND deleted_at IS NULL RETURNING {ENDPOINT_COLUMNS}"
                );
                let enabled = change.enabled;
                // COALESCE cannot set NULL: ?10 says whether ?11 replaces the instance.
                let instance = change.instance_id.as_ref().map(|i| i.as_ref().map(|i| i.as_str()));
                let rec = one(
                    conn,
                    &sql,
                    params![
                        change.url,
                        change.description,
                        change.event_types.as_ref().map(to_json),
                        change.include_internal,
                        change.headers.as_ref().map(to_json),
                        change.enabled,
                        Timestamp::now().as_millis(),
                        id,
                        tenant,
                        instance.is_some(),
                        instance.flatten(),
                        change.statuses.as_ref().map(to_json)
                    ],
                    endpoint,
                )?;
                // A disabled endpoint keeps its backlog, parked (no due time),
                // and gets it back when enabled again.
                if rec.is_some() {
                    match enabled {
                        Some(false) => {
                            exec(
                                conn,
                                "UPDATE webhook_deliveries SET next_attempt_at = NULL \
                                 WHERE endpoint_id = ? AND status = 'pending'",
                                [&id],
                            )?;
                        }
                        Some(true) => {
                            exec(
                                conn,
                                "UPDATE webhook_deliveries SET next_attempt_at = ? \
                                 WHERE endpoint_id = ? AND status = 'pending' AND next_attempt_at IS NULL",
                                params![Timestamp::now().as_millis(), id],
                            )?;
                        }
                        None => {}
                    }
                }
                Ok(rec)
            }))
            .await
    }

    async fn delete_endpoint(&self, tenant: &TenantId, id: &EndpointId) -> Result<bool, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.writer
            .write(Box::new(move |conn| {
                let now = Timestamp::now().as_millis();
                let n = exec(
                    conn,
                    "UPDATE webhook_endpoints SET deleted_at = ?, enabled = 0 WHERE id = ? AND tenant_id = ? \
                     AND deleted_at IS NULL",
                    params![now, id, tenant],
                )?;
                if n == 0 {
                    return Ok(false);
                }
                // What was still owed to it will never be sent.
                exec(
                    conn,
                    "UPDATE webhook_deliveries SET status = 'dead', last_error = 'endpoint deleted', updated_at = ? \
                     WHERE endpoint_id = ? AND status = 'pending'",
                    params![now, id],
                )?;
                Ok(true)
            }))
            .await
    }

    async fn rotate_secret(
        &self,
        tenant: &TenantId,
        id: &EndpointId,
        new: WebhookSecret,
        grace_until: Timestamp,
    ) -> Result<bool, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.writer
            .write(Box::new(move |conn| {
                let n = exec(
                    conn,
                    "UPDATE webhook_endpoints SET previous_secret = secret, previous_secret_until = ?1, secret = ?2, \
                     updated_at = ?3 WHERE id = ?4 AND tenant_id = ?5 AND deleted_at IS NULL",
                    params![grace_until.as_millis(), new.reveal(), Timestamp::now().as_millis(), id, tenant],
                )?;
                Ok(n == 1)
            }))
            .await
    }

    async fn fan_out(&self, limit: u32, now: Timestamp) -> Result<u32, StoreError> {
        self.writer.write(Box::new(move |conn| fan_out(conn, limit, now))).await
    }

    async fn claim_deliveries(
        &self,
        now: Timestamp,
        limit: u32,
        per_endpoint: u32,
        lease_ms: i64,
    ) -> Result<Vec<DeliveryJob>, StoreError> {
        self.writer.write(Box::new(move |conn| claim(conn, now, limit, per_endpoint, lease_ms))).await
    }

    async fn record_attempt(&self, o: AttemptOutcome) -> Result<(), StoreError> {
        self.writer
            .write(Box::new(move |conn| {
                let (code, error) = o.result.code_and_error();
                let (status, next) = o.result.next_state();
                // Only the attempt that continues the stored state counts: a
                // stale one (its lease expired and the delivery moved on, or
                // its endpoint was deleted meanwhile) changes nothing.
                let n = exec(
                    conn,
                    "UPDATE webhook_deliveries SET status = ?1, attempts = ?2, next_attempt_at = ?3, leased = 0, \
                     last_status_code = ?4, last_error = ?5, updated_at = ?6 \
                     WHERE id = ?7 AND status = 'pending' AND attempts = ?2 - 1",
                    params![status, o.attempt, next, code, error, o.at.as_millis(), o.delivery.as_str()],
                )?;
                if n == 0 {
                    return Ok(());
                }
                exec(
                    conn,
                    "INSERT INTO webhook_attempts (delivery_id, attempt, at, status_code, error, duration_ms, response) \
                     VALUES (?, ?, ?, ?, ?, ?, ?)",
                    params![
                        o.delivery.as_str(),
                        o.attempt,
                        o.at.as_millis(),
                        code,
                        error,
                        o.duration_ms as i64,
                        o.response
                    ],
                )?;
                if let AttemptResult::Gone { .. } = o.result {
                    disable_gone(conn, &o)?;
                }
                if status == "dead" {
                    raise_delivery_failed(conn, &o, code, error)?;
                }
                Ok(())
            }))
            .await
    }

    async fn next_delivery_due(&self) -> Result<Option<Timestamp>, StoreError> {
        self.read(|c| {
            let t: Option<i64> =
                c.query_row("SELECT MIN(next_attempt_at) FROM webhook_deliveries WHERE status = 'pending'", [], |r| {
                    r.get(0)
                })?;
            Ok(t.map(Timestamp::from_millis))
        })
        .await
    }

    async fn list_deliveries(
        &self,
        tenant: &TenantId,
        endpoint_id: &EndpointId,
        before: Option<DeliveryId>,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        let (tenant, endpoint_id) = (tenant.to_string(), endpoint_id.to_string());
        let before = before.map(|b| b.to_string()).unwrap_or_else(|| "dlv_g".into());
        self.read(move |c| {
            let sql = format!(
                "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE endpoint_id = ? AND tenant_id = ? AND id < ? \
                 ORDER BY id DESC LIMIT ?"
            );
            all(c, &sql, params![endpoint_id, tenant, before, limit], delivery)
        })
        .await
    }

    async fn get_delivery(
        &self,
        tenant: &TenantId,
        id: &DeliveryId,
    ) -> Result<Option<(DeliveryRecord, Vec<AttemptRecord>)>, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.read(move |c| {
            let sql = format!("SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = ? AND tenant_id = ?");
            let Some(d) = one(c, &sql, [&id, &tenant], delivery)? else { return Ok(None) };
            let attempts = all(
                c,
                "SELECT attempt, at, status_code, error, duration_ms, response FROM webhook_attempts \
                 WHERE delivery_id = ? ORDER BY attempt",
                [&id],
                |r| {
                    Ok(AttemptRecord {
                        attempt: r.get::<_, i64>(0)? as u32,
                        at: Timestamp::from_millis(r.get(1)?),
                        status_code: r.get::<_, Option<i64>>(2)?.map(|c| c as u16),
                        error: r.get(3)?,
                        duration_ms: r.get::<_, i64>(4)? as u64,
                        response: r.get(5)?,
                    })
                },
            )?;
            Ok(Some((d, attempts)))
        })
        .await
    }

    async fn replay_delivery(&self, tenant: &TenantId, id: &DeliveryId, now: Timestamp) -> Result<bool, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.writer
            .write(Box::new(move |conn| {
                let n = exec(
                    conn,
                    "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = ?1, updated_at = ?1, \
                     schedule_base = attempts, leased = 0 \
                     WHERE id = ?2 AND tenant_id = ?3 AND status != 'pending' \
                       AND endpoint_id IN (SELECT id FROM webhook_endpoints WHERE deleted_at IS NULL)",
                    params![now.as_millis(), id, tenant],
                )?;
                Ok(n == 1)
            }))
            .await
    }

    /// Due at once; a claim parks them if the endpoint is disabled, as it
    /// does a single replay's.
    async fn replay_dead(
        &self,
        tenant: &TenantId,
        endpoint_id: &EndpointId,
        since: Timestamp,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let (tenant, endpoint_id) = (tenant.to_string(), endpoint_id.to_string());
        self.writer
            .write(Box::new(move |conn| {
                let n = exec(
                    conn,
                    "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = ?1, updated_at = ?1, \
                     schedule_base = attempts, leased = 0 \
                     WHERE endpoint_id = ?2 AND status = 'dead' AND created_at >= ?3 AND tenant_id = ?4 \
                       AND EXISTS (SELECT 1 FROM webhook_endpoints WHERE id = ?2 AND tenant_id = ?4 \
                                   AND deleted_at IS NULL)",
                    params![now.as_millis(), endpoint_id, since.as_millis(), tenant],
                )?;
                Ok(n as u64)
            }))
            .await
    }

    async fn dead_deliveries(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            let n: i64 =
                c.query_row("SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'dead'", [], |r| r.get(0))?;
            Ok(n as u64)
        })
        .await
    }

    async fn purge_deliveries(&self, before: Timestamp, limit: u32) -> Result<u64, StoreError> {
        self.writer
            .write(Box::new(move |conn| {
                let ids = all(
                    conn,
                    "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries \
                     WHERE status != 'pending' AND updated_at < ? LIMIT ?) RETURNING id",
                    params![before.as_millis(), limit],
                    |r| Ok(r.get::<_, String>(0)?),
                )?;
                for id in &ids {
                    exec(conn, "DELETE FROM webhook_attempts WHERE delivery_id = ?", [id])?;
                }
                Ok(ids.len() as u64)
            }))
            .await
    }

    fn changes(&self) -> Arc<Notify> {
        self.committed.clone()
    }
}

/// A receiver that answered `410 Gone` wants nothing more: its endpoint is
/// disabled, and its pending deliveries parked, as `update_endpoint` does.
fn disable_gone(conn: &Connection, o: &AttemptOutcome) -> Result<(), StoreError> {
    let endpoint: Option<String> =
        one(conn, "SELECT endpoint_id FROM webhook_deliveries WHERE id = ?", [o.delivery.as_str()], |r| Ok(r.get(0)?))?;
    let Some(endpoint) = endpoint else { return Ok(()) };
    let n = exec(
        conn,
        "UPDATE webhook_endpoints SET enabled = 0, updated_at = ? WHERE id = ? AND enabled = 1 AND deleted_at IS NULL",
        params![o.at.as_millis(), endpoint],
    )?;
    if n > 0 {
        tracing::warn!(endpoint = %endpoint, delivery = %o.delivery, "webhook receiver answered 410 Gone: webhook disabled");
    }
    exec(
        conn,
        "UPDATE webhook_deliveries SET next_attempt_at = NULL, leased = 0 WHERE endpoint_id = ? AND status = 'pending'",
        [&endpoint],
    )?;
    Ok(())
}

/// Records `webhook.delivery_failed` for a delivery that just died, in the
/// same transaction, so it fans out like any event (to endpoints subscribed
/// to it: the tenant's failure URL). A failed failure notice raises nothing,
/// or a dead receiver would feed itself.
fn raise_delivery_failed(
    conn: &Connection,
    o: &AttemptOutcome,
    status_code: Option<u16>,
    error: Option<String>,
) -> Result<(), StoreError> {
    let row = one(
        conn,
        "SELECT d.endpoint_id, e.id, e.type, e.tenant_id, e.message_id, e.instance_id, e.status, e.chat_seq \
         FROM webhook_deliveries d JOIN events e ON e.id = d.event_id WHERE d.id = ?",
        [o.delivery.as_str()],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                super::rows::MessageRef {
                    id: r.get(4)?,
                    tenant_id: r.get(3)?,
                    instance_id: r.get(5)?,
                    chat_seq: r.get(7)?,
                },
                r.get::<_, String>(6)?,
            ))
        },
    )?;
    let Some((endpoint_id, event_id, kind, message, status)) = row else { return Ok(()) };
    if kind == EventType::WebhookDeliveryFailed.as_str() {
        return Ok(());
    }
    let detail = StatusDetail {
        attempts: Some(o.attempt),
        reason: error,
        delivery_id: Some(o.delivery.clone()),
        endpoint_id: Some(EndpointId::from_trusted(endpoint_id)),
        failed_event_id: Some(EventId::from_trusted(event_id)),
        status_code,
        ..crate::detail()
    };
    let status = status.parse().map_err(StoreError::Corrupt)?;
    super::rows::insert_event_of(conn, EventType::WebhookDeliveryFailed, &message, status, &detail, o.at)
}

/// An endpoint's stored format.
fn webhook_format(format: String) -> Result<WebhookFormat, StoreError> {
    WebhookFormat::parse(&format).ok_or_else(|| StoreError::Corrupt(format!("webhook format {format:?}")))
}

/// The app secret of a `cloud_api` endpoint (None for any other).
fn cloud_app_secret(format: WebhookFormat, app_secret: Option<String>) -> Option<String> {
    (format == WebhookFormat::CloudApi).then(|| app_secret.unwrap_or_default())
}

fn secret(s: String) -> Result<WebhookSecret, StoreError> {
    WebhookSecret::parse(&s).ok_or_else(|| StoreError::Corrupt("stored webhook secret".into()))
}

/// Turns events after the cursor into deliveries for the endpoints that
/// want them, then moves the cursor — one transaction, so an event is fanned
/// out exactly once.
fn fan_out(conn: &Connection, limit: u32, now: Timestamp) -> Result<u32, StoreError> {
    let cursor: i64 =
        one(conn, "SELECT position FROM cursors WHERE name = ?", [FANOUT_CURSOR], |r| Ok(r.get(0)?))?.unwrap_or(0);
    let last: i64 = conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?;
    if last <= cursor {
        return Ok(0);
    }
    let any_endpoint = one(
        conn,
        "SELECT 1 FROM webhook_endpoints WHERE enabled = 1 AND deleted_at IS NULL AND from_event_seq < ? LIMIT 1",
        [last],
        |_| Ok(()),
    )?
    .is_some();
    // With no endpoint that could want them, skip the events at once.
    let upto = if any_endpoint { last.min(cursor + i64::from(limit)) } else { last };
    if any_endpoint {
        exec(
            conn,
            "INSERT OR IGNORE INTO webhook_deliveries (id, tenant_id, endpoint_id, event_id, status, attempts, \
               next_attempt_at, created_at, updated_at) \
             SELECT printf('dlv_%012x', ?3) || lower(hex(randomblob(10))), e.tenant_id, w.id, e.id, 'pending', 0, \
                    ?3, ?3, ?3 \
             FROM events e JOIN webhook_endpoints w \
               ON w.tenant_id = e.tenant_id AND w.enabled = 1 AND w.deleted_at IS NULL AND e.seq > w.from_event_seq \
             WHERE e.seq > ?1 AND e.seq <= ?2 \
               AND COALESCE(json_extract(e.detail, '$.applied'), 1) = 1 \
               AND (w.include_internal = 1 OR e.type != 'message.status' \
                    OR e.status NOT IN ('scheduled','queued','sending','retry_wait')) \
               AND ((w.event_types = '[]' AND e.type != 'webhook.delivery_failed') \
                    OR EXISTS (SELECT 1 FROM json_each(w.event_types) WHERE value = e.type)) \
               AND (w.instance_id IS NULL OR w.instance_id = e.instance_id) \
               AND (w.statuses = '[]' OR e.type != 'message.status' \
                    OR e.status IN (SELECT value FROM json_each(w.statuses))) \
             ORDER BY e.seq",
            params![cursor, upto, now.as_millis()],
        )?;
    }
    exec(
        conn,
        "INSERT INTO cursors (name, position) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET position = ?2",
        params![FANOUT_CURSOR, upto],
    )?;
    Ok((upto - cursor) as u32)
}

/// Leases due deliveries, from each endpoint up to its room (`per_endpoint`
/// less its deliveries in flight), earliest due first. The endpoints are
/// found by skipping through `webhook_deliveries_endpoint_due` one endpoint
/// at a time, and each is asked only for what it has room for, so one
/// endpoint's huge backlog is never read in full nor fills the claim.
fn claim(
    conn: &Connection,
    now: Timestamp,
    limit: u32,
    per_endpoint: u32,
    lease_ms: i64,
) -> Result<Vec<DeliveryJob>, StoreError> {
    let open = all(
        conn,
        "WITH RECURSIVE eps(id) AS ( \
           SELECT MIN(endpoint_id) FROM webhook_deliveries WHERE status = 'pending' \
           UNION ALL \
           SELECT (SELECT MIN(d.endpoint_id) FROM webhook_deliveries d \
                   WHERE d.status = 'pending' AND d.endpoint_id > eps.id) \
           FROM eps WHERE eps.id IS NOT NULL) \
         SELECT eps.id, ?2 - (SELECT COUNT(*) FROM webhook_deliveries l WHERE l.endpoint_id = eps.id \
                              AND l.status = 'pending' AND l.leased = 1 AND l.next_attempt_at > ?1) AS room \
         FROM eps WHERE eps.id IS NOT NULL AND EXISTS (SELECT 1 FROM webhook_deliveries d \
           WHERE d.endpoint_id = eps.id AND d.status = 'pending' AND d.next_attempt_at <= ?1)",
        params![now.as_millis(), per_endpoint],
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
    )?;
    let mut picked: Vec<(i64, String)> = Vec::new();
    for (endpoint_id, room) in open.into_iter().filter(|(_, room)| *room > 0) {
        picked.extend(all(
            conn,
            "SELECT next_attempt_at, id FROM webhook_deliveries \
             WHERE endpoint_id = ? AND status = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?",
            params![endpoint_id, now.as_millis(), room.min(i64::from(limit))],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
        )?);
    }
    picked.sort_unstable();
    picked.truncate(limit as usize);
    let mut jobs = Vec::with_capacity(picked.len());
    for (_, id) in picked {
        let due = one(
            conn,
            "UPDATE webhook_deliveries SET next_attempt_at = ?1, leased = 1 WHERE id = ?2 \
             RETURNING id, tenant_id, endpoint_id, event_id, attempts, schedule_base",
            params![now.as_millis() + lease_ms, id],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)? as u32,
                    r.get::<_, i64>(5)? as u32,
                ))
            },
        )?;
        let Some((id, tenant, endpoint_id, event_id, attempts, base)) = due else { continue };
        match job(conn, now, &id, &tenant, &endpoint_id, &event_id, attempts, base) {
            Ok(Some(j)) => jobs.push(j),
            Ok(None) => {}
            // One unreadable row must not block every other delivery.
            Err(e) => {
                exec(
                    conn,
                    "UPDATE webhook_deliveries SET status = 'dead', leased = 0, last_error = ?, updated_at = ? \
                     WHERE id = ?",
                    params![format!("cannot be sent: {e}"), now.as_millis(), id],
                )?;
            }
        }
    }
    Ok(jobs)
}

#[allow(clippy::too_many_arguments)]
fn job(
    conn: &Connection,
    now: Timestamp,
    id: &str,
    tenant: &str,
    endpoint_id: &str,
    event_id: &str,
    attempts: u32,
    base: u32,
) -> Result<Option<DeliveryJob>, StoreError> {
    {
        let ep = one(
            conn,
            "SELECT url, headers, secret, previous_secret, previous_secret_until, enabled, format, app_secret \
             FROM webhook_endpoints WHERE id = ? AND deleted_at IS NULL",
            [endpoint_id],
            |r| {
                let headers: String = r.get(1)?;
                let mut secrets = vec![secret(r.get(2)?)?];
                if let (Some(prev), Some(until)) = (r.get::<_, Option<String>>(3)?, r.get::<_, Option<i64>>(4)?)
                    && until > now.as_millis()
                {
                    secrets.push(secret(prev)?);
                }
                let format = webhook_format(r.get(6)?)?;
                Ok((
                    r.get::<_, String>(0)?,
                    serde_json::from_str::<BTreeMap<String, String>>(&headers)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    secrets,
                    r.get::<_, bool>(5)?,
                    format,
                    cloud_app_secret(format, r.get(7)?),
                ))
            },
        )?;
        let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ?");
        let event = one(conn, &sql, [event_id], rows::event)?;
        match (ep, event) {
            (Some((url, headers, secrets, true, format, cloud_app_secret)), Some(event)) => Ok(Some(DeliveryJob {
                id: DeliveryId::from_trusted(id.to_owned()),
                tenant_id: TenantId::from_trusted(tenant.to_owned()),
                endpoint_id: EndpointId::from_trusted(endpoint_id.to_owned()),
                url,
                headers,
                secrets,
                format,
                cloud_app_secret,
                event,
                attempts,
                schedule_index: attempts - base.min(attempts),
            })),
            // Disabled meanwhile: park it until the endpoint is enabled again.
            (Some((.., false, _, _)), Some(_)) => {
                exec(conn, "UPDATE webhook_deliveries SET next_attempt_at = NULL, leased = 0 WHERE id = ?", [id])?;
                Ok(None)
            }
            _ => {
                exec(
                    conn,
                    "UPDATE webhook_deliveries SET status = 'dead', leased = 0, last_error = 'endpoint deleted', \
                     updated_at = ? WHERE id = ?",
                    params![now.as_millis(), id],
                )?;
                Ok(None)
            }
        }
    }
}
