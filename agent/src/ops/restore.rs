//! Restore of one node from a node manifest, with three strategies:
//!
//! - **in-place** (the node is stopped): download and verify everything into a staging
//!   directory on each data disk, then replace the tables' files (SSTables not in the backup, and
//!   leftover transaction logs, are removed only then), set the old tokens in `cassandra.yaml` if
//!   asked, move old commit-log segments aside. The way to rebuild a node from scratch.
//! - **hardlinks** and **import** (the node runs): phases *download*, *truncate*, *import*
//!   (hard links into the table directories and `nodetool refresh`, or `nodetool import`),
//!   *cleanup*, run all at once or one per call (`--phase`), so a cluster restore can put a
//!   barrier between them (download everywhere, truncate once, import everywhere).
//!
//! Before anything is written, [`plan`] reads the manifest (size-limited, validated: it is
//! untrusted), checks every destination for symbolic links on the way, the tables (missing,
//! renamed, schema differences), the tokens, and the free space the download needs. Nothing on
//! the live node changes until every file is downloaded and verified.
//!
//! # Layout
//! - this module: requests, the plan, the download phase, reports, errors, [`run`].
//! - [`live`]: truncate, import/hardlinks, cleanup of live restores.
//! - [`inplace`]: placing files on a stopped node, `cassandra.yaml`, commit-log segments.

pub mod inplace;
pub mod live;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use cassette_common::cql::{self, SchemaDiff};
use cassette_common::datadir::{self, KeyspaceClass, TableDir};
use cassette_common::ids::BackupId;
use cassette_common::manifest::{FileEntry, NodeInfo, NodeManifest};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::catalog::{self, BackupSelector, CatalogError};
use super::{Entity, EntitySelection, IdentityError, OpContext, PathSafetyError, human_bytes};
use crate::cassandra::{CassandraError, ImportOptions, LiveTable};
use crate::storage::engine::{DownloadItem, FailureSummary};
use crate::storage::{Retry, StoreError, TransferStats};

/// Restore settings (`[restore]` in the config file).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestoreConfig {
    /// Where downloads are staged. Default: `<data dir>/.cassette-restore/` on each data
    /// directory, so that hard links and moves into the table directories never cross file systems.
    pub staging_dir: Option<PathBuf>,
}

/// How a restore puts files back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// The node is stopped: files are placed directly in its data directories.
    InPlace,
    /// The node runs: hard links into the table directories, then `nodetool refresh`.
    Hardlinks,
    /// The node runs (4.0+): `nodetool import` of the downloaded directories.
    Import,
}

impl Strategy {
    /// Stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::InPlace => "in-place",
            Strategy::Hardlinks => "hardlinks",
            Strategy::Import => "import",
        }
    }

    fn live(self) -> bool {
        self != Strategy::InPlace
    }
}

/// Which phases to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Every phase in order.
    All,
    /// Download and verify into staging.
    Download,
    /// Truncate the target tables (live strategies; run it on one node of a cluster).
    Truncate,
    /// Import or hard-link (live), or place the files (in-place).
    Import,
    /// Remove the staging directories (and, if asked, the truncated snapshots).
    Cleanup,
}

/// `--rename ks.t=ks.t2`: restore a backed-up table into another (existing) table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rename {
    /// Source keyspace and table (as in the backup).
    pub from: (String, String),
    /// Target keyspace and table (must exist).
    pub to: (String, String),
}

impl std::str::FromStr for Rename {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err =
            || format!("--rename {s:?} is not ks.table=ks.table (example: --rename shop.users=shop.users_restored)");
        let (a, b) = s.split_once('=').ok_or_else(err)?;
        let pair = |x: &str| -> Result<(String, String), String> {
            let (k, t) = x.trim().split_once('.').ok_or_else(err)?;
            if !datadir::is_valid_name(k) || !datadir::is_valid_name(t) {
                return Err(err());
            }
            Ok((k.to_owned(), t.to_owned()))
        };
        Ok(Rename { from: pair(a)?, to: pair(b)? })
    }
}

/// What to restore and how.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    /// Which backup.
    pub backup: BackupSelector,
    /// Restore another node's backup (cluster, host id); default: this node's own.
    pub source: Option<(String, cassette_common::ids::HostId)>,
    /// How.
    pub strategy: Strategy,
    /// Which phases.
    pub phase: Phase,
    /// Which tables (default: every user table in the backup).
    pub entities: EntitySelection,
    /// In-place: restore `system_schema` and `system_auth` but not `system`, so the node starts
    /// as a new member with the old schema and data (implies `set_tokens`).
    pub new_cluster: bool,
    /// Renames.
    pub renames: Vec<Rename>,
    /// `nodetool import` options.
    pub import_options: ImportOptions,
    /// In-place: write the backup's tokens as `initial_token` and `auto_bootstrap: false` into
    /// `cassandra.yaml`.
    pub set_tokens: bool,
    /// In-place: the node's `cassandra.yaml`, for `set_tokens`.
    pub cassandra_yaml: Option<PathBuf>,
    /// In-place: leave the commit-log segments where they are (they are moved aside by default,
    /// so the node does not replay writes newer than the backup on top of it).
    pub keep_commitlog: bool,
    /// Live: skip the truncate phase (the restored data is added to what the table holds).
    pub no_truncate: bool,
    /// Cleanup: also clear the `truncated-*` snapshots the truncate phase made (kept by default:
    /// they hold the data the restore replaced).
    pub clear_truncated: bool,
    /// Restore even if the node's tokens differ from the backup's.
    pub ignore_token_mismatch: bool,
    /// Restore even if a table's primary key or column types differ.
    pub ignore_schema_mismatch: bool,
    /// Skip the free-space check (file systems whose free-space figure is wrong).
    pub skip_space_check: bool,
    /// Only plan and check; change nothing.
    pub dry_run: bool,
    /// Live: create target tables that do not exist (after a `DROP TABLE`, or on an empty
    /// cluster) from the backup's `schema.cql`: its types, the table with its old id, its
    /// indexes. Statements are checked first (only `CREATE … IF NOT EXISTS` of that table).
    pub create_tables: bool,
}

