//! Node operations: backup, restore, commit-log archiving and point-in-time restore, listing,
//! verification and removal of backups, as phase functions a caller runs one by one.
//!
//! Every operation takes an [`OpContext`] (repository, transfer settings, hash cache, the
//! Cassandra adapter, a progress sink, a cancellation token) and a request struct, and returns a
//! typed report or an error that says whether a retry makes sense. The standalone CLI
//! (`cassette-agent backup`, `restore`, …) runs all phases of one operation in a row; a
//! coordinator runs one phase per node at a time with barriers in between (backup: snapshot,
//! upload, manifest, cleanup; restore: download, truncate, import, cleanup).
//!
//! # Phases, for a coordinator
//!
//! - Backup: [`backup::snapshot`] on every node together (one backup id for all), then per node
//!   [`backup::lock`], [`backup::upload`], [`backup::write_manifest`], releasing the lock, and
//!   [`backup::cleanup`] always (after a failure too). Each phase can run in another process:
//!   upload re-reads the snapshot by its tag, and the hash cache makes that cheap.
//! - Restore: [`restore::plan`] (checks, no changes) and [`restore::download`] on every node;
//!   barrier; [`restore::live::truncate`] on one node; barrier; [`restore::live::import`] (or
//!   [`restore::inplace::place`] for a stopped node) on every node; [`restore::live::cleanup`].
//!   Progress between calls is kept in the staging directory, so a phase rerun continues.
//!
//! # Layout
//! - [`backup`]: snapshot, upload, manifest, cleanup.
//! - [`restore`]: plan, download, truncate, import (or place files in-place), cleanup.
//! - [`commitlog`]: archiving segments (`archive_command`) and point-in-time restore.
//! - [`catalog`]: what a repository holds: manifests, backups per node, sizes.
//! - [`verify`]: checking that a backup's blobs exist (and hash to their names).
//! - [`remove`]: removing backups and every blob no remaining backup needs (the removal engine).
//! - [`purge`]: retention policies, departed nodes and commit-log cutoffs over a shared root.
//! - [`locks`]: lock objects that keep removals and backups apart.
//! - this module: the context, entity selection, node identity, file-system helpers.

pub mod backup;
pub mod catalog;
pub mod commitlog;
pub mod locks;
pub mod purge;
pub mod remove;
pub mod restore;
pub mod verify;

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cassette_common::datadir::{self, KeyspaceClass};
use cassette_common::ids::HostId;
use cassette_common::units::ByteSize;
use serde::{Deserialize, Serialize};
pub use tokio_util::sync::CancellationToken;

use crate::cassandra::{CassandraControl, CassandraError};
use crate::hashcache::HashCache;
use crate::storage::{ProgressSink, Repository, StoreError, TransferConfig, TransferEngine};

/// Limits on manifests read back from storage: they are untrusted input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManifestLimits {
    /// Largest node manifest read (larger ones are refused before downloading). A node with
    /// 10,000 SSTables has a manifest of about 30 MiB.
    pub max_bytes: ByteSize,
    /// Most file entries a manifest may list.
    pub max_files: usize,
    /// Manifests and index entries read at once when scanning a repository.
    pub read_concurrency: usize,
}

impl Default for ManifestLimits {
    fn default() -> Self {
        Self { max_bytes: ByteSize(512 << 20), max_files: 2_000_000, read_concurrency: 16 }
    }
}

impl ManifestLimits {
    /// Every problem, one line each.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut p = Vec::new();
        if self.max_bytes.0 < 64 << 10 {
            p.push(format!("manifests.max_bytes {} must be at least 64 KiB", self.max_bytes));
        }
        if self.max_files == 0 {
            p.push("manifests.max_files must be at least 1".into());
        }
        if self.read_concurrency == 0 {
            p.push("manifests.read_concurrency must be at least 1".into());
        }
        if p.is_empty() { Ok(()) } else { Err(p) }
    }
}

