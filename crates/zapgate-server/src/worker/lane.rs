//! One lane per instance: paces sends with the instance's GCRA limit, keeps
//! at most `concurrency` provider calls in flight, and records each outcome
//! before settling its queue entry. A throttled lane only slows itself.

use super::WorkSignal;
use super::persist;
use super::retry::RetryPolicy;
use governor::{DefaultDirectRateLimiter, RateLimiter};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use zapgate_backends::limits::quota;
use zapgate_backends::{
    Backends, InstanceRecord, MessageRecord, OutcomeApplied, SendOutcome, SendResult, Settlement, crash_point,
};
use zapgate_domain::Timestamp;
use zapgate_providers::{
    Circuits, Classification, MediaUpload, Observed, OutboundMessage, Provider, ProviderError, Providers, classify,
};

/// What every lane shares.
pub struct WorkerCtx {
    pub backends: Backends,
    pub providers: Providers,
    pub signal: Arc<WorkSignal>,
    pub retry: RetryPolicy,
    pub retry_limit: u32,
    pub send_timeout: Duration,
    pub concurrency: u32,
    /// One circuit breaker per provider endpoint, shared by every lane.
    pub circuits: Circuits,
    /// Messages per recipient for pair-limited providers (None: off).
    pub pair_quota: Option<governor::Quota>,
    /// With RabbitMQ: retries wait in its wait queues.
    pub parking: Option<super::parking::Parking>,
    /// The address providers reach zapgate at, for links to media sent by
    /// id (set once the listeners are bound).
    pub media_base: Arc<std::sync::OnceLock<String>>,
}

/// Called once a message's outcome is stored (a broker consumer acks the
/// delivery that brought it).
pub type OnStored = Box<dyn FnOnce() + Send>;

pub struct Lane {
    tx: mpsc::UnboundedSender<(MessageRecord, Option<OnStored>)>,
    pending: Arc<AtomicUsize>,
    /// The queue may hold due work for this instance.
    pub maybe_ready: bool,
    /// Set when the instance is deleted: what the lane still holds is
    /// cancelled instead of sent.
    abandoned: Arc<AtomicBool>,
    /// The instance as the lane task paces and sends it (see [`Lane::retune`]).
    config: watch::Sender<InstanceRecord>,
    task: JoinHandle<()>,
}

/// Claim about half a second of work ahead: enough to keep the pipe full,
/// little enough that claimed-but-unsent work (status `sending`) stays small
/// and short-lived.
fn capacity(instance: &InstanceRecord) -> usize {
    ((instance.rate_per_sec / 2) as usize).clamp(2, 256)
}

impl Lane {
    pub fn start(ctx: Arc<WorkerCtx>, instance: InstanceRecord) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let abandoned = Arc::new(AtomicBool::new(false));
        let (config, configured) = watch::channel(instance);
        let task = tokio::spawn(run(ctx, configured, rx, pending.clone(), abandoned.clone()));
        Self { tx, pending, maybe_ready: true, abandoned, config, task }
    }

    /// The instance as this lane runs it.
    pub fn instance(&self) -> watch::Ref<'_, InstanceRecord> {
        self.config.borrow()
    }

    /// The instance changed (pace, provider or its settings): everything the
    /// lane holds and has not started goes out under the new settings. (A
    /// lane rebuilt instead would send its backlog at the old pace — up to a
    /// whole prefetch window of it when work comes from RabbitMQ.)
    pub fn retune(&mut self, stored: InstanceRecord) {
        self.config.send_replace(stored);
    }

    /// Whether this lane still runs `stored` as it is now (same pace,
    /// provider and provider settings); if not, it must be retuned.
    pub fn runs(&self, stored: &InstanceRecord) -> bool {
        let i = self.instance();
        (i.rate_per_sec, i.burst, &i.provider, &i.provider_config)
            == (stored.rate_per_sec, stored.burst, &stored.provider, &stored.provider_config)
    }

    /// How many more messages this lane will take now.
    pub fn free(&self) -> usize {
        capacity(&self.instance()).saturating_sub(self.pending.load(Ordering::Acquire))
    }

    pub fn push(&self, m: MessageRecord) {
        self.push_then(m, None);
    }

    /// Like [`Lane::push`], and calls `on_stored` after the outcome is stored.
    pub fn push_then(&self, m: MessageRecord, on_stored: Option<OnStored>) {
        self.pending.fetch_add(1, Ordering::AcqRel);
        if self.tx.send((m, on_stored)).is_err() {
            self.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The instance is gone: cancel what this lane still holds.
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
    }

    /// Stops taking work and waits until everything handed to it is sent
    /// and recorded.
    pub async fn close(self) {
        drop(self.tx);
        let _ = self.task.await;
    }
}

