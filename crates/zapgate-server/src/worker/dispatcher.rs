//! The dispatcher: claims due queue entries and hands them to lanes.
//!
//! Fairness: every round claims for every instance that may have work, each
//! up to its lane's free room, so one instance's backlog (one tenant's 100k
//! messages) never sits ahead of another instance's message — that message
//! waits at most one round. Priority and per-chat order are the queue's
//! job (it only returns ready chat heads, by priority then acceptance order).
//! Entries that wait for a time (retries, `send_at`) are promoted when due.
//! Idle, the dispatcher sleeps until a signal or the next due time.

use super::lane::{Lane, WorkerCtx};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use zapgate_backends::{Claim, InstanceRecord, Settlement, StoreError, crash_point};
use zapgate_domain::{InstanceId, Timestamp};

/// Most entries claimed per instance per round.
const MAX_CLAIM: usize = 128;
/// Leases only matter across processes; in one process a claimed entry is
/// either settled or recovered at the next start, so the lease is long.
const LEASE_MS: i64 = 3_600_000;
/// Even with no signal, look at the queue this often.
const IDLE_CHECK: Duration = Duration::from_secs(30);
/// While busy, promote due entries at least this often.
const BUSY_PROMOTE: Duration = Duration::from_millis(100);
/// How often lanes are checked against the stored instances: another process
/// (an API replica) may have changed an instance's pace or deleted it.
const INSTANCE_REFRESH: Duration = Duration::from_secs(2);

/// The lanes of the instances this process owns. Where several worker
/// processes share the queue, each instance is owned (and paced) by one of
/// them, and each owns about its fair share (`Queue::try_own`).
struct Lanes {
    by_instance: HashMap<InstanceId, Lane>,
    /// Most instances this process should own (`None`: no limit); other
    /// workers take the rest.
    share: Option<usize>,
    /// Instances another process owns (or this one has no room for): not
    /// asked for again until the next refresh.
    declined: HashSet<InstanceId>,
    /// Instances whose old lane is still draining before being handed over:
    /// no new lane may start for them until it has (two lanes would pace one
    /// instance twice).
    retiring: Arc<std::sync::Mutex<HashSet<InstanceId>>>,
}

impl Lanes {
    /// Starts a lane for `instance` if this process may own it.
    async fn adopt(&mut self, ctx: &Arc<WorkerCtx>, instance: InstanceRecord) {
        let id = instance.id.clone();
        let retiring = self.retiring.lock().unwrap_or_else(|p| p.into_inner()).contains(&id);
        if self.by_instance.contains_key(&id) || self.declined.contains(&id) || retiring {
            return;
        }
        // An instance this process already holds (its lane was just rebuilt
        // after a change) is kept whatever the share: dropping it would leave
        // it locked with no lane.
        if self.full() && !ctx.backends.queue.owns(&id) {
            // Instances may have been added since the share was computed.
            self.share = ctx.backends.queue.fair_share().await.unwrap_or(self.share);
            if self.full() {
                self.declined.insert(id);
                return;
            }
        }
        match ctx.backends.queue.try_own(&id).await {
            Ok(true) => {
                self.by_instance.insert(id, Lane::start(ctx.clone(), instance));
            }
            Ok(false) => {
                self.declined.insert(id);
            }
            Err(e) => tracing::warn!(error = %e, instance_id = %id, "dispatcher: could not take the instance"),
        }
    }

    fn full(&self) -> bool {
        self.share.is_some_and(|share| self.by_instance.len() >= share)
    }

    /// Stops the lane: it finishes (or, if `deleted`, cancels) what it holds,
    /// then the instance is free for another process.
    fn retire(&mut self, ctx: &Arc<WorkerCtx>, id: &InstanceId, deleted: bool) {
        if let Some(lane) = self.by_instance.remove(id) {
            if deleted {
                lane.abandon();
            }
            self.retiring.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone());
            let (queue, id, retiring) = (ctx.backends.queue.clone(), id.clone(), self.retiring.clone());
            tokio::spawn(async move {
                lane.close().await;
                if let Err(e) = queue.disown(&id).await {
                    tracing::warn!(error = %e, instance_id = %id, "dispatcher: could not release the instance");
                }
                retiring.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            });
        }
    }
}

