//! Removing backups, and every blob no remaining backup or commit-log entry references.
//!
//! The rule (also in `docs/layout.md`, "Removal and running backups"):
//! 1. Take the exclusive *remove* lock; give up, having changed nothing, if any other operation
//!    holds a fresh lock ([`super::locks`]). Backups started meanwhile wait for it.
//! 2. Read every node manifest and every commit-log index entry of the repository (all clusters:
//!    blobs are shared). Any unreadable manifest stops the removal before it deletes anything.
//! 3. Decide what goes ([`remove`]: the backups asked for; [`super::purge`]: what no retention
//!    policy keeps, departed nodes, commit-log entries no point-in-time restore needs), write the
//!    list to `removal-plan.json`, and delete those documents first (cluster manifests, node
//!    manifests, commit-log entries), recording progress in the plan: an interrupted removal
//!    leaves unreferenced blobs, never manifests naming deleted blobs, and the next removal
//!    finishes the plan before it decides anything ([`RemovalPlan`]).
//! 4. Delete, in batches, the blobs no remaining document references and that are older than the
//!    grace period (by the storage's clock, relative to the lock). Before each batch the lock must
//!    have been rewritten within half its stale timeout and no other fresh lock may have appeared.
//!
//! The grace period protects writers that take no lock: `commitlog-backup` storing a new segment
//! before its index entry exists, and a backup whose lock lapsed (it checks its blobs again).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cassette_common::ids::{BackupId, BlobHash, HostId};
use cassette_common::layout::{self, ClusterObject};
use cassette_common::manifest::{CommitLogEntry, NodeManifest};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use serde::{Deserialize, Serialize};

use super::catalog::{self, CatalogError, EntryRef, ManifestCache, ManifestRef, RepoIndex};
use super::locks::{self, LockError, LockKind, RepoLock};
use super::{OpContext, human_bytes};
use crate::storage::{Retry, StoreError};

/// Removal safety settings (`[removal]` in the config file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemovalConfig {
    /// Blobs younger than this are never deleted, referenced or not.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// Blobs deleted per batch (one lock check per batch).
    pub delete_batch: usize,
}

impl Default for RemovalConfig {
    fn default() -> Self {
        Self { grace: Duration::from_secs(24 * 3600), delete_batch: 1000 }
    }
}

impl RemovalConfig {
    /// Every problem, one line each.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        if self.delete_batch == 0 {
            return Err(vec!["removal.delete_batch must be at least 1".into()]);
        }
        Ok(())
    }
}

/// Whose backups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoveScope {
    /// One node: cluster, host id. Selection (`keep_last`) counts that node's backups.
    Node(String, HostId),
    /// Every node of a cluster. Selection counts backup ids across the cluster.
    Cluster(String),
}

/// Which backups to remove.
#[derive(Debug, Clone, Default)]
pub struct RemoveRequest {
    /// These backups.
    pub ids: Vec<BackupId>,
    /// Backups started longer ago than this…
    pub older_than: Option<Duration>,
    /// …except the newest N (alone: every backup but the newest N).
    pub keep_last: Option<usize>,
    /// Only report what would be removed.
    pub dry_run: bool,
}

/// A backup removed (from one node).
#[derive(Debug, Clone, Serialize)]
pub struct RemovedBackup {
    /// The backup.
    pub backup_id: BackupId,
    /// Cluster.
    pub cluster: String,
    /// Node.
    pub host_id: String,
    /// Files.
    pub files: usize,
    /// Their size.
    pub bytes: u64,
}

