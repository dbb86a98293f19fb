//! Tenant webhook delivery: fans events out into deliveries, sends each as a
//! Standard Webhooks request (signed per attempt; `webhook-id` = the event
//! id, the same on every retry and replay), retries on the configured
//! schedule (honouring `Retry-After`), and dead-letters what exhausts it.
//! Each endpoint has at most `endpoint_concurrency` attempts in flight (the
//! store's claim enforces it), so a slow receiver does not delay the others.
//! A receiver answering `410 Gone` has its endpoint disabled. Every attempt
//! is stored with the start of the answer and visible through the API.

use crate::egress::Egress;
use rand::Rng;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use zapgate_backends::{AttemptOutcome, AttemptResult, DeliveryJob, WebhookStore};
use zapgate_domain::Timestamp;
use zapgate_domain::webhook::WebhookFormat;

use super::cloud_shape::{CloudShaper, cloud_payload};
use super::persist;

/// Deliveries claimed per round at most.
const BATCH: u32 = 256;
/// Attempts in flight per process, across endpoints: well above one
/// endpoint's limit, so a slow receiver holding its share leaves room.
const CONCURRENCY: usize = 256;
/// Events fanned out per transaction.
const FAN_OUT: u32 = 2000;
/// Longest wait honoured from a receiver's Retry-After.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);
/// How much of a receiver's answer each attempt keeps.
const RESPONSE_SNIPPET: usize = 512;
/// How often to look again while every due delivery's endpoint is at its
/// limit and no attempt here has finished (another process's may have).
const FULL_ENDPOINTS_POLL: Duration = Duration::from_millis(100);
/// After an attempt finishes at a full endpoint, how long to let others
/// finish too before claiming: one claim then takes all the room they made
/// instead of one claim (one write) per finished attempt.
const GATHER_FINISHED: Duration = Duration::from_millis(1);

pub struct WebhookSender {
    pub store: Arc<dyn WebhookStore>,
    pub egress: Egress,
    /// Delay before each retry; its length is the number of retries.
    pub schedule: Vec<Duration>,
    pub timeout: Duration,
    /// Attempts in flight per endpoint at most (across processes).
    pub endpoint_concurrency: u32,
    /// Reads what Cloud API-shaped deliveries need besides the event.
    pub cloud: CloudShaper,
    /// Carries out the deliveries of Chatwoot integrations.
    pub chatwoot: crate::chatwoot::forward::Forwarder,
}

pub async fn run(sender: Arc<WebhookSender>, mut shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    let changes = sender.store.changes();
    // Notified as each attempt here is recorded: its endpoint has room again.
    let finished = Arc::new(Notify::new());
    // A claimed delivery stays leased until its attempt is recorded (or a
    // restart): longer than any attempt can take.
    let lease_ms = (sender.timeout.as_millis() as i64) * 2 + 30_000;
    loop {
        if *shutdown.borrow() {
            break;
        }
        loop {
            match sender.store.fan_out(FAN_OUT, Timestamp::now()).await {
                Ok(n) if n >= FAN_OUT => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook fan-out failed");
                    break;
                }
            }
        }
        // Claim only what can start now, so no lease runs out while its
        // delivery waits for a free slot.
        let free = slots.available_permits().min(BATCH as usize) as u32;
        if free == 0 {
            let _ = slots.clone().acquire_owned().await;
            continue;
        }
        let per_endpoint = sender.endpoint_concurrency.max(1);
        let jobs = match sender.store.claim_deliveries(Timestamp::now(), free, per_endpoint, lease_ms).await {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(error = %e, "claiming webhook deliveries failed; backing off");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let full = jobs.len() as u32 == free;
        for job in jobs {
            let slot = slots.clone().acquire_owned().await.expect("never closed");
            tokio::spawn(attempt(sender.clone(), job, slot, finished.clone()));
        }
        if full {
            continue;
        }
        let wait = match sender.store.next_delivery_due().await {
            Ok(Some(t)) => Duration::from_millis((t.as_millis() - Timestamp::now().as_millis()).clamp(0, 5_000) as u64),
            _ => Duration::from_secs(5),
        };
        if wait.is_zero() {
            // Due deliveries the claim left: their endpoints have no room.
            // Look again when an attempt finishes, not in a busy loop.
            tokio::select! {
                _ = finished.notified() => tokio::time::sleep(GATHER_FINISHED).await,
                _ = changes.notified() => {}
                _ = tokio::time::sleep(FULL_ENDPOINTS_POLL) => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        tokio::select! {
            _ = changes.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
    }
    // Let attempts in flight finish and be recorded.
    let _ = tokio::time::timeout(sender.timeout + Duration::from_secs(5), slots.acquire_many(CONCURRENCY as u32)).await;
}

/// The body of a delivery: `{"type", "timestamp", "data"}` (Standard Webhooks).
pub fn payload(job: &DeliveryJob) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "type": job.event.event_type.as_str(),
        "timestamp": job.event.at,
        "data": job.event,
    }))
    .expect("events serialise")
}

