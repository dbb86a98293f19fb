//! Per-route fault injection rules, and the gate every provider route goes
//! through (rules, then [`counters`](crate::counters)).
//!
//! A [`FaultRule`] matches requests by route kind ([`RouteKind`]: `send`,
//! `session`, `status` or `*`) and provider ([`Provider`], `*` by default).
//! A matching rule fires with probability `error_rate` (default 1); when it
//! fires it counts a hit (a rule with `count` expires after that many hits),
//! waits its `latency_ms` (uniform between `min` and `max`), and then:
//!
//! - `reset`: the connection is closed without an answer, with a TCP RST
//!   (`SO_LINGER` 0) when the sim was started with [`start`](crate::start)
//!   (a bare [`router`](crate::router) served elsewhere has no hold on the
//!   socket: it answers 502 instead);
//! - `timeout`: hangs `timeout_ms` (default 120 s, longer than any client
//!   waits), then answers 504;
//! - `status`: answers that status in the provider's error shape (`code` in
//!   the Cloud API's body, `message`, a `Retry-After` of `retry_after`);
//! - none of those (a latency-only rule): the request goes on to the next
//!   rule and then the provider's handler.
//!
//! Rules are tried in the order they were added; the first one that fires
//! with an outcome decides, the latencies of the latency-only rules before it
//! add up. Requests answered by a rule are recorded in `/_sim/received` like
//! the others (path, credential, body). The one-shot queue (`/_sim/faults`)
//! is separate: it is consulted by the handlers, after the rules.

use crate::Sim;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A simulated provider, as rules name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    #[serde(alias = "cloud_api")]
    Cloud,
    Evolution,
    Waha,
    Uazapi,
    /// Any provider.
    #[default]
    #[serde(rename = "*")]
    Any,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Cloud => "cloud",
            Provider::Evolution => "evolution",
            Provider::Waha => "waha",
            Provider::Uazapi => "uazapi",
            Provider::Any => "*",
        }
    }
}

/// What a route does: sending, managing instances/sessions (create, QR,
/// logout, delete, webhook), or reporting their status (health checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    Send,
    Session,
    Status,
    /// Any of them.
    #[default]
    #[serde(rename = "*")]
    Any,
}

/// A uniform delay between `min` and `max` milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub struct Latency {
    pub min: u64,
    pub max: u64,
}

/// One fault injection rule (see the module docs).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct FaultRule {
    pub route: RouteKind,
    pub provider: Provider,
    /// The chance, 0 to 1, that a matching request makes the rule fire.
    pub error_rate: f64,
    /// Answer this HTTP status.
    pub status: Option<u16>,
    /// The Cloud API's error code in the body (the other providers have none).
    pub code: i64,
    pub message: Option<String>,
    /// Seconds, sent as `Retry-After` with the `status` answer.
    pub retry_after: Option<u64>,
    pub latency_ms: Option<Latency>,
    /// Hang (`timeout_ms`, default 120 s) and then answer 504.
    pub timeout: bool,
    pub timeout_ms: Option<u64>,
    /// Close the connection without an answer.
    pub reset: bool,
    /// Expire after this many hits.
    pub count: Option<u64>,
}

impl Default for FaultRule {
    fn default() -> Self {
        FaultRule {
            route: RouteKind::Any,
            provider: Provider::Any,
            error_rate: 1.0,
            status: None,
            code: 0,
            message: None,
            retry_after: None,
            latency_ms: None,
            timeout: false,
            timeout_ms: None,
            reset: false,
            count: None,
        }
    }
}

impl FaultRule {
    /// Why the rule cannot be used, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(format!("error_rate {} is not between 0 and 1", self.error_rate));
        }
        if let Some(s) = self.status.filter(|s| !(100..=599).contains(s)) {
            return Err(format!("status {s} is not an HTTP status"));
        }
        if let Some(l) = self.latency_ms.filter(|l| l.min > l.max) {
            return Err(format!("latency_ms.min {} is above max {}", l.min, l.max));
        }
        if self.count == Some(0) {
            return Err("count 0 would never fire".into());
        }
        Ok(())
    }

    fn matches(&self, provider: Provider, route: RouteKind) -> bool {
        (self.provider == Provider::Any || self.provider == provider)
            && (self.route == RouteKind::Any || self.route == route)
    }

    fn has_outcome(&self) -> bool {
        self.reset || self.timeout || self.status.is_some()
    }
}

