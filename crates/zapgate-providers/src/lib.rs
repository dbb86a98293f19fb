//! Providers: what actually talks to WhatsApp.
//!
//! [`Provider`] is the one trait every adapter implements; [`classify`] is the
//! one table that turns a provider failure into "retry (spending an attempt
//! or not)" or "permanent". The built-in [`sandbox::Sandbox`] answers like
//! WhatsApp without any network.

pub mod circuit;
pub mod classify;
pub mod cloud_api;
pub mod evolution;
pub mod http;
pub mod inbound;
pub mod sandbox;
pub mod uazapi;
pub mod waha;

pub use circuit::{Circuit, CircuitConfig, CircuitState, Circuits, Observed};
pub use classify::{Classification, classify};
pub use inbound::{
    InboundMedia, InboundMessage, MediaFetch, MediaSource, ProviderEvent, ProviderEventKind, WebhookAuth, WebhookError,
    WebhookRequest,
};

use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use zapgate_domain::InstanceState;
use zapgate_domain::instance_state::classify_close;
use zapgate_domain::{ChatId, InstanceId, MessageContent, MessageId, MessageStatus, Timestamp};

/// A message to `to` for adapter unit tests, content in the Cloud API shape.
#[cfg(test)]
pub(crate) fn test_message(content: serde_json::Value, to: &str) -> OutboundMessage {
    OutboundMessage {
        message_id: MessageId::generate(),
        instance_id: InstanceId::generate(),
        phone_number_id: "1".into(),
        to: ChatId::parse(to).expect("a valid test address"),
        content: serde_json::from_value(content).expect("valid test content"),
        attempt: 0,
        config: serde_json::json!({}),
        upload: None,
        reply_to: None,
    }
}

/// The message of a `send_requests.json` fixture case: its `content` to its
/// `to`, quoting `reply_to` (a WhatsApp id) when the case has one.
#[cfg(test)]
pub(crate) fn fixture_message(case: &serde_json::Value) -> OutboundMessage {
    let mut msg = test_message(case["content"].clone(), case["to"].as_str().expect("a fixture's to"));
    msg.reply_to = case["reply_to"].as_str().map(|id| Quoted { id: id.to_owned(), from_me: false });
    msg
}

/// One message as handed to a provider.
#[derive(Debug, Clone)]
pub struct OutboundMessage {
    pub message_id: MessageId,
    pub instance_id: InstanceId,
    pub phone_number_id: String,
    pub to: ChatId,
    pub content: MessageContent,
    /// Provider-caused failures so far (0 on the first try).
    pub attempt: u32,
    /// The instance's provider settings, as `Provider::check_config` kept them.
    pub config: serde_json::Value,
    /// The bytes of media the message names by zapgate `id`, for providers
    /// that take uploads ([`Provider::uploads_media`]); the others get a link.
    pub upload: Option<MediaUpload>,
    /// The message this one quotes, as the provider knows it.
    pub reply_to: Option<Quoted>,
}

/// A message quoted by a reply: its id at the provider (WhatsApp's), and
/// whether it was sent from this instance (providers that name messages by
/// sender need it).
#[derive(Debug, Clone, PartialEq)]
pub struct Quoted {
    pub id: String,
    pub from_me: bool,
}

/// Media to upload to the provider before the send that uses it.
#[derive(Debug, Clone)]
pub struct MediaUpload {
    pub bytes: Vec<u8>,
    pub mime_type: String,
    pub filename: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SendAccepted {
    pub provider_message_id: String,
    /// The WhatsApp id the provider resolved the recipient to, if it says.
    pub wa_id: Option<String>,
}

/// A provider failure, as the adapter understood it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// The provider asks us to slow down (HTTP 429, Cloud 130429, …).
    #[error("throttled by the provider ({code})")]
    Throttled { code: String, retry_after: Option<Duration> },
    /// A transient failure of the provider (5xx, connection refused, …).
    #[error("provider unavailable ({code}): {message}")]
    Unavailable { code: String, message: String, retry_after: Option<Duration> },
    /// The provider refused this message for good (bad recipient, …).
    #[error("rejected by the provider ({code}): {message}")]
    Rejected { code: String, message: String },
    /// No answer within the send timeout.
    #[error("the provider did not answer in time")]
    Timeout,
}

/// A status the provider reports later about a message it accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusReport {
    pub provider_message_id: String,
    pub status: MessageStatus,
    pub at: Timestamp,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
}

/// An instance's WhatsApp connection, as its provider reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    /// Starting up.
    Connecting,
    /// Waiting for its QR code to be scanned (`GET /v1/instances/{id}/qr`).
    WaitingForQr,
    Connected,
    /// Stopped or logged out: it needs a new scan.
    Disconnected,
    Failed,
}

