//! The media fetcher: downloads inbound attachments right after receipt
//! (provider media URLs expire within minutes) into the media store, through
//! the egress client (internal addresses refused, on redirects too), with a
//! size cap and a SHA-256 of what was stored. A failed fetch is retried a
//! few times, then the media is `failed` with the reason; the message it
//! came with is not affected.

use crate::egress::Egress;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use zapgate_backends::{MediaFetched, MediaIndex, MediaJob, MediaStore};
use zapgate_domain::Timestamp;
use zapgate_providers::MediaFetch;

/// Fetches at once per process.
const CONCURRENCY: usize = 8;
/// Delays before the retries of a failed fetch; then it is failed.
const RETRIES: [Duration; 3] = [Duration::from_secs(2), Duration::from_secs(15), Duration::from_secs(60)];
/// Redirects followed (each target checked like the first URL).
const MAX_REDIRECTS: usize = 3;
/// How often to look for new pending media while idle.
const IDLE_POLL: Duration = Duration::from_millis(200);

pub struct MediaFetcher {
    pub index: Arc<dyn MediaIndex>,
    pub store: Arc<dyn MediaStore>,
    pub egress: Egress,
    pub max_bytes: u64,
    pub timeout: Duration,
}

/// The media's record once it is no longer `pending` (fetched or failed),
/// or as it is after `within`: what a delivery naming a received attachment
/// waits for (the fetch usually takes milliseconds). None: no such media.
pub async fn settled_media(
    index: &dyn MediaIndex,
    tenant: &zapgate_domain::TenantId,
    id: &zapgate_domain::MediaId,
    within: Duration,
) -> Result<Option<zapgate_backends::MediaRecord>, zapgate_backends::StoreError> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let rec = index.get_media(tenant, id).await?;
        match rec {
            Some(r) if r.status == zapgate_backends::MediaStatus::Pending && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return Ok(other),
        }
    }
}

pub async fn run(f: Arc<MediaFetcher>, mut shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    // Longer than a fetch can take, so a lease only runs out after a crash.
    let lease_ms = f.timeout.as_millis() as i64 * (MAX_REDIRECTS as i64 + 2) + 30_000;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let free = slots.available_permits() as u32;
        let jobs = if free == 0 { Ok(Vec::new()) } else { f.index.claim_media(Timestamp::now(), free, lease_ms).await };
        let jobs = match jobs {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(error = %e, "claiming media to fetch failed; backing off");
                Vec::new()
            }
        };
        let idle = jobs.is_empty();
        for job in jobs {
            let slot = slots.clone().acquire_owned().await.expect("never closed");
            let f = f.clone();
            tokio::spawn(async move {
                fetch_one(&f, job).await;
                drop(slot);
            });
        }
        if idle {
            tokio::select! {
                _ = tokio::time::sleep(IDLE_POLL) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}

async fn fetch_one(f: &MediaFetcher, job: MediaJob) {
    let outcome = match fetch(f, &job).await {
        Ok((bytes, mime)) => {
            let sha256 = hex::encode(Sha256::digest(&bytes));
            match f.store.put(job.id.as_str(), &bytes).await {
                Ok(()) => {
                    zapgate_backends::crash_point("after_media_stored");
                    MediaFetched::Stored { size: bytes.len() as u64, sha256, mime_type: mime }
                }
                Err(e) => retry_or_fail(&job, format!("storing the media failed: {e}"), true),
            }
        }
        Err(Failure { error, retryable }) => retry_or_fail(&job, error, retryable),
    };
    let label = match &outcome {
        MediaFetched::Stored { .. } => "stored",
        MediaFetched::Retry { .. } => "retry",
        MediaFetched::Failed { error } => {
            tracing::warn!(media = %job.id, %error, "inbound media could not be fetched");
            "failed"
        }
    };
    metrics::counter!("zapgate_media_fetches_total", "result" => label).increment(1);
    if let Err(e) = f.index.media_fetched(&job.id, outcome, Timestamp::now()).await {
        // The lease runs out and the fetch is tried again.
        tracing::warn!(media = %job.id, error = %e, "recording a media fetch failed");
    }
}

fn retry_or_fail(job: &MediaJob, error: String, retryable: bool) -> MediaFetched {
    match RETRIES.get(job.attempts as usize).filter(|_| retryable) {
        Some(delay) => MediaFetched::Retry { error, at: Timestamp::now().plus_millis(delay.as_millis() as i64) },
        None => MediaFetched::Failed { error },
    }
}

pub(crate) struct Failure {
    pub(crate) error: String,
    pub(crate) retryable: bool,
}

impl Failure {
    fn permanent(error: impl Into<String>) -> Self {
        Self { error: error.into(), retryable: false }
    }
    fn transient(error: impl Into<String>) -> Self {
        Self { error: error.into(), retryable: true }
    }
}

/// The bytes and the content type the server gave them.
async fn fetch(f: &MediaFetcher, job: &MediaJob) -> Result<(Vec<u8>, Option<String>), Failure> {
    let recipe: MediaFetch =
        serde_json::from_value(job.fetch.clone()).map_err(|e| Failure::permanent(format!("bad fetch recipe: {e}")))?;
    match recipe {
        MediaFetch::Inline { base64 } => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(base64.trim())
                .map_err(|e| Failure::permanent(format!("the inline media is not base64: {e}")))?;
            if bytes.len() as u64 > f.max_bytes {
                return Err(too_big(f.max_bytes));
            }
            Ok((bytes, None))
        }
        MediaFetch::Get { url, headers } => download(f, &url, &headers).await,
        MediaFetch::Lookup { url, headers } => {
            let (answer, _) = download(f, &url, &headers).await?;
            let answer: serde_json::Value = serde_json::from_slice(&answer)
                .map_err(|_| Failure::permanent("the media lookup did not answer JSON"))?;
            let Some(next) = answer["url"].as_str() else {
                return Err(Failure::permanent("the media lookup answered no url"));
            };
            download(f, next, &headers).await
        }
    }
}

