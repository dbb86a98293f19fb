//! The single SQLite writer: one thread owns the write connection and
//! commits whatever jobs are waiting as one `BEGIN IMMEDIATE` transaction
//! (group commit). Each job runs inside its own savepoint, so one failing
//! job (a conflicting key, a constraint) is rolled back alone and never
//! fails the rest of its batch. Replies are sent only after COMMIT returns:
//! a caller that gets `Ok` holds a durable result (`synchronous=FULL`).

use crate::{StoreError, crash_point};
use rusqlite::Connection;
use std::sync::Arc;
use tokio::sync::{Notify, mpsc, oneshot};

/// Most jobs committed in one transaction; bounds commit latency.
const MAX_BATCH: usize = 1024;

pub type JobFn<T> = Box<dyn FnOnce(&Connection) -> Result<T, StoreError> + Send>;

trait WriteJob: Send {
    /// Runs the job; false if it failed (its savepoint is then rolled back).
    fn run(&mut self, conn: &Connection) -> bool;
    fn finish(self: Box<Self>, commit: Result<(), String>);
}

struct Job<T> {
    f: Option<JobFn<T>>,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T: Send + 'static> WriteJob for Job<T> {
    fn run(&mut self, conn: &Connection) -> bool {
        let f = self.f.take().expect("a job runs once");
        let r = f(conn);
        let ok = r.is_ok();
        self.result = Some(r);
        ok
    }

    fn finish(self: Box<Self>, commit: Result<(), String>) {
        let r = match commit {
            Ok(()) => self.result.unwrap_or(Err(StoreError::Closed)),
            Err(e) => Err(StoreError::Commit(e)),
        };
        let _ = self.reply.send(r);
    }
}

#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Box<dyn WriteJob>>,
}

impl Writer {
    /// `committed` is notified after every commit that changed rows.
    pub fn spawn(conn: Connection, committed: Arc<Notify>) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel(16 * 1024);
        std::thread::Builder::new().name("zapgate-sqlite-writer".into()).spawn(move || run(conn, rx, committed))?;
        Ok(Self { tx })
    }

    /// Runs `f` inside the next group-committed transaction.
    pub async fn write<T: Send + 'static>(&self, f: JobFn<T>) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        let job: Box<dyn WriteJob> = Box::new(Job { f: Some(f), result: None, reply });
        self.tx.send(job).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

fn run(conn: Connection, mut rx: mpsc::Receiver<Box<dyn WriteJob>>, committed: Arc<Notify>) {
    let mut batch: Vec<Box<dyn WriteJob>> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let changes_before = conn.total_changes();
        let started = std::time::Instant::now();
        let commit = commit_batch(&conn, &mut batch).map_err(|e| e.to_string());
        metrics::histogram!("zapgate_store_commit_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("zapgate_store_commit_jobs").record(batch.len() as f64);
        match &commit {
            Ok(()) => {
                crash_point("after_commit");
                // Only real writes wake readers of the event log, so a reader
                // whose own empty polls commit does not wake itself forever.
                if conn.total_changes() != changes_before {
                    committed.notify_one();
                }
            }
            Err(e) => tracing::error!(error = %e, jobs = batch.len(), "sqlite commit failed"),
        }
        for job in batch.drain(..) {
            job.finish(commit.clone());
        }
    }
}

fn commit_batch(conn: &Connection, batch: &mut [Box<dyn WriteJob>]) -> rusqlite::Result<()> {
    // Cached statements: these run twice per job, parsing them each time showed in profiles.
    let run = |sql: &str| conn.prepare_cached(sql)?.execute([]).map(|_| ());
    run("BEGIN IMMEDIATE")?;
    let result = (|| {
        for job in batch.iter_mut() {
            run("SAVEPOINT job")?;
            if !job.run(conn) {
                run("ROLLBACK TO job")?;
            }
            run("RELEASE job")?;
        }
        run("COMMIT")
    })();
    if result.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    result
}
