//! The one state machine of an instance's WhatsApp connection, fed by what
//! providers report (webhooks). It exists because today's gateways show
//! instances "open" while dead and emit storms of identical connection
//! events: here a repeated state is coalesced (no event), and an instance
//! that changes state too often in a short window is declared `failed`
//! (flapping) and stays so until the window has passed without reports.

use crate::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Starting, or reconnecting.
    Connecting,
    /// Waiting for its QR code (or pairing code) to be scanned.
    Qr,
    /// Connected: it can send.
    Open,
    /// Disconnected; `reason` says why (connection_lost, replaced, banned, …).
    Closed,
    /// The phone unlinked it: it needs a new scan.
    LoggedOut,
    /// The provider reports the session failed, or it flapped (`reason: flapping`).
    Failed,
}

impl InstanceState {
    pub const ALL: [InstanceState; 6] = [
        InstanceState::Connecting,
        InstanceState::Qr,
        InstanceState::Open,
        InstanceState::Closed,
        InstanceState::LoggedOut,
        InstanceState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Connecting => "connecting",
            InstanceState::Qr => "qr",
            InstanceState::Open => "open",
            InstanceState::Closed => "closed",
            InstanceState::LoggedOut => "logged_out",
            InstanceState::Failed => "failed",
        }
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for InstanceState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|x| x.as_str() == s).ok_or_else(|| format!("unknown instance state {s:?}"))
    }
}

/// The reason of a flapping instance's `failed` state.
pub const FLAPPING: &str = "flapping";

/// The reason of a close nobody explained (a status poll, a webhook without one).
pub const UNKNOWN_REASON: &str = "unknown";

/// Close reasons after which asking the provider to reconnect cannot help:
/// the phone unlinked it, WhatsApp banned the number, or another device took
/// the session over (reconnecting would fight it).
const FINAL_CLOSES: [&str; 3] = ["logged_out", "banned", "replaced"];

/// Whether an instance in `state` for `reason` should be asked to
/// reconnect: closed for a passing cause, or failed at the provider (not
/// for flapping, which waits for a quiet window instead).
pub fn wants_reconnect(state: Option<InstanceState>, reason: Option<&str>) -> bool {
    match state {
        Some(InstanceState::Closed) => !reason.is_some_and(|r| FINAL_CLOSES.contains(&r)),
        Some(InstanceState::Failed) => reason != Some(FLAPPING),
        _ => false,
    }
}

/// Why a connection closed, from the WhatsApp (Baileys) disconnect code or
/// the provider's words: one short word receivers can switch on.
pub fn classify_close(reason: Option<&str>) -> (InstanceState, String) {
    let Some(raw) = reason.map(str::trim).filter(|r| !r.is_empty()) else {
        return (InstanceState::Closed, UNKNOWN_REASON.into());
    };
    let lower = raw.to_ascii_lowercase();
    let word = match raw.parse::<u16>().ok() {
        Some(401) => return (InstanceState::LoggedOut, "logged_out".into()),
        Some(403) => "banned",
        Some(408 | 428) => "connection_lost",
        Some(411) => "multidevice_mismatch",
        Some(440) => "replaced",
        Some(500) => "bad_session",
        Some(515) => "restart_required",
        _ if lower.contains("logout") || lower.contains("logged out") || lower.contains("loggedout") => {
            return (InstanceState::LoggedOut, "logged_out".into());
        }
        _ if lower.contains("replaced") || lower.contains("conflict") => "replaced",
        _ if lower.contains("ban") || lower.contains("forbidden") => "banned",
        _ => return (InstanceState::Closed, raw.chars().take(200).collect()),
    };
    (InstanceState::Closed, word.into())
}

/// How much changing is flapping: more than `max_changes` state changes
/// within `window` (default 5 in 60 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlapPolicy {
    pub max_changes: u32,
    pub window: Duration,
}

impl Default for FlapPolicy {
    fn default() -> Self {
        Self { max_changes: 5, window: Duration::from_secs(60) }
    }
}

/// An instance's connection state as stored.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StoredState {
    /// None until the provider first reports one.
    pub state: Option<InstanceState>,
    pub reason: Option<String>,
    pub changed_at: Option<Timestamp>,
    /// When it changed within the flap window (milliseconds), oldest first.
    pub recent_changes: Vec<i64>,
}

/// What one report does to the stored state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The same state again, or a report while failed for flapping: no event.
    Coalesced,
    /// The state changed: store `next` and raise one `instance.status` event.
    Changed { previous: Option<InstanceState>, next: StoredState },
}

