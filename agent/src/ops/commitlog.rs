//! Commit-log archiving and point-in-time restore (research §4).
//!
//! **Archiving.** [`archive`] stores segments as blobs and writes one index entry per segment at
//! `clusters/<cluster>/commitlog/<host>/<closed-at>_<segment>.json` (closed-at = the file's
//! modification time). It is what Cassandra's `archive_command` runs, once per segment:
//!
//! ```text
//! archive_command=/usr/bin/cassette-agent commitlog-backup --location s3://bucket/prefix %path
//! ```
//!
//! Cassandra splits the command on single spaces and runs it without a shell, so no quoting;
//! options that need more go into the config file (`CASSETTE_CONFIG` or
//! `/etc/cassette/agent.toml`). A call for a segment already archived (Cassandra re-archives the
//! segments it finds at startup) does nothing and succeeds. It can also sweep a directory that
//! `archive_command=/bin/ln %path /backup/%name` fills, removing what it stored.
//!
//! **Point-in-time restore.** [`restore`] selects the segments that can hold writes between
//! `from` (by default the snapshot time of the newest backup taken before the target) and the
//! target time: every segment closed after `from`, up to and including the first one closed at or
//! after the target. It downloads them (verified), writes `commitlog_archiving.properties` with
//! the target time in the precision the node's version parses, optionally restricts replay to
//! some tables, and prints what to do next. [`finish`] puts the original properties back (and
//! removes the replay restriction), so the node does not replay again at every restart — by
//! hand, or automatically once the node is up ([`wait_and_finish`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cassette_common::commitlog::{CommitLogHeader, CommitLogName};
use cassette_common::ids::BlobHash;
use cassette_common::layout;
use cassette_common::manifest::{COMMITLOG_ENTRY_FORMAT, CommitLogEntry};
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};

use super::catalog::{self, CatalogError, ManifestCache};
use super::locks::{LockError, LockKind, RepoLock};
use super::{IdentityError, NodeIdentity, OpContext, human_bytes};
use crate::cassandra::ReleaseVersion;
use crate::storage::engine::{DownloadItem, FailureSummary};
use crate::storage::repo::Written;
use crate::storage::{Retry, StoreError, TransferStats};

/// Commit-log settings (`[commitlog]` in the config file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommitLogConfig {
    /// Cassandra's configuration directory (holds `commitlog_archiving.properties` and
    /// `jvm-server.options`). Default: the directory of `cassandra.cassandra_yaml`.
    pub conf_dir: Option<PathBuf>,
    /// Where point-in-time restores download segments (Cassandra copies them from there).
    pub download_dir: Option<PathBuf>,
    /// The `restore_command` written into `commitlog_archiving.properties`.
    pub restore_command: String,
}

impl Default for CommitLogConfig {
    fn default() -> Self {
        Self { conf_dir: None, download_dir: None, restore_command: "/bin/cp -f %from %to".into() }
    }
}

impl CommitLogConfig {
    /// Every problem, one line each.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut p = Vec::new();
        if !self.restore_command.contains("%from") || !self.restore_command.contains("%to") {
            p.push(format!("commitlog.restore_command {:?} must contain %from and %to", self.restore_command));
        }
        if self.restore_command.contains("  ") || self.restore_command.contains('"') {
            p.push(
                "commitlog.restore_command is split on single spaces without a shell: no quotes, no double spaces"
                    .into(),
            );
        }
        if p.is_empty() { Ok(()) } else { Err(p) }
    }
}

