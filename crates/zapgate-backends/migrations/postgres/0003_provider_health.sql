-- Kept in step with migrations/sqlite/0007_provider_health.sql.
ALTER TABLE providers ADD COLUMN healthy BOOLEAN NOT NULL DEFAULT TRUE;
ALTER TABLE providers ADD COLUMN health_error TEXT;
ALTER TABLE providers ADD COLUMN health_checked_at BIGINT;
ALTER TABLE providers ADD COLUMN unhealthy_since BIGINT;
