-- Webhook endpoints filtered by instance (NULL: every instance) and by the
-- status of `message.status` events (a JSON array; '[]': every status).
ALTER TABLE webhook_endpoints ADD COLUMN instance_id TEXT;
ALTER TABLE webhook_endpoints ADD COLUMN statuses TEXT NOT NULL DEFAULT '[]';
