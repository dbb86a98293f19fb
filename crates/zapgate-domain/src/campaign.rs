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
