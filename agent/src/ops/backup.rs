//! Backup of one node, in four phases a coordinator can run one at a time:
//!
//! 1. [`snapshot`]: flush and snapshot the selected tables under a fresh tag
//!    `cassette-<backup id>` (with a TTL on 4.1+, so Cassandra clears it even if the agent dies).
//! 2. [`upload`]: read the snapshot's SSTables (the components each `TOC.txt` lists; temporary
//!    and transaction files never), store the blobs not stored yet, record each file under its
//!    live path and data-directory index.
//! 3. [`write_manifest`]: write the node manifest, only after every blob it names is stored.
//! 4. [`cleanup`]: clear the snapshot.
//!
//! [`run`] does all four and clears the snapshot whatever happens (unless asked to keep it).
//! Upload and manifest run under a backup lock ([`super::locks`]), so a removal running at the
//! same time cannot delete a blob this backup found stored and is about to reference.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cassette_common::datadir::FileKind;
use cassette_common::ids::{BackupId, BlobHash};
use cassette_common::layout;
use cassette_common::manifest::{FileEntry, NODE_MANIFEST_FORMAT, NodeInfo, NodeManifest, TableEntry};
use cassette_common::sstable::toc::Toc;
use cassette_common::units::Rate;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::catalog;
use super::locks::{LockError, LockKind, RepoLock};
use super::{EntitySelection, NodeIdentity, OpContext, human_bytes, remember_node};
use crate::cassandra::{
    CassandraError, ClearSnapshotRequest, ClearTarget, SnapshotFile, SnapshotRequest, SnapshotScope,
};
use crate::storage::engine::{FailureSummary, UploadSource};
use crate::storage::limits::{BandwidthLimiter, ThrottledStore};
use crate::storage::{Repository, Retry, StoreError, TransferStats};

/// Backup settings (`[backup]` in the config file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupConfig {
    /// Keep the snapshot after the backup (it is cleared by default, also after a failure).
    pub keep_snapshot: bool,
    /// Time to live given to the snapshot on Cassandra 4.1+, so that Cassandra clears it even if
    /// the agent is killed before it can. Must exceed the longest backup. `0s`: no TTL.
    #[serde(with = "humantime_serde")]
    pub snapshot_ttl: Duration,
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self { keep_snapshot: false, snapshot_ttl: Duration::from_secs(24 * 3600) }
    }
}

impl BackupConfig {
    /// Every problem, one line each.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        if !self.snapshot_ttl.is_zero() && self.snapshot_ttl < Duration::from_secs(3600) {
            return Err(vec![format!(
                "backup.snapshot_ttl {:?} is shorter than an hour: a long backup would lose its snapshot midway (use 0s for no TTL)",
                self.snapshot_ttl
            )]);
        }
        Ok(())
    }
}

/// What to back up.
#[derive(Debug, Clone, Default)]
pub struct BackupRequest {
    /// The backup id; a fresh one when unset (a coordinator gives every node the same).
    pub backup_id: Option<BackupId>,
    /// Operator label, recorded in the manifest.
    pub tag: Option<String>,
    /// Keyspaces and tables.
    pub entities: EntitySelection,
    /// Keep the snapshot afterwards.
    pub keep_snapshot: bool,
    /// Only show what would be uploaded: snapshot, hash, check, clear; write nothing.
    pub dry_run: bool,
    /// Spread the upload over this long: the rate is what must be sent divided by it, never
    /// above the bandwidth limit.
    pub duration: Option<Duration>,
    /// Snapshot TTL on 4.1+ (see [`BackupConfig::snapshot_ttl`]); zero for none.
    pub snapshot_ttl: Duration,
}

/// The result of the snapshot phase: everything later phases need.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshotted {
    /// The backup.
    pub backup_id: BackupId,
    /// The snapshot tag.
    pub snapshot_tag: String,
    /// The node at snapshot time.
    pub node: NodeInfo,
    /// Data roots, in the order `FileEntry::data_dir` indexes.
    pub roots: Vec<PathBuf>,
    /// When the backup started.
    pub started_at: DateTime<Utc>,
    /// Just before the snapshot was requested: every write before this is in it.
    pub snapshot_at: DateTime<Utc>,
    /// Remarks for the operator.
    pub warnings: Vec<String>,
}

/// The result of the upload phase.
#[derive(Debug, Clone)]
pub struct Uploaded {
    /// Every file of the backup.
    pub files: Vec<FileEntry>,
    /// Every table, with its schema.
    pub tables: Vec<TableEntry>,
    /// Transfer counters.
    pub stats: TransferStats,
    /// Dry run: files and bytes that would be sent.
    pub would_send: Option<(u64, u64)>,
    /// Remarks for the operator.
    pub warnings: Vec<String>,
}

