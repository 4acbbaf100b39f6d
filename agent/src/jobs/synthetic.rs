//! Phases that only take time: for tests of the job framework and the coordinator, and for the
//! coordinator-at-scale benchmark (many in-process agents whose phases last a configurable time).
//! `cassette-agent serve --enable-test-phases` registers them; production agents do not.
//!
//! Parameters (JSON): `duration_ms` (default 100), `steps` (progress steps, default 10),
//! `fail` (a message: fail at the end with it), `fail_retry` (`never`, `now`, `backoff`).
//!
//! [`backup_phases`] serves the real backup phase names ([`cassette_common::phases`]) with
//! phases that only take time but answer with results shaped like the real ones where the
//! coordinator's executor reads them (the check's schema versions and location, the snapshot's
//! time and node, the upload's counters): a coordinator drives its real `backup create` path
//! against them (the coordinator benchmark).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cassette_common::phases as names;

use super::{JobContext, PhaseError, PhaseRunner, RetryClass};

/// A phase that sleeps for `duration_ms` in `steps` steps, reporting progress.
#[derive(Debug, Clone)]
pub struct SleepPhase {
    name: &'static str,
    resumable: bool,
}

impl SleepPhase {
    /// `synthetic.sleep`: resumable.
    pub fn resumable() -> Self {
        Self { name: "synthetic.sleep", resumable: true }
    }

    /// `synthetic.sleep-once`: not resumable (fails when the agent restarts under it).
    pub fn once() -> Self {
        Self { name: "synthetic.sleep-once", resumable: false }
    }
}

/// Every synthetic phase.
pub fn all() -> Vec<Arc<dyn PhaseRunner>> {
    vec![Arc::new(SleepPhase::resumable()), Arc::new(SleepPhase::once())]
}

#[async_trait::async_trait]
impl PhaseRunner for SleepPhase {
    fn name(&self) -> &str {
        self.name
    }

    fn resumable(&self) -> bool {
        self.resumable
    }

    async fn run(&self, ctx: JobContext) -> Result<serde_json::Value, PhaseError> {
        let p = &ctx.params;
        let duration = Duration::from_millis(p.get("duration_ms").and_then(|v| v.as_u64()).unwrap_or(100));
        let steps = p.get("steps").and_then(|v| v.as_u64()).unwrap_or(10).max(1);
        for i in 0..steps {
            ctx.progress().set(i, steps, format!("step {}/{steps}", i + 1));
            tokio::select! {
                _ = ctx.cancel.cancelled() => return Err(PhaseError::cancelled()),
                _ = tokio::time::sleep(duration / steps as u32) => {}
            }
        }
        ctx.progress().set(steps, steps, "done");
        if let Some(msg) = p.get("fail").and_then(|v| v.as_str()) {
            let retry = match p.get("fail_retry").and_then(|v| v.as_str()) {
                Some("never") => RetryClass::Never,
                Some("now") => RetryClass::Now,
                _ => RetryClass::Backoff,
            };
            return Err(PhaseError::new(format!("synthetic failure of job {}: {msg}", ctx.job_id), retry));
        }
        Ok(serde_json::json!({ "steps": steps, "attempt": ctx.attempt, "slept_ms": duration.as_millis() as u64 }))
    }
}

/// The node a set of synthetic backup phases pretends to be.
#[derive(Debug, Clone, Default)]
pub struct SyntheticNode {
    /// Host id (a UUID).
    pub host_id: String,
    /// Cassandra cluster name.
    pub cluster: String,
    /// Tokens.
    pub tokens: Vec<String>,
    /// The repository location reported by the check (the same on every node of a cluster).
    pub location: String,
    /// Files and bytes the upload reports.
    pub files: u64,
    /// Bytes of those files.
    pub bytes: u64,
}

/// Called when a synthetic backup phase ends: phase name, start and end (µs since the epoch).
pub type PhaseObserver = Arc<dyn Fn(&str, u64, u64) + Send + Sync>;

/// One synthetic backup phase.
pub struct BackupShapedPhase {
    name: &'static str,
    node: Arc<SyntheticNode>,
    duration: Duration,
    observer: Option<PhaseObserver>,
}

impl std::fmt::Debug for BackupShapedPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupShapedPhase").field("name", &self.name).field("node", &self.node.host_id).finish()
    }
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// The backup phases of a cluster backup (check, snapshot, upload, cluster manifest, clear),
/// each lasting `duration`, answering as `node`; `observer` hears when each ran.
pub fn backup_phases(
    node: SyntheticNode,
    duration: Duration,
    observer: Option<PhaseObserver>,
) -> Vec<Arc<dyn PhaseRunner>> {
    let node = Arc::new(node);
    [
        names::BACKUP_CHECK,
        names::BACKUP_SNAPSHOT,
        names::BACKUP_UPLOAD,
        names::BACKUP_CLUSTER_MANIFEST,
        names::BACKUP_CLEAR_SNAPSHOT,
    ]
    .into_iter()
    .map(|name| {
        Arc::new(BackupShapedPhase { name, node: Arc::clone(&node), duration, observer: observer.clone() })
            as Arc<dyn PhaseRunner>
    })
    .collect()
}

#[async_trait::async_trait]
impl PhaseRunner for BackupShapedPhase {
    fn name(&self) -> &str {
        self.name
    }

    fn resumable(&self) -> bool {
        true
    }

    async fn run(&self, ctx: JobContext) -> Result<serde_json::Value, PhaseError> {
        let start = now_us();
        let snapshot_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        tokio::select! {
            _ = ctx.cancel.cancelled() => return Err(PhaseError::cancelled()),
            _ = tokio::time::sleep(self.duration) => {}
        }
        let n = &self.node;
        let p = &ctx.params;
        let backup_id = p.get("backup_id").and_then(|v| v.as_str()).unwrap_or_default();
        let result = match self.name {
            names::BACKUP_CHECK => serde_json::to_value(names::BackupCheckResult {
                host_id: n.host_id.clone(),
                cluster_name: n.cluster.clone(),
                schema_versions: vec!["00000000-0000-3000-8000-000000000001".into()],
                location: n.location.clone(),
                free_bytes: 1 << 40,
                release_version: "4.1.5".into(),
            })
            .unwrap_or_default(),
            names::BACKUP_SNAPSHOT => serde_json::json!({
                "backup_id": backup_id,
                "snapshot_at": snapshot_at,
                "node": { "host_id": n.host_id, "cluster": n.cluster, "tokens": n.tokens },
            }),
            names::BACKUP_UPLOAD => serde_json::to_value(names::UploadResult {
                manifest_key: format!("synthetic/{}/{}", n.cluster, n.host_id),
                files: n.files,
                bytes: n.bytes,
                files_uploaded: n.files,
                bytes_uploaded: n.bytes,
                ..Default::default()
            })
            .unwrap_or_default(),
            names::BACKUP_CLUSTER_MANIFEST => {
                serde_json::json!({ "key": format!("synthetic/{}/{backup_id}", n.cluster) })
            }
            _ => serde_json::json!({ "cleared": format!("cassette-{backup_id}") }),
        };
        if let Some(o) = &self.observer {
            o(self.name, start, now_us());
        }
        Ok(result)
    }
}
