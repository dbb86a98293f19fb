//! The exchanges and queues zapgate declares, their names, and the two pure
//! functions that route into them ([`shard_of`], [`TopologyConfig::tier_for`]).
//! See the module doc of [`crate::amqp`] for the picture.

use super::BrokerError;
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ExchangeKind};
use std::time::Duration;

/// Default number of work shards.
pub const DEFAULT_SHARDS: u16 = 16;
/// Default `x-max-length` of each work shard queue.
pub const DEFAULT_WORK_MAX_LENGTH: u32 = 50_000;
/// Default `x-max-length` of each wait (delay tier) queue.
pub const DEFAULT_WAIT_MAX_LENGTH: u32 = 100_000;

/// One delay tier: a wait queue whose messages all expire after `ttl` and then
/// return to their work shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tier {
    /// Used in the queue name (`{prefix}.wait.{name}`) and as its binding key.
    pub name: String,
    pub ttl: Duration,
}

impl Tier {
    pub fn new(name: impl Into<String>, ttl: Duration) -> Self {
        Self { name: name.into(), ttl }
    }
}

/// The default tiers: 5 s, 30 s, 2 min, 10 min, 1 h, 6 h.
pub fn default_tiers() -> Vec<Tier> {
    [("5s", 5), ("30s", 30), ("2m", 120), ("10m", 600), ("1h", 3_600), ("6h", 21_600)]
        .into_iter()
        .map(|(name, secs)| Tier::new(name, Duration::from_secs(secs)))
        .collect()
}

/// The smallest default tier whose TTL is ≥ `delay`, or the longest one
/// (6 h) for anything longer. See [`TopologyConfig::tier_for`].
pub fn tier_for(delay: Duration) -> Tier {
    pick_tier(&default_tiers(), delay).clone()
}

fn pick_tier(tiers: &[Tier], delay: Duration) -> &Tier {
    tiers
        .iter()
        .filter(|t| t.ttl >= delay)
        .min_by_key(|t| t.ttl)
        .or_else(|| tiers.iter().max_by_key(|t| t.ttl))
        .expect("at least one delay tier")
}

/// The work shard of an instance: `fnv1a_64(instance_id) % shards`. Stable
/// across processes, builds and platforms (no per-process hash keys), so every
/// relay routes an instance to the same shard.
///
/// Changing `shards` moves most instances to another shard; drain the work
/// queues (stop the relays, let the workers empty them) before changing it,
/// otherwise one instance could briefly be served by two workers.
pub fn shard_of(instance_id: &str, shards: u16) -> u16 {
    assert!(shards > 0, "shards must be at least 1");
    (fnv1a_64(instance_id.as_bytes()) % u64::from(shards)) as u16
}

fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(PRIME))
}

/// What to declare. Every process of a deployment must use the same values:
/// a queue declared with other arguments than the existing one is refused by
/// RabbitMQ (`PRECONDITION_FAILED - inequivalent arg`), and [`super::Broker`]
/// then reports the mismatch instead of starting.
#[derive(Clone, Debug)]
pub struct TopologyConfig {
    /// Prefix of every exchange and queue name (default `zapgate`). Tests use
    /// a unique one per test.
    pub prefix: String,
    /// Number of work shards (default 16).
    pub shards: u16,
    /// `x-max-length` of each work shard (default 50 000); publishes beyond it
    /// are nacked (`x-overflow = reject-publish`).
    pub work_max_length: u32,
    /// Delay tiers, any order (sorted by TTL when validated); default
    /// [`default_tiers`].
    pub tiers: Vec<Tier>,
    /// `x-max-length` of each wait queue (default 100 000).
    pub wait_max_length: u32,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        Self {
            prefix: "zapgate".into(),
            shards: DEFAULT_SHARDS,
            work_max_length: DEFAULT_WORK_MAX_LENGTH,
            tiers: default_tiers(),
            wait_max_length: DEFAULT_WAIT_MAX_LENGTH,
        }
    }
}

