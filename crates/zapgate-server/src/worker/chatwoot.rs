//! Turns the jobs Chatwoot's webhooks became into zapgate messages.
//!
//! A job is leased by the claim for longer than it can take, so one worker
//! at a time works on it (the lock on its key, the one the ingest takes,
//! only keeps a concurrent copy of the webhook from being answered wrong). Attachments are fetched through the egress client (Chatwoot
//! links redirect to its storage; each hop is checked) into the media store
//! and sent by media id, so the provider needs no route to Chatwoot. Every
//! accept carries an idempotency key derived from the job, and stored media
//! a media id derived from it too, so a job run twice (a crash after the
//! accept, before the job was marked done) sends nothing twice.

use super::media::{Failure, MediaFetcher, download};
use super::persist;
use super::signal::WorkSignal;
use crate::chatwoot::webhook::{Attachment, Outgoing};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use zapgate_backends::locks::acquire_waiting;
use zapgate_backends::{
    Accepted, ChatwootJob, ChatwootJobOutcome, ChatwootStore, Locks, NewMedia, NewMediaState, Store,
};
use zapgate_domain::message::{Media, Text};
use zapgate_domain::{ChatId, MediaId, MessageContent, MessageId, Priority, SendRequest, Timestamp};

/// Jobs claimed per round.
const BATCH: u32 = 16;
/// A claimed job is not handed out again for this long (only a crash lets it run out).
const LEASE_MS: i64 = 120_000;
/// How often an idle worker looks for jobs (ingest may be another process).
const POLL: Duration = Duration::from_millis(100);
/// Failed tries of a job before it is given up.
const MAX_ATTEMPTS: u32 = 6;
const PURGE_EVERY: Duration = Duration::from_secs(600);

pub struct ChatwootWorker {
    pub jobs: Arc<dyn ChatwootStore>,
    pub store: Arc<dyn Store>,
    pub locks: Arc<dyn Locks>,
    /// Downloads attachments and keeps them (egress, size cap, media store).
    pub media: Arc<MediaFetcher>,
    pub work: Arc<WorkSignal>,
    pub lock_ttl: Duration,
    pub retention: Duration,
}

pub async fn run(w: Arc<ChatwootWorker>, mut shutdown: watch::Receiver<bool>) {
    let mut last_purge = tokio::time::Instant::now();
    loop {
        if *shutdown.borrow() {
            break;
        }
        if last_purge.elapsed() >= PURGE_EVERY {
            last_purge = tokio::time::Instant::now();
            let before = Timestamp::now().plus_millis(-(w.retention.as_millis() as i64));
            if let Err(e) = w.jobs.purge_chatwoot_jobs(before, 10_000).await {
                tracing::warn!(error = %e, "purging old Chatwoot jobs failed");
            }
        }
        let jobs = match w.jobs.claim_chatwoot_jobs(Timestamp::now(), BATCH, LEASE_MS).await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!(error = %e, "claiming Chatwoot jobs failed");
                Vec::new()
            }
        };
        if jobs.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        futures::future::join_all(jobs.into_iter().map(|job| handle(&w, job))).await;
    }
}

async fn handle(w: &ChatwootWorker, job: ChatwootJob) {
    let key = format!("chatwoot:{}:{}", job.integration_id, job.chatwoot_message_id);
    // The ingest's lock may still run: it only guards the webhook's answer.
    let Some(token) = acquire_waiting(w.locks.as_ref(), &key, w.lock_ttl, None).await else { return };
    let outcome = match process(w, &job).await {
        Ok(message_id) => ChatwootJobOutcome::Done { message_id },
        Err(f) if f.retryable && job.attempts + 1 < MAX_ATTEMPTS => {
            let delay = Duration::from_secs(5 << job.attempts.min(6));
            ChatwootJobOutcome::Retry { at: Timestamp::now().plus_millis(delay.as_millis() as i64), error: f.error }
        }
        Err(f) => {
            tracing::warn!(integration = %job.integration_id, chatwoot_message = %job.chatwoot_message_id,
                error = %f.error, "a Chatwoot message could not be sent");
            ChatwootJobOutcome::Failed { error: f.error }
        }
    };
    let label = match &outcome {
        ChatwootJobOutcome::Done { .. } => "done",
        ChatwootJobOutcome::Retry { .. } => "retry",
        ChatwootJobOutcome::Failed { .. } => "failed",
    };
    metrics::counter!("zapgate_chatwoot_jobs_total", "result" => label).increment(1);
    let (integration, id) = (&job.integration_id, job.chatwoot_message_id.as_str());
    persist(|| w.jobs.finish_chatwoot_job(integration, id, outcome.clone(), Timestamp::now())).await;
    w.locks.release(&key, token).await;
}