/// A commit-log operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum CommitLogError {
    /// The node could not be identified.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading the catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A lock could not be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// A file that is not a usable segment.
    #[error("{}: {reason}", path.display())]
    Segment {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An index entry read from storage that must not be acted on (untrusted input).
    #[error(
        "commit-log index entry {key} in {location}: {source}; nothing was downloaded and commitlog_archiving.properties was not written (remove or repair that entry)"
    )]
    BadEntry {
        /// The entry's key.
        key: String,
        /// The repository.
        location: String,
        /// What is wrong with it.
        #[source]
        source: cassette_common::manifest::ManifestError,
    },
    /// The request cannot be carried out; nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// Downloads failed; no properties were written.
    #[error(
        "{} of {total} segments could not be downloaded and verified: {}; commitlog_archiving.properties was not written",
        failures.len(),
        failures.iter().take(3).map(|f| format!("{}: {}", f.path.display(), f.error)).collect::<Vec<_>>().join("; ")
    )]
    Download {
        /// Segments to download.
        total: usize,
        /// Failures.
        failures: Vec<FailureSummary>,
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
}

impl CommitLogError {
    /// Whether a retry makes sense.
    pub fn retry(&self) -> Retry {
        match self {
            CommitLogError::Identity(e) => e.retry(),
            CommitLogError::Store(e) => e.retry(),
            CommitLogError::Catalog(e) => e.retry(),
            CommitLogError::Lock(e) => e.retry(),
            CommitLogError::Download { .. } => Retry::Backoff,
            _ => Retry::Never,
        }
    }

    fn local(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CommitLogError::Local { op, path: path.into(), source }
    }
}

/// One segment handled by [`archive`].
#[derive(Debug, Clone, Serialize)]
pub struct ArchivedSegment {
    /// The local file.
    pub path: PathBuf,
    /// Segment file name.
    pub segment: String,
    /// Its index entry's key.
    pub key: String,
    /// Size.
    pub size: u64,
    /// SHA-256 (absent when it was already archived and not read again).
    pub sha256: Option<BlobHash>,
    /// When it was closed (modification time).
    pub closed_at: DateTime<Utc>,
    /// Whether bytes were sent.
    pub uploaded: bool,
    /// Whether it was archived before (nothing done).
    pub already_archived: bool,
    /// Whether the local file was removed afterwards.
    pub removed: bool,
}

/// What [`archive`] did.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveReport {
    /// Cluster.
    pub cluster: String,
    /// Node.
    pub host_id: String,
    /// Segments archived (or found archived).
    pub segments: Vec<ArchivedSegment>,
    /// Files that failed, with the reason.
    pub failures: Vec<FailureSummary>,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// The segment files given: files as they are, directories swept (segment names only, oldest id first).