pub async fn run(ctx: Arc<WorkerCtx>, mut shutdown: watch::Receiver<bool>) {
    if let Err(e) = ctx.backends.queue.register_worker().await {
        tracing::error!(error = %e, "dispatcher: could not register as a worker");
    }
    let share = ctx.backends.queue.fair_share().await.unwrap_or(None);
    let mut lanes =
        Lanes { by_instance: HashMap::new(), share, declined: HashSet::new(), retiring: Default::default() };
    match ctx.backends.store.all_instances().await {
        Ok(all) => {
            for i in all {
                lanes.adopt(&ctx, i).await;
            }
        }
        Err(e) => tracing::error!(error = %e, "dispatcher: could not load instances"),
    }
    let mut next_promote = Instant::now();
    let mut next_refresh = Instant::now() + INSTANCE_REFRESH;
    loop {
        if *shutdown.borrow() {
            break;
        }
        if Instant::now() >= next_refresh {
            next_refresh = Instant::now() + INSTANCE_REFRESH;
            refresh_instances(&ctx, &mut lanes).await;
        }
        if Instant::now() >= next_promote {
            match ctx.backends.queue.promote_due(Timestamp::now()).await {
                Ok(ids) => ids.into_iter().for_each(|id| ctx.signal.mark(id)),
                Err(e) => tracing::warn!(error = %e, "dispatcher: promoting due entries failed"),
            }
            next_promote = Instant::now() + BUSY_PROMOTE;
        }
        take_signals(&ctx, &mut lanes).await;
        match round(&ctx, &mut lanes.by_instance).await {
            // Work was found: look again at once (taking new signals first,
            // so a newly marked instance joins the very next round).
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, "dispatcher round failed; retrying shortly");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        }
        let now = Timestamp::now();
        let wait = match ctx.backends.queue.next_due(now).await {
            Ok(Some(t)) => Duration::from_millis((t.as_millis() - now.as_millis()).max(0) as u64).min(IDLE_CHECK),
            Ok(None) => IDLE_CHECK,
            Err(e) => {
                tracing::warn!(error = %e, "dispatcher: reading the next due time failed");
                Duration::from_secs(1)
            }
        };
        next_promote = Instant::now() + wait;
        if wait.is_zero() {
            continue;
        }
        tokio::select! {
            _ = ctx.signal.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
    }
    tracing::info!(lanes = lanes.by_instance.len(), "dispatcher stopping; finishing in-flight sends");
    for lane in lanes.by_instance.into_values() {
        lane.close().await;
    }
}