/// A rule as stored: its id, hits so far and hits left.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredRule {
    pub id: u64,
    #[serde(flatten)]
    pub rule: FaultRule,
    pub hits: u64,
    /// Hits left before it expires (None: never).
    pub remaining: Option<u64>,
}

#[derive(Default)]
pub(crate) struct Rules {
    next_id: u64,
    list: Vec<StoredRule>,
}

/// What the fired rules decided for one request.
#[derive(Debug, Default)]
struct Decision {
    delay: Duration,
    outcome: Option<FaultRule>,
}

impl Sim {
    fn rules_lock(&self) -> std::sync::MutexGuard<'_, Rules> {
        self.rules.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a rule after the others; its id. Panics on a rule that
    /// [`FaultRule::check`] refuses.
    pub fn add_rule(&self, rule: FaultRule) -> u64 {
        if let Err(e) = rule.check() {
            panic!("bad fault rule: {e}");
        }
        let mut rules = self.rules_lock();
        rules.next_id += 1;
        let id = rules.next_id;
        let remaining = rule.count;
        rules.list.push(StoredRule { id, rule, hits: 0, remaining });
        id
    }

    /// The rules in force, in order.
    pub fn rules(&self) -> Vec<StoredRule> {
        self.rules_lock().list.clone()
    }

    /// Removes every rule.
    pub fn clear_rules(&self) {
        self.rules_lock().list.clear();
    }

    /// Rolls the rules for one request (counting hits, expiring rules).
    fn decide(&self, provider: Provider, route: RouteKind) -> Decision {
        let mut rules = self.rules_lock();
        let mut d = Decision::default();
        for r in rules.list.iter_mut() {
            if !r.rule.matches(provider, route) || (r.rule.error_rate < 1.0 && random_unit() >= r.rule.error_rate) {
                continue;
            }
            r.hits += 1;
            if let Some(left) = r.remaining.as_mut() {
                *left -= 1;
            }
            if let Some(l) = r.rule.latency_ms {
                d.delay += Duration::from_millis(l.min + (random_unit() * (l.max - l.min + 1) as f64) as u64);
            }
            if r.rule.has_outcome() {
                d.outcome = Some(r.rule.clone());
                break;
            }
        }
        rules.list.retain(|r| r.remaining != Some(0));
        d
    }
}

/// A random number in [0, 1), from a v4 UUID's random bits (no `rand` here).
fn random_unit() -> f64 {
    const BITS: u32 = 56;
    let bits = uuid::Uuid::new_v4().as_u128() & ((1u128 << BITS) - 1);
    bits as f64 / (1u64 << BITS) as f64
}

/// The provider and kind of a route, by its method and matched path; None
/// for the sim's own routes.
pub(crate) fn classify(method: &Method, path: &str) -> Option<(Provider, RouteKind)> {
    use Provider::*;
    use RouteKind::*;
    let get = method == Method::GET;
    Some(match path {
        "/{version}/{phone_number_id}/messages" | "/{version}/{phone_number_id}/media" => (Cloud, Send),
        "/instance/fetchInstances" | "/instance/connectionState/{instance}" => (Evolution, Status),
        "/message/{route}/{instance}" | "/chat/markMessageAsRead/{instance}" => (Evolution, Send),
        "/instance/create"
        | "/instance/connect/{instance}"
        | "/instance/logout/{instance}"
        | "/instance/delete/{instance}" => (Evolution, Session),
        "/api/sessions" | "/api/sessions/{session}" => (Waha, if get { Status } else { Session }),
        "/api/sessions/{session}/logout"
        | "/api/sessions/{session}/restart"
        | "/api/{session}/auth/qr"
        | "/api/{session}/auth/request-code" => (Waha, Session),
        "/api/{route}" | "/api/reaction" | "/api/sendSeen" => (Waha, Send),
        "/instance/all" | "/instance/status" => (Uazapi, Status),
        "/send/{route}" | "/message/react" | "/message/markread" => (Uazapi, Send),
        "/instance/init" | "/instance/connect" | "/instance/disconnect" | "/instance" | "/webhook" => (Uazapi, Session),
        _ => return None,
    })
}

/// `status` with `message` in `provider`'s error shape.
fn provider_error(provider: Provider, status: u16, code: i64, message: &str, retry_after: Option<u64>) -> Response {
    let res = match provider {
        Provider::Cloud => return crate::graph_error(status, code, message, retry_after),
        Provider::Evolution => crate::evolution::error(status, message),
        Provider::Waha => crate::waha::nest(status, message),
        Provider::Uazapi | Provider::Any => crate::uazapi::error(status, message),
    };
    crate::with_retry_after(res, retry_after)
}

