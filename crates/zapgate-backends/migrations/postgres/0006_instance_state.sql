-- An instance's connection state as its provider's webhooks report it
-- (zapgate_domain::instance_state): NULL until the first report.
-- `state_changes` holds the times (ms, JSON array) of its changes within the
-- flap window. Events about an instance (`instance.status`) store '' as
-- their message_id and status, and 0 as chat_seq.
ALTER TABLE instances ADD COLUMN state TEXT;
ALTER TABLE instances ADD COLUMN state_reason TEXT;
ALTER TABLE instances ADD COLUMN state_changed_at BIGINT;
ALTER TABLE instances ADD COLUMN state_changes TEXT NOT NULL DEFAULT '[]';
