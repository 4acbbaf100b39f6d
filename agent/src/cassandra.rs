//! The agent's view of its Cassandra node: identity, topology, and the operations a backup or a
//! restore needs (flush, snapshot, list/clear snapshots, import, refresh, truncate).
//!
//! [`CassandraControl`] is the seam. [`NodetoolControl`] implements it over the `nodetool` and
//! `cqlsh` programs; tests run it against the emulator in `cassette-integration` so the parsing is
//! exercised, never against an in-memory fake.
//!
//! # Layout
//! - [`config`]: [`CassandraConfig`] (tools, hosts, credentials, TLS, directories, timeouts).
//! - [`error`]: [`CassandraError`], with [`Retry`] classification.
//! - [`parse`]: parsers of `nodetool` and `cqlsh` output (each tested on the samples of every version).
//! - [`nodetool`]: [`NodetoolControl`], the implementation over the tools.
//! - [`snapshots`]: reading snapshots from the data directories (files, `manifest.json`, `schema.cql`).
//! - [`yaml`]: the two `cassandra.yaml` settings the adapter needs.
//! - `process`: running the tools with timeouts.

pub mod config;
pub mod error;
pub mod nodetool;
pub mod parse;
mod process;
pub mod snapshots;
pub mod stopped;
pub mod yaml;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use cassette_common::cql::TableColumns;
use cassette_common::datadir::TableId;
use cassette_common::ids::HostId;

pub use config::CassandraConfig;
pub use error::{CassandraError, Retry};
pub use nodetool::NodetoolControl;
pub use snapshots::{Snapshot, SnapshotFile, SnapshotManifest, SnapshotTable};

/// A Cassandra release version (`4.1.7`, `5.0-beta1`, `3.11.17`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReleaseVersion {
    /// As the node reports it.
    pub raw: String,
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Patch version (0 when absent).
    pub patch: u32,
}

impl ReleaseVersion {
    /// Parses `<major>.<minor>[.<patch>][-suffix]`.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let core = s.split(['-', ' ']).next()?;
        let mut it = core.split('.');
        let major = it.next()?.parse().ok()?;
        let minor = it.next()?.parse().ok()?;
        let patch = match it.next() {
            Some(p) => p.parse().ok()?,
            None => 0,
        };
        Some(Self { raw: s.to_owned(), major, minor, patch })
    }

    fn at_least(&self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }

    /// `nodetool import` (4.0+).
    pub fn supports_import(&self) -> bool {
        self.at_least(4, 0)
    }

    /// `nodetool import --require-index-components` / `--no-index-validation` (5.0+).
    pub fn supports_import_index_options(&self) -> bool {
        self.at_least(5, 0)
    }

    /// `nodetool snapshot --ttl` (4.1+).
    pub fn supports_snapshot_ttl(&self) -> bool {
        self.at_least(4, 1)
    }

    /// `nodetool clearsnapshot --older-than` (5.0+).
    pub fn supports_clear_older_than(&self) -> bool {
        self.at_least(5, 0)
    }

    /// `clearsnapshot --all` (4.0+; 3.11 clears everything when no tag is given).
    pub fn supports_clear_all_flag(&self) -> bool {
        self.at_least(4, 0)
    }

    /// `system_views.settings` (4.0+).
    pub fn supports_settings_table(&self) -> bool {
        self.at_least(4, 0)
    }

    /// UUID SSTable ids (4.1+, when enabled).
    pub fn supports_uuid_sstable_ids(&self) -> bool {
        self.at_least(4, 1)
    }
}

impl fmt::Display for ReleaseVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Up or down, as gossip sees a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    /// `U`.
    Up,
    /// `D`.
    Down,
    /// `?`.
    Unknown,
}

/// A node's ring state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RingState {
    /// `N`.
    Normal,
    /// `L`.
    Leaving,
    /// `J`.
    Joining,
    /// `M`.
    Moving,
}

/// One node of the ring, as `nodetool status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingMember {
    /// Datacenter.
    pub datacenter: String,
    /// Address (`ip` or `ip:port`).
    pub address: String,
    /// Up or down.
    pub liveness: Liveness,
    /// Normal, joining, leaving or moving.
    pub state: RingState,
    /// Load as printed (`104.5 KiB`); `None` when unknown (`?`).
    pub load: Option<String>,
    /// Number of tokens (vnode layout only).
    pub token_count: Option<u32>,
    /// The single token (single-token layout only).
    pub token: Option<String>,
    /// Ownership as printed (`100.0%`); `None` when unknown.
    pub owns: Option<String>,
    /// Host id; `None` when Cassandra does not know it yet.
    pub host_id: Option<HostId>,
    /// Rack.
    pub rack: String,
}

