-- The message a send quotes (a reply), as the send named it: a zapgate id
-- (`msg_…`) or a WhatsApp message id; NULL when it quotes none.
ALTER TABLE messages ADD COLUMN reply_to TEXT;