impl Default for RestoreRequest {
    fn default() -> Self {
        Self {
            backup: BackupSelector::Latest,
            source: None,
            strategy: Strategy::Import,
            phase: Phase::All,
            entities: EntitySelection::default(),
            new_cluster: false,
            renames: Vec::new(),
            import_options: ImportOptions::default(),
            set_tokens: false,
            cassandra_yaml: None,
            keep_commitlog: false,
            no_truncate: false,
            clear_truncated: false,
            ignore_token_mismatch: false,
            ignore_schema_mismatch: false,
            skip_space_check: false,
            dry_run: false,
            create_tables: false,
        }
    }
}

/// One table of a plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedTable {
    /// Keyspace in the backup.
    pub source_keyspace: String,
    /// Table in the backup.
    pub source_table: String,
    /// Table directory in the backup (`t-<id>`).
    pub source_dir: String,
    /// Keyspace restored into.
    pub target_keyspace: String,
    /// Table restored into.
    pub target_table: String,
    /// Directory of the target table on this node (live: the current table's; in-place: the
    /// backup's).
    pub target_dir: String,
    /// Files of the table.
    pub files: usize,
    /// Their size.
    pub bytes: u64,
    /// How the live table's schema differs, if it does.
    pub schema_diff: Option<SchemaDiff>,
    /// The backup's `schema.cql`, checked, when the table is to be created (`--create-tables`).
    pub create_schema: Option<String>,
}

impl PlannedTable {
    /// `ks.table` of the target.
    pub fn target_name(&self) -> String {
        format!("{}.{}", self.target_keyspace, self.target_table)
    }

    /// `ks.table` of the source.
    pub fn source_name(&self) -> String {
        format!("{}.{}", self.source_keyspace, self.source_table)
    }
}

/// One file of a plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedFile {
    /// The manifest entry.
    pub entry: FileEntry,
    /// Index into [`RestorePlan::tables`].
    pub table: usize,
    /// Index of the target data directory (and of its staging directory).
    pub root: usize,
    /// In-place: the destination already holds exactly this content (nothing to download).
    pub in_place: bool,
}

/// Free space needed on one file system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpaceCheck {
    /// A directory on that file system (a staging directory).
    pub path: PathBuf,
    /// Bytes the download writes there.
    pub needed: u64,
    /// Bytes available.
    pub available: u64,
}

/// Everything a restore will do, computed and checked before anything changes.
#[derive(Debug, Clone, Serialize)]
pub struct RestorePlan {
    /// The backup.
    pub backup_id: BackupId,
    /// Its manifest's key.
    pub manifest_key: String,
    /// The node the backup is of.
    pub source: NodeInfo,
    /// When its snapshot was taken.
    pub snapshot_at: DateTime<Utc>,
    /// Strategy.
    pub strategy: Strategy,
    /// The node's data directories.
    pub target_roots: Vec<PathBuf>,
    /// Staging directory per data directory.
    pub staging: Vec<PathBuf>,
    /// Tables.
    pub tables: Vec<PlannedTable>,
    /// Files.
    pub files: Vec<PlannedFile>,
    /// Free space per file system.
    pub space: Vec<SpaceCheck>,
    /// Remarks.
    pub warnings: Vec<String>,
}

impl PlannedFile {
    /// Where the download goes: `<staging of its root>/<live path>`. Derived, not stored: a
    /// node's plan has tens of thousands of files.
    pub fn staged(&self, staging: &[PathBuf]) -> PathBuf {
        staging[self.root].join(&self.entry.path)
    }

    /// In-place: where the file ends up, `<its data directory>/<live path>`. Derived, not stored.
    pub fn live(&self, target_roots: &[PathBuf]) -> PathBuf {
        target_roots[self.root].join(&self.entry.path)
    }
}

impl RestorePlan {
    /// Where the download of `f` goes.
    pub fn staged(&self, f: &PlannedFile) -> PathBuf {
        f.staged(&self.staging)
    }

    /// In-place: where `f` ends up (`None` for the other strategies, which import from staging).
    pub fn dest(&self, f: &PlannedFile) -> Option<PathBuf> {
        (self.strategy == Strategy::InPlace).then(|| f.live(&self.target_roots))
    }

    /// Files that must be downloaded.
    pub fn to_download(&self) -> impl Iterator<Item = &PlannedFile> {
        self.files.iter().filter(|f| !f.in_place)
    }

    fn state_path(&self) -> PathBuf {
        self.staging[0].join(STATE_FILE)
    }
}

