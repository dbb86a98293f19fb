//! The campaign releaser: moves running campaigns' recipients into the
//! queue a little at a time, so the queue (and RabbitMQ behind it) only
//! ever holds a few seconds of a campaign.
//!
//! Every tick it leases the running campaigns it may release
//! (`CampaignStore::claim_campaigns`: due, and not held by a live releaser
//! elsewhere) and gives each a credit: the campaign's rate (its own cap, or
//! its instance's) × `ZAPGATE_CAMPAIGN_LOOKAHEAD`, minus its messages still
//! waiting to be sent, and no more than the rate allows since the last
//! release. That many recipients are accepted (idempotency key
//! `campaign:{id}:{row}`, priority the campaign's, `low` by default so the
//! tenant's one-off messages overtake it) and the cursor moves past them by
//! compare-and-set. Pausing is just not being released; a releaser that dies
//! between the accepts and the cursor move leaves a slice that the next
//! owner re-accepts as replays. A campaign whose recipients are all
//! released and whose messages are all settled is `completed`.

use super::WorkSignal;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use zapgate_backends::{
    AcceptMessage, Accepted, CampaignRecord, CampaignState, CampaignStore, Cancel, CursorStep, Store, StoreError,
};
use zapgate_domain::{CampaignId, MessageContent, SendRequest, TenantId, Timestamp};

/// How often campaigns are released (and their leases renewed).
const TICK: Duration = Duration::from_millis(200);
/// A releaser silent this long loses its campaigns to another.
const LEASE_MS: i64 = 10_000;
/// Campaigns one releaser serves at once.
const MAX_CAMPAIGNS: u32 = 64;
/// Recipients accepted between two cursor moves: a pause (or a crash)
/// takes effect within one slice.
const MAX_SLICE: u32 = 1000;

pub struct Releaser {
    pub campaigns: Arc<dyn CampaignStore>,
    pub store: Arc<dyn Store>,
    pub work: Arc<WorkSignal>,
    /// How many seconds of sending a campaign may have queued at once.
    pub lookahead: Duration,
    /// This process, as lease owner.
    pub owner: String,
}

/// Release allowance of one campaign (a token bucket at the campaign's rate).
struct Allowance {
    tokens: f64,
    at: Instant,
}