/// A schema version and the endpoints that have it (`nodetool describecluster`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaVersion {
    /// The schema version UUID, or `UNREACHABLE`.
    pub version: String,
    /// Endpoints reporting it.
    pub endpoints: Vec<String>,
}

/// How the data directories were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectorySource {
    /// [`CassandraConfig::data_file_directories`].
    Config,
    /// `system_views.settings`.
    SettingsTable,
    /// [`CassandraConfig::cassandra_yaml`].
    CassandraYaml,
}

/// Where the node keeps its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directories {
    /// Data directories, in the node's order.
    pub data: Vec<PathBuf>,
    /// `local_system_data_file_directory` (4.0+), if set: where `system` and `system_schema` live.
    pub local_system_data: Option<PathBuf>,
    /// Commit-log directory, if known.
    pub commitlog: Option<PathBuf>,
    /// Where the answer came from.
    pub source: DirectorySource,
}

impl Directories {
    /// Every directory that can hold table directories (data roots plus the local system one).
    pub fn all_data_roots(&self) -> Vec<PathBuf> {
        let mut out = self.data.clone();
        if let Some(d) = &self.local_system_data
            && !out.contains(d)
        {
            out.push(d.clone());
        }
        out
    }
}

/// Identity and state of the local node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeDescription {
    /// Host id.
    pub host_id: HostId,
    /// Cluster name.
    pub cluster_name: String,
    /// Datacenter.
    pub datacenter: String,
    /// Rack.
    pub rack: String,
    /// Tokens owned (decimal strings); empty when not joined.
    pub tokens: Vec<String>,
    /// Release version.
    pub release_version: ReleaseVersion,
    /// Partitioner class.
    pub partitioner: Option<String>,
    /// Schema versions across the cluster (one when schema is in agreement).
    pub schema_versions: Vec<SchemaVersion>,
    /// Gossip running.
    pub gossip_active: bool,
    /// CQL native transport running.
    pub native_transport_active: bool,
    /// Load as printed.
    pub load: Option<String>,
    /// Data and commit-log directories.
    pub directories: Directories,
}

/// What to flush.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FlushRequest {
    /// Keyspace; every keyspace when `None`.
    pub keyspace: Option<String>,
    /// Tables of that keyspace; all when empty.
    pub tables: Vec<String>,
}

/// What a snapshot covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotScope {
    /// Every keyspace, system ones included (Cassandra's default).
    All,
    /// These keyspaces.
    Keyspaces(Vec<String>),
    /// These tables, `(keyspace, table)`.
    Tables(Vec<(String, String)>),
}

/// A snapshot to take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRequest {
    /// The tag (directory name under `snapshots/`).
    pub tag: String,
    /// What to snapshot.
    pub scope: SnapshotScope,
    /// Skip the flush (`-sf`): only data already in SSTables is included.
    pub skip_flush: bool,
    /// Time to live (4.1+): Cassandra clears the snapshot after it.
    pub ttl: Option<Duration>,
}

/// Which snapshots to clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClearTarget {
    /// The snapshot with this tag.
    Tag(String),
    /// Every snapshot (`--all`; 3.11: no tag).
    All,
    /// Snapshots older than this (5.0+, `--older-than`).
    OlderThan(Duration),
}

/// A clearsnapshot request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClearSnapshotRequest {
    /// Which snapshots.
    pub target: ClearTarget,
    /// Restrict to these keyspaces; every keyspace when empty.
    pub keyspaces: Vec<String>,
}

/// Options of `nodetool import` (4.0+). Defaults match nodetool's.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImportOptions {
    /// `--keep-level`: keep the LCS level (else reset to 0).
    pub keep_level: bool,
    /// `--keep-repaired`: keep repaired/pending-repair state (else mark unrepaired).
    pub keep_repaired: bool,
    /// `--no-verify`: skip SSTable verification.
    pub no_verify: bool,
    /// `--no-tokens`: skip the check that keys belong to this node.
    pub no_verify_tokens: bool,
    /// `--no-invalidate-caches`: keep the row cache.
    pub no_invalidate_caches: bool,
    /// `--quick`: all of the above skips (and 5.0 `--no-index-validation`).
    pub quick: bool,
    /// `--extended-verify`: verify every value.
    pub extended_verify: bool,
    /// `--copy-data`: hard-link or copy instead of moving the files.
    pub copy_data: bool,
    /// `--require-index-components` (5.0): fail if SAI components of attached indexes are missing.
    pub require_index_components: bool,
    /// `--no-index-validation` (5.0): skip SAI checksum validation.
    pub no_index_validation: bool,
}

/// SSTables to import into a live table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportRequest {
    /// Keyspace.
    pub keyspace: String,
    /// Table.
    pub table: String,
    /// Directories holding the SSTables (listed non-recursively by Cassandra).
    pub dirs: Vec<PathBuf>,
    /// Options.
    pub options: ImportOptions,
}