/// What a removal did (or would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RemoveReport {
    /// A dry run: nothing deleted.
    pub dry_run: bool,
    /// Backups removed.
    pub removed: Vec<RemovedBackup>,
    /// Backups of the scope that remain.
    pub kept: usize,
    /// Manifests (node and cluster) deleted.
    pub manifests_deleted: usize,
    /// Commit-log index entries selected for removal (no point-in-time restore needs them).
    pub commitlog_entries_removed: usize,
    /// Commit-log index entries deleted.
    pub commitlog_entries_deleted: usize,
    /// An interrupted removal's plan this one finished first (a dry run: would finish).
    pub resumed: Option<ResumedPlan>,
    /// Blobs deleted.
    pub blobs_deleted: usize,
    /// Bytes freed.
    pub bytes_freed: u64,
    /// Unreferenced blobs kept because they are younger than the grace period.
    pub blobs_kept_young: usize,
    /// Their size.
    pub bytes_kept_young: u64,
    /// Blobs still referenced.
    pub blobs_referenced: usize,
    /// Stale locks (left by killed processes) deleted.
    pub stale_locks_removed: usize,
    /// Remarks.
    pub warnings: Vec<String>,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// A removal that failed or was refused.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The catalog could not be read; nothing was deleted.
    #[error("{0} (nothing was deleted)")]
    Catalog(#[from] CatalogError),
    /// Another operation runs, or the lock lapsed.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The request cannot be carried out; nothing was deleted.
    #[error("{0}; nothing was deleted")]
    Refused(String),
    /// Deletion stopped partway.
    #[error(
        "removal stopped after deleting {deleted} blob(s): {reason}; every remaining backup is intact (manifests go first, blobs only when no manifest names them): run the removal again to finish"
    )]
    Interrupted {
        /// Blobs deleted before it stopped.
        deleted: usize,
        /// Why.
        reason: String,
    },
}

impl RemoveError {
    /// Whether a retry makes sense.
    pub fn retry(&self) -> Retry {
        match self {
            RemoveError::Store(e) => e.retry(),
            RemoveError::Catalog(e) => e.retry(),
            RemoveError::Lock(e) => e.retry(),
            RemoveError::Refused(_) => Retry::Never,
            RemoveError::Interrupted { .. } => Retry::Backoff,
        }
    }
}

/// Picks the victims among the scope's manifests (oldest first).
fn select(
    req: &RemoveRequest,
    scope: &RemoveScope,
    refs: &[ManifestRef],
    now: DateTime<Utc>,
) -> Result<BTreeSet<String>, RemoveError> {
    if req.ids.is_empty() && req.older_than.is_none() && req.keep_last.is_none() {
        return Err(RemoveError::Refused(
            "say which backups to remove: backup ids, --older-than, --keep-last, or both of the last two".into(),
        ));
    }
    let mut victims = BTreeSet::new();
    if !req.ids.is_empty() {
        let missing: Vec<String> =
            req.ids.iter().filter(|id| !refs.iter().any(|r| &r.backup_id == *id)).map(ToString::to_string).collect();
        if !missing.is_empty() {
            return Err(RemoveError::Refused(format!("no backup {} in this scope", missing.join(", "))));
        }
        victims.extend(refs.iter().filter(|r| req.ids.contains(&r.backup_id)).map(|r| r.key.clone()));
        return Ok(victims);
    }
    // --keep-last counts each node's own backups (standalone agents back up on their own
    // schedules, with their own ids; a cluster backup has the same id on every node).
    let _ = scope;
    let mut groups: BTreeMap<String, Vec<&ManifestRef>> = BTreeMap::new();
    for r in refs {
        groups.entry(format!("{}/{}", r.cluster_key, r.host_id)).or_default().push(r);
    }
    for members in groups.values() {
        let mut ids: Vec<&BackupId> = members.iter().map(|r| &r.backup_id).collect();
        ids.sort();
        ids.dedup();
        let protected: BTreeSet<&BackupId> = ids.iter().rev().take(req.keep_last.unwrap_or(0)).copied().collect();
        for r in members {
            if protected.contains(&r.backup_id) {
                continue;
            }
            let old_enough = match req.older_than {
                Some(d) => {
                    let cutoff = now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
                    r.backup_id.started_at() < cutoff
                }
                None => true,
            };
            if old_enough {
                victims.insert(r.key.clone());
            }
        }
    }
    Ok(victims)
}

/// Removes backups and sweeps unreferenced blobs (see the module documentation).
pub async fn remove(ctx: &OpContext, scope: &RemoveScope, req: &RemoveRequest) -> Result<RemoveReport, RemoveError> {
    let what = match scope {
        RemoveScope::Node(c, h) => format!("removal of backups of node {h} in cluster {c:?}"),
        RemoveScope::Cluster(c) => format!("removal of backups of cluster {c:?}"),
    };
    run_removal(ctx, what, req.dry_run, |cat| decide_remove(scope, req, cat)).await
}

