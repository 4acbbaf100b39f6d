//! The emulated cluster's persistent state: one JSON document in the state directory, guarded by
//! a lock file so concurrent `nodetool`/`cqlsh` invocations see consistent state.
//!
//! The SSTable files themselves live in the nodes' data directories; the state records which of
//! them are live (Cassandra's live set), memtables, counters and settings.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use cassette_common::datadir::{KeyspaceClass, TableId};
use serde::{Deserialize, Serialize};

/// The Cassandra release line being emulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Version {
    /// 3.11 (3.11.17).
    #[serde(rename = "3.11")]
    V311,
    /// 4.0 (4.0.14).
    #[serde(rename = "4.0")]
    V40,
    /// 4.1 (4.1.7).
    #[serde(rename = "4.1")]
    V41,
    /// 5.0 (5.0.1).
    #[serde(rename = "5.0")]
    V50,
}

impl Version {
    /// Every emulated version.
    pub const ALL: [Version; 4] = [Version::V311, Version::V40, Version::V41, Version::V50];

    /// Parses `3.11`, `4.0`, `4.1`, `5.0` (or a full release such as `4.1.7`).
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            _ if s.starts_with("3.11") => Self::V311,
            _ if s.starts_with("4.0") => Self::V40,
            _ if s.starts_with("4.1") => Self::V41,
            _ if s.starts_with("5.0") => Self::V50,
            _ => bail!("unknown Cassandra version {s:?}: the emulator speaks 3.11, 4.0, 4.1 and 5.0"),
        })
    }

    /// The release the research notes were taken from.
    pub fn release(&self) -> &'static str {
        match self {
            Self::V311 => "3.11.17",
            Self::V40 => "4.0.14",
            Self::V41 => "4.1.7",
            Self::V50 => "5.0.1",
        }
    }

    /// Short name (`4.1`).
    pub fn short(&self) -> &'static str {
        match self {
            Self::V311 => "3.11",
            Self::V40 => "4.0",
            Self::V41 => "4.1",
            Self::V50 => "5.0",
        }
    }

    /// Default `num_tokens` of the shipped cassandra.yaml.
    pub fn default_num_tokens(&self) -> usize {
        if *self == Self::V311 { 256 } else { 16 }
    }

    /// The SSTable version written for a format.
    pub fn sstable_version(&self, bti: bool, compat_none: bool) -> &'static str {
        match self {
            Self::V311 => "me",
            Self::V40 | Self::V41 => "nb",
            Self::V50 if bti => "da",
            Self::V50 if compat_none => "oa",
            Self::V50 => "nb",
        }
    }

    /// Commit-log header version written.
    pub fn commitlog_version(&self, compat_none: bool) -> i32 {
        match self {
            Self::V311 => 6,
            Self::V50 if compat_none => 8,
            _ => 7,
        }
    }
}

/// A keyspace of the cluster-wide schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyspace {
    /// Replication factor per datacenter (NetworkTopologyStrategy), or `{"replication_factor": n}` (SimpleStrategy).
    pub replication: BTreeMap<String, u32>,
    /// Tables by name.
    pub tables: BTreeMap<String, Table>,
}

/// Kinds of secondary index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexKind {
    /// Native 2i: a hidden table in `.<index>/`.
    Native,
    /// 5.0 SAI: `SAI+aa+…` components next to each SSTable.
    Sai,
    /// SASI: `SI_<index>.db` next to each SSTable.
    Sasi,
}

/// A secondary index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    /// Index name.
    pub name: String,
    /// Indexed column.
    pub column: String,
    /// Kind.
    pub kind: IndexKind,
}

/// A table of the schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    /// Table id (dashed UUID form).
    pub id: String,
    /// Columns `(name, cql type)` in declaration order.
    pub columns: Vec<(String, String)>,
    /// Partition key columns.
    pub partition_key: Vec<String>,
    /// Clustering columns.
    pub clustering: Vec<String>,
    /// Secondary indexes.
    #[serde(default)]
    pub indexes: Vec<Index>,
}

