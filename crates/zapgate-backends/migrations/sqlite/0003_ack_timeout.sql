-- When a message still `sent` after ZAPGATE_ACK_TIMEOUT raised message.ack_timeout.
ALTER TABLE messages ADD COLUMN ack_timeout_at INTEGER;
CREATE INDEX messages_awaiting_ack ON messages(updated_at) WHERE status = 'sent' AND ack_timeout_at IS NULL;
