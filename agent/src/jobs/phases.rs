//! The real phases a coordinator runs on this node, over the `ops` phase functions. Names,
//! parameters and results are in [`cassette_common::phases`].
//!
//! Every phase is idempotent per job id and resumable after an agent restart:
//! - check, verify: read only;
//! - snapshot: clears the backup's tag first, so a rerun takes a fresh snapshot;
//! - upload: the transfer engine skips blobs already stored and the hash cache skips reading
//!   unchanged files; when the node manifest exists already, the phase only reports it;
//! - cluster manifest: when it exists already, reported as is;
//! - restore phases: progress is kept in the staging directory (downloaded files, truncated and
//!   imported tables), so a rerun continues.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cassette_common::ids::{BackupId, HostId};
use cassette_common::layout;
use cassette_common::manifest::{CLUSTER_MANIFEST_FORMAT, ClusterManifest, NodeManifest};
use cassette_common::phases::{self as names, *};
use cassette_common::units::Rate;
use chrono::{TimeZone, Utc};

use super::{JobContext, PhaseError, PhaseRunner, ProgressReporter, RetryClass};
use crate::cassandra::{CassandraControl, ClearSnapshotRequest, ClearTarget};
use crate::hashcache::HashCache;
use crate::ops::backup::{self, BackupConfig, BackupRequest, Snapshotted};
use crate::ops::catalog::BackupSelector;
use crate::ops::restore::{self, Phase, RestoreConfig, RestoreRequest, Strategy};
use crate::ops::{EntitySelection, OpContext, OpSettings, remove, verify};
use crate::storage::limits::{BandwidthLimiter, ThrottledStore};
use crate::storage::{ProgressSink, Repository, Retry, TransferConfig, TransferStats};

/// What the phases work with: the agent's repository and settings (`cassette-agent serve` takes
/// the same storage settings as the other commands; bytes and credentials stay on the agent).
pub struct PhaseEnv {
    /// The repository; none when the agent was started without a location.
    pub repo: Option<Repository>,
    /// Transfer settings.
    pub transfer: TransferConfig,
    /// The hash cache, shared by every job.
    pub hash_cache: Arc<HashCache>,
    /// The local node.
    pub cassandra: Arc<dyn CassandraControl>,
    /// Locks, removal, manifests, state directory, node override.
    pub settings: OpSettings,
    /// Backup settings (snapshot TTL).
    pub backup: BackupConfig,
    /// Restore settings (staging directory).
    pub restore: RestoreConfig,
    /// The node's cassandra.yaml (in-place restores with tokens).
    pub cassandra_yaml: Option<PathBuf>,
}

impl std::fmt::Debug for PhaseEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhaseEnv").field("repo", &self.repo.as_ref().map(|r| r.location().to_string())).finish()
    }
}

/// Every real phase, over `env`.
pub fn all(env: Arc<PhaseEnv>) -> Vec<Arc<dyn PhaseRunner>> {
    names::ALL.iter().map(|n| Arc::new(OpPhase { name: n, env: Arc::clone(&env) }) as Arc<dyn PhaseRunner>).collect()
}

struct OpPhase {
    name: &'static str,
    env: Arc<PhaseEnv>,
}

/// Forwards an operation's progress to the job's record.
#[derive(Debug)]
struct JobSink {
    reporter: ProgressReporter,
    files_total: AtomicU64,
    bytes_total: AtomicU64,
    files_done: AtomicU64,
    bytes_done: AtomicU64,
    files_skipped: AtomicU64,
    bytes_skipped: AtomicU64,
    message: Mutex<String>,
}

impl JobSink {
    fn new(reporter: ProgressReporter) -> Arc<Self> {
        Arc::new(Self {
            reporter,
            files_total: AtomicU64::new(0),
            bytes_total: AtomicU64::new(0),
            files_done: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            files_skipped: AtomicU64::new(0),
            bytes_skipped: AtomicU64::new(0),
            message: Mutex::new(String::new()),
        })
    }

