//! The records of the replicated state and the commands that change them.
//!
//! Every record is [`Versioned`]; enum values persist as stable lowercase strings. Records hold
//! per-node and per-phase summaries and catalog entries, never per-file lists (the coordinator
//! orchestrates; bytes and their lists stay with the agents and in the repository).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::kv::Versioned;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A registered Cassandra cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// The name operators use (`cassette cluster add <name>`).
    pub name: String,
    /// `cluster_name` as Cassandra reports it.
    pub cassandra_cluster_name: String,
    /// Where each node's agent listens: `{address}` is replaced by the node's address.
    pub agent_pattern: String,
    /// Registration time.
    pub created_at_ms: u64,
}

impl Versioned for ClusterRecord {
    const KIND: &'static str = "cluster";
    const VERSION: u32 = 1;
}

/// Health of a node and its agent, as last observed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHealth {
    /// The agent answered.
    pub agent_reachable: bool,
    /// Cassandra is up (gossip and native transport).
    pub cassandra_up: bool,
    /// Smallest free space among the node's data file systems.
    pub disk_free_bytes: u64,
    /// Total size of that file system.
    pub disk_total_bytes: u64,
    /// What is wrong, if anything.
    pub problem: String,
    /// When observed.
    pub checked_at_ms: u64,
    /// The agent's version.
    pub agent_version: String,
    /// The agent's certificate name (empty when unknown).
    #[serde(default)]
    pub certificate_name: String,
    /// When the agent's certificate expires (ms since the Unix epoch; 0 when unknown).
    #[serde(default)]
    pub certificate_not_after_ms: u64,
}

/// A node of a registered cluster and its agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The cluster (registry name).
    pub cluster: String,
    /// Cassandra host id (the key: nodes are never keyed by address).
    pub host_id: String,
    /// The node's address in the ring.
    pub address: String,
    /// Where its agent listens.
    pub agent_address: String,
    /// Datacenter.
    pub datacenter: String,
    /// Rack.
    pub rack: String,
    /// Tokens owned.
    pub token_count: u32,
    /// Cassandra release.
    pub release_version: String,
    /// Last observed health.
    pub health: NodeHealth,
}

impl Versioned for NodeRecord {
    const KIND: &'static str = "node";
    const VERSION: u32 = 1;
}

/// State of an operation or of one phase on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Planned, not dispatched.
    Pending,
    /// Dispatched (the job id is recorded before the agent is called).
    Running,
    /// Done.
    Succeeded,
    /// Failed for good.
    Failed,
    /// Stopped on request.
    Cancelled,
}

impl RunState {
    /// Whether it has ended.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// A cluster operation (a backup, a restore, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationRecord {
    /// Unique id.
    pub id: String,
    /// The cluster.
    pub cluster: String,
    /// `backup`, `restore`, … (stable names).
    pub kind: String,
    /// State.
    pub state: RunState,
    /// The plan and options, as the planner wrote them (JSON).
    pub spec: serde_json::Value,
    /// Created.
    pub created_at_ms: u64,
    /// Ended (0 while running).
    pub finished_at_ms: u64,
    /// Why it failed.
    pub error: String,
    /// The client's request id that started it (empty: none given): a start with the same id
    /// returns this operation instead of starting another.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub request_id: String,
}

impl Versioned for OperationRecord {
    const KIND: &'static str = "operation";
    const VERSION: u32 = 1;
}

/// One phase of an operation on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseRecord {
    /// The operation.
    pub operation_id: String,
    /// The node.
    pub host_id: String,
    /// The phase name.
    pub phase: String,
    /// The agent job id (recorded before dispatch; a new leader re-attaches by it).
    pub job_id: String,
    /// State.
    pub state: RunState,
    /// Dispatch attempts so far.
    pub attempts: u32,
    /// When the current attempt was recorded as started.
    pub started_at_ms: u64,
    /// Ended.
    pub finished_at_ms: u64,
    /// Last error.
    pub error: String,
    /// Result summary (JSON from the agent).
    pub summary: serde_json::Value,
}

impl Versioned for PhaseRecord {
    const KIND: &'static str = "phase";
    const VERSION: u32 = 1;
}

