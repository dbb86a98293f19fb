//! Identifier newtypes. Ids are a short prefix plus a UUIDv7 in hex, so they
//! say what they name (`msg_…`, `ten_…`), sort by creation time, and cannot
//! be mixed up with each other in signatures.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(transparent)]
        #[schema(value_type = String, example = json!(concat!($prefix, "0193a1b2c3d47e8f9a0b1c2d3e4f5a6b")))]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// Mints a new, time-ordered id.
            pub fn generate() -> Self {
                Self(format!("{}{}", $prefix, uuid::Uuid::now_v7().simple()))
            }

            /// Accepts only strings of this id's shape; anything else is
            /// treated as "no such id" by callers (a 404, never a 500).
            pub fn parse(s: &str) -> Option<Self> {
                let rest = s.strip_prefix($prefix)?;
                (rest.len() == 32 && rest.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
                    .then(|| Self(s.to_owned()))
            }

            /// Wraps a value read back from the store, which only holds ids this
            /// type minted.
            pub fn from_trusted(s: String) -> Self {
                Self(s)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id as a Graph API id: the UUID as a decimal digit string
            /// (what Cloud API clients expect of phone number and media ids).
            /// A bijection, so nothing maps it back but [`Self::from_graph`].
            pub fn to_graph(&self) -> String {
                let hex = &self.0[$prefix.len()..];
                u128::from_str_radix(hex, 16).map(|n| n.to_string()).unwrap_or_default()
            }

            /// The id a [`Self::to_graph`] digit string stands for.
            pub fn from_graph(s: &str) -> Option<Self> {
                if s.is_empty() || s.len() > 39 || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let n: u128 = s.parse().ok()?;
                Some(Self(format!("{}{n:032x}", $prefix)))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A business using zapgate. Every row a tenant can see carries its id.
    TenantId, "ten_");
id_type!(
    /// One WhatsApp number (a session at a provider) owned by a tenant.
    InstanceId, "ins_");
id_type!(
    /// A provider server shared by many instances (a WAHA, Evolution API or
    /// UAZAPI deployment): a pool new instances are placed on.
    ProviderId, "prv_");
id_type!(
    /// A message accepted by `POST /v1/messages`, minted at accept time and
    /// reused in every status and event about it.
    MessageId, "msg_");
id_type!(
    /// One canonical event; the `webhook-id` of every delivery of it.
    EventId, "evt_");
id_type!(
    /// The public handle of an API token (not the secret).
    TokenId, "tok_");
id_type!(
    /// A media object zapgate holds: fetched from a provider with an inbound
    /// message, or uploaded by a tenant (`GET /v1/media/{id}`).
    MediaId, "med_");
id_type!(
    /// A tenant's message template.
    TemplateId, "tpl_");
id_type!(
    /// A tenant's list of recipients (with their variables and dates) that
    /// recurring schedules send to.
    AudienceId, "aud_");
id_type!(
    /// A tenant's recurring schedule: a cron expression, a template and an audience.
    ScheduleId, "sch_");
id_type!(
    /// A broadcast: one template to a list of recipients, released at a pace.
    CampaignId, "cmp_");
id_type!(
    /// A tenant's webhook subscription.
    EndpointId, "whk_");
id_type!(
    /// One event owed to one webhook endpoint (with all its attempts).
    DeliveryId, "dlv_");
id_type!(
    /// A tenant's Chatwoot integration (one Chatwoot inbox ↔ one instance).
    /// It names the integration's webhook URL, so it must not be guessable:
    /// 74 of its bits are random.
    IntegrationId, "cwi_");

impl MessageId {
    /// The id as a Cloud API message id (`wamid.…`): what the Cloud API
    /// facade answers a send with and names the message by in its webhooks.
    pub fn to_wamid(&self) -> String {
        format!("wamid.{}", self.0)
    }

    /// The message a [`Self::to_wamid`] id names (a bare `msg_…` id too).
    pub fn from_wamid(s: &str) -> Option<Self> {
        Self::parse(s.strip_prefix("wamid.").unwrap_or(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_back_and_sort_by_time() {
        let a = MessageId::generate();
        let b = MessageId::generate();
        assert_eq!(MessageId::parse(a.as_str()), Some(a.clone()));
        assert!(a < b);
    }

    #[test]
    fn graph_ids_are_digits_and_map_back() {
        let a = InstanceId::generate();
        let g = a.to_graph();
        assert!(g.bytes().all(|b| b.is_ascii_digit()), "{g}");
        assert_eq!(InstanceId::from_graph(&g), Some(a));
        assert_eq!(MediaId::from_graph("12"), MediaId::parse("med_0000000000000000000000000000000c"));
        for bad in ["", "12a", "-1", "1000000000000000000000000000000000000000"] {
            assert_eq!(InstanceId::from_graph(bad), None, "{bad}");
        }
    }

    #[test]
    fn wamids_name_the_message() {
        let m = MessageId::generate();
        assert_eq!(MessageId::from_wamid(&m.to_wamid()), Some(m.clone()));
        assert_eq!(MessageId::from_wamid(m.as_str()), Some(m));
        assert_eq!(MessageId::from_wamid("wamid.HBgLNTUxMTk5OTk5"), None);
    }

    #[test]
    fn wrong_prefix_or_shape_is_rejected() {
        let t = TenantId::generate();
        assert_eq!(MessageId::parse(t.as_str()), None);
        assert_eq!(MessageId::parse("msg_123"), None);
        assert_eq!(MessageId::parse("msg_0193A1B2C3D47E8F9A0B1C2D3E4F5A6B"), None);
    }
}