impl Table {
    /// The table id.
    pub fn table_id(&self) -> TableId {
        self.id.parse().unwrap_or(TableId::from_bytes([0; 16]))
    }

    /// Directory name `<table>-<32 hex>`.
    pub fn dir_name(&self, name: &str) -> String {
        format!("{name}-{}", self.table_id().to_hex())
    }
}

/// One SSTable of a live set: the data root it is in and its name prefix (`nb-3-big`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LiveSstable {
    /// Index of the data directory.
    pub root: usize,
    /// `<version>-<id>-<format>`.
    pub prefix: String,
}

/// Unflushed writes of one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Memtable {
    /// Rows written since the last flush.
    pub rows: u64,
    /// Smallest write timestamp (µs).
    pub min_timestamp: i64,
    /// Largest write timestamp (µs).
    pub max_timestamp: i64,
}

/// Failures to inject, for adapter tests.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Faults {
    /// `nodetool <command>` fails with this exit code and stderr text.
    #[serde(default)]
    pub fail: BTreeMap<String, (i32, String)>,
    /// `nodetool <command>` does its work, then fails with this exit code and stderr text (a
    /// connection lost or a timeout after the node acted).
    #[serde(default)]
    pub fail_after: BTreeMap<String, (i32, String)>,
    /// `nodetool <command>` sleeps this many milliseconds before answering.
    #[serde(default)]
    pub delay_ms: BTreeMap<String, u64>,
    /// Every output gets JVM warnings and unexpected extra lines.
    #[serde(default)]
    pub noisy: bool,
}

/// One emulated node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Listen/JMX/CQL address (`127.0.0.1`).
    pub address: String,
    /// Host id.
    pub host_id: String,
    /// Datacenter.
    pub datacenter: String,
    /// Rack.
    pub rack: String,
    /// Tokens (Murmur3, decimal).
    pub tokens: Vec<String>,
    /// Whether the process runs.
    pub up: bool,
    /// Data directories (JBOD).
    pub data_dirs: Vec<PathBuf>,
    /// `local_system_data_file_directory` (4.0+), if set.
    #[serde(default)]
    pub local_system_data_dir: Option<PathBuf>,
    /// Commit-log directory.
    pub commitlog_dir: PathBuf,
    /// Conf directory (holds `commitlog_archiving.properties`).
    pub conf_dir: PathBuf,
    /// `incremental_backups`.
    pub incremental_backups: bool,
    /// `uuid_sstable_identifiers_enabled` (4.1+).
    pub uuid_sstable_ids: bool,
    /// `sstable: selected_format: bti` (5.0).
    pub bti: bool,
    /// `storage_compatibility_mode: NONE` (5.0): writes `oa` SSTables and version 8 commit logs.
    pub storage_compat_none: bool,
    /// `auto_snapshot` (snapshot on TRUNCATE/DROP).
    pub auto_snapshot: bool,
    /// JMX credentials the node requires (`user`, `password`), if any.
    #[serde(default)]
    pub jmx_credentials: Option<(String, String)>,
    /// CQL credentials the node requires, if any.
    #[serde(default)]
    pub cql_credentials: Option<(String, String)>,
    /// Start time (ms since epoch): the gossip generation and commit-log id base.
    pub started_at_ms: i64,
    /// Next sequence id per store directory (`ks/t-id` or `ks/t-id/.idx`).
    #[serde(default)]
    pub next_sequence: BTreeMap<String, u32>,
    /// Live SSTables per store directory.
    #[serde(default)]
    pub live: BTreeMap<String, BTreeSet<LiveSstable>>,
    /// Memtables per table (`ks.table`).
    #[serde(default)]
    pub memtables: BTreeMap<String, Memtable>,
    /// Next commit-log segment id.
    pub next_segment_id: i64,
    /// The active commit-log segment, if any.
    #[serde(default)]
    pub active_segment: Option<String>,
    /// Closed segments awaiting discard, with whether archiving succeeded.
    #[serde(default)]
    pub closed_segments: BTreeMap<String, bool>,
    /// Segments replayed at the last start, in replay (id) order, with the segment ids.
    #[serde(default)]
    pub replayed_segments: Vec<(String, i64)>,
    /// Snapshot TTL expiries (tag → expiry ms), 4.1+.
    #[serde(default)]
    pub snapshot_expiry: BTreeMap<String, i64>,
    /// Injected failures.
    #[serde(default)]
    pub faults: Faults,
}