/// What a lane sends with; rebuilt when the lane is retuned.
struct Tuned {
    target: Target,
    limiter: DefaultDirectRateLimiter,
}

/// What each send goes to (a copy per send: a retune does not touch sends
/// already under way).
#[derive(Clone)]
struct Target {
    instance: InstanceRecord,
    provider: Option<Arc<dyn Provider>>,
    /// Per-recipient pacing, for pair-limited providers.
    pairs: Option<Arc<PairLimiter>>,
}

type PairLimiter = governor::DefaultKeyedRateLimiter<String>;

impl Tuned {
    fn new(ctx: &WorkerCtx, instance: InstanceRecord) -> Self {
        let provider = ctx.providers.get(&instance.provider);
        let limiter = RateLimiter::direct(quota(instance.rate_per_sec, instance.burst));
        let pairs = match (&provider, ctx.pair_quota) {
            (Some(p), Some(q)) if p.pair_limited() => Some(Arc::new(RateLimiter::keyed(q))),
            _ => None,
        };
        Self { target: Target { instance, provider, pairs }, limiter }
    }
}

async fn run(
    ctx: Arc<WorkerCtx>,
    mut config: watch::Receiver<InstanceRecord>,
    mut rx: mpsc::UnboundedReceiver<(MessageRecord, Option<OnStored>)>,
    pending: Arc<AtomicUsize>,
    abandoned: Arc<AtomicBool>,
) {
    let mut tuned = Tuned::new(&ctx, config.borrow_and_update().clone());
    let slots = Arc::new(Semaphore::new(ctx.concurrency as usize));
    let mut sends = JoinSet::new();
    while let Some((msg, on_stored)) = rx.recv().await {
        if abandoned.load(Ordering::Acquire) {
            let cancelled = SendResult::Cancelled {
                code: "instance_deleted".into(),
                message: "the instance was deleted before the message was sent".into(),
            };
            if finish(&ctx, &tuned.target.instance, &msg, cancelled, &pending).await
                && let Some(f) = on_stored
            {
                f();
            }
            continue;
        }
        // A retune applies to the next message, and at once to one waiting
        // for the old pace.
        if config.has_changed().unwrap_or(false) {
            tuned = Tuned::new(&ctx, config.borrow_and_update().clone());
        }
        loop {
            tokio::select! {
                _ = tuned.limiter.until_ready() => break,
                Ok(()) = config.changed() => {}
            }
            tuned = Tuned::new(&ctx, config.borrow_and_update().clone());
        }
        let permit = slots.clone().acquire_owned().await.expect("the semaphore is never closed");
        sends.spawn(send_one(ctx.clone(), tuned.target.clone(), msg, permit, pending.clone(), on_stored));
        while sends.try_join_next().is_some() {}
    }
    while sends.join_next().await.is_some() {}
}

async fn send_one(
    ctx: Arc<WorkerCtx>,
    target: Target,
    msg: MessageRecord,
    _slot: OwnedSemaphorePermit,
    pending: Arc<AtomicUsize>,
    on_stored: Option<OnStored>,
) {
    let result = attempt(&ctx, &target, &msg).await;
    if finish(&ctx, &target.instance, &msg, result, &pending).await
        && let Some(f) = on_stored
    {
        f();
    }
}

