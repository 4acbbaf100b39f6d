//! What an emulated node does: flush, snapshot, clear, import, refresh, compact, truncate,
//! commit-log segments and archiving. Shared by the `nodetool`, `cqlsh` and admin front ends.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use anyhow::Context;
use cassette_common::datadir::{self, KeyspaceClass, TableId};
use cassette_common::sstable::digest::Digest;
use cassette_common::sstable::toc::Toc;
use cassette_common::sstable::{SstableId, SstableName};

use super::files::{self, GenSpec};
use super::format;
use super::state::{Cluster, IndexKind, LiveSstable, Memtable, Version};

/// A failure as nodetool reports it.
#[derive(Debug)]
pub enum Fail {
    /// Bad command line: exit 1, `nodetool: <msg>` + help hint.
    Usage(String),
    /// The server refused or failed: exit 2, `error: <msg>` + stack trace.
    Server(String),
}

impl From<anyhow::Error> for Fail {
    fn from(e: anyhow::Error) -> Self {
        Fail::Server(format!("{e:#}"))
    }
}

impl From<std::io::Error> for Fail {
    fn from(e: std::io::Error) -> Self {
        Fail::Server(e.to_string())
    }
}

/// Result of an operation.
pub type OpResult<T> = Result<T, Fail>;

/// The relative store directory of a table or of one of its native indexes: `ks/t-id[/.idx]`.
pub fn store_key(keyspace: &str, table_dir: &str, index: Option<&str>) -> String {
    match index {
        Some(i) => format!("{keyspace}/{table_dir}/.{i}"),
        None => format!("{keyspace}/{table_dir}"),
    }
}

/// `(keyspace, table name, table dir, native index names)` of every table, sorted.
pub fn tables(c: &Cluster) -> Vec<(String, String, String, Vec<String>)> {
    let mut out = Vec::new();
    for (ks, k) in &c.keyspaces {
        for (name, t) in &k.tables {
            let idx = t.indexes.iter().filter(|i| i.kind == IndexKind::Native).map(|i| i.name.clone()).collect();
            out.push((ks.clone(), name.clone(), t.dir_name(name), idx));
        }
    }
    out
}

/// The table directories of `keyspace.table` in every root of a node.
pub fn create_table_dirs(c: &Cluster, node: usize, keyspace: &str, table: &str) -> anyhow::Result<()> {
    let t = c.table(keyspace, table).context("no such table")?;
    let n = &c.nodes[node];
    let roots = if KeyspaceClass::of(keyspace) == KeyspaceClass::LocalSystem {
        vec![n.roots()[n.root_for(keyspace, 0)].clone()]
    } else {
        n.data_dirs.clone()
    };
    for r in roots {
        let d = r.join(keyspace).join(t.dir_name(table));
        std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
        for i in t.indexes.iter().filter(|i| i.kind == IndexKind::Native) {
            std::fs::create_dir_all(d.join(format!(".{}", i.name)))?;
        }
    }
    Ok(())
}

fn sstable_version(c: &Cluster, node: usize) -> (&'static str, &'static str) {
    let n = &c.nodes[node];
    let bti = n.bti && c.version == Version::V50;
    (c.version.sstable_version(bti, n.storage_compat_none), if bti { "bti" } else { "big" })
}

/// Where a new SSTable of `keyspace` goes, and its name.
fn new_sstable(c: &mut Cluster, node: usize, keyspace: &str, store: &str, now_ms: i64) -> (usize, SstableName) {
    let id = files::next_id(c, node, store, now_ms);
    let n = match &id {
        SstableId::Sequence(s) => *s,
        SstableId::Uuid(_) => c.next_seed(),
    };
    let root = c.nodes[node].root_for(keyspace, n);
    let (version, format) = sstable_version(c, node);
    let name = SstableName { version: version.into(), id, format: format.into(), component: "Data.db".into() };
    (root, name)
}

/// Adds a written SSTable to the live set and, with incremental backups, links it into `backups/`.
fn go_live(c: &mut Cluster, node: usize, store: &str, root: usize, prefix: &str) -> anyhow::Result<()> {
    let n = &mut c.nodes[node];
    n.live.entry(store.to_owned()).or_default().insert(LiveSstable { root, prefix: prefix.to_owned() });
    if n.incremental_backups {
        let roots = n.roots();
        let dir = roots[root].join(store);
        // backups/ sits in the table directory; index SSTables go to backups/.<idx>/.
        let backups = match store.rsplit_once("/.") {
            Some((table_dir, idx)) => roots[root].join(table_dir).join(datadir::BACKUPS_DIR).join(format!(".{idx}")),
            None => dir.join(datadir::BACKUPS_DIR),
        };
        std::fs::create_dir_all(&backups).with_context(|| format!("create {}", backups.display()))?;
        files::link_sstable(&dir, &backups, prefix)?;
    }
    Ok(())
}

/// How to make the bytes of new SSTables.
#[derive(Debug, Clone)]
pub enum Source {
    /// Generated content of this many bytes of Data.db.
    Generated(u64),
    /// A copy of a real SSTable: directory and prefix (`.../legacy_nb_simple`, `nb-1-big`).
    Fixture(PathBuf, String),
}