/// A delivery's request, ready to send; or why it cannot be sent, and
/// whether it never will be (`true`: dead at once).
async fn prepare(
    sender: &WebhookSender,
    job: &DeliveryJob,
    at: Timestamp,
) -> Result<reqwest::RequestBuilder, (String, bool)> {
    let mut req = sender.egress.client().post(&job.url);
    for (k, v) in &job.headers {
        if !k.to_ascii_lowercase().starts_with("webhook-") && !k.eq_ignore_ascii_case("content-type") {
            req = req.header(k, v);
        }
    }
    let req = req.header("content-type", "application/json");
    let Some(app_secret) = &job.cloud_app_secret else {
        let body = payload(job);
        let msg_id = job.event.id.to_string();
        let ts = at.as_millis() / 1000;
        let signature: Vec<String> = job.secrets.iter().map(|s| s.sign(&msg_id, ts, &body)).collect();
        return Ok(req
            .header("webhook-id", &msg_id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature.join(" "))
            .body(body));
    };
    let facts = sender.cloud.facts(&job.event).await.map_err(|e| (e, false))?;
    let Some(value) = cloud_payload(&job.event, &facts) else {
        return Err((format!("the Cloud API has no webhook for {} events", job.event.event_type.as_str()), true));
    };
    let body = zapgate_domain::webhook::ascii_json(&value);
    let signature = zapgate_domain::webhook::hub_signature(app_secret, &body);
    Ok(req.header("x-hub-signature-256", signature).body(body))
}

async fn attempt(sender: Arc<WebhookSender>, job: DeliveryJob, _slot: OwnedSemaphorePermit, finished: Arc<Notify>) {
    let number = job.attempts + 1;
    let started = Instant::now();
    let at = Timestamp::now();
    let (result, response) = if job.format == WebhookFormat::Chatwoot {
        // Not one POST but Chatwoot API calls; the outcome is read the same way.
        // Bounded well inside the delivery's lease, so no other worker takes
        // it up while this one still works on it.
        let bounded = tokio::time::timeout(sender.timeout + Duration::from_secs(20), sender.chatwoot.deliver(&job));
        let done = bounded.await.unwrap_or_else(|_| Err(("Chatwoot took too long to answer".into(), true)));
        match done {
            Ok(status_code) => (AttemptResult::Succeeded { status_code }, None),
            Err((error, retryable)) => {
                let retry_at = if retryable { retry_at(&sender.schedule, job.schedule_index + 1, None) } else { None };
                (AttemptResult::Failed { status_code: None, error, retry_at }, None)
            }
        }
    } else {
        let sent = match (sender.egress.check_url(&job.url), prepare(&sender, &job, at).await) {
            (Err(e), _) => Err((e.to_string(), false)),
            (Ok(_), Err(unsendable)) => Err(unsendable),
            (Ok(_), Ok(req)) => req.send().await.map_err(|e| (describe(&e), false)),
        };
        outcome(&sender, &job, sent).await
    };
    let duration_ms = started.elapsed().as_millis() as u64;
    if let AttemptResult::Failed { retry_at: None, error, .. } | AttemptResult::Gone { error, .. } = &result {
        tracing::warn!(delivery = %job.id, endpoint = %job.endpoint_id, %error, "webhook delivery dead after {number} attempts");
    }
    let label = match &result {
        AttemptResult::Succeeded { .. } => "succeeded",
        AttemptResult::Failed { retry_at: Some(_), .. } => "retry",
        AttemptResult::Failed { retry_at: None, .. } | AttemptResult::Gone { .. } => "dead",
    };
    metrics::counter!("zapgate_webhook_attempts_total", "result" => label).increment(1);
    metrics::histogram!("zapgate_webhook_attempt_seconds").record(duration_ms as f64 / 1000.0);
    let outcome = AttemptOutcome { delivery: job.id.clone(), attempt: number, at, duration_ms, result, response };
    persist(|| sender.store.record_attempt(outcome.clone())).await;
    finished.notify_one();
}