/// Stores the outcome, then settles the queue entry to match. False when
/// the store closed first (the message is sent again after the next start).
async fn finish(
    ctx: &WorkerCtx,
    instance: &InstanceRecord,
    msg: &MessageRecord,
    result: SendResult,
    pending: &AtomicUsize,
) -> bool {
    let label = match &result {
        SendResult::Sent { .. } => "sent",
        SendResult::Retry { .. } => "retry",
        SendResult::Failed { .. } => "failed",
        SendResult::Expired => "expired",
        SendResult::Cancelled { .. } => "cancelled",
    };
    let outcome =
        SendOutcome { message_id: msg.id.clone(), result, retry_limit: ctx.retry_limit, now: Timestamp::now() };
    let applied = persist(|| ctx.backends.store.record_outcome(outcome.clone())).await;
    let stored = applied.is_some();
    let label = match &applied {
        Some(OutcomeApplied::Done(zapgate_domain::MessageStatus::Dead)) => "dead",
        _ => label,
    };
    metrics::counter!("zapgate_send_outcomes_total", "outcome" => label).increment(1);
    crash_point("before_ack");
    if let (Some(OutcomeApplied::RetryAt { at, attempts }), Some(parking)) = (&applied, &ctx.parking) {
        parking.park(&msg.id, &instance.id, *attempts, *at).await;
    }
    if let Some(applied) = applied.filter(|_| !ctx.backends.queue.settled_by_store()) {
        let settlement = match applied {
            OutcomeApplied::RetryAt { at, attempts } => Settlement::RetryAt { at, attempt: attempts },
            OutcomeApplied::Done(_) | OutcomeApplied::Stale => Settlement::Done,
        };
        persist(|| ctx.backends.queue.settle(vec![(msg.id.clone(), settlement.clone())])).await;
    }
    pending.fetch_sub(1, Ordering::AcqRel);
    ctx.signal.mark(instance.id.clone());
    stored
}

