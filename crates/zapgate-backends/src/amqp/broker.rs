//! [`Broker`]: two supervised connections (publish, consume), batched
//! publisher confirms, and the entry point for shard consumers.

use super::consumer::Consumer;
use super::{BrokerError, TopologyConfig};
use futures::StreamExt;
use futures::future::join_all;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Event, ExchangeKind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Heartbeat asked for unless the URL sets one (`?heartbeat=`): a dead peer
/// is noticed within about two intervals.
const DEFAULT_HEARTBEAT_SECS: u16 = 15;
/// TCP connect timeout unless the URL sets one (`?connection_timeout=` ms).
const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Upper bound for one connect-and-declare attempt (the first declaration of
/// a few dozen quorum queues takes a while).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`Broker::connect`] waits for the first attempt before it
/// returns a broker that keeps trying in the background.
const FIRST_ATTEMPT_WAIT: Duration = Duration::from_secs(15);
/// How often a supervisor looks at its connection's state besides reacting
/// to error events.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// Upper bound for each round trip of [`Broker::ping`].
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection that lived this long resets the reconnect backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);

const PUBLISH: usize = 0;
const CONSUME: usize = 1;
const ROLES: [&str; 2] = ["publish", "consume"];

/// Connection settings beyond the URL.
#[derive(Clone, Debug)]
pub struct BrokerOptions {
    /// Shown in RabbitMQ's connection list as `{name}-publish` and
    /// `{name}-consume`; also the prefix of consumer tags.
    pub connection_name: String,
    /// How long [`Broker::publish_batch`] waits for the confirms of a batch;
    /// messages not confirmed by then are [`PublishResult::Unconfirmed`].
    pub confirm_timeout: Duration,
    /// First reconnect delay; doubles per failed attempt up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        Self {
            connection_name: "zapgate".into(),
            confirm_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// Where a message goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Straight to work shard `shard` (`{prefix}.work.{shard}`).
    Work { shard: u16 },
    /// Into the wait queue of delay tier `tier` (a [`super::Tier::name`]);
    /// it returns to work shard `shard` when the tier's TTL has passed.
    Wait { shard: u16, tier: String },
}

impl Target {
    pub fn shard(&self) -> u16 {
        match self {
            Self::Work { shard } | Self::Wait { shard, .. } => *shard,
        }
    }
}

/// One message to publish.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub target: Target,
    /// Set as the AMQP `message-id` property (e.g. the outbox row or message id).
    pub message_id: String,
    pub payload: Vec<u8>,
}

impl Outgoing {
    pub fn work(shard: u16, message_id: impl Into<String>, payload: Vec<u8>) -> Self {
        Self { target: Target::Work { shard }, message_id: message_id.into(), payload }
    }

    pub fn wait(shard: u16, tier: impl Into<String>, message_id: impl Into<String>, payload: Vec<u8>) -> Self {
        Self { target: Target::Wait { shard, tier: tier.into() }, message_id: message_id.into(), payload }
    }
}

/// What happened to one message of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishResult {
    /// RabbitMQ took responsibility for it (stored in its queue): the outbox
    /// row may be deleted.
    Confirmed,
    /// RabbitMQ refused it, e.g. the queue is full (`reject-publish`). Not
    /// stored; keep the row and retry later.
    Nacked,
    /// No queue is bound for its routing key (the topology is missing a
    /// shard); not stored.
    Returned,
    /// No answer: the connection was lost or the confirm timed out. It may or
    /// may not be stored; publish it again (at-least-once).
    Unconfirmed,
}

impl PublishResult {
    pub fn is_confirmed(self) -> bool {
        self == Self::Confirmed
    }
}

/// A live connection of one role.
struct Live {
    conn: Connection,
    /// The confirm-mode channel of the publish role (reopened on demand when
    /// RabbitMQ closes it); `None` on the consume role.
    publisher: tokio::sync::Mutex<Option<Channel>>,
    /// Set by anyone who saw an error on this connection: the supervisor
    /// checks it at once instead of at its next tick.
    kick: Notify,
    blocked: AtomicBool,
}

