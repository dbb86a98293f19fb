-- Kept in step with migrations/sqlite/0006_providers.sql: provider servers
-- shared by many instances, which new instances are placed on.
CREATE TABLE providers (
    id          TEXT COLLATE "C" PRIMARY KEY,
    kind        TEXT NOT NULL,
    name        TEXT NOT NULL,
    settings    TEXT NOT NULL,
    capacity    BIGINT NOT NULL,
    enabled     BOOLEAN NOT NULL,
    created_at  BIGINT NOT NULL,
    deleted_at  BIGINT
);
CREATE INDEX providers_kind ON providers(kind) WHERE deleted_at IS NULL;
ALTER TABLE instances ADD COLUMN provider_id TEXT COLLATE "C";
CREATE INDEX instances_provider ON instances(provider_id) WHERE deleted_at IS NULL;
