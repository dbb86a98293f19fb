//! The one place that decides what a provider failure means.
//!
//! | failure                    | class     | spends an attempt |
//! |----------------------------|-----------|-------------------|
//! | `Throttled` (429, 130429)  | retry     | no: the message is fine, the pace is not |
//! | `Unavailable` (5xx, network)| retry    | yes               |
//! | `Timeout`                  | retry     | yes               |
//! | `Rejected` (4xx by policy) | permanent | —                 |
//!
//! An outage failure (`Unavailable`, `Timeout`) spends no attempt either when
//! the endpoint's circuit is open after it (`circuit.rs`): the endpoint is
//! down, not the message.

use crate::ProviderError;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub enum Classification {
    Retry { spend_attempt: bool, retry_after: Option<Duration>, code: String, message: String },
    Permanent { code: String, message: String },
}

pub fn classify(e: &ProviderError) -> Classification {
    match e {
        ProviderError::Throttled { code, retry_after } => Classification::Retry {
            spend_attempt: false,
            retry_after: *retry_after,
            code: code.clone(),
            message: e.to_string(),
        },
        ProviderError::Unavailable { code, message, retry_after } => Classification::Retry {
            spend_attempt: true,
            retry_after: *retry_after,
            code: code.clone(),
            message: message.clone(),
        },
        ProviderError::Timeout => Classification::Retry {
            spend_attempt: true,
            retry_after: None,
            code: "timeout".into(),
            message: e.to_string(),
        },
        ProviderError::Rejected { code, message } => {
            Classification::Permanent { code: code.clone(), message: message.clone() }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_waits_without_spending_attempts() {
        let c =
            classify(&ProviderError::Throttled { code: "130429".into(), retry_after: Some(Duration::from_secs(2)) });
        assert!(matches!(c, Classification::Retry { spend_attempt: false, retry_after: Some(_), .. }));
    }

    #[test]
    fn outages_and_timeouts_spend_attempts_rejections_are_permanent() {
        let c = classify(&ProviderError::Unavailable { code: "503".into(), message: "down".into(), retry_after: None });
        assert!(matches!(c, Classification::Retry { spend_attempt: true, .. }));
        assert!(matches!(classify(&ProviderError::Timeout), Classification::Retry { spend_attempt: true, .. }));
        let c = classify(&ProviderError::Rejected { code: "131026".into(), message: "undeliverable".into() });
        assert_eq!(c, Classification::Permanent { code: "131026".into(), message: "undeliverable".into() });
    }
}
