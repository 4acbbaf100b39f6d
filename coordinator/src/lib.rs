//! The Cassette coordinator: the replicated state of every registered cluster (raft over sled),
//! the agents' clients, the operator API, and the `cassette` CLI.
//!
//! One replica with a local state directory needs nothing else; three or five replicas form a
//! raft group that keeps serving when a minority fails. The coordinator orchestrates and never
//! moves bulk data: bytes and bucket credentials stay on the agents.
//!
//! # Layout
//! - [`kv`]: the key-value facade over sled, and versioned values.
//! - [`model`]: the records (clusters, nodes, operations, phases, catalog) and commands.
//! - [`state`]: the state machine.
//! - [`raft`]: the raft loop, log storage, transport.
//! - [`agents`]: the [`agents::AgentClient`] seam and its gRPC implementation.
//! - [`registry`]: registering clusters through their agents, health checks.
//! - [`dispatch`]: a phase's start committed before the agent is called; re-attach by job id.
//! - [`executor`]: cluster operations (backup, restore, verify, delete): plan, persist, drive
//!   with barriers, retries, re-attach after a leader change.
//! - [`service`]: the operator API and raft transport gRPC services.
//! - [`server`]: a replica: configuration and `run(listener, …, shutdown)`.
//! - [`client`]: the operator API client that follows the leader.
//! - [`certs`]: the CA and certificates (`cassette certs`).
//! - [`cli`]: the `cassette` and `cassette-coordinator` command lines.

#![forbid(unsafe_code)]

pub mod agents;
pub mod certs;
pub mod cli;
pub mod client;
pub mod dispatch;
pub mod executor;
pub mod kv;
pub mod model;
pub mod raft;
pub mod registry;
pub mod schedule;
pub mod server;
pub mod service;
pub mod state;

/// Whether retrying a failed request makes sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Retry {
    /// Permanent.
    Never,
    /// At once (possibly elsewhere, e.g. at the leader).
    Now,
    /// After a backoff.
    Backoff,
}