fn too_big(max: u64) -> Failure {
    Failure::permanent(format!("the media is larger than ZAPGATE_MEDIA_MAX_BYTES ({max} bytes)"))
}

/// GETs `url` (following a few redirects, each checked), reading at most
/// `max_bytes` of the answer.
pub(crate) async fn download(
    f: &MediaFetcher,
    url: &str,
    headers: &[(String, String)],
) -> Result<(Vec<u8>, Option<String>), Failure> {
    let mut url = f.egress.check_url(url).map_err(|e| Failure::permanent(e.to_string()))?;
    for _ in 0..=MAX_REDIRECTS {
        let mut req = f.egress.client().get(url.clone()).timeout(f.timeout);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let mut res = req.send().await.map_err(|e| Failure::transient(format!("fetching the media failed: {e}")))?;
        let status = res.status();
        if status.is_redirection() {
            let to = res.headers().get(reqwest::header::LOCATION).and_then(|l| l.to_str().ok());
            let to =
                to.and_then(|l| url.join(l).ok()).ok_or_else(|| Failure::permanent("a redirect without a location"))?;
            url = f.egress.check_url(to.as_str()).map_err(|e| Failure::permanent(e.to_string()))?;
            continue;
        }
        if !status.is_success() {
            let error = format!("the media server answered HTTP {}", status.as_u16());
            let retryable = status.is_server_error() || status.as_u16() == 429;
            return Err(Failure { error, retryable });
        }
        if res.content_length().is_some_and(|n| n > f.max_bytes) {
            return Err(too_big(f.max_bytes));
        }
        let mime = res
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned());
        let mut bytes = Vec::new();
        while let Some(chunk) =
            res.chunk().await.map_err(|e| Failure::transient(format!("reading the media failed: {e}")))?
        {
            if (bytes.len() + chunk.len()) as u64 > f.max_bytes {
                return Err(too_big(f.max_bytes));
            }
            bytes.extend_from_slice(&chunk);
        }
        return Ok((bytes, mime));
    }
    Err(Failure::permanent("too many redirects"))
}