/// Writes one new SSTable for a table (and one per native index), as a flush would.
#[allow(clippy::too_many_arguments)]
pub fn write_sstable(
    c: &mut Cluster,
    node: usize,
    keyspace: &str,
    table: &str,
    source: &Source,
    min_ts: i64,
    max_ts: i64,
    leave_txn_log: bool,
) -> anyhow::Result<Vec<String>> {
    let t = c.table(keyspace, table).with_context(|| format!("no table {keyspace}.{table}"))?.clone();
    let tdir = t.dir_name(table);
    let now = c.now_ms();
    let partitioner = c.partitioner.clone();
    let mut written = Vec::new();
    let mut stores: Vec<Option<String>> = vec![None];
    stores.extend(t.indexes.iter().filter(|i| i.kind == IndexKind::Native).map(|i| Some(i.name.clone())));
    for idx in stores {
        let store = store_key(keyspace, &tdir, idx.as_deref());
        let (root, mut name) = new_sstable(c, node, keyspace, &store, now);
        if let Source::Fixture(_, prefix) = source {
            // The bytes are of the fixture's version and format: the name must say so.
            let real =
                SstableName::parse(&format!("{prefix}-Data.db")).with_context(|| format!("fixture prefix {prefix}"))?;
            name.version = real.version;
            name.format = real.format;
        }
        let dir = c.nodes[node].roots()[root].join(&store);
        std::fs::create_dir_all(&dir)?;
        let txn = dir.join(format!(
            "{}{}_txn_flush_{}.log",
            if name.format == "big" { String::new() } else { format!("{}-", name.format) },
            name.version,
            super::state::uuid_from(c.next_seed(), c.next_seed(), 1)
        ));
        std::fs::write(&txn, b"")?;
        match source {
            Source::Generated(size) => {
                let extra = if idx.is_none() { files::extra_components(&t) } else { Vec::new() };
                let seed = c.next_seed();
                let size = if idx.is_some() { (*size / 8).max(64) } else { *size };
                files::write_generated(
                    &dir,
                    &name,
                    &GenSpec {
                        data_size: size,
                        seed,
                        min_timestamp: min_ts,
                        max_timestamp: max_ts,
                        partitioner: &partitioner,
                        extra_components: extra,
                    },
                )?;
            }
            Source::Fixture(src, prefix) => files::copy_sstable(src, prefix, &dir, &name, Some((min_ts, max_ts)))?,
        }
        if leave_txn_log {
            // An in-flight flush: files present, not live yet, txn log still there.
            written.push(format!("{store}/{}", name.sstable_prefix()));
            continue;
        }
        std::fs::remove_file(&txn)?;
        go_live(c, node, &store, root, &name.sstable_prefix())?;
        written.push(format!("{store}/{}", name.sstable_prefix()));
    }
    Ok(written)
}

/// Records writes in a table's memtable (flushed by `nodetool flush`, snapshots, truncate).
pub fn insert(c: &mut Cluster, node: usize, keyspace: &str, table: &str, rows: u64) -> anyhow::Result<()> {
    c.table(keyspace, table).with_context(|| format!("no table {keyspace}.{table}"))?;
    let ts = c.now_ms() * 1000;
    let m = c.nodes[node].memtables.entry(format!("{keyspace}.{table}")).or_insert(Memtable {
        rows: 0,
        min_timestamp: ts,
        max_timestamp: ts,
    });
    m.rows += rows;
    m.min_timestamp = m.min_timestamp.min(ts);
    m.max_timestamp = m.max_timestamp.max(ts);
    Ok(())
}

/// Flushes one table's memtable into a new SSTable; nothing when it is clean.
pub fn flush_table(c: &mut Cluster, node: usize, keyspace: &str, table: &str) -> anyhow::Result<()> {
    let Some(m) = c.nodes[node].memtables.remove(&format!("{keyspace}.{table}")) else { return Ok(()) };
    if m.rows == 0 {
        return Ok(());
    }
    write_sstable(
        c,
        node,
        keyspace,
        table,
        &Source::Generated((m.rows * 64).max(128)),
        m.min_timestamp,
        m.max_timestamp,
        false,
    )?;
    Ok(())
}

/// `nodetool flush [ks [tables]]`. Flushing everything also discards archived commit-log segments.
pub fn flush(c: &mut Cluster, node: usize, keyspace: Option<&str>, tables_: &[String]) -> OpResult<()> {
    if let Some(ks) = keyspace {
        let k = c.keyspaces.get(ks).ok_or_else(|| Fail::Server(format!("Keyspace {ks} does not exist")))?;
        for t in tables_ {
            if !k.tables.contains_key(t) {
                return Err(Fail::Server(format!("Unknown keyspace/cf pair ({ks}.{t})")));
            }
        }
    }
    let all: Vec<(String, String)> = tables(c)
        .into_iter()
        .filter(|(ks, t, _, _)| keyspace.is_none_or(|k| k == ks) && (tables_.is_empty() || tables_.contains(t)))
        .map(|(ks, t, _, _)| (ks, t))
        .collect();
    for (ks, t) in all {
        flush_table(c, node, &ks, &t)?;
    }
    if keyspace.is_none() {
        discard_segments(c, node)?;
    }
    Ok(())
}

/// Snapshot targets: every keyspace, keyspaces, or `ks.table` entities.
#[derive(Debug, Clone)]
pub enum Entities {
    /// All keyspaces (system ones too).
    All,
    /// Keyspaces.
    Keyspaces(Vec<String>),
    /// `(keyspace, table)`.
    Tables(Vec<(String, String)>),
}

