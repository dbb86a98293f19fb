-- Campaigns (broadcasts): one template to a list of recipients, released
-- into the queue a little at a time.
CREATE TABLE campaigns (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL,
    name             TEXT NOT NULL,
    instance_id      TEXT NOT NULL,
    template_id      TEXT NOT NULL,
    priority         BIGINT NOT NULL,
    rate_per_second  BIGINT,            -- cap below the instance's rate; NULL = the instance's
    start_at         BIGINT,
    state            TEXT NOT NULL,      -- draft | running | paused | completed | cancelled
    total            BIGINT NOT NULL DEFAULT 0,   -- recipients stored (after dedupe)
    duplicates       BIGINT NOT NULL DEFAULT 0,
    invalid          BIGINT NOT NULL DEFAULT 0,
    next_row         BIGINT NOT NULL DEFAULT 1,   -- the row number the next imported row gets
    cursor           BIGINT NOT NULL DEFAULT 0,   -- the last row released
    released         BIGINT NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_until      BIGINT NOT NULL DEFAULT 0,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT
);
CREATE INDEX campaigns_tenant ON campaigns(tenant_id, id);
-- What releasers claim: running campaigns, and cancelled ones being swept.
CREATE INDEX campaigns_active ON campaigns(state, lease_until) WHERE state IN ('running', 'cancelled');

CREATE TABLE campaign_recipients (
    campaign_id  TEXT NOT NULL,
    row_no       BIGINT NOT NULL,
    recipient    TEXT NOT NULL,   -- ChatId, canonical
    variables    TEXT NOT NULL,   -- JSON object of strings
    PRIMARY KEY (campaign_id, row_no)
);
-- A recipient listed twice is sent once.
CREATE UNIQUE INDEX campaign_recipients_once ON campaign_recipients(campaign_id, recipient);

-- Rows refused at import, with the reason.
CREATE TABLE campaign_rejects (
    campaign_id  TEXT NOT NULL,
    row_no       BIGINT NOT NULL,
    field        TEXT NOT NULL,
    message      TEXT NOT NULL,
    PRIMARY KEY (campaign_id, row_no)
);

ALTER TABLE messages ADD COLUMN campaign_id TEXT;
CREATE INDEX messages_campaign ON messages(campaign_id, status) WHERE campaign_id IS NOT NULL;