/// Progress of a restore across calls, kept in the first staging directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreState {
    /// The backup.
    pub backup_id: Option<BackupId>,
    /// Its manifest.
    pub manifest_key: String,
    /// Strategy.
    pub strategy: Option<Strategy>,
    /// When every file was downloaded and verified.
    pub downloaded_at: Option<DateTime<Utc>>,
    /// When the truncate phase started (ms since epoch, node clock = this host's clock).
    pub truncated_at_ms: Option<i64>,
    /// Target tables truncated.
    pub truncated: Vec<String>,
    /// Target tables imported (or placed, in place).
    pub imported: Vec<String>,
    /// Target tables created from the backup's schema (`--create-tables`).
    #[serde(default)]
    pub created: Vec<String>,
}

const STATE_FILE: &str = "cassette-restore-state.json";

impl RestoreState {
    fn load(path: &Path) -> Option<Self> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    fn save(&self, path: &Path) -> Result<(), RestoreError> {
        let write = || -> std::io::Result<()> {
            if let Some(d) = path.parent() {
                std::fs::create_dir_all(d)?;
            }
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| RestoreError::Local { op: "write restore state", path: path.to_owned(), source: e })
    }
}

/// What a restore did (`--output json`).
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// The backup.
    pub backup_id: BackupId,
    /// Strategy.
    pub strategy: Strategy,
    /// Phases run by this call.
    pub phases: Vec<String>,
    /// The node the backup is of.
    pub source_host_id: String,
    /// Its cluster.
    pub source_cluster: String,
    /// A dry run: nothing changed.
    pub dry_run: bool,
    /// Tables.
    pub tables: Vec<PlannedTable>,
    /// Files in the restore.
    pub files_total: usize,
    /// Their size.
    pub bytes_total: u64,
    /// Download counters.
    pub download: Option<TransferStats>,
    /// Free space checked.
    pub space: Vec<SpaceCheck>,
    /// Tables truncated.
    pub truncated: Vec<String>,
    /// Tables imported or placed.
    pub imported: Vec<String>,
    /// In-place: files removed from the table directories (not in the backup, or replaced).
    pub removed_files: usize,
    /// In-place: where old commit-log segments were moved.
    pub commitlog_moved_to: Option<PathBuf>,
    /// In-place: whether `cassandra.yaml` was changed.
    pub yaml_updated: bool,
    /// Snapshots the truncate made, still on disk.
    pub truncated_snapshots: Vec<String>,
    /// Staging directories (removed by the cleanup phase).
    pub staging: Vec<PathBuf>,
    /// Remarks.
    pub warnings: Vec<String>,
    /// What the operator does next.
    pub next_steps: Vec<String>,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// A restore that failed. Every variant says whether live data was touched.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The node could not be identified.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Finding or reading the backup failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The Cassandra adapter failed.
    #[error("{during}: {source}")]
    Cassandra {
        /// What was being done.
        during: String,
        /// The adapter's error.
        #[source]
        source: CassandraError,
    },
    /// The request cannot be carried out as given; nothing was changed.
    #[error("{0}; nothing was changed")]
    Refused(String),
    /// A destination is unsafe; nothing was written.
    #[error("{0}; nothing was written")]
    Unsafe(#[from] PathSafetyError),
    /// Too little disk space; nothing was downloaded.
    #[error(
        "not enough free space for the download: {}; nothing was downloaded: free space, or stage elsewhere with --staging-dir (then files are copied instead of hard-linked or moved)",
        .0.iter().map(|s| format!("{} needs {} but {} is available", s.path.display(), human_bytes(s.needed), human_bytes(s.available))).collect::<Vec<_>>().join("; ")
    )]
    NoSpace(Vec<SpaceCheck>),
    /// Downloads failed; nothing on the live node was changed.
    #[error(
        "{} of {total} files could not be downloaded and verified{}: {}; nothing on the node was changed (verified files stay in the staging directory, so a rerun fetches only the rest)",
        failures.len(),
        hint,
        failures.iter().take(3).map(|f| format!("{}: {}", f.path.display(), f.error)).collect::<Vec<_>>().join("; ")
    )]
    Download {
        /// Files to download.
        total: usize,
        /// The failures.
        failures: Vec<FailureSummary>,
        /// A hint for the most likely cause (full disk).
        hint: String,
    },
    /// A later phase needs an earlier one.
    #[error("the {phase} phase needs {needs}: {hint}")]
    PhaseOrder {
        /// The phase requested.
        phase: &'static str,
        /// What is missing.
        needs: &'static str,
        /// What to run first.
        hint: String,
    },
    /// A local file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Local {
        /// What was attempted.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Cancelled.
    #[error("restore cancelled during the {phase} phase")]
    Cancelled {
        /// The phase.
        phase: &'static str,
    },
}

impl RestoreError {
    /// Whether a retry makes sense.
    pub fn retry(&self) -> Retry {
        match self {
            RestoreError::Identity(e) => e.retry(),
            RestoreError::Catalog(e) => e.retry(),
            RestoreError::Store(e) => e.retry(),
            RestoreError::Cassandra { source, .. } => source.retry(),
            RestoreError::Download { failures, .. }
                if failures.iter().all(|f| !f.error.contains("sha256 mismatch")) =>
            {
                Retry::Backoff
            }
            _ => Retry::Never,
        }
    }

    pub(crate) fn local(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RestoreError::Local { op, path: path.into(), source }
    }

