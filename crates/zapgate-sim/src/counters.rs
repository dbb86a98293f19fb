//! What the sim counted: every provider request by route, and the sends
//! with what they carried, to find duplicates (the same message sent twice).
//!
//! A send's content key is (provider, instance, recipient, text): the
//! instance is the Cloud API's `phone_number_id`, Evolution's instance, the
//! WAHA `session` (default `default`) or the UAZAPI instance's name (its
//! token if unknown); the recipient is `to` / `number` / `chatId`; the text
//! is the text, else the caption or the media's link or id. A request that
//! carries a client reference (`Idempotency-Key` or `X-Idempotency-Key`
//! header, or `biz_opaque_callback_data`, `track_id`, `externalAttributes`
//! in the body) adds it to the key: two sends count as one message sent
//! twice when their keys are equal.
//!
//! - `attempts`: send requests received, whatever their answer;
//! - `sends`: the ones accepted (a 2xx answer with a message id);
//! - `unique`: distinct keys among the accepted; `duplicates` = `sends` - `unique`;
//! - `by_route`: every provider request, `"{provider} {METHOD} {route}"` →
//!   requests, ok (2xx), failed (otherwise), faulted (answered by a rule);
//! - `by_message_id`: each accepted send's id → its key;
//! - `by_content`: each key with how many accepted sends had it.

use crate::Sim;
use crate::rules::Provider;
use axum::http::request::Parts;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// The key a send is counted under.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ContentKey {
    pub provider: &'static str,
    pub instance: String,
    pub to: String,
    pub text: String,
    /// The client reference the request carried, if any.
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RouteCount {
    pub requests: u64,
    pub ok: u64,
    pub failed: u64,
    pub faulted: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContentCount {
    #[serde(flatten)]
    pub key: ContentKey,
    pub count: u64,
}

/// A snapshot of the counters (`GET /_sim/counters`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub attempts: u64,
    pub sends: u64,
    pub unique: u64,
    pub duplicates: u64,
    pub by_route: BTreeMap<String, RouteCount>,
    pub by_message_id: BTreeMap<String, ContentKey>,
    pub by_content: Vec<ContentCount>,
}

#[derive(Default)]
pub(crate) struct State {
    attempts: u64,
    by_route: BTreeMap<String, RouteCount>,
    by_message_id: BTreeMap<String, ContentKey>,
    by_content: BTreeMap<ContentKey, u64>,
}

/// A send request, before its answer.
pub(crate) struct Attempt(ContentKey);

impl Attempt {
    pub(crate) fn of(sim: &Sim, provider: Provider, parts: &Parts, body: &Value) -> Attempt {
        let header = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let path: Vec<&str> = parts.uri.path().split('/').collect();
        let instance = match provider {
            Provider::Cloud => path.get(2).copied().unwrap_or_default().to_owned(),
            Provider::Evolution => path.last().copied().unwrap_or_default().to_owned(),
            Provider::Waha => body["session"].as_str().unwrap_or("default").to_owned(),
            Provider::Uazapi | Provider::Any => {
                let token = header("token").unwrap_or_default();
                sim.uazapi_instances().get(&token).map_or(token, |i| i.name().to_owned())
            }
        };
        let first = |vs: &[&Value]| vs.iter().find_map(|v| v.as_str().map(str::to_owned));
        let to = first(&[&body["to"], &body["number"], &body["chatId"]]).unwrap_or_default();
        let kind = body["type"].as_str().unwrap_or_default();
        let media = &body[kind];
        let text = first(&[
            &body["text"]["body"],
            &body["text"],
            &body["caption"],
            &media["caption"],
            &body["media"],
            &body["file"]["url"],
            &body["file"],
            &media["link"],
            &media["id"],
        ])
        .unwrap_or_default();
        let reference = header("idempotency-key").or_else(|| header("x-idempotency-key")).or_else(|| {
            first(&[&body["biz_opaque_callback_data"], &body["track_id"], &body["externalAttributes"]])
                .filter(|r| !r.is_empty())
        });
        Attempt(ContentKey { provider: provider.as_str(), instance, to, text, reference })
    }
}

impl Sim {
    fn counters_lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn count_request(&self, route: String, ok: bool, faulted: bool) {
        let mut c = self.counters_lock();
        let r = c.by_route.entry(route).or_default();
        r.requests += 1;
        if ok {
            r.ok += 1;
        } else {
            r.failed += 1;
        }
        if faulted {
            r.faulted += 1;
        }
    }

    /// A send that was answered, with the message id it was given if it was accepted.
    pub(crate) fn count_send(&self, attempt: Attempt, id: Option<String>) {
        let mut c = self.counters_lock();
        c.attempts += 1;
        if let Some(id) = id {
            *c.by_content.entry(attempt.0.clone()).or_default() += 1;
            c.by_message_id.insert(id, attempt.0);
        }
    }

    /// What the sim counted so far (see [`counters`](crate::counters)).
    pub fn counters(&self) -> Counters {
        let c = self.counters_lock();
        let sends: u64 = c.by_content.values().sum();
        let unique = c.by_content.len() as u64;
        Counters {
            attempts: c.attempts,
            sends,
            unique,
            duplicates: sends - unique,
            by_route: c.by_route.clone(),
            by_message_id: c.by_message_id.clone(),
            by_content: c.by_content.iter().map(|(key, n)| ContentCount { key: key.clone(), count: *n }).collect(),
        }
    }

    /// Starts counting from zero.
    pub fn reset_counters(&self) {
        *self.counters_lock() = State::default();
    }
}