/// What `remove-backup` deletes: the selected backups, refusing half a cluster backup.
fn decide_remove(scope: &RemoveScope, req: &RemoveRequest, cat: &Catalog) -> Result<Victims, RemoveError> {
    let index = &cat.index;
    let in_scope: Vec<ManifestRef> = match scope {
        RemoveScope::Node(c, h) => index.node(c, h),
        RemoveScope::Cluster(c) => index.cluster(c),
    };
    let mut victims = select(req, scope, &in_scope, cat.now)?;
    let mut warnings = Vec::new();
    // Per-node removal of part of a coordinator's cluster backup would leave its cluster manifest
    // naming a node manifest that is gone.
    if let RemoveScope::Node(..) = scope {
        let clustered: Vec<String> = in_scope
            .iter()
            .filter(|r| victims.contains(&r.key) && index.cluster_manifest(&r.cluster_key, &r.backup_id).is_some())
            .map(|r| r.backup_id.to_string())
            .collect();
        if !clustered.is_empty() {
            return Err(RemoveError::Refused(format!(
                "backup(s) {} are cluster backups (they have a cluster manifest): remove them for every node with --all-nodes",
                clustered.join(", ")
            )));
        }
    }
    // A cluster backup goes as a whole or not at all.
    if let RemoveScope::Cluster(_) = scope {
        let partial: BTreeSet<(String, BackupId)> = in_scope
            .iter()
            .filter(|r| index.cluster_manifest(&r.cluster_key, &r.backup_id).is_some() && !victims.contains(&r.key))
            .map(|r| (r.cluster_key.clone(), r.backup_id.clone()))
            .collect();
        let before = victims.len();
        victims.retain(|k| {
            !in_scope.iter().any(|r| &r.key == k && partial.contains(&(r.cluster_key.clone(), r.backup_id.clone())))
        });
        if victims.len() < before {
            warnings.push(format!(
                "{} node manifest(s) of cluster backups were kept because other nodes keep the same backup",
                before - victims.len()
            ));
        }
    }
    let kept = in_scope.iter().filter(|r| !victims.contains(&r.key)).count();
    Ok(Victims { manifests: victims, entries: BTreeSet::new(), kept, warnings })
}

/// The catalog a removal decides on: every node manifest and commit-log index entry of the root
/// (all clusters: blobs are shared), read under the removal's lock.
#[derive(Debug)]
pub struct Catalog {
    /// The listing.
    pub index: RepoIndex,
    /// Every node manifest, read and validated.
    pub manifests: Vec<(ManifestRef, Arc<NodeManifest>)>,
    /// Every commit-log index entry, read.
    pub entries: Vec<(EntryRef, CommitLogEntry)>,
    /// Reference time, by the storage's clock (the lock's write time; "now" in a dry run).
    pub now: DateTime<Utc>,
}

/// What a removal decided to delete.
#[derive(Debug, Default)]
pub struct Victims {
    /// Node manifests (keys). Cluster manifests left without node manifests go with them.
    pub manifests: BTreeSet<String>,
    /// Commit-log index entries (keys).
    pub entries: BTreeSet<String>,
    /// Backups of the scope that remain.
    pub kept: usize,
    /// Remarks for the report.
    pub warnings: Vec<String>,
}

/// Format of [`RemovalPlan`] documents written by this build.
pub const REMOVAL_PLAN_FORMAT: u32 = 1;

/// `removal-plan.json`: the documents a removal deletes, in order, and how many are gone. Written
/// before the first deletion and after every batch; deleted once every document is gone. A
/// removal that finds one (its predecessor was interrupted) deletes the rest of it first, in the
/// same order, before it reads the catalog: a decision is never re-taken on a half-deleted state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovalPlan {
    /// Schema version.
    pub format: u32,
    /// The lock of the removal that wrote it.
    pub lock_id: String,
    /// What that removal was (`purge of cluster "prod"`).
    pub operation: String,
    /// When the plan was written (writer's clock; informational).
    pub created_at: DateTime<Utc>,
    /// Keys to delete, in order: cluster manifests, node manifests, commit-log index entries.
    pub documents: Vec<String>,
    /// The first `deleted` documents are gone.
    pub deleted: usize,
}

