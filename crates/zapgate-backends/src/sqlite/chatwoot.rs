//! `ChatwootStore` on SQLite. The single writer serialises claims, so a
//! claim's select-then-lease needs no row locks.

use super::SqliteBackend;
use super::rows::{all, exec, one};
use crate::StoreError;
use crate::chatwoot::*;
use crate::records::{
    CHATWOOT_CONTACT_COLUMNS, CHATWOOT_JOB_COLUMNS, INTEGRATION_COLUMNS, chatwoot_contact, chatwoot_job, integration,
    signed,
};
use async_trait::async_trait;
use rusqlite::{Row, params};
use zapgate_domain::{InstanceId, IntegrationId, MessageId, TenantId, Timestamp};

// Plain functions of this backend's row type, as `one`/`all` take them.
fn integration_row(row: &Row<'_>) -> Result<IntegrationRecord, StoreError> {
    integration(row)
}
fn job_row(row: &Row<'_>) -> Result<ChatwootJob, StoreError> {
    chatwoot_job(row)
}
fn contact_row(row: &Row<'_>) -> Result<ChatwootContact, StoreError> {
    chatwoot_contact(row)
}

#[async_trait]
impl ChatwootStore for SqliteBackend {
    async fn create_integration(&self, new: NewIntegration, now: Timestamp) -> Result<IntegrationRecord, StoreError> {
        let account_id = signed("account_id", new.account_id)?;
        let inbox_id = signed("inbox_id", new.inbox_id)?;
        self.writer
            .write(Box::new(move |conn| {
                let sql = format!(
                    "INSERT INTO chatwoot_integrations (id, tenant_id, instance_id, base_url, account_id, inbox_id, \
                     api_token, webhook_secret, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9) \
                     RETURNING {INTEGRATION_COLUMNS}"
                );
                let params = params![
                    new.id.as_str(),
                    new.tenant_id.as_str(),
                    new.instance_id.as_str(),
                    new.base_url,
                    account_id,
                    inbox_id,
                    new.api_token,
                    new.webhook_secret,
                    now.as_millis()
                ];
                one(conn, &sql, params, integration_row)?
                    .ok_or_else(|| StoreError::Corrupt("insert returned nothing".into()))
            }))
            .await
    }

    async fn list_integrations(&self, tenant: &TenantId) -> Result<Vec<IntegrationRecord>, StoreError> {
        let tenant = tenant.to_string();
        let sql = format!(
            "SELECT {INTEGRATION_COLUMNS} FROM chatwoot_integrations WHERE tenant_id = ? AND deleted_at IS NULL \
             ORDER BY id"
        );
        self.read(move |c| all(c, &sql, [tenant], integration_row)).await
    }