pub fn segment_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, CommitLogError> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| CommitLogError::local("read", p, e))?;
        if meta.is_dir() {
            let mut found: Vec<(i64, PathBuf)> = std::fs::read_dir(p)
                .map_err(|e| CommitLogError::local("list", p, e))?
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_str().map(str::to_owned)?;
                    let id = CommitLogName::parse(&name)?.id;
                    e.file_type().ok().filter(|t| t.is_file()).map(|_| (id, e.path()))
                })
                .collect();
            found.sort();
            out.extend(found.into_iter().map(|(_, p)| p));
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Archives segment files (see the module documentation). A failure of one file does not stop
/// the others; the report lists it.
pub async fn archive(
    ctx: &OpContext,
    node: &NodeIdentity,
    files: &[PathBuf],
    remove_after: bool,
) -> Result<ArchiveReport, CommitLogError> {
    let start = Instant::now();
    ctx.repo.init().await?;
    let engine = ctx.engine()?;
    let mut report = ArchiveReport {
        cluster: node.cluster.clone(),
        host_id: node.host_id.to_string(),
        segments: Vec::new(),
        failures: Vec::new(),
        seconds: 0.0,
    };
    for path in files {
        match archive_one(ctx, &engine, node, path, remove_after).await {
            Ok(s) => report.segments.push(s),
            Err(e) => report.failures.push(FailureSummary { path: path.clone(), error: e.to_string() }),
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

async fn archive_one(
    ctx: &OpContext,
    engine: &crate::storage::TransferEngine,
    node: &NodeIdentity,
    path: &Path,
    remove_after: bool,
) -> Result<ArchivedSegment, CommitLogError> {
    let header = CommitLogHeader::read(path).map_err(|e| CommitLogError::Segment {
        path: path.to_owned(),
        reason: format!("not a commit-log segment Cassandra can replay: {e}"),
    })?;
    let meta = std::fs::metadata(path).map_err(|e| CommitLogError::local("stat", path, e))?;
    let closed_at: DateTime<Utc> =
        meta.modified().map(DateTime::<Utc>::from).map_err(|e| CommitLogError::local("stat", path, e))?;
    let segment = header.file_name();
    let key = layout::commitlog_entry_key(&node.cluster, &node.host_id, closed_at, &segment);
    let mut out = ArchivedSegment {
        path: path.to_owned(),
        segment: segment.clone(),
        key: key.clone(),
        size: meta.len(),
        sha256: None,
        closed_at,
        uploaded: false,
        already_archived: false,
        removed: false,
    };
    // Archived before (same segment, same modification time): nothing to read or send.
    match ctx.repo.get_json::<CommitLogEntry>(&key, 1 << 20).await {
        Ok(existing) if existing.size == meta.len() && existing.segment == segment => {
            out.sha256 = Some(existing.sha256);
            out.already_archived = true;
        }
        Ok(_) => {}
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e.into()),
    }
    if !out.already_archived {
        let stored = engine.upload_file(path).await?;
        out.sha256 = Some(stored.sha256);
        out.uploaded = stored.uploaded;
        let entry = CommitLogEntry {
            format: COMMITLOG_ENTRY_FORMAT,
            segment: segment.clone(),
            version: u32::try_from(header.version).unwrap_or_default(),
            segment_id: u64::try_from(header.id).unwrap_or_default(),
            host_id: node.host_id.clone(),
            size: stored.size,
            sha256: stored.sha256,
            closed_at,
            archived_at: Utc::now(),
        };
        if stored.uploaded {
            // A blob this call just wrote is younger than any removal's grace period: safe.
            write_entry(ctx, &key, &entry).await?;
        } else {
            // The blob was there already and nothing references it yet: hold a backup lock while
            // referencing it, as a backup does, so a removal cannot take it meanwhile.
            let progress = std::sync::Arc::clone(&ctx.progress);
            let on_wait = move |m: &str| progress.message(m);
            let lock = RepoLock::acquire(
                &ctx.repo,
                LockKind::Backup,
                format!("commit-log archive of {segment} (node {})", node.host_id),
                &ctx.settings.locks,
                &ctx.cancel,
                &on_wait,
            )
            .await?;
            let r = async {
                if ctx.repo.blob_size(&stored.sha256).await?.is_none() {
                    engine.upload_file(path).await?;
                }
                write_entry(ctx, &key, &entry).await
            }
            .await;
            lock.release().await;
            r?;
        }
    }
    if remove_after {
        std::fs::remove_file(path).map_err(|e| CommitLogError::local("remove archived segment", path, e))?;
        out.removed = true;
    }
    Ok(out)
}

async fn write_entry(ctx: &OpContext, key: &str, entry: &CommitLogEntry) -> Result<(), CommitLogError> {
    match ctx.repo.put_json_create(key, entry).await {
        Ok(Written::Created | Written::AlreadyPresent) => Ok(()),
        Err(e) => {
            // A concurrent archiver of the same segment wrote it first (another archived_at).
            match ctx.repo.get_json::<CommitLogEntry>(key, 1 << 20).await {
                Ok(existing) if existing.sha256 == entry.sha256 && existing.segment == entry.segment => Ok(()),
                _ => Err(e.into()),
            }
        }
    }
}

/// A point-in-time restore.
#[derive(Debug, Clone)]
pub struct PitrRequest {
    /// Restore up to this time.
    pub until: DateTime<Utc>,
    /// Replay from this time; default: the snapshot time of the newest backup taken before `until`.
    pub from: Option<DateTime<Utc>>,
    /// Where segments are downloaded.
    pub download_dir: PathBuf,
    /// Cassandra's configuration directory.
    pub conf_dir: PathBuf,
    /// Replay only these tables (`-Dcassandra.replayList`).
    pub tables: Vec<(String, String)>,
    /// The node's Cassandra release, when it cannot be found otherwise.
    pub cassandra_version: Option<String>,
    /// `restore_command`.
    pub restore_command: String,
    /// Only select and show; download and write nothing.
    pub dry_run: bool,
}

/// A segment selected for replay.
#[derive(Debug, Clone, Serialize)]
pub struct SelectedSegment {
    /// File name.
    pub segment: String,
    /// Segment id.
    pub segment_id: u64,
    /// When it was closed.
    pub closed_at: DateTime<Utc>,
    /// Size.
    pub size: u64,
    /// SHA-256.
    pub sha256: BlobHash,
    /// Its index entry.
    pub key: String,
}

/// What [`restore`] did.
#[derive(Debug, Clone, Serialize)]
pub struct PitrReport {
    /// Cluster.
    pub cluster: String,
    /// Node.
    pub host_id: String,
    /// Replay from.
    pub from: DateTime<Utc>,
    /// The backup `from` came from, when it was not given.
    pub from_backup: Option<String>,
    /// Restore up to.
    pub until: DateTime<Utc>,
    /// The value written as `restore_point_in_time`.
    pub restore_point_in_time: String,
    /// Cassandra release the format was chosen for.
    pub cassandra_version: String,
    /// Segments selected, oldest first.
    pub segments: Vec<SelectedSegment>,
    /// Where they were downloaded.
    pub download_dir: PathBuf,
    /// The properties file written.
    pub properties: Option<PathBuf>,
    /// The JVM options file holding the replay restriction.
    pub replay_list_file: Option<PathBuf>,
    /// Download counters.
    pub download: Option<TransferStats>,
    /// A dry run.
    pub dry_run: bool,
    /// Remarks.
    pub warnings: Vec<String>,
    /// What to do next.
    pub next_steps: Vec<String>,
}

/// The `restore_point_in_time` text for a release: `yyyy:MM:dd HH:mm:ss` (3.11 and early 4.0
/// parse whole seconds only), with microseconds where the node parses them (4.0.14+, 4.1, 5.0).
/// Returns the text and, when precision was lost, a note.
pub fn restore_point(until: DateTime<Utc>, version: &ReleaseVersion) -> (String, Option<String>) {
    let micros =
        (version.major, version.minor) >= (4, 1) || (version.major == 4 && version.minor == 0 && version.patch >= 14);
    if micros {
        (until.format("%Y:%m:%d %H:%M:%S%.6f").to_string(), None)
    } else {
        let text = until.format("%Y:%m:%d %H:%M:%S").to_string();
        let note = (until.timestamp_subsec_micros() != 0).then(|| {
            format!(
                "Cassandra {version} reads restore_point_in_time in whole seconds: writes after {} are not replayed",
                until.format("%H:%M:%S")
            )
        });
        (text, note)
    }
}

const PROPERTIES: &str = "commitlog_archiving.properties";
const ORIGINAL_SUFFIX: &str = ".cassette-original";
const MARKER: &str = "# Written by cassette-agent commitlog-restore";
const REPLAY_MARKER: &str = "# cassette-agent commitlog-restore: replay only these tables (removed by --finish)";

fn jvm_options_file(conf_dir: &Path, version: &ReleaseVersion) -> PathBuf {
    if version.major >= 4 { conf_dir.join("jvm-server.options") } else { conf_dir.join("jvm.options") }
}

/// Parses the closed-at time of an index key (`…/<closed-at>_<segment>.json`).
fn closed_at_of(key: &str) -> Option<DateTime<Utc>> {
    let file = key.rsplit('/').next()?;
    let (t, _) = file.split_once('_')?;
    NaiveDateTime::parse_from_str(t, "%Y%m%dT%H%M%S%.3fZ").ok().map(|n| n.and_utc())
}

/// Selects, downloads and configures a point-in-time restore (see the module documentation).
pub async fn restore(ctx: &OpContext, node: &NodeIdentity, req: &PitrRequest) -> Result<PitrReport, CommitLogError> {
    ctx.repo.open_existing().await?;
    let mut warnings = Vec::new();
    if let Some(from) = req.from
        && from >= req.until
    {
        return Err(CommitLogError::Refused(format!(
            "--from {} is not before --until {}",
            from.to_rfc3339(),
            req.until.to_rfc3339()
        )));
    }
    // `from`, and the node's version, from the newest backup before the target.
    let mut from_backup = None;
    let mut version_text = req.cassandra_version.clone().or_else(|| node.cassandra_version.clone());
    let from = match req.from {
        Some(f) => f,
        None => {
            let index = catalog::scan_backups(&ctx.repo, &node.cluster).await?;
            let cache = ManifestCache::for_context(ctx);
            let mut found = None;
            for r in index.node(&node.cluster, &node.host_id).iter().rev() {
                let m = catalog::load_manifest(&ctx.repo, r, &ctx.settings.manifests, cache.as_ref()).await?;
                if m.snapshot_at <= req.until {
                    found = Some(m);
                    break;
                }
            }
            let m = found.ok_or_else(|| {
                CommitLogError::Refused(format!(
                    "node {} has no backup taken before {}: give --from (the time from which to replay)",
                    node.host_id,
                    req.until.to_rfc3339()
                ))
            })?;
            if version_text.is_none() {
                version_text = Some(m.node.cassandra_version.clone());
            }
            from_backup = Some(m.backup_id.to_string());
            m.snapshot_at
        }
    };
    let version = version_text.as_deref().and_then(ReleaseVersion::parse).ok_or_else(|| {
        CommitLogError::Refused(
            "the node's Cassandra version is unknown (it decides the time format Cassandra parses): pass --cassandra-version".into(),
        )
    })?;
    let prefix = layout::commitlog_prefix(&node.cluster, &node.host_id);
    let offset = format!("{prefix}/{}", layout::index_time(from));
    let listed = ctx.repo.list_after(&prefix, &offset).await?;
    let mut selected = Vec::new();
    for m in listed {
        let key = m.location.to_string();
        let Some(closed) = closed_at_of(&key) else { continue };
        if closed < from {
            continue;
        }
        selected.push((closed, key));
        if closed >= req.until {
            break;
        }
    }
    if selected.last().is_none_or(|(c, _)| *c < req.until) {
        warnings.push(format!(
            "no archived segment was closed at or after {}: the writes of the segment that was active then are not in the archive yet (archived when Cassandra switches segments)",
            req.until.to_rfc3339()
        ));
    }
    let mut segments = Vec::new();
    for (_, key) in &selected {
        let e: CommitLogEntry = ctx.repo.get_json(key, 1 << 20).await?;
        // Untrusted: its segment name becomes a file name in the download directory.
        let key_segment = match layout::parse_cluster_object(key) {
            Some(layout::ClusterObject::CommitLogEntry { segment, .. }) => Some(segment),
            _ => None,
        };
        let bad =
            |source| CommitLogError::BadEntry { key: key.clone(), location: ctx.repo.location().to_string(), source };
        e.validate(key_segment.as_deref()).map_err(bad)?;
        if e.host_id != node.host_id {
            return Err(bad(cassette_common::manifest::ManifestError::BadName {
                what: "commit-log index entry host_id".into(),
                name: e.host_id.to_string(),
                expected: "the node whose index it is stored under",
            }));
        }
        segments.push(SelectedSegment {
            segment: e.segment,
            segment_id: e.segment_id,
            closed_at: e.closed_at,
            size: e.size,
            sha256: e.sha256,
            key: key.clone(),
        });
    }
    let (point, note) = restore_point(req.until, &version);
    warnings.extend(note);
    // Segments still in the node's own commit-log directory are replayed too.
    if let Ok(dirs) = ctx.cassandra.directories().await
        && let Some(cl) = dirs.commitlog
    {
        let local = std::fs::read_dir(&cl)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_str().and_then(CommitLogName::parse).is_some())
            .count();
        if local > 0 {
            warnings.push(format!(
                "{local} segment(s) in {} are replayed as well at startup (their writes after the target are skipped); move them aside first to replay the archive only (restore --strategy in-place does)",
                cl.display()
            ));
        }
    }
    let mut report = PitrReport {
        cluster: node.cluster.clone(),
        host_id: node.host_id.to_string(),
        from,
        from_backup,
        until: req.until,
        restore_point_in_time: point.clone(),
        cassandra_version: version.raw.clone(),
        segments,
        download_dir: req.download_dir.clone(),
        properties: None,
        replay_list_file: None,
        download: None,
        dry_run: req.dry_run,
        warnings,
        next_steps: Vec::new(),
    };
    if req.dry_run {
        return Ok(report);
    }
    if !req.download_dir.is_absolute() || !req.conf_dir.is_dir() {
        return Err(CommitLogError::Refused(format!(
            "the download directory must be an absolute path ({}) and the configuration directory must exist ({})",
            req.download_dir.display(),
            req.conf_dir.display()
        )));
    }
    let items: Vec<DownloadItem<'_>> = report
        .segments
        .iter()
        .map(|s| DownloadItem::new(s.sha256, s.size, req.download_dir.join(&s.segment)))
        .collect();
    let bytes: u64 = items.iter().map(|i| i.size).sum();
    ctx.say(format!(
        "downloading {} segments ({}) into {}",
        items.len(),
        human_bytes(bytes),
        req.download_dir.display()
    ));
    let engine = ctx.engine()?;
    let dl = engine.download_files(items.clone()).await;
    if !dl.failures.is_empty() {
        return Err(CommitLogError::Download {
            total: items.len(),
            failures: dl.failures.iter().map(FailureSummary::from).collect(),
        });
    }
    report.download = Some(dl.stats);
    // Nothing else in the restore directory: Cassandra restores every file it finds there.
    for e in std::fs::read_dir(&req.download_dir).into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if !report.segments.iter().any(|s| s.segment == n) {
            report.warnings.push(format!(
                "{} is in the restore directory too: Cassandra restores and replays it as well",
                e.path().display()
            ));
        }
    }
    report.properties = Some(write_properties(req, &point, &report)?);
    if !req.tables.is_empty() {
        report.replay_list_file = Some(write_replay_list(&req.conf_dir, &version, &req.tables)?);
    }
    report.next_steps = vec![
        "make sure Cassandra is stopped and its SSTables are those of the backup (cassette-agent restore --strategy in-place)".into(),
        format!(
            "start Cassandra: it copies the {} segment(s) from {} and replays writes up to {} (UTC)",
            report.segments.len(),
            req.download_dir.display(),
            point
        ),
        format!(
            "once it is up, run: cassette-agent commitlog-restore --finish --conf-dir {} (or add --wait-and-finish to this command next time); otherwise it replays these segments at every restart",
            req.conf_dir.display()
        ),
    ];
    Ok(report)
}

