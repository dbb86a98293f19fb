//! Rows → records, written once for both SQL backends. Both stores keep the
//! same columns (times as Unix milliseconds, JSON as text), so a mapper only
//! needs to read a named column as text, integer or flag: [`Columns`], which
//! `sqlite::rows` and `postgres::rows` implement for their row types.

use crate::pools::ProviderRecord;
use crate::webhooks::{DeliveryRecord, DeliveryStatus, EndpointRecord};
use crate::{InstanceRecord, MessageRecord, StoreError, TemplateRecord, TenantRecord, TokenRecord};
use zapgate_domain::{
    ChatId, DeliveryId, EndpointId, EventId, EventType, InstanceId, MessageEvent, MessageId, Priority, ProviderId,
    TemplateId, TenantId, Timestamp, TokenId,
};

/// Reads one column of the current row by name.
pub trait Columns {
    fn text(&self, col: &str) -> Result<String, StoreError>;
    fn text_opt(&self, col: &str) -> Result<Option<String>, StoreError>;
    fn int(&self, col: &str) -> Result<i64, StoreError>;
    fn int_opt(&self, col: &str) -> Result<Option<i64>, StoreError>;
    fn flag(&self, col: &str) -> Result<bool, StoreError>;

    fn time(&self, col: &str) -> Result<Timestamp, StoreError> {
        Ok(Timestamp::from_millis(self.int(col)?))
    }
    fn time_opt(&self, col: &str) -> Result<Option<Timestamp>, StoreError> {
        Ok(self.int_opt(col)?.map(Timestamp::from_millis))
    }
    /// A JSON text column, parsed.
    fn json<T: serde::de::DeserializeOwned>(&self, col: &str) -> Result<T, StoreError> {
        serde_json::from_str(&self.text(col)?).map_err(|e| corrupt(col, e))
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

pub fn message(row: &(impl Columns + ?Sized)) -> Result<MessageRecord, StoreError> {
    Ok(MessageRecord {
        id: MessageId::from_trusted(row.text("id")?),
        tenant_id: TenantId::from_trusted(row.text("tenant_id")?),
        instance_id: InstanceId::from_trusted(row.text("instance_id")?),
        to: ChatId::parse(&row.text("recipient")?).map_err(|e| corrupt("recipient", e))?,
        wa_id: row.text_opt("wa_id")?,
        content: row.json("content")?,
        priority: Priority::from_rank(row.int("priority")?),
        status: row.text("status")?.parse().map_err(|e| corrupt("status", e))?,
        attempts: row.int("attempts")? as u32,
        chat_seq: row.int("chat_seq")?,
        provider_message_id: row.text_opt("provider_message_id")?,
        error_code: row.text_opt("error_code")?,
        error_message: row.text_opt("error_message")?,
        send_at: row.time_opt("send_at")?,
        expires_at: row.time_opt("expires_at")?,
        next_attempt_at: row.time_opt("next_attempt_at")?,
        reply_to: row.text_opt("reply_to")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
    })
}

pub fn instance(row: &(impl Columns + ?Sized)) -> Result<InstanceRecord, StoreError> {
    Ok(InstanceRecord {
        id: InstanceId::from_trusted(row.text("id")?),
        tenant_id: TenantId::from_trusted(row.text("tenant_id")?),
        name: row.text("name")?,
        provider: row.text("provider")?,
        provider_id: row.text_opt("provider_id")?.map(ProviderId::from_trusted),
        phone_number_id: row.text("phone_number_id")?,
        waba_id: row.text("waba_id")?,
        phone_number: row.text_opt("phone_number")?,
        rate_per_sec: row.int("rate_per_sec")? as u32,
        burst: row.int("burst")? as u32,
        provider_config: row.json("provider_config")?,
        created_at: row.time("created_at")?,
        state: row.text_opt("state")?.map(|s| s.parse().map_err(|e| corrupt("instance state", e))).transpose()?,
        state_reason: row.text_opt("state_reason")?,
        state_changed_at: row.time_opt("state_changed_at")?,
    })
}

/// An instance's connection state as the state machine reads it
/// (`state, state_reason, state_changed_at, state_changes`).
pub fn stored_state(row: &(impl Columns + ?Sized)) -> Result<zapgate_domain::instance_state::StoredState, StoreError> {
    Ok(zapgate_domain::instance_state::StoredState {
        state: row.text_opt("state")?.map(|s| s.parse().map_err(|e| corrupt("instance state", e))).transpose()?,
        reason: row.text_opt("state_reason")?,
        changed_at: row.time_opt("state_changed_at")?,
        recent_changes: row.json("state_changes")?,
    })
}

pub fn tenant(row: &(impl Columns + ?Sized)) -> Result<TenantRecord, StoreError> {
    Ok(TenantRecord {
        id: TenantId::from_trusted(row.text("id")?),
        name: row.text("name")?,
        created_at: row.time("created_at")?,
    })
}

pub fn token(row: &(impl Columns + ?Sized)) -> Result<TokenRecord, StoreError> {
    Ok(TokenRecord {
        id: TokenId::from_trusted(row.text("id")?),
        tenant_id: TenantId::from_trusted(row.text("tenant_id")?),
        hint: row.text("hint")?,
        created_at: row.time("created_at")?,
        revoked_at: row.time_opt("revoked_at")?,
    })
}

pub fn event(row: &(impl Columns + ?Sized)) -> Result<MessageEvent, StoreError> {
    let kind = row.text("type")?;
    Ok(MessageEvent {
        id: EventId::from_trusted(row.text("id")?),
        event_type: EventType::parse(&kind).ok_or_else(|| corrupt("event type", &kind))?,
        tenant_id: TenantId::from_trusted(row.text("tenant_id")?),
        // Events about an instance store '' for their message and status
        // (the columns predate them and stay NOT NULL).
        message_id: Some(row.text("message_id")?).filter(|m| !m.is_empty()).map(MessageId::from_trusted),
        instance_id: InstanceId::from_trusted(row.text("instance_id")?),
        status: Some(row.text("status")?)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().map_err(|e| corrupt("event status", e)))
            .transpose()?,
        chat_seq: Some(row.int("chat_seq")?).filter(|_| kind != "instance.status"),
        seq: row.int("seq")?,
        at: row.time("created_at")?,
        detail: row.json("detail")?,
    })
}

pub fn template(row: &(impl Columns + ?Sized)) -> Result<TemplateRecord, StoreError> {
    let body = row.text("body")?;
    let mut rec = TemplateRecord {
        id: TemplateId::from_trusted(row.text("id")?),
        tenant_id: TenantId::from_trusted(row.text("tenant_id")?),
        name: row.text("name")?,
        kind: crate::TemplateKind::Text,
        body: String::new(),
        cloud_template: None,
        variables: Vec::new(),
        created_at: row.time("created_at")?,
    };
    if row.text("kind")? == crate::TemplateKind::Cloud.as_str() {
        rec.kind = crate::TemplateKind::Cloud;
        rec.cloud_template = Some(serde_json::from_str(&body).map_err(|e| corrupt("body", e))?);
    } else {
        rec.body = body;
    }
    rec.variables = rec.compile().map_err(|e| StoreError::Corrupt(e.to_string()))?.variables();
    Ok(rec)
}

pub fn endpoint(row: &(impl Columns + ?Sized)) -> Result<EndpointRecord, StoreError> {
    Ok(EndpointRecord {
        id: EndpointId::from_trusted(row.text("id")?),
        tenant_id: TenantId::from_trusted(row.text("tenant_id")?),
        url: row.text("url")?,
        description: row.text("description")?,
        event_types: row.json("event_types")?,
        include_internal: row.flag("include_internal")?,
        instance_id: row.text_opt("instance_id")?.map(InstanceId::from_trusted),
        statuses: row.json("statuses")?,
        headers: row.json("headers")?,
        format: {
            let f = row.text("format")?;
            zapgate_domain::webhook::WebhookFormat::parse(&f).ok_or_else(|| corrupt("webhook format", f))?
        },
        enabled: row.flag("enabled")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
    })
}

pub fn delivery(row: &(impl Columns + ?Sized)) -> Result<DeliveryRecord, StoreError> {
    let status = match row.text("status")?.as_str() {
        "pending" => DeliveryStatus::Pending,
        "succeeded" => DeliveryStatus::Succeeded,
        "dead" => DeliveryStatus::Dead,
        other => return Err(StoreError::Corrupt(format!("delivery status {other:?}"))),
    };
    Ok(DeliveryRecord {
        id: DeliveryId::from_trusted(row.text("id")?),
        endpoint_id: EndpointId::from_trusted(row.text("endpoint_id")?),
        event_id: EventId::from_trusted(row.text("event_id")?),
        status,
        attempts: row.int("attempts")? as u32,
        // While pending it is the due time; shown only then.
        next_attempt_at: if status == DeliveryStatus::Pending { row.time_opt("next_attempt_at")? } else { None },
        last_status_code: row.int_opt("last_status_code")?.map(|c| c as u16),
        last_error: row.text_opt("last_error")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
    })
}

pub fn provider(row: &(impl Columns + ?Sized)) -> Result<ProviderRecord, StoreError> {
    Ok(ProviderRecord {
        id: ProviderId::from_trusted(row.text("id")?),
        kind: row.text("kind")?,
        name: row.text("name")?,
        settings: row.json("settings")?,
        capacity: row.int("capacity")? as u32,
        enabled: row.flag("enabled")?,
        instances: row.int("instances")? as u32,
        health: crate::pools::ProviderHealth {
            healthy: row.flag("healthy")?,
            error: row.text_opt("health_error")?,
            checked_at: row.time_opt("health_checked_at")?,
            unhealthy_since: row.time_opt("unhealthy_since")?,
        },
        created_at: row.time("created_at")?,
    })
}

pub fn inbound(row: &(impl Columns + ?Sized)) -> Result<crate::InboundRecord, StoreError> {
    Ok(crate::InboundRecord {
        id: MessageId::from_trusted(row.text("id")?),
        tenant_id: TenantId::from_trusted(row.text("tenant_id")?),
        instance_id: InstanceId::from_trusted(row.text("instance_id")?),
        chat_seq: row.int("chat_seq")?,
        message: zapgate_domain::ReceivedMessage {
            wa_message_id: row.text("wa_message_id")?,
            chat: shown_chat(&row.text("chat")?),
            sender: row.text_opt("sender")?,
            sender_name: row.text_opt("sender_name")?,
            from_me: row.flag("from_me")?,
            content: row.json("content")?,
            context_id: row.text_opt("context_id")?,
            sent_at: row.time("sent_at")?,
        },
        received_at: row.time("created_at")?,
    })
}

/// A stored chat key (`ChatId::key`) as the API shows chats.
fn shown_chat(key: &str) -> String {
    zapgate_domain::ChatId::parse(key).map(|c| c.shown()).unwrap_or_else(|_| key.to_owned())
}

/// The columns `inbound` reads.
pub const INBOUND_COLUMNS: &str = "id, tenant_id, instance_id, chat_seq, wa_message_id, chat, sender, sender_name, \
    from_me, content, context_id, sent_at, created_at";

/// An instance as a webhook account lists it (`id, tenant_id, provider_config`).
pub fn account_instance(row: &(impl Columns + ?Sized)) -> Result<crate::AccountInstance, StoreError> {
    Ok(crate::AccountInstance {
        tenant_id: TenantId::from_trusted(row.text("tenant_id")?),
        instance_id: InstanceId::from_trusted(row.text("id")?),
        config: row.json("provider_config")?,
    })
}

/// The columns `media` reads.
pub const MEDIA_COLUMNS: &str =
    "id, tenant_id, instance_id, message_id, status, mime_type, filename, size, sha256, error, created_at";

pub fn media(row: &(impl Columns + ?Sized)) -> Result<crate::MediaRecord, StoreError> {
    let status = row.text("status")?;
    Ok(crate::MediaRecord {
        id: zapgate_domain::MediaId::from_trusted(row.text("id")?),
        tenant_id: TenantId::from_trusted(row.text("tenant_id")?),
        instance_id: row.text_opt("instance_id")?.map(InstanceId::from_trusted),
        message_id: row.text_opt("message_id")?.map(MessageId::from_trusted),
        status: crate::MediaStatus::parse(&status).ok_or_else(|| corrupt("media status", &status))?,
        mime_type: row.text_opt("mime_type")?,
        filename: row.text_opt("filename")?,
        size: row.int_opt("size")?.map(|s| s as u64),
        sha256: row.text_opt("sha256")?,
        error: row.text_opt("error")?,
        created_at: row.time("created_at")?,
    })
}

/// The columns `integration` reads.
pub const INTEGRATION_COLUMNS: &str = "id, tenant_id, instance_id, base_url, account_id, inbox_id, api_token, \
    webhook_secret, enabled, created_at, updated_at";

pub fn integration(row: &(impl Columns + ?Sized)) -> Result<crate::IntegrationRecord, StoreError> {
    Ok(crate::IntegrationRecord {
        id: zapgate_domain::IntegrationId::from_trusted(row.text("id")?),
        tenant_id: TenantId::from_trusted(row.text("tenant_id")?),
        instance_id: InstanceId::from_trusted(row.text("instance_id")?),
        base_url: row.text("base_url")?,
        account_id: unsigned(row, "account_id")?,
        inbox_id: unsigned(row, "inbox_id")?,
        api_token: row.text("api_token")?,
        webhook_secret: row.text_opt("webhook_secret")?,
        enabled: row.flag("enabled")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
    })
}

/// The columns `chatwoot_job` reads.
pub const CHATWOOT_JOB_COLUMNS: &str = "integration_id, chatwoot_message_id, tenant_id, payload, status, attempts, \
    message_id, error, created_at, updated_at";

pub fn chatwoot_job(row: &(impl Columns + ?Sized)) -> Result<crate::ChatwootJob, StoreError> {
    use crate::ChatwootJobStatus;
    let status = match row.text("status")?.as_str() {
        "pending" => ChatwootJobStatus::Pending,
        "done" => ChatwootJobStatus::Done,
        "failed" => ChatwootJobStatus::Failed,
        other => return Err(corrupt("chatwoot job status", other)),
    };
    Ok(crate::ChatwootJob {
        integration_id: zapgate_domain::IntegrationId::from_trusted(row.text("integration_id")?),
        chatwoot_message_id: row.text("chatwoot_message_id")?,
        tenant_id: TenantId::from_trusted(row.text("tenant_id")?),
        payload: row.json("payload")?,
        status,
        attempts: u32::try_from(row.int("attempts")?).map_err(|e| corrupt("attempts", e))?,
        message_id: row.text_opt("message_id")?.map(MessageId::from_trusted),
        error: row.text_opt("error")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
    })
}

/// The columns `chatwoot_contact` reads.
pub const CHATWOOT_CONTACT_COLUMNS: &str = "chat, contact_id, source_id, conversation_id";

pub fn chatwoot_contact(row: &(impl Columns + ?Sized)) -> Result<crate::ChatwootContact, StoreError> {
    Ok(crate::ChatwootContact {
        chat: row.text("chat")?,
        contact_id: unsigned(row, "contact_id")?,
        source_id: row.text("source_id")?,
        conversation_id: unsigned(row, "conversation_id")?,
    })
}

/// An id of another system (Chatwoot's), kept in a signed BIGINT column.
fn unsigned(row: &(impl Columns + ?Sized), col: &str) -> Result<u64, StoreError> {
    u64::try_from(row.int(col)?).map_err(|e| corrupt(col, e))
}

/// The BIGINT column value of an unsigned outside id. Chatwoot's ids are
/// database serials, far below `i64::MAX`; a larger one is refused rather
/// than stored wrapped (and read back as corrupt).
pub fn signed(what: &str, v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Conflict(format!("{what} {v} is too large")))
}