/// What a backup did (`--output json`).
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    /// The backup.
    pub backup_id: BackupId,
    /// Operator label.
    pub tag: Option<String>,
    /// The snapshot tag used.
    pub snapshot_tag: String,
    /// Cluster.
    pub cluster: String,
    /// Node.
    pub host_id: String,
    /// Key of the node manifest (absent in a dry run).
    pub manifest_key: Option<String>,
    /// A dry run: nothing was written.
    pub dry_run: bool,
    /// Tables backed up.
    pub tables: usize,
    /// Files in the backup.
    pub files_total: u64,
    /// Their size.
    pub bytes_total: u64,
    /// Files sent (dry run: that would be sent).
    pub files_uploaded: u64,
    /// Bytes sent (dry run: that would be sent).
    pub bytes_uploaded: u64,
    /// Files whose blob was already stored.
    pub files_skipped: u64,
    /// Their size.
    pub bytes_skipped: u64,
    /// Bytes read to compute hashes (zero for files the hash cache knew).
    pub bytes_hashed: u64,
    /// Retried transfers.
    pub retries: u64,
    /// Requests made to find out whether blobs were stored (zero for an unchanged node: the
    /// blobs of its previous backup are known to be there).
    pub existence_checks: u64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Whether the snapshot was cleared.
    pub snapshot_cleared: bool,
    /// Why the snapshot could not be cleared (the operator must clear it).
    pub snapshot_clear_error: Option<String>,
    /// Remarks for the operator.
    pub warnings: Vec<String>,
}

/// A backup that failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The node could not be described.
    #[error("describe the node before backing it up: {0}")]
    Describe(#[source] CassandraError),
    /// The snapshot failed (and was cleared).
    #[error("snapshot {tag}: {source}{}", cleared_note(*cleared))]
    Snapshot {
        /// The tag.
        tag: String,
        /// Whether whatever Cassandra created was cleared.
        cleared: bool,
        /// The adapter's error.
        #[source]
        source: CassandraError,
    },
    /// Reading the snapshot failed.
    #[error("read snapshot {tag}: {source}")]
    ReadSnapshot {
        /// The tag.
        tag: String,
        /// The adapter's error.
        #[source]
        source: CassandraError,
    },
    /// Nothing matched the selection.
    #[error("nothing to back up: {0}")]
    Empty(String),
    /// A lock could not be taken or kept.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Some files could not be stored; no manifest was written.
    #[error(
        "{} of {total} files could not be stored, so no manifest was written (the blobs that were stored are kept and not sent again): {}",
        failures.len(),
        failures.iter().take(5).map(|f| format!("{}: {}", f.path.display(), f.error)).collect::<Vec<_>>().join("; ")
    )]
    Upload {
        /// Files in the backup.
        total: usize,
        /// The failures.
        failures: Vec<FailureSummary>,
    },
    /// Cancelled; the snapshot was cleared.
    #[error("backup cancelled before its manifest was written{}", cleared_note(*cleared))]
    Cancelled {
        /// Whether the snapshot was cleared.
        cleared: bool,
    },
}

fn cleared_note(cleared: bool) -> &'static str {
    if cleared { " (the snapshot was cleared)" } else { "" }
}

impl BackupError {
    /// Whether a retry makes sense.
    pub fn retry(&self) -> Retry {
        match self {
            BackupError::Describe(e) | BackupError::ReadSnapshot { source: e, .. } => e.retry(),
            BackupError::Snapshot { source, .. } => source.retry(),
            BackupError::Lock(e) => e.retry(),
            BackupError::Store(e) => e.retry(),
            BackupError::Upload { .. } => Retry::Backoff,
            BackupError::Empty(_) | BackupError::Cancelled { .. } => Retry::Never,
        }
    }
}

/// System keyspaces that have files (virtual ones have none).
const SYSTEM_KEYSPACES: [&str; 5] = ["system", "system_schema", "system_auth", "system_distributed", "system_traces"];

