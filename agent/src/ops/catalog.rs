//! What a repository holds: node manifests, cluster manifests and commit-log index entries,
//! found by one listing of `clusters/`, and the backups of a node with their sizes.
//!
//! Manifests are immutable once written (create-only), so a local copy is as good as the remote
//! one: when the agent has a state directory, manifests read once are kept in
//! `<state dir>/manifests/` (keyed by key, size and modification time) and `list` on a cloud store
//! downloads each manifest only once. Every manifest, cached or not, is size-limited and
//! validated before use: it is untrusted input.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use cassette_common::ids::{BackupId, BlobHash, HostId};
use cassette_common::layout::{self, ClusterObject};
use cassette_common::manifest::{CommitLogEntry, ManifestError, NodeManifest};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;

use super::{ManifestLimits, OpContext};
use crate::storage::{Repository, Retry, StoreError};

/// A node manifest found in the listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestRef {
    /// Its key.
    pub key: String,
    /// The cluster segment of the key.
    pub cluster_key: String,
    /// The backup.
    pub backup_id: BackupId,
    /// The node.
    pub host_id: HostId,
    /// Size of the object.
    pub size: u64,
    /// When it was written (storage clock).
    pub last_modified: DateTime<Utc>,
}

/// A commit-log index entry found in the listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRef {
    /// Its key.
    pub key: String,
    /// The cluster segment of the key.
    pub cluster_key: String,
    /// The node.
    pub host_id: HostId,
    /// Size of the object.
    pub size: u64,
    /// When it was written.
    pub last_modified: DateTime<Utc>,
}

/// Everything under `clusters/`, by kind.
#[derive(Debug, Clone, Default)]
pub struct RepoIndex {
    /// Node manifests, sorted by key.
    pub node_manifests: Vec<ManifestRef>,
    /// Cluster manifests: key, cluster segment, backup.
    pub cluster_manifests: Vec<(String, String, BackupId)>,
    /// Commit-log index entries, sorted by key.
    pub commitlog_entries: Vec<EntryRef>,
    /// Keys this layout does not define (left alone, reported).
    pub unknown: Vec<String>,
}

impl RepoIndex {
    /// The node manifests of one node, oldest backup first.
    pub fn node(&self, cluster: &str, host: &HostId) -> Vec<ManifestRef> {
        let ck = layout::cluster_key(cluster);
        let mut v: Vec<ManifestRef> =
            self.node_manifests.iter().filter(|m| m.cluster_key == ck && &m.host_id == host).cloned().collect();
        v.sort_by(|a, b| a.backup_id.cmp(&b.backup_id));
        v
    }

    /// The node manifests of every node of a cluster, oldest backup first.
    pub fn cluster(&self, cluster: &str) -> Vec<ManifestRef> {
        let ck = layout::cluster_key(cluster);
        let mut v: Vec<ManifestRef> = self.node_manifests.iter().filter(|m| m.cluster_key == ck).cloned().collect();
        v.sort_by(|a, b| a.backup_id.cmp(&b.backup_id).then(a.host_id.cmp(&b.host_id)));
        v
    }

    /// Whether a backup has a cluster manifest (a coordinator's cluster-wide backup).
    pub fn cluster_manifest(&self, cluster_key: &str, backup: &BackupId) -> Option<&str> {
        self.cluster_manifests.iter().find(|(_, c, b)| c == cluster_key && b == backup).map(|(k, _, _)| k.as_str())
    }
}

/// A catalog operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A manifest that must not be used.
    #[error("manifest {key} in {location}: {source}")]
    Invalid {
        /// Its key.
        key: String,
        /// The location.
        location: String,
        /// What is wrong.
        #[source]
        source: ManifestError,
    },
    /// A manifest whose content does not match its key.
    #[error(
        "manifest {key} in {location} describes {what}: it was moved or altered; remove it or restore it to its key"
    )]
    Mismatch {
        /// Its key.
        key: String,
        /// The location.
        location: String,
        /// What it describes instead.
        what: String,
    },
    /// No backup matches the selection.
    #[error("{what} in {location}: {hint}")]
    NotFound {
        /// What was looked for.
        what: String,
        /// The location.
        location: String,
        /// What exists instead.
        hint: String,
    },
}