    async fn get_integration(
        &self,
        tenant: &TenantId,
        id: &IntegrationId,
    ) -> Result<Option<IntegrationRecord>, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        let sql = format!(
            "SELECT {INTEGRATION_COLUMNS} FROM chatwoot_integrations \
             WHERE id = ? AND tenant_id = ? AND deleted_at IS NULL"
        );
        self.read(move |c| one(c, &sql, [id, tenant], integration_row)).await
    }

    async fn integration(&self, id: &IntegrationId) -> Result<Option<IntegrationRecord>, StoreError> {
        let id = id.to_string();
        let sql =
            format!("SELECT {INTEGRATION_COLUMNS} FROM chatwoot_integrations WHERE id = ? AND deleted_at IS NULL");
        self.read(move |c| one(c, &sql, [id], integration_row)).await
    }

    async fn integrations_of_instance(&self, instance: &InstanceId) -> Result<Vec<IntegrationRecord>, StoreError> {
        let instance = instance.to_string();
        let sql = format!(
            "SELECT {INTEGRATION_COLUMNS} FROM chatwoot_integrations \
             WHERE instance_id = ? AND enabled AND deleted_at IS NULL ORDER BY id"
        );
        self.read(move |c| all(c, &sql, [instance], integration_row)).await
    }

    async fn update_integration(
        &self,
        tenant: &TenantId,
        id: &IntegrationId,
        change: IntegrationChange,
        now: Timestamp,
    ) -> Result<Option<IntegrationRecord>, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        let account_id = change.account_id.map(|v| signed("account_id", v)).transpose()?;
        let inbox_id = change.inbox_id.map(|v| signed("inbox_id", v)).transpose()?;
        // COALESCE cannot tell "keep" from "set NULL": the secret takes a flag.
        let (set_secret, secret) = match change.webhook_secret {
            Some(s) => (true, s),
            None => (false, None),
        };
        self.writer
            .write(Box::new(move |conn| {
                let sql = format!(
                    "UPDATE chatwoot_integrations SET instance_id = COALESCE(?1, instance_id), \
                     base_url = COALESCE(?2, base_url), account_id = COALESCE(?3, account_id), \
                     inbox_id = COALESCE(?4, inbox_id), api_token = COALESCE(?5, api_token), \
                     webhook_secret = CASE WHEN ?6 THEN ?7 ELSE webhook_secret END, \
                     enabled = COALESCE(?8, enabled), updated_at = ?9 \
                     WHERE id = ?10 AND tenant_id = ?11 AND deleted_at IS NULL RETURNING {INTEGRATION_COLUMNS}"
                );
                let params = params![
                    change.instance_id.as_ref().map(|i| i.as_str()),
                    change.base_url,
                    account_id,
                    inbox_id,
                    change.api_token,
                    set_secret,
                    secret,
                    change.enabled,
                    now.as_millis(),
                    id,
                    tenant
                ];
                one(conn, &sql, params, integration_row)
            }))
            .await
    }

    async fn delete_integration(
        &self,
        tenant: &TenantId,
        id: &IntegrationId,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        self.writer
            .write(Box::new(move |conn| {
                let n = exec(
                    conn,
                    "UPDATE chatwoot_integrations SET deleted_at = ?1, updated_at = ?1 \
                     WHERE id = ?2 AND tenant_id = ?3 AND deleted_at IS NULL",
                    params![now.as_millis(), id, tenant],
                )?;
                Ok(n > 0)
            }))
            .await
    }

    async fn enqueue_chatwoot_job(&self, job: NewChatwootJob) -> Result<bool, StoreError> {
        self.writer
            .write(Box::new(move |conn| {
                let n = exec(
                    conn,
                    "INSERT INTO chatwoot_jobs (integration_id, chatwoot_message_id, tenant_id, payload, \
                     next_attempt_at, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?5) \
                     ON CONFLICT DO NOTHING",
                    params![
                        job.integration_id.as_str(),
                        job.chatwoot_message_id,
                        job.tenant_id.as_str(),
                        job.payload.to_string(),
                        job.now.as_millis()
                    ],
                )?;
                Ok(n > 0)
            }))
            .await
    }

    async fn claim_chatwoot_jobs(
        &self,
        now: Timestamp,
        limit: u32,
        lease_ms: i64,
    ) -> Result<Vec<ChatwootJob>, StoreError> {
        // Workers poll: look on a read connection first, so an idle poll
        // costs the one writer thread nothing.
        let due = self
            .read(move |c| {
                let sql = "SELECT 1 FROM chatwoot_jobs WHERE status = 'pending' AND next_attempt_at <= ? LIMIT 1";
                one(c, sql, [now.as_millis()], |_| Ok(()))
            })
            .await?;
        if due.is_none() {
            return Ok(Vec::new());
        }
        let mut jobs = self
            .writer
            .write(Box::new(move |conn| {
                let sql = format!(
                    "UPDATE chatwoot_jobs SET next_attempt_at = ?1 \
                     WHERE (integration_id, chatwoot_message_id) IN ( \
                       SELECT integration_id, chatwoot_message_id FROM chatwoot_jobs \
                       WHERE status = 'pending' AND next_attempt_at <= ?2 ORDER BY next_attempt_at LIMIT ?3) \
                     RETURNING {CHATWOOT_JOB_COLUMNS}"
                );
                all(conn, &sql, params![now.plus_millis(lease_ms).as_millis(), now.as_millis(), limit], job_row)
            }))
            .await?;
        // RETURNING has no order; hand them out in arrival order.
        jobs.sort_by_key(|j| j.created_at);
        Ok(jobs)
    }

    /// Only a pending job changes: a worker whose lease ran out and whose job
    /// another one finished meanwhile leaves that outcome alone.
    async fn finish_chatwoot_job(
        &self,
        integration: &IntegrationId,
        chatwoot_message_id: &str,
        outcome: ChatwootJobOutcome,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let key = (integration.to_string(), chatwoot_message_id.to_owned());
        self.writer
            .write(Box::new(move |conn| {
                let (integration, cw_id) = key;
                let now = now.as_millis();
                match outcome {
                    ChatwootJobOutcome::Done { message_id } => exec(
                        conn,
                        "UPDATE chatwoot_jobs SET status = 'done', message_id = ?1, next_attempt_at = NULL, \
                         error = NULL, updated_at = ?2 \
                         WHERE integration_id = ?3 AND chatwoot_message_id = ?4 AND status = 'pending'",
                        params![message_id.as_str(), now, integration, cw_id],
                    )?,
                    ChatwootJobOutcome::Retry { at, error } => exec(
                        conn,
                        "UPDATE chatwoot_jobs SET attempts = attempts + 1, next_attempt_at = ?1, error = ?2, \
                         updated_at = ?3 \
                         WHERE integration_id = ?4 AND chatwoot_message_id = ?5 AND status = 'pending'",
                        params![at.as_millis(), error, now, integration, cw_id],
                    )?,
                    ChatwootJobOutcome::Failed { error } => exec(
                        conn,
                        "UPDATE chatwoot_jobs SET status = 'failed', attempts = attempts + 1, \
                         next_attempt_at = NULL, error = ?1, updated_at = ?2 \
                         WHERE integration_id = ?3 AND chatwoot_message_id = ?4 AND status = 'pending'",
                        params![error, now, integration, cw_id],
                    )?,
                };
                Ok(())
            }))
            .await
    }

    async fn get_chatwoot_job(
        &self,
        integration: &IntegrationId,
        chatwoot_message_id: &str,
    ) -> Result<Option<ChatwootJob>, StoreError> {
        let key = [integration.to_string(), chatwoot_message_id.to_owned()];
        let sql = format!(
            "SELECT {CHATWOOT_JOB_COLUMNS} FROM chatwoot_jobs WHERE integration_id = ? AND chatwoot_message_id = ?"
        );
        self.read(move |c| one(c, &sql, key, job_row)).await
    }

    async fn chatwoot_job_of_message(&self, message: &MessageId) -> Result<Option<ChatwootJob>, StoreError> {
        let message = message.to_string();
        let sql = format!("SELECT {CHATWOOT_JOB_COLUMNS} FROM chatwoot_jobs WHERE message_id = ? LIMIT 1");
        self.read(move |c| one(c, &sql, [message], job_row)).await
    }

    async fn purge_chatwoot_jobs(&self, before: Timestamp, limit: u32) -> Result<u64, StoreError> {
        self.writer
            .write(Box::new(move |conn| {
                let n = exec(
                    conn,
                    "DELETE FROM chatwoot_jobs WHERE (integration_id, chatwoot_message_id) IN ( \
                       SELECT integration_id, chatwoot_message_id FROM chatwoot_jobs \
                       WHERE status <> 'pending' AND updated_at < ? LIMIT ?)",
                    params![before.as_millis(), limit],
                )?;
                Ok(n as u64)
            }))
            .await
    }

    async fn chatwoot_contact(
        &self,
        integration: &IntegrationId,
        chat: &str,
    ) -> Result<Option<ChatwootContact>, StoreError> {
        let key = [integration.to_string(), chat.to_owned()];
        let sql =
            format!("SELECT {CHATWOOT_CONTACT_COLUMNS} FROM chatwoot_contacts WHERE integration_id = ? AND chat = ?");
        self.read(move |c| one(c, &sql, key, contact_row)).await
    }

    async fn save_chatwoot_contact(
        &self,
        integration: &IntegrationId,
        contact: ChatwootContact,
    ) -> Result<(), StoreError> {
        let integration = integration.to_string();
        let contact_id = signed("contact_id", contact.contact_id)?;
        let conversation_id = signed("conversation_id", contact.conversation_id)?;
        self.writer
            .write(Box::new(move |conn| {
                exec(
                    conn,
                    "INSERT INTO chatwoot_contacts (integration_id, chat, contact_id, source_id, conversation_id, \
                     updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                     ON CONFLICT (integration_id, chat) DO UPDATE SET contact_id = excluded.contact_id, \
                     source_id = excluded.source_id, conversation_id = excluded.conversation_id, \
                     updated_at = excluded.updated_at",
                    params![
                        integration,
                        contact.chat,
                        contact_id,
                        contact.source_id,
                        conversation_id,
                        Timestamp::now().as_millis()
                    ],
                )?;
                Ok(())
            }))
            .await
    }

    async fn forget_chatwoot_contacts(&self, integration: &IntegrationId) -> Result<u64, StoreError> {
        let integration = integration.to_string();
        self.writer
            .write(Box::new(move |conn| {
                let n = exec(conn, "DELETE FROM chatwoot_contacts WHERE integration_id = ?", [integration])?;
                Ok(n as u64)
            }))
            .await
    }
}