/// Marks lanes whose instance changed or went away since the lane started
/// (the same path as a change made through this process's API), and gives
/// up the instances beyond this process's fair share (a worker joined).
async fn refresh_instances(ctx: &Arc<WorkerCtx>, lanes: &mut Lanes) {
    let stored: HashMap<InstanceId, _> = match ctx.backends.store.all_instances().await {
        Ok(all) => all.into_iter().map(|i| (i.id.clone(), i)).collect(),
        Err(e) => return tracing::warn!(error = %e, "dispatcher: could not refresh instances"),
    };
    lanes.declined.clear();
    match ctx.backends.queue.fair_share().await {
        Ok(share) => lanes.share = share,
        Err(e) => tracing::warn!(error = %e, "dispatcher: could not count the workers"),
    }
    let lost: Vec<InstanceId> = lanes.by_instance.keys().filter(|id| !ctx.backends.queue.owns(id)).cloned().collect();
    for id in lost {
        tracing::warn!(instance_id = %id, "dispatcher: another worker took the instance while this one was cut off");
        lanes.retire(ctx, &id, false);
    }
    let extra: Vec<InstanceId> = lanes
        .by_instance
        .iter()
        .filter(|(id, _)| stored.contains_key(*id))
        .map(|(id, lane)| (lane.maybe_ready, id.clone()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|(_, id)| id)
        .take(lanes.share.map_or(0, |share| lanes.by_instance.len().saturating_sub(share)))
        .collect();
    for id in extra {
        tracing::info!(instance_id = %id, "dispatcher: handing the instance to another worker");
        lanes.retire(ctx, &id, false);
    }
    for (id, lane) in &lanes.by_instance {
        if !stored.get(id).is_some_and(|i| lane.runs(i)) {
            ctx.signal.changed(id.clone());
        }
    }
}

async fn take_signals(ctx: &Arc<WorkerCtx>, lanes: &mut Lanes) {
    for id in ctx.signal.take_changed() {
        if lanes.by_instance.contains_key(&id) {
            // A changed instance's lane sends what it holds under the new
            // settings; a deleted one's cancels it.
            match ctx.backends.store.find_instance(&id).await {
                Ok(Some(instance)) => lanes.by_instance.get_mut(&id).expect("checked").retune(instance),
                Ok(None) => lanes.retire(ctx, &id, true),
                Err(e) => tracing::warn!(error = %e, instance_id = %id, "dispatcher: could not reload the instance"),
            }
        }
    }
    for id in ctx.signal.take() {
        match lanes.by_instance.get_mut(&id) {
            Some(lane) => lane.maybe_ready = true,
            None if lanes.declined.contains(&id) => {}
            None => match ctx.backends.store.find_instance(&id).await {
                Ok(Some(i)) => lanes.adopt(ctx, i).await,
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "dispatcher: could not load instance"),
            },
        }
    }
}

/// One claim round over every lane with room and possibly due work.
/// Returns whether anything was claimed.
async fn round(ctx: &WorkerCtx, lanes: &mut HashMap<InstanceId, Lane>) -> Result<bool, StoreError> {
    let claims: Vec<Claim> = lanes
        .values()
        .filter(|l| l.maybe_ready && l.free() > 0)
        .map(|l| Claim { instance_id: l.instance().id.clone(), max: l.free().min(MAX_CLAIM) as u32 })
        .collect();
    if claims.is_empty() {
        return Ok(false);
    }
    let now = Timestamp::now();
    let began = match ctx.backends.queue.claim_and_begin(&claims, now, LEASE_MS).await? {
        Some(began) => began,
        None => {
            let deliveries = ctx.backends.queue.claim(&claims, now, LEASE_MS).await?;
            crash_point("after_claim");
            let cas: Vec<_> = deliveries.iter().map(|d| (d.message_id.clone(), d.attempt)).collect();
            ctx.backends.store.begin_sending(&cas, now).await?
        }
    };
    crash_point("after_begin_sending");
    let mut got: HashMap<&InstanceId, u32> = HashMap::new();
    for m in &began.won {
        *got.entry(&m.instance_id).or_default() += 1;
    }
    // A lane that got less than it asked for has no more ready work now;
    // promotions and signals set it ready again.
    for c in &claims {
        if got.get(&c.instance_id).copied().unwrap_or(0) < c.max
            && let Some(l) = lanes.get_mut(&c.instance_id)
        {
            l.maybe_ready = false;
        }
    }
    let claimed_any = !began.won.is_empty() || !began.finished.is_empty();
    // Hand over what was won before anything else can fail: these messages
    // are `sending` now and only a lane finishes them.
    for m in began.won {
        match lanes.get(&m.instance_id) {
            Some(l) => l.push(m),
            None => tracing::error!(message_id = %m.id, "claimed a message for an instance without a lane"),
        }
    }
    if !began.finished.is_empty() {
        tracing::warn!(count = began.finished.len(), "dropping deliveries of messages already settled");
        let done = began.finished.into_iter().map(|id| (id, Settlement::Done)).collect();
        if let Err(e) = ctx.backends.queue.settle(done).await {
            tracing::warn!(error = %e, "could not drop settled entries; they are retried at the next claim");
        }
    }
    Ok(claimed_any)
}
