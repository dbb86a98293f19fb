//! RabbitMQ for distributed mode (lapin): the topology, a supervised
//! connection pair with batched publisher confirms, and shard consumers with
//! batched (`multiple`) acks. The relay (outbox → broker) and the workers
//! (broker → provider) build on this; nothing else here knows about messages.
//!
//! # Topology
//!
//! Declared by [`Broker`] at start-up and again after every reconnect, by every
//! process (declarations are idempotent; all processes must use the same
//! [`TopologyConfig`]). Names below use the default prefix `zapgate`.
//!
//! ```text
//!   relay / worker                                              workers
//!   ──────────────                                              ───────
//!   Target::Work{shard}                                      (one active consumer
//!     │ routing key "{shard}"                                  per shard queue)
//!     ▼                                                              ▲
//!  ┌──────────────────────┐  "0"   ┌───────────────────────────────┐ │
//!  │ zapgate.work         │──────▶ │ zapgate.work.0                │─┤
//!  │ (direct exchange)    │  "1"   │ quorum, single-active-consumer│ │
//!  │                      │──────▶ │ x-max-length 50 000           │─┤
//!  │                      │  …     │ x-overflow reject-publish     │ │
//!  │                      │──────▶ │ … zapgate.work.{shards-1}     │─┘
//!  └──────────────────────┘        └───────────────────────────────┘
//!            ▲
//!            │ dead-lettered on expiry, with the routing key the message
//!            │ was published with (= its shard; no x-dead-letter-routing-key)
//!            │
//!  ┌──────────────────────┐ BCC "5s" ┌─────────────────────────────┐
//!  │ zapgate.wait         │────────▶ │ zapgate.wait.5s   ttl 5 s   │──┐
//!  │ (direct exchange,    │ BCC "30s"│ zapgate.wait.30s  ttl 30 s  │──┤
//!  │  bound by tier name) │────────▶ │ zapgate.wait.2m   ttl 2 min │──┤ x-dead-letter-exchange
//!  │                      │   …      │ zapgate.wait.10m  ttl 10 min│──┤   = zapgate.work
//!  │                      │────────▶ │ zapgate.wait.1h   ttl 1 h   │──┤ x-dead-letter-strategy
//!  │                      │          │ zapgate.wait.6h   ttl 6 h   │──┘   = at-least-once
//!  └──────────────────────┘          │ quorum, x-message-ttl,      │
//!            ▲                       │ x-overflow reject-publish,  │
//!            │                       │ x-max-length 100 000        │
//!   Target::Wait{shard, tier}        └─────────────────────────────┘
//!   routing key "{shard}", header BCC = ["{tier}"]
//! ```
//!
//! - **Work**: `shards` (default 16) quorum queues `zapgate.work.{n}` with
//!   `x-single-active-consumer`, bound to the direct exchange `zapgate.work`
//!   with key `{n}`. An instance's work always goes to shard
//!   [`shard_of`]`(instance_id, shards)` = FNV-1a-64 `% shards`, so one worker
//!   at a time paces each instance. A second consumer on a shard stays idle
//!   until the active one goes away: consumers of one shard are fail-over,
//!   not load sharing (spread load by giving each worker process some of the
//!   shards; extra consumers are stand-bys).
//! - **Delays**: one quorum queue per tier, `x-message-ttl` = the tier (not a
//!   per-message TTL: every message of a queue has the same TTL, so the head
//!   always expires first and no short delay waits behind a long one). A
//!   wanted delay rounds **up** to a tier ([`TopologyConfig::tier_for`]; the
//!   longest tier for anything longer). Expired messages dead-letter to
//!   `zapgate.work` at-least-once (a full work shard keeps them in the wait
//!   queue instead of dropping them).
//! - **How a message finds both its tier and its shard**: it is published to
//!   `zapgate.wait` with routing key = its shard and a `BCC` header naming
//!   the tier (RabbitMQ sender-selected distribution). The direct exchange
//!   routes it by the BCC key to the tier queue; RabbitMQ strips `BCC` before
//!   enqueueing, so when the message expires it is dead-lettered with its
//!   only remaining routing key, the shard. (A plain routing key = tier name
//!   would send it back to `zapgate.work` under the tier name, which no shard
//!   is bound to.) Tier names may therefore not be numbers.
//! - **Full queues refuse, never drop**: `x-overflow = reject-publish` turns a
//!   publish into a full queue into a publisher nack ([`PublishResult::Nacked`]);
//!   publishes are `mandatory`, so one that no queue takes comes back as
//!   [`PublishResult::Returned`]. The caller keeps such outbox rows. The
//!   limit is soft on quorum queues: publishers learn asynchronously that a
//!   queue went over it, so a burst already in flight is still accepted (a
//!   batch of 10 into an empty queue with `x-max-length` 3 is confirmed in
//!   full here; the next batch is nacked until consumers drain the queue
//!   below the limit). Size the limits with the relay's batch and
//!   per-tenant caps in mind; they bound memory, not an exact count.
//! - Everything is durable; messages are persistent (delivery mode 2).
//!   Changing an argument of an existing queue (e.g. `x-max-length`) makes
//!   declarations fail with `PRECONDITION_FAILED`: change it with a RabbitMQ
//!   policy, or delete the queue first. Changing `shards` reroutes instances:
//!   drain the work queues first.
//!
//! # Connections and recovery
//!
//! [`Broker`] holds two connections (RabbitMQ's advice: a publishing
//! connection can be blocked by a resource alarm, and acks must still flow),
//! each with a supervisor task: connect, declare the topology, then watch the
//! connection; when it is lost, reconnect with backoff (100 ms doubling to
//! 5 s), redeclare and resume. [`Broker::healthy`] is `false` while either is
//! down or blocked.
//!
//! - **Start-up**: a malformed URL, an `amqps://` URL (this build has no TLS),
//!   refused credentials or vhost, and a topology that contradicts the existing
//!   queues fail [`Broker::connect`] at once. A broker that is merely
//!   unreachable does not: `connect` returns, `healthy()` is `false` and the
//!   supervisors keep trying in the background.
//! - **Publishing** ([`Broker::publish_batch`]) fails fast with
//!   [`BrokerError::NotConnected`] while disconnected (the relay keeps its
//!   rows and tries again later; nothing waits while holding database locks).
//!   Messages whose confirm does not arrive (connection lost mid-batch, or
//!   no answer within `confirm_timeout`, which bounds the whole call, also
//!   when a blocked connection stops taking frames) are
//!   [`PublishResult::Unconfirmed`]: they may or may not be in the queue, so
//!   the caller publishes them again (at-least-once; the worker's
//!   `queued → sending` compare-and-set drops the duplicate).
//! - **Consuming** ([`Broker::consume`]) waits for the connection. A
//!   [`Consumer`] does not survive its connection: when the connection or its
//!   channel is lost, the stream yields one [`BrokerError::ConsumerLost`] and
//!   then ends. The caller then calls `consume` again (it waits until the
//!   supervisor has reconnected). Delivery tags belong to the channel that
//!   delivered them: the old [`Acker`] refuses to ack on the new channel, and
//!   every message that was not acked comes back redelivered.
//!
//! TLS: lapin is built without TLS (its rustls feature pulls in a PKCS#12
//! stack, ~40 more crates, for client certificates). Enabling it is one feature
//! line (`rustls--ring` plus a root store) in the workspace `Cargo.toml`.