pub async fn run(r: Arc<Releaser>, mut stop: watch::Receiver<bool>) {
    let mut allowances: HashMap<CampaignId, Allowance> = HashMap::new();
    loop {
        match r.campaigns.claim_campaigns(&r.owner, Timestamp::now(), LEASE_MS, MAX_CAMPAIGNS).await {
            Ok(held) => {
                allowances.retain(|id, _| held.iter().any(|c| &c.id == id));
                for c in held {
                    if let Err(e) = release(&r, &c, &mut allowances).await {
                        tracing::warn!(campaign = %c.id, error = %e, "releasing a campaign failed; trying again");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "claiming campaigns failed; trying again"),
        }
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}

/// Cancels the campaign's released messages that no provider has taken.
pub async fn cancel_pending(
    campaigns: &dyn CampaignStore,
    store: &dyn Store,
    tenant: &TenantId,
    id: &CampaignId,
) -> Result<(), StoreError> {
    loop {
        let pending = campaigns.campaign_pending_messages(id, 500).await?;
        let mut cancelled = 0;
        for m in &pending {
            if store.cancel_message(tenant, m, Timestamp::now()).await? == Cancel::Cancelled {
                cancelled += 1;
            }
        }
        // Messages that went out meanwhile are too late, not pending: stop
        // when a round cancels nothing.
        if pending.len() < 500 || cancelled == 0 {
            return Ok(());
        }
    }
}

async fn release(
    r: &Releaser,
    c: &CampaignRecord,
    allowances: &mut HashMap<CampaignId, Allowance>,
) -> Result<(), StoreError> {
    if c.state == CampaignState::Cancelled {
        return cancel_pending(r.campaigns.as_ref(), r.store.as_ref(), &c.tenant_id, &c.id).await;
    }
    let Some(instance) = r.store.get_instance(&c.tenant_id, &c.instance_id).await? else {
        tracing::warn!(campaign = %c.id, "the campaign's instance was deleted; cancelling the campaign");
        let cancel = [CampaignState::Running];
        r.campaigns
            .set_campaign_state(&c.tenant_id, &c.id, &cancel, CampaignState::Cancelled, Timestamp::now())
            .await?;
        return Ok(());
    };
    let rate = f64::from(c.rate_per_second.unwrap_or(u32::MAX).min(instance.rate_per_sec).max(1));
    let window = (rate * r.lookahead.as_secs_f64()).ceil().max(1.0);
    let waiting = r.campaigns.campaign_waiting(&c.id).await?;
    let now = Instant::now();
    let a = allowances.entry(c.id.clone()).or_insert(Allowance { tokens: window, at: now });
    a.tokens = (a.tokens + rate * now.duration_since(a.at).as_secs_f64()).min(window);
    a.at = now;
    let mut credit = (window - waiting as f64).min(a.tokens).floor() as u64;
    if credit == 0 {
        return Ok(());
    }
    let Some(template) = r.store.get_template(&c.tenant_id, &c.template_id).await? else {
        tracing::warn!(campaign = %c.id, "the campaign's template was deleted; pausing the campaign");
        let pause = [CampaignState::Running];
        r.campaigns.set_campaign_state(&c.tenant_id, &c.id, &pause, CampaignState::Paused, Timestamp::now()).await?;
        return Ok(());
    };
    let template = template.compile().map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let mut cursor = c.cursor;
    let mut released_before = c.released;
    while credit > 0 {
        let rows = r.campaigns.next_recipients(&c.id, cursor, credit.min(u64::from(MAX_SLICE)) as u32).await?;
        let Some(&(last, _)) = rows.last() else {
            if cursor == c.cursor && waiting == 0 {
                let done = [CampaignState::Running];
                let now = Timestamp::now();
                if r.campaigns
                    .set_campaign_state(&c.tenant_id, &c.id, &done, CampaignState::Completed, now)
                    .await?
                    .is_some()
                {
                    tracing::info!(campaign = %c.id, released = c.released, "campaign completed");
                }
            }
            return Ok(());
        };
        let accepts: Vec<AcceptMessage> = rows
            .iter()
            .filter_map(|(row, m)| match template.render_from(&m.variables) {
                Ok(content) => Some(accept_of(c, *row, m.to.clone(), content)),
                // Checked at import; only a value that changed meaning since gets here.
                Err(e) => {
                    tracing::warn!(campaign = %c.id, row, error = %e, "a recipient's message no longer renders; skipping it");
                    None
                }
            })
            .collect();
        let released = rows.len() as u64;
        for result in super::bulk::accept_all(r.store.as_ref(), accepts).await {
            if let Accepted::UnknownInstance = result? {
                return Ok(()); // deleted meanwhile: the next tick cancels the campaign
            }
        }
        r.work.mark(c.instance_id.clone());
        zapgate_backends::crash_point("campaign_slice_accepted");
        let now = Timestamp::now();
        let step = CursorStep { from: cursor, to: last, released, now, lease_until: now.plus_millis(LEASE_MS) };
        let state = r.campaigns.advance_campaign(&c.id, &r.owner, step).await?;
        a.tokens -= released as f64;
        credit -= released;
        cursor = last;
        if state.is_some() {
            progress_event(r, c, released_before, released_before + released).await?;
            released_before += released;
        }
        if state != Some(CampaignState::Running) {
            return Ok(()); // paused, cancelled, or taken over meanwhile
        }
    }
    Ok(())
}

/// A `campaign.progress` event each time the released count passes another
/// tenth of the campaign (ten per campaign, each one count of its messages).
async fn progress_event(r: &Releaser, c: &CampaignRecord, before: u64, after: u64) -> Result<(), StoreError> {
    let tenth = |n: u64| n.saturating_mul(10).checked_div(c.total).unwrap_or(0);
    if tenth(after) == tenth(before) {
        return Ok(());
    }
    let statuses = r.campaigns.campaign_statuses(&c.id).await?;
    let progress = zapgate_domain::CampaignProgress::tally(c.total, after, &statuses);
    r.campaigns.record_campaign_progress(c, progress, Timestamp::now()).await
}

fn accept_of(c: &CampaignRecord, row: u64, to: zapgate_domain::ChatId, content: MessageContent) -> AcceptMessage {
    let request = SendRequest {
        instance_id: c.instance_id.clone(),
        to,
        content,
        priority: c.priority,
        send_at: None,
        expires_at: None,
        reply_to: None,
    };
    super::bulk::keyed(&c.tenant_id, request, format!("campaign:{}:{row}", c.id), Some(&c.id))
}
