//! Provider statuses, set-based: the statuses of a batch (an ingest batch,
//! the parked statuses of a batch of send results, or a single report) are
//! applied with a fixed number of statements whatever their number — the
//! provider-id locks, one read of their messages (locked), one update of the
//! messages that changed, one insert of the parked ones and one of the
//! events. The forward-only rule is the domain's
//! (`MessageStatus::provider_update_applies`), applied in report order, so
//! several statuses of one message in a batch end where they would one by
//! one.

use super::rows::{self, MessageRef};
use super::store::lock_provider_ids;
use crate::{ProviderStatusReport, StatusApplied, StoreError, detail};
use sqlx::{PgConnection, Row};
use std::collections::HashMap;
use zapgate_domain::event::StatusDetail;
use zapgate_domain::{MessageStatus, Timestamp};

/// A message the batch's statuses apply to, as it stands after them.
struct Target {
    msg: MessageRef,
    status: MessageStatus,
    changed: bool,
    at: i64,
    error_code: Option<String>,
    error_message: Option<String>,
}

/// Applies `reports` in order; what each did.
pub(super) async fn apply_statuses(
    conn: &mut PgConnection,
    reports: &[ProviderStatusReport],
) -> Result<Vec<StatusApplied>, StoreError> {
    if reports.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = reports.iter().map(|r| r.provider_message_id.as_str()).collect();
    lock_provider_ids(&mut *conn, &ids).await?;
    let rows = sqlx::query(
        "SELECT id, tenant_id, instance_id, chat_seq, status, provider_message_id FROM messages \
         WHERE provider_message_id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    // By (provider id, instance): a provider id is unique per instance only.
    let mut targets: Vec<Target> = Vec::with_capacity(rows.len());
    let mut by_key: HashMap<(String, String), usize> = HashMap::with_capacity(rows.len());
    for r in &rows {
        let msg = MessageRef::from_row(r)?;
        let status: String = r.try_get("status")?;
        by_key.insert((r.try_get("provider_message_id")?, msg.instance_id.clone()), targets.len());
        targets.push(Target {
            msg,
            status: status.parse().map_err(StoreError::Corrupt)?,
            changed: false,
            at: 0,
            error_code: None,
            error_message: None,
        });
    }
    let find = |r: &ProviderStatusReport| -> Option<usize> {
        match &r.instance_id {
            Some(instance) => by_key.get(&(r.provider_message_id.clone(), instance.to_string())).copied(),
            // A parked status names no instance: the message that took its provider id.
            None => by_key.iter().find(|((p, _), _)| *p == r.provider_message_id).map(|(_, i)| *i),
        }
    };
    let mut applied = Vec::with_capacity(reports.len());
    let mut parked = Vec::new();
    let mut events: Vec<(usize, MessageStatus, StatusDetail, Timestamp)> = Vec::new();
    for r in reports {
        let Some(t) = find(r) else {
            parked.push(r);
            applied.push(StatusApplied::Parked);
            continue;
        };
        let target = &mut targets[t];
        let changes = target.status.provider_update_applies(r.status);
        if changes {
            target.status = r.status;
            target.changed = true;
            target.at = r.at.as_millis();
            target.error_code = r.error_code.clone().or(target.error_code.take());
            target.error_message = r.error_message.clone().or(target.error_message.take());
        }
        let detail = StatusDetail {
            provider_message_id: Some(r.provider_message_id.clone()),
            error_code: r.error_code.clone(),
            reason: r.error_message.clone(),
            applied: changes,
            ..detail()
        };
        events.push((t, r.status, detail, r.at));
        applied.push(if changes { StatusApplied::Applied } else { StatusApplied::Ignored });
    }
    let changed: Vec<&Target> = targets.iter().filter(|t| t.changed).collect();
    if !changed.is_empty() {
        sqlx::query(
            "UPDATE messages m SET status = u.s, status_rank = u.r, updated_at = u.a, \
             error_code = COALESCE(u.c, m.error_code), error_message = COALESCE(u.e, m.error_message) \
             FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::text[]) \
               AS u(id, s, r, a, c, e) WHERE m.id = u.id",
        )
        .bind(changed.iter().map(|t| t.msg.id.as_str()).collect::<Vec<_>>())
        .bind(changed.iter().map(|t| t.status.as_str()).collect::<Vec<_>>())
        .bind(changed.iter().map(|t| t.status.rank()).collect::<Vec<_>>())
        .bind(changed.iter().map(|t| t.at).collect::<Vec<_>>())
        .bind(changed.iter().map(|t| t.error_code.as_deref()).collect::<Vec<_>>())
        .bind(changed.iter().map(|t| t.error_message.as_deref()).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    if !parked.is_empty() {
        let now = Timestamp::now().as_millis();
        sqlx::query(
            "INSERT INTO parked_statuses (provider_message_id, status, at, error_code, error_message, received_at) \
             SELECT p, s, a, c, e, $6 FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[]) \
               WITH ORDINALITY AS u(p, s, a, c, e, n) ORDER BY n",
        )
        .bind(parked.iter().map(|r| r.provider_message_id.as_str()).collect::<Vec<_>>())
        .bind(parked.iter().map(|r| r.status.as_str()).collect::<Vec<_>>())
        .bind(parked.iter().map(|r| r.at.as_millis()).collect::<Vec<_>>())
        .bind(parked.iter().map(|r| r.error_code.as_deref()).collect::<Vec<_>>())
        .bind(parked.iter().map(|r| r.error_message.as_deref()).collect::<Vec<_>>())
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    let rows: Vec<_> = events.iter().map(|(t, s, d, at)| (&targets[*t].msg, *s, d, *at)).collect();
    rows::insert_status_events(conn, &rows).await?;
    Ok(applied)
}
