//! Cassette's test and benchmark tooling.
//!
//! # Layout
//! - [`emulator`]: the Cassandra emulator (state, files, node operations, nodetool/cqlsh/admin
//!   front ends); the `cassandra-emulator` binary is its command line.
//! - [`harness`]: emulated clusters in temporary directories with wrapper scripts, and the
//!   [`cassette_agent::cassandra::CassandraConfig`] that points the agent's adapter at a node.
//! - [`fixtures`]: locating the real Cassandra files in `shared/fixtures`.

pub mod emulator;
pub mod fixtures;
pub mod harness;