fn snapshot_exists(c: &Cluster, node: usize, keyspace: &str, table: Option<&str>, tag: &str) -> bool {
    let n = &c.nodes[node];
    tables(c).iter().filter(|(ks, t, _, _)| ks == keyspace && table.is_none_or(|x| x == t)).any(|(ks, _, tdir, _)| {
        n.roots().iter().any(|r| r.join(ks).join(tdir).join(datadir::SNAPSHOTS_DIR).join(tag).exists())
    })
}

/// `nodetool snapshot`: hard links per data root, manifest and schema in one root.
pub fn snapshot(
    c: &mut Cluster,
    node: usize,
    tag: &str,
    entities: &Entities,
    skip_flush: bool,
    ttl_ms: Option<i64>,
    ephemeral: bool,
) -> OpResult<()> {
    if tag.is_empty() {
        return Err(Fail::Server("You must supply a snapshot name.".into()));
    }
    let targets: Vec<(String, String)> = match entities {
        Entities::All => tables(c).into_iter().map(|(ks, t, _, _)| (ks, t)).collect(),
        Entities::Keyspaces(kss) => {
            let mut out = Vec::new();
            for ks in kss {
                let k = c.keyspaces.get(ks).ok_or_else(|| Fail::Server(format!("Keyspace {ks} does not exist")))?;
                if snapshot_exists(c, node, ks, None, tag) {
                    return Err(Fail::Server(format!("Snapshot {tag} already exists.")));
                }
                out.extend(k.tables.keys().map(|t| (ks.clone(), t.clone())));
            }
            out
        }
        Entities::Tables(ts) => {
            for (ks, t) in ts {
                if c.table(ks, t).is_none() {
                    return Err(Fail::Server(format!("Table {t} does not exist in keyspace {ks}")));
                }
                if snapshot_exists(c, node, ks, Some(t), tag) {
                    return Err(Fail::Server(format!("Snapshot {tag} already exists.")));
                }
            }
            ts.clone()
        }
    };
    if let Entities::All = entities {
        let kss: BTreeSet<&String> = c.keyspaces.keys().collect();
        if kss.iter().any(|ks| snapshot_exists(c, node, ks, None, tag)) {
            return Err(Fail::Server(format!("Snapshot {tag} already exists.")));
        }
    }
    let created = c.now_ms();
    for (ks, t) in &targets {
        if !skip_flush {
            flush_table(c, node, ks, t)?;
        }
        snapshot_table(c, node, ks, t, tag, created, ttl_ms.map(|ms| created + ms), ephemeral)?;
    }
    if let Some(ms) = ttl_ms {
        c.nodes[node].snapshot_expiry.insert(tag.to_owned(), created + ms);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn snapshot_table(
    c: &mut Cluster,
    node: usize,
    ks: &str,
    t: &str,
    tag: &str,
    created: i64,
    expires: Option<i64>,
    ephemeral: bool,
) -> anyhow::Result<()> {
    let table = c.table(ks, t).context("table vanished")?.clone();
    let tdir = table.dir_name(t);
    let roots = c.nodes[node].roots();
    let mut manifest_files = Vec::new();
    let mut stores: Vec<Option<String>> = vec![None];
    stores.extend(table.indexes.iter().filter(|i| i.kind == IndexKind::Native).map(|i| Some(i.name.clone())));
    let mut used_roots = BTreeSet::new();
    let mut made_dirs = BTreeSet::new();
    for idx in &stores {
        let store = store_key(ks, &tdir, idx.as_deref());
        let live: Vec<LiveSstable> =
            c.nodes[node].live.get(&store).map(|s| s.iter().cloned().collect()).unwrap_or_default();
        for l in live {
            let src = roots[l.root].join(&store);
            let mut dst = roots[l.root].join(ks).join(&tdir).join(datadir::SNAPSHOTS_DIR).join(tag);
            if let Some(i) = idx {
                dst = dst.join(format!(".{i}"));
            }
            if !made_dirs.contains(&dst) {
                std::fs::create_dir_all(&dst).with_context(|| format!("create {}", dst.display()))?;
                made_dirs.insert(dst.clone());
            }
            files::link_sstable(&src, &dst, &l.prefix)?;
            used_roots.insert(l.root);
            let data = format!("{}-Data.db", l.prefix);
            manifest_files.push(match idx {
                Some(i) => format!(".{i}/{data}"),
                None => data,
            });
        }
    }
    // One root gets manifest.json and schema.cql: Cassandra picks it by free space, at random.
    let candidates: Vec<usize> = if KeyspaceClass::of(ks) == KeyspaceClass::LocalSystem {
        vec![c.nodes[node].root_for(ks, 0)]
    } else {
        (0..c.nodes[node].data_dirs.len()).collect()
    };
    let pick = candidates[(fxhash(&format!("{tag}/{ks}/{t}")) % candidates.len() as u64) as usize];
    let dir = roots[pick].join(ks).join(&tdir).join(datadir::SNAPSHOTS_DIR).join(tag);
    std::fs::create_dir_all(&dir)?;
    let v = c.version;
    // 5.0 records ephemerality in the manifest; older versions drop a marker file.
    std::fs::write(
        dir.join(datadir::SNAPSHOT_MANIFEST),
        format::manifest_json(v, &manifest_files, created, expires, ephemeral),
    )?;
    if ephemeral && v < Version::V50 {
        std::fs::write(dir.join(datadir::EPHEMERAL_MARKER), b"")?;
    }
    if KeyspaceClass::of(ks) == KeyspaceClass::User {
        std::fs::write(dir.join(datadir::SNAPSHOT_SCHEMA), format::schema_cql(v, ks, t, &table))?;
    }
    Ok(())
}

fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// One row of listsnapshots, with raw numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRow {
    /// Tag.
    pub tag: String,
    /// Keyspace.
    pub keyspace: String,
    /// Table.
    pub table: String,
    /// True size (bytes).
    pub true_size: u64,
    /// Size on disk (bytes).
    pub size_on_disk: u64,
    /// Creation time (ms).
    pub created_ms: Option<i64>,
    /// Expiry (ms).
    pub expires_ms: Option<i64>,
    /// Ephemeral.
    pub ephemeral: bool,
}

/// Every (tag, keyspace, table) snapshot on a node, sorted.
pub fn snapshot_rows(c: &Cluster, node: usize) -> Vec<SnapshotRow> {
    let n = &c.nodes[node];
    let mut rows: BTreeMap<(String, String, String), SnapshotRow> = BTreeMap::new();
    for (ks, t, tdir, _) in tables(c) {
        for root in n.roots() {
            let snaps = root.join(&ks).join(&tdir).join(datadir::SNAPSHOTS_DIR);
            for e in std::fs::read_dir(&snaps).into_iter().flatten().flatten() {
                let Some(tag) = e.file_name().to_str().map(str::to_owned) else { continue };
                let row = rows.entry((tag.clone(), ks.clone(), t.clone())).or_insert(SnapshotRow {
                    tag,
                    keyspace: ks.clone(),
                    table: t.clone(),
                    true_size: 0,
                    size_on_disk: 0,
                    created_ms: None,
                    expires_ms: None,
                    ephemeral: false,
                });
                account(c.version, &e.path(), &root.join(&ks).join(&tdir), row);
            }
        }
    }
    rows.into_values().collect()
}

fn account(v: Version, snap_dir: &Path, live_dir: &Path, row: &mut SnapshotRow) {
    for e in std::fs::read_dir(snap_dir).into_iter().flatten().flatten() {
        let path = e.path();
        let Some(name) = e.file_name().to_str().map(str::to_owned) else { continue };
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            account(v, &path, &live_dir.join(&name), row);
            continue;
        }
        let size = e.metadata().map(|m| m.len()).unwrap_or(0);
        row.size_on_disk += size;
        match datadir::FileKind::of(&name) {
            datadir::FileKind::SnapshotManifest => {
                if let Ok(m) = std::fs::read(&path)
                    && let Ok(j) = serde_json::from_slice::<serde_json::Value>(&m)
                {
                    let ms = |k: &str| {
                        j.get(k)
                            .and_then(|x| x.as_str())
                            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                            .map(|d| d.timestamp_millis())
                    };
                    row.created_ms = ms("created_at");
                    row.expires_ms = ms("expires_at");
                    row.ephemeral |= j.get("ephemeral").and_then(|x| x.as_bool()).unwrap_or(false);
                }
                if v >= Version::V41 {
                    row.true_size += size;
                }
            }
            datadir::FileKind::SnapshotSchema => {
                if v >= Version::V41 {
                    row.true_size += size;
                }
            }
            datadir::FileKind::EphemeralMarker => row.ephemeral = true,
            _ => {
                if !live_dir.join(&name).exists() {
                    row.true_size += size;
                }
            }
        }
        if row.created_ms.is_none() && v >= Version::V41 {
            // 4.1+ falls back to the directory's mtime when the manifest has no creation time.
            row.created_ms = std::fs::metadata(snap_dir)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as i64);
        }
    }
}