/// The credential a request presents, whichever provider it is for.
fn credential(headers: &HeaderMap) -> Option<String> {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    h("authorization")
        .map(|a| a.strip_prefix("Bearer ").map(str::to_owned).unwrap_or(a))
        .or_else(|| h("apikey"))
        .or_else(|| h("x-api-key"))
        .or_else(|| h("token"))
        .or_else(|| h("admintoken"))
}

/// The middleware every provider route goes through: rules, then counting.
pub(crate) async fn gate(State(sim): State<Arc<Sim>>, req: Request, next: Next) -> Response {
    let matched = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
    let Some((provider, kind)) = matched.as_deref().and_then(|m| classify(req.method(), m)) else {
        return next.run(req).await;
    };
    let route_key = format!("{} {} {}", provider.as_str(), req.method(), matched.as_deref().unwrap_or_default());
    let switch = req.extensions().get::<ConnectInfo<ResetSwitch>>().map(|c| c.0.clone());
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, 64 << 20).await {
        Ok(b) => b,
        Err(e) => return provider_error(provider, 400, 100, &format!("unreadable body: {e}"), None),
    };
    let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let sent = (kind == RouteKind::Send).then(|| crate::counters::Attempt::of(&sim, provider, &parts, &json));

    let decision = sim.decide(provider, kind);
    if !decision.delay.is_zero() {
        tokio::time::sleep(decision.delay).await;
    }
    let (res, faulted) = match decision.outcome {
        Some(rule) => {
            sim.record(provider.received_name(), parts.uri.path().to_owned(), credential(&parts.headers), &json);
            (answer(provider, &rule, switch).await, true)
        }
        None => (next.run(Request::from_parts(parts, Body::from(bytes))).await, false),
    };
    let ok = res.status().is_success();
    sim.count_request(route_key, ok, faulted);
    let Some(attempt) = sent else { return res };
    // A send: its answer names the message id it was given.
    let (parts, body) = res.into_parts();
    let bytes = axum::body::to_bytes(body, 16 << 20).await.unwrap_or_else(|_| Bytes::new());
    let id = ok.then(|| serde_json::from_slice::<Value>(&bytes).ok().and_then(|v| message_id(&v))).flatten();
    sim.count_send(attempt, id);
    Response::from_parts(parts, Body::from(bytes))
}

impl Provider {
    /// The name `Received.provider` gives it.
    fn received_name(self) -> &'static str {
        match self {
            Provider::Cloud => "cloud_api",
            p => p.as_str(),
        }
    }
}

/// The message id in a send answer of any of the providers.
fn message_id(answer: &Value) -> Option<String> {
    [&answer["messages"][0]["id"], &answer["key"]["id"], &answer["id"]["_serialized"], &answer["messageid"]]
        .into_iter()
        .find_map(|v| v.as_str().map(str::to_owned))
}

/// The answer (or none) a fired rule gives.
async fn answer(provider: Provider, rule: &FaultRule, switch: Option<ResetSwitch>) -> Response {
    if rule.reset {
        return match switch {
            Some(s) => {
                s.0.store(true, Ordering::SeqCst);
                // Never written: the first write on the connection resets it.
                provider_error(provider, 502, 0, "connection reset", None)
            }
            None => provider_error(provider, 502, 0, "simulated reset (no socket to reset: not served by start)", None),
        };
    }
    if rule.timeout {
        tokio::time::sleep(Duration::from_millis(rule.timeout_ms.unwrap_or(120_000))).await;
        return provider_error(provider, 504, 0, "simulated timeout", None);
    }
    let status = rule.status.unwrap_or(500);
    let message = rule.message.clone().unwrap_or_else(|| format!("simulated error {}", rule.code));
    provider_error(provider, status, rule.code, &message, rule.retry_after)
}

/// A connection's kill switch: once set, its next read or write resets it.
#[derive(Clone, Debug, Default)]
pub struct ResetSwitch(Arc<AtomicBool>);

/// The sim's listener: TCP connections that a `reset` rule can abort.
pub(crate) struct SimListener(pub(crate) tokio::net::TcpListener);

/// A TCP connection with a [`ResetSwitch`].
pub(crate) struct SimStream {
    inner: tokio::net::TcpStream,
    switch: ResetSwitch,
}

impl axum::serve::Listener for SimListener {
    type Io = SimStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((inner, addr)) => return (SimStream { inner, switch: ResetSwitch::default() }, addr),
                // Out of descriptors and the like: wait, as axum's own listener does.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, SimListener>> for ResetSwitch {
    fn connect_info(stream: axum::serve::IncomingStream<'_, SimListener>) -> Self {
        stream.io().switch.clone()
    }
}