/// Settings every operation may need besides storage and Cassandra.
#[derive(Debug, Clone, Default)]
pub struct OpSettings {
    /// Lock timing.
    pub locks: locks::LockConfig,
    /// Removal safety.
    pub removal: remove::RemovalConfig,
    /// Manifest limits.
    pub manifests: ManifestLimits,
    /// The agent's state directory (remembered node identity, manifest cache); none: nothing is remembered.
    pub state_dir: Option<PathBuf>,
    /// The node, when it cannot or should not be asked (stopped node, archive_command).
    pub node: NodeOverride,
}

/// Everything an operation works with.
#[derive(Clone)]
pub struct OpContext {
    /// The repository (already throttled to the bandwidth limit, if any).
    pub repo: Repository,
    /// Transfer settings for the engines the operation creates.
    pub transfer: TransferConfig,
    /// The hash cache shared by the operation's transfers.
    pub hash_cache: Arc<HashCache>,
    /// The local Cassandra node.
    pub cassandra: Arc<dyn CassandraControl>,
    /// Progress and step messages.
    pub progress: Arc<dyn ProgressSink>,
    /// Cancelled by the caller (Ctrl-C, a coordinator's cancel): operations stop at the next
    /// safe point and still run their cleanup.
    pub cancel: CancellationToken,
    /// Other settings.
    pub settings: OpSettings,
}

impl fmt::Debug for OpContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpContext").field("repo", &self.repo.location().to_string()).finish_non_exhaustive()
    }
}

impl OpContext {
    /// A transfer engine for one phase of an operation.
    pub fn engine(&self) -> Result<TransferEngine, StoreError> {
        TransferEngine::new(
            self.repo.clone(),
            Arc::clone(&self.hash_cache),
            self.transfer.clone(),
            Arc::clone(&self.progress),
        )
    }

    /// Tells the operator about a step.
    pub fn say(&self, text: impl AsRef<str>) {
        tracing::info!("{}", text.as_ref());
        self.progress.message(text.as_ref());
    }

    /// Runs `fut` unless the operation is cancelled first.
    pub async fn cancellable<T>(&self, fut: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => None,
            v = fut => Some(v),
        }
    }
}

/// One entity of `--entities`: a whole keyspace or one table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Entity {
    /// Every table of a keyspace.
    Keyspace(String),
    /// One table.
    Table(String, String),
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entity::Keyspace(k) => f.write_str(k),
            Entity::Table(k, t) => write!(f, "{k}.{t}"),
        }
    }
}

/// Which keyspaces and tables an operation covers.
///
/// Empty: every user keyspace and `system_auth` (roles), as
/// [`KeyspaceClass::backed_up_by_default`] says; with `system_keyspaces`, every system keyspace
/// that has files too. Keyspace and table entities may be mixed (`shop,audit.events`); a
/// keyspace covers its tables.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EntitySelection {
    /// Explicit entities; empty means the default set.
    pub entities: Vec<Entity>,
    /// Include the system keyspaces (`system`, `system_schema`, `system_auth`,
    /// `system_distributed`, `system_traces`).
    pub system_keyspaces: bool,
}

/// An `--entities` value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid entity {entity:?} in --entities: {reason} (example: --entities shop,audit.events)")]
pub struct EntityError {
    /// The rejected entity.
    pub entity: String,
    /// Why.
    pub reason: &'static str,
}

