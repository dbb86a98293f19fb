//! Keyed rate limits (GCRA). In process here; the distributed mode puts the
//! same contract on Redis.

use async_trait::async_trait;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter as Gcra};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

/// A refused request and how long until one would be allowed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throttled {
    pub retry_after: Duration,
}

#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Takes one unit for `key` under a quota of `per_second` with `burst`.
    async fn check(&self, key: &str, per_second: u32, burst: u32) -> Result<(), Throttled>;
}

/// GCRA limits per key, held in this process.
#[derive(Default)]
pub struct InProcessRateLimiter {
    limiters: Mutex<HashMap<String, (u32, u32, DefaultDirectRateLimiter)>>,
}

#[async_trait]
impl RateLimiter for InProcessRateLimiter {
    async fn check(&self, key: &str, per_second: u32, burst: u32) -> Result<(), Throttled> {
        let mut map = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(key.to_owned()).or_insert_with(|| (0, 0, Gcra::direct(quota(per_second, burst))));
        if (entry.0, entry.1) != (per_second, burst) {
            *entry = (per_second, burst, Gcra::direct(quota(per_second, burst)));
        }
        entry
            .2
            .check()
            .map_err(|not_until| Throttled { retry_after: not_until.wait_time_from(DefaultClock::default().now()) })
    }
}

/// A GCRA quota; zero values are lifted to 1 (a quota cannot be empty).
pub fn quota(per_second: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(per_second.max(1)).expect("max(1) is non-zero");
    let burst = NonZeroU32::new(burst.max(1)).expect("max(1) is non-zero");
    Quota::per_second(rate).allow_burst(burst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn burst_then_throttled_with_a_wait_hint() {
        let l = InProcessRateLimiter::default();
        for _ in 0..3 {
            l.check("k", 1, 3).await.unwrap();
        }
        let t = l.check("k", 1, 3).await.unwrap_err();
        assert!(t.retry_after > Duration::ZERO && t.retry_after <= Duration::from_secs(1));
        l.check("other", 1, 3).await.expect("keys are independent");
    }
}
