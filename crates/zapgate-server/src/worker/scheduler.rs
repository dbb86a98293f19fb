//! The scheduler: starts the runs of recurring schedules when they come due
//! and sends each run to its audience.
//!
//! Every tick (`ZAPGATE_SCHEDULER_INTERVAL`) it reads the schedules whose
//! `next_run_at` has passed and plans each (`CronSchedule::plan`: the
//! latest occurrence, once, however many passed while no scheduler ran).
//! `ScheduleStore::start_run` is a compare-and-set on `next_run_at`, so with
//! several schedulers each occurrence makes one run. Runs are then leased
//! and sent in chunks of audience members: each member (and offset) is one
//! accept with an idempotency key derived from the run, and the cursor moves
//! after each chunk, so a run a crashed scheduler left resumes at its cursor
//! and re-sends nothing.
//!
//! Messages with `send_at` need nothing from here: they wait in the queue
//! table with `visible_at = send_at`, and `Queue::promote_due` (a
//! conditional UPDATE, run by every dispatcher, relay and consumer) releases
//! each once.

use super::WorkSignal;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use zapgate_backends::{
    AcceptMessage, Accepted, NewRun, RunProgress, RunStatus, ScheduleRecord, ScheduleRun, ScheduleStore, Store,
    StoreError,
};
use zapgate_domain::schedule::{CronSchedule, due_offsets, parse_date};
use zapgate_domain::template::TenantTemplate;
use zapgate_domain::{MessageContent, SendRequest, Timestamp};

/// Members per chunk: the cursor moves (and the lease is renewed) after each.
const CHUNK: u32 = 500;
/// A run's lease: another scheduler resumes it only after this much
/// silence, far longer than a chunk takes.
const RUN_LEASE_MS: i64 = 60_000;
/// Runs one scheduler sends at once: a big audience does not hold up the
/// other tenants' runs, nor the start of due schedules.
pub const RUNS_AT_ONCE: usize = 4;
/// Finished runs are kept this long (`GET …/runs`), then purged.
const RUN_RETENTION_MS: i64 = 90 * 24 * 3600 * 1000;

pub struct Scheduler {
    pub schedules: Arc<dyn ScheduleStore>,
    pub store: Arc<dyn Store>,
    pub work: Arc<WorkSignal>,
    pub interval: Duration,
    pub clock: Clock,
    /// Embedded mode: this process owns the database, so runs a previous
    /// process was sending are resumed at start instead of after their lease.
    pub recover: bool,
    /// This process, as the owner of the runs it leases.
    pub owner: String,
    /// Permits for runs being sent ([`RUNS_AT_ONCE`]).
    pub runs: Arc<tokio::sync::Semaphore>,
}

/// The scheduler's "now". With the `test-hooks` feature,
/// `ZAPGATE_TEST_CLOCK_FILE` names a file holding an RFC 3339 time that
/// replaces the system clock, so tests can run a schedule over simulated
/// days; a shipped binary always reads the system clock.
#[derive(Clone, Default)]
pub struct Clock {
    #[cfg(feature = "test-hooks")]
    file: Option<std::path::PathBuf>,
}

impl Clock {
    pub fn from_env() -> Self {
        Self {
            #[cfg(feature = "test-hooks")]
            file: std::env::var_os("ZAPGATE_TEST_CLOCK_FILE").map(Into::into),
        }
    }

    pub fn now(&self) -> Timestamp {
        #[cfg(feature = "test-hooks")]
        if let Some(t) = self
            .file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|s| Timestamp::parse_rfc3339(s.trim()))
        {
            return t;
        }
        Timestamp::now()
    }
}

