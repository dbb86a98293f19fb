//! Group commit of webhook attempts (see [`super::group_commit`]): the
//! results of the attempts that end at the same time are recorded in one
//! transaction — one `UPDATE … FROM UNNEST` of their deliveries, one
//! multi-row insert of the attempts — instead of one transaction each.

use super::group_commit::{GroupCommit, Shape, Statements};
use super::webhooks::raise_delivery_failed;
use crate::StoreError;
use crate::webhooks::AttemptOutcome;
use sqlx::{PgConnection, PgPool, Row};
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::Notify;

/// How attempts are batched: at most 256 in one transaction, 4 committing at once.
const SHAPE: Shape = Shape { metric: "zapgate_webhook_attempt_batch_size", max_batch: 256, in_flight: 4 };

/// The handle `WebhookStore::record_attempt` submits to.
pub(super) struct Attempts {
    batches: GroupCommit<AttemptOutcome, ()>,
}

impl Attempts {
    /// `committed` is notified after each batch: an endpoint has room for
    /// another attempt, a retry is to be scheduled, or a failure event waits
    /// for fan-out.
    pub fn start(pool: PgPool, committed: Arc<Notify>) -> Self {
        let run: Statements<_, _> = Arc::new(|conn, batch: &[AttemptOutcome]| {
            Box::pin(async move {
                record_batch(conn, batch).await?;
                Ok(vec![(); batch.len()])
            })
        });
        Self { batches: GroupCommit::transactional(SHAPE, pool, committed, run) }
    }

    pub async fn record(&self, outcome: AttemptOutcome) -> Result<(), StoreError> {
        self.batches.submit(outcome).await
    }
}

/// Records the attempts; returns the deliveries they moved on. Only an
/// attempt that continues its delivery's stored state counts: a stale one
/// (its lease expired and the delivery moved on, or its endpoint was deleted
/// meanwhile) changes nothing, and so does a second result for one delivery
/// in the batch. A delivery that died raises `webhook.delivery_failed`.
pub(super) async fn record_batch(
    conn: &mut PgConnection,
    outcomes: &[AttemptOutcome],
) -> Result<HashSet<String>, StoreError> {
    let mut seen = HashSet::with_capacity(outcomes.len());
    let firsts: Vec<&AttemptOutcome> = outcomes.iter().filter(|o| seen.insert(o.delivery.as_str())).collect();
    let results: Vec<_> = firsts.iter().map(|o| (o.result.code_and_error(), o.result.next_state())).collect();
    let rows = sqlx::query(
        "UPDATE webhook_deliveries d SET status = u.s, attempts = u.n, next_attempt_at = u.nx, leased = FALSE, \
         last_status_code = u.c, last_error = u.e, updated_at = u.a \
         FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::text[], $7::bigint[]) \
           AS u(id, s, n, nx, c, e, a) \
         WHERE d.id = u.id AND d.status = 'pending' AND d.attempts = u.n - 1 RETURNING d.id",
    )
    .bind(firsts.iter().map(|o| o.delivery.as_str()).collect::<Vec<_>>())
    .bind(results.iter().map(|(_, (status, _))| *status).collect::<Vec<_>>())
    .bind(firsts.iter().map(|o| i64::from(o.attempt)).collect::<Vec<_>>())
    .bind(results.iter().map(|(_, (_, next))| *next).collect::<Vec<_>>())
    .bind(results.iter().map(|((code, _), _)| code.map(i64::from)).collect::<Vec<_>>())
    .bind(results.iter().map(|((_, error), _)| error.as_deref()).collect::<Vec<_>>())
    .bind(firsts.iter().map(|o| o.at.as_millis()).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    let recorded: HashSet<String> = rows.iter().map(|r| r.try_get("id")).collect::<Result<_, _>>()?;
    let won: Vec<usize> = (0..firsts.len()).filter(|&i| recorded.contains(firsts[i].delivery.as_str())).collect();
    if won.is_empty() {
        return Ok(recorded);
    }
    sqlx::query(
        "INSERT INTO webhook_attempts (delivery_id, attempt, at, status_code, error, duration_ms, response) \
         SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[], $6::bigint[], \
                              $7::text[])",
    )
    .bind(won.iter().map(|&i| firsts[i].delivery.as_str()).collect::<Vec<_>>())
    .bind(won.iter().map(|&i| i64::from(firsts[i].attempt)).collect::<Vec<_>>())
    .bind(won.iter().map(|&i| firsts[i].at.as_millis()).collect::<Vec<_>>())
    .bind(won.iter().map(|&i| results[i].0.0.map(i64::from)).collect::<Vec<_>>())
    .bind(won.iter().map(|&i| results[i].0.1.as_deref()).collect::<Vec<_>>())
    .bind(won.iter().map(|&i| firsts[i].duration_ms as i64).collect::<Vec<_>>())
    .bind(won.iter().map(|&i| firsts[i].response.as_deref()).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    for &i in won.iter().filter(|&&i| results[i].1.0 == "dead") {
        let (code, error) = results[i].0.clone();
        raise_delivery_failed(&mut *conn, firsts[i], code, error).await?;
    }
    Ok(recorded)
}
