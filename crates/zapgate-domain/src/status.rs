//! The message state model: one table of rules, in one place.
//!
//! Two layers share one `status` value:
//! - gateway states, zapgate's own work: `scheduled`, `queued`, `sending`,
//!   `retry_wait`, `dead`, `cancelled`, `expired` (they may repeat per attempt);
//! - provider states, what WhatsApp reports: `sent < delivered < read < played`,
//!   plus `failed`. They only move forward, by [`MessageStatus::rank`].

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    Scheduled,
    Queued,
    Sending,
    RetryWait,
    Dead,
    Cancelled,
    Expired,
    Sent,
    Delivered,
    Read,
    Played,
    Failed,
    /// An inbound message (from a contact, or sent from the instance's phone).
    Received,
}

/// Rank of `failed`; it may only replace a status of rank <= [`SENT_RANK`].
pub const FAILED_RANK: i64 = 5;
pub const SENT_RANK: i64 = 1;

impl MessageStatus {
    pub const ALL: [MessageStatus; 13] = [
        Self::Scheduled,
        Self::Queued,
        Self::Sending,
        Self::RetryWait,
        Self::Dead,
        Self::Cancelled,
        Self::Expired,
        Self::Sent,
        Self::Delivered,
        Self::Read,
        Self::Played,
        Self::Failed,
        Self::Received,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Queued => "queued",
            Self::Sending => "sending",
            Self::RetryWait => "retry_wait",
            Self::Dead => "dead",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Read => "read",
            Self::Played => "played",
            Self::Failed => "failed",
            Self::Received => "received",
        }
    }

    /// Provider-state rank used by the conditional "only forward" update.
    /// Gateway states are rank 0: any provider state may replace them.
    pub fn rank(self) -> i64 {
        match self {
            Self::Sent => SENT_RANK,
            Self::Delivered => 2,
            Self::Read => 3,
            Self::Played => 4,
            Self::Failed => FAILED_RANK,
            _ => 0,
        }
    }

    /// Steps of zapgate's own work that tenants see only if they ask for
    /// them (a webhook with `include_internal`). Outcomes — provider states
    /// and `dead`, `cancelled`, `expired` — are always public.
    pub fn is_internal(self) -> bool {
        matches!(self, Self::Scheduled | Self::Queued | Self::Sending | Self::RetryWait)
    }

    pub fn is_provider_state(self) -> bool {
        self.rank() > 0
    }

    /// Whether a provider report of `next` may replace `self`. A late
    /// `delivered` after `read` is history only; `failed` only replaces a
    /// status up to `sent`.
    pub fn provider_update_applies(self, next: MessageStatus) -> bool {
        match next {
            Self::Failed => self.rank() <= SENT_RANK,
            n if n.is_provider_state() => self.rank() < n.rank() && self != Self::Failed,
            _ => false,
        }
    }

    /// Whether the gateway is done with the message: no queue entry remains.
    pub fn leaves_queue(self) -> bool {
        !matches!(self, Self::Scheduled | Self::Queued | Self::Sending | Self::RetryWait)
    }

    /// States the gateway may move a message into from `self` (provider states
    /// excluded: those follow [`Self::provider_update_applies`]).
    pub fn gateway_transition_allowed(self, next: MessageStatus) -> bool {
        use MessageStatus::*;
        matches!(
            (self, next),
            (Scheduled | Queued | RetryWait, Sending)
                | (Scheduled | Queued | RetryWait, Cancelled | Expired)
                | (RetryWait, Queued)
                | (Sending, Sent | RetryWait | Failed | Dead | Expired | Queued | Cancelled)
                | (Dead, Queued)
        )
    }
}

impl fmt::Display for MessageStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MessageStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| format!("unknown status {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::MessageStatus::*;
    use super::*;

    #[test]
    fn provider_states_only_move_forward() {
        assert!(Sent.provider_update_applies(Delivered));
        assert!(Sent.provider_update_applies(Read), "read may come without delivered");
        assert!(!Read.provider_update_applies(Delivered), "late delivered after read changes nothing");
        assert!(!Delivered.provider_update_applies(Delivered));
        assert!(Read.provider_update_applies(Played));
    }

    #[test]
    fn failed_only_from_sent_or_earlier() {
        assert!(Sent.provider_update_applies(Failed));
        assert!(Sending.provider_update_applies(Failed));
        assert!(!Delivered.provider_update_applies(Failed));
        assert!(!Failed.provider_update_applies(Delivered));
    }

    #[test]
    fn gateway_rules() {
        assert!(Queued.gateway_transition_allowed(Sending));
        assert!(Sending.gateway_transition_allowed(RetryWait));
        assert!(Dead.gateway_transition_allowed(Queued));
        assert!(!Sent.gateway_transition_allowed(Sending));
        assert!(!Failed.gateway_transition_allowed(Queued));
    }

    #[test]
    fn names_round_trip() {
        for s in MessageStatus::ALL {
            assert_eq!(s.as_str().parse::<MessageStatus>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
