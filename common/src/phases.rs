//! The phases a coordinator runs on agents: their stable names and their parameters and results
//! as JSON documents. The one place both sides (and synthetic runners in benchmarks) agree on.
//!
//! A cluster backup runs [`BACKUP_CHECK`] on every node, [`BACKUP_SNAPSHOT`] on every node
//! together, [`BACKUP_UPLOAD`] (limited per datacenter; it writes the node manifest last, under
//! the same lock that keeps removals away), [`BACKUP_CLUSTER_MANIFEST`] on one node, and
//! [`BACKUP_CLEAR_SNAPSHOT`] on every node (after a failure too). A live restore runs
//! [`RESTORE_CHECK`] and [`RESTORE_DOWNLOAD`] on every node, [`RESTORE_TRUNCATE`] on one node,
//! [`RESTORE_IMPORT`] and [`RESTORE_CLEANUP`] on every node; an in-place restore runs check,
//! download, import (placing the files on the stopped node) and cleanup.
//!
//! Parameters are the same for every phase of one node's restore ([`RestoreParams`]), so a new
//! leader re-attaching to a job sends exactly what the first leader sent.

use serde::{Deserialize, Serialize};

use crate::manifest::ClusterNodeEntry;

/// Checks before a backup: Cassandra up, disk space, the repository reachable and writable.
pub const BACKUP_CHECK: &str = "backup.check";
/// Flush and snapshot under the backup's tag.
pub const BACKUP_SNAPSHOT: &str = "backup.snapshot";
/// Store the snapshot's files and write the node manifest.
pub const BACKUP_UPLOAD: &str = "backup.upload";
/// Write the cluster manifest (one node).
pub const BACKUP_CLUSTER_MANIFEST: &str = "backup.cluster-manifest";
/// Clear the snapshot.
pub const BACKUP_CLEAR_SNAPSHOT: &str = "backup.clear-snapshot";
/// Check a backup's blobs (one node, for the whole cluster).
pub const BACKUP_VERIFY: &str = "backup.verify";
/// Remove a backup and the blobs nothing else needs (one node, for the whole cluster).
pub const BACKUP_REMOVE: &str = "backup.remove";
/// Apply retention rules (and purge departed nodes) over the repository (one node, for the
/// whole cluster). Parameters: the agent's `PurgeRequest` as JSON; result: its `PurgeReport`.
pub const BACKUP_PURGE: &str = "backup.purge";
/// Plan a node's restore and report what it would do (changes nothing).
pub const RESTORE_CHECK: &str = "restore.check";
/// Download and verify into staging.
pub const RESTORE_DOWNLOAD: &str = "restore.download";
/// Truncate the target tables (one node of the cluster).
pub const RESTORE_TRUNCATE: &str = "restore.truncate";
/// Import (live) or place the files (in-place).
pub const RESTORE_IMPORT: &str = "restore.import";
/// Remove the staging directories.
pub const RESTORE_CLEANUP: &str = "restore.cleanup";

/// Every phase a production agent runs.
pub const ALL: [&str; 13] = [
    BACKUP_CHECK,
    BACKUP_SNAPSHOT,
    BACKUP_UPLOAD,
    BACKUP_CLUSTER_MANIFEST,
    BACKUP_CLEAR_SNAPSHOT,
    BACKUP_VERIFY,
    BACKUP_REMOVE,
    BACKUP_PURGE,
    RESTORE_CHECK,
    RESTORE_DOWNLOAD,
    RESTORE_TRUNCATE,
    RESTORE_IMPORT,
    RESTORE_CLEANUP,
];

/// [`BACKUP_CHECK`] parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BackupCheckParams {
    /// Refuse when a data directory's file system has less free space than this.
    pub min_free_bytes: u64,
}

/// [`BACKUP_CHECK`] result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BackupCheckResult {
    /// The node's host id.
    pub host_id: String,
    /// Cassandra's cluster name (the repository's cluster segment).
    pub cluster_name: String,
    /// Schema versions the node sees (one when the cluster agrees).
    pub schema_versions: Vec<String>,
    /// The repository location the agent writes to.
    pub location: String,
    /// Smallest free space among the data file systems.
    pub free_bytes: u64,
    /// Cassandra release.
    pub release_version: String,
}