/// A backup in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    /// The cluster.
    pub cluster: String,
    /// The backup id.
    pub id: String,
    /// The operation that took it.
    pub operation_id: String,
    /// `complete`, `partial`, `failed`.
    pub status: String,
    /// Storage location.
    pub location: String,
    /// Nodes included (host ids).
    pub nodes: Vec<String>,
    /// Total and unique bytes, when known.
    pub bytes_total: u64,
    /// Started.
    pub started_at_ms: u64,
    /// Finished.
    pub finished_at_ms: u64,
    /// Free-form labels (tag, …).
    pub labels: BTreeMap<String, String>,
}

impl Versioned for BackupRecord {
    const KIND: &'static str = "backup";
    const VERSION: u32 = 1;
}

/// A diagnostic value written by `cassette debug put`: checks that the group commits, and lets
/// tests detect an entry applied twice (`writes` would be 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugRecord {
    /// The value.
    pub value: String,
    /// How many commands wrote this key.
    pub writes: u64,
    /// Raft index of the last write.
    pub index: u64,
}

impl Versioned for DebugRecord {
    const KIND: &'static str = "debug";
    const VERSION: u32 = 1;
}

/// Which operation a client request id started (`OperationStart` with `client_request_id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationRequestRecord {
    /// The operation.
    pub operation_id: String,
}

impl Versioned for OperationRequestRecord {
    const KIND: &'static str = "operation_request";
    const VERSION: u32 = 1;
}

/// A revoked certificate (`cassette certs revoke`): by serial, or every certificate of a name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationRecord {
    /// Serial number, lowercase hex (empty when revoked by name).
    pub serial: String,
    /// Certificate name (by name: every certificate of it; by serial: informative, may be empty).
    pub name: String,
    /// Why.
    pub reason: String,
    /// Who (the admin certificate's name).
    pub by: String,
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
    /// The raft index that revoked it (the list's version is the highest).
    pub index: u64,
}

impl Versioned for RevocationRecord {
    const KIND: &'static str = "revocation";
    const VERSION: u32 = 1;
}

/// A change to the replicated state: the payload of a raft entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Registers a cluster with its nodes (or replaces them when `replace`).
    PutCluster {
        /// The cluster.
        cluster: ClusterRecord,
        /// Its nodes.
        nodes: Vec<NodeRecord>,
        /// Replace an existing registration instead of refusing.
        replace: bool,
    },
    /// Forgets a cluster and its nodes (operations and catalog entries stay).
    RemoveCluster {
        /// Name.
        name: String,
    },
    /// Records observed health of some nodes.
    RecordHealth {
        /// Cluster.
        cluster: String,
        /// Host id → health.
        health: BTreeMap<String, NodeHealth>,
    },
    /// Creates an operation with its pending phases.
    CreateOperation {
        /// The operation.
        operation: OperationRecord,
        /// Its phases.
        phases: Vec<PhaseRecord>,
    },
    /// "Phase X started on node N as job J": recorded before the agent is called.
    PhaseStarted {
        /// Operation.
        operation_id: String,
        /// Node.
        host_id: String,
        /// Phase.
        phase: String,
        /// Job id.
        job_id: String,
        /// When.
        at_ms: u64,
    },
    /// "Phase X started on these nodes as these jobs", for many nodes in one entry: what a
    /// barrier's dispatch commits before calling every agent at once (one raft round instead of
    /// one per node keeps the start skew between nodes small).
    PhasesStarted {
        /// Operation.
        operation_id: String,
        /// Phase.
        phase: String,
        /// (host id, job id) of each node.
        starts: Vec<(String, String)>,
        /// When.
        at_ms: u64,
    },
    /// A phase ended.
    PhaseFinished {
        /// Operation.
        operation_id: String,
        /// Node.
        host_id: String,
        /// Phase.
        phase: String,
        /// Outcome.
        state: RunState,
        /// Error, if failed.
        error: String,
        /// Result summary.
        summary: serde_json::Value,
        /// When.
        at_ms: u64,
    },
    /// An operation ended.
    FinishOperation {
        /// Operation.
        operation_id: String,
        /// Outcome.
        state: RunState,
        /// Error, if failed.
        error: String,
        /// When.
        at_ms: u64,
    },
    /// Adds a phase to a running operation (a phase that runs on one node, chosen when reached).
    /// Refused when the phase exists already.
    AddPhase {
        /// The phase.
        phase: PhaseRecord,
    },
    /// Removes a catalog entry (the backup was removed from storage).
    RemoveBackup {
        /// The cluster.
        cluster: String,
        /// The backup id.
        id: String,
    },
    /// Adds or updates a catalog entry.
    PutBackup {
        /// The entry.
        backup: BackupRecord,
    },
    /// Creates, changes or deletes a backup schedule, or claims and records one of its runs
    /// ([`crate::schedule`]).
    Schedule(crate::schedule::ScheduleCommand),
    /// Writes a diagnostic value.
    DebugPut {
        /// Key (under `debug/`).
        key: String,
        /// Value.
        value: String,
    },
    /// Adds a certificate to the deny list (by serial when `serial` is set, else by name).
    Revoke {
        /// Serial number, lowercase hex.
        serial: String,
        /// Certificate name.
        name: String,
        /// Why.
        reason: String,
        /// Who.
        by: String,
        /// When.
        at_ms: u64,
    },
}

