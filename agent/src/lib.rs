//! The Cassette agent: runs on every Cassandra host.
//!
//! # Layout
//! - [`cassandra`]: control of the local Cassandra node over nodetool and cqlsh.
//! - [`storage`]: the storage engine (content-addressed, verified transfers).
//! - [`hashcache`]: the persistent per-file SHA-256 cache.
//! - [`ops`]: backup, restore, commit logs, list, verify and removal, as phase functions.
//! - [`config`]: the agent's configuration: file, `CASSETTE_*` environment, flags.
//! - [`jobs`]: phases pushed by the coordinator, run as durable jobs with idempotent ids.
//! - [`server`]: the gRPC service of `cassette-agent serve`.

#![forbid(unsafe_code)]

pub mod cassandra;
pub mod config;
pub mod hashcache;
pub mod jobs;
pub mod ops;
pub mod server;
pub mod storage;

/// Installs the process-wide rustls crypto provider (aws-lc-rs). Call first thing in `main`;
/// calling it again is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
