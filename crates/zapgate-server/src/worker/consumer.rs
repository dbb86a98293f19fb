//! Workers when work flows through RabbitMQ: each worker process owns about
//! its share of the work shards (a session lock per shard, like instance
//! ownership on the queue table), consumes them, and hands every delivery to
//! its instance's lane. An instance hashes to one shard, so one process
//! paces it.
//!
//! A batch of deliveries becomes `sending` in one compare-and-set
//! (`Outbox::begin_delivered`); copies that lose it (RabbitMQ redelivered
//! them, or a relay published a message twice) are acked at once and
//! dropped. The others are acked after their outcome is stored, in batches
//! (`multiple`, up to the highest tag below which everything is settled:
//! [`AckWindow`]). A worker that dies leaves its messages unacked (RabbitMQ
//! redelivers them) and its entries leased to a dead owner (any process
//! returns them to the outbox): nothing is lost, and only what it had in
//! flight can reach the provider twice.

use super::lane::{Lane, OnStored, WorkerCtx};
use super::persist;
use crate::relay::WorkItem;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use zapgate_backends::amqp::{AckWindow, Acker, Broker, BrokerError};
use zapgate_backends::{Outbox, SendOutcome, SendResult};
use zapgate_domain::{InstanceId, MessageId, Timestamp};

/// Shard shares, dead processes' leases and instance changes are looked at this often.
const REFRESH: Duration = Duration::from_secs(2);
/// A lease only matters if this process dies, and then its owner lock goes
/// with it: long.
const LEASE_MS: i64 = 3_600_000;
/// Most deliveries per compare-and-set.
const BATCH: usize = 256;

/// One delivery on its way to a lane.
struct Incoming {
    item: WorkItem,
    ack: AckHandle,
}

/// Settles one delivery: its tag goes to the ack task of the consumer that
/// delivered it (a consumer that is gone ignores it; RabbitMQ redelivers).
#[derive(Clone)]
struct AckHandle {
    tag: u64,
    tx: mpsc::UnboundedSender<u64>,
}

impl AckHandle {
    fn settle(&self) {
        let _ = self.tx.send(self.tag);
    }

    fn on_stored(self) -> OnStored {
        Box::new(move || self.settle())
    }
}

struct ShardTask {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

pub struct Consumers {
    pub ctx: Arc<WorkerCtx>,
    pub outbox: Arc<dyn Outbox>,
    pub broker: Broker,
    pub prefetch: u16,
}

pub async fn run(c: Consumers, mut shutdown: watch::Receiver<bool>) {
    if let Err(e) = c.ctx.backends.queue.register_worker().await {
        tracing::error!(error = %e, "consumers: could not register as a worker");
    }
    let (in_tx, mut in_rx) = mpsc::channel::<Incoming>(4 * BATCH);
    let mut shards: HashMap<u16, ShardTask> = HashMap::new();
    let mut lanes: HashMap<InstanceId, Lane> = HashMap::new();
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tick.tick() => {
                // Keeps the owner session alive and returns dead processes' leases.
                if let Err(e) = c.ctx.backends.queue.promote_due(Timestamp::now()).await {
                    tracing::warn!(error = %e, "consumers: checking the outbox failed");
                }
                rebalance(&c, &mut shards, &in_tx).await;
                refresh_lanes(&c.ctx, &mut lanes).await;
            }
            Some(first) = in_rx.recv() => {
                let mut batch = vec![first];
                while batch.len() < BATCH && let Ok(more) = in_rx.try_recv() {
                    batch.push(more);
                }
                dispatch(&c, &mut lanes, batch).await;
            }
        }
    }
    tracing::info!(lanes = lanes.len(), "consumers stopping; finishing in-flight sends");
    // Lanes first, so the outcomes they store are still acked; deliveries
    // not handed to a lane go back to RabbitMQ with their channel.
    for lane in lanes.into_values() {
        lane.close().await;
    }
    drop(in_rx);
    for (shard, t) in shards {
        stop_shard(&c, shard, t).await;
    }
}

