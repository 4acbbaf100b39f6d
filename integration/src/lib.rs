//! Cassette's test and benchmark harness: real storage servers, a fault-injecting proxy, helper
//! processes that die with the test, and test data.
//!
//! # Layout
//! - [`tools`]: where external programs are and what to do when one is missing.
//! - [`process`]: child processes stopped by pid.
//! - [`servers`]: s3s-fs, moto, Azurite and directory storage on free ports.
//! - [`proxy`]: drops or corrupts connections on demand.
//! - [`data`]: random test files.
//! - [`conformance`]: the storage scenario every backend must pass.

#![deny(unsafe_code)]

pub mod conformance;
pub mod data;
pub mod process;
pub mod proxy;
pub mod servers;
pub mod tools;

/// Logs to stderr for tests (`RUST_LOG` controls the level; default `warn`). Safe to call often.
pub fn init_test_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}
