-- What the last health check of a provider server found. A new server is
-- taken as healthy until a check says otherwise.
ALTER TABLE providers ADD COLUMN healthy INTEGER NOT NULL DEFAULT 1;
ALTER TABLE providers ADD COLUMN health_error TEXT;
ALTER TABLE providers ADD COLUMN health_checked_at INTEGER;
ALTER TABLE providers ADD COLUMN unhealthy_since INTEGER;