/// Phase 1: flush and snapshot the selected tables. On failure, whatever Cassandra created under
/// the tag is cleared before the error is returned.
pub async fn snapshot(ctx: &OpContext, req: &BackupRequest) -> Result<Snapshotted, BackupError> {
    let started_at = Utc::now();
    // Fails fast on a wrong location or a repository this build must not write to.
    if !req.dry_run {
        ctx.repo.init().await?;
    } else {
        match ctx.repo.open_existing().await {
            Ok(_) | Err(StoreError::NotARepository { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let desc = ctx.cassandra.describe_node().await.map_err(BackupError::Describe)?;
    remember_node(
        &ctx.settings,
        &NodeIdentity {
            cluster: desc.cluster_name.clone(),
            host_id: desc.host_id.clone(),
            cassandra_version: Some(desc.release_version.raw.clone()),
        },
    );
    let backup_id = match &req.backup_id {
        Some(id) => id.clone(),
        None => {
            // After this node's newest backup, so that id order is start order.
            let newest = ctx
                .repo
                .list(&layout::backups_prefix(&desc.cluster_name))
                .await?
                .iter()
                .filter_map(|m| match layout::parse_cluster_object(m.location.as_ref()) {
                    Some(layout::ClusterObject::NodeManifest { backup, host, .. }) if host == desc.host_id => {
                        Some(backup)
                    }
                    _ => None,
                })
                .max();
            BackupId::generate_after(started_at, newest.as_ref())
        }
    };
    let snapshot_tag = format!("cassette-{backup_id}");
    let roots = desc.directories.all_data_roots();
    let mut warnings = Vec::new();
    let schema_version = match desc.schema_versions.as_slice() {
        [one] => Some(one.version.clone()),
        many => {
            if many.len() > 1 {
                warnings.push(format!(
                    "the cluster does not agree on its schema ({} versions): the backup records none",
                    many.len()
                ));
            }
            None
        }
    };
    let node = NodeInfo {
        host_id: desc.host_id.clone(),
        cluster: desc.cluster_name.clone(),
        datacenter: desc.datacenter.clone(),
        rack: desc.rack.clone(),
        tokens: desc.tokens.clone(),
        cassandra_version: desc.release_version.raw.clone(),
        schema_version,
        address: None,
        data_dirs: roots.iter().map(|r| r.display().to_string()).collect(),
    };
    let ttl = (!req.keep_snapshot && !req.snapshot_ttl.is_zero() && desc.release_version.supports_snapshot_ttl())
        .then_some(req.snapshot_ttl);
    let scopes = if req.entities.is_explicit() {
        let (mut keyspaces, tables) = req.entities.split();
        if req.entities.system_keyspaces {
            for k in SYSTEM_KEYSPACES {
                if !keyspaces.iter().any(|x| x == k) {
                    keyspaces.push(k.to_owned());
                }
            }
        }
        let mut s = Vec::new();
        if !keyspaces.is_empty() {
            s.push(SnapshotScope::Keyspaces(keyspaces));
        }
        if !tables.is_empty() {
            s.push(SnapshotScope::Tables(tables));
        }
        s
    } else {
        // Every keyspace: Cassandra's own list, nothing to get wrong; the files are filtered when read.
        vec![SnapshotScope::All]
    };
    let snapshot_at = Utc::now();
    ctx.say(format!("taking snapshot {snapshot_tag} of node {} ({})", desc.host_id, desc.release_version));
    for scope in scopes {
        let r =
            ctx.cassandra.snapshot(&SnapshotRequest { tag: snapshot_tag.clone(), scope, skip_flush: false, ttl }).await;
        if let Err(source) = r {
            // The node may have created part of it (a timeout after it acted): clear whatever exists.
            let cleared = clear(ctx, &snapshot_tag).await.is_ok();
            return Err(BackupError::Snapshot { tag: snapshot_tag, cleared, source });
        }
    }
    Ok(Snapshotted { backup_id, snapshot_tag, node, roots, started_at, snapshot_at, warnings })
}

async fn clear(ctx: &OpContext, tag: &str) -> Result<(), CassandraError> {
    ctx.cassandra
        .clear_snapshot(&ClearSnapshotRequest { target: ClearTarget::Tag(tag.to_owned()), keyspaces: vec![] })
        .await
}

/// Takes the backup lock for the upload and manifest phases (waits while a removal runs).
pub async fn lock(ctx: &OpContext, snap: &Snapshotted) -> Result<RepoLock, BackupError> {
    let operation =
        format!("backup {} of node {} in cluster {:?}", snap.backup_id, snap.node.host_id, snap.node.cluster);
    let progress = Arc::clone(&ctx.progress);
    let lock = RepoLock::acquire(&ctx.repo, LockKind::Backup, operation, &ctx.settings.locks, &ctx.cancel, &move |m| {
        progress.message(m)
    })
    .await?;
    Ok(lock)
}

/// A snapshot directory holding files to store, shared by its files.
#[derive(Debug)]
struct SnapshotDir {
    /// `<data root>/<keyspace>/<table dir>/snapshots/<tag>/[.<index>/]`.
    path: PathBuf,
    /// The live directory it mirrors, relative to the data root and ending in `/`:
    /// `<keyspace>/<table dir>/[.<index>/]`.
    live: String,
    /// Index of the data root.
    data_root: u16,
}

/// A file of the snapshot to store: only what the upload and the manifest need. A node has
/// tens of thousands of files in a few hundred directories, so a file holds its name and shares
/// its directory; the full path exists only while the file is uploaded (see [`UploadSource`]).
#[derive(Debug)]
struct Candidate {
    /// Where it is.
    dir: Arc<SnapshotDir>,
    /// Its file name.
    name: Box<str>,
    /// Size in bytes.
    size: u64,
}

impl Candidate {
    /// Its path relative to the data root in the live data directory (the manifest's path).
    fn live_path(&self) -> String {
        format!("{}{}", self.dir.live, self.name)
    }
}

impl UploadSource for Candidate {
    fn path(&self) -> Cow<'_, Path> {
        Cow::Owned(self.dir.path.join(&*self.name))
    }
}

/// The live directory (relative to the data root, ending in `/`) of a snapshot directory:
/// `<root>/<keyspace>/<table dir>/snapshots/<tag>/[.<index>/]` gives
/// `<keyspace>/<table dir>/[.<index>/]`. With a file name after it, the inverse of
/// [`snapshot_path`].
fn live_dir_of(root: &Path, tag: &str, dir: &Path) -> Option<String> {
    let rel = dir.strip_prefix(root).ok()?;
    let mut parts = rel.components().map(|c| c.as_os_str().to_str());
    let (ks, table) = (parts.next()??, parts.next()??);
    if parts.next()?? != cassette_common::datadir::SNAPSHOTS_DIR || parts.next()?? != tag {
        return None;
    }
    let mut live = format!("{ks}/{table}/");
    for part in parts {
        live.push_str(part?);
        live.push('/');
    }
    Some(live)
}

/// What [`select_files`] chose.
struct Selection {
    files: Vec<Candidate>,
    tables: Vec<TableEntry>,
    warnings: Vec<String>,
}

/// The files of the snapshot to store: per SSTable, the components its `TOC.txt` lists.
/// Consumes the listing, so that no file is held twice.
fn select_files(
    req: &BackupRequest,
    snap: &Snapshotted,
    snapshot: Vec<crate::cassandra::Snapshot>,
) -> Result<Selection, BackupError> {
    let mut warnings = Vec::new();
    // Sized for every file of the snapshot: no doubling slack on a large node.
    let mut files = Vec::with_capacity(snapshot.iter().flat_map(|s| &s.tables).map(|t| t.files.len()).sum());
    let mut tables = Vec::new();
    // The directory of the files last taken: groups of one directory come one after the other.
    let mut current: Option<Arc<SnapshotDir>> = None;
    for t in snapshot.into_iter().flat_map(|s| s.tables) {
        if !req.entities.matches(&t.keyspace, &t.table) {
            continue;
        }
        tables.push(TableEntry {
            keyspace: t.keyspace.clone(),
            table: t.table.clone(),
            table_id: t.table_id.map(|i| i.to_hex()),
            schema_cql: t.schema_cql.clone(),
        });
        // SSTables by (data root, directory, prefix), with each component's name.
        let mut sstables: BTreeMap<(usize, PathBuf, String), Vec<(String, SnapshotFile)>> = BTreeMap::new();
        for f in t.files {
            match f.kind() {
                FileKind::Sstable(n) => {
                    let dir = f.path.parent().map(PathBuf::from).unwrap_or_default();
                    let key = (f.data_root, dir, n.sstable_prefix());
                    sstables.entry(key).or_default().push((n.component, f));
                }
                FileKind::LegacySstable { version } => warnings.push(format!(
                    "{} is a pre-3.0 SSTable (version {version}) that Cassandra cannot read: not backed up",
                    f.path.display()
                )),
                _ => {}
            }
        }
        for ((data_root, dir, prefix), components) in sstables {
            let toc_path = dir.join(format!("{prefix}-TOC.txt"));
            let dir = match current.take() {
                Some(d) if d.path == dir && usize::from(d.data_root) == data_root => d,
                _ => {
                    let live = snap
                        .roots
                        .get(data_root)
                        .and_then(|root| live_dir_of(root, &snap.snapshot_tag, &dir))
                        .ok_or_else(|| not_in_snapshot(snap, &dir))?;
                    let data_root = u16::try_from(data_root).unwrap_or(u16::MAX);
                    Arc::new(SnapshotDir { path: dir, live, data_root })
                }
            };
            // The name parsed as an SSTable's (`kind`), so it is UTF-8.
            let candidate = |f: SnapshotFile| Candidate {
                dir: Arc::clone(&dir),
                name: f.path.file_name().unwrap_or_default().to_string_lossy().into(),
                size: f.size,
            };
            match Toc::read(&toc_path) {
                Ok(toc) => {
                    let present: BTreeSet<&str> = components.iter().map(|(c, _)| c.as_str()).collect();
                    let missing: Vec<&str> =
                        toc.components().iter().map(String::as_str).filter(|c| !present.contains(c)).collect();
                    if !missing.is_empty() {
                        warnings.push(format!(
                            "{} lists components that are not in the snapshot: {}",
                            toc_path.display(),
                            missing.join(", ")
                        ));
                    }
                    for (comp, f) in components {
                        if toc.contains(&comp) {
                            files.push(candidate(f));
                        } else {
                            warnings.push(format!(
                                "{} is not listed in {}: Cassandra does not use it, not backed up",
                                f.path.display(),
                                toc_path.display()
                            ));
                        }
                    }
                }
                Err(e) => {
                    warnings.push(format!("{e}: backing up every component of {prefix} in {}", dir.path.display()));
                    files.extend(components.into_iter().map(|(_, f)| candidate(f)));
                }
            }
            current = Some(dir);
        }
    }
    files.shrink_to_fit();
    Ok(Selection { files, tables, warnings })
}

/// The error for a snapshot file or directory that is not where a snapshot's files are.
fn not_in_snapshot(snap: &Snapshotted, path: &Path) -> BackupError {
    BackupError::ReadSnapshot {
        tag: snap.snapshot_tag.clone(),
        source: CassandraError::files(
            "find the live path of",
            path.to_owned(),
            std::io::Error::other(format!("not under <data root>/<keyspace>/<table>/snapshots/{}/", snap.snapshot_tag)),
        ),
    }
}

/// Phase 2: store the snapshot's files. In a dry run, only find out what would be sent.
pub async fn upload(ctx: &OpContext, req: &BackupRequest, snap: &Snapshotted) -> Result<Uploaded, BackupError> {
    // Before the snapshot is listed: the two are the largest per-file structures of a backup.
    let t0 = Instant::now();
    let previous = blobs_of_previous_backup(ctx, snap).await;
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "read the previous backup's blobs");
    let t0 = Instant::now();
    let snapshot = ctx
        .cassandra
        .list_snapshots(Some(&snap.snapshot_tag))
        .await
        .map_err(|source| BackupError::ReadSnapshot { tag: snap.snapshot_tag.clone(), source })?;
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "listed the snapshot");
    let t0 = Instant::now();
    let Selection { files: candidates, tables, mut warnings } = select_files(req, snap, snapshot)?;
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "selected the files by TOC");
    if tables.is_empty() {
        let what = if req.entities.is_explicit() {
            format!(
                "none of {} has tables on this node",
                req.entities.entities.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            )
        } else {
            "the node has no user tables (use --entities or --system-keyspaces to back up system keyspaces)".to_owned()
        };
        return Err(BackupError::Empty(what));
    }
    let total = candidates.len();
    let bytes: u64 = candidates.iter().map(|c| c.size).sum();
    ctx.say(format!(
        "snapshot {} holds {} files ({}) in {} tables",
        snap.snapshot_tag,
        total,
        human_bytes(bytes),
        tables.len()
    ));

    let mut engine = ctx.engine()?;
    let mut would_send = None;
    if req.dry_run || req.duration.is_some() {
        // Probing is not the large node's steady state: full paths are fine here.
        let paths: Vec<PathBuf> = candidates.iter().map(|c| c.path().into_owned()).collect();
        let probe = ctx
            .cancellable(engine.probe_files(paths.clone()))
            .await
            .ok_or(BackupError::Cancelled { cleared: false })?;
        if !probe.failures.is_empty() {
            return Err(BackupError::Upload {
                total,
                failures: probe.failures.iter().map(FailureSummary::from).collect(),
            });
        }
        let missing: Vec<_> = probe.files.iter().filter(|f| !f.stored).collect();
        let mut seen = BTreeSet::new();
        let (send_files, send_bytes) =
            missing.iter().filter(|f| seen.insert(f.sha256)).fold((0u64, 0u64), |(n, b), f| (n + 1, b + f.size));
        would_send = Some((send_files, send_bytes));
        if req.dry_run {
            let by_path: std::collections::HashMap<&Path, usize> =
                paths.iter().enumerate().map(|(i, p)| (p.as_path(), i)).collect();
            let mut entries = Vec::new();
            for f in &probe.files {
                if let Some(c) = by_path.get(f.path.as_path()).map(|i| &candidates[*i]) {
                    entries.push(FileEntry::new(c.live_path(), c.dir.data_root, f.size, f.sha256));
                }
            }
            let stats = TransferStats {
                files_total: total as u64,
                bytes_total: bytes,
                files_skipped: probe.files.iter().filter(|f| f.stored).count() as u64,
                bytes_skipped: probe.files.iter().filter(|f| f.stored).map(|f| f.size).sum(),
                bytes_hashed: engine.stats().bytes_hashed,
                ..TransferStats::default()
            };
            return Ok(Uploaded { files: entries, tables, stats, would_send, warnings });
        }
        if let Some(d) = req.duration {
            // Pace: what must be sent over the duration. The bandwidth limit stays a hard cap:
            // below what the duration needs, it wins (and the backup takes longer).
            let needed = Rate((send_bytes / d.as_secs().max(1)).max(64 << 10));
            let rate = match ctx.transfer.bandwidth {
                Some(limit) if limit.0 <= needed.0 => {
                    warnings.push(format!(
                        "the bandwidth limit {limit} is below the {needed} needed to send {} within {d:?}: the limit wins",
                        human_bytes(send_bytes)
                    ));
                    None
                }
                _ => Some(needed),
            };
            if let Some(rate) = rate {
                ctx.say(format!("pacing the upload of {} at {rate} to finish within {d:?}", human_bytes(send_bytes)));
                let throttled = Repository::new(
                    ctx.repo.location().clone(),
                    Arc::new(ThrottledStore::new(Arc::clone(ctx.repo.store()), Arc::new(BandwidthLimiter::new(rate)))),
                );
                let hashed = engine.stats().bytes_hashed;
                let mut paced = ctx.clone();
                paced.repo = throttled;
                engine = paced.engine()?;
                warnings.push(format!("{} read while probing before the paced upload", human_bytes(hashed)));
            }
        }
    }

    if let Some((previous, blobs, missing)) = previous {
        ctx.say(format!(
            "{} blobs of backup {previous} are stored (checked against a listing of the bucket)",
            blobs.len()
        ));
        if missing > 0 {
            warnings.push(format!(
                "{missing} blob(s) that backup {previous} references are missing from {}: they were deleted outside Cassette (a lifecycle or expiration rule on the bucket, a person, another tool); this backup stores them again where the files still exist, but backup {previous} (and older ones sharing them) cannot be restored completely: run cassette-agent verify, and remove such rules for the blobs/ prefix",
                ctx.repo.location()
            ));
        }
        engine.assume_present(blobs);
    }
    let t0 = Instant::now();
    let report =
        ctx.cancellable(engine.upload_files(candidates)).await.ok_or(BackupError::Cancelled { cleared: false })?;
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "stored the files");
    // Its buffers (the transfer memory budget), its set of known blobs and the hash cache's
    // entries (saved) are not needed for the manifest: let them go before it is made.
    drop(engine);
    if let Err(e) = ctx.hash_cache.release() {
        tracing::warn!(error = %e, "could not save the hash cache; hashes will be recomputed next time");
    }
    if !report.failures.is_empty() {
        return Err(BackupError::Upload {
            total,
            failures: report.failures.iter().map(FailureSummary::from).collect(),
        });
    }
    // Without failures the engine reports every file, in the order given.
    debug_assert_eq!(report.files.len(), total);
    let mut files = Vec::with_capacity(report.files.len());
    for f in report.files {
        files.push(FileEntry::new(f.path.live_path(), f.path.dir.data_root, f.size, f.sha256));
    }
    files.sort_by(|a, b| (a.data_dir, &a.path).cmp(&(b.data_dir, &b.path)));
    warnings.sort();
    warnings.dedup();
    Ok(Uploaded { files, tables, stats: report.stats, would_send, warnings })
}