impl Versioned for Command {
    const KIND: &'static str = "command";
    const VERSION: u32 = 1;
}

/// Keys of the state machine (all under the `s/` prefix of the store).
pub mod keys {
    /// Prefix of every state-machine key.
    pub const PREFIX: &str = "s/";
    /// Applied index and term.
    pub const APPLIED: &str = "s/meta/applied";
    /// The raft configuration (voters, learners).
    pub const CONF_STATE: &str = "s/meta/conf_state";
    /// The group's identity (fixed at bootstrap).
    pub const GROUP: &str = "s/meta/group";
    /// Replica id → address.
    pub fn peer(id: u64) -> String {
        format!("s/peer/{id:020}")
    }
    /// Prefix of the peer table.
    pub const PEERS: &str = "s/peer/";
    /// A cluster.
    pub fn cluster(name: &str) -> String {
        format!("s/cluster/{name}")
    }
    /// Prefix of every cluster.
    pub const CLUSTERS: &str = "s/cluster/";
    /// A node.
    pub fn node(cluster: &str, host_id: &str) -> String {
        format!("s/node/{cluster}/{host_id}")
    }
    /// Prefix of a cluster's nodes.
    pub fn nodes(cluster: &str) -> String {
        format!("s/node/{cluster}/")
    }
    /// An operation.
    pub fn operation(id: &str) -> String {
        format!("s/op/{id}")
    }
    /// Prefix of every operation.
    pub const OPERATIONS: &str = "s/op/";
    /// A phase.
    pub fn phase(op: &str, host_id: &str, phase: &str) -> String {
        format!("s/phase/{op}/{host_id}/{phase}")
    }
    /// Prefix of an operation's phases.
    pub fn phases(op: &str) -> String {
        format!("s/phase/{op}/")
    }
    /// A catalog entry.
    pub fn backup(cluster: &str, id: &str) -> String {
        format!("s/backup/{cluster}/{id}")
    }
    /// Prefix of a cluster's catalog entries.
    pub fn backups(cluster: &str) -> String {
        format!("s/backup/{cluster}/")
    }
    /// A diagnostic value.
    pub fn debug(key: &str) -> String {
        format!("s/debug/{key}")
    }
    /// A revoked serial number.
    pub fn revoked_serial(serial: &str) -> String {
        format!("s/revoked/serial/{serial}")
    }
    /// A revoked certificate name.
    pub fn revoked_name(name: &str) -> String {
        format!("s/revoked/name/{name}")
    }
    /// Prefix of the deny list.
    pub const REVOKED: &str = "s/revoked/";
    /// The operation a client request id started.
    pub fn operation_request(request_id: &str) -> String {
        format!("s/opreq/{request_id}")
    }
}

/// Names that may appear in keys: no `/`, not empty, printable.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_with_stable_names() {
        let c = Command::DebugPut { key: "k".into(), value: "v".into() };
        let bytes = c.encode();
        assert_eq!(std::str::from_utf8(&bytes).unwrap(), r#"{"v":1,"d":{"cmd":"debug_put","key":"k","value":"v"}}"#);
        assert_eq!(Command::decode(&bytes).unwrap(), c);
        assert_eq!(serde_json::to_string(&RunState::Succeeded).unwrap(), "\"succeeded\"");
        assert!(valid_name("prod-eu_1.a") && !valid_name("a/b") && !valid_name(""));
    }
}