impl CatalogError {
    /// Whether a retry makes sense.
    pub fn retry(&self) -> Retry {
        match self {
            CatalogError::Store(e) => e.retry(),
            _ => Retry::Never,
        }
    }
}

/// Lists `clusters/` once and classifies every key.
pub async fn scan(repo: &Repository) -> Result<RepoIndex, CatalogError> {
    scan_prefix(repo, layout::CLUSTERS_PREFIX).await
}

/// Lists the backups of one cluster only (not its commit-log index, which may hold thousands of
/// entries): enough to find a node's backups.
pub async fn scan_backups(repo: &Repository, cluster: &str) -> Result<RepoIndex, CatalogError> {
    scan_prefix(repo, &layout::backups_prefix(cluster)).await
}

async fn scan_prefix(repo: &Repository, prefix: &str) -> Result<RepoIndex, CatalogError> {
    let mut index = RepoIndex::default();
    for m in repo.list(prefix).await? {
        let key = m.location.to_string();
        match layout::parse_cluster_object(&key) {
            Some(ClusterObject::NodeManifest { cluster, backup, host }) => index.node_manifests.push(ManifestRef {
                key,
                cluster_key: cluster,
                backup_id: backup,
                host_id: host,
                size: m.size,
                last_modified: m.last_modified,
            }),
            Some(ClusterObject::ClusterManifest { cluster, backup }) => {
                index.cluster_manifests.push((key, cluster, backup))
            }
            Some(ClusterObject::CommitLogEntry { cluster, host, .. }) => index.commitlog_entries.push(EntryRef {
                key,
                cluster_key: cluster,
                host_id: host,
                size: m.size,
                last_modified: m.last_modified,
            }),
            None => index.unknown.push(key),
        }
    }
    index.node_manifests.sort_by(|a, b| a.key.cmp(&b.key));
    index.commitlog_entries.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(index)
}

/// Where manifests read once are kept (immutable documents: a cached copy stays valid).
#[derive(Debug, Clone)]
pub struct ManifestCache {
    dir: PathBuf,
}

impl ManifestCache {
    /// A cache in `<state dir>/manifests`, when there is a state directory.
    pub fn for_context(ctx: &OpContext) -> Option<Self> {
        ctx.settings.state_dir.as_ref().map(|d| Self { dir: d.join("manifests") })
    }

    fn path(&self, key: &str, size: u64, modified: DateTime<Utc>) -> PathBuf {
        let id = cassette_common::hash::sha256(format!("{key}\n{size}\n{}", modified.timestamp_micros()).as_bytes());
        self.dir.join(format!("{}.json", &id.to_hex()[..32]))
    }

    fn get(&self, key: &str, size: u64, modified: DateTime<Utc>) -> Option<Vec<u8>> {
        let bytes = std::fs::read(self.path(key, size, modified)).ok()?;
        (bytes.len() as u64 == size).then_some(bytes)
    }

