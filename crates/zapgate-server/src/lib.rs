//! zapgate's edges: configuration ([`config`]), the HTTP API ([`http`]), the
//! send pipeline ([`worker`]) and the wiring of one process ([`app`]).

pub mod admin;
pub mod app;
pub mod chatwoot;
pub mod config;
pub mod csv_rows;
pub mod egress;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod relay;
pub mod worker;

pub use app::{Role, open_backends, run, serve};
pub use config::Config;