/// The blobs of this node's newest earlier backup that the bucket holds now, which the upload may
/// treat as stored without asking again: no removal runs while this backup holds its lock (see
/// [`super::locks`]); should the lock lapse, the manifest phase checks every blob again.
///
/// The manifest alone is not enough: a blob deleted outside Cassette (a lifecycle rule, a
/// person) would then be referenced silently by every later backup. So its blobs are checked
/// against one listing of the blob prefix ([`Repository::retain_stored`]); those missing are
/// left out (the upload stores them again) and counted in the second value. When the repository
/// is too large to list (more than `transfer.list_blobs_per_file` objects per blob of the
/// previous backup), nothing is treated as known and every file is checked the usual way. Best
/// effort: a failure here only means every file is checked.
async fn blobs_of_previous_backup(ctx: &OpContext, snap: &Snapshotted) -> Option<(BackupId, Vec<BlobHash>, usize)> {
    let index = match catalog::scan_backups(&ctx.repo, &snap.node.cluster).await {
        Ok(i) => i,
        Err(e) => {
            tracing::debug!(error = %e, "cannot list earlier backups; every blob will be checked");
            return None;
        }
    };
    let newest =
        index.node(&snap.node.cluster, &snap.node.host_id).into_iter().rfind(|m| m.backup_id != snap.backup_id)?;
    let cache = catalog::ManifestCache::for_context(ctx);
    let mut blobs = match catalog::load_manifest_blobs(&ctx.repo, &newest, &ctx.settings.manifests, cache.as_ref())
        .await
    {
        Ok(blobs) => blobs,
        Err(e) => {
            tracing::debug!(error = %e, key = %newest.key, "cannot read the previous backup; every blob will be checked");
            return None;
        }
    };
    let bound = blobs.len().saturating_mul(ctx.transfer.list_blobs_per_file.max(1));
    match ctx.repo.retain_stored(&mut blobs, bound).await {
        Ok(Some(missing)) => Some((newest.backup_id, blobs, missing)),
        Ok(None) => {
            tracing::debug!(bound, "repository too large to list; every blob will be checked");
            None
        }
        Err(e) => {
            tracing::debug!(error = %e, "cannot list the stored blobs; every blob will be checked");
            None
        }
    }
}