/// Accepts the job's messages (an attachment each; the text as the first
/// one's caption when it takes one, else a message of its own); returns the
/// first message's id.
async fn process(w: &ChatwootWorker, job: &ChatwootJob) -> Result<MessageId, Failure> {
    let permanent = |error: String| Failure { error, retryable: false };
    let o: Outgoing = serde_json::from_value(job.payload.clone()).map_err(|e| permanent(format!("bad job: {e}")))?;
    let integration = w
        .jobs
        .integration(&job.integration_id)
        .await
        .map_err(|e| Failure { error: e.to_string(), retryable: true })?
        .ok_or_else(|| permanent("the Chatwoot integration was deleted".into()))?;
    if !integration.enabled {
        return Err(permanent("the Chatwoot integration is disabled".into()));
    }
    let to = ChatId::parse(&o.to).map_err(|e| permanent(e.to_string()))?;
    let mut contents = Vec::new();
    let mut caption = o.text.clone();
    for (n, a) in o.attachments.iter().enumerate() {
        let media = keep_attachment(w, job, n, a).await?;
        let (content, took_caption) = attachment_content(a, media, caption.clone());
        if took_caption {
            caption = None;
        }
        contents.push(content);
    }
    if let Some(body) = caption {
        // Text alone, or after an attachment that cannot carry it (audio):
        // it goes first, as the agent wrote it above the file.
        contents.insert(0, MessageContent::Text { text: Text { body, preview_url: false } });
    }
    let mut first = None;
    for (n, content) in contents.into_iter().enumerate() {
        content.validate().map_err(|e| permanent(e.to_string()))?;
        let request = SendRequest {
            instance_id: integration.instance_id.clone(),
            to: to.clone(),
            content,
            priority: Priority::Normal,
            send_at: None,
            expires_at: None,
            reply_to: None,
        };
        let key = format!("chatwoot:{}:{}:{n}", job.integration_id, job.chatwoot_message_id);
        let accept = super::bulk::keyed(&job.tenant_id, request, key, None);
        let id = match w.store.accept(accept).await {
            Ok(Accepted::New { id, .. } | Accepted::Replayed { id, .. }) => id,
            Ok(Accepted::UnknownInstance) => return Err(permanent("the integration's instance was deleted".into())),
            Ok(Accepted::KeyReused) => return Err(permanent("the job changed between two runs".into())),
            Err(e) => return Err(Failure { error: e.to_string(), retryable: true }),
        };
        w.work.mark(integration.instance_id.clone());
        first.get_or_insert(id);
    }
    first.ok_or_else(|| permanent("nothing to send".into()))
}

/// The job's `n`th attachment, downloaded and stored under a media id
/// derived from the job: a second run finds it instead of storing a copy.
async fn keep_attachment(w: &ChatwootWorker, job: &ChatwootJob, n: usize, a: &Attachment) -> Result<MediaId, Failure> {
    let seed = format!("chatwoot:{}:{}:{n}", job.integration_id, job.chatwoot_message_id);
    let id = MediaId::from_trusted(format!("{}{}", MediaId::PREFIX, hex::encode(&Sha256::digest(seed)[..16])));
    let transient = |e: String| Failure { error: e, retryable: true };
    if w.media.index.get_media(&job.tenant_id, &id).await.map_err(|e| transient(e.to_string()))?.is_some() {
        return Ok(id);
    }
    let (bytes, mime) = download(&w.media, &a.url, &[]).await?;
    w.media.store.put(id.as_str(), &bytes).await.map_err(|e| transient(format!("storing the attachment: {e}")))?;
    let new = NewMedia {
        id: id.clone(),
        tenant_id: job.tenant_id.clone(),
        instance_id: None,
        message_id: None,
        mime_type: mime.or_else(|| Some("application/octet-stream".into())),
        filename: file_name(&a.url),
        state: NewMediaState::Stored { size: bytes.len() as u64, sha256: hex::encode(Sha256::digest(&bytes)) },
    };
    w.media.index.add_media(new, Timestamp::now()).await.map_err(|e| transient(e.to_string()))?;
    Ok(id)
}

/// The last path segment of a URL, as a file name.
fn file_name(url: &str) -> Option<String> {
    let path = url.split(['?', '#']).next()?;
    let name = path.rsplit('/').next()?.trim();
    (!name.is_empty() && name.len() <= 255).then(|| name.to_owned())
}

/// The message for an attachment of Chatwoot's `file_type`, with `caption`
/// if the kind takes one; says whether it did.
fn attachment_content(a: &Attachment, id: MediaId, caption: Option<String>) -> (MessageContent, bool) {
    let media = |caption: Option<String>, filename: Option<String>| Media {
        link: String::new(),
        id: Some(id.to_string()),
        caption,
        filename,
    };
    let took = caption.is_some();
    match a.file_type.as_str() {
        "image" => (MessageContent::Image { image: media(caption, None) }, took),
        "video" => (MessageContent::Video { video: media(caption, None) }, took),
        "audio" => (MessageContent::Audio { audio: media(None, None) }, false),
        _ => (MessageContent::Document { document: media(caption, file_name(&a.url)) }, took),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachments_become_the_message_kind_chatwoot_names() {
        let id = MediaId::generate();
        let a = |t: &str| Attachment {
            url: "https://cw.example/blobs/x/fatura.pdf?disposition=inline".into(),
            file_type: t.into(),
        };
        let (c, took) = attachment_content(&a("image"), id.clone(), Some("olha".into()));
        assert!(took && matches!(&c, MessageContent::Image { image } if image.caption.as_deref() == Some("olha")));
        let (c, took) = attachment_content(&a("audio"), id.clone(), Some("ouve".into()));
        assert!(!took && matches!(c, MessageContent::Audio { .. }), "audio takes no caption");
        let (c, _) = attachment_content(&a("file"), id, None);
        let MessageContent::Document { document } = c else { panic!() };
        assert_eq!(document.filename.as_deref(), Some("fatura.pdf"));
    }
}