impl SimStream {
    /// When the switch is set: arms an abortive close (RST on drop) and
    /// fails, so that hyper drops the connection.
    fn check(&self) -> io::Result<()> {
        if self.switch.0.load(Ordering::SeqCst) {
            let _ = self.inner.set_zero_linger();
            return Err(io::Error::new(io::ErrorKind::ConnectionReset, "zapgate-sim: reset rule"));
        }
        Ok(())
    }
}

impl AsyncRead for SimStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_with_defaults_and_bad_ones_are_refused() {
        let r: FaultRule = serde_json::from_str(r#"{"route":"send","provider":"waha","status":500}"#).unwrap();
        assert_eq!((r.route, r.provider, r.error_rate, r.status), (RouteKind::Send, Provider::Waha, 1.0, Some(500)));
        let r: FaultRule = serde_json::from_str(r#"{"latency_ms":{"min":5,"max":50}}"#).unwrap();
        assert_eq!((r.route, r.provider), (RouteKind::Any, Provider::Any));
        assert_eq!(r.latency_ms, Some(Latency { min: 5, max: 50 }));
        let cloud: FaultRule = serde_json::from_str(r#"{"provider":"cloud_api"}"#).unwrap();
        assert_eq!(cloud.provider, Provider::Cloud);
        assert!(serde_json::from_str::<FaultRule>(r#"{"provider":"twilio"}"#).is_err());
        assert!(FaultRule { error_rate: 1.5, ..Default::default() }.check().is_err());
        assert!(FaultRule { status: Some(42), ..Default::default() }.check().is_err());
        assert!(FaultRule { latency_ms: Some(Latency { min: 9, max: 1 }), ..Default::default() }.check().is_err());
        assert!(FaultRule { count: Some(0), ..Default::default() }.check().is_err());
        assert!(FaultRule { status: Some(429), retry_after: Some(2), ..Default::default() }.check().is_ok());
    }

    #[test]
    fn every_provider_route_has_a_kind() {
        let sends =
            ["/{version}/{phone_number_id}/messages", "/message/{route}/{instance}", "/api/{route}", "/send/{route}"];
        for p in sends {
            assert_eq!(classify(&Method::POST, p).map(|c| c.1), Some(RouteKind::Send), "{p}");
        }
        assert_eq!(classify(&Method::GET, "/api/sessions"), Some((Provider::Waha, RouteKind::Status)));
        assert_eq!(classify(&Method::POST, "/api/sessions"), Some((Provider::Waha, RouteKind::Session)));
        assert_eq!(classify(&Method::DELETE, "/api/sessions/{session}"), Some((Provider::Waha, RouteKind::Session)));
        assert_eq!(
            classify(&Method::GET, "/instance/connectionState/{instance}"),
            Some((Provider::Evolution, RouteKind::Status))
        );
        assert_eq!(classify(&Method::GET, "/instance/status"), Some((Provider::Uazapi, RouteKind::Status)));
        assert_eq!(classify(&Method::POST, "/_sim/faults/rules"), None);
    }

    #[test]
    fn rules_fire_in_order_add_latency_and_expire() {
        let sim = Sim::default();
        sim.add_rule(FaultRule { latency_ms: Some(Latency { min: 7, max: 7 }), ..Default::default() });
        sim.add_rule(FaultRule { provider: Provider::Waha, status: Some(503), count: Some(2), ..Default::default() });
        sim.add_rule(FaultRule { status: Some(500), error_rate: 0.0, ..Default::default() });
        let d = sim.decide(Provider::Waha, RouteKind::Send);
        assert_eq!((d.delay, d.outcome.and_then(|r| r.status)), (Duration::from_millis(7), Some(503)));
        assert_eq!(sim.decide(Provider::Waha, RouteKind::Status).outcome.and_then(|r| r.status), Some(503));
        let d = sim.decide(Provider::Waha, RouteKind::Send);
        assert!(d.outcome.is_none(), "expired after 2 hits; error_rate 0 never fires");
        assert_eq!(sim.rules().iter().map(|r| r.hits).collect::<Vec<_>>(), [3, 0]);
        sim.clear_rules();
        assert!(sim.rules().is_empty());
    }

    #[test]
    fn random_units_are_in_range_and_vary() {
        let xs: Vec<f64> = (0..200).map(|_| random_unit()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(xs.iter().any(|x| *x < 0.5) && xs.iter().any(|x| *x >= 0.5));
    }
}
