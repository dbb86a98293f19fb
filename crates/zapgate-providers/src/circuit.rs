//! A circuit breaker per provider endpoint (a WAHA server, an Evolution
//! server, Meta's Graph API, …), shared by every lane of a process that
//! sends through it.
//!
//! - **Closed**: sends go out. Consecutive outage failures (5xx, network,
//!   timeout) are counted; any answer that proves the endpoint alive (a
//!   success, a throttle, a rejection) resets the count. The circuit opens at
//!   `failures` in a row that came from at least two different messages: the
//!   failures of one message alone may be that message's fault (it then
//!   retries and dead-letters as usual), failures across messages are the
//!   endpoint's.
//! - **Open** for a cool-down: no call is made; messages wait without
//!   spending attempts, however long the outage lasts.
//! - **Half-open** after it: one message goes out as a probe while the others
//!   wait for its answer. An answer closes the circuit; another failure opens
//!   it again for twice as long (up to [`MAX_COOLDOWN_FACTOR`] × the cool-down).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// A failed probe doubles the cool-down up to this many times the base.
pub const MAX_COOLDOWN_FACTOR: u32 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitConfig {
    /// Outage failures in a row that open the circuit; 0 turns it off.
    pub failures: u32,
    /// How long the circuit stays open before a probe.
    pub cooldown: Duration,
}

/// The state of one circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }
}

/// What a send learned about the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed<'a> {
    /// The endpoint answered (success, throttling or a rejection).
    Answered,
    /// An outage failure (5xx, network, timeout) while sending this message.
    Failed { message: &'a str },
}

#[derive(Debug)]
enum Phase {
    Closed { in_a_row: u32, messages: Vec<String> },
    Open { until: Instant, cooldown: Duration },
    HalfOpen { probing: bool, cooldown: Duration },
}

pub struct Circuit {
    /// The provider kind, the only label of its metrics (an endpoint's URL
    /// may be a tenant's own server).
    kind: &'static str,
    endpoint: String,
    config: CircuitConfig,
    phase: Mutex<Phase>,
    probe_done: Notify,
}

/// Leave to send one message, to be told what came of it.
#[must_use = "report what the send observed with `Pass::observe`"]
pub struct Pass {
    circuit: Arc<Circuit>,
    probe: bool,
    observed: bool,
}

