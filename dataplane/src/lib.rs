//! syncstore's data plane: a versioned key/value sync service with a REST
//! API and a Socket.IO `/sync` namespace, on SQLite (embedded), PostgreSQL
//! or MySQL/MariaDB.
//!
//! The binary (`main.rs`, the CLI) is a thin client of this library so
//! that the integration tests can reach the same pieces.
//!
//! # Layers
//!
//! Modules are layered, and a module uses only its own layer and those
//! below it; nothing imports an edge. `tests/architecture.rs` reads every
//! `crate::` path of the sources and fails on an upward reference or an
//! import cycle, with this order declared once in its `LAYERS`:
//!
//! | layer | modules | what it holds |
//! |---|---|---|
//! | domain | [`domain`], [`instant`], [`text`] | items, changes, strategies and outcomes, secrets; time and text rules. Imports nothing else of the crate. |
//! | errors | [`error`] | [`error::ApiError`]: stable `code()`, `details()`, the seed's status. No framework. |
//! | pure decisions | [`conflict`], [`access`] | how a concurrent write is settled; API key records, restrictions, the client address behind trusted proxies, the key-management policy. No I/O. |
//! | storage | [`storage`], [`redis_conn`] | SQL on the three engines, each table's queries and row types; its own [`storage::DatabaseConfig`]. Connections to Redis, one server or a Cluster. |
//! | buses and records | [`metrics`], [`telemetry`], [`audit`], [`fanout`], [`analytics`], [`presence`] | Prometheus figures, logging and OTLP traces (the W3C context the buses carry), the audit trail (its queue and its reader, [`audit::Auditor::entries`]), fan-out between pods, analytics events and the reports read from them ([`analytics::report`]), who is online. |
//! | services | [`sync`], [`keys`], [`auth`] | the write path and its queries (with the pure [`sync::plan`]), conflict review ([`sync::review`]) and each device's delivery state ([`sync::devices`]); key management for REST, the CLI and the operator; authentication and limits. Each owns its settings type. Edges reach the database only through these (and the audit trail's reader). |
//! | configuration | [`config`] | environment variables parsed once into [`config::Config`], made of the settings types above. |
//! | shared state | [`state`] | [`state::AppState`]: the configuration and services the edges share. |
//! | edges | [`http`], [`socket`] | REST (axum) and Socket.IO (socketioxide); each maps `ApiError` to its wire form in one place. |
//! | wiring | [`server`], [`app`] | the listener and its timeouts; building the state and running it. |

pub mod access;
pub mod analytics;
pub mod app;
pub mod audit;
pub mod auth;
pub mod config;
pub mod conflict;
pub mod domain;
pub mod error;
pub mod fanout;
pub mod http;
pub mod instant;
pub mod keys;
pub mod metrics;
pub mod presence;
pub mod redis_conn;
pub mod server;
pub mod socket;
pub mod state;
pub mod storage;
pub mod sync;
pub mod telemetry;
pub mod text;
