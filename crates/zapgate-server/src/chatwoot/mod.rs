//! Chatwoot, connected as an API-channel inbox with an account webhook (the
//! way seed 003 does): what its webhooks mean ([`webhook`]). The routes are
//! `http/chatwoot.rs` (settings) and `http/chatwoot_ingest.rs` (the webhook);
//! the jobs they store are run by `worker/chatwoot.rs`.

pub mod api;
pub mod forward;
pub mod webhook;

/// `source_id` of the Chatwoot messages zapgate creates itself: their
/// webhooks come back and must not be sent to WhatsApp again.
pub const OWN_SOURCE_PREFIX: &str = "zapgate:";