impl Live {
    fn usable(&self) -> bool {
        self.conn.status().connected()
    }
}

struct Link {
    live: watch::Sender<Option<Arc<Live>>>,
    reconnects: AtomicU64,
}

struct Shared {
    uri: AMQPUri,
    topology: TopologyConfig,
    options: BrokerOptions,
    links: [Link; 2],
    shutdown: watch::Sender<bool>,
    supervisors: Mutex<Vec<JoinHandle<()>>>,
    consumer_seq: AtomicU64,
}

/// Shuts the supervisors down when the last [`Broker`] handle goes away.
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.shutdown.send_replace(true);
    }
}

/// A supervised pair of RabbitMQ connections (one publishes, one consumes)
/// that keeps the topology declared. Cheap to clone; the connections close
/// when [`Broker::close`] is called or the last clone is dropped. See the
/// module docs for the recovery rules.
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
    _owner: Arc<Owner>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("host", &self.shared.uri.authority.host)
            .field("prefix", &self.shared.topology.prefix)
            .field("healthy", &self.healthy())
            .finish()
    }
}

impl Broker {
    /// [`Broker::connect_with`] with default [`BrokerOptions`].
    pub async fn connect(url: &str, topology: TopologyConfig) -> Result<Self, BrokerError> {
        Self::connect_with(url, topology, BrokerOptions::default()).await
    }

    /// Validates the URL and topology, then makes one attempt to connect and
    /// declare the topology on both connections. Fails on errors that
    /// retrying cannot fix (malformed URL, `amqps://`, refused login or vhost,
    /// topology contradicting existing queues). If RabbitMQ is merely
    /// unreachable (or the attempt takes over 15 s), returns anyway with
    /// [`Broker::healthy`] `false` and keeps retrying in the background.
    /// Must be called inside a Tokio runtime.
    pub async fn connect_with(
        url: &str,
        topology: TopologyConfig,
        options: BrokerOptions,
    ) -> Result<Self, BrokerError> {
        let mut uri: AMQPUri = url.parse().map_err(BrokerError::InvalidUrl)?;
        if uri.scheme == AMQPScheme::AMQPS {
            return Err(BrokerError::TlsUnsupported);
        }
        uri.query.heartbeat.get_or_insert(DEFAULT_HEARTBEAT_SECS);
        uri.query.connection_timeout.get_or_insert(DEFAULT_CONNECT_TIMEOUT_MS);
        let topology = topology.validate()?;
        if options.backoff_min.is_zero() || options.backoff_max < options.backoff_min {
            return Err(BrokerError::InvalidConfig("backoff_min must be > 0 and ≤ backoff_max".into()));
        }
        let shared = Arc::new(Shared {
            uri,
            topology,
            options,
            links: [0, 1].map(|_| Link { live: watch::Sender::new(None), reconnects: AtomicU64::new(0) }),
            shutdown: watch::Sender::new(false),
            supervisors: Mutex::new(Vec::new()),
            consumer_seq: AtomicU64::new(0),
        });
        let broker = Self { shared: shared.clone(), _owner: Arc::new(Owner(shared.clone())) };
        let mut first = Vec::new();
        for role in [PUBLISH, CONSUME] {
            let (tx, rx) = oneshot::channel();
            let handle = tokio::spawn(supervise(shared.clone(), role, tx));
            shared.supervisors.lock().unwrap().push(handle);
            first.push(rx);
        }
        let deadline = Instant::now() + FIRST_ATTEMPT_WAIT;
        for rx in first {
            // A dropped sender means the supervisor is gone (shutdown); a slow
            // first attempt goes on in the background.
            if let Ok(Ok(Err(e))) = tokio::time::timeout_at(deadline, rx).await {
                broker.close().await;
                return Err(e);
            }
        }
        Ok(broker)
    }

