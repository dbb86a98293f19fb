-- Provider servers shared by many instances (WAHA, Evolution API, UAZAPI):
-- pools new instances are placed on. `settings` (base URL, credentials) is
-- never returned by the API; placed instances carry a copy of it in their
-- provider_config, rewritten when the pool's settings change.
CREATE TABLE providers (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    name        TEXT NOT NULL,
    settings    TEXT NOT NULL,
    capacity    INTEGER NOT NULL,
    enabled     INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    deleted_at  INTEGER
);
CREATE INDEX providers_kind ON providers(kind) WHERE deleted_at IS NULL;
ALTER TABLE instances ADD COLUMN provider_id TEXT;
CREATE INDEX instances_provider ON instances(provider_id) WHERE deleted_at IS NULL;