/// An interrupted removal's plan, as a report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ResumedPlan {
    /// What the interrupted removal was.
    pub operation: String,
    /// When it wrote its plan.
    pub created_at: DateTime<Utc>,
    /// Documents in the plan.
    pub documents: usize,
    /// Documents it had not deleted yet (finished by this removal, or by the next in a dry run).
    pub remaining: usize,
}

async fn read_plan(ctx: &OpContext) -> Result<Option<RemovalPlan>, RemoveError> {
    match ctx.repo.get_json::<RemovalPlan>(layout::REMOVAL_PLAN_KEY, 1 << 30).await {
        Ok(p) if p.format > REMOVAL_PLAN_FORMAT => Err(RemoveError::Refused(format!(
            "{} was written by a newer Cassette (format {}): finish that removal with the newer version",
            layout::REMOVAL_PLAN_KEY,
            p.format
        ))),
        Ok(p) => Ok(Some(p)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn write_plan(ctx: &OpContext, plan: &RemovalPlan) -> Result<(), StoreError> {
    let body = serde_json::to_vec_pretty(plan).unwrap_or_default();
    ctx.repo
        .store()
        .put(&ObjectPath::from(layout::REMOVAL_PLAN_KEY), object_store::PutPayload::from(body))
        .await
        .map(|_| ())
        .map_err(|e| StoreError::remote("write", layout::REMOVAL_PLAN_KEY, &ctx.repo.location().to_string(), e))
}

async fn delete_plan(ctx: &OpContext) -> Result<(), StoreError> {
    match ctx.repo.store().delete(&ObjectPath::from(layout::REMOVAL_PLAN_KEY)).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(StoreError::remote("delete", layout::REMOVAL_PLAN_KEY, &ctx.repo.location().to_string(), e)),
    }
}

/// The removal engine shared by `remove-backup` and purges: takes the exclusive lock, finishes an
/// interrupted plan, reads the whole catalog, lets `decide` pick the documents to delete, then
/// deletes them (plan first) and sweeps every blob nothing remaining references.
pub async fn run_removal(
    ctx: &OpContext,
    what: String,
    dry_run: bool,
    decide: impl FnOnce(&Catalog) -> Result<Victims, RemoveError>,
) -> Result<RemoveReport, RemoveError> {
    let start = Instant::now();
    ctx.repo.open_existing().await?;
    let mut report = RemoveReport { dry_run, ..RemoveReport::default() };
    let lock = if dry_run {
        None
    } else {
        let progress = std::sync::Arc::clone(&ctx.progress);
        let on_wait = move |m: &str| progress.message(m);
        Some(
            RepoLock::acquire(&ctx.repo, LockKind::Remove, what.clone(), &ctx.settings.locks, &ctx.cancel, &on_wait)
                .await?,
        )
    };
    let result = remove_locked(ctx, &what, lock.as_ref(), &mut report, decide).await;
    if let Some(l) = lock {
        l.release().await;
    }
    result?;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

async fn remove_locked(
    ctx: &OpContext,
    what: &str,
    lock: Option<&RepoLock>,
    report: &mut RemoveReport,
    decide: impl FnOnce(&Catalog) -> Result<Victims, RemoveError>,
) -> Result<(), RemoveError> {
    // Reference time from the storage's clock: our lock, else "now".
    let now = lock.map(RepoLock::acquired_at).unwrap_or_else(Utc::now);
    if let Some(l) = lock {
        for stale in locks::list_locks(&ctx.repo, &ctx.settings.locks, now, Some(l.key()))
            .await?
            .into_iter()
            .filter(|s| !s.fresh)
        {
            if ctx.repo.store().delete(&ObjectPath::from(stale.key.as_str())).await.is_ok() {
                report.stale_locks_removed += 1;
                report.warnings.push(format!("removed a stale lock: {stale}"));
            }
        }
    }
    // An interrupted removal's plan is finished first (a dry run counts it as done).
    let mut pending: HashSet<String> = HashSet::new();
    if let Some(mut plan) = read_plan(ctx).await? {
        report.resumed = Some(ResumedPlan {
            operation: plan.operation.clone(),
            created_at: plan.created_at,
            documents: plan.documents.len(),
            remaining: plan.documents.len().saturating_sub(plan.deleted),
        });
        match lock {
            Some(lock) => {
                ctx.say(format!(
                    "finishing an interrupted removal first ({}, {} of {} documents left)",
                    plan.operation,
                    plan.documents.len().saturating_sub(plan.deleted),
                    plan.documents.len()
                ));
                delete_documents(ctx, lock, &mut plan, report).await?;
                delete_plan(ctx).await?;
            }
            None => pending.extend(plan.documents.iter().skip(plan.deleted).cloned()),
        }
    }
    // Mark: everything the repository references.
    let mut index = catalog::scan(&ctx.repo).await?;
    // A dry run counts the interrupted plan's documents that are still there as deleted by it.
    let (mut pending_manifests, mut pending_entries) = (0, 0);
    if !pending.is_empty() {
        let before = index.node_manifests.len() + index.cluster_manifests.len();
        index.node_manifests.retain(|r| !pending.contains(&r.key));
        index.cluster_manifests.retain(|(k, _, _)| !pending.contains(k));
        pending_manifests = before - index.node_manifests.len() - index.cluster_manifests.len();
        let before = index.commitlog_entries.len();
        index.commitlog_entries.retain(|r| !pending.contains(&r.key));
        pending_entries = before - index.commitlog_entries.len();
    }
    let cache = ManifestCache::for_context(ctx);
    let manifests =
        catalog::load_manifests(&ctx.repo, &index.node_manifests, &ctx.settings.manifests, cache.as_ref()).await?;
    let entries =
        catalog::load_entries(&ctx.repo, &index.commitlog_entries, &ctx.settings.manifests, cache.as_ref()).await?;
    let entries: Vec<(EntryRef, CommitLogEntry)> = index.commitlog_entries.iter().cloned().zip(entries).collect();
    let cat = Catalog { index, manifests, entries, now };
    let victims = decide(&cat)?;
    report.kept = victims.kept;
    report.warnings.extend(victims.warnings.iter().cloned());
    let mut referenced: HashSet<BlobHash> = HashSet::new();
    for (r, m) in &cat.manifests {
        if victims.manifests.contains(&r.key) {
            report.removed.push(RemovedBackup {
                backup_id: m.backup_id.clone(),
                cluster: m.node.cluster.clone(),
                host_id: m.node.host_id.to_string(),
                files: m.files.len(),
                bytes: m.total_bytes(),
            });
        } else {
            referenced.extend(m.blobs().map(|(h, _)| h));
        }
    }
    for (r, e) in &cat.entries {
        if victims.entries.contains(&r.key) {
            report.commitlog_entries_removed += 1;
        } else {
            referenced.insert(e.sha256);
        }
    }
    report.blobs_referenced = referenced.len();
    // Cluster manifests left without any node manifest.
    let remaining: BTreeSet<(String, BackupId)> = cat
        .index
        .node_manifests
        .iter()
        .filter(|r| !victims.manifests.contains(&r.key))
        .map(|r| (r.cluster_key.clone(), r.backup_id.clone()))
        .collect();
    let orphan_clusters: Vec<String> = cat
        .index
        .cluster_manifests
        .iter()
        .filter(|(_, c, b)| !remaining.contains(&(c.clone(), b.clone())))
        .map(|(k, _, _)| k.clone())
        .collect();

    // Sweep candidates.
    let blobs = ctx.repo.list(layout::BLOBS_PREFIX).await?;
    let grace = chrono::Duration::from_std(ctx.settings.removal.grace).unwrap_or(chrono::Duration::MAX);
    let mut doomed: Vec<(ObjectPath, u64)> = Vec::new();
    for m in blobs {
        let Some(hash) = layout::parse_blob_key(m.location.as_ref()) else { continue };
        if referenced.contains(&hash) {
            continue;
        }
        if m.last_modified + grace > now {
            report.blobs_kept_young += 1;
            report.bytes_kept_young += m.size;
            continue;
        }
        doomed.push((m.location, m.size));
    }
    // Cluster manifests first (the backup stops being a complete cluster backup), then node
    // manifests, then commit-log entries; blobs last.
    let documents: Vec<String> =
        orphan_clusters.iter().chain(victims.manifests.iter()).chain(victims.entries.iter()).cloned().collect();
    if lock.is_none() {
        report.manifests_deleted = victims.manifests.len() + orphan_clusters.len() + pending_manifests;
        report.commitlog_entries_deleted = victims.entries.len() + pending_entries;
        report.blobs_deleted = doomed.len();
        report.bytes_freed = doomed.iter().map(|(_, s)| s).sum();
        return Ok(());
    }
    let Some(lock) = lock else { return Ok(()) };
    ctx.say(format!(
        "removing {} backup manifest(s) and {} commit-log entries, then {} unreferenced blob(s) ({})",
        victims.manifests.len(),
        victims.entries.len(),
        doomed.len(),
        human_bytes(doomed.iter().map(|(_, s)| s).sum())
    ));
    if !documents.is_empty() {
        let mut plan = RemovalPlan {
            format: REMOVAL_PLAN_FORMAT,
            lock_id: lock.info().id.clone(),
            operation: what.to_owned(),
            created_at: Utc::now(),
            documents,
            deleted: 0,
        };
        lock.ensure_fresh()?;
        write_plan(ctx, &plan).await?;
        delete_documents(ctx, lock, &mut plan, report).await?;
        delete_plan(ctx).await?;
    }
    sweep(ctx, lock, &doomed, report).await
}

/// Deletes a plan's remaining documents in batches, recording progress in the plan after each.
async fn delete_documents(
    ctx: &OpContext,
    lock: &RepoLock,
    plan: &mut RemovalPlan,
    report: &mut RemoveReport,
) -> Result<(), RemoveError> {
    let total = plan.documents.len();
    let batch = ctx.settings.removal.delete_batch.max(1);
    while plan.deleted < total {
        let done = plan.deleted;
        let interrupted = |reason: String, report: &RemoveReport| RemoveError::Interrupted {
            deleted: report.blobs_deleted,
            reason: format!("{reason} (after {done} of {total} documents of the removal plan)"),
        };
        if ctx.cancel.is_cancelled() {
            return Err(interrupted("cancelled".into(), report));
        }
        if let Err(e) = lock.ensure_fresh() {
            return Err(interrupted(e.to_string(), report));
        }
        let end = (plan.deleted + batch).min(total);
        for key in &plan.documents[plan.deleted..end] {
            match ctx.repo.store().delete(&ObjectPath::from(key.as_str())).await {
                Ok(()) => match layout::parse_cluster_object(key) {
                    Some(ClusterObject::CommitLogEntry { .. }) => report.commitlog_entries_deleted += 1,
                    _ => report.manifests_deleted += 1,
                },
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    let e = StoreError::remote("delete", key.as_str(), &ctx.repo.location().to_string(), e);
                    return Err(interrupted(e.to_string(), report));
                }
            }
        }
        plan.deleted = end;
        if end < total {
            write_plan(ctx, plan).await.map_err(|e| interrupted(e.to_string(), report))?;
        }
        ctx.progress.message(&format!("deleted {end} of {total} manifests and index entries"));
    }
    Ok(())
}

/// Deletes unreferenced blobs in batches, each after checking the lock.
async fn sweep(
    ctx: &OpContext,
    lock: &RepoLock,
    doomed: &[(ObjectPath, u64)],
    report: &mut RemoveReport,
) -> Result<(), RemoveError> {
    let total = doomed.len();
    for batch in doomed.chunks(ctx.settings.removal.delete_batch.max(1)) {
        if ctx.cancel.is_cancelled() {
            return Err(RemoveError::Interrupted { deleted: report.blobs_deleted, reason: "cancelled".into() });
        }
        if let Err(e) = check_still_exclusive(ctx, lock).await {
            return Err(RemoveError::Interrupted { deleted: report.blobs_deleted, reason: e.to_string() });
        }
        let paths: Vec<object_store::Result<ObjectPath>> = batch.iter().map(|(p, _)| Ok(p.clone())).collect();
        let sizes: BTreeMap<ObjectPath, u64> = batch.iter().cloned().collect();
        let mut results = ctx.repo.store().delete_stream(futures::stream::iter(paths).boxed());
        while let Some(r) = results.next().await {
            match r {
                Ok(p) => {
                    report.blobs_deleted += 1;
                    report.bytes_freed += sizes.get(&p).copied().unwrap_or(0);
                }
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    return Err(RemoveError::Interrupted {
                        deleted: report.blobs_deleted,
                        reason: StoreError::remote("delete blob", "blobs/…", &ctx.repo.location().to_string(), e)
                            .to_string(),
                    });
                }
            }
        }
        ctx.progress.message(&format!(
            "deleted {} of {total} unreferenced blobs ({})",
            report.blobs_deleted,
            human_bytes(report.bytes_freed)
        ));
    }
    Ok(())
}

/// Before a batch of deletions: our lock is fresh, and nobody else holds a fresh one (a backup
/// that judged our lock stale would have one).
async fn check_still_exclusive(ctx: &OpContext, lock: &RepoLock) -> Result<(), LockError> {
    lock.ensure_fresh()?;
    let others: Vec<_> = lock.others().await?.into_iter().filter(|l| l.fresh).collect();
    if !others.is_empty() {
        return Err(LockError::Busy { location: ctx.repo.location().to_string(), holders: others });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(id: &str, host: &str) -> ManifestRef {
        ManifestRef {
            key: format!("k/{id}/{host}"),
            cluster_key: "c".into(),
            backup_id: id.parse().unwrap(),
            host_id: host.parse().unwrap(),
            size: 1,
            last_modified: Utc::now(),
        }
    }

    const H1: &str = "1b1c2ce9-e5ab-4b1e-a2cf-0f5cd9f8b1c3";
    const H2: &str = "2b1c2ce9-e5ab-4b1e-a2cf-0f5cd9f8b1c3";

    #[test]
    fn selection_by_id_age_and_count() {
        let refs = vec![
            r("20240101T000000Z-00000001", H1),
            r("20240201T000000Z-00000002", H1),
            r("20240301T000000Z-00000003", H1),
            r("20240115T000000Z-00000004", H2),
        ];
        let now = DateTime::parse_from_rfc3339("2024-03-02T00:00:00Z").unwrap().to_utc();
        let node = RemoveScope::Node("c".into(), H1.parse().unwrap());
        let keep2 = RemoveRequest { keep_last: Some(2), ..Default::default() };
        assert_eq!(select(&keep2, &node, &refs[..3], now).unwrap(), BTreeSet::from([refs[0].key.clone()]));
        let old = RemoveRequest { older_than: Some(Duration::from_secs(40 * 86400)), ..Default::default() };
        assert_eq!(select(&old, &node, &refs[..3], now).unwrap(), BTreeSet::from([refs[0].key.clone()]));
        let both =
            RemoveRequest { older_than: Some(Duration::from_secs(86400)), keep_last: Some(2), ..Default::default() };
        assert_eq!(select(&both, &node, &refs[..3], now).unwrap().len(), 1, "the newest two stay whatever their age");
        // Per node: each node keeps its own newest.
        let cluster = RemoveScope::Cluster("c".into());
        let keep1 = RemoveRequest { keep_last: Some(1), ..Default::default() };
        let v = select(&keep1, &cluster, &refs, now).unwrap();
        assert_eq!(v, BTreeSet::from([refs[0].key.clone(), refs[1].key.clone()]), "every node keeps its newest");
        let byid = RemoveRequest { ids: vec![refs[1].backup_id.clone()], ..Default::default() };
        assert_eq!(select(&byid, &node, &refs, now).unwrap(), BTreeSet::from([refs[1].key.clone()]));
        let missing = RemoveRequest { ids: vec!["20990101T000000Z-0000000f".parse().unwrap()], ..Default::default() };
        assert!(select(&missing, &node, &refs, now).unwrap_err().to_string().contains("no backup"));
        assert!(select(&RemoveRequest::default(), &node, &refs, now).is_err());
    }
}
