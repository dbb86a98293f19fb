-- zapgate embedded schema. Times are Unix milliseconds (INTEGER).

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE api_tokens (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    hash        BLOB NOT NULL UNIQUE,      -- SHA-256 of the secret; the secret is never stored
    hint        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE INDEX api_tokens_tenant ON api_tokens(tenant_id);

CREATE TABLE instances (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants(id),
    name             TEXT NOT NULL,
    provider         TEXT NOT NULL,
    phone_number_id  TEXT NOT NULL UNIQUE,
    waba_id          TEXT NOT NULL,
    rate_per_sec     INTEGER NOT NULL,
    burst            INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    deleted_at       INTEGER
);
CREATE INDEX instances_tenant ON instances(tenant_id, id);

CREATE TABLE messages (
    seq                  INTEGER PRIMARY KEY AUTOINCREMENT,   -- acceptance order
    id                   TEXT NOT NULL UNIQUE,
    tenant_id            TEXT NOT NULL,
    instance_id          TEXT NOT NULL,
    recipient            TEXT NOT NULL,                       -- ChatId key
    wa_id                TEXT,
    content              TEXT NOT NULL,                       -- JSON, Cloud API shape
    priority             INTEGER NOT NULL,
    status               TEXT NOT NULL,
    status_rank          INTEGER NOT NULL DEFAULT 0,
    attempts             INTEGER NOT NULL DEFAULT 0,
    chat_seq             INTEGER NOT NULL,
    provider_message_id  TEXT,
    error_code           TEXT,
    error_message        TEXT,
    send_at              INTEGER,
    expires_at           INTEGER,
    next_attempt_at      INTEGER,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL
);
CREATE INDEX messages_tenant ON messages(tenant_id, id);
CREATE INDEX messages_tenant_status ON messages(tenant_id, status, id);
CREATE INDEX messages_instance_status ON messages(instance_id, status);
CREATE INDEX messages_pending ON messages(status) WHERE status IN ('scheduled','queued','sending','retry_wait');
CREATE INDEX messages_provider_id ON messages(provider_message_id) WHERE provider_message_id IS NOT NULL;

-- Per-chat sequence numbers, so events let receivers restore order.
CREATE TABLE chats (
    instance_id  TEXT NOT NULL,
    chat         TEXT NOT NULL,
    last_seq     INTEGER NOT NULL,
    PRIMARY KEY (instance_id, chat)
) WITHOUT ROWID;

-- Canonical events: one per state change, same transaction as the change.
CREATE TABLE events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,
    tenant_id    TEXT NOT NULL,
    message_id   TEXT NOT NULL,
    instance_id  TEXT NOT NULL,
    type         TEXT NOT NULL,
    status       TEXT NOT NULL,
    chat_seq     INTEGER NOT NULL,
    detail       TEXT NOT NULL,      -- JSON StatusDetail
    created_at   INTEGER NOT NULL
);
CREATE INDEX events_message ON events(message_id, seq);

-- The embedded queue (and outbox): one row per message the gateway still
-- has work for. Only a chat's head row (lowest seq) is ever claimable, and
-- only once due: `ready` = head AND due AND not leased, so claims read one
-- index range and never step over rows that wait (scheduled, retrying,
-- leased). A claim leases a row by moving `visible_at` to the lease's end.
CREATE TABLE queue_entries (
    message_id   TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL,
    instance_id  TEXT NOT NULL,
    chat         TEXT NOT NULL,
    priority     INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    attempt      INTEGER NOT NULL,
    visible_at   INTEGER NOT NULL,   -- due time; while leased, when the lease runs out
    is_head      INTEGER NOT NULL,
    ready        INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX queue_ready ON queue_entries(instance_id, ready, priority, seq);
CREATE INDEX queue_chat ON queue_entries(instance_id, chat, seq);
-- Heads that wait for their time (or lease) to come: what promotion scans.
CREATE INDEX queue_waiting ON queue_entries(visible_at) WHERE is_head = 1 AND ready = 0;

CREATE TABLE idempotency_keys (
    tenant_id    TEXT NOT NULL,
    key          TEXT NOT NULL,
    fingerprint  BLOB NOT NULL,
    message_id   TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_keys_created ON idempotency_keys(created_at);

-- Provider status reports that arrived before the send result was stored.
CREATE TABLE parked_statuses (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    provider_message_id  TEXT NOT NULL,
    status               TEXT NOT NULL,
    at                   INTEGER NOT NULL,
    error_code           TEXT,
    error_message        TEXT,
    received_at          INTEGER NOT NULL
);
CREATE INDEX parked_statuses_pid ON parked_statuses(provider_message_id);
