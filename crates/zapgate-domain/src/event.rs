//! Canonical events: one row per state change, written in the same
//! transaction as the change. They are the message history and, later, what
//! webhooks fan out from.

use crate::{DeliveryId, EndpointId, EventId, InstanceId, MessageId, MessageStatus, TenantId, Timestamp};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum EventType {
    /// The message's status changed (or a provider reported one).
    #[serde(rename = "message.status")]
    MessageStatus,
    /// Still `sent` after `ZAPGATE_ACK_TIMEOUT`: raised once, not a failure
    /// (the phone may be offline); a later `delivered` still applies.
    #[serde(rename = "message.ack_timeout")]
    MessageAckTimeout,
    /// A message arrived in one of the tenant's chats (`status: received`;
    /// `message` holds it). `from_me` ones were sent from the instance's phone.
    #[serde(rename = "message.received")]
    MessageReceived,
    /// An instance's connection state changed (`state`, `previous_state`,
    /// `reason`); repeated identical reports raise nothing.
    #[serde(rename = "instance.status")]
    InstanceStatus,
    /// A new QR code to scan for an instance waiting to be linked (`qr`: the
    /// string the code encodes); each code once, however often the provider
    /// re-sends it.
    #[serde(rename = "instance.qr")]
    InstanceQr,
    /// A webhook delivery used up its retry schedule (the seeds'
    /// `STATUS_FAILED_WEBHOOK_URL`: subscribe an endpoint to this type).
    #[serde(rename = "webhook.delivery_failed")]
    WebhookDeliveryFailed,
    /// A campaign started, paused, resumed, completed or was cancelled
    /// (`campaign_id`, `campaign_state`, `released` of `total`).
    #[serde(rename = "campaign.status")]
    CampaignStatus,
    /// A running campaign passed another tenth of its recipients
    /// released (`progress` counts where they all are).
    #[serde(rename = "campaign.progress")]
    CampaignProgress,
}

impl EventType {
    pub const ALL: [EventType; 8] = [
        EventType::MessageStatus,
        EventType::MessageAckTimeout,
        EventType::MessageReceived,
        EventType::InstanceStatus,
        EventType::InstanceQr,
        EventType::WebhookDeliveryFailed,
        EventType::CampaignStatus,
        EventType::CampaignProgress,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::MessageStatus => "message.status",
            EventType::MessageAckTimeout => "message.ack_timeout",
            EventType::MessageReceived => "message.received",
            EventType::InstanceStatus => "instance.status",
            EventType::InstanceQr => "instance.qr",
            EventType::WebhookDeliveryFailed => "webhook.delivery_failed",
            EventType::CampaignStatus => "campaign.status",
            EventType::CampaignProgress => "campaign.progress",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// Detail of one status change. Optional parts are absent, not null.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusDetail {
    /// Provider-caused failed attempts so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When a `retry_wait` or `scheduled` message is due again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Timestamp>,
    /// For `webhook.delivery_failed`: the delivery that died, its endpoint,
    /// the event it carried and the receiver's last HTTP status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_id: Option<DeliveryId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_id: Option<EndpointId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_event_id: Option<EventId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// For `instance.status`: the state now and before (absent before the first report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<crate::InstanceState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_state: Option<crate::InstanceState>,
    /// The QR code's string (`instance.qr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qr: Option<String>,
    /// For `campaign.status`: the campaign, its state now, and how many of
    /// its recipients were released into the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<crate::CampaignId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_state: Option<crate::CampaignState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// For `campaign.status` and `campaign.progress`: where its recipients are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<crate::CampaignProgress>,
    /// For `message.received`: the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<ReceivedMessage>,
    /// False when a provider report was recorded but did not change the
    /// status (e.g. `delivered` arriving after `read`).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub applied: bool,
}

/// An inbound message as events and the API show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReceivedMessage {
    /// WhatsApp's id of the message (what replies and reactions refer to).
    pub wa_message_id: String,
    /// The chat: the contact's number (digits), a group (`…@g.us`) or a LID.
    pub chat: String,
    /// Who wrote it, when not the chat itself (a group participant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// The sender's WhatsApp profile name, when the provider gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_name: Option<String>,
    /// Sent from the instance's own phone, not by a contact.
    pub from_me: bool,
    /// The content in the Cloud API's shape (`{"type":"text","text":{"body":…}}`).
    #[schema(value_type = Object)]
    pub content: serde_json::Value,
    /// WhatsApp's id of the message this one replies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_id: Option<String>,
    /// When WhatsApp says it was sent.
    pub sent_at: Timestamp,
}

fn yes() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}

/// An event as stored, shown in a message's history and sent to webhooks.
/// Message events name their message, status and per-chat sequence;
/// `instance.status` events have none of the three.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MessageEvent {
    pub id: EventId,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub tenant_id: TenantId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<MessageId>,
    pub instance_id: InstanceId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<MessageStatus>,
    /// Per-chat sequence number of the message, so receivers can restore order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_seq: Option<i64>,
    /// Increases with every event zapgate records; webhooks may arrive out
    /// of order (they are sent concurrently and retried), this restores it.
    pub seq: i64,
    pub at: Timestamp,
    #[serde(flatten)]
    pub detail: StatusDetail,
}