/// Removes snapshots whose TTL has passed (4.1+'s periodic cleanup).
pub fn expire_snapshots(c: &mut Cluster, node: usize) -> anyhow::Result<()> {
    let now = c.now_ms();
    let expired: Vec<String> =
        c.nodes[node].snapshot_expiry.iter().filter(|(_, e)| **e <= now).map(|(t, _)| t.clone()).collect();
    for tag in expired {
        clear(c, node, Some(&tag), &[], None, true)?;
        c.nodes[node].snapshot_expiry.remove(&tag);
    }
    Ok(())
}

/// Deletes `snapshots/<tag>` (or every snapshot) in the given keyspaces (or all), optionally only
/// those created before `older_than_ms`. 5.0 keeps ephemeral snapshots unless `force`.
pub fn clear(
    c: &mut Cluster,
    node: usize,
    tag: Option<&str>,
    keyspaces: &[String],
    older_than_ms: Option<i64>,
    force: bool,
) -> anyhow::Result<()> {
    // Sizes and manifests are read only when a manifest decides (5.0's ephemeral flag, --older-than):
    // a plain clear by tag unlinks, as Cassandra does, without a stat per file.
    let needs_rows = older_than_ms.is_some() || (c.version == Version::V50 && !force);
    let rows = if needs_rows { snapshot_rows(c, node) } else { Vec::new() };
    let n = &c.nodes[node];
    for (ks, t, tdir, _) in tables(c) {
        if !keyspaces.is_empty() && !keyspaces.contains(&ks) {
            continue;
        }
        for root in n.roots() {
            let snaps = root.join(&ks).join(&tdir).join(datadir::SNAPSHOTS_DIR);
            for e in std::fs::read_dir(&snaps).into_iter().flatten().flatten() {
                let Some(name) = e.file_name().to_str().map(str::to_owned) else { continue };
                if tag.is_some_and(|x| x != name) {
                    continue;
                }
                let row = rows.iter().find(|r| r.tag == name && r.keyspace == ks && r.table == t);
                if c.version == Version::V50 && !force && row.is_some_and(|r| r.ephemeral) {
                    continue;
                }
                if let Some(limit) = older_than_ms
                    && row.and_then(|r| r.created_ms).is_none_or(|ms| ms >= limit)
                {
                    continue;
                }
                std::fs::remove_dir_all(e.path()).with_context(|| format!("remove {}", e.path().display()))?;
            }
        }
    }
    if tag.is_none() && older_than_ms.is_none() {
        c.nodes[node].snapshot_expiry.clear();
    } else if let Some(t) = tag {
        c.nodes[node].snapshot_expiry.remove(t);
    }
    Ok(())
}