/// Takes this process's share of the shards (`ceil(shards / live workers)`)
/// and lets go of the rest, so workers that join get work and shards of
/// workers that died are taken over.
async fn rebalance(c: &Consumers, shards: &mut HashMap<u16, ShardTask>, in_tx: &mpsc::Sender<Incoming>) {
    let total = c.broker.topology().shards;
    let lost: Vec<u16> = shards.keys().copied().filter(|s| !c.outbox.owns_shard(*s)).collect();
    for shard in lost {
        tracing::warn!(shard, "consumers: another worker took the shard while this one was cut off");
        if let Some(t) = shards.remove(&shard) {
            stop_shard(c, shard, t).await;
        }
    }
    let share = match c.outbox.live_workers().await {
        Ok(workers) => usize::from(total).div_ceil(workers),
        Err(e) => return tracing::warn!(error = %e, "consumers: could not count the workers"),
    };
    while shards.len() > share {
        let shard = *shards.keys().max().expect("more shards than the share");
        tracing::info!(shard, "consumers: handing the shard to another worker");
        let t = shards.remove(&shard).expect("present");
        stop_shard(c, shard, t).await;
    }
    for shard in 0..total {
        if shards.len() >= share {
            break;
        }
        if shards.contains_key(&shard) {
            continue;
        }
        match c.outbox.try_own_shard(shard).await {
            Ok(true) => {
                let (stop, stopped) = watch::channel(false);
                let task = tokio::spawn(consume_shard(c.broker.clone(), shard, c.prefetch, in_tx.clone(), stopped));
                shards.insert(shard, ShardTask { stop, task });
            }
            Ok(false) => {}
            Err(e) => return tracing::warn!(error = %e, shard, "consumers: could not take the shard"),
        }
    }
}

async fn stop_shard(c: &Consumers, shard: u16, t: ShardTask) {
    let _ = t.stop.send(true);
    let _ = t.task.await;
    if let Err(e) = c.outbox.release_shard(shard).await {
        tracing::warn!(error = %e, shard, "consumers: could not release the shard");
    }
}