impl EntitySelection {
    /// Parses `ks1,ks2.t1` (empty: the default set).
    pub fn parse(list: &str, system_keyspaces: bool) -> Result<Self, EntityError> {
        let mut entities = BTreeSet::new();
        for raw in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let err = |reason| EntityError { entity: raw.to_owned(), reason };
            let e = match raw.split_once('.') {
                Some((k, t)) => {
                    if !datadir::is_valid_name(k) || !datadir::is_valid_name(t) {
                        return Err(err("keyspace and table names are letters, digits and '_' (at most 48)"));
                    }
                    Entity::Table(k.to_owned(), t.to_owned())
                }
                None => {
                    if !datadir::is_valid_name(raw) {
                        return Err(err("a keyspace name is letters, digits and '_' (at most 48)"));
                    }
                    Entity::Keyspace(raw.to_owned())
                }
            };
            entities.insert(e);
        }
        Ok(Self { entities: entities.into_iter().collect(), system_keyspaces })
    }

    /// Whether the selection names entities explicitly.
    pub fn is_explicit(&self) -> bool {
        !self.entities.is_empty()
    }

    /// Whether a table belongs to the selection.
    pub fn matches(&self, keyspace: &str, table: &str) -> bool {
        if KeyspaceClass::of(keyspace) == KeyspaceClass::Virtual {
            return false;
        }
        if self.entities.is_empty() {
            return KeyspaceClass::backed_up_by_default(keyspace)
                || (self.system_keyspaces && KeyspaceClass::of(keyspace) != KeyspaceClass::User);
        }
        let listed = self.entities.iter().any(|e| match e {
            Entity::Keyspace(k) => k == keyspace,
            Entity::Table(k, t) => k == keyspace && t == table,
        });
        listed || (self.system_keyspaces && KeyspaceClass::of(keyspace) != KeyspaceClass::User)
    }

    /// Keyspaces named whole, and tables named alone whose keyspace is not named whole.
    pub fn split(&self) -> (Vec<String>, Vec<(String, String)>) {
        let keyspaces: Vec<String> = self
            .entities
            .iter()
            .filter_map(|e| match e {
                Entity::Keyspace(k) => Some(k.clone()),
                Entity::Table(..) => None,
            })
            .collect();
        let tables = self
            .entities
            .iter()
            .filter_map(|e| match e {
                Entity::Table(k, t) if !keyspaces.contains(k) => Some((k.clone(), t.clone())),
                _ => None,
            })
            .collect();
        (keyspaces, tables)
    }
}

/// The node's identity given by the operator (flags, environment, config file).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeOverride {
    /// Cluster name, as Cassandra reports it (`Test Cluster`).
    pub cluster: Option<String>,
    /// Cassandra host id of the node.
    pub host_id: Option<HostId>,
}

/// Who a node is, as far as the repository is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// Cluster name.
    pub cluster: String,
    /// Host id.
    pub host_id: HostId,
    /// Cassandra release, when known (`4.1.7`).
    #[serde(default)]
    pub cassandra_version: Option<String>,
}

/// File in the state directory that remembers the node's identity between runs.
const NODE_FILE: &str = "node.json";

/// Writes the node's identity into the state directory (best effort).
pub fn remember_node(settings: &OpSettings, id: &NodeIdentity) {
    let Some(dir) = &settings.state_dir else { return };
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!("{NODE_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(id).map_err(std::io::Error::other)?)?;
        std::fs::rename(&tmp, dir.join(NODE_FILE))
    };
    if let Err(e) = write() {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remember the node's identity");
    }
}