/// Compacts a table's live SSTables into one new SSTable; the old files are deleted (snapshots
/// keep their hard links).
pub fn compact(c: &mut Cluster, node: usize, keyspace: &str, table: &str) -> anyhow::Result<()> {
    let t = c.table(keyspace, table).with_context(|| format!("no table {keyspace}.{table}"))?.clone();
    let store = store_key(keyspace, &t.dir_name(table), None);
    let live: Vec<LiveSstable> =
        c.nodes[node].live.get(&store).map(|s| s.iter().cloned().collect()).unwrap_or_default();
    if live.len() < 2 {
        return Ok(());
    }
    let roots = c.nodes[node].roots();
    let mut size = 0;
    let (mut min, mut max) = (i64::MAX, i64::MIN);
    for l in &live {
        let dir = roots[l.root].join(&store);
        size += std::fs::metadata(dir.join(format!("{}-Data.db", l.prefix))).map(|m| m.len()).unwrap_or(0);
        if let Ok(s) =
            cassette_common::sstable::statistics::Statistics::read(&dir.join(format!("{}-Statistics.db", l.prefix)))
        {
            min = min.min(s.min_timestamp);
            max = max.max(s.max_timestamp);
        }
    }
    if min > max {
        (min, max) = (0, 0);
    }
    // Compaction does not feed backups/: write the result without incremental backup links.
    let backups = std::mem::replace(&mut c.nodes[node].incremental_backups, false);
    let res = write_sstable(c, node, keyspace, table, &Source::Generated(size.max(128)), min, max, false);
    c.nodes[node].incremental_backups = backups;
    res?;
    for l in live {
        let dir = roots[l.root].join(&store);
        for f in files::component_files(&dir, &l.prefix) {
            std::fs::remove_file(dir.join(f))?;
        }
        if let Some(s) = c.nodes[node].live.get_mut(&store) {
            s.remove(&l);
        }
    }
    Ok(())
}

/// Options of `nodetool import`.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Skip verification.
    pub no_verify: bool,
    /// Hard-link or copy instead of moving.
    pub copy_data: bool,
    /// Extended verification (no effect beyond normal verification here).
    pub extended_verify: bool,
}