impl TopologyConfig {
    /// Checks the values and sorts the tiers by TTL.
    pub(crate) fn validate(mut self) -> Result<Self, BrokerError> {
        let bad = |why: String| Err(BrokerError::InvalidConfig(why));
        let name_ok =
            |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !name_ok(&self.prefix) {
            return bad(format!("prefix {:?} must be non-empty ASCII letters, digits, '_', '-' or '.'", self.prefix));
        }
        if self.shards == 0 {
            return bad("shards must be at least 1".into());
        }
        if self.work_max_length == 0 || self.wait_max_length == 0 {
            return bad("work_max_length and wait_max_length must be at least 1".into());
        }
        if self.tiers.is_empty() {
            return bad("at least one delay tier is needed".into());
        }
        self.tiers.sort_by_key(|t| t.ttl);
        for (i, t) in self.tiers.iter().enumerate() {
            if !name_ok(&t.name) {
                return bad(format!("tier name {:?} must be ASCII letters, digits, '_', '-' or '.'", t.name));
            }
            if t.ttl.is_zero() || t.ttl.as_millis() > u128::from(u32::MAX) {
                return bad(format!("tier {} TTL must be between 1 ms and ~49 days", t.name));
            }
            // A tier name that parses as a number would collide with the shard
            // routing keys (messages are published to the wait exchange with
            // the shard as routing key, see `Target::Wait`).
            if t.name.parse::<u64>().is_ok() {
                return bad(format!("tier name {:?} must not be a number", t.name));
            }
            if self.tiers[..i].iter().any(|o| o.name == t.name) {
                return bad(format!("tier name {:?} is used twice", t.name));
            }
        }
        Ok(self)
    }

    /// The smallest configured tier whose TTL is ≥ `delay` (a wanted delay
    /// rounds up), or the longest tier for anything longer. Panics when no
    /// tier is configured (a validated config has at least one).
    pub fn tier_for(&self, delay: Duration) -> &Tier {
        pick_tier(&self.tiers, delay)
    }

    /// The tier with this name, if configured.
    pub fn tier(&self, name: &str) -> Option<&Tier> {
        self.tiers.iter().find(|t| t.name == name)
    }

    /// The work shard of an instance under this configuration.
    pub fn shard_of(&self, instance_id: &str) -> u16 {
        shard_of(instance_id, self.shards)
    }

    /// `{prefix}.work`: direct exchange, routing key = shard number.
    pub fn work_exchange(&self) -> String {
        format!("{}.work", self.prefix)
    }

    /// `{prefix}.wait`: direct exchange, bound by tier name.
    pub fn wait_exchange(&self) -> String {
        format!("{}.wait", self.prefix)
    }

    /// `{prefix}.work.{shard}`.
    pub fn work_queue(&self, shard: u16) -> String {
        format!("{}.work.{shard}", self.prefix)
    }

    /// `{prefix}.wait.{tier}`.
    pub fn wait_queue(&self, tier: &Tier) -> String {
        format!("{}.wait.{}", self.prefix, tier.name)
    }

