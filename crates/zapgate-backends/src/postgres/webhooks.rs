//! `WebhookStore` on PostgreSQL: the same tables and behaviour as the SQLite
//! store, made safe for several processes sharing the database.
//!
//! - Fan-out drains `events_unfanned` (filled in each event's transaction)
//!   with `SKIP LOCKED` instead of walking `events` by a seq cursor, which
//!   would skip events committed out of seq order.
//! - Claims lock their rows with `SKIP LOCKED`, so two processes never lease
//!   the same delivery, and lock the endpoints they take from (skipping
//!   those another claim holds) before counting what each has in flight,
//!   so the per-endpoint limit holds across processes.
//! - Enabling an endpoint waits for the claims in flight on its deliveries
//!   (see `update_endpoint`), so none stays parked behind it.

use super::rows::{self, EVENT_COLUMNS};
use super::rows::{delivery, endpoint};
use super::{PgBackend, attempts};
use crate::StoreError;
use crate::webhooks::*;
use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, PgConnection, Row};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::Notify;
use zapgate_domain::event::StatusDetail;
use zapgate_domain::webhook::{WebhookFormat, WebhookSecret};
use zapgate_domain::{DeliveryId, EndpointId, EventId, EventType, MessageEvent, TenantId, Timestamp};

/// How often an idle webhook sender looks for other processes' new events.
const FAN_OUT_POLL_MS: i64 = 200;
const ENDPOINT_COLUMNS: &str = "id, tenant_id, url, description, event_types, include_internal, instance_id, \
    statuses, headers, format, enabled, created_at, updated_at";
const DELIVERY_COLUMNS: &str = "id, endpoint_id, event_id, status, attempts, next_attempt_at, last_status_code, \
    last_error, created_at, updated_at";

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("serialisable")
}

fn all<T>(rows: &[PgRow], map: impl Fn(&PgRow) -> Result<T, StoreError>) -> Result<Vec<T>, StoreError> {
    rows.iter().map(map).collect()
}

#[async_trait]
impl WebhookStore for PgBackend {
    async fn create_endpoint(&self, new: NewEndpoint) -> Result<EndpointRecord, StoreError> {
        let now = Timestamp::now();
        let sql = format!(
            "INSERT INTO webhook_endpoints (id, tenant_id, url, description, event_types, include_internal, \
             headers, secret, from_event_seq, created_at, updated_at, format, app_secret, instance_id, statuses) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, (SELECT COALESCE(MAX(seq), 0) FROM events), $9, $9, $10, $11, \
             $12, $13) \
             RETURNING {ENDPOINT_COLUMNS}"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(new.id.as_str())
            .bind(new.tenant_id.as_str())
            .bind(&new.url)
            .bind(&new.description)
            .bind(to_json(&new.event_types))
            .bind(new.include_internal)
            .bind(to_json(&new.headers))
            .bind(new.secret.reveal())
            .bind(now.as_millis())
            .bind(new.format.as_str())
            .bind(&new.app_secret)
            .bind(new.instance_id.as_ref().map(|i| i.as_str()))
            .bind(to_json(&new.statuses))
            .fetch_optional(self.pool())
            .await?;
        let row = row.ok_or_else(|| StoreError::Corrupt("insert returned nothing".into()))?;
        endpoint(&row)
    }

    async fn list_endpoints(&self, tenant: &TenantId) -> Result<Vec<EndpointRecord>, StoreError> {
        let sql = format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE tenant_id = $1 AND deleted_at IS NULL ORDER BY id"
        );
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(tenant.as_str()).fetch_all(self.pool()).await?;
        all(&rows, endpoint)
    }