    fn put(&self, key: &str, size: u64, modified: DateTime<Utc>, bytes: &[u8]) {
        let path = self.path(key, size, modified);
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            tracing::debug!(path = %path.display(), error = %e, "cannot cache a manifest");
        }
    }

    /// Removes cached documents that are neither in `manifests` nor in `entries`.
    pub fn prune(&self, manifests: &[ManifestRef], entries: &[EntryRef]) {
        let wanted: BTreeSet<PathBuf> = manifests
            .iter()
            .map(|m| self.path(&m.key, m.size, m.last_modified))
            .chain(entries.iter().map(|e| self.path(&e.key, e.size, e.last_modified)))
            .collect();
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            if !wanted.contains(&e.path()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Reads and validates one node manifest, checking that it describes what its key says.
pub async fn load_manifest(
    repo: &Repository,
    m: &ManifestRef,
    limits: &ManifestLimits,
    cache: Option<&ManifestCache>,
) -> Result<NodeManifest, CatalogError> {
    let location = repo.location().to_string();
    let bytes = manifest_bytes(repo, m, limits, cache).await?;
    let manifest: NodeManifest = parse_manifest(&bytes, m, &location)?;
    drop(bytes);
    manifest.validate(limits.max_files).map_err(|source| CatalogError::Invalid {
        key: m.key.clone(),
        location: location.clone(),
        source,
    })?;
    check_identity(m, &manifest.backup_id, &manifest.node.host_id, &manifest.node.cluster, location)?;
    Ok(manifest)
}

/// The blobs a node manifest references, without building the manifest (an incremental backup
/// needs only these; a large node's full manifest is tens of megabytes in memory).
pub async fn load_manifest_blobs(
    repo: &Repository,
    m: &ManifestRef,
    limits: &ManifestLimits,
    cache: Option<&ManifestCache>,
) -> Result<Vec<BlobHash>, CatalogError> {
    #[derive(serde::Deserialize)]
    struct Node {
        host_id: HostId,
        cluster: String,
    }
    #[derive(serde::Deserialize)]
    struct File {
        sha256: BlobHash,
    }
    #[derive(serde::Deserialize)]
    struct Blobs {
        backup_id: BackupId,
        node: Node,
        files: Vec<File>,
    }
    let location = repo.location().to_string();
    let bytes = manifest_bytes(repo, m, limits, cache).await?;
    let b: Blobs = parse_manifest(&bytes, m, &location)?;
    check_identity(m, &b.backup_id, &b.node.host_id, &b.node.cluster, location)?;
    Ok(b.files.into_iter().map(|f| f.sha256).collect())
}

fn parse_manifest<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    m: &ManifestRef,
    location: &str,
) -> Result<T, CatalogError> {
    serde_json::from_slice(bytes).map_err(|e| {
        StoreError::BadDocument {
            key: m.key.clone(),
            location: location.to_owned(),
            message: format!("not a node manifest: {e}"),
        }
        .into()
    })
}

fn check_identity(
    m: &ManifestRef,
    backup_id: &BackupId,
    host_id: &HostId,
    cluster: &str,
    location: String,
) -> Result<(), CatalogError> {
    if *backup_id != m.backup_id || *host_id != m.host_id || layout::cluster_key(cluster) != m.cluster_key {
        return Err(CatalogError::Mismatch {
            key: m.key.clone(),
            location,
            what: format!("backup {backup_id} of node {host_id} in cluster {cluster:?}"),
        });
    }
    Ok(())
}

/// A manifest's bytes, from the local cache or the repository, within the size limit.
async fn manifest_bytes(
    repo: &Repository,
    m: &ManifestRef,
    limits: &ManifestLimits,
    cache: Option<&ManifestCache>,
) -> Result<bytes::Bytes, CatalogError> {
    let location = repo.location().to_string();
    if m.size > limits.max_bytes.0 {
        return Err(StoreError::BadDocument {
            key: m.key.clone(),
            location,
            message: format!(
                "{} bytes is larger than the {}-byte limit for manifests (manifests.max_bytes); refusing to read it",
                m.size, limits.max_bytes.0
            ),
        }
        .into());
    }
    Ok(match cache.and_then(|c| c.get(&m.key, m.size, m.last_modified)) {
        Some(b) => bytes::Bytes::from(b),
        None => {
            let b = repo.get_bytes(&m.key, limits.max_bytes.0).await?;
            if let Some(c) = cache {
                c.put(&m.key, m.size, m.last_modified, &b);
            }
            b
        }
    })
}

/// Reads many manifests, `limits.read_concurrency` at a time; fails at the first bad one.
pub async fn load_manifests(
    repo: &Repository,
    refs: &[ManifestRef],
    limits: &ManifestLimits,
    cache: Option<&ManifestCache>,
) -> Result<Vec<(ManifestRef, Arc<NodeManifest>)>, CatalogError> {
    // Owned items and clones: borrowed stream items make the future not `Send` for every
    // lifetime, and operations must run on spawned tasks.
    let loaded: Vec<Result<(ManifestRef, Arc<NodeManifest>), CatalogError>> = futures::stream::iter(refs.to_vec())
        .map(|m| {
            let (repo, limits, cache) = (repo.clone(), limits.clone(), cache.cloned());
            async move { load_manifest(&repo, &m, &limits, cache.as_ref()).await.map(|x| (m, Arc::new(x))) }
        })
        .buffered(limits.read_concurrency.max(1))
        .collect()
        .await;
    loaded.into_iter().collect()
}

/// Reads commit-log index entries, `limits.read_concurrency` at a time (cached like manifests:
/// a node archiving every few minutes has thousands of them).
pub async fn load_entries(
    repo: &Repository,
    refs: &[EntryRef],
    limits: &ManifestLimits,
    cache: Option<&ManifestCache>,
) -> Result<Vec<CommitLogEntry>, CatalogError> {
    const MAX_ENTRY: u64 = 1 << 20;
    let loaded: Vec<Result<CommitLogEntry, StoreError>> = futures::stream::iter(refs.to_vec())
        .map(|e| {
            let (repo, cache) = (repo.clone(), cache.cloned());
            async move {
                let bytes = match cache.as_ref().and_then(|c| c.get(&e.key, e.size, e.last_modified)) {
                    Some(b) => bytes::Bytes::from(b),
                    None => {
                        let b = repo.get_bytes(&e.key, MAX_ENTRY).await?;
                        if let Some(c) = &cache {
                            c.put(&e.key, e.size, e.last_modified, &b);
                        }
                        b
                    }
                };
                serde_json::from_slice::<CommitLogEntry>(&bytes).map_err(|err| StoreError::BadDocument {
                    key: e.key.clone(),
                    location: repo.location().to_string(),
                    message: format!("not a commit-log index entry: {err}"),
                })
            }
        })
        .buffered(limits.read_concurrency.max(1))
        .collect()
        .await;
    loaded.into_iter().map(|r| r.map_err(CatalogError::from)).collect()
}

/// How to pick a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum BackupSelector {
    /// By id.
    Id(BackupId),
    /// The newest backup with this tag.
    Tag(String),
    /// The newest backup.
    Latest,
}