    /// The (validated) topology this broker declares.
    pub fn topology(&self) -> &TopologyConfig {
        &self.shared.topology
    }

    /// Both connections are up, declared and not blocked by a resource alarm.
    /// No I/O; see [`Broker::ping`] for a round trip.
    pub fn healthy(&self) -> bool {
        self.shared.links.iter().all(|l| {
            l.live.borrow().as_ref().is_some_and(|live| live.usable() && !live.blocked.load(Ordering::Relaxed))
        })
    }

    /// A round trip on each connection (a passive declare of the work
    /// exchange on a short-lived channel), each bounded by 5 s.
    pub async fn ping(&self) -> Result<(), BrokerError> {
        for role in [PUBLISH, CONSUME] {
            let live = self.current(role)?;
            let round_trip = async {
                let channel = live.conn.create_channel().await?;
                let passive = ExchangeDeclareOptions { passive: true, ..Default::default() };
                channel
                    .exchange_declare(
                        self.shared.topology.work_exchange().into(),
                        ExchangeKind::Direct,
                        passive,
                        FieldTable::default(),
                    )
                    .await?;
                let _ = channel.close(200, "ping".into()).await;
                Ok::<_, lapin::Error>(())
            };
            let result = match tokio::time::timeout(PING_TIMEOUT, round_trip).await {
                Ok(result) => result.map_err(BrokerError::from),
                Err(_) => Err(BrokerError::Timeout),
            };
            if result.is_err() {
                live.kick.notify_one();
                return result;
            }
        }
        Ok(())
    }

