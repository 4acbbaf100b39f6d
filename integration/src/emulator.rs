//! A Cassandra emulator faithful enough that passing against it means passing against Cassandra
//! 3.11, 4.0, 4.1 and 5.0 for everything a backup agent does: the on-disk layout, snapshots
//! (hard links, per-version `manifest.json`, `schema.cql`), `nodetool` and `cqlsh` output and
//! exit codes, import/refresh, compaction, commit-log segments and `archive_command`.
//!
//! The binary `cassandra-emulator` is multi-call: run as `nodetool` or `cqlsh` (by the name it is
//! called under, or the first argument) it acts on the cluster in its state directory
//! (`--state DIR` or `CASSETTE_EMULATOR_STATE`); `admin` subcommands create clusters and drive
//! workloads. `-h <address>` (nodetool) or the host argument (cqlsh) selects the node.
//!
//! ```text
//! E=target/debug/cassandra-emulator S=/tmp/cluster
//! $E --state $S admin init --version 4.1 --dc dc1:3 --data-dirs 2 --uuid-ids --incremental-backups
//! $E --state $S admin create-keyspace shop --rf 3
//! $E --state $S admin create-table shop.users --columns 'id int, email text' --pk id
//! $E --state $S admin create-index shop.users users_email email
//! $E --state $S admin write-sstables shop.users --count 10000 --size 819200   # 10,000 SSTables, ~8 GiB per node
//! $E --state $S admin insert shop.users --rows 1000                            # memtable, flushed by snapshot/flush
//! $E --state $S admin commitlog 127.0.0.1 --segments 4                         # runs archive_command on each switch
//! $E --state $S nodetool -h 127.0.0.2 snapshot -t daily shop
//! $E --state $S admin stop 127.0.0.3
//! ```
//!
//! Deliberate simplifications (none visible to a backup agent's code paths): SSTable content is
//! random bytes with a real TOC, Digest and a minimal Statistics.db (or a real SSTable's bytes);
//! import does not rewrite the level or repair fields of Statistics.db; commit-log replay records
//! the replayed segments instead of applying mutations; JMX/CQL ports are not opened (the node
//! is chosen by address).
//!
//! # Layout
//! - [`state`]: the persistent cluster state and its lock.
//! - [`files`]: generating and copying SSTables, commit-log segments.
//! - [`ops`]: what a node does (flush, snapshot, import, …).
//! - [`format`](mod@format): byte-exact output formats per version.
//! - [`nodetool`], [`cqlsh`]: the command-line front ends.
//! - [`admin`]: workload commands for tests and benchmarks.
//! - this module: creating clusters and schema.

pub mod admin;
pub mod cqlsh;
pub mod files;
pub mod format;
pub mod nodetool;
pub mod ops;
pub mod state;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use cassette_common::datadir::{self, TableId};

pub use state::{Cluster, Index, IndexKind, Keyspace, Node, StateDir, Table, Version};

/// What a command printed and its exit code.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Exit code.
    pub code: i32,
}

/// The shape of a new emulated cluster.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Release line.
    pub version: Version,
    /// Cluster name.
    pub cluster_name: String,
    /// Datacenters and their node counts.
    pub datacenters: Vec<(String, usize)>,
    /// Data directories per node (JBOD when > 1).
    pub data_dirs: usize,
    /// Tokens per node (default: the version's `num_tokens`).
    pub num_tokens: Option<usize>,
    /// 4.1+ UUID SSTable ids.
    pub uuid_sstable_ids: bool,
    /// 5.0 bti format.
    pub bti: bool,
    /// 5.0 `storage_compatibility_mode: NONE` (`oa` SSTables, v8 commit logs).
    pub storage_compat_none: bool,
    /// `incremental_backups: true`.
    pub incremental_backups: bool,
    /// Put `system`/`system_schema` in a separate `local_system_data_file_directory` (4.0+).
    pub local_system_dir: bool,
    /// JMX credentials required by every node.
    pub jmx_credentials: Option<(String, String)>,
    /// CQL credentials required by every node.
    pub cql_credentials: Option<(String, String)>,
    /// Seed for ids and content.
    pub seed: u64,
}

impl ClusterSpec {
    /// One node, one data directory, defaults of `version`.
    pub fn single(version: Version) -> Self {
        Self {
            version,
            cluster_name: "Test Cluster".into(),
            datacenters: vec![("datacenter1".into(), 1)],
            data_dirs: 1,
            num_tokens: None,
            uuid_sstable_ids: false,
            bti: false,
            storage_compat_none: false,
            incremental_backups: false,
            local_system_dir: false,
            jmx_credentials: None,
            cql_credentials: None,
            seed: 0x5eed,
        }
    }
}