    fn publish(&self) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let stats = TransferStats {
            files_total: get(&self.files_total),
            bytes_total: get(&self.bytes_total),
            files_transferred: get(&self.files_done),
            bytes_transferred: get(&self.bytes_done),
            files_skipped: get(&self.files_skipped),
            bytes_skipped: get(&self.bytes_skipped),
            ..TransferStats::default()
        };
        let msg = self.message.lock().map(|m| m.clone()).unwrap_or_default();
        self.reporter.set(stats.bytes_transferred + stats.bytes_skipped, stats.bytes_total, msg);
        self.reporter.transfer(stats);
    }
}

impl ProgressSink for JobSink {
    fn add_total(&self, files: u64, bytes: u64) {
        self.files_total.fetch_add(files, Ordering::Relaxed);
        self.bytes_total.fetch_add(bytes, Ordering::Relaxed);
        self.publish();
    }
    fn transferred(&self, bytes: u64) {
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
        self.publish();
    }
    fn file_finished(&self, _path: &Path, size: u64, skipped: bool) {
        if skipped {
            self.files_skipped.fetch_add(1, Ordering::Relaxed);
            self.bytes_skipped.fetch_add(size, Ordering::Relaxed);
        } else {
            self.files_done.fetch_add(1, Ordering::Relaxed);
        }
        self.publish();
    }
    fn message(&self, text: &str) {
        if let Ok(mut m) = self.message.lock() {
            *m = text.to_owned();
        }
        self.publish();
    }
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

pub(super) fn fail(what: &str, e: &(dyn std::error::Error + 'static), retry: Retry) -> PhaseError {
    PhaseError::new(format!("{what}: {}", chain(e)), retry.into())
}

fn bad_params(phase: &str, e: impl std::fmt::Display) -> PhaseError {
    PhaseError::new(format!("invalid parameters for phase {phase}: {e}"), RetryClass::Never)
}

pub(super) fn params<T: serde::de::DeserializeOwned>(ctx: &JobContext, phase: &str) -> Result<T, PhaseError> {
    serde_json::from_value(ctx.params.clone()).map_err(|e| bad_params(phase, e))
}

pub(super) fn to_json<T: serde::Serialize>(v: &T) -> Result<serde_json::Value, PhaseError> {
    serde_json::to_value(v).map_err(|e| PhaseError::new(format!("encode the phase's result: {e}"), RetryClass::Never))
}

fn backup_id(s: &str, phase: &str) -> Result<BackupId, PhaseError> {
    s.parse::<BackupId>().map_err(|e| bad_params(phase, format!("backup id {s:?}: {e}")))
}

impl OpPhase {
    fn context(&self, job: &JobContext, sink: Arc<JobSink>) -> Result<OpContext, PhaseError> {
        let repo = self.env.repo.clone().ok_or_else(|| {
            PhaseError::new(
                "this agent has no repository location: start `cassette-agent serve` with --location (or `location` in its config file)",
                RetryClass::Never,
            )
        })?;
        Ok(OpContext {
            repo,
            transfer: self.env.transfer.clone(),
            hash_cache: Arc::clone(&self.env.hash_cache),
            cassandra: Arc::clone(&self.env.cassandra),
            progress: sink,
            cancel: job.cancel.clone(),
            settings: self.env.settings.clone(),
        })
    }

    async fn check(&self, ctx: &OpContext, job: &JobContext) -> Result<serde_json::Value, PhaseError> {
        let p: BackupCheckParams = params(job, self.name)?;
        let desc = ctx
            .cassandra
            .describe_node()
            .await
            .map_err(|e| fail("ask the local Cassandra node who it is", &e, e.retry()))?;
        if !desc.gossip_active || !desc.native_transport_active {
            return Err(PhaseError::new(
                format!(
                    "Cassandra on node {} is not up (gossip {}, native transport {}): start it before backing it up",
                    desc.host_id,
                    if desc.gossip_active { "running" } else { "stopped" },
                    if desc.native_transport_active { "running" } else { "stopped" }
                ),
                RetryClass::Backoff,
            ));
        }
        ctx.repo.init().await.map_err(|e| {
            let r = e.retry();
            fail(&format!("reach and write the repository {} from node {}", ctx.repo.location(), desc.host_id), &e, r)
        })?;
        let mut free = u64::MAX;
        for root in desc.directories.all_data_roots() {
            let (_, f) = crate::ops::file_system_of(&root)
                .map_err(|e| fail(&format!("free space of {}", root.display()), &e, Retry::Never))?;
            if f < p.min_free_bytes {
                return Err(PhaseError::new(
                    format!(
                        "{} on node {} has {} free, less than the {} the backup asks for: free space, or lower --min-free",
                        root.display(),
                        desc.host_id,
                        crate::ops::human_bytes(f),
                        crate::ops::human_bytes(p.min_free_bytes)
                    ),
                    RetryClass::Never,
                ));
            }
            free = free.min(f);
        }
        to_json(&BackupCheckResult {
            host_id: desc.host_id.to_string(),
            cluster_name: desc.cluster_name.clone(),
            schema_versions: desc.schema_versions.iter().map(|s| s.version.clone()).collect(),
            location: ctx.repo.location().to_string(),
            free_bytes: if free == u64::MAX { 0 } else { free },
            release_version: desc.release_version.raw.clone(),
        })
    }

    async fn snapshot(&self, ctx: &OpContext, job: &JobContext) -> Result<serde_json::Value, PhaseError> {
        let p: SnapshotParams = params(job, self.name)?;
        let id = backup_id(&p.backup_id, self.name)?;
        let entities = EntitySelection::parse(&p.entities, p.system_keyspaces).map_err(|e| bad_params(self.name, e))?;
        // A rerun (agent restart, coordinator retry) starts from no snapshot under the tag.
        let _ = ctx
            .cassandra
            .clear_snapshot(&ClearSnapshotRequest {
                target: ClearTarget::Tag(format!("cassette-{id}")),
                keyspaces: vec![],
            })
            .await;
        let req = BackupRequest {
            backup_id: Some(id),
            tag: p.tag,
            entities,
            snapshot_ttl: self.env.backup.snapshot_ttl,
            ..BackupRequest::default()
        };
        let snap = backup::snapshot(ctx, &req).await.map_err(|e| {
            let r = e.retry();
            fail("snapshot", &e, r)
        })?;
        to_json(&snap)
    }

    async fn upload(&self, ctx: &mut OpContext, job: &JobContext) -> Result<serde_json::Value, PhaseError> {
        let p: UploadParams = params(job, self.name)?;
        let snap: Snapshotted =
            serde_json::from_value(p.snapshot.clone()).map_err(|e| bad_params(self.name, format!("snapshot: {e}")))?;
        let entities = EntitySelection::parse(&p.entities, p.system_keyspaces).map_err(|e| bad_params(self.name, e))?;
        if let Some(b) = &p.bandwidth {
            let rate: Rate = b.parse().map_err(|e| bad_params(self.name, format!("bandwidth {b:?}: {e}")))?;
            ctx.repo = Repository::new(
                ctx.repo.location().clone(),
                Arc::new(ThrottledStore::new(Arc::clone(ctx.repo.store()), Arc::new(BandwidthLimiter::new(rate)))),
            );
        }
        let key = layout::node_manifest_key(&snap.node.cluster, &snap.backup_id, &snap.node.host_id);
        if let Some(m) = existing::<NodeManifest>(ctx, &key).await? {
            // Written by an earlier run of this job (the agent died before reporting it).
            ctx.say(format!("node manifest {key} exists already"));
            return to_json(&UploadResult {
                manifest_key: key,
                files: m.files.len() as u64,
                bytes: m.files.iter().map(|f| f.size).sum(),
                tables: m.tables.len() as u64,
                ..UploadResult::default()
            });
        }
        let req = BackupRequest {
            backup_id: Some(snap.backup_id.clone()),
            tag: p.tag,
            entities,
            snapshot_ttl: self.env.backup.snapshot_ttl,
            ..BackupRequest::default()
        };
        let lock = backup::lock(ctx, &snap).await.map_err(|e| {
            let r = e.retry();
            fail("take the backup lock", &e, r)
        })?;
        let result = async {
            let mut up = backup::upload(ctx, &req, &snap).await?;
            if ctx.cancel.is_cancelled() {
                return Err(backup::BackupError::Cancelled { cleared: false });
            }
            let (key, m) = backup::write_manifest(ctx, &req, &snap, &mut up, &lock).await?;
            Ok((up, key, m))
        }
        .await;
        lock.release().await;
        let (up, key, m) = match result {
            Ok(x) => x,
            Err(backup::BackupError::Cancelled { .. }) => return Err(PhaseError::cancelled()),
            Err(e) => {
                let r = e.retry();
                return Err(fail("upload", &e, r));
            }
        };
        to_json(&UploadResult {
            manifest_key: key,
            files: m.files.len() as u64,
            bytes: m.files.iter().map(|f| f.size).sum(),
            files_uploaded: up.stats.files_transferred,
            bytes_uploaded: up.stats.bytes_transferred,
            files_skipped: up.stats.files_skipped,
            bytes_skipped: up.stats.bytes_skipped,
            tables: m.tables.len() as u64,
            warnings: up.warnings,
        })
    }

    async fn cluster_manifest(&self, ctx: &OpContext, job: &JobContext) -> Result<serde_json::Value, PhaseError> {
        let p: ClusterManifestParams = params(job, self.name)?;
        let id = backup_id(&p.backup_id, self.name)?;
        let key = layout::cluster_manifest_key(&p.cluster, &id);
        if existing::<ClusterManifest>(ctx, &key).await?.is_none() {
            let started_at = Utc.timestamp_millis_opt(p.started_at_ms as i64).single().unwrap_or_else(Utc::now);
            let m = ClusterManifest {
                format: CLUSTER_MANIFEST_FORMAT,
                backup_id: id,
                tag: p.tag,
                cluster: p.cluster.clone(),
                started_at,
                finished_at: Utc::now(),
                snapshot_skew_ms: p.snapshot_skew_ms,
                nodes: p.nodes,
                missing_nodes: p.missing_nodes,
            };
            ctx.repo.put_json_create(&key, &m).await.map_err(|e| {
                let r = e.retry();
                fail(&format!("write the cluster manifest {key}"), &e, r)
            })?;
        }
        Ok(serde_json::json!({ "key": key }))
    }

    async fn clear_snapshot(&self, ctx: &OpContext, job: &JobContext) -> Result<serde_json::Value, PhaseError> {
        let p: ClearSnapshotParams = params(job, self.name)?;
        let tag = format!("cassette-{}", backup_id(&p.backup_id, self.name)?);
        ctx.cassandra
            .clear_snapshot(&ClearSnapshotRequest { target: ClearTarget::Tag(tag.clone()), keyspaces: vec![] })
            .await
            .map_err(|e| fail(&format!("clear snapshot {tag}"), &e, e.retry()))?;
        Ok(serde_json::json!({ "cleared": tag }))
    }

    async fn verify(&self, ctx: &OpContext, job: &JobContext) -> Result<serde_json::Value, PhaseError> {
        let p: BackupRefParams = params(job, self.name)?;
        let id = backup_id(&p.backup_id, self.name)?;
        let r = verify::verify(ctx, &verify::Scope::Cluster(p.cluster), &BackupSelector::Id(id), p.deep)
            .await
            .map_err(|e| {
                let r = e.retry();
                fail("verify", &e, r)
            })?;
        to_json(&r)
    }

    async fn remove(&self, ctx: &OpContext, job: &JobContext) -> Result<serde_json::Value, PhaseError> {
        let p: BackupRefParams = params(job, self.name)?;
        let id = backup_id(&p.backup_id, self.name)?;
        let req = remove::RemoveRequest { ids: vec![id], ..Default::default() };
        let r = remove::remove(ctx, &remove::RemoveScope::Cluster(p.cluster), &req).await.map_err(|e| {
            let r = e.retry();
            fail("remove", &e, r)
        })?;
        to_json(&r)
    }

    async fn restore(&self, ctx: &OpContext, job: &JobContext) -> Result<serde_json::Value, PhaseError> {
        let p: RestoreParams = params(job, self.name)?;
        let id = backup_id(&p.backup_id, self.name)?;
        let strategy = match p.strategy.as_str() {
            "import" | "" => Strategy::Import,
            "hardlinks" => Strategy::Hardlinks,
            "in-place" => Strategy::InPlace,
            s => return Err(bad_params(self.name, format!("strategy {s:?} (import, hardlinks or in-place)"))),
        };
        let source = if p.source_host.is_empty() {
            None
        } else {
            let h: HostId = p.source_host.parse().map_err(|e| bad_params(self.name, format!("source host: {e}")))?;
            Some((p.source_cluster.clone(), h))
        };
        let renames = p
            .renames
            .iter()
            .map(|r| r.parse::<restore::Rename>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad_params(self.name, e))?;
        let (phase, dry_run) = match self.name {
            names::RESTORE_CHECK => (Phase::All, true),
            names::RESTORE_DOWNLOAD => (Phase::Download, false),
            names::RESTORE_TRUNCATE => (Phase::Truncate, false),
            names::RESTORE_IMPORT => (Phase::Import, false),
            _ => (Phase::Cleanup, false),
        };
        let req = RestoreRequest {
            backup: BackupSelector::Id(id),
            source,
            strategy,
            phase,
            entities: EntitySelection::parse(&p.entities, false).map_err(|e| bad_params(self.name, e))?,
            new_cluster: p.new_cluster,
            renames,
            set_tokens: p.set_tokens || p.new_cluster,
            cassandra_yaml: self.env.cassandra_yaml.clone(),
            no_truncate: p.no_truncate,
            ignore_token_mismatch: p.ignore_token_mismatch,
            ignore_schema_mismatch: p.ignore_schema_mismatch,
            create_tables: p.create_tables,
            dry_run,
            ..RestoreRequest::default()
        };
        let report = restore::run(ctx, &req, self.env.restore.staging_dir.as_deref()).await.map_err(|e| {
            let r = e.retry();
            fail(&format!("restore ({})", self.name), &e, r)
        })?;
        if self.name == names::RESTORE_CHECK {
            let mut diffs = Vec::new();
            for t in &report.tables {
                if let Some(d) = &t.schema_diff {
                    diffs.push(format!("{}: {}", t.target_name(), serde_json::to_string(d).unwrap_or_default()));
                }
            }
            return to_json(&RestoreCheckResult {
                tables: report.tables.iter().map(|t| format!("{} -> {}", t.source_name(), t.target_name())).collect(),
                files: report.files_total as u64,
                bytes: report.bytes_total,
                schema_differences: diffs,
                warnings: report.warnings.clone(),
            });
        }
        to_json(&report)
    }
}

/// The object at `key`, when it exists.
async fn existing<T: serde::de::DeserializeOwned>(ctx: &OpContext, key: &str) -> Result<Option<T>, PhaseError> {
    let found = ctx.repo.list(key).await.map_err(|e| {
        let r = e.retry();
        fail(&format!("look for {key}"), &e, r)
    })?;
    if !found.iter().any(|m| m.location.as_ref() == key) {
        return Ok(None);
    }
    let v = ctx.repo.get_json(key, ctx.settings.manifests.max_bytes.0).await.map_err(|e| {
        let r = e.retry();
        fail(&format!("read {key}"), &e, r)
    })?;
    Ok(Some(v))
}

#[async_trait::async_trait]
impl PhaseRunner for OpPhase {
    fn name(&self) -> &str {
        self.name
    }

    fn resumable(&self) -> bool {
        true
    }

    async fn run(&self, job: JobContext) -> Result<serde_json::Value, PhaseError> {
        let sink = JobSink::new(job.progress().clone());
        let mut ctx = self.context(&job, Arc::clone(&sink))?;
        sink.message(&format!("{} (attempt {})", self.name, job.attempt));
        match self.name {
            names::BACKUP_CHECK => self.check(&ctx, &job).await,
            names::BACKUP_SNAPSHOT => self.snapshot(&ctx, &job).await,
            names::BACKUP_UPLOAD => self.upload(&mut ctx, &job).await,
            names::BACKUP_CLUSTER_MANIFEST => self.cluster_manifest(&ctx, &job).await,
            names::BACKUP_CLEAR_SNAPSHOT => self.clear_snapshot(&ctx, &job).await,
            names::BACKUP_VERIFY => self.verify(&ctx, &job).await,
            names::BACKUP_REMOVE => self.remove(&ctx, &job).await,
            names::BACKUP_PURGE => super::purge::run(&ctx, &job).await,
            _ => self.restore(&ctx, &job).await,
        }
    }
}