    /// Waits until both connections are up (declared; possibly blocked), at
    /// most `timeout`.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        for role in [PUBLISH, CONSUME] {
            match tokio::time::timeout_at(deadline, self.wait_live(role)).await {
                Ok(Ok(_)) => {}
                _ => return false,
            }
        }
        true
    }

    /// How many times each connection was re-established after a loss:
    /// `(publish, consume)`.
    pub fn reconnects(&self) -> (u64, u64) {
        let n = |role: usize| self.shared.links[role].reconnects.load(Ordering::Relaxed);
        (n(PUBLISH), n(CONSUME))
    }

    /// Publishes `msgs` (persistent, `mandatory`, `message-id` set) on the
    /// publish connection's confirm channel and waits for all their confirms
    /// at once (up to `confirm_timeout`). Returns one result per message, in
    /// input order; delete an outbox row only for [`PublishResult::Confirmed`].
    ///
    /// Fails as a whole, before sending anything, when a target names a shard
    /// or tier the topology lacks ([`BrokerError::InvalidTarget`]), or when
    /// there is no connection ([`BrokerError::NotConnected`]; it does not wait
    /// for one). Batches from concurrent callers are written one after the
    /// other and confirmed concurrently.
    pub async fn publish_batch(&self, msgs: Vec<Outgoing>) -> Result<Vec<PublishResult>, BrokerError> {
        if msgs.is_empty() {
            return Ok(Vec::new());
        }
        let topology = &self.shared.topology;
        for m in &msgs {
            if m.target.shard() >= topology.shards {
                return Err(BrokerError::InvalidTarget(format!(
                    "shard {} (the topology has {})",
                    m.target.shard(),
                    topology.shards
                )));
            }
            if let Target::Wait { tier, .. } = &m.target
                && topology.tier(tier).is_none()
            {
                return Err(BrokerError::InvalidTarget(format!("delay tier {tier:?} is not configured")));
            }
        }
        let live = self.current(PUBLISH)?;
        let (work, wait) = (topology.work_exchange(), topology.wait_exchange());

        let n = msgs.len();
        let deadline = Instant::now() + self.shared.options.confirm_timeout;

        // Write phase, one batch at a time per channel: the confirm sequence
        // numbers must follow the order in which frames reach the socket.
        // Bounded by the deadline too: a connection blocked by a resource
        // alarm stops taking frames.
        let write = async {
            let mut publisher = live.publisher.lock().await;
            let channel = match publisher.as_ref().filter(|c| c.status().connected()) {
                Some(channel) => channel.clone(),
                None => match open_publisher(&live.conn).await {
                    Ok(channel) => publisher.insert(channel).clone(),
                    Err(e) => {
                        live.kick.notify_one();
                        return Err(if live.usable() { e.into() } else { BrokerError::NotConnected });
                    }
                },
            };
            let mandatory = BasicPublishOptions { mandatory: true, ..Default::default() };
            Ok(join_all(msgs.iter().map(|m| {
                let mut props =
                    BasicProperties::default().with_delivery_mode(2).with_message_id(m.message_id.as_str().into());
                let exchange = match &m.target {
                    Target::Work { .. } => &work,
                    Target::Wait { tier, .. } => {
                        let mut headers = FieldTable::default();
                        let bcc = FieldArray::from(vec![AMQPValue::LongString(LongString::from(tier.as_str()))]);
                        headers.insert("BCC".into(), AMQPValue::FieldArray(bcc));
                        props = props.with_headers(headers);
                        &wait
                    }
                };
                let routing_key = m.target.shard().to_string();
                channel.basic_publish(exchange.as_str().into(), routing_key.into(), mandatory, &m.payload, props)
            }))
            .await)
        };
        let sent = match tokio::time::timeout_at(deadline, write).await {
            Ok(sent) => sent?,
            Err(_) => {
                self.confirms_timed_out(&live).await;
                return Ok(vec![PublishResult::Unconfirmed; n]);
            }
        };

        // Confirm phase: every confirm of the batch awaited concurrently.
        let timed_out = AtomicBool::new(false);
        let results = join_all(sent.into_iter().map(|sent| async {
            let Ok(confirm) = sent else { return PublishResult::Unconfirmed };
            match tokio::time::timeout_at(deadline, confirm).await {
                Ok(Ok(Confirmation::Ack(None))) => PublishResult::Confirmed,
                Ok(Ok(Confirmation::Ack(Some(_)))) => PublishResult::Returned,
                Ok(Ok(Confirmation::Nack(_))) => PublishResult::Nacked,
                Ok(Ok(Confirmation::NotRequested) | Err(_)) => PublishResult::Unconfirmed,
                Err(_) => {
                    timed_out.store(true, Ordering::Relaxed);
                    PublishResult::Unconfirmed
                }
            }
        }))
        .await;

        if timed_out.load(Ordering::Relaxed) {
            self.confirms_timed_out(&live).await;
        } else if results.contains(&PublishResult::Unconfirmed) {
            live.kick.notify_one();
        }
        Ok(results)
    }

    /// Starts consuming work shard `shard` with at most `prefetch` unacked
    /// deliveries, on a channel of its own. Waits until the consume connection
    /// is up (cancel-safe: wrap it in a timeout if needed). The queue has a
    /// single active consumer: a second consumer of the same shard (here or in
    /// another process) gets nothing until the first goes away.
    pub async fn consume(&self, shard: u16, prefetch: u16) -> Result<Consumer, BrokerError> {
        if shard >= self.shared.topology.shards {
            return Err(BrokerError::InvalidTarget(format!(
                "shard {shard} (the topology has {})",
                self.shared.topology.shards
            )));
        }
        if prefetch == 0 {
            return Err(BrokerError::InvalidConfig("prefetch must be at least 1".into()));
        }
        let live = self.wait_live(CONSUME).await?;
        let result = async {
            let channel = live.conn.create_channel().await?;
            channel.basic_qos(prefetch, BasicQosOptions { global: false }).await?;
            let seq = self.shared.consumer_seq.fetch_add(1, Ordering::Relaxed);
            let tag = format!("{}-{shard}-{seq}", self.shared.options.connection_name);
            let queue = self.shared.topology.work_queue(shard);
            let inner = channel
                .basic_consume(queue.into(), tag.into(), BasicConsumeOptions::default(), FieldTable::default())
                .await?;
            Ok::<_, lapin::Error>(Consumer::new(channel, inner, shard))
        }
        .await;
        result.map_err(|e| {
            live.kick.notify_one();
            if live.usable() { e.into() } else { BrokerError::NotConnected }
        })
    }

    /// Stops both supervisors and closes the connections (consumers end).
    /// Other clones of this handle then fail with [`BrokerError::Closed`]
    /// or [`BrokerError::NotConnected`].
    pub async fn close(&self) {
        self.shared.shutdown.send_replace(true);
        let handles: Vec<_> = std::mem::take(&mut *self.shared.supervisors.lock().unwrap());
        for handle in handles {
            let _ = handle.await;
        }
    }

    /// Starts the next batch on a fresh channel rather than behind confirms
    /// (or frames) that may never go through.
    async fn confirms_timed_out(&self, live: &Live) {
        tracing::warn!(
            timeout = ?self.shared.options.confirm_timeout,
            blocked = live.blocked.load(Ordering::Relaxed),
            "RabbitMQ publish timed out; the batch is reported unconfirmed"
        );
        live.kick.notify_one();
        // Another batch may hold the channel, stuck the same way: it resets it
        // itself when its own deadline passes.
        if let Ok(mut publisher) = live.publisher.try_lock() {
            // Dropped, not closed: a close would wait for RabbitMQ's answer.
            drop(publisher.take());
        }
    }

    fn current(&self, role: usize) -> Result<Arc<Live>, BrokerError> {
        if *self.shared.shutdown.borrow() {
            return Err(BrokerError::Closed);
        }
        match self.shared.links[role].live.borrow().as_ref() {
            Some(live) if live.usable() => Ok(live.clone()),
            Some(live) => {
                live.kick.notify_one();
                Err(BrokerError::NotConnected)
            }
            None => Err(BrokerError::NotConnected),
        }
    }

    async fn wait_live(&self, role: usize) -> Result<Arc<Live>, BrokerError> {
        let mut live = self.shared.links[role].live.subscribe();
        let mut shutdown = self.shared.shutdown.subscribe();
        loop {
            if *shutdown.borrow_and_update() {
                return Err(BrokerError::Closed);
            }
            if let Some(l) = live.borrow_and_update().as_ref() {
                if l.usable() {
                    return Ok(l.clone());
                }
                l.kick.notify_one();
            }
            tokio::select! {
                changed = live.changed() => changed.map_err(|_| BrokerError::Closed)?,
                _ = shutdown.changed() => {}
            }
        }
    }
}