fn verify_sstable(dir: &Path, name: &SstableName, newest_major: char) -> Result<(), String> {
    if !name.readable_by(newest_major) {
        return Err(format!("{} is of version {}, which this node cannot read", name.sstable_prefix(), name.version));
    }
    let toc = Toc::read(&dir.join(name.sibling("TOC.txt"))).map_err(|e| e.to_string())?;
    let missing = toc.missing_in(dir, &name.sstable_prefix());
    if !missing.is_empty() {
        return Err(format!("{} lacks {}", name.sstable_prefix(), missing.join(", ")));
    }
    if toc.contains("Digest.crc32") {
        Digest::read(&dir.join(name.sibling("Digest.crc32")))
            .and_then(|d| d.verify(&dir.join(name.sibling("Data.db"))))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn newest_major(v: Version) -> char {
    match v {
        Version::V311 => 'm',
        Version::V40 | Version::V41 => 'n',
        Version::V50 => 'o',
    }
}

/// Moves (or links) the SSTables of `src` into the live table under new ids. Returns the
/// directories that failed.
fn import_dir(c: &mut Cluster, node: usize, ks: &str, t: &str, src: &Path, opts: &ImportOptions) -> Result<(), String> {
    let tdir = c.table(ks, t).map(|x| x.dir_name(t)).ok_or("table vanished")?;
    let store = store_key(ks, &tdir, None);
    let roots = c.nodes[node].roots();
    let live = c.nodes[node].live.get(&store).cloned().unwrap_or_default();
    let mut todo = Vec::new();
    for name in files::sstable_prefixes(src) {
        // Already live (importing from the table directory itself): skip.
        if live.iter().any(|l| roots[l.root].join(&store) == src && l.prefix == name.sstable_prefix()) {
            continue;
        }
        if !opts.no_verify {
            verify_sstable(src, &name, newest_major(c.version))?;
        }
        todo.push(name);
    }
    let now = c.now_ms();
    for name in todo {
        // Next id from the table's generator, looping until the Data.db name is free.
        let (root, new) = loop {
            let (root, new) = new_sstable(c, node, ks, &store, now);
            let new = SstableName { version: name.version.clone(), format: name.format.clone(), ..new };
            if !roots[root].join(&store).join(new.sibling("Data.db")).exists() {
                break (root, new);
            }
        };
        let dst = roots[root].join(&store);
        std::fs::create_dir_all(&dst).map_err(|e| e.to_string())?;
        for f in files::component_files(src, &name.sstable_prefix()) {
            let component = SstableName::parse(&f).map_err(|e| e.to_string())?.component;
            let to = dst.join(new.sibling(&component));
            let from = src.join(&f);
            let r = if opts.copy_data {
                std::fs::hard_link(&from, &to).or_else(|_| std::fs::copy(&from, &to).map(|_| ()))
            } else {
                // Across file systems (JBOD disks) a rename fails: copy and remove, as Files.move does.
                std::fs::rename(&from, &to).or_else(|e| {
                    if e.kind() == std::io::ErrorKind::CrossesDevices {
                        std::fs::copy(&from, &to).and_then(|_| std::fs::remove_file(&from))
                    } else {
                        Err(e)
                    }
                })
            };
            r.map_err(|e| format!("{}: {e}", from.display()))?;
        }
        go_live(c, node, &store, root, &new.sstable_prefix()).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `nodetool import`: returns the failed directories.
pub fn import(
    c: &mut Cluster,
    node: usize,
    ks: &str,
    t: &str,
    dirs: &[PathBuf],
    opts: &ImportOptions,
) -> OpResult<Vec<PathBuf>> {
    if c.table(ks, t).is_none() {
        return Err(Fail::Server(format!("Unknown keyspace/table {ks}.{t}")));
    }
    for d in dirs {
        if !d.is_dir() {
            return Err(Fail::Server(format!("Directory {} does not exist", d.display())));
        }
    }
    let mut failed = Vec::new();
    for d in dirs {
        if let Err(e) = import_dir(c, node, ks, t, d, opts) {
            eprintln!("emulator: import of {} failed: {e}", d.display());
            failed.push(d.clone());
        }
    }
    Ok(failed)
}

/// `nodetool refresh`: loads SSTables found in the table's own directories that are not live.
pub fn refresh(c: &mut Cluster, node: usize, ks: &str, t: &str) -> OpResult<()> {
    let tdir = c
        .table(ks, t)
        .map(|x| x.dir_name(t))
        .ok_or_else(|| Fail::Server(format!("Unknown keyspace/table {ks}.{t}")))?;
    let store = store_key(ks, &tdir, None);
    let roots = c.nodes[node].roots();
    for (root, root_dir) in roots.iter().enumerate() {
        let dir = root_dir.join(&store);
        let live = c.nodes[node].live.get(&store).cloned().unwrap_or_default();
        for name in files::sstable_prefixes(&dir) {
            if live.contains(&LiveSstable { root, prefix: name.sstable_prefix() }) {
                continue;
            }
            if c.version == Version::V311 {
                // 3.11 renames each new SSTable to the next generation in place.
                let now = c.now_ms();
                let id = files::next_id(c, node, &store, now);
                let new = SstableName { id, ..name.clone() };
                for f in files::component_files(&dir, &name.sstable_prefix()) {
                    let comp = SstableName::parse(&f).map(|n| n.component).unwrap_or_default();
                    std::fs::rename(dir.join(&f), dir.join(new.sibling(&comp)))?;
                }
                go_live(c, node, &store, root, &new.sstable_prefix())?;
            } else {
                import_dir(c, node, ks, t, &dir, &ImportOptions { no_verify: true, ..Default::default() })
                    .map_err(Fail::Server)?;
                break;
            }
        }
    }
    Ok(())
}

/// `TRUNCATE`: on every node, auto-snapshot `truncated-<ms>-<table>` (if enabled), then drop the
/// live SSTables.
pub fn truncate(c: &mut Cluster, ks: &str, t: &str) -> anyhow::Result<()> {
    clear_table(c, ks, t, "truncated")
}

/// `DROP TABLE`: like a truncate (a `dropped-<ms>-<table>` snapshot when auto_snapshot is on, the
/// live files removed), then the table leaves the schema; its directory stays with the snapshot.
pub fn drop_table(c: &mut Cluster, ks: &str, t: &str) -> anyhow::Result<()> {
    clear_table(c, ks, t, "dropped")?;
    if let Some(k) = c.keyspaces.get_mut(ks) {
        k.tables.remove(t);
    }
    c.bump_schema();
    Ok(())
}

fn clear_table(c: &mut Cluster, ks: &str, t: &str, why: &str) -> anyhow::Result<()> {
    let tdir = c.table(ks, t).map(|x| x.dir_name(t)).context("no table")?;
    let now = c.now_ms();
    for node in 0..c.nodes.len() {
        if c.nodes[node].auto_snapshot {
            let tag = format!("{why}-{now}-{t}");
            snapshot(c, node, &tag, &Entities::Tables(vec![(ks.into(), t.into())]), false, None, false)
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        } else {
            c.nodes[node].memtables.remove(&format!("{ks}.{t}"));
        }
        let roots = c.nodes[node].roots();
        let stores: Vec<String> = c.nodes[node]
            .live
            .keys()
            .filter(|k| *k == &store_key(ks, &tdir, None) || k.starts_with(&format!("{ks}/{tdir}/.")))
            .cloned()
            .collect();
        for store in stores {
            for l in c.nodes[node].live.remove(&store).unwrap_or_default() {
                let dir = roots[l.root].join(&store);
                for f in files::component_files(&dir, &l.prefix) {
                    std::fs::remove_file(dir.join(f))?;
                }
            }
        }
    }
    Ok(())
}

/// Bytes of live Data.db and other components on a node.
pub fn load(c: &Cluster, node: usize) -> u64 {
    let n = &c.nodes[node];
    let roots = n.roots();
    let mut total = 0;
    for (store, set) in &n.live {
        // One listing per directory: a file counts when its SSTable prefix is live there.
        let mut by_root: BTreeMap<usize, HashSet<&str>> = BTreeMap::new();
        for l in set {
            by_root.entry(l.root).or_default().insert(l.prefix.as_str());
        }
        for (root, prefixes) in by_root {
            for e in std::fs::read_dir(roots[root].join(store)).into_iter().flatten().flatten() {
                let name = e.file_name();
                let Some(name) = name.to_str() else { continue };
                let live = SstableName::parse(name).is_ok_and(|s| prefixes.contains(s.sstable_prefix().as_str()));
                if live && e.file_type().is_ok_and(|t| t.is_file()) {
                    total += e.metadata().map(|m| m.len()).unwrap_or(0);
                }
            }
        }
    }
    total
}

/// The `archive_command` of the node's `commitlog_archiving.properties`, if set.
pub fn archive_command(c: &Cluster, node: usize) -> Option<String> {
    archiving_properties(c, node).remove("archive_command")
}

/// Runs `archive_command` for a segment the way Cassandra does: `%path`/`%name` substituted,
/// split on single spaces, executed without a shell. Returns whether it succeeded.
pub fn archive(c: &Cluster, node: usize, segment: &Path) -> bool {
    let Some(cmd) = archive_command(c, node) else { return true };
    let name = segment.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let cmd = cmd.replace("%path", &segment.display().to_string()).replace("%name", name);
    let parts: Vec<&str> = cmd.split(' ').collect();
    let Some((prog, args)) = parts.split_first() else { return false };
    match std::process::Command::new(prog).args(args).status() {
        Ok(s) if s.success() => true,
        Ok(s) => {
            eprintln!("emulator: archive_command {cmd:?} exited with {s}");
            false
        }
        Err(e) => {
            eprintln!("emulator: archive_command {cmd:?}: {e}");
            false
        }
    }
}

/// Writes `count` commit-log segments: each new segment closes (and archives) the active one.
pub fn write_segments(c: &mut Cluster, node: usize, count: u32, size: u64) -> anyhow::Result<Vec<PathBuf>> {
    let version = c.version.commitlog_version(c.nodes[node].storage_compat_none);
    let dir = c.nodes[node].commitlog_dir.clone();
    let mut out = Vec::new();
    for _ in 0..count {
        close_active_segment(c, node)?;
        let id = c.nodes[node].next_segment_id;
        c.nodes[node].next_segment_id += 1;
        let p = files::write_segment(&dir, version, id, size)?;
        c.nodes[node].active_segment = p.file_name().and_then(|n| n.to_str()).map(str::to_owned);
        out.push(p);
    }
    Ok(out)
}

/// Closes the active segment and archives it.
pub fn close_active_segment(c: &mut Cluster, node: usize) -> anyhow::Result<()> {
    if let Some(active) = c.nodes[node].active_segment.take() {
        let path = c.nodes[node].commitlog_dir.join(&active);
        let ok = archive(c, node, &path);
        c.nodes[node].closed_segments.insert(active, ok);
    }
    Ok(())
}

/// Discards closed segments whose data is flushed: deleted if archived, left in place otherwise.
pub fn discard_segments(c: &mut Cluster, node: usize) -> anyhow::Result<()> {
    let dir = c.nodes[node].commitlog_dir.clone();
    let closed = std::mem::take(&mut c.nodes[node].closed_segments);
    for (name, archived) in closed {
        if archived {
            let _ = std::fs::remove_file(dir.join(&name));
        } else {
            eprintln!("emulator: {name} was not archived; it will be deleted by the archive script");
        }
    }
    Ok(())
}

/// `commitlog_archiving.properties` of a node: key → value (empty values dropped).
pub fn archiving_properties(c: &Cluster, node: usize) -> BTreeMap<String, String> {
    let text =
        std::fs::read_to_string(c.nodes[node].conf_dir.join("commitlog_archiving.properties")).unwrap_or_default();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(_, v)| !v.is_empty())
        .collect()
}

fn run_split(cmd: &str) -> bool {
    let parts: Vec<&str> = cmd.split(' ').collect();
    let Some((prog, args)) = parts.split_first() else { return false };
    std::process::Command::new(prog).args(args).status().map(|s| s.success()).unwrap_or(false)
}

/// Starts a stopped node: loads the SSTables on disk ([`load_sstables`]), then recovers its
/// commit log the way Cassandra does (research §4.3–4.4):
/// 1. every segment already in the commit-log directory goes to `archive_command` (errors logged);
/// 2. every file of each `restore_directories` entry whose header (and name, if it is a segment
///    name) is valid is copied in with `restore_command` (`%from`, `%to`) unless the target exists;
/// 3. all segments are replayed in id order (recorded in the state) and deleted;
/// 4. the segment id base moves past them; ephemeral snapshots are dropped.
pub fn start(c: &mut Cluster, node: usize) -> anyhow::Result<()> {
    use cassette_common::commitlog::{CommitLogHeader, CommitLogName};
    load_sstables(c, node)?;
    let now = c.now_ms();
    let dir = c.nodes[node].commitlog_dir.clone();
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        if e.file_name().to_str().and_then(CommitLogName::parse).is_some() {
            archive(c, node, &e.path());
        }
    }
    let props = archiving_properties(c, node);
    if let (Some(restore), Some(dirs)) = (props.get("restore_command"), props.get("restore_directories")) {
        for rdir in dirs.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            std::fs::create_dir_all(rdir).ok();
            for e in std::fs::read_dir(rdir).into_iter().flatten().flatten() {
                let from = e.path();
                let header = match CommitLogHeader::read(&from) {
                    Ok(h) => h,
                    Err(err) => anyhow::bail!("cannot restore {}: {err}", from.display()),
                };
                let to = dir.join(header.file_name());
                if to.exists() {
                    continue;
                }
                let cmd =
                    restore.replace("%from", &from.display().to_string()).replace("%to", &to.display().to_string());
                if !run_split(&cmd) {
                    anyhow::bail!("restore_command {cmd:?} failed");
                }
            }
        }
    }
    let mut segments: Vec<(i64, String)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            Some((CommitLogName::parse(&name)?.id, name))
        })
        .collect();
    segments.sort();
    let max_id = segments.last().map(|(id, _)| *id).unwrap_or(0);
    for (_, name) in &segments {
        std::fs::remove_file(dir.join(name)).with_context(|| format!("delete replayed segment {name}"))?;
    }
    let n = &mut c.nodes[node];
    n.replayed_segments = segments.into_iter().map(|(id, name)| (name, id)).collect();
    n.up = true;
    n.started_at_ms = now;
    n.next_segment_id = now.max(max_id + 1);
    n.active_segment = None;
    n.closed_segments.clear();
    let ephemeral: Vec<String> = snapshot_rows(c, node).into_iter().filter(|r| r.ephemeral).map(|r| r.tag).collect();
    for tag in ephemeral {
        clear(c, node, Some(&tag), &[], None, true)?;
    }
    Ok(())
}

