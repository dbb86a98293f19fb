-- Tenant webhook subscriptions and the deliveries owed to them.

CREATE TABLE webhook_endpoints (
    id                     TEXT PRIMARY KEY,
    tenant_id              TEXT NOT NULL REFERENCES tenants(id),
    url                    TEXT NOT NULL,
    description            TEXT NOT NULL DEFAULT '',
    event_types            TEXT NOT NULL DEFAULT '[]',  -- JSON array; empty = every type
    include_internal       INTEGER NOT NULL DEFAULT 0,  -- also queued/sending/retry_wait/scheduled
    headers                TEXT NOT NULL DEFAULT '{}',  -- JSON object sent with every delivery
    secret                 TEXT NOT NULL,
    previous_secret        TEXT,                        -- still signs until previous_secret_until
    previous_secret_until  INTEGER,
    enabled                INTEGER NOT NULL DEFAULT 1,
    from_event_seq         INTEGER NOT NULL,            -- receives events after this one only
    created_at             INTEGER NOT NULL,
    updated_at             INTEGER NOT NULL,
    deleted_at             INTEGER
);
CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints(tenant_id, id);

-- One row per (event, endpoint): the event id is the `webhook-id` of every
-- attempt and replay, so receivers can dedupe.
CREATE TABLE webhook_deliveries (
    id                TEXT PRIMARY KEY,
    tenant_id         TEXT NOT NULL,
    endpoint_id       TEXT NOT NULL,
    event_id          TEXT NOT NULL,
    status            TEXT NOT NULL,       -- pending | succeeded | dead
    attempts          INTEGER NOT NULL DEFAULT 0,
    schedule_base     INTEGER NOT NULL DEFAULT 0,  -- attempts made before the last replay
    next_attempt_at   INTEGER,             -- due time while pending (lease end while in flight);
                                           -- NULL while its endpoint is disabled
    last_status_code  INTEGER,
    last_error        TEXT,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries(endpoint_id, id);

-- Every attempt, visible through the API.
CREATE TABLE webhook_attempts (
    delivery_id  TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    at           INTEGER NOT NULL,
    status_code  INTEGER,
    error        TEXT,
    duration_ms  INTEGER NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
) WITHOUT ROWID;

-- Positions of readers that walk the events table (safe by seq here: one
-- writer commits in seq order).
CREATE TABLE cursors (
    name      TEXT PRIMARY KEY,
    position  INTEGER NOT NULL
) WITHOUT ROWID;