async fn open_publisher(conn: &Connection) -> Result<Channel, lapin::Error> {
    let channel = conn.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(channel)
}

/// Connects, declares the topology and (publish role) opens the confirm
/// channel.
async fn establish(shared: &Shared, role: usize) -> Result<Arc<Live>, BrokerError> {
    let name = format!("{}-{}", shared.options.connection_name, ROLES[role]);
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let conn = Connection::connect_uri(shared.uri.clone(), props).await.map_err(|e| {
        use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
        match e.kind() {
            lapin::ErrorKind::ProtocolError(p)
                if matches!(
                    p.kind(),
                    AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED)
                ) =>
            {
                BrokerError::Refused(e)
            }
            _ => BrokerError::Amqp(e),
        }
    })?;
    let declared = async {
        let channel = conn.create_channel().await?;
        shared.topology.declare(&channel).await?;
        if role == PUBLISH {
            channel.confirm_select(ConfirmSelectOptions::default()).await?;
            Ok(Some(channel))
        } else {
            let _ = channel.close(200, "declared".into()).await;
            Ok(None)
        }
    }
    .await;
    match declared {
        Ok(publisher) => Ok(Arc::new(Live {
            conn,
            publisher: tokio::sync::Mutex::new(publisher),
            kick: Notify::new(),
            blocked: AtomicBool::new(false),
        })),
        Err(e) => {
            let _ = conn.close(200, "declaration failed".into()).await;
            Err(e)
        }
    }
}

