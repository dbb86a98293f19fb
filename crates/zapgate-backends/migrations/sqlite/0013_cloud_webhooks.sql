-- Webhook endpoints that take events in the WhatsApp Cloud API's shape
-- (`format = 'cloud_api'`), signed with X-Hub-Signature-256 under their
-- `app_secret`; and the number an instance is (the Cloud webhooks'
-- `metadata.display_phone_number`, how Chatwoot finds its inbox).
ALTER TABLE webhook_endpoints ADD COLUMN format TEXT NOT NULL DEFAULT 'standard';
ALTER TABLE webhook_endpoints ADD COLUMN app_secret TEXT;
ALTER TABLE instances ADD COLUMN phone_number TEXT;