    async fn get_endpoint(&self, tenant: &TenantId, id: &EndpointId) -> Result<Option<EndpointRecord>, StoreError> {
        let sql = format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL"
        );
        let row =
            sqlx::query(AssertSqlSafe(sql)).bind(id.as_str()).bind(tenant.as_str()).fetch_optional(self.pool()).await?;
        row.as_ref().map(endpoint).transpose()
    }

    async fn endpoint_secret(&self, tenant: &TenantId, id: &EndpointId) -> Result<Option<WebhookSecret>, StoreError> {
        let s: Option<String> = sqlx::query_scalar(
            "SELECT secret FROM webhook_endpoints WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL",
        )
        .bind(id.as_str())
        .bind(tenant.as_str())
        .fetch_optional(self.pool())
        .await?;
        s.map(secret).transpose()
    }

    /// Enabling waits for claims in flight on the endpoint's deliveries:
    /// a claim that read the endpoint as disabled parks its deliveries in
    /// its own transaction, which the un-parking update below must see. So
    /// when the endpoint was disabled, that update targets every pending
    /// delivery (blocking on rows a claim holds, then re-reading them), not
    /// only those already parked in its snapshot.
    async fn update_endpoint(
        &self,
        tenant: &TenantId,
        id: &EndpointId,
        change: EndpointChange,
    ) -> Result<Option<EndpointRecord>, StoreError> {
        let now = Timestamp::now().as_millis();
        let mut tx = self.pool().begin().await?;
        let was_enabled: Option<bool> = sqlx::query_scalar(
            "SELECT enabled FROM webhook_endpoints WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL FOR UPDATE",
        )
        .bind(id.as_str())
        .bind(tenant.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(was_enabled) = was_enabled else { return Ok(None) };
        let sql = format!(
            "UPDATE webhook_endpoints SET url = COALESCE($1, url), description = COALESCE($2, description), \
             event_types = COALESCE($3, event_types), include_internal = COALESCE($4, include_internal), \
             headers = COALESCE($5, headers), enabled = COALESCE($6, enabled), updated_at = $7, \
             instance_id = CASE WHEN $10 THEN $11 ELSE instance_id END, statuses = COALESCE($12, statuses) \
             WHERE id = $8 AND tenant_id = $9 AND deleted_at IS NULL RETURNING {ENDPOINT_COLUMNS}"
        );
        // COALESCE cannot set NULL: $10 says whether $11 replaces the instance.
        let instance = change.instance_id.as_ref().map(|i| i.as_ref().map(|i| i.as_str()));
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(change.url)
            .bind(change.description)
            .bind(change.event_types.as_ref().map(to_json))
            .bind(change.include_internal)
            .bind(change.headers.as_ref().map(to_json))
            .bind(change.enabled)
            .bind(now)
            .bind(id.as_str())
            .bind(tenant.as_str())
            .bind(instance.is_some())
            .bind(instance.flatten())
            .bind(change.statuses.as_ref().map(to_json))
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let rec = endpoint(&row)?;
        // A disabled endpoint keeps its backlog, parked (no due time),
        // and gets it back when enabled again.
        let mut due = false;
        match change.enabled {
            Some(false) => {
                sqlx::query(
                    "UPDATE webhook_deliveries SET next_attempt_at = NULL \
                     WHERE endpoint_id = $1 AND status = 'pending'",
                )
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
            }
            Some(true) => {
                let n = sqlx::query(
                    "UPDATE webhook_deliveries SET next_attempt_at = COALESCE(next_attempt_at, $1) \
                     WHERE endpoint_id = $2 AND status = 'pending' AND (next_attempt_at IS NULL OR $3)",
                )
                .bind(now)
                .bind(id.as_str())
                .bind(!was_enabled)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                due = n > 0;
            }
            None => {}
        }
        tx.commit().await?;
        if due {
            self.wake();
        }
        Ok(Some(rec))
    }

    async fn delete_endpoint(&self, tenant: &TenantId, id: &EndpointId) -> Result<bool, StoreError> {
        let now = Timestamp::now().as_millis();
        let mut tx = self.pool().begin().await?;
        let n = sqlx::query(
            "UPDATE webhook_endpoints SET deleted_at = $1, enabled = FALSE WHERE id = $2 AND tenant_id = $3 \
             AND deleted_at IS NULL",
        )
        .bind(now)
        .bind(id.as_str())
        .bind(tenant.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        // What was still owed to it will never be sent.
        sqlx::query(
            "UPDATE webhook_deliveries SET status = 'dead', last_error = 'endpoint deleted', updated_at = $1 \
             WHERE endpoint_id = $2 AND status = 'pending'",
        )
        .bind(now)
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn rotate_secret(
        &self,
        tenant: &TenantId,
        id: &EndpointId,
        new: WebhookSecret,
        grace_until: Timestamp,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE webhook_endpoints SET previous_secret = secret, previous_secret_until = $1, secret = $2, \
             updated_at = $3 WHERE id = $4 AND tenant_id = $5 AND deleted_at IS NULL",
        )
        .bind(grace_until.as_millis())
        .bind(new.reveal())
        .bind(Timestamp::now().as_millis())
        .bind(id.as_str())
        .bind(tenant.as_str())
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Turns up to `limit` events not yet fanned out into deliveries for the
    /// endpoints that want them, and removes them from `events_unfanned` —
    /// one statement (so one transaction), so an event is fanned out exactly
    /// once; `SKIP LOCKED` lets other processes take other events meanwhile.
    async fn fan_out(&self, limit: u32, now: Timestamp) -> Result<u32, StoreError> {
        let row = sqlx::query(
            "WITH taken AS ( \
               DELETE FROM events_unfanned WHERE event_seq IN ( \
                 SELECT event_seq FROM events_unfanned ORDER BY event_seq LIMIT $1 FOR UPDATE SKIP LOCKED) \
               RETURNING event_seq), \
             made AS ( \
               INSERT INTO webhook_deliveries (id, tenant_id, endpoint_id, event_id, status, attempts, \
                 next_attempt_at, created_at, updated_at) \
               SELECT 'dlv_' || lpad(to_hex($2::bigint), 12, '0') || substr(md5(gen_random_uuid()::text), 1, 20), \
                      e.tenant_id, w.id, e.id, 'pending', 0, $2, $2, $2 \
               FROM taken t JOIN events e ON e.seq = t.event_seq JOIN webhook_endpoints w \
                 ON w.tenant_id = e.tenant_id AND w.enabled AND w.deleted_at IS NULL AND e.seq > w.from_event_seq \
               WHERE COALESCE(e.detail::jsonb ->> 'applied', 'true') IN ('true', '1') \
                 AND (w.include_internal OR e.type <> 'message.status' \
                      OR e.status NOT IN ('scheduled','queued','sending','retry_wait')) \
                 AND ((w.event_types = '[]' AND e.type <> 'webhook.delivery_failed') \
                      OR EXISTS (SELECT 1 FROM jsonb_array_elements_text(w.event_types::jsonb) AS x(value) \
                                 WHERE x.value = e.type)) \
                 AND (w.instance_id IS NULL OR w.instance_id = e.instance_id) \
                 AND (w.statuses = '[]' OR e.type <> 'message.status' \
                      OR e.status IN (SELECT x.value FROM jsonb_array_elements_text(w.statuses::jsonb) AS x(value))) \
               ORDER BY e.seq \
               ON CONFLICT (endpoint_id, event_id) DO NOTHING \
               RETURNING 1) \
             SELECT (SELECT COUNT(*) FROM taken) AS events, (SELECT COUNT(*) FROM made) AS deliveries",
        )
        .bind(i64::from(limit))
        .bind(now.as_millis())
        .fetch_one(self.pool())
        .await?;
        let (events, deliveries): (i64, i64) = (row.try_get("events")?, row.try_get("deliveries")?);
        if deliveries > 0 {
            self.wake();
        }
        Ok(events as u32)
    }

    async fn claim_deliveries(
        &self,
        now: Timestamp,
        limit: u32,
        per_endpoint: u32,
        lease_ms: i64,
    ) -> Result<Vec<DeliveryJob>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let jobs = claim(&mut tx, now, limit, per_endpoint, lease_ms).await?;
        tx.commit().await?;
        Ok(jobs)
    }

    async fn record_attempt(&self, o: AttemptOutcome) -> Result<(), StoreError> {
        if matches!(o.result, AttemptResult::Gone { .. }) {
            // Rare, and it locks the endpoint before its deliveries: alone.
            self.record_gone(o).await?;
            // Room for another attempt at the endpoint, a retry to schedule,
            // or a failure event to fan out.
            self.wake();
            return Ok(());
        }
        self.attempts.record(o).await
    }

    async fn next_delivery_due(&self) -> Result<Option<Timestamp>, StoreError> {
        let t: Option<i64> =
            sqlx::query_scalar("SELECT MIN(next_attempt_at) FROM webhook_deliveries WHERE status = 'pending'")
                .fetch_one(self.pool())
                .await?;
        // Events committed by other processes wake nobody here: look again soon.
        let poll = Timestamp::now().as_millis() + FAN_OUT_POLL_MS;
        Ok(Some(Timestamp::from_millis(t.map_or(poll, |t| t.min(poll)))))
    }

    async fn list_deliveries(
        &self,
        tenant: &TenantId,
        endpoint_id: &EndpointId,
        before: Option<DeliveryId>,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        let before = before.map(|b| b.to_string()).unwrap_or_else(|| "dlv_g".into());
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE endpoint_id = $1 AND tenant_id = $2 AND id < $3 \
             ORDER BY id DESC LIMIT $4"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(endpoint_id.as_str())
            .bind(tenant.as_str())
            .bind(before)
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await?;
        all(&rows, delivery)
    }

    async fn get_delivery(
        &self,
        tenant: &TenantId,
        id: &DeliveryId,
    ) -> Result<Option<(DeliveryRecord, Vec<AttemptRecord>)>, StoreError> {
        let sql = format!("SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = $1 AND tenant_id = $2");
        let row =
            sqlx::query(AssertSqlSafe(sql)).bind(id.as_str()).bind(tenant.as_str()).fetch_optional(self.pool()).await?;
        let Some(d) = row.as_ref().map(delivery).transpose()? else { return Ok(None) };
        let rows = sqlx::query(
            "SELECT attempt, at, status_code, error, duration_ms, response FROM webhook_attempts \
             WHERE delivery_id = $1 ORDER BY attempt",
        )
        .bind(id.as_str())
        .fetch_all(self.pool())
        .await?;
        let attempts = all(&rows, |r| {
            Ok(AttemptRecord {
                attempt: r.try_get::<i64, _>("attempt")? as u32,
                at: Timestamp::from_millis(r.try_get("at")?),
                status_code: r.try_get::<Option<i64>, _>("status_code")?.map(|c| c as u16),
                error: r.try_get("error")?,
                duration_ms: r.try_get::<i64, _>("duration_ms")? as u64,
                response: r.try_get("response")?,
            })
        })?;
        Ok(Some((d, attempts)))
    }

    async fn replay_delivery(&self, tenant: &TenantId, id: &DeliveryId, now: Timestamp) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $1, updated_at = $1, \
             schedule_base = attempts, leased = FALSE \
             WHERE id = $2 AND tenant_id = $3 AND status <> 'pending' \
               AND endpoint_id IN (SELECT id FROM webhook_endpoints WHERE deleted_at IS NULL)",
        )
        .bind(now.as_millis())
        .bind(id.as_str())
        .bind(tenant.as_str())
        .execute(self.pool())
        .await?
        .rows_affected();
        if n == 1 {
            self.wake();
        }
        Ok(n == 1)
    }

    /// Due at once; a claim parks them if the endpoint is disabled (or
    /// kills them if it was deleted meanwhile), as it does a single replay's.
    async fn replay_dead(
        &self,
        tenant: &TenantId,
        endpoint_id: &EndpointId,
        since: Timestamp,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let n = sqlx::query(
            "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $1, updated_at = $1, \
             schedule_base = attempts, leased = FALSE \
             WHERE endpoint_id = $2 AND status = 'dead' AND created_at >= $3 AND tenant_id = $4 \
               AND EXISTS (SELECT 1 FROM webhook_endpoints WHERE id = $2 AND tenant_id = $4 AND deleted_at IS NULL)",
        )
        .bind(now.as_millis())
        .bind(endpoint_id.as_str())
        .bind(since.as_millis())
        .bind(tenant.as_str())
        .execute(self.pool())
        .await?
        .rows_affected();
        if n > 0 {
            self.wake();
        }
        Ok(n)
    }

    async fn dead_deliveries(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'dead'")
            .fetch_one(self.pool())
            .await?;
        Ok(n as u64)
    }

    /// The rows to delete are locked (`SKIP LOCKED`) and re-checked, so a
    /// delivery replayed meanwhile (pending again) is kept.
    async fn purge_deliveries(&self, before: Timestamp, limit: u32) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "WITH gone AS ( \
               DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries \
                 WHERE status <> 'pending' AND updated_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED) \
               RETURNING id), \
             attempts AS (DELETE FROM webhook_attempts WHERE delivery_id IN (SELECT id FROM gone)) \
             SELECT COUNT(*) FROM gone",
        )
        .bind(before.as_millis())
        .bind(i64::from(limit))
        .fetch_one(self.pool())
        .await?;
        Ok(n as u64)
    }

    fn changes(&self) -> Arc<Notify> {
        self.committed.clone()
    }
}

