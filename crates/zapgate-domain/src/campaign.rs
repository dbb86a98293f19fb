//! A campaign's life: draft → running ⇄ paused → completed, or cancelled.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CampaignState {
    /// Created; recipients may be added.
    Draft,
    /// Releasing (from `start_at`, if set).
    Running,
    Paused,
    /// Every recipient released and every message settled.
    Completed,
    Cancelled,
}

impl CampaignState {
    pub fn as_str(self) -> &'static str {
        match self {
            CampaignState::Draft => "draft",
            CampaignState::Running => "running",
            CampaignState::Paused => "paused",
            CampaignState::Completed => "completed",
            CampaignState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "draft" => CampaignState::Draft,
            "running" => CampaignState::Running,
            "paused" => CampaignState::Paused,
            "completed" => CampaignState::Completed,
            "cancelled" => CampaignState::Cancelled,
            _ => return None,
        })
    }
}

/// Where a campaign's recipients are. `sent` counts every message the
/// provider took (also those now delivered or read), `delivered` those
/// delivered or read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CampaignProgress {
    pub total: u64,
    /// Not released yet.
    pub pending: u64,
    /// Released, not yet taken by the provider.
    pub queued: u64,
    pub sent: u64,
    pub delivered: u64,
    pub read: u64,
    /// Failed, dead-lettered or expired.
    pub failed: u64,
    pub cancelled: u64,
}
// (`read` counts `played` too: a voice note listened to.)

impl CampaignProgress {
    /// From the campaign's counts and how many of its messages are in each status.
    pub fn tally(total: u64, released: u64, statuses: &[(crate::MessageStatus, u64)]) -> Self {
        use crate::MessageStatus as S;
        let mut p = Self { total, pending: total.saturating_sub(released), ..Default::default() };
        for &(status, n) in statuses {
            match status {
                S::Scheduled | S::Queued | S::Sending | S::RetryWait => p.queued += n,
                S::Sent => p.sent += n,
                S::Delivered => {
                    p.sent += n;
                    p.delivered += n;
                }
                S::Read | S::Played => {
                    p.sent += n;
                    p.delivered += n;
                    p.read += n;
                }
                S::Cancelled => p.cancelled += n,
                _ => p.failed += n,
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MessageStatus as S;

    #[test]
    fn progress_counts_each_message_once_in_each_column_it_reached() {
        let p = CampaignProgress::tally(
            10,
            8,
            &[
                (S::Queued, 1),
                (S::Sending, 1),
                (S::Sent, 1),
                (S::Delivered, 2),
                (S::Read, 1),
                (S::Dead, 1),
                (S::Cancelled, 1),
            ],
        );
        assert_eq!(
            p,
            CampaignProgress {
                total: 10,
                pending: 2,
                queued: 2,
                sent: 4,
                delivered: 3,
                read: 1,
                failed: 1,
                cancelled: 1
            }
        );
    }
}