    /// Arguments of a work shard queue.
    pub fn work_queue_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), long_str("quorum"));
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        args.insert("x-max-length".into(), AMQPValue::LongLongInt(i64::from(self.work_max_length)));
        args.insert("x-overflow".into(), long_str("reject-publish"));
        args
    }

    /// Arguments of a wait queue.
    pub fn wait_queue_args(&self, tier: &Tier) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), long_str("quorum"));
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(tier.ttl.as_millis() as i64));
        // No x-dead-letter-routing-key: expired messages keep the routing key
        // they were published with, which is their shard number.
        args.insert("x-dead-letter-exchange".into(), long_str(&self.work_exchange()));
        args.insert("x-dead-letter-strategy".into(), long_str("at-least-once"));
        args.insert("x-overflow".into(), long_str("reject-publish"));
        args.insert("x-max-length".into(), AMQPValue::LongLongInt(i64::from(self.wait_max_length)));
        args
    }

    /// Deletes every queue (messages included) and exchange that
    /// [`declare`](Self::declare) makes, on a connection of its own to `url`:
    /// for tearing down a retired prefix, or a test's topology.
    pub async fn delete(&self, url: &str) -> Result<(), BrokerError> {
        let conn = Connection::connect(url, Default::default()).await?;
        let channel = conn.create_channel().await?;
        let queues = (0..self.shards).map(|s| self.work_queue(s)).chain(self.tiers.iter().map(|t| self.wait_queue(t)));
        for queue in queues {
            channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await?;
        }
        for exchange in [self.work_exchange(), self.wait_exchange()] {
            channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await?;
        }
        conn.close(200, "topology deleted".into()).await?;
        Ok(())
    }

    /// Declares everything on `channel`. Idempotent: declaring an existing
    /// exchange, queue or binding with the same arguments changes nothing, so
    /// any number of processes may run this at once and on every reconnect.
    pub(crate) async fn declare(&self, channel: &Channel) -> Result<(), BrokerError> {
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        let queue_opts = QueueDeclareOptions { durable: true, ..Default::default() };
        let what = |what: String| move |source| BrokerError::Declare { what, source };
        for exchange in [self.work_exchange(), self.wait_exchange()] {
            channel
                .exchange_declare(exchange.as_str().into(), ExchangeKind::Direct, durable, FieldTable::default())
                .await
                .map_err(what(format!("exchange {exchange}")))?;
        }
        let work = self.work_exchange();
        for shard in 0..self.shards {
            let queue = self.work_queue(shard);
            channel
                .queue_declare(queue.as_str().into(), queue_opts, self.work_queue_args())
                .await
                .map_err(what(format!("queue {queue}")))?;
            channel
                .queue_bind(
                    queue.as_str().into(),
                    work.as_str().into(),
                    shard.to_string().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(what(format!("binding {work} -> {queue}")))?;
        }
        let wait = self.wait_exchange();
        for tier in &self.tiers {
            let queue = self.wait_queue(tier);
            channel
                .queue_declare(queue.as_str().into(), queue_opts, self.wait_queue_args(tier))
                .await
                .map_err(what(format!("queue {queue}")))?;
            channel
                .queue_bind(
                    queue.as_str().into(),
                    wait.as_str().into(),
                    tier.name.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(what(format!("binding {wait} -> {queue}")))?;
        }
        Ok(())
    }
}

fn long_str(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_of_is_stable_and_in_range() {
        // Pinned values: a change here reroutes every instance of a running
        // deployment, so it must be deliberate.
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
        let pinned: Vec<u16> = ["inst_1", "inst_2", "0190f5a2-7c1e-7000-8000-000000000000", ""]
            .iter()
            .map(|id| shard_of(id, 16))
            .collect();
        assert_eq!(pinned, PINNED_SHARDS);
        for n in [1u16, 2, 7, 16, 1000, u16::MAX] {
            for i in 0..200 {
                let id = format!("instance-{i}");
                let s = shard_of(&id, n);
                assert!(s < n);
                assert_eq!(s, shard_of(&id, n), "same input, same shard");
            }
        }
        assert_eq!(shard_of("anything", 1), 0);
    }

    // Computed with an independent FNV-1a implementation (Python).
    const PINNED_SHARDS: [u16; 4] = [9, 0, 10, 5];

    #[test]
    fn shards_spread_evenly() {
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            counts[usize::from(shard_of(&format!("inst_{i}"), 16))] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "uneven spread: {counts:?}");
        }
    }

    #[test]
    fn tier_for_rounds_up() {
        let s = Duration::from_secs;
        let name = |d| tier_for(d).name;
        assert_eq!(name(Duration::ZERO), "5s");
        assert_eq!(name(Duration::from_millis(1)), "5s");
        assert_eq!(name(s(5)), "5s");
        assert_eq!(name(s(5) + Duration::from_millis(1)), "30s");
        assert_eq!(name(s(30)), "30s");
        assert_eq!(name(s(31)), "2m");
        assert_eq!(name(s(120)), "2m");
        assert_eq!(name(s(121)), "10m");
        assert_eq!(name(s(600)), "10m");
        assert_eq!(name(s(601)), "1h");
        assert_eq!(name(s(3_600)), "1h");
        assert_eq!(name(s(3_601)), "6h");
        assert_eq!(name(s(21_600)), "6h");
        assert_eq!(name(s(86_400)), "6h", "longer than every tier: the longest");
        assert_eq!(tier_for(s(7)).ttl, s(30));

        let config =
            TopologyConfig { tiers: vec![Tier::new("long", s(10)), Tier::new("short", s(1))], ..Default::default() };
        assert_eq!(config.tier_for(Duration::from_millis(500)).name, "short");
        assert_eq!(config.tier_for(s(2)).name, "long");
        assert_eq!(config.tier_for(s(99)).name, "long");
    }

    #[test]
    fn validate_rejects_bad_configs() {
        let ok = TopologyConfig::default().validate().unwrap();
        assert_eq!(ok.tiers, default_tiers());
        let bad = |c: TopologyConfig| assert!(matches!(c.validate(), Err(BrokerError::InvalidConfig(_))));
        bad(TopologyConfig { shards: 0, ..Default::default() });
        bad(TopologyConfig { prefix: String::new(), ..Default::default() });
        bad(TopologyConfig { prefix: "a b".into(), ..Default::default() });
        bad(TopologyConfig { tiers: vec![], ..Default::default() });
        bad(TopologyConfig { tiers: vec![Tier::new("1", Duration::from_secs(1))], ..Default::default() });
        bad(TopologyConfig { tiers: vec![Tier::new("z", Duration::ZERO)], ..Default::default() });
        bad(TopologyConfig {
            tiers: vec![Tier::new("a", Duration::from_secs(1)), Tier::new("a", Duration::from_secs(2))],
            ..Default::default()
        });
        bad(TopologyConfig { work_max_length: 0, ..Default::default() });
    }

    #[test]
    fn names() {
        let c = TopologyConfig::default();
        assert_eq!(c.work_exchange(), "zapgate.work");
        assert_eq!(c.wait_exchange(), "zapgate.wait");
        assert_eq!(c.work_queue(3), "zapgate.work.3");
        assert_eq!(c.wait_queue(&tier_for(Duration::from_secs(60))), "zapgate.wait.2m");
    }
}