fn write_properties(req: &PitrRequest, point: &str, report: &PitrReport) -> Result<PathBuf, CommitLogError> {
    let path = req.conf_dir.join(PROPERTIES);
    let original = req.conf_dir.join(format!("{PROPERTIES}{ORIGINAL_SUFFIX}"));
    let existing = std::fs::read_to_string(&path).ok();
    // Keep the operator's own file (once: a second restore must not save ours as "original").
    if let Some(text) = &existing
        && !text.starts_with(MARKER)
        && !original.exists()
    {
        std::fs::copy(&path, &original).map_err(|e| CommitLogError::local("keep a copy of", &path, e))?;
    }
    let archive_command = std::fs::read_to_string(&original)
        .ok()
        .or(existing)
        .and_then(|t| {
            t.lines()
                .map(str::trim)
                .find_map(|l| l.strip_prefix("archive_command=").map(str::to_owned))
                .filter(|v| !v.trim().is_empty())
        })
        .unwrap_or_default();
    let text = format!(
        "{MARKER} at {} for a point-in-time restore of node {} to {} (UTC).\n# Remove it after the node has started: cassette-agent commitlog-restore --finish --conf-dir {}\n# (the original file, if any, is kept as {PROPERTIES}{ORIGINAL_SUFFIX} and put back by --finish).\narchive_command={archive_command}\nrestore_command={}\nrestore_directories={}\nrestore_point_in_time={point}\nprecision=MICROSECONDS\n",
        Utc::now().to_rfc3339(),
        report.host_id,
        report.until.to_rfc3339(),
        req.conf_dir.display(),
        req.restore_command,
        req.download_dir.display(),
    );
    let tmp = path.with_extension("properties.tmp");
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| CommitLogError::local("write", &path, e))?;
    Ok(path)
}