impl StoredState {
    /// Applies a report of `state` (with its classified `reason`) at `now`.
    pub fn observe(
        &self,
        state: InstanceState,
        reason: Option<String>,
        now: Timestamp,
        policy: FlapPolicy,
    ) -> Transition {
        let window_start = now.as_millis() - policy.window.as_millis() as i64;
        let mut recent: Vec<i64> = self.recent_changes.iter().copied().filter(|t| *t > window_start).collect();
        let flapping = self.state == Some(InstanceState::Failed) && self.reason.as_deref() == Some(FLAPPING);
        // Failed for flapping absorbs reports until a whole window passes quietly.
        if flapping && !recent.is_empty() {
            return Transition::Coalesced;
        }
        if self.state == Some(state) && self.reason == reason {
            return Transition::Coalesced;
        }
        // A close nobody explained adds nothing to a close that was explained
        // (or to a logout): keep the reason that says why.
        let unexplained = state == InstanceState::Closed && reason.as_deref() == Some(UNKNOWN_REASON);
        if unexplained && matches!(self.state, Some(InstanceState::Closed | InstanceState::LoggedOut)) {
            return Transition::Coalesced;
        }
        recent.push(now.as_millis());
        let (state, reason) = if recent.len() as u32 > policy.max_changes {
            (InstanceState::Failed, Some(FLAPPING.to_owned()))
        } else {
            (state, reason)
        };
        if self.state == Some(state) && self.reason == reason {
            return Transition::Coalesced;
        }
        Transition::Changed {
            previous: self.state,
            next: StoredState { state: Some(state), reason, changed_at: Some(now), recent_changes: recent },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::InstanceState::*;
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_millis(1_700_000_000_000 + s * 1000)
    }

    fn apply(s: &StoredState, state: InstanceState, t: i64) -> (StoredState, bool) {
        match s.observe(state, None, at(t), FlapPolicy::default()) {
            Transition::Coalesced => (s.clone(), false),
            Transition::Changed { next, .. } => (next, true),
        }
    }

    #[test]
    fn a_repeated_state_is_coalesced() {
        let (s, changed) = apply(&StoredState::default(), Open, 0);
        assert!(changed);
        for t in 1..300 {
            let (_, changed) = apply(&s, Open, t);
            assert!(!changed, "identical report at {t}s made an event");
        }
    }

    #[test]
    fn more_than_five_changes_in_a_minute_is_flapping_and_absorbs_reports_until_quiet() {
        let mut s = StoredState::default();
        let mut events = 0;
        for (i, state) in [Open, Closed, Open, Closed, Open, Closed, Open, Closed].into_iter().enumerate() {
            let (next, changed) = apply(&s, state, i as i64);
            s = next;
            events += changed as u32;
        }
        assert_eq!(s.state, Some(Failed));
        assert_eq!(s.reason.as_deref(), Some(FLAPPING));
        assert_eq!(events, 6, "five changes, then one to failed, then nothing");
        // Still inside the window of the last change: absorbed.
        assert!(!apply(&s, Open, 30).1);
        // A quiet window later, the next report applies.
        let (s, changed) = apply(&s, Open, 5 + 61);
        assert!(changed);
        assert_eq!(s.state, Some(Open));
    }

    #[test]
    fn slow_changes_never_flap() {
        let mut s = StoredState::default();
        for i in 0..50 {
            let state = if i % 2 == 0 { Open } else { Closed };
            let (next, changed) = apply(&s, state, i * 15);
            assert!(changed);
            s = next;
        }
        assert_ne!(s.state, Some(Failed));
    }

    #[test]
    fn an_unexplained_close_keeps_the_known_reason_or_logout() {
        let policy = FlapPolicy::default();
        let lost = match StoredState::default().observe(Closed, Some("connection_lost".into()), at(0), policy) {
            Transition::Changed { next, .. } => next,
            Transition::Coalesced => panic!("the first close is a change"),
        };
        assert_eq!(lost.observe(Closed, Some(UNKNOWN_REASON.into()), at(1), policy), Transition::Coalesced);
        let out = match lost.observe(LoggedOut, Some("logged_out".into()), at(2), policy) {
            Transition::Changed { next, .. } => next,
            Transition::Coalesced => panic!("a logout after a close is a change"),
        };
        assert_eq!(out.observe(Closed, Some(UNKNOWN_REASON.into()), at(3), policy), Transition::Coalesced);
        // An explained close after an unexplained one says more: it applies.
        let unknown = match StoredState::default().observe(Closed, Some(UNKNOWN_REASON.into()), at(0), policy) {
            Transition::Changed { next, .. } => next,
            Transition::Coalesced => panic!("the first close is a change"),
        };
        assert!(matches!(unknown.observe(Closed, Some("banned".into()), at(1), policy), Transition::Changed { .. }));
    }

    #[test]
    fn passing_closes_and_provider_failures_want_a_reconnect_final_ones_do_not() {
        assert!(wants_reconnect(Some(Closed), Some("connection_lost")));
        assert!(wants_reconnect(Some(Closed), Some(UNKNOWN_REASON)));
        assert!(wants_reconnect(Some(Closed), None));
        assert!(wants_reconnect(Some(Failed), Some("FAILED")));
        for final_close in ["logged_out", "banned", "replaced"] {
            assert!(!wants_reconnect(Some(Closed), Some(final_close)), "{final_close}");
        }
        assert!(!wants_reconnect(Some(Failed), Some(FLAPPING)));
        for state in [None, Some(Open), Some(Connecting), Some(Qr), Some(LoggedOut)] {
            assert!(!wants_reconnect(state, None), "{state:?}");
        }
    }

    #[test]
    fn close_reasons_are_classified() {
        assert_eq!(classify_close(Some("401")), (LoggedOut, "logged_out".into()));
        assert_eq!(classify_close(Some("440")), (Closed, "replaced".into()));
        assert_eq!(classify_close(Some("428")), (Closed, "connection_lost".into()));
        assert_eq!(classify_close(Some("Instance logged out")), (LoggedOut, "logged_out".into()));
        assert_eq!(classify_close(None), (Closed, "unknown".into()));
        assert_eq!(classify_close(Some("stream errored")), (Closed, "stream errored".into()));
    }

    #[test]
    fn names_round_trip() {
        for s in InstanceState::ALL {
            assert_eq!(s.as_str().parse::<InstanceState>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