impl Node {
    /// The data root a new SSTable of `keyspace` goes to (system keyspaces: the local system
    /// directory, else the first root; others round-robin by id).
    pub fn root_for(&self, keyspace: &str, n: u64) -> usize {
        if KeyspaceClass::of(keyspace) == KeyspaceClass::LocalSystem {
            return if self.local_system_data_dir.is_some() { self.data_dirs.len() } else { 0 };
        }
        (n % self.data_dirs.len() as u64) as usize
    }

    /// Every data root, the local system one last.
    pub fn roots(&self) -> Vec<PathBuf> {
        let mut r = self.data_dirs.clone();
        if let Some(d) = &self.local_system_data_dir {
            r.push(d.clone());
        }
        r
    }
}

/// The whole emulated cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    /// Cluster name.
    pub cluster_name: String,
    /// Emulated release line.
    pub version: Version,
    /// Partitioner class.
    pub partitioner: String,
    /// Snitch class.
    pub snitch: String,
    /// Schema version (changes with every schema change).
    pub schema_version: String,
    /// Keyspaces (system ones included).
    pub keyspaces: BTreeMap<String, Keyspace>,
    /// Nodes.
    pub nodes: Vec<Node>,
    /// Added to the real clock (ms), to test TTLs without waiting.
    #[serde(default)]
    pub clock_offset_ms: i64,
    /// Seed for generated content; bumped per use.
    #[serde(default)]
    pub seed: u64,
}

impl Cluster {
    /// The emulated time, ms since epoch.
    pub fn now_ms(&self) -> i64 {
        let real = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        real + self.clock_offset_ms
    }

    /// The node with this address.
    pub fn node_index(&self, address: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.address == address)
    }

    /// A table of the schema.
    pub fn table(&self, keyspace: &str, table: &str) -> Option<&Table> {
        self.keyspaces.get(keyspace)?.tables.get(table)
    }

    /// Next pseudo-random value (deterministic per state).
    pub fn next_seed(&mut self) -> u64 {
        self.seed = self.seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.seed
    }

    /// A new schema version UUID (after schema changes).
    pub fn bump_schema(&mut self) {
        let a = self.next_seed();
        let b = self.next_seed();
        self.schema_version = uuid_from(a, b, 3);
    }
}

