-- Webhook delivery, issue 6's rest: per-endpoint concurrency, response
-- snippets, replaying an endpoint's dead deliveries.

-- Set by a claim, cleared when the attempt is recorded: a pending delivery
-- is in flight while leased and its lease (next_attempt_at) has not run out.
-- A claim takes from an endpoint only while fewer than
-- ZAPGATE_WEBHOOK_ENDPOINT_CONCURRENCY of its deliveries are in flight.
ALTER TABLE webhook_deliveries ADD COLUMN leased INTEGER NOT NULL DEFAULT 0;

-- The first 512 bytes of the receiver's answer (invalid UTF-8 replaced).
ALTER TABLE webhook_attempts ADD COLUMN response TEXT;

-- A claim walks the endpoints with pending deliveries and takes each one's
-- earliest due, up to its room; it counts each one's deliveries in flight.
CREATE INDEX webhook_deliveries_endpoint_due ON webhook_deliveries(endpoint_id, next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_in_flight ON webhook_deliveries(endpoint_id, next_attempt_at)
    WHERE status = 'pending' AND leased = 1;

-- Replaying an endpoint's dead deliveries since a time; counting dead letters.
CREATE INDEX webhook_deliveries_dead ON webhook_deliveries(endpoint_id, created_at) WHERE status = 'dead';
