//! The one retry schedule for message sends: exponential backoff with
//! jitter, never sooner than the provider's Retry-After.

use rand::Rng;
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    /// Delay before the next try after `attempts` provider failures (≥ 1 when
    /// an attempt was spent). Jitter keeps a burst of failures from
    /// retrying in lockstep: the delay is drawn from [½·d, d].
    pub fn delay(&self, attempts: u32, retry_after: Option<Duration>) -> Duration {
        let exp = attempts.saturating_sub(1).min(20);
        let full = self.base.saturating_mul(1u32 << exp).min(self.max);
        let half = full / 2;
        let jittered = half + rand::rng().random_range(Duration::ZERO..=full - half);
        jittered.max(retry_after.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_within_jitter_and_caps() {
        let p = RetryPolicy { base: Duration::from_secs(2), max: Duration::from_secs(60) };
        for _ in 0..100 {
            let d1 = p.delay(1, None);
            assert!(d1 >= Duration::from_secs(1) && d1 <= Duration::from_secs(2));
            let d3 = p.delay(3, None);
            assert!(d3 >= Duration::from_secs(4) && d3 <= Duration::from_secs(8));
            assert!(p.delay(30, None) <= Duration::from_secs(60));
        }
    }

    #[test]
    fn retry_after_is_a_floor() {
        let p = RetryPolicy { base: Duration::from_millis(10), max: Duration::from_secs(1) };
        assert_eq!(p.delay(1, Some(Duration::from_secs(30))), Duration::from_secs(30));
    }
}