/// System tables every emulated node has (a representative subset).
fn system_tables(v: Version) -> Vec<(&'static str, &'static str)> {
    let mut t = vec![
        ("system", "local"),
        ("system", "compaction_history"),
        ("system_schema", "keyspaces"),
        ("system_schema", "tables"),
        ("system_schema", "columns"),
        ("system_auth", "roles"),
        ("system_distributed", "repair_history"),
        ("system_traces", "sessions"),
    ];
    t.push(if v == Version::V311 { ("system", "peers") } else { ("system", "peers_v2") });
    t
}

/// Creates a cluster in `state_dir` (which must be empty or absent): node directories under
/// `state_dir/nodes/<address>/`, system keyspaces with one SSTable per system table.
pub fn create_cluster(state_dir: &Path, spec: &ClusterSpec) -> anyhow::Result<Cluster> {
    if state_dir.join("cluster.json").exists() {
        bail!("{} already holds an emulated cluster", state_dir.display());
    }
    std::fs::create_dir_all(state_dir)?;
    let mut c = Cluster {
        cluster_name: spec.cluster_name.clone(),
        version: spec.version,
        partitioner: "org.apache.cassandra.dht.Murmur3Partitioner".into(),
        // SimpleSnitch knows only `datacenter1`; any other datacenter name needs a snitch that
        // reads it (the harness's real nodes use GossipingPropertyFileSnitch).
        snitch: if spec.datacenters.len() > 1 || spec.datacenters.iter().any(|(d, _)| d != "datacenter1") {
            "org.apache.cassandra.locator.GossipingPropertyFileSnitch".into()
        } else {
            "org.apache.cassandra.locator.SimpleSnitch".into()
        },
        schema_version: String::new(),
        keyspaces: BTreeMap::new(),
        nodes: Vec::new(),
        clock_offset_ms: 0,
        seed: spec.seed,
    };
    c.bump_schema();
    let total: usize = spec.datacenters.iter().map(|(_, n)| n).sum();
    if total == 0 || total > 250 {
        bail!("a cluster needs 1 to 250 nodes, not {total}");
    }
    let num_tokens = spec.num_tokens.unwrap_or(spec.version.default_num_tokens()).max(1);
    let now = c.now_ms();
    let mut i = 0usize;
    for (dc, count) in &spec.datacenters {
        for r in 0..*count {
            i += 1;
            let address = format!("127.0.0.{i}");
            let base = state_dir.join("nodes").join(&address);
            let data_dirs: Vec<_> = (1..=spec.data_dirs.max(1)).map(|d| base.join(format!("data{d}"))).collect();
            for d in &data_dirs {
                std::fs::create_dir_all(d)?;
            }
            let local_system = (spec.local_system_dir && spec.version >= Version::V40).then(|| base.join("system"));
            if let Some(d) = &local_system {
                std::fs::create_dir_all(d)?;
            }
            let (commitlog_dir, conf_dir) = (base.join("commitlog"), base.join("conf"));
            std::fs::create_dir_all(&commitlog_dir)?;
            std::fs::create_dir_all(&conf_dir)?;
            // Tokens interleave across nodes: node i owns every total-th slot.
            let step = (u64::MAX as u128 + 1) / (total as u128 * num_tokens as u128);
            let tokens = (0..num_tokens)
                .map(|j| {
                    let slot = (j * total + (i - 1)) as u128;
                    (i64::MIN as i128 + (slot * step) as i128).to_string()
                })
                .collect();
            let (a, b) = (c.next_seed(), c.next_seed());
            c.nodes.push(Node {
                address,
                host_id: state::uuid_from(a, b, 4),
                datacenter: dc.clone(),
                rack: format!("rack{}", r % 3 + 1),
                tokens,
                up: true,
                data_dirs,
                local_system_data_dir: local_system,
                commitlog_dir,
                conf_dir,
                incremental_backups: spec.incremental_backups,
                uuid_sstable_ids: spec.uuid_sstable_ids,
                bti: spec.bti,
                storage_compat_none: spec.storage_compat_none,
                auto_snapshot: true,
                jmx_credentials: spec.jmx_credentials.clone(),
                cql_credentials: spec.cql_credentials.clone(),
                started_at_ms: now,
                next_sequence: BTreeMap::new(),
                live: BTreeMap::new(),
                memtables: BTreeMap::new(),
                next_segment_id: now,
                active_segment: None,
                closed_segments: BTreeMap::new(),
                replayed_segments: Vec::new(),
                snapshot_expiry: BTreeMap::new(),
                faults: Default::default(),
            });
        }
    }
    let dc_rf: BTreeMap<String, u32> = spec.datacenters.iter().map(|(d, n)| (d.clone(), (*n as u32).min(3))).collect();
    for (ks, t) in system_tables(spec.version) {
        let replication = match ks {
            "system" | "system_schema" => BTreeMap::from([("LocalStrategy".to_owned(), 1)]),
            "system_auth" => BTreeMap::from([("replication_factor".to_owned(), 1)]),
            // As Cassandra creates them (SimpleStrategy 3 and 2, seen on 4.0.19, 4.1.10, 5.0.9).
            "system_distributed" => BTreeMap::from([("replication_factor".to_owned(), 3)]),
            "system_traces" => BTreeMap::from([("replication_factor".to_owned(), 2)]),
            _ => dc_rf.clone(),
        };
        let k = c.keyspaces.entry(ks.to_owned()).or_insert(Keyspace { replication, tables: BTreeMap::new() });
        k.tables.insert(
            t.to_owned(),
            Table {
                id: TableId::for_system_table(ks, t).to_uuid_string(),
                columns: vec![("key".into(), "text".into()), ("value".into(), "blob".into())],
                partition_key: vec!["key".into()],
                clustering: vec![],
                indexes: vec![],
            },
        );
    }
    let ts = now * 1000;
    for node in 0..c.nodes.len() {
        for (ks, t) in system_tables(spec.version) {
            ops::create_table_dirs(&c, node, ks, t)?;
            ops::write_sstable(&mut c, node, ks, t, &ops::Source::Generated(2048), ts, ts, false)?;
        }
    }
    StateDir::new(state_dir).save(&c)?;
    Ok(c)
}