/// One connection's life cycle, forever: connect + declare, publish the live
/// connection, watch it, and on loss start over after a backoff. The first
/// attempt's outcome goes to `first` (fatal errors end the supervisor there).
async fn supervise(shared: Arc<Shared>, role: usize, first: oneshot::Sender<Result<(), BrokerError>>) {
    let link = &shared.links[role];
    let mut shutdown = shared.shutdown.subscribe();
    let mut first = Some(first);
    let mut delay = shared.options.backoff_min;
    let mut ever_connected = false;
    'outer: loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        let attempt = tokio::select! {
            attempt = tokio::time::timeout(ATTEMPT_TIMEOUT, establish(&shared, role)) => {
                attempt.unwrap_or(Err(BrokerError::Timeout))
            }
            _ = shutdown.changed() => break,
        };
        match attempt {
            Ok(live) => {
                let events = live.conn.events_listener();
                link.live.send_replace(Some(live.clone()));
                if let Some(first) = first.take() {
                    let _ = first.send(Ok(()));
                }
                if ever_connected {
                    link.reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(role = ROLES[role], "RabbitMQ reconnected, topology redeclared");
                }
                ever_connected = true;
                let since = Instant::now();
                let shut = watch_connection(&live, events, &mut shutdown).await;
                link.live.send_replace(None);
                if shut {
                    let close = live.conn.close(200, "shutdown".into());
                    let _ = tokio::time::timeout(PING_TIMEOUT, close).await;
                    break 'outer;
                }
                tracing::warn!(role = ROLES[role], "RabbitMQ connection lost; reconnecting");
                if since.elapsed() >= STABLE_AFTER {
                    delay = shared.options.backoff_min;
                }
            }
            Err(e) => {
                let fatal = e.is_fatal();
                if let Some(first) = first.take() {
                    if fatal {
                        let _ = first.send(Err(e));
                        break;
                    }
                    tracing::warn!(role = ROLES[role], error = %e, "RabbitMQ is not reachable; retrying in the background");
                    let _ = first.send(Ok(()));
                } else if fatal {
                    tracing::error!(role = ROLES[role], error = %e, "RabbitMQ refuses zapgate's connection or topology; retrying");
                } else {
                    tracing::warn!(role = ROLES[role], error = %e, "RabbitMQ connection attempt failed; retrying");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => break,
        }
        delay = (delay * 2).min(shared.options.backoff_max);
    }
    link.live.send_replace(None);
}

/// Returns when the connection is lost (`false`) or on shutdown (`true`).
async fn watch_connection(
    live: &Live,
    events: impl futures::Stream<Item = Event> + Send + 'static,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let mut events = std::pin::pin!(events);
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return true;
                }
            }
            event = events.next() => match event {
                Some(Event::Error(e)) => tracing::warn!(error = %e, "RabbitMQ connection error"),
                Some(Event::ConnectionBlocked(reason)) => {
                    tracing::warn!(%reason, "RabbitMQ blocked the connection (resource alarm)");
                    live.blocked.store(true, Ordering::Relaxed);
                }
                Some(Event::ConnectionUnblocked) => {
                    tracing::info!("RabbitMQ unblocked the connection");
                    live.blocked.store(false, Ordering::Relaxed);
                }
                Some(_) => {}
                None => return false,
            },
            _ = live.kick.notified() => {}
            _ = tick.tick() => {}
        }
        if !live.usable() {
            return false;
        }
    }
}