mod broker;
mod consumer;
mod topology;

pub use broker::{Broker, BrokerOptions, Outgoing, PublishResult, Target};
pub use consumer::{AckWindow, Acker, Consumer, Delivery};
pub use topology::{
    DEFAULT_SHARDS, DEFAULT_WAIT_MAX_LENGTH, DEFAULT_WORK_MAX_LENGTH, Tier, TopologyConfig, default_tiers, shard_of,
    tier_for,
};

/// Errors of the RabbitMQ backend.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The AMQP URL does not parse (the URL itself is not repeated: it may
    /// hold a password).
    #[error("invalid AMQP URL: {0}")]
    InvalidUrl(String),
    #[error("amqps:// needs TLS, which this build of zapgate leaves out; use amqp:// (or build lapin with rustls)")]
    TlsUnsupported,
    #[error("invalid RabbitMQ configuration: {0}")]
    InvalidConfig(String),
    /// A publish named a shard or tier that the topology does not have.
    #[error("invalid target: {0}")]
    InvalidTarget(String),
    /// No live connection right now; the supervisor is reconnecting.
    #[error("RabbitMQ is not connected (reconnecting)")]
    NotConnected,
    /// RabbitMQ refused the login or the vhost; retrying will not help.
    #[error("RabbitMQ refused the connection (check user, password and vhost): {0}")]
    Refused(lapin::Error),
    /// Declaring part of the topology failed, e.g. `PRECONDITION_FAILED` when
    /// an existing queue has other arguments.
    #[error("declaring {what}: {source}")]
    Declare {
        what: String,
        #[source]
        source: lapin::Error,
    },
    /// The consumer's channel or connection went away (or RabbitMQ cancelled
    /// it); call [`Broker::consume`] again.
    #[error("consumer lost: {0}")]
    ConsumerLost(String),
    /// [`Broker::close`] was called, or every handle was dropped.
    #[error("the RabbitMQ broker handle was closed")]
    Closed,
    #[error("RabbitMQ did not answer in time")]
    Timeout,
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
}

impl BrokerError {
    /// Errors that retrying with the same configuration will not fix.
    pub(crate) fn is_fatal(&self) -> bool {
        use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
        let amqp_fatal = |e: &lapin::Error| match e.kind() {
            lapin::ErrorKind::ProtocolError(e) => matches!(
                e.kind(),
                AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED | AMQPSoftError::ACCESSREFUSED)
                    | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED)
            ),
            _ => false,
        };
        match self {
            Self::InvalidUrl(_) | Self::TlsUnsupported | Self::InvalidConfig(_) | Self::Refused(_) => true,
            Self::Declare { source, .. } => amqp_fatal(source),
            Self::Amqp(e) => amqp_fatal(e),
            _ => false,
        }
    }
}