/// A table of the live schema (`system_schema.tables` and `system_schema.columns`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveTable {
    /// Keyspace.
    pub keyspace: String,
    /// Table.
    pub table: String,
    /// Table id: the suffix of its directory names.
    pub id: TableId,
    /// Its columns.
    pub columns: TableColumns,
}

impl LiveTable {
    /// The table's directory name, `<table>-<32 hex id>`.
    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.table, self.id.to_hex())
    }
}

/// The local Cassandra node, as the agent controls it.
///
/// Contract: every method is safe to call concurrently. Queries are side-effect free. `flush`,
/// `refresh` and `clear_snapshot` are idempotent; `snapshot` is not (a second call with the same
/// tag fails with "already exists"), so callers pick fresh tags. `truncate` affects the whole
/// cluster. Durability is Cassandra's: a returned snapshot is on disk as hard links.
#[async_trait::async_trait]
pub trait CassandraControl: Send + Sync {
    /// Identity, tokens, version, schema versions and directories of the local node.
    async fn describe_node(&self) -> Result<NodeDescription, CassandraError>;
    /// Every node of the ring with its status.
    async fn ring(&self) -> Result<Vec<RingMember>, CassandraError>;
    /// Whether the node answers and its gossip and native transport are running. A stopped node
    /// is `Ok(false)`; only failures to find out are errors.
    async fn is_up(&self) -> Result<bool, CassandraError>;
    /// The data and commit-log directories (see [`config`] for how they are found).
    async fn directories(&self) -> Result<Directories, CassandraError>;
    /// Flushes memtables to SSTables.
    async fn flush(&self, request: &FlushRequest) -> Result<(), CassandraError>;
    /// Takes a snapshot.
    async fn snapshot(&self, request: &SnapshotRequest) -> Result<(), CassandraError>;
    /// Snapshots found in the data directories (all, or the one tag), with their files.
    async fn list_snapshots(&self, tag: Option<&str>) -> Result<Vec<Snapshot>, CassandraError>;
    /// Clears snapshots.
    async fn clear_snapshot(&self, request: &ClearSnapshotRequest) -> Result<(), CassandraError>;
    /// Imports SSTables into a live table (`nodetool import`, 4.0+).
    async fn import(&self, request: &ImportRequest) -> Result<(), CassandraError>;
    /// Loads SSTables placed in the table's own directories (`nodetool refresh`).
    async fn refresh(&self, keyspace: &str, table: &str) -> Result<(), CassandraError>;
    /// Truncates a table in the whole cluster (CQL `TRUNCATE`).
    async fn truncate(&self, keyspace: &str, table: &str) -> Result<(), CassandraError>;
    /// Every table of the live schema with its id and columns (system tables included). Restores
    /// use it to find the table a backup goes into and to compare schemas before touching data.
    async fn schema(&self) -> Result<Vec<LiveTable>, CassandraError>;
    /// Runs the checked statements of a backup's `schema.cql` (types, a table, its indexes; all
    /// `IF NOT EXISTS`, see [`cassette_common::cql::parse_schema`]) and waits for the cluster to
    /// agree on the schema.
    async fn create_schema(&self, statements: &[cassette_common::cql::SchemaStatement]) -> Result<(), CassandraError>;
    /// Positive proof, gathered without asking Cassandra, that it is not running on this host
    /// (see [`stopped`]): what was checked, or [`CassandraError::MayBeRunning`] with what shows
    /// it may run. An in-place restore calls it before it touches data files; `is_up` returning
    /// false is not enough. The default proves nothing and refuses.
    async fn prove_stopped(&self) -> Result<Vec<String>, CassandraError> {
        Err(CassandraError::MayBeRunning {
            reasons: vec!["this Cassandra adapter cannot check the node's processes and ports".into()],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_versions() {
        let v = ReleaseVersion::parse("4.1.7").unwrap();
        assert_eq!((v.major, v.minor, v.patch), (4, 1, 7));
        assert!(v.supports_snapshot_ttl() && v.supports_import() && !v.supports_import_index_options());
        let v = ReleaseVersion::parse("5.0-beta1").unwrap();
        assert_eq!((v.major, v.minor, v.patch), (5, 0, 0));
        assert!(v.supports_import_index_options() && v.supports_clear_older_than());
        let v = ReleaseVersion::parse("3.11.17").unwrap();
        assert!(!v.supports_import() && !v.supports_settings_table() && !v.supports_clear_all_flag());
        let v = ReleaseVersion::parse("4.0.0-SNAPSHOT").unwrap();
        assert!(v.supports_import() && !v.supports_snapshot_ttl());
        assert_eq!(v.to_string(), "4.0.0-SNAPSHOT");
        for bad in ["", "four", "4", "4.x.1"] {
            assert!(ReleaseVersion::parse(bad).is_none(), "{bad}");
        }
    }
}
