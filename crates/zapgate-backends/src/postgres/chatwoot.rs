//! `ChatwootStore` on PostgreSQL: the same tables and behaviour as the
//! SQLite store. Several processes claim jobs at once: a claim locks its rows
//! with `SKIP LOCKED` and leases them by moving `next_attempt_at` past the
//! lease, as media claims do, so no job is handed to two workers while its
//! lease runs, and a crashed worker's jobs come due again when it ends.

use super::PgBackend;
use crate::StoreError;
use crate::chatwoot::*;
use crate::records::{
    CHATWOOT_CONTACT_COLUMNS, CHATWOOT_JOB_COLUMNS, INTEGRATION_COLUMNS, chatwoot_contact, chatwoot_job, integration,
    signed,
};
use async_trait::async_trait;
use sqlx::AssertSqlSafe;
use zapgate_domain::{InstanceId, IntegrationId, MessageId, TenantId, Timestamp};

#[async_trait]
impl ChatwootStore for PgBackend {
    async fn create_integration(&self, new: NewIntegration, now: Timestamp) -> Result<IntegrationRecord, StoreError> {
        let sql = format!(
            "INSERT INTO chatwoot_integrations (id, tenant_id, instance_id, base_url, account_id, inbox_id, \
             api_token, webhook_secret, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) \
             RETURNING {INTEGRATION_COLUMNS}"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(new.id.as_str())
            .bind(new.tenant_id.as_str())
            .bind(new.instance_id.as_str())
            .bind(&new.base_url)
            .bind(signed("account_id", new.account_id)?)
            .bind(signed("inbox_id", new.inbox_id)?)
            .bind(&new.api_token)
            .bind(&new.webhook_secret)
            .bind(now.as_millis())
            .fetch_one(self.pool())
            .await?;
        integration(&row)
    }

    async fn list_integrations(&self, tenant: &TenantId) -> Result<Vec<IntegrationRecord>, StoreError> {
        let sql = format!(
            "SELECT {INTEGRATION_COLUMNS} FROM chatwoot_integrations WHERE tenant_id = $1 AND deleted_at IS NULL \
             ORDER BY id"
        );
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(tenant.as_str()).fetch_all(self.pool()).await?;
        rows.iter().map(integration).collect()
    }

    async fn get_integration(
        &self,
        tenant: &TenantId,
        id: &IntegrationId,
    ) -> Result<Option<IntegrationRecord>, StoreError> {
        let sql = format!(
            "SELECT {INTEGRATION_COLUMNS} FROM chatwoot_integrations \
             WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL"
        );
        let row =
            sqlx::query(AssertSqlSafe(sql)).bind(id.as_str()).bind(tenant.as_str()).fetch_optional(self.pool()).await?;
        row.as_ref().map(integration).transpose()
    }

    async fn integration(&self, id: &IntegrationId) -> Result<Option<IntegrationRecord>, StoreError> {
        let sql =
            format!("SELECT {INTEGRATION_COLUMNS} FROM chatwoot_integrations WHERE id = $1 AND deleted_at IS NULL");
        let row = sqlx::query(AssertSqlSafe(sql)).bind(id.as_str()).fetch_optional(self.pool()).await?;
        row.as_ref().map(integration).transpose()
    }

    async fn integrations_of_instance(&self, instance: &InstanceId) -> Result<Vec<IntegrationRecord>, StoreError> {
        let sql = format!(
            "SELECT {INTEGRATION_COLUMNS} FROM chatwoot_integrations \
             WHERE instance_id = $1 AND enabled AND deleted_at IS NULL ORDER BY id"
        );
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(instance.as_str()).fetch_all(self.pool()).await?;
        rows.iter().map(integration).collect()
    }

    async fn update_integration(
        &self,
        tenant: &TenantId,
        id: &IntegrationId,
        change: IntegrationChange,
        now: Timestamp,
    ) -> Result<Option<IntegrationRecord>, StoreError> {
        let account_id = change.account_id.map(|v| signed("account_id", v)).transpose()?;
        let inbox_id = change.inbox_id.map(|v| signed("inbox_id", v)).transpose()?;
        // COALESCE cannot tell "keep" from "set NULL": the secret takes a flag.
        let (set_secret, secret) = match change.webhook_secret {
            Some(s) => (true, s),
            None => (false, None),
        };
        let sql = format!(
            "UPDATE chatwoot_integrations SET instance_id = COALESCE($1, instance_id), \
             base_url = COALESCE($2, base_url), account_id = COALESCE($3, account_id), \
             inbox_id = COALESCE($4, inbox_id), api_token = COALESCE($5, api_token), \
             webhook_secret = CASE WHEN $6 THEN $7 ELSE webhook_secret END, \
             enabled = COALESCE($8, enabled), updated_at = $9 \
             WHERE id = $10 AND tenant_id = $11 AND deleted_at IS NULL RETURNING {INTEGRATION_COLUMNS}"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(change.instance_id.as_ref().map(|i| i.as_str()))
            .bind(change.base_url)
            .bind(account_id)
            .bind(inbox_id)
            .bind(change.api_token)
            .bind(set_secret)
            .bind(secret)
            .bind(change.enabled)
            .bind(now.as_millis())
            .bind(id.as_str())
            .bind(tenant.as_str())
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(integration).transpose()
    }

    async fn delete_integration(
        &self,
        tenant: &TenantId,
        id: &IntegrationId,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE chatwoot_integrations SET deleted_at = $1, updated_at = $1 \
             WHERE id = $2 AND tenant_id = $3 AND deleted_at IS NULL",
        )
        .bind(now.as_millis())
        .bind(id.as_str())
        .bind(tenant.as_str())
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn enqueue_chatwoot_job(&self, job: NewChatwootJob) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO chatwoot_jobs (integration_id, chatwoot_message_id, tenant_id, payload, next_attempt_at, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5, $5) ON CONFLICT DO NOTHING",
        )
        .bind(job.integration_id.as_str())
        .bind(&job.chatwoot_message_id)
        .bind(job.tenant_id.as_str())
        .bind(job.payload.to_string())
        .bind(job.now.as_millis())
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn claim_chatwoot_jobs(
        &self,
        now: Timestamp,
        limit: u32,
        lease_ms: i64,
    ) -> Result<Vec<ChatwootJob>, StoreError> {
        let sql = format!(
            "UPDATE chatwoot_jobs SET next_attempt_at = $1 WHERE (integration_id, chatwoot_message_id) IN ( \
               SELECT integration_id, chatwoot_message_id FROM chatwoot_jobs \
               WHERE status = 'pending' AND next_attempt_at <= $2 \
               ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING {CHATWOOT_JOB_COLUMNS}"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(now.plus_millis(lease_ms).as_millis())
            .bind(now.as_millis())
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await?;
        let mut jobs = rows.iter().map(chatwoot_job).collect::<Result<Vec<_>, _>>()?;
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
        let q = match outcome {
            ChatwootJobOutcome::Done { message_id } => sqlx::query(
                "UPDATE chatwoot_jobs SET status = 'done', message_id = $1, next_attempt_at = NULL, error = NULL, \
                 updated_at = $2 WHERE integration_id = $3 AND chatwoot_message_id = $4 AND status = 'pending'",
            )
            .bind(message_id.to_string()),
            ChatwootJobOutcome::Retry { at, error } => sqlx::query(
                "UPDATE chatwoot_jobs SET attempts = attempts + 1, next_attempt_at = $1, error = $2, updated_at = $3 \
                 WHERE integration_id = $4 AND chatwoot_message_id = $5 AND status = 'pending'",
            )
            .bind(at.as_millis())
            .bind(error),
            ChatwootJobOutcome::Failed { error } => sqlx::query(
                "UPDATE chatwoot_jobs SET status = 'failed', attempts = attempts + 1, next_attempt_at = NULL, \
                 error = $1, updated_at = $2 \
                 WHERE integration_id = $3 AND chatwoot_message_id = $4 AND status = 'pending'",
            )
            .bind(error),
        };
        q.bind(now.as_millis()).bind(integration.as_str()).bind(chatwoot_message_id).execute(self.pool()).await?;
        Ok(())
    }

    async fn get_chatwoot_job(
        &self,
        integration: &IntegrationId,
        chatwoot_message_id: &str,
    ) -> Result<Option<ChatwootJob>, StoreError> {
        let sql = format!(
            "SELECT {CHATWOOT_JOB_COLUMNS} FROM chatwoot_jobs WHERE integration_id = $1 AND chatwoot_message_id = $2"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(integration.as_str())
            .bind(chatwoot_message_id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(chatwoot_job).transpose()
    }

    async fn chatwoot_job_of_message(&self, message: &MessageId) -> Result<Option<ChatwootJob>, StoreError> {
        let sql = format!("SELECT {CHATWOOT_JOB_COLUMNS} FROM chatwoot_jobs WHERE message_id = $1 LIMIT 1");
        let row = sqlx::query(AssertSqlSafe(sql)).bind(message.as_str()).fetch_optional(self.pool()).await?;
        row.as_ref().map(chatwoot_job).transpose()
    }

    async fn purge_chatwoot_jobs(&self, before: Timestamp, limit: u32) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM chatwoot_jobs WHERE (integration_id, chatwoot_message_id) IN ( \
               SELECT integration_id, chatwoot_message_id FROM chatwoot_jobs \
               WHERE status <> 'pending' AND updated_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
        )
        .bind(before.as_millis())
        .bind(i64::from(limit))
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }

    async fn chatwoot_contact(
        &self,
        integration: &IntegrationId,
        chat: &str,
    ) -> Result<Option<ChatwootContact>, StoreError> {
        let sql =
            format!("SELECT {CHATWOOT_CONTACT_COLUMNS} FROM chatwoot_contacts WHERE integration_id = $1 AND chat = $2");
        let row =
            sqlx::query(AssertSqlSafe(sql)).bind(integration.as_str()).bind(chat).fetch_optional(self.pool()).await?;
        row.as_ref().map(chatwoot_contact).transpose()
    }

    async fn save_chatwoot_contact(
        &self,
        integration: &IntegrationId,
        contact: ChatwootContact,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO chatwoot_contacts (integration_id, chat, contact_id, source_id, conversation_id, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (integration_id, chat) DO UPDATE SET contact_id = excluded.contact_id, \
             source_id = excluded.source_id, conversation_id = excluded.conversation_id, \
             updated_at = excluded.updated_at",
        )
        .bind(integration.as_str())
        .bind(&contact.chat)
        .bind(signed("contact_id", contact.contact_id)?)
        .bind(&contact.source_id)
        .bind(signed("conversation_id", contact.conversation_id)?)
        .bind(Timestamp::now().as_millis())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn forget_chatwoot_contacts(&self, integration: &IntegrationId) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM chatwoot_contacts WHERE integration_id = $1")
            .bind(integration.as_str())
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }
}