/// Where the snapshot holds the file `f` of the manifest: `<data root>/<keyspace>/<table
/// dir>/snapshots/<tag>/[.<index>/]<name>` for the live path `<keyspace>/<table dir>/[.<index>/]<name>`.
fn snapshot_path(roots: &[PathBuf], tag: &str, f: &FileEntry) -> PathBuf {
    let mut parts = f.path.splitn(3, '/');
    let (ks, table, rest) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let root = roots.get(usize::from(f.data_dir)).cloned().unwrap_or_default();
    root.join(ks).join(table).join(cassette_common::datadir::SNAPSHOTS_DIR).join(tag).join(rest)
}

/// Phase 3: write the node manifest. If the backup lock lapsed at some point (a removal may have
/// taken it as stale), every referenced blob is checked again first, and stored again from the
/// snapshot if it went missing.
///
/// The manifest takes the file and table lists out of `up` (a large node's list is tens of
/// megabytes; it is not copied).
pub async fn write_manifest(
    ctx: &OpContext,
    req: &BackupRequest,
    snap: &Snapshotted,
    up: &mut Uploaded,
    lock: &RepoLock,
) -> Result<(String, NodeManifest), BackupError> {
    if lock.lapsed() {
        ctx.say("the backup lock could not be kept fresh: checking every blob again before writing the manifest");
        lock.refresh_now().await?;
        let running: Vec<_> = lock
            .others()
            .await?
            .into_iter()
            .filter(|l| l.fresh && l.info.as_ref().is_none_or(|i| i.kind == LockKind::Remove))
            .collect();
        if !running.is_empty() {
            return Err(LockError::RemovalRunning {
                location: ctx.repo.location().to_string(),
                waited: Duration::ZERO,
                holders: running,
            }
            .into());
        }
        let engine = ctx.engine()?;
        let mut checked = BTreeSet::new();
        for f in up.files.iter().filter(|f| checked.insert(f.sha256)) {
            let (hash, path) = (&f.sha256, snapshot_path(&snap.roots, &snap.snapshot_tag, f));
            if ctx.repo.blob_size(hash).await?.is_none() {
                ctx.say(format!("blob {} went missing: storing it again from {}", hash.short(), path.display()));
                engine.upload_file(&path).await?;
            }
        }
    }
    let manifest = NodeManifest {
        format: NODE_MANIFEST_FORMAT,
        backup_id: snap.backup_id.clone(),
        tag: req.tag.clone(),
        snapshot_tag: snap.snapshot_tag.clone(),
        node: snap.node.clone(),
        started_at: snap.started_at,
        snapshot_at: snap.snapshot_at,
        finished_at: Utc::now(),
        tables: std::mem::take(&mut up.tables),
        files: std::mem::take(&mut up.files),
    };
    let key = layout::node_manifest_key(&snap.node.cluster, &snap.backup_id, &snap.node.host_id);
    let t0 = Instant::now();
    ctx.repo.put_json_create(&key, &manifest).await?;
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, files = manifest.files.len(), "wrote the manifest");
    Ok((key, manifest))
}

