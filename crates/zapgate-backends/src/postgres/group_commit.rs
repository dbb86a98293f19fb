//! Group commit: concurrent calls of one kind are gathered into batches, and
//! each batch is committed by one call of the kind's commit function (one
//! transaction of multi-row statements instead of one per call). While up to
//! `in_flight` batches commit, the next one grows, so batches are as large as
//! the load makes them and a lone call waits for nobody.
//!
//! The commit function answers every caller of its batch, after its COMMIT:
//! a caller's answer still means "durable".

use crate::StoreError;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Where a batched call's answer goes.
pub(super) type Reply<R> = oneshot::Sender<Result<R, StoreError>>;

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