impl PgBackend {
    /// A `410 Gone` answer: the attempt, and the endpoint disabled.
    async fn record_gone(&self, o: AttemptOutcome) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        // Lock the endpoint before any of its deliveries, in the order
        // `update_endpoint` and `delete_endpoint` lock them.
        let endpoint: Option<String> = sqlx::query_scalar(
            "SELECT w.id FROM webhook_endpoints w JOIN webhook_deliveries d ON d.endpoint_id = w.id \
             WHERE d.id = $1 FOR NO KEY UPDATE OF w",
        )
        .bind(o.delivery.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let recorded = attempts::record_batch(&mut tx, std::slice::from_ref(&o)).await?;
        if let Some(endpoint) = endpoint.filter(|_| !recorded.is_empty()) {
            disable_gone(&mut tx, &endpoint, &o).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// A receiver that answered `410 Gone` wants nothing more: its endpoint
/// (locked by the caller) is disabled, and its pending deliveries parked,
/// as `update_endpoint` does.
async fn disable_gone(conn: &mut PgConnection, endpoint: &str, o: &AttemptOutcome) -> Result<(), StoreError> {
    let n = sqlx::query(
        "UPDATE webhook_endpoints SET enabled = FALSE, updated_at = $1 WHERE id = $2 AND enabled AND deleted_at IS NULL",
    )
    .bind(o.at.as_millis())
    .bind(endpoint)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if n > 0 {
        tracing::warn!(endpoint, delivery = %o.delivery, "webhook receiver answered 410 Gone: webhook disabled");
    }
    sqlx::query(
        "UPDATE webhook_deliveries SET next_attempt_at = NULL, leased = FALSE \
         WHERE endpoint_id = $1 AND status = 'pending'",
    )
    .bind(endpoint)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records `webhook.delivery_failed` for a delivery that just died, in the
/// same transaction, so it fans out like any event (to endpoints subscribed
/// to it: the tenant's failure URL). A failed failure notice raises nothing,
/// or a dead receiver would feed itself.
pub(super) async fn raise_delivery_failed(
    conn: &mut PgConnection,
    o: &AttemptOutcome,
    status_code: Option<u16>,
    error: Option<String>,
) -> Result<(), StoreError> {
    let row = sqlx::query(
        "SELECT d.endpoint_id, e.id AS event_id, e.type, e.tenant_id, e.message_id, e.instance_id, e.status, \
         e.chat_seq FROM webhook_deliveries d JOIN events e ON e.id = d.event_id WHERE d.id = $1",
    )
    .bind(o.delivery.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(()) };
    let kind: String = row.try_get("type")?;
    if kind == EventType::WebhookDeliveryFailed.as_str() {
        return Ok(());
    }
    let message = rows::MessageRef {
        id: row.try_get("message_id")?,
        tenant_id: row.try_get("tenant_id")?,
        instance_id: row.try_get("instance_id")?,
        chat_seq: row.try_get("chat_seq")?,
    };
    let detail = StatusDetail {
        attempts: Some(o.attempt),
        reason: error,
        delivery_id: Some(o.delivery.clone()),
        endpoint_id: Some(EndpointId::from_trusted(row.try_get("endpoint_id")?)),
        failed_event_id: Some(EventId::from_trusted(row.try_get("event_id")?)),
        status_code,
        ..crate::detail()
    };
    let status = row.try_get::<String, _>("status")?.parse().map_err(StoreError::Corrupt)?;
    rows::insert_event_of(conn, EventType::WebhookDeliveryFailed, &message, status, &detail, o.at).await
}

fn secret(s: String) -> Result<WebhookSecret, StoreError> {
    WebhookSecret::parse(&s).ok_or_else(|| StoreError::Corrupt("stored webhook secret".into()))
}

/// A delivery leased by [`claim`].
struct Due {
    id: String,
    tenant: String,
    endpoint_id: String,
    event_id: String,
    attempts: u32,
    base: u32,
    /// Its due time before the lease.
    due_at: i64,
}

/// What a claim needs of an endpoint.
struct Target {
    url: String,
    headers: BTreeMap<String, String>,
    secrets: Vec<WebhookSecret>,
    enabled: bool,
    format: WebhookFormat,
    cloud_app_secret: Option<String>,
}

/// What becomes of a claimed delivery.
enum Claimed {
    Send(Box<DeliveryJob>),
    /// Disabled meanwhile: park it until the endpoint is enabled again.
    Park,
    Deleted,
}

/// Leases due deliveries, from each endpoint up to its room (`per_endpoint`
/// less its deliveries in flight), earliest due first, then reads their
/// endpoints and events in one query each.
///
/// First the endpoints with due deliveries are found, skipping through
/// `webhook_deliveries_endpoint_due` one endpoint at a time, and locked
/// (those another process is claiming from are skipped). Then, in a second
/// statement (whose snapshot sees every lease committed before the locks
/// were taken), each locked endpoint's room is counted and a LATERAL takes
/// its earliest due deliveries up to it, so one endpoint's huge backlog is
/// never read in full nor fills the claim.
async fn claim(
    conn: &mut PgConnection,
    now: Timestamp,
    limit: u32,
    per_endpoint: u32,
    lease_ms: i64,
) -> Result<Vec<DeliveryJob>, StoreError> {
    let open: Vec<String> = sqlx::query_scalar(
        "WITH RECURSIVE eps(id) AS ( \
           SELECT MIN(endpoint_id) FROM webhook_deliveries WHERE status = 'pending' \
           UNION ALL \
           SELECT (SELECT MIN(d.endpoint_id) FROM webhook_deliveries d \
                   WHERE d.status = 'pending' AND d.endpoint_id > eps.id) \
           FROM eps WHERE eps.id IS NOT NULL) \
         SELECT w.id FROM webhook_endpoints w \
         WHERE w.id IN (SELECT id FROM eps WHERE id IS NOT NULL) \
           AND EXISTS (SELECT 1 FROM webhook_deliveries d \
                       WHERE d.endpoint_id = w.id AND d.status = 'pending' AND d.next_attempt_at <= $1) \
         FOR NO KEY UPDATE OF w SKIP LOCKED",
    )
    .bind(now.as_millis())
    .fetch_all(&mut *conn)
    .await?;
    if open.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "WITH room AS ( \
           SELECT e.id, $3::bigint - (SELECT COUNT(*) FROM webhook_deliveries l WHERE l.endpoint_id = e.id \
                                      AND l.status = 'pending' AND l.leased AND l.next_attempt_at > $2) AS free \
           FROM UNNEST($1::text[]) AS e(id)), \
         picked AS ( \
           SELECT c.id, c.next_attempt_at FROM room CROSS JOIN LATERAL ( \
             SELECT d.id, d.next_attempt_at FROM webhook_deliveries d \
             WHERE d.endpoint_id = room.id AND d.status = 'pending' AND d.next_attempt_at <= $2 \
             ORDER BY d.next_attempt_at LIMIT GREATEST(room.free, 0) FOR UPDATE SKIP LOCKED) c \
           ORDER BY c.next_attempt_at LIMIT $4) \
         UPDATE webhook_deliveries d SET next_attempt_at = $5, leased = TRUE FROM picked WHERE d.id = picked.id \
         RETURNING d.id, d.tenant_id, d.endpoint_id, d.event_id, d.attempts, d.schedule_base, \
                   picked.next_attempt_at AS due_at",
    )
    .bind(open)
    .bind(now.as_millis())
    .bind(i64::from(per_endpoint))
    .bind(i64::from(limit))
    .bind(now.as_millis() + lease_ms)
    .fetch_all(&mut *conn)
    .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut due = all(&rows, |r| {
        Ok(Due {
            id: r.try_get("id")?,
            tenant: r.try_get("tenant_id")?,
            endpoint_id: r.try_get("endpoint_id")?,
            event_id: r.try_get("event_id")?,
            attempts: r.try_get::<i64, _>("attempts")? as u32,
            base: r.try_get::<i64, _>("schedule_base")? as u32,
            due_at: r.try_get("due_at")?,
        })
    })?;
    // Earliest due first, as they were picked.
    due.sort_by_key(|d| d.due_at);

    let mut endpoint_ids: Vec<String> = due.iter().map(|d| d.endpoint_id.clone()).collect();
    endpoint_ids.sort_unstable();
    endpoint_ids.dedup();
    let targets: HashMap<String, Result<Target, String>> = sqlx::query(
        "SELECT id, url, headers, secret, previous_secret, previous_secret_until, enabled, format, app_secret \
         FROM webhook_endpoints WHERE id = ANY($1) AND deleted_at IS NULL",
    )
    .bind(endpoint_ids)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| Ok((r.try_get::<String, _>("id")?, target(r, now).map_err(|e| e.to_string()))))
    .collect::<Result<_, StoreError>>()?;

    let event_ids: Vec<String> = due.iter().map(|d| d.event_id.clone()).collect();
    let events: HashMap<String, Result<MessageEvent, String>> =
        sqlx::query(AssertSqlSafe(format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ANY($1)")))
            .bind(event_ids)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| Ok((r.try_get::<String, _>("id")?, rows::event(r).map_err(|e| e.to_string()))))
            .collect::<Result<_, StoreError>>()?;

    let mut jobs = Vec::with_capacity(due.len());
    let (mut park, mut deleted, mut broken, mut reasons) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for d in due {
        match job(&d, targets.get(&d.endpoint_id), events.get(&d.event_id)) {
            Ok(Claimed::Send(j)) => jobs.push(*j),
            Ok(Claimed::Park) => park.push(d.id),
            Ok(Claimed::Deleted) => deleted.push(d.id),
            // One unreadable row must not block every other delivery.
            Err(e) => {
                broken.push(d.id);
                reasons.push(format!("cannot be sent: {e}"));
            }
        }
    }
    if !park.is_empty() {
        sqlx::query("UPDATE webhook_deliveries SET next_attempt_at = NULL, leased = FALSE WHERE id = ANY($1)")
            .bind(park)
            .execute(&mut *conn)
            .await?;
    }
    if !deleted.is_empty() {
        sqlx::query(
            "UPDATE webhook_deliveries SET status = 'dead', leased = FALSE, last_error = 'endpoint deleted', \
             updated_at = $1 WHERE id = ANY($2)",
        )
        .bind(now.as_millis())
        .bind(deleted)
        .execute(&mut *conn)
        .await?;
    }
    if !broken.is_empty() {
        sqlx::query(
            "UPDATE webhook_deliveries d SET status = 'dead', leased = FALSE, last_error = u.reason, updated_at = $1 \
             FROM UNNEST($2::text[], $3::text[]) AS u(id, reason) WHERE d.id = u.id",
        )
        .bind(now.as_millis())
        .bind(broken)
        .bind(reasons)
        .execute(&mut *conn)
        .await?;
    }
    Ok(jobs)
}

/// An endpoint row as a claim needs it: the previous secret signs too
/// while its grace period lasts.
fn target(r: &PgRow, now: Timestamp) -> Result<Target, StoreError> {
    let headers: String = r.try_get("headers")?;
    let mut secrets = vec![secret(r.try_get("secret")?)?];
    if let (Some(prev), Some(until)) =
        (r.try_get::<Option<String>, _>("previous_secret")?, r.try_get::<Option<i64>, _>("previous_secret_until")?)
        && until > now.as_millis()
    {
        secrets.push(secret(prev)?);
    }
    let format: String = r.try_get("format")?;
    let format =
        WebhookFormat::parse(&format).ok_or_else(|| StoreError::Corrupt(format!("webhook format {format:?}")))?;
    Ok(Target {
        url: r.try_get("url")?,
        headers: serde_json::from_str::<BTreeMap<String, String>>(&headers)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        secrets,
        enabled: r.try_get("enabled")?,
        format,
        cloud_app_secret: (format == WebhookFormat::CloudApi)
            .then(|| r.try_get::<Option<String>, _>("app_secret"))
            .transpose()?
            .map(Option::unwrap_or_default),
    })
}

/// `target` is `None` when the endpoint is deleted; an `Err` is a row that
/// could not be read.
fn job(
    d: &Due,
    target: Option<&Result<Target, String>>,
    event: Option<&Result<MessageEvent, String>>,
) -> Result<Claimed, String> {
    let target = target.map(|t| t.as_ref().map_err(Clone::clone)).transpose()?;
    let event = event.map(|e| e.as_ref().map_err(Clone::clone)).transpose()?;
    match (target, event) {
        (Some(t), Some(event)) if t.enabled => Ok(Claimed::Send(Box::new(DeliveryJob {
            id: DeliveryId::from_trusted(d.id.clone()),
            tenant_id: TenantId::from_trusted(d.tenant.clone()),
            endpoint_id: EndpointId::from_trusted(d.endpoint_id.clone()),
            url: t.url.clone(),
            headers: t.headers.clone(),
            secrets: t.secrets.clone(),
            format: t.format,
            cloud_app_secret: t.cloud_app_secret.clone(),
            event: event.clone(),
            attempts: d.attempts,
            schedule_index: d.attempts - d.base.min(d.attempts),
        }))),
        // Disabled meanwhile: park it until the endpoint is enabled again.
        (Some(_), Some(_)) => Ok(Claimed::Park),
        _ => Ok(Claimed::Deleted),
    }
}