/// A UUID string from two 64-bit values, with the given version nibble.
pub fn uuid_from(hi: u64, lo: u64, version: u8) -> String {
    let hi = (hi & !0xf000) | ((version as u64) << 12);
    let lo = (lo & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    let h = format!("{hi:016x}{lo:016x}");
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// The state directory of an emulated cluster.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

/// Holds the state lock; released on drop.
#[derive(Debug)]
pub struct StateLock {
    path: PathBuf,
}

impl Drop for StateLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl StateDir {
    /// A state directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.root
    }

    fn file(&self) -> PathBuf {
        self.root.join("cluster.json")
    }

    /// Takes the lock (waits up to 30 s). The lock file holds the owner's pid: a lock whose owner
    /// is gone (killed by a test's timeout, say) is broken at once.
    pub fn lock(&self) -> anyhow::Result<StateLock> {
        let path = self.root.join("state.lock");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    use std::io::Write;
                    let _ = write!(f, "{}", std::process::id());
                    return Ok(StateLock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if let Some(pid) = std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse::<u32>().ok())
                        && !process_alive(pid)
                    {
                        // Break it by renaming, so two waiters cannot both delete a fresh lock.
                        let grave = self.root.join(format!("state.lock.stale.{}", std::process::id()));
                        if std::fs::rename(&path, &grave).is_ok() {
                            let still_stale =
                                std::fs::read_to_string(&grave).ok().and_then(|s| s.trim().parse::<u32>().ok())
                                    == Some(pid);
                            if !still_stale {
                                // We took someone's fresh lock: put it back.
                                let _ = std::fs::rename(&grave, &path);
                            } else {
                                let _ = std::fs::remove_file(&grave);
                            }
                        }
                        continue;
                    }
                    // A lock file without a pid: its creator died between creating and writing
                    // it (killed by a command timeout). Once it is clearly not being written any
                    // more, break it like a dead owner's.
                    let empty_and_old = std::fs::metadata(&path).is_ok_and(|m| {
                        m.len() == 0
                            && m.modified()
                                .ok()
                                .and_then(|t| t.elapsed().ok())
                                .is_some_and(|a| a > Duration::from_secs(2))
                    });
                    if empty_and_old {
                        let grave = self.root.join(format!("state.lock.empty.{}", std::process::id()));
                        if std::fs::rename(&path, &grave).is_ok() {
                            if std::fs::metadata(&grave).is_ok_and(|m| m.len() == 0) {
                                let _ = std::fs::remove_file(&grave);
                            } else {
                                let _ = std::fs::rename(&grave, &path);
                            }
                        }
                        continue;
                    }
                    if Instant::now() > deadline {
                        bail!("emulator state {} is locked by another command for 30 s", self.root.display());
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e).with_context(|| format!("lock {}", path.display())),
            }
        }
    }

    /// Reads the state (take the lock first when it will be written back).
    pub fn load(&self) -> anyhow::Result<Cluster> {
        let bytes = std::fs::read(self.file())
            .with_context(|| format!("read emulator state {} (was the cluster created?)", self.file().display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("parse emulator state {}", self.file().display()))
    }

    /// Writes the state atomically.
    pub fn save(&self, c: &Cluster) -> anyhow::Result<()> {
        let tmp = self.root.join("cluster.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(c)?).with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, self.file()).with_context(|| format!("replace {}", self.file().display()))?;
        Ok(())
    }

    /// Runs `f` on the locked state and saves it afterwards.
    pub fn update<T>(&self, f: impl FnOnce(&mut Cluster) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let _lock = self.lock()?;
        let mut c = self.load()?;
        let out = f(&mut c)?;
        self.save(&c)?;
        Ok(out)
    }
}

/// Whether `pid` is a running process. A zombie (killed, not yet reaped by its parent) counts as
/// gone: it holds nothing. This matters because the agent kills tools it gives up on, and its
/// runtime reaps them in the background, possibly only after the next command waited on the lock.
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name, which may contain spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zombies_do_not_hold_the_lock() {
        assert!(process_alive(std::process::id()));
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        assert!(process_alive(pid));
        child.kill().unwrap();
        // Killed but not reaped: a zombie until wait() below.
        let deadline = Instant::now() + Duration::from_secs(10);
        while process_alive(pid) {
            assert!(Instant::now() < deadline, "a killed, unreaped child must count as gone");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(Path::new(&format!("/proc/{pid}")).exists(), "still a zombie: /proc entry remains");
        child.wait().unwrap();
        assert!(!process_alive(pid));
    }

    #[test]
    fn a_lock_left_by_a_dead_process_is_broken() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        // Above the kernel's pid_max: no such process can exist.
        std::fs::write(tmp.path().join("state.lock"), "4194305").unwrap();
        let start = Instant::now();
        let lock = dir.lock().unwrap();
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_eq!(std::fs::read_to_string(tmp.path().join("state.lock")).unwrap(), std::process::id().to_string());
        drop(lock);
        assert!(!tmp.path().join("state.lock").exists());
    }

    #[test]
    fn versions_parse_and_map_to_formats() {
        assert_eq!(Version::parse("4.1.7").unwrap(), Version::V41);
        assert!(Version::parse("2.2").is_err());
        assert_eq!(Version::V311.sstable_version(false, false), "me");
        assert_eq!(Version::V50.sstable_version(true, false), "da");
        assert_eq!(Version::V50.sstable_version(false, true), "oa");
        assert_eq!(Version::V50.commitlog_version(true), 8);
        assert_eq!(Version::V40.commitlog_version(false), 7);
    }
}
