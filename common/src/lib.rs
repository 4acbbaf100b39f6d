//! Cassette's shared domain types.
//!
//! Everything here is pure (no I/O beyond hashing a file) and used by both the agent and the
//! coordinator.
//!
//! # Layout
//! - [`ids`]: newtypes for blob hashes, backup ids, host ids.
//! - [`location`]: `s3://`, `azure://`, `gs://`, `file://` storage locations.
//! - [`layout`]: object keys in a repository (documented in `docs/layout.md`).
//! - [`manifest`]: node and cluster manifests, commit-log index entries.
//! - [`phases`]: the phases a coordinator runs on agents: names, parameters, results.
//! - [`sstable`]: SSTable names, ids and versions; `TOC.txt`, `Digest.crc32`, `Statistics.db`.
//! - [`datadir`]: paths in a Cassandra data directory (tables, indexes, backups, snapshots) and what each file is.
//! - [`commitlog`]: commit-log segment names and headers.
//! - [`cql`]: the columns of a `CREATE TABLE` statement, and how two tables differ.
//! - [`hash`]: SHA-256 helpers.
//! - [`units`]: sizes and rates such as `100MiB/s`.
//! - [`tls`]: mutual TLS with roles, certificate reloading, tonic glue.
//! - [`worker`]: the shape of every background loop.
//! - [`redact`]: secrets replaced in text that leaves the process (logs, records, errors).

#![forbid(unsafe_code)]

pub mod commitlog;
pub mod cql;
pub mod datadir;
pub mod hash;
pub mod ids;
pub mod layout;
pub mod location;
pub mod manifest;
pub mod phases;
pub mod redact;
pub mod sstable;
pub mod tls;
pub mod units;
pub mod worker;

/// `cassette <version>` for markers, logs and `--version`.
pub fn build_id(program: &str) -> String {
    format!("{program} {}", env!("CARGO_PKG_VERSION"))
}