pub async fn run(s: Arc<Scheduler>, mut stop: watch::Receiver<bool>) {
    if s.recover {
        match s.schedules.recover_runs().await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(runs = n, "resuming schedule runs that were being sent when zapgate last stopped"),
            Err(e) => {
                tracing::warn!(error = %e, "could not resume schedule runs now; they resume when their lease ends")
            }
        }
    }
    let mut purged_at = None::<std::time::Instant>;
    loop {
        if let Err(e) = tick(&s).await {
            tracing::warn!(error = %e, "scheduler tick failed; trying again");
        }
        if purged_at.is_none_or(|t| t.elapsed() > Duration::from_secs(3600)) {
            purged_at = Some(std::time::Instant::now());
            if let Err(e) = s.schedules.purge_runs(s.clock.now().plus_millis(-RUN_RETENTION_MS)).await {
                tracing::warn!(error = %e, "purging old schedule runs failed");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(s.interval) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}

async fn tick(s: &Arc<Scheduler>) -> Result<(), StoreError> {
    let now = s.clock.now();
    for schedule in s.schedules.due_schedules(now, 100).await? {
        start(s, &schedule, now).await?;
    }
    // Each run in a task of its own, a few at a time; the tick goes on.
    while let Ok(permit) = s.runs.clone().try_acquire_owned() {
        let Some(run) = s.schedules.claim_run(&s.owner, s.clock.now(), RUN_LEASE_MS).await? else { break };
        let s = s.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let id = run.schedule_id.clone();
            if let Err(e) = send_run(&s, run).await {
                tracing::warn!(schedule = %id, error = %e, "a schedule run stopped; it resumes when its lease ends");
            }
        });
    }
    Ok(())
}

/// Starts the run a due schedule owes (once, however many schedulers try).
async fn start(s: &Scheduler, schedule: &ScheduleRecord, now: Timestamp) -> Result<(), StoreError> {
    let Some(due) = schedule.next_run_at else { return Ok(()) };
    let cron = match CronSchedule::parse(&schedule.cron, &schedule.time_zone) {
        Ok(c) => c,
        Err(e) => {
            // Checked at creation; only a time zone database that lost the
            // zone gets here. Stop it rather than retry every tick.
            tracing::error!(schedule = %schedule.id, error = %e, "schedule can no longer be evaluated; disabling it");
            s.schedules.set_schedule_enabled(&schedule.tenant_id, &schedule.id, false, None, now).await?;
            return Ok(());
        }
    };
    let plan = cron.plan(due, now);
    let run_date = cron.local_date(plan.occurrence).map(|d| d.to_string()).unwrap_or_default();
    let run = NewRun {
        schedule_id: schedule.id.clone(),
        tenant_id: schedule.tenant_id.clone(),
        due,
        occurrence: plan.occurrence,
        next: plan.next,
        run_date,
        missed: plan.missed,
    };
    if s.schedules.start_run(run, now).await? {
        metrics::counter!("zapgate_schedule_runs_total").increment(1);
        if plan.missed > 0 {
            tracing::warn!(schedule = %schedule.id, missed = plan.missed, occurrence = %plan.occurrence.to_rfc3339(),
                "runs were missed while no scheduler ran; catching up once");
        }
    }
    Ok(())
}