/// The identity remembered by an earlier run, if any.
pub fn remembered_node(settings: &OpSettings) -> Option<NodeIdentity> {
    let dir = settings.state_dir.as_ref()?;
    let bytes = std::fs::read(dir.join(NODE_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The node could not be identified.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot tell which node this is: {reason}; pass --cluster and --host-id (or set them under [node] in the config file)"
)]
pub struct IdentityError {
    /// Why.
    pub reason: String,
    /// The adapter's error, when asking Cassandra failed.
    #[source]
    pub source: Option<CassandraError>,
}

impl IdentityError {
    /// Whether a retry makes sense (only when Cassandra failed in a passing way).
    pub fn retry(&self) -> crate::storage::Retry {
        self.source.as_ref().map(CassandraError::retry).unwrap_or(crate::storage::Retry::Never)
    }
}

/// Finds out which node this is: the operator's override, then (unless `ask_cassandra` is false)
/// Cassandra itself (remembered for next time), then the identity an earlier run remembered.
pub async fn resolve_node(ctx: &OpContext, ask_cassandra: bool) -> Result<NodeIdentity, IdentityError> {
    resolve_node_with(ctx, ask_cassandra, false).await
}

/// Like [`resolve_node`]; with `prefer_remembered`, a remembered identity is used before asking
/// Cassandra (commit-log archiving runs once per segment and must start fast).
pub async fn resolve_node_with(
    ctx: &OpContext,
    ask_cassandra: bool,
    prefer_remembered: bool,
) -> Result<NodeIdentity, IdentityError> {
    let o = &ctx.settings.node;
    let remembered = remembered_node(&ctx.settings);
    if prefer_remembered && let Some(r) = &remembered {
        return Ok(NodeIdentity {
            cluster: o.cluster.clone().unwrap_or_else(|| r.cluster.clone()),
            host_id: o.host_id.clone().unwrap_or_else(|| r.host_id.clone()),
            cassandra_version: r.cassandra_version.clone(),
        });
    }
    if let (Some(cluster), Some(host_id)) = (&o.cluster, &o.host_id) {
        let version =
            remembered.filter(|r| &r.host_id == host_id && &r.cluster == cluster).and_then(|r| r.cassandra_version);
        return Ok(NodeIdentity { cluster: cluster.clone(), host_id: host_id.clone(), cassandra_version: version });
    }
    let mut failure = None;
    if ask_cassandra {
        match ctx.cassandra.describe_node().await {
            Ok(d) => {
                let id = NodeIdentity {
                    cluster: o.cluster.clone().unwrap_or(d.cluster_name),
                    host_id: o.host_id.clone().unwrap_or(d.host_id),
                    cassandra_version: Some(d.release_version.raw),
                };
                remember_node(&ctx.settings, &id);
                return Ok(id);
            }
            Err(e) => failure = Some(e),
        }
    }
    if let Some(r) = remembered {
        return Ok(NodeIdentity {
            cluster: o.cluster.clone().unwrap_or(r.cluster),
            host_id: o.host_id.clone().unwrap_or(r.host_id),
            cassandra_version: r.cassandra_version,
        });
    }
    let reason = match &failure {
        Some(e) => format!("Cassandra did not answer ({e}) and no earlier run remembered this node"),
        None => "no earlier run remembered this node".to_owned(),
    };
    Err(IdentityError { reason, source: failure })
}

/// A path that cannot be written safely.
#[derive(Debug, thiserror::Error)]
pub enum PathSafetyError {
    /// A symbolic link on the way.
    #[error("{} is a symbolic link: refusing to write through it (remove it, or restore elsewhere)", path.display())]
    Symlink {
        /// The link.
        path: PathBuf,
    },
    /// Something other than a directory where a directory is needed.
    #[error("{} is not a directory", path.display())]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// The file system could not be read.
    #[error("stat {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Checks that joining `rel` (already validated as a plain relative path) to `root` passes no
/// symbolic link and no non-directory, from `root`'s first missing or existing component down to
/// the file itself. `root` itself may be a link (operators mount data directories that way).
pub fn check_no_symlinks(root: &Path, rel: &str) -> Result<(), PathSafetyError> {
    let mut p = root.to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        p.push(part);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => return Err(PathSafetyError::Symlink { path: p }),
            Ok(m) if i + 1 < parts.len() && !m.is_dir() => return Err(PathSafetyError::NotADirectory { path: p }),
            Ok(_) => {}
            // Nothing further down can exist.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(PathSafetyError::Io { path: p, source: e }),
        }
    }
    Ok(())
}

