//! Short-lived named locks with an expiry (the `SET key token NX PX ttl`
//! contract): in process here, Redis in distributed mode. A lock that is
//! not released expires on its own, so a crashed holder blocks no one for
//! longer than its TTL. Locks only guard concurrent work; correctness never
//! rests on them (unique keys in the store do that).

use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Proof of holding a lock; releasing needs it, so a holder whose lock
/// expired and was taken by another cannot release the other's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockToken(u64);

impl LockToken {
    /// A token with this value; implementations choose values that cannot
    /// collide with their own (the Redis locks use random values with the
    /// top bit set, [`InProcessLocks`] counts up from zero).
    pub(crate) const fn new(value: u64) -> Self {
        Self(value)
    }

    pub(crate) const fn get(self) -> u64 {
        self.0
    }
}

#[async_trait]
pub trait Locks: Send + Sync + 'static {
    /// Takes `key` for `ttl` unless a live holder has it.
    async fn try_acquire(&self, key: &str, ttl: Duration) -> Option<LockToken>;
    /// Releases `key` if `token` still holds it; returns whether it did.
    async fn release(&self, key: &str, token: LockToken) -> bool;
}

/// Takes `key` for `ttl`, trying every 50 ms while a live holder has it,
/// for at most `within` (None: until it is free, which a holder's TTL bounds).
pub async fn acquire_waiting(
    locks: &dyn Locks,
    key: &str,
    ttl: Duration,
    within: Option<Duration>,
) -> Option<LockToken> {
    let deadline = within.map(|w| tokio::time::Instant::now() + w);
    loop {
        if let Some(token) = locks.try_acquire(key, ttl).await {
            return Some(token);
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Default)]
pub struct InProcessLocks {
    held: Mutex<HashMap<String, (LockToken, Instant)>>,
    next: AtomicU64,
}

impl InProcessLocks {
    /// Whether a live holder has `key` (the Redis locks ask this of their
    /// fallback, so a lock taken here during an outage still counts).
    pub(crate) fn is_held(&self, key: &str) -> bool {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.get(key).is_some_and(|(_, until)| *until > Instant::now())
    }
}

#[async_trait]
impl Locks for InProcessLocks {
    async fn try_acquire(&self, key: &str, ttl: Duration) -> Option<LockToken> {
        let now = Instant::now();
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held.len() > 10_000 {
            held.retain(|_, (_, until)| *until > now);
        }
        if let Some((_, until)) = held.get(key)
            && *until > now
        {
            return None;
        }
        let token = LockToken(self.next.fetch_add(1, Ordering::Relaxed));
        held.insert(key.to_owned(), (token, now + ttl));
        Some(token)
    }

    async fn release(&self, key: &str, token: LockToken) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        match held.get(key) {
            Some((t, _)) if *t == token => {
                held.remove(key);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_at_a_time_until_release_or_expiry() {
        let l = InProcessLocks::default();
        let a = l.try_acquire("k", Duration::from_secs(60)).await.expect("free");
        assert!(l.try_acquire("k", Duration::from_secs(60)).await.is_none(), "held");
        assert!(l.try_acquire("other", Duration::from_secs(60)).await.is_some(), "keys are independent");
        assert!(l.release("k", a).await);
        let b = l.try_acquire("k", Duration::from_millis(20)).await.expect("released");
        tokio::time::sleep(Duration::from_millis(40)).await;
        let c = l.try_acquire("k", Duration::from_secs(60)).await.expect("expired locks can be taken");
        assert!(!l.release("k", b).await, "an expired holder cannot release the new holder's lock");
        assert!(l.release("k", c).await);
    }
}
