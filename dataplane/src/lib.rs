//! syncstore's data plane: a versioned key/value sync service with a REST
//! API, on SQLite (embedded), PostgreSQL or MySQL/MariaDB.
//!
//! The binary (`main.rs`) is a thin CLI over this library so that the
//! integration tests can reach the same pieces.

pub mod analytics;
pub mod app;
pub mod audit;
pub mod auth;
pub mod config;
pub mod conflict;
pub mod error;
pub mod fanout;
pub mod http;
pub mod instant;
pub mod keys;
pub mod metrics;
pub mod presence;
pub mod server;
pub mod socket;
pub mod storage;
pub mod sync;
pub mod telemetry;
pub mod text;