/// Sends a run chunk by chunk from its cursor; returns when it is finished
/// or a store error stops it (the lease then runs out and it resumes).
async fn send_run(s: &Scheduler, run: ScheduleRun) -> Result<(), StoreError> {
    let finish =
        |status: RunStatus, error: Option<String>| RunProgress { finished: Some(status), error, ..Default::default() };
    let Some(mut schedule) = s.schedules.get_schedule(&run.tenant_id, &run.schedule_id).await? else {
        return Ok(()); // deleted with its runs
    };
    let template = match s.store.get_template(&schedule.tenant_id, &schedule.template_id).await? {
        Some(t) => t.compile().map_err(|e| e.to_string()),
        None => Err("the schedule's template was deleted".to_owned()),
    };
    let template = match template {
        Ok(t) => t,
        Err(e) => return progress(s, &run, finish(RunStatus::Failed, Some(e))).await.map(drop),
    };
    let mut cursor = run.cursor.clone();
    loop {
        // Deleting or disabling the schedule stops its run at the next chunk
        // (the schedule is read again after each one, below).
        if !schedule.enabled {
            let stopped = finish(RunStatus::Failed, Some("stopped: the schedule was disabled".into()));
            return progress(s, &run, stopped).await.map(drop);
        }
        let members = s.schedules.list_members(&schedule.audience_id, cursor.clone(), CHUNK).await?;
        let Some(last) = members.last() else {
            return progress(s, &run, finish(RunStatus::Done, None)).await.map(drop);
        };
        cursor = Some(last.to.to_string());
        let mut chunk = RunProgress { cursor: cursor.clone(), ..Default::default() };
        let mut accepts = Vec::new();
        for send in members.iter().flat_map(|m| member_sends(&schedule, &run, &template, m)) {
            match send {
                Ok(accept) => accepts.push(accept),
                Err(reason) => chunk.skip(reason),
            }
        }
        for result in super::bulk::accept_all(s.store.as_ref(), accepts).await {
            match result? {
                // A replay was accepted by an earlier pass over this chunk
                // (cut short before its count was kept): it counts here.
                Accepted::New { .. } | Accepted::Replayed { .. } | Accepted::KeyReused => chunk.accepted += 1,
                Accepted::UnknownInstance => chunk.skip("the schedule's instance was deleted".into()),
            }
        }
        if chunk.accepted > 0 {
            s.work.mark(schedule.instance_id.clone());
        }
        zapgate_backends::crash_point("schedule_chunk_accepted");
        if !progress(s, &run, chunk).await? {
            // Another scheduler took the run over (this one was too slow), or
            // it was deleted: stop here.
            return Ok(());
        }
        match s.schedules.get_schedule(&run.tenant_id, &run.schedule_id).await? {
            Some(now) => schedule = now,
            None => return Ok(()),
        }
    }
}

/// Records a chunk; false if this scheduler no longer holds the run.
async fn progress(s: &Scheduler, run: &ScheduleRun, p: RunProgress) -> Result<bool, StoreError> {
    let now = s.clock.now();
    let lease = now.plus_millis(RUN_LEASE_MS);
    s.schedules.record_run_progress(&run.schedule_id, run.occurrence, &s.owner, p, lease, now).await
}

/// The accepts one member is owed by a run: one, or one per offset its date
/// matches; a member that cannot be sent to comes back with the reason.
fn member_sends(
    schedule: &ScheduleRecord,
    run: &ScheduleRun,
    template: &TenantTemplate,
    m: &zapgate_backends::AudienceMember,
) -> Vec<Result<AcceptMessage, String>> {
    let skip = |reason: String| vec![Err(format!("{}: {reason}", m.to))];
    let offsets: Vec<Option<i32>> = match &schedule.date_field {
        None => vec![None],
        Some(field) => {
            let Some(date) = m.variables.get(field).and_then(|v| parse_date(v)) else {
                return skip(format!("{field} is missing or not a date (YYYY-MM-DD or DD/MM/YYYY)"));
            };
            let Some(run_date) = parse_date(&run.run_date) else { return Vec::new() };
            due_offsets(date, run_date, &schedule.offsets_days).into_iter().map(Some).collect()
        }
    };
    if offsets.is_empty() {
        return Vec::new();
    }
    let content = match template.render_from(&m.variables) {
        Ok(c) => c,
        Err(e) => return skip(e.to_string()),
    };
    offsets.into_iter().map(|o| Ok(accept_of(schedule, run, m, o, content.clone()))).collect()
}

fn accept_of(
    schedule: &ScheduleRecord,
    run: &ScheduleRun,
    m: &zapgate_backends::AudienceMember,
    offset: Option<i32>,
    content: MessageContent,
) -> AcceptMessage {
    let request = SendRequest {
        instance_id: schedule.instance_id.clone(),
        to: m.to.clone(),
        content,
        priority: schedule.priority,
        send_at: None,
        expires_at: None,
        reply_to: None,
    };
    let offset = offset.map_or_else(String::new, |o| o.to_string());
    let key = format!("schedule:{}:{}:{}:{offset}", schedule.id, run.occurrence.as_millis(), m.to);
    super::bulk::keyed(&schedule.tenant_id, request, key, None)
}