/// Parses a column list `pk int, ck text, v blob`.
pub fn parse_columns(s: &str) -> anyhow::Result<Vec<(String, String)>> {
    s.split(',')
        .map(|c| {
            let mut it = c.split_whitespace();
            match (it.next(), it.next()) {
                (Some(n), Some(t)) if datadir::is_valid_name(n) => Ok((n.to_owned(), t.to_owned())),
                _ => bail!("column {c:?} is not '<name> <type>'"),
            }
        })
        .collect()
}

/// Creates a keyspace (NetworkTopologyStrategy with `rf` in every datacenter).
pub fn create_keyspace(c: &mut Cluster, name: &str, rf: u32) -> anyhow::Result<()> {
    if !datadir::is_valid_name(name) {
        bail!("{name:?} is not a valid keyspace name");
    }
    if c.keyspaces.contains_key(name) {
        bail!("keyspace {name} already exists");
    }
    let dcs: BTreeMap<String, u32> = c.nodes.iter().map(|n| (n.datacenter.clone(), rf)).collect();
    c.keyspaces.insert(name.to_owned(), Keyspace { replication: dcs, tables: BTreeMap::new() });
    c.bump_schema();
    Ok(())
}

/// Creates a table on every node (directories in every data root), with the given id or a new one.
pub fn create_table(
    c: &mut Cluster,
    keyspace: &str,
    name: &str,
    columns: Vec<(String, String)>,
    partition_key: Vec<String>,
    clustering: Vec<String>,
    id: Option<TableId>,
) -> anyhow::Result<TableId> {
    if !datadir::is_valid_name(name) {
        bail!("{name:?} is not a valid table name");
    }
    let id = match id {
        Some(id) => id,
        None => ops::new_table_id(c),
    };
    for k in partition_key.iter().chain(&clustering) {
        if !columns.iter().any(|(c, _)| c == k) {
            bail!("key column {k} is not among the columns");
        }
    }
    let ks = c.keyspaces.get_mut(keyspace).with_context(|| format!("no keyspace {keyspace}"))?;
    if ks.tables.contains_key(name) {
        bail!("table {keyspace}.{name} already exists");
    }
    ks.tables.insert(
        name.to_owned(),
        Table { id: id.to_uuid_string(), columns, partition_key, clustering, indexes: Vec::new() },
    );
    c.bump_schema();
    for node in 0..c.nodes.len() {
        ops::create_table_dirs(c, node, keyspace, name)?;
    }
    Ok(id)
}

/// Adds a secondary index to a table (native: a `.<index>` directory on every node).
pub fn create_index(c: &mut Cluster, keyspace: &str, table: &str, index: Index) -> anyhow::Result<()> {
    if index.kind == IndexKind::Sai && c.version < Version::V50 {
        bail!("SAI needs Cassandra 5.0");
    }
    let t = c
        .keyspaces
        .get_mut(keyspace)
        .and_then(|k| k.tables.get_mut(table))
        .with_context(|| format!("no table {keyspace}.{table}"))?;
    t.indexes.push(index);
    c.bump_schema();
    for node in 0..c.nodes.len() {
        ops::create_table_dirs(c, node, keyspace, table)?;
    }
    Ok(())
}