/// Calls the provider (unless the recipient must wait its turn, the message
/// expired or the circuit is open) and classifies the result.
async fn attempt(ctx: &WorkerCtx, target: &Target, msg: &MessageRecord) -> SendResult {
    if let Some(wait) = target.pairs.as_deref().and_then(|p| pair_wait(p, msg)) {
        let message = "this recipient got its share of messages for now (the provider's pair rate limit)";
        return wait_unspent(wait, "pair_rate_limit", message.into());
    }
    let (instance, provider) = (&target.instance, target.provider.as_deref());
    let now = Timestamp::now();
    if msg.expires_at.is_some_and(|e| e <= now) {
        return SendResult::Expired;
    }
    let Some(provider) = provider else {
        return SendResult::Failed {
            code: "unknown_provider".into(),
            message: format!("this process has no provider {:?}", instance.provider),
        };
    };
    let (mut content, upload) = match with_media(ctx, provider, msg).await {
        Ok(resolved) => resolved,
        Err(result) => return result,
    };
    if let Err(result) = resolve_reaction(ctx, msg, &mut content).await {
        return result;
    }
    let reply_to = match &msg.reply_to {
        Some(raw) => match quoted(ctx, msg, raw, "reply_target_unknown").await {
            Ok(q) => Some(q),
            Err(result) => return result,
        },
        None => None,
    };
    let out = OutboundMessage {
        message_id: msg.id.clone(),
        instance_id: instance.id.clone(),
        phone_number_id: instance.phone_number_id.clone(),
        to: msg.to.clone(),
        content,
        attempt: msg.attempts,
        config: instance.provider_config.clone(),
        upload,
        reply_to,
    };
    let circuit = provider.endpoint(&instance.provider_config).map(|e| ctx.circuits.get(provider.kind(), &e));
    let pass = match &circuit {
        Some(circuit) => match circuit.admit().await {
            Ok(pass) => Some(pass),
            Err(wait) => return circuit_open(circuit.kind(), wait),
        },
        None => None,
    };
    let started = std::time::Instant::now();
    let reply =
        tokio::time::timeout(ctx.send_timeout, provider.send(&out)).await.unwrap_or(Err(ProviderError::Timeout));
    crash_point("after_provider_call");
    let outage = matches!(reply, Err(ProviderError::Unavailable { .. } | ProviderError::Timeout));
    let open_for = pass.and_then(|pass| {
        pass.observe(if outage { Observed::Failed { message: msg.id.as_str() } } else { Observed::Answered })
    });
    let kind = provider.kind();
    metrics::histogram!("zapgate_provider_call_seconds", "provider" => kind).record(started.elapsed().as_secs_f64());
    let result = match &reply {
        Ok(_) => "ok",
        Err(ProviderError::Timeout) => "timeout",
        Err(ProviderError::Throttled { .. }) => "throttled",
        Err(e) => match classify(e) {
            Classification::Retry { .. } => "retry",
            Classification::Permanent { .. } => "permanent",
        },
    };
    metrics::counter!("zapgate_provider_calls_total", "provider" => kind, "result" => result).increment(1);
    let err = match reply {
        Ok(ok) => {
            return SendResult::Sent { provider_message_id: ok.provider_message_id, wa_id: ok.wa_id };
        }
        Err(e) => e,
    };
    tracing::debug!(message_id = %msg.id, error = %err, "send attempt failed");
    if let (true, Some(wait), Some(circuit)) = (outage, open_for, &circuit) {
        // The endpoint is down, not this message: no attempt spent.
        return circuit_open(circuit.kind(), wait);
    }
    match classify(&err) {
        Classification::Retry { spend_attempt, retry_after, code, message } => {
            let delay = if spend_attempt {
                ctx.retry.delay(msg.attempts + 1, retry_after)
            } else {
                retry_after.unwrap_or(ctx.retry.base)
            };
            let retry_at = Timestamp::now().plus_millis(delay.as_millis() as i64);
            SendResult::Retry { retry_at, spend_attempt, code, message }
        }
        Classification::Permanent { code, message } => SendResult::Failed { code, message },
    }
}

/// The content as the provider gets it: media named by zapgate `id` becomes
/// a link the provider can fetch, or its bytes for providers that take
/// uploads (the Cloud API). Media gone since accept fails the message; a
/// store hiccup retries it without spending an attempt.
async fn with_media(
    ctx: &WorkerCtx,
    provider: &dyn Provider,
    msg: &MessageRecord,
) -> Result<(zapgate_domain::MessageContent, Option<MediaUpload>), SendResult> {
    let mut content = msg.content.clone();
    let Some(media) = content.media_mut().filter(|m| m.id.is_some()) else { return Ok((content, None)) };
    let id = media.id.as_deref().and_then(zapgate_domain::MediaId::parse);
    let found = match id {
        Some(id) => ctx.backends.media_index.get_media(&msg.tenant_id, &id).await,
        None => Ok(None),
    };
    let gone = || SendResult::Failed {
        code: "media_unavailable".into(),
        message: "the media named by id is no longer stored (purged or deleted)".into(),
    };
    let rec = match found {
        Ok(Some(rec)) if rec.status == zapgate_backends::MediaStatus::Stored => rec,
        Ok(_) => return Err(gone()),
        Err(e) => return Err(wait_unspent(ctx.retry.base, "store_unavailable", format!("reading the media: {e}"))),
    };
    if provider.uploads_media() {
        let bytes = match ctx.backends.media.get(rec.id.as_str()).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Err(gone()),
            Err(e) => {
                return Err(wait_unspent(ctx.retry.base, "media_store_unavailable", format!("reading the media: {e}")));
            }
        };
        // A document keeps its uploaded name unless the message gives one.
        if media.filename.is_none()
            && matches!(content, zapgate_domain::MessageContent::Document { .. })
            && let Some(m) = content.media_mut()
        {
            m.filename = rec.filename.clone();
        }
        let mime_type = rec.mime_type.clone().unwrap_or_else(|| "application/octet-stream".into());
        return Ok((content, Some(MediaUpload { bytes, mime_type, filename: rec.filename })));
    }
    let Some(base) = ctx.media_base.get() else {
        return Err(wait_unspent(ctx.retry.base, "starting", "zapgate is still starting".into()));
    };
    let link = crate::http::media::public_link(base, &rec).ok_or_else(gone)?;
    media.link = link;
    media.id = None;
    Ok((content, None))
}