impl ConnectionState {
    /// This report as the instance state machine's input: closes get a
    /// classified reason (`connection_lost`, `replaced`, … or `unknown`).
    pub fn machine_state(self, reason: Option<&str>) -> (InstanceState, Option<String>) {
        match self {
            ConnectionState::Connecting => (InstanceState::Connecting, None),
            ConnectionState::WaitingForQr => (InstanceState::Qr, None),
            ConnectionState::Connected => (InstanceState::Open, None),
            ConnectionState::Disconnected => {
                let (state, reason) = classify_close(reason);
                (state, Some(reason))
            }
            ConnectionState::Failed => (InstanceState::Failed, reason.map(str::to_owned)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Connection {
    pub state: ConnectionState,
    /// The connected number (digits), when the provider says.
    pub phone: Option<String>,
}

/// How fast an instance of a kind sends unless told otherwise, and the most it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    pub rate_per_sec: u32,
    pub burst: u32,
    pub max_rate_per_sec: u32,
}

/// Baileys-based servers (Evolution, WAHA, UAZAPI): 50 msg/s in bursts of
/// 100, as seed 004 runs them; faster risks the number.
pub const BAILEYS_PACE: Pace = Pace { rate_per_sec: 50, burst: 100, max_rate_per_sec: 1000 };

/// A QR code to link a phone to an instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Qr {
    /// The string the QR code encodes (`2@…`), when the provider gives it.
    pub raw: Option<String>,
    pub png: Vec<u8>,
}

impl Qr {
    /// From a PNG data URL (`data:image/png;base64,…`) as providers answer.
    pub(crate) fn from_data_url(raw: Option<String>, image: &str) -> Result<Qr, ProviderError> {
        use base64::Engine;
        let data = image.split_once("base64,").map_or(image, |(_, d)| d);
        let png = base64::engine::general_purpose::STANDARD.decode(data).map_err(|e| ProviderError::Unavailable {
            code: "bad_response".into(),
            message: format!("the QR image is not base64: {e}"),
            retry_after: None,
        })?;
        Ok(Qr { raw, png })
    }

    /// The refusal when the session is not waiting for a scan (`state`: as the provider says).
    pub(crate) fn not_waiting(state: Option<&str>) -> ProviderError {
        ProviderError::Rejected {
            code: "not_waiting_for_qr".into(),
            message: format!("the instance is {}", state.unwrap_or("not waiting for a QR code")),
        }
    }
}

/// Where providers push status reports; the event processor drains it.
pub type StatusSink = tokio::sync::mpsc::UnboundedSender<StatusReport>;

#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// The provider kind stored on instances (`sandbox`, `cloud_api`, …).
    fn kind(&self) -> &'static str;
    /// Validates (and normalises) an instance's provider settings when the
    /// instance is created; the error says which setting is wrong.
    fn check_config(&self, config: &serde_json::Value) -> Result<serde_json::Value, String> {
        match config.as_object() {
            Some(o) if o.is_empty() => Ok(serde_json::json!({})),
            None if config.is_null() => Ok(serde_json::json!({})),
            _ => Err(format!("the {} provider takes no configuration", self.kind())),
        }
    }
    async fn send(&self, msg: &OutboundMessage) -> Result<SendAccepted, ProviderError>;
    /// The default (and the highest) pace of its instances; None: the
    /// process default (`ZAPGATE_INSTANCE_RATE`).
    fn pace(&self) -> Option<Pace> {
        None
    }
    /// Whether the provider limits messages per recipient (Meta's pair rate
    /// limit, 131056): lanes then pace each recipient with
    /// `ZAPGATE_PAIR_RATE_PER_MINUTE` / `ZAPGATE_PAIR_BURST`.
    fn pair_limited(&self) -> bool {
        false
    }
    /// For kinds that run on shared servers (pools): the settings that name
    /// instance `id` on such a server, to which the pool adds its base URL
    /// and credentials. None: instances of this kind are never placed.
    fn placed_config(&self, _id: &InstanceId) -> Option<serde_json::Value> {
        None
    }
    /// Whether a pool server with these `settings` (base URL, key) answers
    /// and accepts the key (pooled kinds; the periodic health check).
    async fn check_server(&self, _settings: &serde_json::Value) -> Result<(), ProviderError> {
        Ok(())
    }
    /// Creates the instance's session on its server (pooled kinds); an
    /// existing session is not an error. Returns settings the server handed
    /// out for the instance (e.g. UAZAPI's instance token), to keep in its config.
    async fn create_session(&self, _config: &serde_json::Value) -> Result<Option<serde_json::Value>, ProviderError> {
        Ok(None)
    }
    /// The connection as the provider reports it; None when this kind does
    /// not report one (the Cloud API: numbers are managed in Meta's tools).
    async fn connection(&self, _config: &serde_json::Value) -> Result<Option<Connection>, ProviderError> {
        Ok(None)
    }
    /// The QR code to scan; `Rejected` with code `not_waiting_for_qr` when the
    /// session is not waiting for one, `no_qr` when this kind has none.
    async fn qr(&self, _config: &serde_json::Value) -> Result<Qr, ProviderError> {
        Err(ProviderError::Rejected {
            code: "no_qr".into(),
            message: format!("{} instances have no QR code", self.kind()),
        })
    }
    /// Whether this kind's connection can drop and is worth polling (a
    /// linked WhatsApp session); the Cloud API's numbers and the sandbox
    /// have none.
    fn watch_connection(&self) -> bool {
        false
    }
    /// Whether media sent by zapgate id goes to this provider as bytes
    /// ([`OutboundMessage::upload`]) rather than as a link it fetches.
    fn uploads_media(&self) -> bool {
        false
    }
    /// The message templates the provider has approved for this number, in
    /// the Cloud API's shape (`name`, `language`, `status`, `category`,
    /// `components`); None for kinds without provider templates.
    async fn templates(&self, _config: &serde_json::Value) -> Result<Option<Vec<serde_json::Value>>, ProviderError> {
        Ok(None)
    }
    /// Marks the received message `wa_message_id` of `chat` as read (blue
    /// ticks for the sender). `Rejected` with `no_mark_read` when this kind
    /// cannot.
    async fn mark_read(
        &self,
        _config: &serde_json::Value,
        _chat: &ChatId,
        _wa_message_id: &str,
    ) -> Result<(), ProviderError> {
        Err(ProviderError::Rejected {
            code: "no_mark_read".into(),
            message: format!("{} instances cannot mark messages as read", self.kind()),
        })
    }
    /// A code to link the phone `phone` (digits) by typing it in WhatsApp
    /// ("Link with phone number") instead of scanning the QR code.
    /// `Rejected` with `not_waiting_for_qr` once linked, `no_pairing_code`
    /// when this kind has none.
    async fn pairing_code(&self, _config: &serde_json::Value, _phone: &str) -> Result<String, ProviderError> {
        Err(ProviderError::Rejected {
            code: "no_pairing_code".into(),
            message: format!("{} instances have no pairing code", self.kind()),
        })
    }
    /// Asks the provider to bring a dropped connection back (the number
    /// stays linked: no new scan). `Rejected` with code `no_reconnect` when
    /// this kind cannot.
    async fn reconnect(&self, _config: &serde_json::Value) -> Result<(), ProviderError> {
        Err(ProviderError::Rejected {
            code: "no_reconnect".into(),
            message: format!("{} instances cannot be asked to reconnect", self.kind()),
        })
    }
    /// Logs the number out; it needs a new scan to send again.
    async fn logout(&self, _config: &serde_json::Value) -> Result<(), ProviderError> {
        Ok(())
    }
    /// Removes the instance's session from its server; a missing one is not an error.
    async fn delete_session(&self, _config: &serde_json::Value) -> Result<(), ProviderError> {
        Ok(())
    }
    /// How this kind's webhooks prove where they came from; None: it sends
    /// none (the sandbox reports in process).
    fn webhook_auth(&self) -> Option<WebhookAuth> {
        None
    }
    /// The events in one webhook body. Event types zapgate does not use are
    /// skipped; a body that is not the provider's webhook shape is `Malformed`.
    fn parse_webhook(&self, _body: &[u8]) -> Result<Vec<ProviderEvent>, WebhookError> {
        Err(WebhookError::Malformed(format!("{} sends no webhooks", self.kind())))
    }
    /// How to download a media attachment an instance with this `config`
    /// received; None when it cannot be fetched.
    fn media_fetch(&self, _config: &serde_json::Value, source: &inbound::MediaSource) -> Option<MediaFetch> {
        MediaFetch::plain(source)
    }
    /// How the provider names the instance with this `config` in its
    /// webhooks (`ProviderEvent::instance`): the Cloud API's phone number
    /// id, WAHA's session, Evolution's instance name, UAZAPI's token.
    fn webhook_instance(&self, _config: &serde_json::Value) -> Option<String> {
        None
    }
    /// The server an instance with this `config` sends through, as its
    /// circuit breaker's key: the kind and the `base_url`'s origin (never
    /// its credentials). None: no circuit (the sandbox cannot have an outage).
    fn endpoint(&self, config: &serde_json::Value) -> Option<String> {
        let origin = config
            .get("base_url")
            .and_then(|v| v.as_str())
            .and_then(|b| reqwest::Url::parse(b).ok())
            .map(|u| u.origin().ascii_serialization());
        Some(match origin {
            Some(origin) => format!("{} {origin}", self.kind()),
            None => self.kind().to_owned(),
        })
    }
}

/// The providers this process can use, by kind.
#[derive(Clone, Default)]
pub struct Providers {
    by_kind: HashMap<&'static str, Arc<dyn Provider>>,
}

impl Providers {
    pub fn with(mut self, p: Arc<dyn Provider>) -> Self {
        self.by_kind.insert(p.kind(), p);
        self
    }

    pub fn get(&self, kind: &str) -> Option<Arc<dyn Provider>> {
        self.by_kind.get(kind).cloned()
    }

    pub fn kinds(&self) -> Vec<&'static str> {
        let mut k: Vec<_> = self.by_kind.keys().copied().collect();
        k.sort_unstable();
        k
    }
}