impl BackupSelector {
    /// Parses `latest`, a backup id, or anything else as a tag.
    pub fn parse(s: &str) -> Self {
        if s == "latest" {
            return Self::Latest;
        }
        match s.parse::<BackupId>() {
            Ok(id) => Self::Id(id),
            Err(_) => Self::Tag(s.to_owned()),
        }
    }
}

impl std::fmt::Display for BackupSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Id(id) => write!(f, "backup {id}"),
            Self::Tag(t) => write!(f, "the newest backup tagged {t:?}"),
            Self::Latest => f.write_str("the newest backup"),
        }
    }
}

/// Picks one of a node's backups (`refs` oldest first) and loads its manifest.
pub async fn select(
    ctx: &OpContext,
    refs: &[ManifestRef],
    selector: &BackupSelector,
    node_desc: &str,
) -> Result<(ManifestRef, NodeManifest), CatalogError> {
    let location = ctx.repo.location().to_string();
    let cache = ManifestCache::for_context(ctx);
    let available = || {
        if refs.is_empty() {
            format!("{node_desc} has no backups there (check --location, --cluster and --host-id)")
        } else {
            let ids: Vec<String> = refs.iter().rev().take(10).map(|r| r.backup_id.to_string()).collect();
            format!("{node_desc} has {} backup(s), newest first: {}", refs.len(), ids.join(", "))
        }
    };
    let not_found = |what: String| CatalogError::NotFound { what, location: location.clone(), hint: available() };
    let chosen = match selector {
        BackupSelector::Id(id) => refs
            .iter()
            .find(|r| &r.backup_id == id)
            .ok_or_else(|| not_found(format!("no backup {id} of {node_desc}")))?,
        BackupSelector::Latest => refs.last().ok_or_else(|| not_found(format!("no backup of {node_desc}")))?,
        BackupSelector::Tag(tag) => {
            // Tags live in the manifests: read them newest first until one matches.
            for r in refs.iter().rev() {
                let m = load_manifest(&ctx.repo, r, &ctx.settings.manifests, cache.as_ref()).await?;
                if m.tag.as_deref() == Some(tag.as_str()) {
                    return Ok((r.clone(), m));
                }
            }
            return Err(not_found(format!("no backup tagged {tag:?} of {node_desc}")));
        }
    };
    let m = load_manifest(&ctx.repo, chosen, &ctx.settings.manifests, cache.as_ref()).await?;
    Ok((chosen.clone(), m))
}