    fn cassandra(during: impl Into<String>, source: CassandraError) -> Self {
        RestoreError::Cassandra { during: during.into(), source }
    }
}

/// Whether a backed-up table is restored by this request (before renames).
fn selected(req: &RestoreRequest, keyspace: &str, table: &str) -> bool {
    let class = KeyspaceClass::of(keyspace);
    if class == KeyspaceClass::Virtual {
        return false;
    }
    let named = req.entities.entities.iter().any(|e| match e {
        Entity::Keyspace(k) => k == keyspace,
        Entity::Table(k, t) => k == keyspace && t == table,
    });
    if req.entities.is_explicit() && !named {
        return false;
    }
    match class {
        KeyspaceClass::User => true,
        _ if named => true,
        _ if req.entities.system_keyspaces => true,
        _ if req.new_cluster => keyspace == "system_schema" || keyspace == "system_auth",
        _ => false,
    }
}

/// Staging directory per data directory: `<data dir>/.cassette-restore/<backup>` (same file
/// system as the tables, so links and moves never copy), or under the operator's directory.
fn staging_roots(staging_dir: Option<&Path>, roots: &[PathBuf], backup: &BackupId) -> Vec<PathBuf> {
    match staging_dir {
        Some(d) => (0..roots.len()).map(|i| d.join(backup.as_str()).join(format!("data{i}"))).collect(),
        None => roots.iter().map(|r| r.join(".cassette-restore").join(backup.as_str())).collect(),
    }
}

