-- zapgate PostgreSQL schema (distributed mode). Kept in step with
-- migrations/sqlite/0001..0005: same tables and columns, Postgres types.
-- Times are Unix milliseconds (BIGINT), as in SQLite, so both stores share
-- one row mapping. JSON columns stay TEXT: they are written and read whole.
-- Ids sort bytewise (COLLATE "C"): listings page on them as in SQLite.

CREATE TABLE tenants (
    id          TEXT COLLATE "C" PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE api_tokens (
    id          TEXT COLLATE "C" PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    hash        BYTEA NOT NULL UNIQUE,     -- SHA-256 of the secret; the secret is never stored
    hint        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX api_tokens_tenant ON api_tokens(tenant_id);

CREATE TABLE instances (
    id               TEXT COLLATE "C" PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants(id),
    name             TEXT NOT NULL,
    provider         TEXT NOT NULL,
    phone_number_id  TEXT NOT NULL UNIQUE,
    waba_id          TEXT NOT NULL,
    rate_per_sec     BIGINT NOT NULL,
    burst            BIGINT NOT NULL,
    provider_config  TEXT NOT NULL DEFAULT '{}',
    created_at       BIGINT NOT NULL,
    deleted_at       BIGINT
);
CREATE INDEX instances_tenant ON instances(tenant_id, id);

CREATE TABLE messages (
    seq                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                   TEXT COLLATE "C" NOT NULL UNIQUE,
    tenant_id            TEXT NOT NULL,
    instance_id          TEXT NOT NULL,
    recipient            TEXT NOT NULL,
    wa_id                TEXT,
    content              TEXT NOT NULL,
    priority             BIGINT NOT NULL,
    status               TEXT NOT NULL,
    status_rank          BIGINT NOT NULL DEFAULT 0,
    attempts             BIGINT NOT NULL DEFAULT 0,
    chat_seq             BIGINT NOT NULL,
    provider_message_id  TEXT,
    error_code           TEXT,
    error_message        TEXT,
    send_at              BIGINT,
    expires_at           BIGINT,
    next_attempt_at      BIGINT,
    ack_timeout_at       BIGINT,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL
);
CREATE INDEX messages_tenant ON messages(tenant_id, id);
CREATE INDEX messages_tenant_status ON messages(tenant_id, status, id);
CREATE INDEX messages_instance_status ON messages(instance_id, status);
CREATE INDEX messages_pending ON messages(status) WHERE status IN ('scheduled','queued','sending','retry_wait');
CREATE INDEX messages_provider_id ON messages(provider_message_id) WHERE provider_message_id IS NOT NULL;
CREATE INDEX messages_awaiting_ack ON messages(updated_at) WHERE status = 'sent' AND ack_timeout_at IS NULL;

CREATE TABLE chats (
    instance_id  TEXT NOT NULL,
    chat         TEXT NOT NULL,
    last_seq     BIGINT NOT NULL,
    PRIMARY KEY (instance_id, chat)
);

CREATE TABLE events (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id           TEXT COLLATE "C" NOT NULL UNIQUE,
    tenant_id    TEXT NOT NULL,
    message_id   TEXT NOT NULL,
    instance_id  TEXT NOT NULL,
    type         TEXT NOT NULL,
    status       TEXT NOT NULL,
    chat_seq     BIGINT NOT NULL,
    detail       TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);
CREATE INDEX events_message ON events(message_id, seq);

-- Events not yet fanned out to webhook endpoints. Postgres commits out of
-- sequence order, so a cursor over events.seq would skip late commits; this
-- table is inserted in the event's transaction and drained with SKIP LOCKED.
CREATE TABLE events_unfanned (
    event_seq  BIGINT PRIMARY KEY
);

-- The queue (and outbox) in Postgres: same is_head / ready / visible_at
-- scheme as SQLite. `lease_owner` names the process holding a lease; each
-- process holds a session advisory lock on its owner id, so a dead owner's
-- leases are recognised (the lock is free) and returned at once.
CREATE TABLE queue_entries (
    message_id   TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL,
    instance_id  TEXT NOT NULL,
    chat         TEXT NOT NULL,
    priority     BIGINT NOT NULL,
    seq          BIGINT NOT NULL,
    attempt      BIGINT NOT NULL,
    visible_at   BIGINT NOT NULL,
    is_head      BOOLEAN NOT NULL,
    ready        BOOLEAN NOT NULL,
    lease_owner  BIGINT
);
CREATE INDEX queue_ready ON queue_entries(instance_id, priority, seq) WHERE ready;
CREATE INDEX queue_chat ON queue_entries(instance_id, chat, seq);
CREATE INDEX queue_waiting ON queue_entries(visible_at) WHERE is_head AND NOT ready;
CREATE INDEX queue_leased ON queue_entries(lease_owner) WHERE lease_owner IS NOT NULL;

CREATE TABLE idempotency_keys (
    tenant_id    TEXT NOT NULL,
    key          TEXT NOT NULL,
    fingerprint  BYTEA NOT NULL,
    message_id   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys(created_at);

CREATE TABLE parked_statuses (
    id                   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider_message_id  TEXT NOT NULL,
    status               TEXT NOT NULL,
    at                   BIGINT NOT NULL,
    error_code           TEXT,
    error_message        TEXT,
    received_at          BIGINT NOT NULL
);
CREATE INDEX parked_statuses_pid ON parked_statuses(provider_message_id);

CREATE TABLE webhook_endpoints (
    id                     TEXT COLLATE "C" PRIMARY KEY,
    tenant_id              TEXT NOT NULL REFERENCES tenants(id),
    url                    TEXT NOT NULL,
    description            TEXT NOT NULL DEFAULT '',
    event_types            TEXT NOT NULL DEFAULT '[]',
    include_internal       BOOLEAN NOT NULL DEFAULT FALSE,
    headers                TEXT NOT NULL DEFAULT '{}',
    secret                 TEXT NOT NULL,
    previous_secret        TEXT,
    previous_secret_until  BIGINT,
    enabled                BOOLEAN NOT NULL DEFAULT TRUE,
    from_event_seq         BIGINT NOT NULL,
    created_at             BIGINT NOT NULL,
    updated_at             BIGINT NOT NULL,
    deleted_at             BIGINT
);
CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints(tenant_id, id);

CREATE TABLE webhook_deliveries (
    id                TEXT COLLATE "C" PRIMARY KEY,
    tenant_id         TEXT NOT NULL,
    endpoint_id       TEXT NOT NULL,
    event_id          TEXT NOT NULL,
    status            TEXT NOT NULL,
    attempts          BIGINT NOT NULL DEFAULT 0,
    schedule_base     BIGINT NOT NULL DEFAULT 0,
    next_attempt_at   BIGINT,
    last_status_code  BIGINT,
    last_error        TEXT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries(endpoint_id, id);

CREATE TABLE webhook_attempts (
    delivery_id  TEXT NOT NULL,
    attempt      BIGINT NOT NULL,
    at           BIGINT NOT NULL,
    status_code  BIGINT,
    error        TEXT,
    duration_ms  BIGINT NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);

CREATE TABLE templates (
    id          TEXT COLLATE "C" PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    name        TEXT NOT NULL,
    body        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    deleted_at  BIGINT
);
CREATE UNIQUE INDEX templates_name ON templates(tenant_id, name) WHERE deleted_at IS NULL;
