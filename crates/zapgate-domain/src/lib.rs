//! The centre of zapgate: the types every other crate speaks.
//!
//! Everything here is pure (no I/O, no clock reads except where a constructor
//! explicitly mints a new id). Values are parsed at the boundary into these
//! types, so code past the HTTP layer never sees an unchecked phone number,
//! an unknown message kind or a status transition the rules forbid.

pub mod campaign;
pub mod chat;
pub mod error;
pub mod event;
pub mod ids;
pub mod instance_state;
pub mod json;
pub mod message;
pub mod priority;
pub mod schedule;
pub mod status;
pub mod template;
pub mod timestamp;
pub mod token;
pub mod webhook;

pub use campaign::{CampaignProgress, CampaignState};
pub use chat::ChatId;
pub use error::ValidationError;
pub use event::{EventType, MessageEvent, ReceivedMessage};
pub use ids::{
    AudienceId, CampaignId, DeliveryId, EndpointId, EventId, InstanceId, IntegrationId, MediaId, MessageId, ProviderId,
    ScheduleId, TemplateId, TenantId, TokenId,
};
pub use instance_state::InstanceState;
pub use message::{MessageContent, SendRequest};
pub use priority::Priority;
pub use status::MessageStatus;
pub use timestamp::Timestamp;
pub use token::{ApiToken, TokenHash};