fn write_replay_list(
    conf_dir: &Path,
    version: &ReleaseVersion,
    tables: &[(String, String)],
) -> Result<PathBuf, CommitLogError> {
    let path = jvm_options_file(conf_dir, version);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let mut kept = strip_replay_list(&text);
    if !kept.is_empty() && !kept.ends_with('\n') {
        kept.push('\n');
    }
    let list: Vec<String> = tables.iter().map(|(k, t)| format!("{k}.{t}")).collect();
    kept.push_str(&format!("{REPLAY_MARKER}\n-Dcassandra.replayList={}\n", list.join(",")));
    std::fs::write(&path, kept).map_err(|e| CommitLogError::local("write", &path, e))?;
    Ok(path)
}

fn strip_replay_list(text: &str) -> String {
    let mut out = String::new();
    let mut skip_next = false;
    for line in text.lines() {
        if line == REPLAY_MARKER {
            skip_next = true;
            continue;
        }
        if skip_next && line.starts_with("-Dcassandra.replayList=") {
            skip_next = false;
            continue;
        }
        skip_next = false;
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// What [`finish`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FinishReport {
    /// The original properties were put back.
    pub restored_original: bool,
    /// Our properties file was removed (there was no original).
    pub removed_properties: bool,
    /// The replay restriction was removed from this file.
    pub replay_list_removed_from: Option<PathBuf>,
    /// The download directory was removed.
    pub removed_download_dir: Option<PathBuf>,
}

/// Ends a point-in-time restore: the original `commitlog_archiving.properties` comes back (or
/// ours goes), the replay restriction goes, and optionally the downloaded segments.
pub fn finish(conf_dir: &Path, download_dir: Option<&Path>) -> Result<FinishReport, CommitLogError> {
    let mut r = FinishReport::default();
    let path = conf_dir.join(PROPERTIES);
    let original = conf_dir.join(format!("{PROPERTIES}{ORIGINAL_SUFFIX}"));
    if original.exists() {
        std::fs::rename(&original, &path).map_err(|e| CommitLogError::local("put back", &path, e))?;
        r.restored_original = true;
    } else if std::fs::read_to_string(&path).is_ok_and(|t| t.starts_with(MARKER)) {
        std::fs::remove_file(&path).map_err(|e| CommitLogError::local("remove", &path, e))?;
        r.removed_properties = true;
    }
    for name in ["jvm-server.options", "jvm.options"] {
        let p = conf_dir.join(name);
        if let Ok(text) = std::fs::read_to_string(&p)
            && text.contains(REPLAY_MARKER)
        {
            std::fs::write(&p, strip_replay_list(&text)).map_err(|e| CommitLogError::local("write", &p, e))?;
            r.replay_list_removed_from = Some(p);
        }
    }
    if let Some(d) = download_dir
        && d.is_dir()
    {
        std::fs::remove_dir_all(d).map_err(|e| CommitLogError::local("remove", d, e))?;
        r.removed_download_dir = Some(d.to_owned());
    }
    Ok(r)
}

/// Waits until the node answers, then [`finish`]es.
pub async fn wait_and_finish(
    ctx: &OpContext,
    conf_dir: &Path,
    download_dir: Option<&Path>,
    timeout: Duration,
) -> Result<FinishReport, CommitLogError> {
    let deadline = Instant::now() + timeout;
    ctx.say("waiting for Cassandra to start, to remove the point-in-time restore settings afterwards");
    loop {
        if ctx.cassandra.is_up().await.unwrap_or(false) {
            return finish(conf_dir, download_dir);
        }
        if Instant::now() >= deadline {
            return Err(CommitLogError::Refused(format!(
                "the node did not come up within {timeout:?}: run cassette-agent commitlog-restore --finish --conf-dir {} after it has started",
                conf_dir.display()
            )));
        }
        tokio::select! {
            _ = ctx.cancel.cancelled() => return Err(CommitLogError::Refused("cancelled while waiting for the node".into())),
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_points_follow_the_version() {
        let t = DateTime::parse_from_rfc3339("2024-03-01T10:15:30.123456Z").unwrap().to_utc();
        let v = |s: &str| ReleaseVersion::parse(s).unwrap();
        assert_eq!(restore_point(t, &v("4.1.7")).0, "2024:03:01 10:15:30.123456");
        assert_eq!(restore_point(t, &v("5.0.1")).0, "2024:03:01 10:15:30.123456");
        assert_eq!(restore_point(t, &v("4.0.14")).0, "2024:03:01 10:15:30.123456");
        let (p, note) = restore_point(t, &v("3.11.17"));
        assert_eq!(p, "2024:03:01 10:15:30");
        assert!(note.unwrap().contains("whole seconds"));
        let (p, note) = restore_point(t, &v("4.0.3"));
        assert_eq!(p, "2024:03:01 10:15:30");
        assert!(note.is_some());
        let whole = DateTime::parse_from_rfc3339("2024-03-01T10:15:30Z").unwrap().to_utc();
        assert!(restore_point(whole, &v("3.11.17")).1.is_none());
    }

    #[test]
    fn index_keys_give_back_their_time() {
        let t = DateTime::parse_from_rfc3339("2026-11-23T21:43:39.114Z").unwrap().to_utc();
        let h = "1b1c2ce9-e5ab-4b1e-a2cf-0f5cd9f8b1c3".parse().unwrap();
        assert_eq!(closed_at_of(&layout::commitlog_entry_key("c", &h, t, "CommitLog-7-1.log")), Some(t));
    }

    #[test]
    fn replay_lists_are_added_and_removed_cleanly() {
        let base = "-Xss256k\n# comment\n";
        let tmp = tempfile::tempdir().unwrap();
        let v = ReleaseVersion::parse("4.1.7").unwrap();
        std::fs::write(tmp.path().join("jvm-server.options"), base).unwrap();
        let p = write_replay_list(tmp.path(), &v, &[("shop".into(), "users".into())]).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with(base) && text.ends_with("-Dcassandra.replayList=shop.users\n"), "{text}");
        // Twice: still one restriction.
        write_replay_list(tmp.path(), &v, &[("a".into(), "b".into())]).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.matches("replayList").count(), 1, "{text}");
        let r = finish(tmp.path(), None).unwrap();
        assert_eq!(r.replay_list_removed_from, Some(p.clone()));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), base);
    }
}
