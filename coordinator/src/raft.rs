//! Raft (raft-rs) over the sled facade.
//!
//! # Layout
//! - [`node`]: the ready loop ([`RaftNode`], [`RaftHandle`], [`RaftStatus`]).
//! - [`storage`]: the log store (entries, hard state, snapshots, compaction).
//! - [`transport`]: the [`Transport`] seam, the gRPC transport and fault injection.
//! - [`logger`]: raft-rs's slog records into `tracing`.

// raft-rs's generated message types are built field by field, as in raft-rs itself.
#![allow(clippy::field_reassign_with_default)]

pub mod logger;
pub mod node;
pub mod storage;
pub mod transport;

pub use node::{
    Bootstrap, Input, MembershipChange, RaftConfig, RaftError, RaftHandle, RaftNode, RaftStatus, StartError,
};
pub use transport::{FaultState, Faults, GrpcTransport, Transport};
