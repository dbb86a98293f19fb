-- Chatwoot integrations: a tenant's Chatwoot inbox speaking through one of
-- its instances. Soft-deleted (`deleted_at`) so its jobs and contacts can
-- still be told apart until purged.
CREATE TABLE chatwoot_integrations (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    instance_id     TEXT NOT NULL,
    base_url        TEXT NOT NULL,
    account_id      BIGINT NOT NULL,
    inbox_id        BIGINT NOT NULL,
    api_token       TEXT NOT NULL,
    webhook_secret  TEXT,
    enabled         BOOLEAN NOT NULL DEFAULT TRUE,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    deleted_at      BIGINT
);
CREATE INDEX chatwoot_integrations_tenant ON chatwoot_integrations(tenant_id);
CREATE INDEX chatwoot_integrations_instance ON chatwoot_integrations(instance_id);

-- Chatwoot messages to send to WhatsApp, one per (integration, Chatwoot
-- message id): the key makes a re-delivered webhook the same job. Finished
-- jobs stay a while so a late re-delivery still finds its key.
CREATE TABLE chatwoot_jobs (
    integration_id       TEXT NOT NULL,
    chatwoot_message_id  TEXT NOT NULL,
    tenant_id            TEXT NOT NULL,
    payload              TEXT NOT NULL,                    -- JSON, as the worker needs it
    status               TEXT NOT NULL DEFAULT 'pending',  -- pending | done | failed
    attempts             BIGINT NOT NULL DEFAULT 0,        -- BIGINT: the shared row mapper reads i64
    next_attempt_at      BIGINT,                           -- due (or leased until) while pending
    message_id           TEXT,                             -- the zapgate message it became
    error                TEXT,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL,
    PRIMARY KEY (integration_id, chatwoot_message_id)
);
CREATE INDEX chatwoot_jobs_due ON chatwoot_jobs(next_attempt_at) WHERE status = 'pending';
CREATE INDEX chatwoot_jobs_message ON chatwoot_jobs(message_id) WHERE message_id IS NOT NULL;
CREATE INDEX chatwoot_jobs_finished ON chatwoot_jobs(updated_at) WHERE status <> 'pending';

-- The Chatwoot contact and conversation each WhatsApp chat of an
-- integration is (`chat` as `ChatId::key`).
CREATE TABLE chatwoot_contacts (
    integration_id   TEXT NOT NULL,
    chat             TEXT NOT NULL,
    contact_id       BIGINT NOT NULL,
    source_id        TEXT NOT NULL,
    conversation_id  BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    PRIMARY KEY (integration_id, chat)
);