impl Circuit {
    pub fn new(kind: &'static str, endpoint: impl Into<String>, config: CircuitConfig) -> Arc<Circuit> {
        Arc::new(Circuit {
            kind,
            endpoint: endpoint.into(),
            config,
            phase: Mutex::new(Phase::Closed { in_a_row: 0, messages: Vec::new() }),
            probe_done: Notify::new(),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }

    pub fn state(&self) -> CircuitState {
        match *self.lock() {
            Phase::Closed { .. } => CircuitState::Closed,
            Phase::Open { .. } => CircuitState::Open,
            Phase::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// A pass to send now, or how long to wait before trying again (the
    /// circuit is open). While a probe is out, waits for its answer.
    pub async fn admit(self: &Arc<Self>) -> Result<Pass, Duration> {
        loop {
            let waiting = self.probe_done.notified();
            {
                let mut phase = self.lock();
                match &mut *phase {
                    Phase::Closed { .. } => return Ok(self.pass(false)),
                    Phase::Open { until, cooldown } => {
                        let (until, cooldown) = (*until, *cooldown);
                        let now = Instant::now();
                        if until > now {
                            return Err(until - now);
                        }
                        *phase = Phase::HalfOpen { probing: true, cooldown };
                        return Ok(self.pass(true));
                    }
                    Phase::HalfOpen { probing, .. } if !*probing => {
                        *probing = true;
                        return Ok(self.pass(true));
                    }
                    Phase::HalfOpen { .. } => {}
                }
            }
            waiting.await;
        }
    }

    fn pass(self: &Arc<Self>, probe: bool) -> Pass {
        Pass { circuit: self.clone(), probe, observed: false }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn observe(&self, probe: bool, observed: Option<Observed<'_>>) -> Option<Duration> {
        let mut phase = self.lock();
        let now = Instant::now();
        let next = match (&mut *phase, observed) {
            (Phase::HalfOpen { .. }, Some(Observed::Answered)) if probe => Some(Self::closed()),
            (Phase::HalfOpen { cooldown, .. }, Some(Observed::Failed { .. })) if probe => {
                let cooldown = (*cooldown * 2).min(self.config.cooldown * MAX_COOLDOWN_FACTOR);
                Some(Phase::Open { until: now + cooldown, cooldown })
            }
            // A probe that never reported (its task went away): let another try.
            (Phase::HalfOpen { probing, .. }, None) if probe => {
                *probing = false;
                None
            }
            (Phase::Closed { in_a_row, messages }, Some(Observed::Answered)) => {
                *in_a_row = 0;
                messages.clear();
                None
            }
            (Phase::Closed { in_a_row, messages }, Some(Observed::Failed { message })) => {
                *in_a_row += 1;
                if !messages.iter().any(|m| m == message) && messages.len() < 2 {
                    messages.push(message.to_owned());
                }
                let tripped = self.config.failures > 0 && *in_a_row >= self.config.failures && messages.len() >= 2;
                tripped.then_some(Phase::Open { until: now + self.config.cooldown, cooldown: self.config.cooldown })
            }
            // Answers to sends admitted before the circuit opened change nothing.
            _ => None,
        };
        if let Some(next) = next {
            let was_closed = matches!(*phase, Phase::Closed { .. });
            *phase = next;
            let open_circuits = metrics::gauge!("zapgate_provider_circuits_open", "provider" => self.kind);
            match (was_closed, matches!(*phase, Phase::Closed { .. })) {
                (true, false) => {
                    tracing::warn!(endpoint = %self.endpoint, "provider circuit opened: sends wait for the endpoint to recover");
                    metrics::counter!("zapgate_provider_circuit_opened_total", "provider" => self.kind).increment(1);
                    open_circuits.increment(1.0);
                }
                (false, true) => {
                    tracing::info!(endpoint = %self.endpoint, "provider circuit closed: the endpoint answers again");
                    open_circuits.decrement(1.0);
                }
                _ => {}
            }
        }
        if probe {
            self.probe_done.notify_waiters();
        }
        match *phase {
            Phase::Open { until, .. } => Some(until.saturating_duration_since(now)),
            _ => None,
        }
    }

    fn closed() -> Phase {
        Phase::Closed { in_a_row: 0, messages: Vec::new() }
    }
}

impl Pass {
    /// Reports what the send observed; while the circuit is open after it,
    /// how long until the next probe (a failure then spends no attempt).
    pub fn observe(mut self, observed: Observed<'_>) -> Option<Duration> {
        self.observed = true;
        self.circuit.observe(self.probe, Some(observed))
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        if !self.observed && self.probe {
            self.circuit.observe(true, None);
        }
    }
}

/// The circuits of one process, by endpoint.
#[derive(Clone)]
pub struct Circuits {
    config: CircuitConfig,
    by_endpoint: Arc<Mutex<HashMap<String, Arc<Circuit>>>>,
}

impl Circuits {
    pub fn new(config: CircuitConfig) -> Circuits {
        Circuits { config, by_endpoint: Arc::default() }
    }

    /// Every circuit of this process with its state now.
    pub fn snapshot(&self) -> Vec<(&'static str, String, CircuitState)> {
        let map = self.by_endpoint.lock().unwrap_or_else(|p| p.into_inner());
        map.values().map(|c| (c.kind, c.endpoint.clone(), c.state())).collect()
    }

    pub fn get(&self, kind: &'static str, endpoint: &str) -> Arc<Circuit> {
        let mut map = self.by_endpoint.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(endpoint.to_owned()).or_insert_with(|| Circuit::new(kind, endpoint, self.config)).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_secs(10);

    fn circuit(failures: u32) -> Arc<Circuit> {
        Circuit::new("test", "test http://a", CircuitConfig { failures, cooldown: COOLDOWN })
    }

    async fn fail(c: &Arc<Circuit>, message: &str) -> Option<Duration> {
        c.admit().await.expect("admitted").observe(Observed::Failed { message })
    }

    #[tokio::test(start_paused = true)]
    async fn one_message_failing_alone_never_opens_it() {
        let c = circuit(3);
        for _ in 0..10 {
            assert_eq!(fail(&c, "m1").await, None);
        }
        assert_eq!(c.state(), CircuitState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_across_messages_open_it_and_answers_reset_the_count() {
        let c = circuit(3);
        fail(&c, "m1").await;
        fail(&c, "m2").await;
        c.admit().await.unwrap().observe(Observed::Answered);
        fail(&c, "m1").await;
        assert_eq!(fail(&c, "m2").await, None, "the answer reset the count");
        assert_eq!(fail(&c, "m1").await, Some(COOLDOWN), "third in a row, two messages");
        assert_eq!(c.state(), CircuitState::Open);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(c.admit().await.err(), Some(Duration::from_secs(6)), "no call while open");
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_goes_out_after_the_cooldown_and_its_answer_closes_it() {
        let c = circuit(2);
        fail(&c, "m1").await;
        fail(&c, "m2").await;
        tokio::time::advance(COOLDOWN).await;
        let probe = c.admit().await.expect("the probe");
        assert_eq!(c.state(), CircuitState::HalfOpen);
        // Others wait for the probe's answer instead of calling too.
        let other = tokio::spawn({
            let c = c.clone();
            async move { c.admit().await.map(|p| p.observe(Observed::Answered)) }
        });
        tokio::task::yield_now().await;
        assert!(!other.is_finished(), "a second caller waits while the probe is out");
        assert_eq!(probe.observe(Observed::Answered), None);
        assert_eq!(other.await.unwrap(), Ok(None));
        assert_eq!(c.state(), CircuitState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probes_double_the_cooldown_up_to_a_cap() {
        let c = circuit(2);
        fail(&c, "m1").await;
        fail(&c, "m2").await;
        let mut cooldown = COOLDOWN;
        for _ in 0..6 {
            tokio::time::advance(cooldown).await;
            cooldown = (cooldown * 2).min(COOLDOWN * MAX_COOLDOWN_FACTOR);
            assert_eq!(fail(&c, "m1").await, Some(cooldown));
        }
        assert_eq!(cooldown, COOLDOWN * MAX_COOLDOWN_FACTOR);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_dropped_unreported_lets_another_probe() {
        let c = circuit(2);
        fail(&c, "m1").await;
        fail(&c, "m2").await;
        tokio::time::advance(COOLDOWN).await;
        drop(c.admit().await.expect("the probe"));
        let again = tokio::time::timeout(Duration::from_secs(1), c.admit()).await;
        assert!(matches!(again, Ok(Ok(_))), "another probe may go out");
    }

    #[tokio::test(start_paused = true)]
    async fn zero_failures_turns_it_off() {
        let c = circuit(0);
        for n in 0..20 {
            assert_eq!(fail(&c, &format!("m{n}")).await, None);
        }
        assert_eq!(c.state(), CircuitState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn circuits_are_per_endpoint() {
        let circuits = Circuits::new(CircuitConfig { failures: 2, cooldown: COOLDOWN });
        let a = circuits.get("waha", "waha http://a");
        fail(&a, "m1").await;
        fail(&a, "m2").await;
        assert!(Arc::ptr_eq(&a, &circuits.get("waha", "waha http://a")));
        assert_eq!(circuits.get("waha", "waha http://b").state(), CircuitState::Closed);
        assert_eq!(a.state(), CircuitState::Open);
    }
}