/// One backup of one node, as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupSummary {
    /// The backup.
    pub backup_id: BackupId,
    /// Operator label.
    pub tag: Option<String>,
    /// Cluster name.
    pub cluster: String,
    /// Node.
    pub host_id: HostId,
    /// Datacenter.
    pub datacenter: String,
    /// Cassandra release.
    pub cassandra_version: String,
    /// When the snapshot was taken.
    pub snapshot_at: DateTime<Utc>,
    /// When the backup finished.
    pub finished_at: DateTime<Utc>,
    /// Tables.
    pub tables: usize,
    /// Files.
    pub files: usize,
    /// Total size of its files.
    pub bytes: u64,
    /// Bytes of blobs no other listed backup of the same node references.
    pub unique_bytes: u64,
    /// Bytes that removing this backup alone would free: blobs no other manifest in the
    /// repository (any node, any cluster) references.
    pub reclaimable_bytes: u64,
    /// Whether a cluster manifest covers it (a coordinator's cluster-wide backup).
    pub cluster_backup: bool,
    /// The manifest's key.
    pub key: String,
}

/// Loads every node manifest of the repository and summarizes those `filter` keeps, oldest first.
pub async fn summarize(
    ctx: &OpContext,
    index: &RepoIndex,
    filter: impl Fn(&ManifestRef) -> bool,
) -> Result<Vec<BackupSummary>, CatalogError> {
    let cache = ManifestCache::for_context(ctx);
    let all = load_manifests(&ctx.repo, &index.node_manifests, &ctx.settings.manifests, cache.as_ref()).await?;
    if let Some(c) = &cache {
        c.prune(&index.node_manifests, &index.commitlog_entries);
    }
    // How many manifests reference each blob: in the whole repository, and per node.
    let mut refs_all: HashMap<BlobHash, u32> = HashMap::new();
    let mut refs_node: HashMap<(String, HostId, BlobHash), u32> = HashMap::new();
    for (r, m) in &all {
        for (h, _) in m.blobs() {
            *refs_all.entry(h).or_default() += 1;
            *refs_node.entry((r.cluster_key.clone(), r.host_id.clone(), h)).or_default() += 1;
        }
    }
    let mut out = Vec::new();
    for (r, m) in all.iter().filter(|(r, _)| filter(r)) {
        let (mut unique, mut reclaimable) = (0, 0);
        for (h, size) in m.blobs() {
            if refs_node.get(&(r.cluster_key.clone(), r.host_id.clone(), h)) == Some(&1) {
                unique += size;
            }
            if refs_all.get(&h) == Some(&1) {
                reclaimable += size;
            }
        }
        let tables = if m.tables.is_empty() {
            // Older writers may not list tables: count the table directories of the files.
            let dirs: BTreeSet<(&str, &str)> = m
                .files
                .iter()
                .filter_map(|f| {
                    let mut it = f.path.split('/');
                    Some((it.next()?, it.next()?))
                })
                .collect();
            dirs.len()
        } else {
            m.tables.len()
        };
        out.push(BackupSummary {
            backup_id: m.backup_id.clone(),
            tag: m.tag.clone(),
            cluster: m.node.cluster.clone(),
            host_id: m.node.host_id.clone(),
            datacenter: m.node.datacenter.clone(),
            cassandra_version: m.node.cassandra_version.clone(),
            snapshot_at: m.snapshot_at,
            finished_at: m.finished_at,
            tables,
            files: m.files.len(),
            bytes: m.total_bytes(),
            unique_bytes: unique,
            reclaimable_bytes: reclaimable,
            cluster_backup: index.cluster_manifest(&r.cluster_key, &r.backup_id).is_some(),
            key: r.key.clone(),
        });
    }
    out.sort_by(|a, b| a.backup_id.cmp(&b.backup_id).then(a.host_id.cmp(&b.host_id)));
    Ok(out)
}

/// Groups summaries by node, for display.
pub fn by_node(list: &[BackupSummary]) -> BTreeMap<(String, HostId), Vec<&BackupSummary>> {
    let mut m: BTreeMap<(String, HostId), Vec<&BackupSummary>> = BTreeMap::new();
    for s in list {
        m.entry((s.cluster.clone(), s.host_id.clone())).or_default().push(s);
    }
    m
}
