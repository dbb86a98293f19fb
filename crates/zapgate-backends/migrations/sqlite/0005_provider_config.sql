-- Provider-specific settings of an instance (e.g. Cloud API credentials).
-- Never returned by the API.
ALTER TABLE instances ADD COLUMN provider_config TEXT NOT NULL DEFAULT '{}';
