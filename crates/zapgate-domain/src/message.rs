//! What a tenant asks zapgate to send, parsed from the API's JSON.
//!
//! The wire shape follows the WhatsApp Cloud API (`"type": "text", "text":
//! {…}`), so the native API and the Cloud facade share one content model.

use crate::{ChatId, InstanceId, Priority, Timestamp, ValidationError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const MAX_TEXT_CHARS: usize = 4096;
pub const MAX_CAPTION_CHARS: usize = 1024;
pub const MAX_URL_LEN: usize = 2048;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Text {
    pub body: String,
    #[serde(default)]
    pub preview_url: bool,
}

/// Media given by URL (the provider fetches it) or, as on the Cloud API, by
/// `id`: media uploaded to zapgate (`POST /v1/media`, `med_…`), which the
/// worker turns into a link the provider can fetch before sending.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Media {
    /// Exactly one of `link` and `id`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub link: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateLanguage {
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

/// A provider (Cloud API) template referenced by name and language.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub name: String,
    pub language: TemplateLanguage,
    /// Cloud API template components, passed through as given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub components: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InteractiveText {
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InteractiveHeader {
    /// Only `text` headers for now.
    #[serde(rename = "type")]
    pub kind: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplyButtonBody {
    pub id: String,
    pub title: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplyButton {
    /// Always `reply`.
    #[serde(rename = "type")]
    pub kind: String,
    pub reply: ReplyButtonBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ListRow {
    pub id: String,
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ListSection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The rows of a `list`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rows: Vec<ListRow>,
    /// The products of a `product_list` (`{"product_retailer_id"}` each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub product_items: Option<Vec<serde_json::Value>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InteractiveAction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buttons: Option<Vec<ReplyButton>>,
    /// Label of the button that opens a list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub button: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sections: Option<Vec<ListSection>>,
    /// `cta_url`, `flow` or `send_location`: what the action is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The action's parameters (`cta_url`: `display_text`, `url`; `flow`:
    /// `flow_id` or `flow_name`, `flow_cta`, …), passed through as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Value>,
    /// The catalog of a `product` or `product_list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog_id: Option<String>,
    /// The product of a `product` message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_retailer_id: Option<String>,
}

/// Reply buttons (`type: button`, 1–3 buttons), a list (`list`), a call-to-
/// action URL button (`cta_url`), a WhatsApp Flow (`flow`), a catalog product
/// (`product`) or products (`product_list`), or a location request
/// (`location_request_message`) — the Cloud API's interactive messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Interactive {
    #[serde(rename = "type")]
    pub kind: InteractiveKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<InteractiveHeader>,
    /// Required, except for a `product` message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<InteractiveText>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub footer: Option<InteractiveText>,
    pub action: InteractiveAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InteractiveKind {
    Button,
    List,
    CtaUrl,
    Flow,
    Product,
    ProductList,
    LocationRequestMessage,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Location {
    pub latitude: f64,
    pub longitude: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reaction {
    /// The message reacted to: a zapgate message id (`msg_…`, sent or
    /// received) or a WhatsApp message id.
    pub message_id: String,
    /// One emoji; empty removes a reaction.
    pub emoji: String,
    /// Whether the message reacted to was sent from this instance (set when
    /// a zapgate id is resolved; providers that name messages by sender need it).
    #[serde(skip)]
    pub from_me: bool,
}

/// The content of a message. Stored and shown in the Cloud API wire shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum MessageContent {
    Text {
        text: Text,
    },
    Image {
        image: Media,
    },
    Video {
        video: Media,
    },
    Audio {
        audio: Media,
    },
    Document {
        document: Media,
    },
    Sticker {
        sticker: Media,
    },
    Template {
        template: Template,
    },
    Interactive {
        interactive: Interactive,
    },
    Location {
        location: Location,
    },
    Reaction {
        reaction: Reaction,
    },
    /// Contact cards, in the Cloud API's shape (`name.formatted_name`
    /// required; `phones`, `emails`, `org`, `addresses`, `urls`, `birthday`).
    Contacts {
        #[schema(value_type = Vec<Object>)]
        contacts: Vec<serde_json::Value>,
    },
}

impl MessageContent {
    /// The media of an image, video, audio, document or sticker message.
    pub fn media(&self) -> Option<&Media> {
        match self {
            Self::Image { image: m }
            | Self::Video { video: m }
            | Self::Audio { audio: m }
            | Self::Document { document: m }
            | Self::Sticker { sticker: m } => Some(m),
            _ => None,
        }
    }

    pub fn reaction_mut(&mut self) -> Option<&mut Reaction> {
        match self {
            Self::Reaction { reaction } => Some(reaction),
            _ => None,
        }
    }

    pub fn media_mut(&mut self) -> Option<&mut Media> {
        match self {
            Self::Image { image: m }
            | Self::Video { video: m }
            | Self::Audio { audio: m }
            | Self::Document { document: m }
            | Self::Sticker { sticker: m } => Some(m),
            _ => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Text { .. } => "text",
            Self::Image { .. } => "image",
            Self::Video { .. } => "video",
            Self::Audio { .. } => "audio",
            Self::Document { .. } => "document",
            Self::Sticker { .. } => "sticker",
            Self::Template { .. } => "template",
            Self::Interactive { .. } => "interactive",
            Self::Location { .. } => "location",
            Self::Reaction { .. } => "reaction",
            Self::Contacts { .. } => "contacts",
        }
    }

    /// Checks the limits WhatsApp enforces, so a message that would surely be
    /// refused is refused at accept time with the field named.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            Self::Text { text } => check_len("text.body", &text.body, 1, MAX_TEXT_CHARS),
            Self::Image { image: m }
            | Self::Video { video: m }
            | Self::Audio { audio: m }
            | Self::Document { document: m }
            | Self::Sticker { sticker: m } => validate_media(m).map_err(|e| e.within(self.kind())),
            Self::Template { template } => {
                check_len("template.name", &template.name, 1, 512)?;
                check_len("template.language.code", &template.language.code, 2, 15)
            }
            Self::Interactive { interactive } => validate_interactive(interactive),
            Self::Location { location } => {
                if !(location.latitude.is_finite() && (-90.0..=90.0).contains(&location.latitude)) {
                    return Err(ValidationError::new("location.latitude", "must be between -90 and 90"));
                }
                if !(location.longitude.is_finite() && (-180.0..=180.0).contains(&location.longitude)) {
                    return Err(ValidationError::new("location.longitude", "must be between -180 and 180"));
                }
                Ok(())
            }
            Self::Reaction { reaction } => {
                check_len("reaction.message_id", &reaction.message_id, 1, 256)?;
                check_len("reaction.emoji", &reaction.emoji, 0, 16)
            }
            Self::Contacts { contacts } => validate_contacts(contacts),
        }
    }
}

fn check_len(field: &str, s: &str, min: usize, max: usize) -> Result<(), ValidationError> {
    let n = s.chars().count();
    if n < min || (min > 0 && s.trim().is_empty()) {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if n > max {
        return Err(ValidationError::new(field, format!("must be at most {max} characters (got {n})")));
    }
    Ok(())
}

fn validate_media(m: &Media) -> Result<(), ValidationError> {
    match (&m.id, m.link.is_empty()) {
        (Some(_), false) => return Err(ValidationError::new("id", "give either link or id, not both")),
        (None, true) => return Err(ValidationError::new("link", "is required (or id, of uploaded media)")),
        (Some(id), true) => {
            if crate::MediaId::parse(id).is_none() {
                return Err(ValidationError::new("id", "must be a media id (med_…) from POST /v1/media"));
            }
        }
        (None, false) => {
            if !(m.link.starts_with("https://") || m.link.starts_with("http://")) || m.link.len() > MAX_URL_LEN {
                return Err(ValidationError::new("link", "must be an http(s) URL of at most 2048 characters"));
            }
        }
    }
    if let Some(c) = &m.caption {
        check_len("caption", c, 0, MAX_CAPTION_CHARS)?;
    }
    if let Some(f) = &m.filename {
        check_len("filename", f, 1, 240)?;
    }
    Ok(())
}

fn validate_contacts(contacts: &[serde_json::Value]) -> Result<(), ValidationError> {
    if !(1..=257).contains(&contacts.len()) {
        return Err(ValidationError::new("contacts", "needs 1 to 257 contacts"));
    }
    for (n, c) in contacts.iter().enumerate() {
        let name = c.get("name").and_then(|n| n.get("formatted_name")).and_then(|f| f.as_str());
        let Some(name) = name else {
            return Err(ValidationError::new(format!("contacts[{n}].name.formatted_name"), "is required"));
        };
        check_len(&format!("contacts[{n}].name.formatted_name"), name, 1, 256)?;
        if !c.is_object() {
            return Err(ValidationError::new(format!("contacts[{n}]"), "must be an object"));
        }
    }
    Ok(())
}

/// The parameter `key` of the action, as a non-empty string.
fn action_param<'a>(i: &'a Interactive, key: &str) -> Result<&'a str, ValidationError> {
    let v = i.action.parameters.as_ref().and_then(|p| p.get(key)).and_then(|v| v.as_str());
    v.filter(|s| !s.trim().is_empty())
        .ok_or_else(|| ValidationError::new(format!("interactive.action.parameters.{key}"), "is required"))
}

fn validate_interactive(i: &Interactive) -> Result<(), ValidationError> {
    match &i.body {
        Some(body) => check_len("interactive.body.text", &body.text, 1, 1024)?,
        None if i.kind == InteractiveKind::Product => {}
        None => return Err(ValidationError::new("interactive.body", "is required")),
    }
    if let Some(h) = &i.header {
        if h.kind != "text" {
            return Err(ValidationError::new("interactive.header.type", "only text headers are supported"));
        }
        check_len("interactive.header.text", &h.text, 1, 60)?;
    }
    if let Some(f) = &i.footer {
        check_len("interactive.footer.text", &f.text, 1, 60)?;
    }
    match i.kind {
        InteractiveKind::Button => {
            let buttons = i.action.buttons.as_deref().unwrap_or_default();
            if !(1..=3).contains(&buttons.len()) {
                return Err(ValidationError::new("interactive.action.buttons", "needs 1 to 3 buttons"));
            }
            for (n, b) in buttons.iter().enumerate() {
                if b.kind != "reply" {
                    return Err(ValidationError::new(
                        format!("interactive.action.buttons[{n}].type"),
                        "must be \"reply\"",
                    ));
                }
                check_len(&format!("interactive.action.buttons[{n}].reply.id"), &b.reply.id, 1, 256)?;
                check_len(&format!("interactive.action.buttons[{n}].reply.title"), &b.reply.title, 1, 20)?;
            }
        }
        InteractiveKind::List => {
            check_len("interactive.action.button", i.action.button.as_deref().unwrap_or_default(), 1, 20)?;
            let sections = i.action.sections.as_deref().unwrap_or_default();
            if !(1..=10).contains(&sections.len()) {
                return Err(ValidationError::new("interactive.action.sections", "needs 1 to 10 sections"));
            }
            let rows: usize = sections.iter().map(|s| s.rows.len()).sum();
            if !(1..=10).contains(&rows) {
                return Err(ValidationError::new("interactive.action.sections", "needs 1 to 10 rows in all"));
            }
            for (n, s) in sections.iter().enumerate() {
                for (r, row) in s.rows.iter().enumerate() {
                    check_len(&format!("interactive.action.sections[{n}].rows[{r}].id"), &row.id, 1, 200)?;
                    check_len(&format!("interactive.action.sections[{n}].rows[{r}].title"), &row.title, 1, 24)?;
                }
            }
        }
        InteractiveKind::CtaUrl => {
            check_len("interactive.action.parameters.display_text", action_param(i, "display_text")?, 1, 20)?;
            let url = action_param(i, "url")?;
            if !(url.starts_with("https://") || url.starts_with("http://")) || url.len() > MAX_URL_LEN {
                return Err(ValidationError::new("interactive.action.parameters.url", "must be an http(s) URL"));
            }
        }
        InteractiveKind::Flow => {
            if action_param(i, "flow_id").is_err() && action_param(i, "flow_name").is_err() {
                return Err(ValidationError::new(
                    "interactive.action.parameters.flow_id",
                    "is required (or flow_name)",
                ));
            }
            check_len("interactive.action.parameters.flow_cta", action_param(i, "flow_cta")?, 1, 30)?;
        }
        InteractiveKind::Product => {
            check_len("interactive.action.catalog_id", i.action.catalog_id.as_deref().unwrap_or_default(), 1, 64)?;
            let product = i.action.product_retailer_id.as_deref().unwrap_or_default();
            check_len("interactive.action.product_retailer_id", product, 1, 256)?;
        }
        InteractiveKind::ProductList => {
            if i.header.is_none() {
                return Err(ValidationError::new("interactive.header", "is required for a product_list"));
            }
            check_len("interactive.action.catalog_id", i.action.catalog_id.as_deref().unwrap_or_default(), 1, 64)?;
            let sections = i.action.sections.as_deref().unwrap_or_default();
            if !(1..=10).contains(&sections.len()) {
                return Err(ValidationError::new("interactive.action.sections", "needs 1 to 10 sections"));
            }
            let items: usize = sections.iter().map(|s| s.product_items.as_ref().map_or(0, Vec::len)).sum();
            if !(1..=30).contains(&items) {
                return Err(ValidationError::new("interactive.action.sections", "needs 1 to 30 product_items in all"));
            }
        }
        InteractiveKind::LocationRequestMessage => {
            if i.action.name.as_deref() != Some("send_location") {
                return Err(ValidationError::new("interactive.action.name", "must be \"send_location\""));
            }
        }
    }
    Ok(())
}

/// A validated send request: everything the store needs to accept it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SendRequest {
    pub instance_id: InstanceId,
    pub to: ChatId,
    #[serde(flatten)]
    pub content: MessageContent,
    pub priority: Priority,
    pub send_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    /// The message this one quotes (a reply): a zapgate message id (`msg_…`,
    /// sent or received) or a WhatsApp message id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
}

impl SendRequest {
    /// Hash of the parsed request: two bodies that mean the same thing (key
    /// order, spacing, `+55…` vs `55…`) share a fingerprint. Used by
    /// idempotency to tell "same request again" from "different request".
    pub fn fingerprint(&self) -> [u8; 32] {
        let canonical = serde_json::to_vec(self).expect("send requests always serialise");
        Sha256::digest(&canonical).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn content(v: serde_json::Value) -> Result<MessageContent, String> {
        let c: MessageContent = serde_json::from_value(v).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn every_kind_parses_from_cloud_shape() {
        let ok = [
            json!({"type":"text","text":{"body":"Olá"}}),
            json!({"type":"image","image":{"link":"https://x.test/a.png","caption":"c"}}),
            json!({"type":"document","document":{"link":"https://x.test/a.pdf","filename":"a.pdf"}}),
            json!({"type":"image","image":{"id":"med_01a24cac6c677683b945aac9ad555ee7"}}),
            json!({"type":"template","template":{"name":"bill","language":{"code":"pt_BR"},"components":[{"type":"body"}]}}),
            json!({"type":"interactive","interactive":{"type":"button","body":{"text":"Pay?"},
                "action":{"buttons":[{"type":"reply","reply":{"id":"y","title":"Yes"}}]}}}),
            json!({"type":"interactive","interactive":{"type":"list","body":{"text":"Pick"},
                "action":{"button":"Options","sections":[{"title":"A","rows":[{"id":"1","title":"One"}]}]}}}),
            json!({"type":"location","location":{"latitude":-23.5,"longitude":-46.6,"name":"SP"}}),
            json!({"type":"reaction","reaction":{"message_id":"wamid.X","emoji":"👍"}}),
            json!({"type":"contacts","contacts":[{"name":{"formatted_name":"Ana Souza","first_name":"Ana"},
                "phones":[{"phone":"+5511988887777","type":"CELL"}]}]}),
            json!({"type":"interactive","interactive":{"type":"cta_url","body":{"text":"Your bill"},
                "action":{"name":"cta_url","parameters":{"display_text":"Pay","url":"https://pay.example/1"}}}}),
            json!({"type":"interactive","interactive":{"type":"flow","body":{"text":"Book"},
                "action":{"name":"flow","parameters":{"flow_message_version":"3","flow_id":"1","flow_cta":"Book!"}}}}),
            json!({"type":"interactive","interactive":{"type":"product",
                "action":{"catalog_id":"194836987003835","product_retailer_id":"di9ozbzfi4"}}}),
            json!({"type":"interactive","interactive":{"type":"product_list","header":{"type":"text","text":"Picks"},
                "body":{"text":"New"},"action":{"catalog_id":"1","sections":[{"title":"A",
                "product_items":[{"product_retailer_id":"x"}]}]}}}),
            json!({"type":"interactive","interactive":{"type":"location_request_message","body":{"text":"Where?"},
                "action":{"name":"send_location"}}}),
        ];
        for v in ok {
            content(v.clone()).unwrap_or_else(|e| panic!("{v}: {e}"));
        }
    }

    #[test]
    fn limits_are_enforced_with_the_field_named() {
        let cases = [
            (json!({"type":"text","text":{"body":""}}), "text.body"),
            (json!({"type":"text","text":{"body":"x".repeat(4097)}}), "text.body"),
            (json!({"type":"image","image":{"link":"ftp://x"}}), "image.link"),
            (json!({"type":"image","image":{}}), "image.link"),
            (json!({"type":"image","image":{"id":"123"}}), "image.id"),
            (
                json!({"type":"image","image":{"id":"med_01a24cac6c677683b945aac9ad555ee7","link":"https://x.test/a.png"}}),
                "image.id",
            ),
            (json!({"type":"location","location":{"latitude":91.0,"longitude":0.0}}), "location.latitude"),
            (
                json!({"type":"interactive","interactive":{"type":"button","body":{"text":"x"},"action":{"buttons":[]}}}),
                "interactive.action.buttons",
            ),
            (json!({"type":"contacts","contacts":[]}), "contacts"),
            (json!({"type":"contacts","contacts":[{"phones":[]}]}), "contacts[0].name.formatted_name"),
            (
                json!({"type":"interactive","interactive":{"type":"cta_url","body":{"text":"x"},
                    "action":{"name":"cta_url","parameters":{"display_text":"Pay","url":"javascript:x"}}}}),
                "interactive.action.parameters.url",
            ),
            (
                json!({"type":"interactive","interactive":{"type":"product_list","body":{"text":"x"},
                    "action":{"catalog_id":"1","sections":[]}}}),
                "interactive.header",
            ),
            (
                json!({"type":"interactive","interactive":{"type":"location_request_message","body":{"text":"x"},
                    "action":{}}}),
                "interactive.action.name",
            ),
            (json!({"type":"interactive","interactive":{"type":"button","action":{}}}), "interactive.body"),
        ];
        for (v, field) in cases {
            let e = content(v.clone()).unwrap_err();
            assert!(e.starts_with(field), "{v}: {e}");
        }
    }

    #[test]
    fn unknown_kinds_and_fields_are_rejected() {
        assert!(content(json!({"type":"hologram"})).is_err());
        assert!(content(json!({"type":"text","text":{"body":"a","colour":"red"}})).is_err());
    }

    #[test]
    fn fingerprint_ignores_spelling_but_not_meaning() {
        let req = |to: &str, body: &str| SendRequest {
            instance_id: InstanceId::from_trusted("ins_x".into()),
            to: ChatId::parse(to).unwrap(),
            content: MessageContent::Text { text: Text { body: body.into(), preview_url: false } },
            priority: Priority::Normal,
            send_at: None,
            expires_at: None,
            reply_to: None,
        };
        assert_eq!(req("+5511999998888", "a").fingerprint(), req("5511999998888", "a").fingerprint());
        assert_ne!(req("+5511999998888", "a").fingerprint(), req("+5511999998888", "b").fingerprint());
    }
}
