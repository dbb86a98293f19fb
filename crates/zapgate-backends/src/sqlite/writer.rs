//! The single SQLite writer: one task owns the write connection and commits
//! whatever jobs are waiting as one `BEGIN IMMEDIATE` transaction (group
//! commit). Each job runs inside its own savepoint, so one failing job (a
//! conflicting key, a constraint) is rolled back alone and never fails the
//! rest of its batch. Replies are sent only after COMMIT returns: a caller
//! that gets `Ok` holds a durable result (`synchronous=FULL`).

use crate::{StoreError, crash_point};
use futures::future::BoxFuture;
use sqlx::{Executor, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

/// Most jobs committed in one transaction; bounds commit latency.
const MAX_BATCH: usize = 512;

pub type JobFn<T> = Box<dyn for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T, StoreError>> + Send>;

trait WriteJob: Send {
    fn run<'c>(&'c mut self, conn: &'c mut SqliteConnection) -> BoxFuture<'c, bool>;
    fn finish(self: Box<Self>, commit: Result<(), String>);
}

struct Job<T> {
    f: Option<JobFn<T>>,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T: Send + 'static> WriteJob for Job<T> {
    fn run<'c>(&'c mut self, conn: &'c mut SqliteConnection) -> BoxFuture<'c, bool> {
        Box::pin(async move {
            let f = self.f.take().expect("a job runs once");
            let r = f(conn).await;
            let ok = r.is_ok();
            self.result = Some(r);
            ok
        })
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
    pub fn spawn(conn: SqliteConnection) -> Self {
        let (tx, rx) = mpsc::channel(8192);
        tokio::spawn(run(conn, rx));
        Self { tx }
    }

    /// Runs `f` inside the next group-committed transaction.
    pub async fn write<T: Send + 'static>(&self, f: JobFn<T>) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        let job: Box<dyn WriteJob> = Box::new(Job { f: Some(f), result: None, reply });
        self.tx.send(job).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

async fn run(mut conn: SqliteConnection, mut rx: mpsc::Receiver<Box<dyn WriteJob>>) {
    let mut batch: Vec<Box<dyn WriteJob>> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let commit = commit_batch(&mut conn, &mut batch).await;
        if commit.is_ok() {
            crash_point("after_commit");
        } else if let Err(e) = &commit {
            tracing::error!(error = %e, jobs = batch.len(), "sqlite commit failed");
        }
        for job in batch.drain(..) {
            job.finish(commit.clone());
        }
    }
}

async fn commit_batch(conn: &mut SqliteConnection, batch: &mut [Box<dyn WriteJob>]) -> Result<(), String> {
    conn.execute("BEGIN IMMEDIATE").await.map_err(|e| e.to_string())?;
    for job in batch.iter_mut() {
        let step = async {
            conn.execute("SAVEPOINT job").await?;
            if job.run(conn).await {
                conn.execute("RELEASE job").await?;
            } else {
                conn.execute("ROLLBACK TO job").await?;
                conn.execute("RELEASE job").await?;
            }
            Ok::<_, sqlx::Error>(())
        };
        if let Err(e) = step.await {
            let _ = conn.execute("ROLLBACK").await;
            return Err(e.to_string());
        }
    }
    if let Err(e) = conn.execute("COMMIT").await {
        let _ = conn.execute("ROLLBACK").await;
        return Err(e.to_string());
    }
    Ok(())
}