/// The first [`RESPONSE_SNIPPET`] bytes of the receiver's answer as text
/// (invalid UTF-8 replaced), reading no more of it; `None` when empty or
/// unreadable.
async fn snippet(mut res: reqwest::Response) -> Option<String> {
    let mut buf = Vec::new();
    while buf.len() < RESPONSE_SNIPPET {
        match res.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            _ => break,
        }
    }
    buf.truncate(RESPONSE_SNIPPET);
    (!buf.is_empty()).then(|| String::from_utf8_lossy(&buf).into_owned())
}

/// When to try again after the `number`-th attempt since the last replay
/// failed; `None` when the schedule is used up. Jitter of ±20 % keeps
/// retries (e.g. of every delivery a receiver's outage failed at once) from
/// marching together.
fn retry_at(schedule: &[Duration], number: u32, retry_after: Option<Duration>) -> Option<Timestamp> {
    let base = *schedule.get(number as usize - 1)?;
    let jitter = rand::rng().random_range(0.8..=1.2);
    let delay = base.mul_f64(jitter).max(retry_after.unwrap_or_default().min(MAX_RETRY_AFTER));
    Some(Timestamp::now().plus_millis(delay.as_millis() as i64))
}

fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_redirect() {
        "redirect refused"
    } else {
        "request failed"
    };
    // The source chain says why (e.g. the egress guard refusing an address).
    let mut msg = kind.to_owned();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg = format!("{msg}: {s}");
        src = s.source();
    }
    msg
}

/// What a receiver's answer (or the failure to get one) means for the delivery.
async fn outcome(
    sender: &WebhookSender,
    job: &DeliveryJob,
    sent: Result<reqwest::Response, (String, bool)>,
) -> (AttemptResult, Option<String>) {
    match sent {
        Ok(res) if res.status().is_success() => {
            let result = AttemptResult::Succeeded { status_code: res.status().as_u16() };
            (result, snippet(res).await)
        }
        Ok(res) if res.status() == reqwest::StatusCode::GONE => {
            let result = AttemptResult::Gone {
                status_code: 410,
                error: "the receiver answered HTTP 410 Gone: the webhook was disabled".into(),
            };
            (result, snippet(res).await)
        }
        Ok(res) => {
            let code = res.status().as_u16();
            let retry_after = res
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let result = AttemptResult::Failed {
                status_code: Some(code),
                error: format!("the receiver answered HTTP {code}"),
                retry_at: retry_at(&sender.schedule, job.schedule_index + 1, retry_after),
            };
            (result, snippet(res).await)
        }
        Err((error, dead)) => {
            let retry_at = if dead { None } else { retry_at(&sender.schedule, job.schedule_index + 1, None) };
            (AttemptResult::Failed { status_code: None, error, retry_at }, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_ends_in_none_and_retry_after_is_a_floor() {
        let schedule = [Duration::from_secs(5), Duration::from_secs(30)];
        let now = Timestamp::now().as_millis();
        let first = retry_at(&schedule, 1, None).unwrap().as_millis() - now;
        assert!((3_900..=6_100).contains(&first), "{first}");
        assert!(retry_at(&schedule, 3, None).is_none(), "two retries, then dead");
        let floored = retry_at(&schedule, 1, Some(Duration::from_secs(120))).unwrap().as_millis() - now;
        assert!(floored >= 119_000);
    }

    #[test]
    fn retry_jitter_spreads_twenty_percent_either_way() {
        let schedule = [Duration::from_secs(100)];
        let delays: Vec<i64> = (0..2000)
            .map(|_| {
                let now = Timestamp::now().as_millis();
                retry_at(&schedule, 1, None).unwrap().as_millis() - now
            })
            .collect();
        let (min, max) = (*delays.iter().min().unwrap(), *delays.iter().max().unwrap());
        assert!(min >= 79_900 && max <= 120_100, "within ±20 %: {min}..{max}");
        assert!(min < 85_000 && max > 115_000, "and using most of it: {min}..{max}");
    }
}
