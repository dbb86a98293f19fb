//! The send pipeline after accept: [`dispatcher`] claims due work fairly and
//! hands it to one [`lane`] per instance, which paces and sends it; the
//! result is classified once ([`zapgate_providers::classify`]), turned into
//! a retry time by [`retry`], stored, and only then settled in the queue.
//! [`statuses`] applies provider status reports; [`janitor`] purges.

pub mod dispatcher;
pub mod janitor;
pub mod lane;
pub mod retry;
pub mod signal;
pub mod statuses;

pub use signal::WorkSignal;
