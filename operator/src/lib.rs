//! The SyncStore operator: reconciles `SyncStore` and `ApiKey` resources
//! into Deployments, Services, Secrets, a migrated database schema and key
//! rows. The binary (`main.rs`) adds leader election and the HTTP server.

pub mod apikey;
pub mod apply;
pub mod children;
pub mod conditions;
pub mod context;
pub mod controller;
pub mod database;
pub mod error;
pub mod events;
pub mod finalizing;
pub mod health;
pub mod keyrows;
pub mod metrics;
pub mod monitoring;
pub mod recorder;
pub mod server;
pub mod serving;
pub mod store;
pub mod trace;
pub mod validate;
