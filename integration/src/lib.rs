//! Cassette's test and benchmark tooling.
//!
//! # Layout
//! - [`emulator`]: the Cassandra emulator (state, files, node operations, nodetool/cqlsh/admin
//!   front ends); the `cassandra-emulator` binary is its command line.
//! - [`harness`]: emulated clusters in temporary directories with wrapper scripts, and the
//!   [`cassette_agent::cassandra::CassandraConfig`] that points the agent's adapter at a node.
//! - [`fidelity`]: the script of adapter commands played on real nodes (recorded) and on the
//!   emulator (compared with the recordings).
//! - [`fixtures`]: locating the real Cassandra files in `shared/fixtures`.
//! - [`tools`]: where external programs are and what to do when one is missing.
//! - [`process`]: child processes stopped by pid, killed with the test.
//! - [`servers`]: s3s-fs, moto, Azurite and directory storage on free ports.
//! - [`proxy`]: drops or corrupts connections on demand.
//! - [`gate`]: an `ObjectStore` decorator that holds chosen requests, to set up races exactly.
//! - [`data`]: random test files.
//! - [`coordinator`]: coordinator replicas as processes, per-run certificates, the `cassette` CLI.
//! - [`lab`]: a whole installation as processes (storage, emulated clusters, agents, coordinators).
//! - [`conformance`]: the storage scenario every backend must pass.
//! - [`node`]: an emulated node, a storage server and the real agent binary, for the single-node tests.
//! - [`real`]: real Cassandra 4.0/4.1/5.0 nodes from `.tools/cassandra` (scripts/install.sh), and
//!   a data set written and read back through a CQL driver.

#![deny(unsafe_code)]

pub mod conformance;
pub mod coordinator;
pub mod data;
pub mod emulator;
pub mod fidelity;
pub mod fixtures;
pub mod gate;
pub mod harness;
pub mod lab;
pub mod node;
pub mod process;
pub mod proxy;
pub mod real;
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