/// Rebuilds a node's live sets from its data directories, as Cassandra does at startup: files
/// put in place while the node was down (an in-place restore) become live. Leftover transactions
/// are cleaned as Cassandra's `LogTransaction` does: in a directory with a transaction log, the
/// SSTables that were not live (being written when the node stopped) are deleted, then the logs
/// and temporary files go.
pub fn load_sstables(c: &mut Cluster, node: usize) -> anyhow::Result<()> {
    let roots = c.nodes[node].roots();
    let mut live: BTreeMap<String, BTreeSet<LiveSstable>> = BTreeMap::new();
    for (ks, _, tdir, indexes) in tables(c) {
        let stores = std::iter::once(None).chain(indexes.iter().map(|i| Some(i.as_str())));
        for idx in stores {
            let store = store_key(&ks, &tdir, idx);
            let before = c.nodes[node].live.get(&store).cloned().unwrap_or_default();
            for (root, root_dir) in roots.iter().enumerate() {
                let dir = root_dir.join(&store);
                let names: Vec<String> = std::fs::read_dir(&dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .collect();
                let unfinished = names.iter().any(|n| datadir::FileKind::of(n) == datadir::FileKind::TransactionLog);
                for n in &names {
                    if datadir::FileKind::of(n).is_ignored() {
                        std::fs::remove_file(dir.join(n))?;
                    }
                }
                for name in files::sstable_prefixes(&dir) {
                    let l = LiveSstable { root, prefix: name.sstable_prefix() };
                    if unfinished && !before.contains(&l) {
                        for f in files::component_files(&dir, &l.prefix) {
                            std::fs::remove_file(dir.join(f))?;
                        }
                        continue;
                    }
                    // The generation counter starts above every id on disk, as at Cassandra's startup.
                    if let SstableId::Sequence(n) = name.id {
                        let next = c.nodes[node].next_sequence.entry(store.clone()).or_insert(1);
                        *next = (*next).max(u32::try_from(n + 1).unwrap_or(u32::MAX));
                    }
                    live.entry(store.clone()).or_default().insert(l);
                }
            }
        }
    }
    c.nodes[node].live = live;
    Ok(())
}

/// A table id for a new table: a time-based (v1) UUID, as `TableId.generate()` makes.
pub fn new_table_id(c: &mut Cluster) -> TableId {
    let now_100ns = (c.now_ms() as u64) * 10_000 + 0x01b2_1dd2_1381_4000;
    let lo = c.next_seed();
    let hi = ((now_100ns & 0xffff_ffff) << 32)
        | (((now_100ns >> 32) & 0xffff) << 16)
        | 0x1000
        | ((now_100ns >> 48) & 0x0fff);
    super::state::uuid_from(hi, lo, 1).parse().unwrap_or(TableId::from_bytes([0; 16]))
}
