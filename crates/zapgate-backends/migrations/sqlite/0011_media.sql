-- Media zapgate holds: attachments of inbound messages, fetched from the
-- provider right after receipt (provider media URLs expire within minutes),
-- and tenants' uploads. The bytes live in the media store (a directory, or
-- S3) under the media id; this row says whose they are and what they are.
CREATE TABLE media (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL,
    instance_id      TEXT,
    message_id       TEXT,             -- the inbound message it came with
    status           TEXT NOT NULL,    -- pending | stored | failed
    recipe           TEXT,             -- how to fetch it (a MediaFetch, JSON) while pending
    mime_type        TEXT,
    filename         TEXT,
    size             INTEGER,
    sha256           TEXT,             -- hex, of the stored bytes
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER,          -- due (or leased until) while pending
    error            TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX media_due ON media(next_attempt_at) WHERE status = 'pending';
CREATE INDEX media_age ON media(created_at);
