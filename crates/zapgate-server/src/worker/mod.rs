//! The send pipeline after accept: [`dispatcher`] claims due work fairly and
//! hands it to one [`lane`] per instance, which paces and sends it; the
//! result is classified once ([`zapgate_providers::classify`]), turned into
//! a retry time by [`retry`], stored, and only then settled in the queue.
//! [`statuses`] applies provider status reports; [`janitor`] purges.

pub mod bulk;
pub mod campaigns;
pub mod chatwoot;
pub mod circuits;
pub mod cloud_shape;
pub mod connections;
pub mod consumer;
pub mod dispatcher;
pub mod health;
pub mod janitor;
pub mod lane;
pub mod media;
pub mod parking;
pub mod retry;
pub mod scheduler;
pub mod signal;
pub mod statuses;
pub mod webhooks;

pub use signal::WorkSignal;

use std::time::Duration;
use zapgate_backends::StoreError;

/// Retries a store write until it succeeds: an outcome must not be dropped
/// because the disk hiccuped. Gives up only when the store is closing, in
/// which case start-up recovery resends the message.
pub async fn persist<T, F, Fut>(mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut wait = Duration::from_millis(50);
    loop {
        match f().await {
            Ok(v) => return Some(v),
            Err(StoreError::Closed) => return None,
            Err(e) => {
                tracing::error!(error = %e, "could not store a send outcome; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}