/// Reads the backup, checks everything, and computes where every file goes. Changes nothing.
pub async fn plan(
    ctx: &OpContext,
    req: &RestoreRequest,
    staging_dir: Option<&Path>,
) -> Result<RestorePlan, RestoreError> {
    let mut warnings = Vec::new();
    ctx.repo.open_existing().await?;
    // The node's state decides what is possible.
    let up = ctx.cassandra.is_up().await.map_err(|e| RestoreError::cassandra("find out whether the node runs", e))?;
    if req.strategy.live() && !up {
        return Err(RestoreError::Refused(format!(
            "the node does not answer, but --strategy {} needs it running: start it, or restore a stopped node with --strategy in-place",
            req.strategy.as_str()
        )));
    }
    if req.strategy == Strategy::InPlace && up && !req.dry_run {
        return Err(RestoreError::Refused(
            "the node is running, but an in-place restore replaces its data files: stop Cassandra first (nodetool drain, then stop the service), or restore while it runs with --strategy import or hardlinks".into(),
        ));
    }
    // "nodetool cannot connect" is not "stopped" (a wrong JMX port looks the same): positive
    // proof before files are replaced.
    if req.strategy == Strategy::InPlace && !up {
        match ctx.cassandra.prove_stopped().await {
            Ok(proof) => ctx.say(format!("Cassandra is stopped on this host: {}", proof.join("; "))),
            Err(e) if req.dry_run => warnings.push(e.to_string()),
            Err(e) => return Err(RestoreError::Refused(e.to_string())),
        }
    }
    if req.strategy != Strategy::InPlace && (req.set_tokens || req.new_cluster || req.entities.system_keyspaces) {
        return Err(RestoreError::Refused(
            "--set-tokens, --new-cluster and --system-keyspaces apply to --strategy in-place only".into(),
        ));
    }
    if req.new_cluster && req.entities.system_keyspaces {
        return Err(RestoreError::Refused(
            "--new-cluster restores system_schema and system_auth and gives the node a new identity; --system-keyspaces would restore the source node's own system keyspace (its host id): pass one of them".into(),
        ));
    }
    if (req.set_tokens || req.new_cluster) && req.cassandra_yaml.as_ref().is_none_or(|y| !y.is_file()) {
        return Err(RestoreError::Refused(format!(
            "--set-tokens and --new-cluster write the backup's tokens into cassandra.yaml, but {}: set cassandra.cassandra_yaml (or --cassandra-yaml) to the node's cassandra.yaml",
            match &req.cassandra_yaml {
                Some(y) => format!("{} does not exist", y.display()),
                None => "its path is not configured".to_owned(),
            }
        )));
    }
    if req.strategy == Strategy::InPlace && !req.renames.is_empty() {
        return Err(RestoreError::Refused(
            "--rename needs a running node (--strategy import or hardlinks): an in-place restore puts files back where they were".into(),
        ));
    }
    let source = match &req.source {
        Some((c, h)) => (c.clone(), h.clone()),
        None => {
            let id = super::resolve_node(ctx, up).await?;
            (id.cluster, id.host_id)
        }
    };
    let index = catalog::scan_backups(&ctx.repo, &source.0).await?;
    let refs = index.node(&source.0, &source.1);
    let node_desc = format!("node {} of cluster {:?}", source.1, source.0);
    let (mref, manifest) = catalog::select(ctx, &refs, &req.backup, &node_desc).await?;
    ctx.say(format!(
        "restoring backup {} of {node_desc} (snapshot {}) with --strategy {}",
        manifest.backup_id,
        manifest.snapshot_at.format("%Y-%m-%d %H:%M:%S UTC"),
        req.strategy.as_str()
    ));

    let dirs =
        ctx.cassandra.directories().await.map_err(|e| RestoreError::cassandra("find the data directories", e))?;
    let target_roots = dirs.all_data_roots();
    if target_roots.is_empty() {
        return Err(RestoreError::Refused("the node has no data directories configured".into()));
    }

    // Live restores: the node's identity and schema.
    let mut live_tables: Vec<LiveTable> = Vec::new();
    if req.strategy.live() {
        let desc = ctx.cassandra.describe_node().await.map_err(|e| RestoreError::cassandra("describe the node", e))?;
        if req.strategy == Strategy::Import && !desc.release_version.supports_import() {
            return Err(RestoreError::Refused(format!(
                "Cassandra {} has no nodetool import: use --strategy hardlinks",
                desc.release_version
            )));
        }
        let mut mine = desc.tokens.clone();
        let mut theirs = manifest.node.tokens.clone();
        mine.sort();
        theirs.sort();
        if mine != theirs {
            let msg = format!(
                "token mismatch: the backup is of a node owning {} token(s) ({}…), this node owns {} ({}…): restore the backup of the node that owned these tokens (--source-host-id), or pass --ignore-token-mismatch (Cassandra then keeps only the rows this node owns, unless the import skips its token check)",
                theirs.len(),
                theirs.first().cloned().unwrap_or_default(),
                mine.len(),
                mine.first().cloned().unwrap_or_default()
            );
            if !req.ignore_token_mismatch {
                return Err(RestoreError::Refused(msg));
            }
            warnings.push(msg);
        }
        live_tables = ctx.cassandra.schema().await.map_err(|e| RestoreError::cassandra("read the live schema", e))?;
    }

    // Tables of the backup, selected and renamed.
    let mut backup_tables: BTreeMap<(String, String), (String, Option<String>)> = BTreeMap::new();
    for f in &manifest.files {
        let mut it = f.path.split('/');
        let (Some(ks), Some(tdir)) = (it.next(), it.next()) else { continue };
        let Some(td) = TableDir::parse(tdir) else { continue };
        backup_tables.entry((ks.to_owned(), td.table)).or_insert_with(|| (tdir.to_owned(), None));
    }
    for t in &manifest.tables {
        let dir = match &t.table_id {
            Some(id) => format!("{}-{id}", t.table),
            None => t.table.clone(),
        };
        let e = backup_tables.entry((t.keyspace.clone(), t.table.clone())).or_insert_with(|| (dir, None));
        e.1 = t.schema_cql.clone();
    }
    if req.entities.is_explicit() {
        let missing: Vec<String> = req
            .entities
            .entities
            .iter()
            .filter(|e| {
                !backup_tables.keys().any(|(k, t)| match e {
                    Entity::Keyspace(x) => x == k,
                    Entity::Table(x, y) => x == k && y == t,
                })
            })
            .map(ToString::to_string)
            .collect();
        if !missing.is_empty() {
            let have: BTreeSet<String> = backup_tables.keys().map(|(k, t)| format!("{k}.{t}")).collect();
            return Err(RestoreError::Refused(format!(
                "backup {} has no {} (it holds: {})",
                manifest.backup_id,
                missing.join(", "),
                have.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    for r in &req.renames {
        if !backup_tables.contains_key(&r.from) {
            return Err(RestoreError::Refused(format!(
                "--rename {}.{}: backup {} has no table {}.{}",
                r.from.0, r.from.1, manifest.backup_id, r.from.0, r.from.1
            )));
        }
        if !selected(req, &r.from.0, &r.from.1) {
            return Err(RestoreError::Refused(format!(
                "--rename {}.{}: that table is not among the --entities restored",
                r.from.0, r.from.1
            )));
        }
    }
    let mut tables: Vec<PlannedTable> = Vec::new();
    let mut missing_targets = Vec::new();
    let mut schemas = Vec::new();
    let mut incompatible = Vec::new();
    for ((ks, t), (dir, schema)) in &backup_tables {
        if !selected(req, ks, t) {
            continue;
        }
        if req.strategy.live() && KeyspaceClass::of(ks) == KeyspaceClass::LocalSystem {
            return Err(RestoreError::Refused(format!(
                "{ks}.{t} is a node-local system table: it can be restored only in place, on a stopped node"
            )));
        }
        let (tk, tt) = req
            .renames
            .iter()
            .find(|r| r.from == (ks.clone(), t.clone()))
            .map(|r| r.to.clone())
            .unwrap_or_else(|| (ks.clone(), t.clone()));
        let mut create = None;
        let (target_dir, schema_diff) = if req.strategy.live() {
            match live_tables.iter().find(|l| l.keyspace == tk && l.table == tt) {
                Some(l) => {
                    let diff = schema.as_deref().and_then(cql::parse_create_table).map(|b| cql::diff(&b, &l.columns));
                    if let Some(d) = &diff
                        && !d.incompatible.is_empty()
                    {
                        incompatible.push(format!("{tk}.{tt}: {}", d.incompatible.join("; ")));
                    }
                    (l.dir_name(), diff.filter(|d| !d.is_empty()))
                }
                None => {
                    let renamed = (tk.clone(), tt.clone()) != (ks.clone(), t.clone());
                    match (req.create_tables && !renamed, schema) {
                        (true, Some(text)) => {
                            let statements = cql::parse_schema(text, ks, t).map_err(|why| {
                                RestoreError::Refused(format!(
                                    "--create-tables: the backup's schema of {ks}.{t} cannot be used: {why}"
                                ))
                            })?;
                            let Some(id) = statements.iter().find_map(|s| s.table_id.clone()) else {
                                return Err(RestoreError::Refused(format!(
                                    "--create-tables: the backup's schema of {ks}.{t} has no WITH ID: create the table yourself, then restore"
                                )));
                            };
                            create = Some(text.trim().to_owned());
                            (format!("{t}-{}", id.replace('-', "")), None)
                        }
                        (true, None) => {
                            missing_targets.push(format!("{tk}.{tt} (the backup holds no schema.cql for it)"));
                            continue;
                        }
                        (false, _) => {
                            missing_targets.push(if renamed {
                                format!("{tk}.{tt} (the --rename target for {ks}.{t})")
                            } else {
                                format!("{tk}.{tt}")
                            });
                            if let Some(cql) = schema {
                                schemas.push(cql.trim().to_owned());
                            }
                            continue;
                        }
                    }
                }
            }
        } else {
            (dir.clone(), None)
        };
        if let Some(d) = &schema_diff {
            for c in &d.compatible {
                warnings.push(format!("{tk}.{tt}: {c}"));
            }
        }
        tables.push(PlannedTable {
            source_keyspace: ks.clone(),
            source_table: t.clone(),
            source_dir: dir.clone(),
            target_keyspace: tk,
            target_table: tt,
            target_dir,
            files: 0,
            bytes: 0,
            schema_diff,
            create_schema: create,
        });
    }
    if !missing_targets.is_empty() {
        let hint = if schemas.is_empty() {
            String::new()
        } else {
            format!(" (the backup's schema, to adapt for renamed targets:\n{}\n)", schemas.join("\n"))
        };
        return Err(RestoreError::Refused(format!(
            "these tables do not exist on the node: {}; create them first, or pass --create-tables to create them from the backup's schema (not for --rename targets){hint}",
            missing_targets.join(", ")
        )));
    }
    if !incompatible.is_empty() {
        let msg = format!("the live schema differs from the backup's: {}", incompatible.join("; "));
        if !req.ignore_schema_mismatch {
            return Err(RestoreError::Refused(format!(
                "{msg}: restoring would load SSTables of another table shape (pass --ignore-schema-mismatch to do it anyway)"
            )));
        }
        warnings.push(msg);
    }
    let mut seen_targets = BTreeSet::new();
    for t in &tables {
        if !seen_targets.insert(t.target_name()) {
            return Err(RestoreError::Refused(format!(
                "two backed-up tables would be restored into {}: check --rename",
                t.target_name()
            )));
        }
    }
    if tables.is_empty() {
        return Err(RestoreError::Refused(format!(
            "backup {} has no table to restore with this selection (system keyspaces need --entities or --system-keyspaces)",
            manifest.backup_id
        )));
    }
    // Live restores on a ring of several nodes: the truncate phase affects the whole cluster and
    // must run once, between the downloads and the imports of every node.
    if req.strategy.live() && req.phase == Phase::All && !req.no_truncate && !req.dry_run {
        let ring = ctx.cassandra.ring().await.map_err(|e| RestoreError::cassandra("read the ring", e))?;
        if ring.len() > 1 {
            return Err(RestoreError::Refused(format!(
                "the cluster has {} nodes and TRUNCATE empties a table on all of them, so the phases must run one by one: --phase download on every node, --phase truncate on one node, --phase import on every node, --phase cleanup on every node (or pass --no-truncate to add the backup's data without truncating)",
                ring.len()
            )));
        }
    }

    let staging = staging_roots(staging_dir, &target_roots, &manifest.backup_id);
    let files = place_files(req, &manifest, &mut tables, &target_roots, &dirs, &mut warnings)?;
    // Untrusted paths: no symbolic link on the way to any destination.
    for f in &files {
        let anchor_staging = match staging_dir {
            Some(d) => d.to_path_buf(),
            None => target_roots[f.root].clone(),
        };
        let staged = f.staged(&staging);
        let rel_staged = staged.strip_prefix(&anchor_staging).unwrap_or(&staged).to_string_lossy().into_owned();
        super::check_no_symlinks(&anchor_staging, &rel_staged)?;
        if req.strategy == Strategy::InPlace {
            super::check_no_symlinks(&target_roots[f.root], &f.entry.path)?;
        }
    }
    let mut plan = RestorePlan {
        backup_id: manifest.backup_id.clone(),
        manifest_key: mref.key.clone(),
        source: manifest.node.clone(),
        snapshot_at: manifest.snapshot_at,
        strategy: req.strategy,
        target_roots,
        staging,
        tables,
        files,
        space: Vec::new(),
        warnings,
    };
    if req.strategy == Strategy::InPlace {
        inplace::mark_in_place(ctx, &mut plan).await?;
    }
    plan.space = space_needed(&plan)?;
    Ok(plan)
}

/// Assigns every file of the selected tables to a target data directory (an SSTable's components
/// stay together), and computes staging and final paths.
fn place_files(
    req: &RestoreRequest,
    manifest: &NodeManifest,
    tables: &mut [PlannedTable],
    roots: &[PathBuf],
    dirs: &crate::cassandra::Directories,
    warnings: &mut Vec<String>,
) -> Result<Vec<PlannedFile>, RestoreError> {
    let same_layout = manifest.node.data_dirs.len() == roots.len();
    let local_system_root =
        dirs.local_system_data.as_ref().and_then(|d| roots.iter().position(|r| r == d)).unwrap_or(0);
    let regular: Vec<usize> = (0..dirs.data.len().max(1).min(roots.len())).collect();
    let mut load: Vec<u64> = vec![0; roots.len()];
    let mut groups: BTreeMap<(u16, String), usize> = BTreeMap::new();
    let mut skipped_index = false;
    // Sized for every file of the backup, trimmed after: no doubling slack on a large node.
    let mut out = Vec::with_capacity(manifest.files.len());
    for f in &manifest.files {
        let mut it = f.path.split('/');
        let (Some(ks), Some(tdir)) = (it.next(), it.next()) else { continue };
        let Some(ti) = tables.iter().position(|t| t.source_keyspace == ks && t.source_dir == tdir) else { continue };
        let is_index = f.path.split('/').count() == 4;
        if is_index && req.strategy.live() {
            skipped_index = true;
            continue;
        }
        // Components of one SSTable: same directory and name prefix.
        let dir = f.path.rsplit_once('/').map(|x| x.0).unwrap_or_default();
        let prefix = f
            .sstable()
            .map(|s| format!("{}-{}-{}", s.version, s.generation, s.format))
            .unwrap_or_else(|| f.path.clone());
        let group = (f.data_dir, format!("{dir}/{prefix}"));
        let root = match groups.get(&group) {
            Some(r) => *r,
            None => {
                let r = if KeyspaceClass::of(ks) == KeyspaceClass::LocalSystem {
                    local_system_root
                } else if same_layout && usize::from(f.data_dir) < roots.len() {
                    usize::from(f.data_dir)
                } else {
                    // Balance by bytes over the regular data directories.
                    *regular.iter().min_by_key(|r| (load[**r], **r)).unwrap_or(&0)
                };
                groups.insert(group, r);
                r
            }
        };
        load[root] += f.size;
        tables[ti].files += 1;
        tables[ti].bytes += f.size;
        out.push(PlannedFile { entry: f.clone(), table: ti, root, in_place: false });
    }
    out.shrink_to_fit();
    if skipped_index {
        warnings.push(
            "native secondary index SSTables are not restored into a running node: Cassandra rebuilds the indexes of imported SSTables".into(),
        );
    }
    if !same_layout && req.strategy == Strategy::InPlace {
        warnings.push(format!(
            "the backup has {} data directories and this node {}: SSTables were spread over this node's directories by size",
            manifest.node.data_dirs.len(),
            roots.len()
        ));
    }
    Ok(out)
}

fn space_needed(plan: &RestorePlan) -> Result<Vec<SpaceCheck>, RestoreError> {
    let mut by_fs: BTreeMap<u64, SpaceCheck> = BTreeMap::new();
    for f in plan.to_download() {
        // Bytes already downloaded into staging (a rerun) do not count again.
        let have = std::fs::metadata(plan.staged(f)).map(|m| m.len() == f.entry.size).unwrap_or(false);
        if have {
            continue;
        }
        let dir = &plan.staging[f.root];
        let (dev, free) = super::file_system_of(dir).map_err(|e| RestoreError::local("check free space of", dir, e))?;
        let s = by_fs.entry(dev).or_insert(SpaceCheck { path: dir.clone(), needed: 0, available: free });
        s.needed += f.entry.size;
    }
    Ok(by_fs.into_values().collect())
}

/// The download phase: every file not already in place is fetched into staging and verified.
pub async fn download(
    ctx: &OpContext,
    plan: &RestorePlan,
    req: &RestoreRequest,
) -> Result<TransferStats, RestoreError> {
    let short: Vec<SpaceCheck> = plan.space.iter().filter(|s| s.needed > s.available).cloned().collect();
    if !short.is_empty() && !req.skip_space_check {
        return Err(RestoreError::NoSpace(short));
    }
    // Sized exactly: a node's list is megabytes, and doubling would leave a third of it unused.
    let mut items: Vec<DownloadItem<'_>> = Vec::with_capacity(plan.to_download().count());
    items.extend(
        plan.to_download().map(|f| {
            DownloadItem::under(f.entry.sha256, f.entry.size, &plan.staging[f.root], Path::new(&f.entry.path))
        }),
    );
    let bytes: u64 = items.iter().map(|i| i.size).sum();
    ctx.say(format!("downloading {} files ({}) into {}", items.len(), human_bytes(bytes), plan.staging[0].display()));
    let mut state = RestoreState::load(&plan.state_path()).unwrap_or_default();
    if state.backup_id.as_ref().is_some_and(|b| *b != plan.backup_id) {
        state = RestoreState::default();
    }
    state.backup_id = Some(plan.backup_id.clone());
    state.manifest_key = plan.manifest_key.clone();
    state.strategy = Some(plan.strategy);
    state.downloaded_at = None;
    state.save(&plan.state_path())?;
    let engine = ctx.engine()?;
    let total = items.len();
    let report = ctx
        .cancellable(engine.download_files_counted(items))
        .await
        .ok_or(RestoreError::Cancelled { phase: "download" })?;
    if !report.failures.is_empty() {
        let full = report.failures.iter().any(|f| {
            matches!(&f.error, StoreError::Local { source, .. } if source.raw_os_error() == Some(28) || source.kind() == std::io::ErrorKind::StorageFull)
        });
        let hint = if full { " (the disk is full)".to_owned() } else { String::new() };
        return Err(RestoreError::Download {
            total,
            failures: report.failures.iter().map(FailureSummary::from).collect(),
            hint,
        });
    }
    let stats = report.stats;
    drop(report);
    state.downloaded_at = Some(Utc::now());
    state.save(&plan.state_path())?;
    Ok(stats)
}

/// Checks that the download phase finished for this plan (later phases may run in another call).
fn require_downloaded(plan: &RestorePlan, phase: &'static str) -> Result<RestoreState, RestoreError> {
    let state = RestoreState::load(&plan.state_path()).unwrap_or_default();
    if state.backup_id.as_ref() != Some(&plan.backup_id) || state.downloaded_at.is_none() {
        return Err(RestoreError::PhaseOrder {
            phase,
            needs: "every file downloaded and verified",
            hint: format!("run the download phase for backup {} first (--phase download)", plan.backup_id),
        });
    }
    Ok(state)
}

/// Runs the requested phases of a restore.
pub async fn run(
    ctx: &OpContext,
    req: &RestoreRequest,
    staging_dir: Option<&Path>,
) -> Result<RestoreReport, RestoreError> {
    let start = Instant::now();
    let plan = plan(ctx, req, staging_dir).await?;
    let mut report = RestoreReport {
        backup_id: plan.backup_id.clone(),
        strategy: plan.strategy,
        phases: Vec::new(),
        source_host_id: plan.source.host_id.to_string(),
        source_cluster: plan.source.cluster.clone(),
        dry_run: req.dry_run,
        tables: plan.tables.clone(),
        files_total: plan.files.len(),
        bytes_total: plan.files.iter().map(|f| f.entry.size).sum(),
        download: None,
        space: plan.space.clone(),
        truncated: Vec::new(),
        imported: Vec::new(),
        removed_files: 0,
        commitlog_moved_to: None,
        yaml_updated: false,
        truncated_snapshots: Vec::new(),
        staging: plan.staging.clone(),
        warnings: plan.warnings.clone(),
        next_steps: Vec::new(),
        seconds: 0.0,
    };
    if req.dry_run {
        let short: Vec<&SpaceCheck> = plan.space.iter().filter(|s| s.needed > s.available).collect();
        for s in short {
            report.warnings.push(format!(
                "{} needs {} but only {} is available",
                s.path.display(),
                human_bytes(s.needed),
                human_bytes(s.available)
            ));
        }
        report.seconds = start.elapsed().as_secs_f64();
        return Ok(report);
    }
    let wants = |p: Phase| req.phase == Phase::All || req.phase == p;
    if wants(Phase::Download) {
        report.download = Some(download(ctx, &plan, req).await?);
        report.phases.push("download".into());
    }
    match plan.strategy {
        Strategy::InPlace => {
            if wants(Phase::Truncate) && req.phase == Phase::Truncate {
                return Err(RestoreError::Refused("an in-place restore has no truncate phase".into()));
            }
            if wants(Phase::Import) {
                let placed = inplace::place(ctx, &plan, req).await?;
                report.removed_files = placed.removed_files;
                report.commitlog_moved_to = placed.commitlog_moved_to;
                report.yaml_updated = placed.yaml_updated;
                report.imported = plan.tables.iter().map(PlannedTable::target_name).collect();
                report.warnings.extend(placed.warnings);
                report.phases.push("import".into());
            }
        }
        Strategy::Hardlinks | Strategy::Import => {
            if wants(Phase::Truncate) && !req.no_truncate {
                report.truncated = live::truncate(ctx, &plan).await?;
                report.phases.push("truncate".into());
            }
            if wants(Phase::Import) {
                report.imported = live::import(ctx, &plan, req).await?;
                report.phases.push("import".into());
            }
        }
    }
    if wants(Phase::Cleanup) {
        let c = live::cleanup(ctx, &plan, req).await?;
        report.truncated_snapshots = c.kept_snapshots;
        report.phases.push("cleanup".into());
    }
    report.next_steps = next_steps(&plan, req, &report);
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

fn next_steps(plan: &RestorePlan, req: &RestoreRequest, report: &RestoreReport) -> Vec<String> {
    let mut s = Vec::new();
    let did = |p: &str| report.phases.iter().any(|x| x == p);
    match plan.strategy {
        Strategy::InPlace if did("import") => {
            if req.new_cluster || req.set_tokens {
                s.push("cassandra.yaml now sets initial_token to the backup's tokens and auto_bootstrap: false".into());
            }
            s.push("start Cassandra on this node; it loads the restored SSTables at startup".into());
            s.push(format!(
                "for a point-in-time restore, run cassette-agent commitlog-restore --until <time> before starting it (the backup's snapshot was taken at {})",
                plan.snapshot_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            ));
        }
        Strategy::Hardlinks | Strategy::Import if did("download") && !did("import") => {
            s.push(
                "when every node has downloaded, run --phase truncate on one node, then --phase import on every node"
                    .into(),
            );
        }
        Strategy::Hardlinks | Strategy::Import if did("truncate") && !did("import") => {
            s.push("run --phase import on every node that downloaded the backup".into());
        }
        _ => {}
    }
    if !report.truncated_snapshots.is_empty() {
        s.push(format!(
            "the data the restore replaced is kept in snapshot(s) {}: clear them with nodetool clearsnapshot -t <tag> once the restore is confirmed",
            report.truncated_snapshots.join(", ")
        ));
    }
    if !did("cleanup") && (did("download") || did("import")) {
        s.push("run --phase cleanup to remove the staging directories".into());
    }
    s
}