/// Phase 4: clear the snapshot. Not cancellable: it runs after a cancellation too.
pub async fn cleanup(ctx: &OpContext, snap: &Snapshotted) -> Result<(), CassandraError> {
    clear(ctx, &snap.snapshot_tag).await
}

/// Runs every phase. The snapshot is cleared at the end whatever happened (unless
/// `keep_snapshot`); a failure to clear it is reported, never hidden.
pub async fn run(ctx: &OpContext, req: &BackupRequest) -> Result<BackupReport, BackupError> {
    let start = Instant::now();
    let snap = snapshot(ctx, req).await?;
    // The snapshot's clear, when it ran beside the manifest's write.
    let mut early_clear = None;
    let body = async {
        if ctx.cancel.is_cancelled() {
            return Err(BackupError::Cancelled { cleared: false });
        }
        if req.dry_run {
            return upload(ctx, req, &snap).await.map(|u| (u, None));
        }
        let lock = lock(ctx, &snap).await?;
        let result = async {
            let mut up = upload(ctx, req, &snap).await?;
            if ctx.cancel.is_cancelled() {
                return Err(BackupError::Cancelled { cleared: false });
            }
            // Every blob is stored: unless the lock lapsed (then the manifest phase may store
            // blobs again from the snapshot), the snapshot is cleared while the manifest is written.
            // Should the lock lapse just now and a blob be missing, storing it again fails and so
            // does the backup: no manifest names a missing blob.
            let (written, cleared) = if !req.keep_snapshot && !lock.lapsed() {
                let (w, c) = tokio::join!(write_manifest(ctx, req, &snap, &mut up, &lock), cleanup(ctx, &snap));
                (w, Some(c))
            } else {
                (write_manifest(ctx, req, &snap, &mut up, &lock).await, None)
            };
            early_clear = cleared;
            let (key, m) = written?;
            up.files = m.files;
            up.tables = m.tables;
            Ok((up, Some(key)))
        }
        .await;
        lock.release().await;
        result
    }
    .await;
    let (cleared, clear_error) = if req.keep_snapshot {
        (false, None)
    } else {
        match early_clear {
            Some(r) => r,
            None => cleanup(ctx, &snap).await,
        }
        .map_or_else(|e| (false, Some(e)), |()| (true, None))
    };
    let (up, manifest_key) = match body {
        Ok(x) => x,
        Err(BackupError::Cancelled { .. }) => return Err(BackupError::Cancelled { cleared }),
        Err(e) => {
            if let Some(ce) = clear_error {
                tracing::error!(tag = %snap.snapshot_tag, error = %ce, "the snapshot could not be cleared after the failure");
                ctx.say(format!(
                    "snapshot {} could not be cleared ({ce}): clear it with nodetool clearsnapshot -t {}",
                    snap.snapshot_tag, snap.snapshot_tag
                ));
            }
            return Err(e);
        }
    };
    let mut warnings = snap.warnings.clone();
    warnings.extend(up.warnings.iter().cloned());
    if let Some(ce) = &clear_error {
        warnings.push(format!(
            "the backup is complete, but snapshot {} could not be cleared ({ce}): clear it with nodetool clearsnapshot -t {}",
            snap.snapshot_tag, snap.snapshot_tag
        ));
    }
    if req.keep_snapshot {
        warnings.push(format!("snapshot {} was kept (--keep-snapshot)", snap.snapshot_tag));
    }
    let s = up.stats;
    let (files_uploaded, bytes_uploaded) = match up.would_send {
        Some(w) if req.dry_run => w,
        _ => (s.files_transferred, s.bytes_transferred),
    };
    Ok(BackupReport {
        backup_id: snap.backup_id.clone(),
        tag: req.tag.clone(),
        snapshot_tag: snap.snapshot_tag.clone(),
        cluster: snap.node.cluster.clone(),
        host_id: snap.node.host_id.to_string(),
        manifest_key,
        dry_run: req.dry_run,
        tables: up.tables.len(),
        files_total: up.files.len() as u64,
        bytes_total: up.files.iter().map(|f| f.size).sum(),
        files_uploaded,
        bytes_uploaded,
        files_skipped: s.files_skipped,
        bytes_skipped: s.bytes_skipped,
        bytes_hashed: s.bytes_hashed,
        retries: s.retries,
        existence_checks: s.remote_checks,
        seconds: start.elapsed().as_secs_f64(),
        snapshot_cleared: cleared,
        snapshot_clear_error: clear_error.map(|e| e.to_string()),
        warnings,
    })
}

