//! The calls zapgate makes to Chatwoot's application API (`api_access_token`
//! header): find or create a contact and its conversation in the
//! integration's inbox, post messages (with attachments) and private notes.

use crate::egress::Egress;
use serde_json::{Value, json};
use std::time::Duration;
use zapgate_backends::IntegrationRecord;

/// A failed call: what happened, and whether trying again may help.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub message: String,
    pub status: Option<u16>,
    pub retryable: bool,
}

impl ApiError {
    fn permanent(message: impl Into<String>) -> Self {
        Self { message: message.into(), status: None, retryable: false }
    }
}

type ApiResult<T> = Result<T, ApiError>;

const TIMEOUT: Duration = Duration::from_secs(15);
/// Chatwoot's answers are small JSON documents.
const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// A file to attach to a message.
pub struct File {
    pub name: String,
    pub mime: String,
    pub bytes: Vec<u8>,
}

pub struct Client<'a> {
    pub egress: &'a Egress,
    pub integration: &'a IntegrationRecord,
}

impl Client<'_> {
    fn url(&self, path: &str) -> String {
        format!("{}/api/v1/accounts/{}{path}", self.integration.base_url, self.integration.account_id)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> ApiResult<Value> {
        let res =
            req.header("api_access_token", &self.integration.api_token).timeout(TIMEOUT).send().await.map_err(|e| {
                ApiError { message: format!("Chatwoot could not be reached: {e}"), status: None, retryable: true }
            })?;
        let status = res.status();
        let body = crate::egress::read_capped(res, MAX_ANSWER).await.map_err(|e| ApiError {
            message: format!("Chatwoot's answer: {e}"),
            status: None,
            retryable: true,
        })?;
        if !status.is_success() {
            let snippet = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            let retryable = status.is_server_error() || status.as_u16() == 429;
            return Err(ApiError {
                message: format!("Chatwoot answered HTTP {}: {snippet}", status.as_u16()),
                status: Some(status.as_u16()),
                retryable,
            });
        }
        Ok(serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> ApiResult<Value> {
        self.egress.check_url(&self.url(path)).map_err(|e| ApiError::permanent(e.to_string()))?;
        self.send(self.egress.client().get(self.url(path))).await
    }

    async fn post(&self, path: &str, body: &Value) -> ApiResult<Value> {
        self.egress.check_url(&self.url(path)).map_err(|e| ApiError::permanent(e.to_string()))?;
        self.send(self.egress.client().post(self.url(path)).json(body)).await
    }

    /// The contact with this phone (E.164), if Chatwoot has one: its id and
    /// its `source_id` in the integration's inbox, if it has one there.
    pub async fn find_contact(&self, phone: &str) -> ApiResult<Option<(u64, Option<String>)>> {
        let q: String = url::form_urlencoded::byte_serialize(phone.as_bytes()).collect();
        let found = self.get(&format!("/contacts/search?q={q}")).await?;
        let contacts = found["payload"].as_array().cloned().unwrap_or_default();
        let Some(c) = contacts.iter().find(|c| c["phone_number"].as_str() == Some(phone)) else { return Ok(None) };
        let id = c["id"].as_u64().ok_or_else(|| ApiError::permanent("Chatwoot's contact has no id"))?;
        let inbox = self.integration.inbox_id;
        let source = c["contact_inboxes"].as_array().and_then(|all| {
            all.iter()
                .find(|ci| ci["inbox"]["id"].as_u64() == Some(inbox) || ci["inbox_id"].as_u64() == Some(inbox))
                .and_then(|ci| ci["source_id"].as_str().map(str::to_owned))
        });
        Ok(Some((id, source)))
    }

    /// Creates a contact in the inbox; returns its id and `source_id` there.
    pub async fn create_contact(&self, phone: &str, name: &str, source_id: &str) -> ApiResult<(u64, String)> {
        let body = json!({"inbox_id": self.integration.inbox_id, "name": name, "phone_number": phone,
                          "source_id": source_id});
        let made = self.post("/contacts", &body).await?;
        let p = &made["payload"];
        let id =
            p["contact"]["id"].as_u64().or(p["id"].as_u64()).ok_or_else(|| ApiError::permanent("no contact id"))?;
        let source = p["contact_inbox"]["source_id"].as_str().unwrap_or(source_id).to_owned();
        Ok((id, source))
    }

    /// Puts an existing contact in the inbox; returns its `source_id` there.
    pub async fn add_to_inbox(&self, contact: u64, source_id: &str) -> ApiResult<String> {
        let body = json!({"inbox_id": self.integration.inbox_id, "source_id": source_id});
        let made = self.post(&format!("/contacts/{contact}/contact_inboxes"), &body).await?;
        Ok(made["source_id"].as_str().unwrap_or(source_id).to_owned())
    }

    /// The contact's conversation in the inbox that is not resolved, if any.
    pub async fn open_conversation(&self, contact: u64) -> ApiResult<Option<u64>> {
        let listed = self.get(&format!("/contacts/{contact}/conversations")).await?;
        let all = listed["payload"].as_array().cloned().unwrap_or_default();
        let inbox = self.integration.inbox_id;
        Ok(all
            .iter()
            .filter(|c| c["inbox_id"].as_u64() == Some(inbox) && c["status"].as_str() != Some("resolved"))
            .find_map(|c| c["id"].as_u64()))
    }

    /// Opens a conversation with the contact in the inbox; returns its display id.
    pub async fn create_conversation(&self, contact: u64, source_id: &str) -> ApiResult<u64> {
        let body = json!({"source_id": source_id, "inbox_id": self.integration.inbox_id, "contact_id": contact,
                          "status": "open"});
        let made = self.post("/conversations", &body).await?;
        made["id"].as_u64().ok_or_else(|| ApiError::permanent("Chatwoot's conversation has no id"))
    }

    /// Whether the conversation's latest messages include one zapgate posted
    /// as `source_id` (a retry after a post whose answer was lost).
    pub async fn has_message(&self, conversation: u64, source_id: &str) -> ApiResult<bool> {
        let listed = self.get(&format!("/conversations/{conversation}/messages")).await?;
        let messages = listed["payload"].as_array().cloned().unwrap_or_default();
        Ok(messages.iter().any(|m| m["source_id"].as_str() == Some(source_id)))
    }

    /// Posts a message (`incoming` from the contact, `outgoing` from the
    /// number's own phone, or a private note) with its files.
    pub async fn post_message(
        &self,
        conversation: u64,
        message_type: &str,
        private: bool,
        content: &str,
        source_id: &str,
        files: Vec<File>,
    ) -> ApiResult<u16> {
        let path = format!("/conversations/{conversation}/messages");
        if files.is_empty() {
            let body = json!({"content": content, "message_type": message_type, "private": private,
                              "source_id": source_id});
            self.post(&path, &body).await?;
            return Ok(200);
        }
        self.egress.check_url(&self.url(&path)).map_err(|e| ApiError::permanent(e.to_string()))?;
        let mut form = reqwest::multipart::Form::new()
            .text("content", content.to_owned())
            .text("message_type", message_type.to_owned())
            .text("private", private.to_string())
            .text("source_id", source_id.to_owned());
        for f in files {
            let part = reqwest::multipart::Part::bytes(f.bytes)
                .file_name(f.name)
                .mime_str(&f.mime)
                .map_err(|e| ApiError::permanent(format!("bad MIME type: {e}")))?;
            form = form.part("attachments[]", part);
        }
        self.send(self.egress.client().post(self.url(&path)).multipart(form)).await?;
        Ok(200)
    }
}