/// [`BACKUP_SNAPSHOT`] parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SnapshotParams {
    /// The backup id (the same on every node).
    pub backup_id: String,
    /// Operator label.
    pub tag: Option<String>,
    /// `ks1,ks2.t1`; empty: every user keyspace.
    pub entities: String,
    /// Include system keyspaces.
    pub system_keyspaces: bool,
}

/// [`BACKUP_UPLOAD`] parameters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UploadParams {
    /// The snapshot phase's result on this node, as it returned it.
    pub snapshot: serde_json::Value,
    /// As in [`SnapshotParams`].
    pub tag: Option<String>,
    /// As in [`SnapshotParams`].
    pub entities: String,
    /// As in [`SnapshotParams`].
    pub system_keyspaces: bool,
    /// Upload bandwidth limit for this node (`50MiB/s`), on top of the agent's own.
    pub bandwidth: Option<String>,
}

/// [`BACKUP_UPLOAD`] result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UploadResult {
    /// The node manifest's key.
    pub manifest_key: String,
    /// Files in the manifest.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Files sent.
    pub files_uploaded: u64,
    /// Bytes sent.
    pub bytes_uploaded: u64,
    /// Files whose blob was stored already (deduplicated).
    pub files_skipped: u64,
    /// Their bytes.
    pub bytes_skipped: u64,
    /// Tables.
    pub tables: u64,
    /// Remarks.
    pub warnings: Vec<String>,
}

/// [`BACKUP_CLUSTER_MANIFEST`] parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterManifestParams {
    /// Cassandra's cluster name.
    pub cluster: String,
    /// The backup.
    pub backup_id: String,
    /// Operator label.
    pub tag: Option<String>,
    /// When the operation started (ms since the epoch).
    pub started_at_ms: u64,
    /// Time between the first and the last snapshot.
    pub snapshot_skew_ms: Option<u64>,
    /// Nodes in the backup.
    pub nodes: Vec<ClusterNodeEntry>,
    /// Nodes it lacks (a partial backup).
    pub missing_nodes: Vec<ClusterNodeEntry>,
}

/// [`BACKUP_CLEAR_SNAPSHOT`] parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClearSnapshotParams {
    /// The backup id (the tag is `cassette-<backup id>`).
    pub backup_id: String,
}

/// [`BACKUP_VERIFY`] and [`BACKUP_REMOVE`] parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BackupRefParams {
    /// Cassandra's cluster name.
    pub cluster: String,
    /// The backup.
    pub backup_id: String,
    /// Verify: download and hash every blob.
    pub deep: bool,
}

/// Parameters of every restore phase of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RestoreParams {
    /// The backup.
    pub backup_id: String,
    /// The node whose backup this node restores: Cassandra cluster name and host id.
    pub source_cluster: String,
    /// Host id of the source node.
    pub source_host: String,
    /// `import`, `hardlinks` or `in-place`.
    pub strategy: String,
    /// `ks1,ks2.t1`; empty: every user table in the backup.
    pub entities: String,
    /// `ks.t=ks.t2` each.
    pub renames: Vec<String>,
    /// Live: do not truncate.
    pub no_truncate: bool,
    /// In-place: write the backup's tokens into cassandra.yaml.
    pub set_tokens: bool,
    /// In-place: restore the schema but not `system` (the node joins as a new member).
    pub new_cluster: bool,
    /// Restore even if tokens differ.
    pub ignore_token_mismatch: bool,
    /// Restore even if a table's primary key or column types differ.
    pub ignore_schema_mismatch: bool,
    /// Live: create missing tables from the backup's schema (in the truncate phase, once).
    pub create_tables: bool,
}

/// [`RESTORE_CHECK`] result: what the node would restore.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RestoreCheckResult {
    /// Tables, as `source -> target`.
    pub tables: Vec<String>,
    /// Files to restore.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Schema differences, one line each.
    pub schema_differences: Vec<String>,
    /// Remarks.
    pub warnings: Vec<String>,
}

/// The phase names are unique and listed.
#[cfg(test)]
mod tests {
    #[test]
    fn names_are_unique_and_dotted() {
        let mut all = super::ALL.to_vec();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
        assert!(all.iter().all(|p| p.contains('.')));
    }
}
