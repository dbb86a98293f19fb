//! Group commit: concurrent calls of one kind are gathered into batches, and
//! each batch is committed by one call of the kind's commit function (one
//! transaction of multi-row statements instead of one per call). While up to
//! `in_flight` batches commit, the next one grows, so batches are as large as
//! the load makes them and a lone call waits for nobody.
//!
//! The commit function answers every caller of its batch, after its COMMIT:
//! a caller's answer still means "durable".

use super::again;
use crate::StoreError;
use futures::future::BoxFuture;
use sqlx::{PgConnection, PgPool};
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};

/// Where a batched call's answer goes.
pub(super) type Reply<R> = oneshot::Sender<Result<R, StoreError>>;

/// The statements of a batch, in the caller's transaction: one answer per
/// call, in order.
pub(super) type Statements<T, R> =
    Arc<dyn for<'a> Fn(&'a mut PgConnection, &'a [T]) -> BoxFuture<'a, Result<Vec<R>, StoreError>> + Send + Sync>;

/// The handle calls are submitted to; a task of its own gathers batches.
pub(super) struct GroupCommit<T, R> {
    tx: mpsc::UnboundedSender<(T, Reply<R>)>,
}

/// How batches of one kind are formed.
pub(super) struct Shape {
    /// Histogram of the batch sizes.
    pub metric: &'static str,
    /// Most calls in one batch.
    pub max_batch: usize,
    /// Batches committing at once (each holds one connection).
    pub in_flight: usize,
}

impl<T: Send + 'static, R: Send + 'static> GroupCommit<T, R> {
    pub fn start<F, Fut>(shape: Shape, commit: F) -> Self
    where
        F: Fn(Vec<(T, Reply<R>)>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(gather(shape, rx, commit));
        Self { tx }
    }

    /// Batches whose statements are `run` in one transaction on `pool`
    /// (see [`commit_or_split`]); `committed` is notified after each batch.
    pub fn transactional(shape: Shape, pool: PgPool, committed: Arc<Notify>, run: Statements<T, R>) -> Self
    where
        T: Sync,
        R: Sync,
    {
        Self::start(shape, move |batch| {
            let (pool, committed, run) = (pool.clone(), committed.clone(), run.clone());
            async move {
                commit_or_split(&pool, batch, &run).await;
                committed.notify_one();
            }
        })
    }

    pub async fn submit(&self, item: T) -> Result<R, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((item, reply)).map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

async fn gather<T, R, F, Fut>(shape: Shape, mut rx: mpsc::UnboundedReceiver<(T, Reply<R>)>, commit: F)
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(Vec<(T, Reply<R>)>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(shape.in_flight));
    while let Some(first) = rx.recv().await {
        let slot = slots.clone().acquire_owned().await.expect("never closed");
        // Everything that queued up while the slot was busy joins this batch.
        let mut batch = vec![first];
        while batch.len() < shape.max_batch
            && let Ok(more) = rx.try_recv()
        {
            batch.push(more);
        }
        metrics::histogram!(shape.metric).record(batch.len() as f64);
        let done = commit(batch);
        tokio::spawn(async move {
            done.await;
            drop(slot);
        });
    }
}

/// Commits a batch in one transaction and answers each caller. When the
/// transaction fails, the calls run again one by one, each in its own
/// transaction, so one call never fails the others.
async fn commit_or_split<T: Sync, R>(pool: &PgPool, batch: Vec<(T, Reply<R>)>, run: &Statements<T, R>) {
    let (items, replies): (Vec<T>, Vec<Reply<R>>) = batch.into_iter().unzip();
    let answers = match transaction(pool, &items, run).await {
        Ok(answers) => answers.into_iter().map(Ok).collect(),
        Err(e) if items.len() == 1 => vec![Err(e)],
        Err(e) => {
            tracing::debug!(error = %e, calls = items.len(), "batched transaction failed; running its calls one by one");
            let mut answers = Vec::with_capacity(items.len());
            for item in &items {
                answers.push(transaction(pool, std::slice::from_ref(item), run).await.map(|mut a| a.remove(0)));
            }
            answers
        }
    };
    for (reply, answer) in replies.into_iter().zip(answers) {
        let _ = reply.send(answer);
    }
}

/// One transaction of `run` for `items`, run again if PostgreSQL aborted it
/// as a deadlock victim.
pub(super) async fn transaction<T, R>(
    pool: &PgPool,
    items: &[T],
    run: &Statements<T, R>,
) -> Result<Vec<R>, StoreError> {
    let mut tries = 0;
    loop {
        let r = async {
            let mut tx = pool.begin().await?;
            let answers = run(&mut tx, items).await?;
            tx.commit().await?;
            Ok(answers)
        }
        .await;
        if !again(&r, &mut tries).await {
            return r;
        }
    }
}