impl BackupReport {
    /// Whether the operator must act (the snapshot could not be cleared).
    pub fn needs_attention(&self) -> bool {
        self.snapshot_clear_error.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_path_inverts_the_live_directory() {
        let roots = vec![PathBuf::from("/d1"), PathBuf::from("/d2")];
        let hash = BlobHash::from_bytes([7; 32]);
        let f = FileEntry::new("ks/t-0123/nb-1-big-Data.db".into(), 1, 10, hash);
        assert_eq!(
            snapshot_path(&roots, "cassette-x", &f),
            PathBuf::from("/d2/ks/t-0123/snapshots/cassette-x/nb-1-big-Data.db")
        );
        let idx = FileEntry::new("ks/t-0123/.by_name/nb-2-big-Index.db".into(), 0, 10, hash);
        assert_eq!(
            snapshot_path(&roots, "cassette-x", &idx),
            PathBuf::from("/d1/ks/t-0123/snapshots/cassette-x/.by_name/nb-2-big-Index.db")
        );
        for e in [&f, &idx] {
            let p = snapshot_path(&roots, "cassette-x", e);
            let root = &roots[usize::from(e.data_dir)];
            let live = live_dir_of(root, "cassette-x", p.parent().unwrap()).unwrap();
            assert!(live.ends_with('/'), "{live}");
            assert_eq!(format!("{live}{}", p.file_name().unwrap().to_str().unwrap()), e.path);
        }
        // Another tag, another root, or not inside a snapshot: no live directory.
        let p = snapshot_path(&roots, "cassette-x", &f);
        let dir = p.parent().unwrap();
        assert_eq!(live_dir_of(&roots[1], "cassette-y", dir), None);
        assert_eq!(live_dir_of(&roots[0], "cassette-x", dir), None);
        assert_eq!(live_dir_of(&roots[1], "cassette-x", Path::new("/d2/ks/t-0123/snapshots")), None);
        assert_eq!(live_dir_of(&roots[1], "cassette-x", Path::new("/d2/ks/t-0123/backups/cassette-x")), None);
    }
}
