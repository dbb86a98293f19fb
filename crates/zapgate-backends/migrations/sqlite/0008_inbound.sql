-- Provider webhooks (ingest). One row per event zapgate has taken in, keyed
-- the way the event is identified across the provider's re-sends
-- (`m:<wa id>` for messages, `s:<wa id>:<status>` for statuses), written in
-- the same transaction as what the event changes, so a re-sent event is a
-- duplicate and changes nothing. Purged after ZAPGATE_INGEST_DEDUPE_WINDOW.
CREATE TABLE inbound_keys (
    instance_id  TEXT NOT NULL,
    key          TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (instance_id, key)
) WITHOUT ROWID;
CREATE INDEX inbound_keys_age ON inbound_keys(created_at);

-- Messages that arrived in tenants' chats.
CREATE TABLE inbound_messages (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE,
    tenant_id      TEXT NOT NULL,
    instance_id    TEXT NOT NULL,
    chat           TEXT NOT NULL,
    sender         TEXT,
    sender_name    TEXT,
    wa_message_id  TEXT NOT NULL,
    from_me        INTEGER NOT NULL,
    content        TEXT NOT NULL,      -- JSON, Cloud API shape
    context_id     TEXT,
    chat_seq       INTEGER NOT NULL,
    sent_at        INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    UNIQUE (instance_id, wa_message_id)
);
CREATE INDEX inbound_messages_tenant ON inbound_messages(tenant_id, id);

-- The secret a provider account's webhooks prove themselves with (the
-- `?token=` of Evolution and UAZAPI, WAHA's HMAC key), by account: a
-- provider server (`prv_…`) or an instance with its own settings (`ins_…`).
CREATE TABLE ingest_secrets (
    account     TEXT PRIMARY KEY,
    secret      TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