/// Consumes one shard until told to stop, starting over when the consumer
/// is lost (RabbitMQ restarted, the connection dropped).
async fn consume_shard(
    broker: Broker,
    shard: u16,
    prefetch: u16,
    in_tx: mpsc::Sender<Incoming>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let consumer = tokio::select! {
            c = broker.consume(shard, prefetch) => c,
            _ = stop.changed() => return,
        };
        let mut consumer = match consumer {
            Ok(consumer) => consumer,
            Err(BrokerError::Closed) => return,
            Err(e) => {
                tracing::warn!(error = %e, shard, "consumers: could not consume the shard; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let acks = tokio::spawn(ack_loop(consumer.acker(), ack_rx));
        let stopped = loop {
            tokio::select! {
                _ = stop.changed() => break true,
                next = consumer.next() => match next {
                    Some(Ok(d)) => {
                        let ack = AckHandle { tag: d.delivery_tag, tx: ack_tx.clone() };
                        match serde_json::from_slice::<WorkItem>(&d.payload) {
                            Ok(item) => {
                                if in_tx.send(Incoming { item, ack }).await.is_err() {
                                    break true;
                                }
                            }
                            Err(e) => {
                                // Not ours (nothing zapgate publishes looks like this): drop it.
                                tracing::error!(error = %e, shard, "consumers: dropping a malformed delivery");
                                ack.settle();
                            }
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, shard, "consumers: lost the shard's consumer; consuming again");
                        break false;
                    }
                    None => break false,
                },
            }
        };
        drop(ack_tx);
        if stopped {
            // Acks already queued go out first; deliveries still in lanes
            // come back to the shard's next consumer, which drops them once
            // their outcome is stored.
            let _ = tokio::time::timeout(Duration::from_millis(200), acks).await;
            let _ = consumer.close().await;
            return;
        }
        acks.abort();
    }
}

/// Acks settled deliveries with `multiple`, as far as every lower tag is
/// settled; everything queued at once becomes one ack frame.
async fn ack_loop(acker: Acker, mut rx: mpsc::UnboundedReceiver<u64>) {
    let mut window = AckWindow::new();
    while let Some(tag) = rx.recv().await {
        let mut top = window.settle(tag);
        while let Ok(tag) = rx.try_recv() {
            top = window.settle(tag).or(top);
        }
        if let Some(top) = top
            && acker.ack_up_to(top).await.is_err()
        {
            // The channel is gone; its deliveries come back redelivered.
            return;
        }
    }
}

/// One compare-and-set for a batch of deliveries, then each winner to its lane.
async fn dispatch(c: &Consumers, lanes: &mut HashMap<InstanceId, Lane>, batch: Vec<Incoming>) {
    let pairs: Vec<(MessageId, u32)> =
        batch.iter().map(|i| (MessageId::from_trusted(i.item.id.clone()), i.item.attempt)).collect();
    let Some(began) = persist(|| c.outbox.begin_delivered(&pairs, Timestamp::now(), LEASE_MS)).await else {
        return;
    };
    zapgate_backends::crash_point("after_begin_sending");
    let mut acks: HashMap<String, Vec<AckHandle>> = HashMap::new();
    for i in batch {
        acks.entry(i.item.id).or_default().push(i.ack);
    }
    for m in began.won {
        let ack = acks.get_mut(m.id.as_str()).and_then(Vec::pop);
        let on_stored = ack.map(AckHandle::on_stored);
        if !lanes.contains_key(&m.instance_id) {
            match c.ctx.backends.store.find_instance(&m.instance_id).await {
                Ok(Some(instance)) => {
                    lanes.insert(m.instance_id.clone(), Lane::start(c.ctx.clone(), instance));
                }
                Ok(None) => {
                    cancel_orphan(c, m.id.clone(), on_stored).await;
                    continue;
                }
                Err(e) => {
                    // It stays `sending` under this process's lease: the next
                    // start (or another process, if this one dies) sends it.
                    tracing::error!(error = %e, message_id = %m.id, "consumers: could not load the instance");
                    continue;
                }
            }
        }
        lanes[&m.instance_id].push_then(m, on_stored);
    }
    // Copies that lost the compare-and-set: already sent, settled, or taken
    // by another delivery. RabbitMQ may forget them.
    for ack in acks.into_values().flatten() {
        ack.settle();
    }
}

/// A message whose instance was deleted after it was published.
async fn cancel_orphan(c: &Consumers, id: MessageId, on_stored: Option<OnStored>) {
    let outcome = SendOutcome {
        message_id: id,
        result: SendResult::Cancelled {
            code: "instance_deleted".into(),
            message: "the instance was deleted before the message was sent".into(),
        },
        retry_limit: c.ctx.retry_limit,
        now: Timestamp::now(),
    };
    if persist(|| c.ctx.backends.store.record_outcome(outcome.clone())).await.is_some()
        && let Some(f) = on_stored
    {
        f();
    }
}

/// Retunes lanes whose instance changed (pace, provider) and stops those of
/// deleted instances, cancelling what they hold.
async fn refresh_lanes(ctx: &Arc<WorkerCtx>, lanes: &mut HashMap<InstanceId, Lane>) {
    ctx.signal.take();
    ctx.signal.take_changed();
    if lanes.is_empty() {
        return;
    }
    let stored: HashMap<_, _> = match ctx.backends.store.all_instances().await {
        Ok(all) => all.into_iter().map(|i| (i.id.clone(), i)).collect(),
        Err(e) => return tracing::warn!(error = %e, "consumers: could not refresh instances"),
    };
    let deleted: Vec<InstanceId> = lanes.keys().filter(|id| !stored.contains_key(*id)).cloned().collect();
    for id in deleted {
        let lane = lanes.remove(&id).expect("listed above");
        lane.abandon();
        tokio::spawn(lane.close());
    }
    for (id, lane) in lanes.iter_mut() {
        let instance = &stored[id];
        if !lane.runs(instance) {
            lane.retune(instance.clone());
        }
    }
}
