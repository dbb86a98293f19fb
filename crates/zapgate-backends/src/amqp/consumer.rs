//! Shard consumers: a stream of [`Delivery`], an [`Acker`] that settles them
//! with `multiple` acks, and [`AckWindow`] to know how far that may go.

use super::BrokerError;
use futures::Stream;
use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicNackOptions};
use std::collections::BTreeSet;
use std::pin::Pin;
use std::task::{Context, Poll};

/// One message from a work shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub payload: Vec<u8>,
    /// Per channel, counting up from 1 in delivery order. Only the [`Acker`]
    /// of the [`Consumer`] that delivered it can settle it.
    pub delivery_tag: u64,
    /// RabbitMQ delivered it before (to a consumer that went away without
    /// acking it, or it was nacked with requeue). Duplicates are dropped by the
    /// worker's `queued → sending` compare-and-set, not here.
    pub redelivered: bool,
    /// The `message-id` it was published with.
    pub message_id: Option<String>,
    /// The exchange it came through: the work exchange, also for messages
    /// that came back from a delay tier (dead-lettered into it).
    pub exchange: String,
    /// Its shard number.
    pub routing_key: String,
}

/// Settles deliveries of one [`Consumer`]'s channel. Cheap to clone. Acks are
/// not confirmed by RabbitMQ; each call only waits until the frame is written.
/// After the channel is gone (connection lost, consumer closed) every call
/// fails: those deliveries come back, redelivered, to whichever consumer
/// holds the shard next.
#[derive(Clone, Debug)]
pub struct Acker {
    channel: Channel,
}

impl Acker {
    /// Acks every delivery of this channel with a tag ≤ `tag` that is not yet
    /// settled (`basic.ack` with `multiple = true`): one frame for a whole
    /// batch. Call it only when the outcomes of all of them are stored; see
    /// [`AckWindow`].
    pub async fn ack_up_to(&self, tag: u64) -> Result<(), BrokerError> {
        Ok(self.channel.basic_ack(tag, BasicAckOptions { multiple: true }).await?)
    }

    /// Returns one delivery to its queue (`basic.nack`, `requeue = true`,
    /// not `multiple`); it will be redelivered.
    pub async fn nack_requeue(&self, tag: u64) -> Result<(), BrokerError> {
        Ok(self.channel.basic_nack(tag, BasicNackOptions { multiple: false, requeue: true }).await?)
    }

    /// The channel is still open (acks can still land).
    pub fn is_open(&self) -> bool {
        self.channel.status().connected()
    }
}

/// Consumes one work shard. A [`Stream`] of deliveries; when it ends for any
/// reason other than [`Consumer::close`] (connection or channel lost, RabbitMQ
/// cancelled the consumer, e.g. because the queue was deleted) its last item
/// is one [`BrokerError::ConsumerLost`]; then call
/// [`super::Broker::consume`] again. Dropping it (and its [`Acker`]s) closes
/// the channel, which returns its unacked deliveries to the queue.
pub struct Consumer {
    inner: lapin::Consumer,
    channel: Channel,
    shard: u16,
    finished: bool,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer").field("shard", &self.shard).field("tag", &self.inner.tag()).finish()
    }
}

impl Consumer {
    pub(super) fn new(channel: Channel, inner: lapin::Consumer, shard: u16) -> Self {
        Self { inner, channel, shard, finished: false }
    }

    pub fn shard(&self) -> u16 {
        self.shard
    }

    /// The acker for this consumer's deliveries.
    pub fn acker(&self) -> Acker {
        Acker { channel: self.channel.clone() }
    }

    /// Cancels the consumer and closes its channel: every delivery not yet
    /// acked returns to the queue (redelivered), and the shard's next
    /// consumer (single active consumer) takes over.
    pub async fn close(self) -> Result<(), BrokerError> {
        if self.channel.status().connected() {
            self.channel.basic_cancel(self.inner.tag(), BasicCancelOptions::default()).await?;
            self.channel.close(200, "consumer closed".into()).await?;
        }
        Ok(())
    }
}

impl Stream for Consumer {
    type Item = Result<Delivery, BrokerError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        let item = match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(item) => item,
        };
        Poll::Ready(Some(match item {
            Some(Ok(d)) => Ok(Delivery {
                payload: d.data,
                delivery_tag: d.delivery_tag,
                redelivered: d.redelivered,
                message_id: d.properties.message_id().as_ref().map(|id| id.to_string()),
                exchange: d.exchange.to_string(),
                routing_key: d.routing_key.to_string(),
            }),
            Some(Err(e)) => {
                self.finished = true;
                Err(BrokerError::ConsumerLost(e.to_string()))
            }
            None => {
                self.finished = true;
                Err(BrokerError::ConsumerLost("the consumer was cancelled".into()))
            }
        }))
    }
}

/// Tracks which deliveries of one channel are settled (outcome stored, or
/// nacked) and how far a `multiple` ack may therefore go: the highest tag
/// below which every tag is settled. Tags of a channel count up from 1, one
/// per delivery, so gaps are deliveries still in progress.
///
/// ```
/// # use zapgate_backends::amqp::AckWindow;
/// let mut w = AckWindow::new();
/// assert_eq!(w.settle(2), None); // 1 is still in progress
/// assert_eq!(w.settle(1), Some(2)); // ack_up_to(2) may go out now
/// assert_eq!(w.settle(3), Some(3));
/// ```
#[derive(Debug, Default)]
pub struct AckWindow {
    watermark: u64,
    above: BTreeSet<u64>,
}

impl AckWindow {
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks `tag` settled. Returns the new watermark when it moved (then
    /// `ack_up_to(watermark)` is safe), `None` otherwise.
    pub fn settle(&mut self, tag: u64) -> Option<u64> {
        if tag <= self.watermark {
            return None;
        }
        self.above.insert(tag);
        let before = self.watermark;
        while self.above.remove(&(self.watermark + 1)) {
            self.watermark += 1;
        }
        (self.watermark > before).then_some(self.watermark)
    }

    /// Every tag ≤ this is settled.
    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    /// Settled tags waiting above a gap.
    pub fn waiting(&self) -> usize {
        self.above.len()
    }
}

#[cfg(test)]
mod tests {
    use super::AckWindow;

    #[test]
    fn ack_window_moves_over_contiguous_tags_only() {
        let mut w = AckWindow::new();
        assert_eq!(w.watermark(), 0);
        assert_eq!(w.settle(3), None);
        assert_eq!(w.settle(2), None);
        assert_eq!(w.waiting(), 2);
        assert_eq!(w.settle(1), Some(3));
        assert_eq!(w.waiting(), 0);
        assert_eq!(w.settle(3), None, "already covered");
        assert_eq!(w.settle(5), None);
        assert_eq!(w.settle(4), Some(5));
        assert_eq!(w.settle(6), Some(6));
        assert_eq!(w.watermark(), 6);
    }
}