/// A reaction naming a zapgate message (`msg_…`) names it as the provider
/// knows it (see [`quoted`]).
async fn resolve_reaction(
    ctx: &WorkerCtx,
    msg: &MessageRecord,
    content: &mut zapgate_domain::MessageContent,
) -> Result<(), SendResult> {
    let Some(reaction) = content.reaction_mut() else { return Ok(()) };
    let target = quoted(ctx, msg, &reaction.message_id, "reaction_target_unknown").await?;
    reaction.message_id = target.id;
    reaction.from_me = target.from_me;
    Ok(())
}

/// The message `raw` names (a reaction's or a reply's), as the provider
/// knows it: a received message by its WhatsApp id, a sent one by the id the
/// provider gave it (it must have been sent). WhatsApp ids pass as given.
async fn quoted(
    ctx: &WorkerCtx,
    msg: &MessageRecord,
    raw: &str,
    unknown_code: &str,
) -> Result<zapgate_providers::Quoted, SendResult> {
    let Some(target) = zapgate_domain::MessageId::parse(raw) else {
        return Ok(zapgate_providers::Quoted { id: raw.to_owned(), from_me: false });
    };
    let store_hiccup = |e: zapgate_backends::StoreError| {
        wait_unspent(ctx.retry.base, "store_unavailable", format!("reading the message it names: {e}"))
    };
    if let Some(inbound) = ctx.backends.inbox.get_inbound(&msg.tenant_id, &target).await.map_err(store_hiccup)? {
        return Ok(zapgate_providers::Quoted { id: inbound.message.wa_message_id, from_me: inbound.message.from_me });
    }
    let sent = ctx.backends.store.get_message(&msg.tenant_id, &target).await.map_err(store_hiccup)?;
    match sent.and_then(|m| m.provider_message_id) {
        Some(id) => Ok(zapgate_providers::Quoted { id, from_me: true }),
        None => Err(SendResult::Failed {
            code: unknown_code.into(),
            message: format!("{target} is not a message of this tenant that was sent or received"),
        }),
    }
}

/// How long `msg`'s recipient must wait for its next message; None: now.
fn pair_wait(pairs: &PairLimiter, msg: &MessageRecord) -> Option<Duration> {
    use governor::clock::{Clock, DefaultClock};
    if pairs.len() > 100_000 {
        pairs.retain_recent();
    }
    pairs.check_key(&msg.to.key()).err().map(|n| n.wait_time_from(DefaultClock::default().now()))
}

/// Waits for an open circuit without spending an attempt.
fn circuit_open(provider: &str, wait: Duration) -> SendResult {
    let message = format!("the {provider} provider's server is failing; sends wait until it answers again");
    wait_unspent(wait, "circuit_open", message)
}

/// A retry `wait` from now that spends no attempt: the message is fine, the
/// moment is not.
fn wait_unspent(wait: Duration, code: &str, message: String) -> SendResult {
    SendResult::Retry {
        retry_at: Timestamp::now().plus_millis(wait.as_millis().max(1) as i64),
        spend_attempt: false,
        code: code.into(),
        message,
    }
}