/// Free space and device of the file system holding `path` (or its nearest existing ancestor).
pub fn file_system_of(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut p = path.to_path_buf();
    loop {
        match std::fs::metadata(&p) {
            Ok(m) => {
                let st = nix::sys::statvfs::statvfs(&p).map_err(std::io::Error::from)?;
                let free = st.blocks_available().saturating_mul(st.fragment_size());
                return Ok((m.dev(), free));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !p.pop() {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// `fsync` of a directory, so that renames and new entries in it survive a crash.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Human-readable bytes (`1.5 GiB`).
pub fn human_bytes(n: u64) -> String {
    bytesize::ByteSize(n).display().iec().to_string()
}

/// The host name, for lock objects and messages.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compiles only if every operation can run on a spawned task (a coordinator's job runner,
    /// the gRPC server): their futures must be `Send` for any lifetime.
    #[allow(dead_code)]
    fn operations_are_spawnable(ctx: OpContext) {
        fn spawnable<T: Send + 'static>(_: T) {}
        let c = ctx.clone();
        spawnable(async move { backup::run(&c, &backup::BackupRequest::default()).await });
        let c = ctx.clone();
        spawnable(async move { restore::run(&c, &restore::RestoreRequest::default(), None).await });
        let c = ctx.clone();
        spawnable(async move {
            remove::remove(&c, &remove::RemoveScope::Cluster("c".into()), &remove::RemoveRequest::default()).await
        });
        let c = ctx.clone();
        spawnable(async move {
            verify::verify(&c, &verify::Scope::Cluster("c".into()), &catalog::BackupSelector::Latest, true).await
        });
        let c = ctx.clone();
        spawnable(async move {
            let id = NodeIdentity {
                cluster: "c".into(),
                host_id: "1b1c2ce9-e5ab-4b1e-a2cf-0f5cd9f8b1c3".parse().unwrap(),
                cassandra_version: None,
            };
            commitlog::archive(&c, &id, &[], false).await
        });
        let c = ctx.clone();
        spawnable(async move {
            let id = NodeIdentity {
                cluster: "c".into(),
                host_id: "1b1c2ce9-e5ab-4b1e-a2cf-0f5cd9f8b1c3".parse().unwrap(),
                cassandra_version: None,
            };
            let req = commitlog::PitrRequest {
                until: chrono::Utc::now(),
                from: None,
                download_dir: PathBuf::new(),
                conf_dir: PathBuf::new(),
                tables: vec![],
                cassandra_version: None,
                restore_command: String::new(),
                dry_run: true,
            };
            commitlog::restore(&c, &id, &req).await
        });
        spawnable(async move {
            if let Ok(i) = catalog::scan(&ctx.repo).await {
                let _ = catalog::summarize(&ctx, &i, |_| true).await;
            }
        });
    }

    #[test]
    fn entities_parse_mix_and_default_to_user_keyspaces() {
        let s = EntitySelection::parse("shop, audit.events,shop", false).unwrap();
        assert_eq!(s.entities, vec![Entity::Keyspace("shop".into()), Entity::Table("audit".into(), "events".into())]);
        assert!(s.matches("shop", "users") && s.matches("audit", "events"));
        assert!(!s.matches("audit", "other") && !s.matches("system_auth", "roles"));
        assert_eq!(s.split(), (vec!["shop".to_owned()], vec![("audit".to_owned(), "events".to_owned())]));
        let s = EntitySelection::parse("shop,shop.users", false).unwrap();
        assert_eq!(s.split().1, vec![], "a table of a keyspace named whole is covered by it");

        let d = EntitySelection::default();
        assert!(d.matches("shop", "users") && d.matches("system_auth", "roles"));
        // system_schema is backed up by default: it rebuilds a cluster from nothing (--new-cluster).
        assert!(!d.matches("system", "local") && d.matches("system_schema", "tables"));
        assert!(!d.matches("system_views", "settings"));
        let sys = EntitySelection { system_keyspaces: true, ..Default::default() };
        assert!(sys.matches("system", "local") && sys.matches("system_schema", "tables"));
        assert!(!sys.matches("system_views", "settings"));

        for bad in ["bad-name", "a.b.c", "ks.", ".t"] {
            let e = EntitySelection::parse(bad, false).unwrap_err().to_string();
            assert!(e.contains("--entities"), "{bad}: {e}");
        }
    }

    #[test]
    fn symlinks_on_the_way_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("ks/t-1")).unwrap();
        check_no_symlinks(root, "ks/t-1/nb-1-big-Data.db").unwrap();
        check_no_symlinks(root, "other/t/x").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("ks/evil")).unwrap();
        let e = check_no_symlinks(root, "ks/evil/passwd").unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        std::os::unix::fs::symlink("/etc/passwd", root.join("ks/t-1/nb-1-big-Data.db")).unwrap();
        assert!(check_no_symlinks(root, "ks/t-1/nb-1-big-Data.db").is_err(), "a link at the file itself");
        std::fs::write(root.join("ks/file"), b"x").unwrap();
        assert!(matches!(check_no_symlinks(root, "ks/file/x"), Err(PathSafetyError::NotADirectory { .. })));
    }

    #[test]
    fn free_space_of_missing_paths_comes_from_their_ancestor() {
        let tmp = tempfile::tempdir().unwrap();
        let (dev, free) = file_system_of(&tmp.path().join("a/b/c")).unwrap();
        let (dev2, _) = file_system_of(tmp.path()).unwrap();
        assert_eq!(dev, dev2);
        assert!(free > 0);
    }
}
