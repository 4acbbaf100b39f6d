//! The executor of cluster operations (backup, restore, verify, delete), run by the leader.
//!
//! - **Plan, persist, drive.** A request is planned ([`plan`], pure), then recorded through raft
//!   as the operation (its spec is the plan) with one pending phase record per node and step.
//!   The leader drives the steps in order; a step is a barrier: the next starts when every node
//!   finished this one. Steps marked per-datacenter run at most `parallel` nodes at once in each
//!   datacenter.
//! - **Dispatch rule.** "Phase X started on node N as job J" is committed before the agent is
//!   called ([`crate::dispatch`]); results are committed when the job ends. A step without a
//!   per-datacenter limit commits the starts of all its nodes in one entry
//!   ([`Command::PhasesStarted`]) and then calls every agent at once, so a thousand nodes'
//!   snapshots start together.
//! - **Failures.** An agent job that fails with a retryable error, or an agent that stays
//!   unreachable longer than `agent_timeout`, is retried under a new job id after a backoff,
//!   up to `attempts` times. A node that still fails a droppable step leaves the operation when
//!   `allow_partial` is set (the backup records it as missing), else the operation fails. Steps
//!   marked `always` (clearing snapshots) run at the end whatever happened.
//! - **Leader changes.** Every replica runs a supervisor; on the leader it starts a driver for
//!   every running operation not driven yet. A new leader reads the persisted phases after a read
//!   barrier and re-attaches to running jobs by their recorded id: nothing finished is redone.
//! - **Conflicts.** Operations name the clusters they need alone; the state machine refuses a
//!   second one on the same cluster, naming the running one.
//! - **Progress.** The leader polls each running job and keeps its progress in memory; views
//!   merge it with the persisted phases (bytes, files, rate, ETA per node and datacenter).

pub mod plan;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cassette_common::ids::HostId;
use cassette_common::manifest::ClusterNodeEntry;
use cassette_common::phases as ph;
use cassette_common::worker::{self, WorkerHandle};
use cassette_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::Retry;
use crate::agents::{AgentClient, AgentErrorKind, JobRequest};
use crate::dispatch::{self, DispatchError};
use crate::kv::KvError;
use crate::model::{BackupRecord, Command, OperationRecord, PhaseRecord, RunState, now_ms};
use crate::raft::{RaftError, RaftHandle};
use plan::{BackupRefSpec, BackupSpec, Plan, PlanError, PlanNode, PurgeSpec, RestoreSpec, Scope, Step};

/// Executor settings (`operations` in the replica's settings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutorConfig {
    /// An agent that does not answer for this long fails the current attempt of its phase.
    #[serde(with = "humantime_serde")]
    pub agent_timeout: Duration,
    /// Attempts per phase and node (retryable failures only).
    pub attempts: u32,
    /// Wait before the second attempt; doubles each time, at most a minute.
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// How often running jobs are polled.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            agent_timeout: Duration::from_secs(60),
            attempts: 3,
            retry_backoff: Duration::from_secs(2),
            poll_interval: Duration::from_millis(500),
        }
    }
}

impl ExecutorConfig {
    /// Every problem, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.attempts == 0 {
            p.push("operations.attempts must be at least 1".into());
        }
        if self.poll_interval < Duration::from_millis(10) {
            p.push("operations.poll_interval must be at least 10ms".into());
        }
        if self.agent_timeout < Duration::from_millis(500) {
            p.push("operations.agent_timeout must be at least 500ms".into());
        }
        p
    }
}

/// Why an operation could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The request cannot be planned.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Another operation runs on the same cluster.
    #[error("{0}")]
    Conflict(String),
    /// Raft (not the leader, no quorum).
    #[error(transparent)]
    Raft(RaftError),
    /// The operation's record was proposed but not confirmed in time: it may exist or not.
    #[error("operation {operation_id}: {source}")]
    OutcomeUnknown {
        /// The id it was proposed under.
        operation_id: String,
        /// The raft error ([`RaftError::OutcomeUnknown`]).
        source: RaftError,
    },
    /// The state could not be read.
    #[error(transparent)]
    Store(#[from] KvError),
}

impl StartError {
    /// Whether a retry makes sense.
    pub fn retry(&self) -> Retry {
        match self {
            Self::Plan(_) | Self::Conflict(_) => Retry::Never,
            Self::Raft(e) | Self::OutcomeUnknown { source: e, .. } => e.retry(),
            Self::Store(_) => Retry::Backoff,
        }
    }
}

/// Why a driver stopped without ending its operation (the next leader resumes it).
#[derive(Debug, thiserror::Error)]
enum Stop {
    #[error("raft: {0}")]
    Raft(#[from] RaftError),
    #[error("state: {0}")]
    Store(#[from] KvError),
    #[error("no longer the leader")]
    Cancelled,
}

#[derive(Debug, Clone)]
struct Live {
    job_id: String,
    progress: pb::JobProgress,
    since: Instant,
    first_bytes: u64,
}

/// The executor. One per replica; it acts only while its replica leads.
pub struct Executor {
    raft: RaftHandle,
    agents: Arc<dyn AgentClient>,
    config: ExecutorConfig,
    live: Mutex<HashMap<(String, String, String), Live>>,
    drivers: Mutex<HashMap<String, CancellationToken>>,
    /// Each agent's clock offset, estimated from the job polls (by host id).
    clocks: Mutex<HashMap<String, ClockEstimate>>,
    /// How long the last batched start of each operation took to reach every agent.
    dispatch_times: Mutex<HashMap<String, Duration>>,
}

/// An agent's clock offset (agent minus coordinator), from the answer with the shortest round
/// trip seen recently: the error is at most half that round trip.
#[derive(Debug, Clone, Copy)]
struct ClockEstimate {
    offset_ms: i64,
    rtt_ms: u64,
    at: Instant,
}

/// An agent whose clock is off by more than this gets a warning in the log: its snapshot
/// time, and the skew recorded from it, are that far off.
const CLOCK_WARNING_MS: i64 = 500;

/// The wait given to agents to receive a snapshot start before the agreed moment: twice what
/// the operation's previous batched start took, plus a little, within bounds.
fn snapshot_lead(measured: Option<Duration>, nodes: usize) -> Duration {
    let lead = match measured {
        Some(d) => d * 2 + Duration::from_millis(100),
        None => Duration::from_millis(200) + Duration::from_millis(2) * u32::try_from(nodes).unwrap_or(u32::MAX),
    };
    lead.clamp(Duration::from_millis(150), Duration::from_secs(30))
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor").field("config", &self.config).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Starts a cluster backup; returns the operation id (the schedules call this).
pub async fn start_backup(ex: &Executor, spec: BackupSpec) -> Result<String, StartError> {
    ex.start_backup(spec, "").await
}

impl Executor {
    /// An executor over a replica's raft handle and agent clients.
    pub fn new(raft: RaftHandle, agents: Arc<dyn AgentClient>, config: ExecutorConfig) -> Arc<Self> {
        Arc::new(Self {
            raft,
            agents,
            config,
            live: Mutex::new(HashMap::new()),
            drivers: Mutex::new(HashMap::new()),
            clocks: Mutex::new(HashMap::new()),
            dispatch_times: Mutex::new(HashMap::new()),
        })
    }

    /// The supervisor: while this replica leads, every running operation has a driver.
    pub fn spawn(self: &Arc<Self>, shutdown: CancellationToken) -> WorkerHandle {
        let me = Arc::clone(self);
        let stop = shutdown.clone();
        worker::spawn_periodic("operations", Duration::from_millis(300), shutdown, move |state| {
            let me = Arc::clone(&me);
            let stop = stop.clone();
            async move {
                if !me.raft.status().is_leader() {
                    let mut d = lock(&me.drivers);
                    for (_, c) in d.drain() {
                        c.cancel();
                    }
                    state.set("idle (not the leader)");
                    return;
                }
                let Ok(ops) = me.raft.state().operations() else { return };
                let mut n = 0;
                for op in ops.into_iter().filter(|o| !o.state.is_terminal()) {
                    if serde_json::from_value::<Plan>(op.spec.clone()).map(|p| p.steps.is_empty()).unwrap_or(true) {
                        continue; // not an operation this executor plans (e.g. a test's)
                    }
                    n += 1;
                    me.ensure_driver(&op.id, &stop);
                }
                state.set(format!("driving {n} operations"));
            }
        })
    }

    fn ensure_driver(self: &Arc<Self>, id: &str, shutdown: &CancellationToken) {
        let mut d = lock(&self.drivers);
        if d.contains_key(id) {
            return;
        }
        let cancel = shutdown.child_token();
        d.insert(id.to_owned(), cancel.clone());
        let me = Arc::clone(self);
        let id = id.to_owned();
        tokio::spawn(async move {
            tracing::info!(operation = %id, "driving operation");
            match me.drive(&id, &cancel).await {
                Ok(()) => tracing::info!(operation = %id, "operation ended"),
                Err(e) => tracing::info!(operation = %id, reason = %e, "stopped driving operation"),
            }
            lock(&me.drivers).remove(&id);
            lock(&me.dispatch_times).remove(&id);
        });
    }

    async fn create(&self, kind: &str, plan: Plan, request_id: &str) -> Result<String, StartError> {
        self.create_as(kind, plan, None, request_id).await
    }

    /// Records the operation under `fixed` (when given) or a new id; `request_id` (may be
    /// empty) is the client's, which the state machine refuses to start twice.
    async fn create_as(
        &self,
        kind: &str,
        plan: Plan,
        fixed: Option<&str>,
        request_id: &str,
    ) -> Result<String, StartError> {
        let id = format!("{kind}-{}", plan.backup_id.to_lowercase());
        let id = if let Some(f) = fixed {
            f.to_owned()
        } else if self.raft.state().operation(&id)?.is_some() {
            format!("{id}-{:04x}", rand::random::<u16>())
        } else {
            id
        };
        let mut phases = Vec::new();
        for step in plan.steps.iter().filter(|s| s.scope == Scope::Every) {
            for n in &plan.nodes {
                phases.push(pending(&id, &n.host_id, &step.phase));
            }
        }
        let op = OperationRecord {
            id: id.clone(),
            cluster: plan.cluster.clone(),
            kind: kind.to_owned(),
            state: RunState::Running,
            spec: serde_json::to_value(&plan).unwrap_or(Value::Null),
            created_at_ms: now_ms(),
            finished_at_ms: 0,
            error: String::new(),
            request_id: request_id.to_owned(),
        };
        match self.raft.propose(&Command::CreateOperation { operation: op, phases }).await {
            Ok(_) => {}
            Err(RaftError::Rejected(m)) => return Err(StartError::Conflict(m)),
            Err(e @ RaftError::OutcomeUnknown(_)) => {
                return Err(StartError::OutcomeUnknown { operation_id: id, source: e });
            }
            Err(e) => return Err(StartError::Raft(e)),
        }
        tracing::info!(operation = %id, kind, cluster = %plan.cluster, nodes = plan.nodes.len(), "operation planned");
        Ok(id)
    }

    async fn cluster(
        &self,
        name: &str,
    ) -> Result<(crate::model::ClusterRecord, Vec<crate::model::NodeRecord>), StartError> {
        self.raft.read_barrier().await.map_err(StartError::Raft)?;
        let sm = self.raft.state();
        let c = sm.cluster(name)?.ok_or_else(|| {
            PlanError(format!("no cluster named {name} is registered (cassette cluster add {name} --agent host:port)"))
        })?;
        Ok((c, sm.nodes(name)?))
    }

    /// Plans and starts a cluster backup (`request_id`: the client's, may be empty).
    pub async fn start_backup(&self, spec: BackupSpec, request_id: &str) -> Result<String, StartError> {
        let (cluster, nodes) = self.cluster(&spec.cluster).await?;
        let newest = self.raft.state().backups(&cluster.name)?.into_iter().map(|b| b.id).max();
        let newest = newest.and_then(|b| b.parse::<cassette_common::ids::BackupId>().ok());
        let id = cassette_common::ids::BackupId::generate_after(chrono::Utc::now(), newest.as_ref());
        let plan = plan::plan_backup(&cluster, &nodes, &spec, id.as_str())?;
        self.create(plan::KIND_BACKUP, plan, request_id).await
    }

    /// Starts a cluster backup under a given operation id, idempotently: when the operation
    /// exists already (a retry, a new leader re-attaching to a schedule's run), it is returned
    /// as is and nothing new starts.
    pub async fn start_backup_as(&self, spec: BackupSpec, operation_id: &str) -> Result<String, StartError> {
        if !crate::model::valid_name(operation_id) {
            return Err(PlanError(format!("invalid operation id {operation_id:?}")).into());
        }
        let (cluster, nodes) = self.cluster(&spec.cluster).await?;
        if self.raft.state().operation(operation_id)?.is_some() {
            return Ok(operation_id.to_owned());
        }
        let newest = self.raft.state().backups(&cluster.name)?.into_iter().map(|b| b.id).max();
        let newest = newest.and_then(|b| b.parse::<cassette_common::ids::BackupId>().ok());
        let id = cassette_common::ids::BackupId::generate_after(chrono::Utc::now(), newest.as_ref());
        let plan = plan::plan_backup(&cluster, &nodes, &spec, id.as_str())?;
        match self.create_as(plan::KIND_BACKUP, plan, Some(operation_id), "").await {
            Err(StartError::Conflict(m)) if m.contains(&format!("operation {operation_id} already exists")) => {
                Ok(operation_id.to_owned())
            }
            r => r,
        }
    }

    /// Plans and starts a purge: the retention rules (and departed nodes) of `spec` applied by
    /// one reachable agent of the cluster for the whole cluster. The backups of running
    /// operations are protected; the cluster's ring comes from the registry.
    pub async fn start_purge(&self, mut spec: PurgeSpec, request_id: &str) -> Result<String, StartError> {
        let (cluster, nodes) = self.cluster(&spec.cluster).await?;
        if spec.keep_last.is_none() && spec.keep_within.is_none() && spec.departed.is_empty() {
            return Err(PlanError(
                "nothing to purge: give a retention policy (--keep-last, --keep-within) or departed nodes (--departed)"
                    .into(),
            )
            .into());
        }
        if spec.keep_last == Some(0) {
            return Err(PlanError("--keep-last must be at least 1".into()).into());
        }
        if let Some(w) = &spec.keep_within {
            let d = humantime::parse_duration(w)
                .map_err(|e| PlanError(format!("--keep-within {w:?}: {e} (use e.g. 30d, 12h)")))?;
            if d.is_zero() {
                return Err(PlanError("--keep-within must be longer than zero".into()).into());
            }
        }
        for h in &spec.departed {
            if h != "all" && h.parse::<HostId>().is_err() {
                return Err(PlanError(format!("--departed {h:?}: give host ids (nodetool status) or `all`")).into());
            }
        }
        // Backups of running operations stay, whatever the rules say.
        for op in self.raft.state().operations()?.into_iter().filter(|o| !o.state.is_terminal()) {
            if let Ok(p) = serde_json::from_value::<Plan>(op.spec.clone())
                && p.kind == plan::KIND_BACKUP
                && !p.backup_id.is_empty()
                && !spec.protect.contains(&p.backup_id)
            {
                spec.protect.push(p.backup_id);
            }
        }
        let n = plan::one_node(&cluster.name, &nodes)?;
        let ring: Vec<String> = nodes.iter().map(|n| n.host_id.clone()).collect();
        let plan = Plan {
            kind: plan::KIND_PURGE.into(),
            cluster: cluster.name.clone(),
            exclusive_clusters: if spec.dry_run { vec![] } else { vec![cluster.name.clone()] },
            backup_id: format!("{}-{}", cluster.name, now_ms()),
            storage_cluster: cluster.cassandra_cluster_name.clone(),
            nodes: vec![PlanNode { source_host: ring.join(","), ..plan::plan_node(n) }],
            steps: vec![Step {
                phase: ph::BACKUP_PURGE.into(),
                scope: Scope::Every,
                per_dc_limit: false,
                droppable: false,
                always: false,
            }],
            purge: Some(spec),
            ..Plan::default()
        };
        self.create(plan::KIND_PURGE, plan, request_id).await
    }

    /// Plans and starts a restore.
    pub async fn start_restore(&self, spec: RestoreSpec, request_id: &str) -> Result<String, StartError> {
        let (_, _) = self.cluster(&spec.cluster).await?;
        let backups = self.raft.state().backups(&spec.cluster)?;
        let backup = plan::select_backup(&backups, &spec.cluster, &spec.backup)?.clone();
        let source_plan: Plan = self
            .raft
            .state()
            .operation(&backup.operation_id)?
            .and_then(|o| serde_json::from_value(o.spec).ok())
            .ok_or_else(|| {
                PlanError(format!("the operation {} that took backup {} is gone", backup.operation_id, backup.id))
            })?;
        let source = plan::backup_nodes(&backup, &source_plan);
        let target_name = spec.target_cluster.clone().unwrap_or_else(|| spec.cluster.clone());
        let (target, nodes) = self.cluster(&target_name).await?;
        let plan = plan::plan_restore(&backup, &source, &target, &nodes, &spec)?;
        self.create(plan::KIND_RESTORE, plan, request_id).await
    }

    /// Plans and starts a verification (`delete`: false) or a removal (`delete`: true) of a backup.
    pub async fn start_reference(
        &self,
        spec: BackupRefSpec,
        delete: bool,
        request_id: &str,
    ) -> Result<String, StartError> {
        let (cluster, nodes) = self.cluster(&spec.cluster).await?;
        let backups = self.raft.state().backups(&spec.cluster)?;
        let backup = plan::select_backup(&backups, &spec.cluster, &spec.backup)?.clone();
        // One node does it for the whole cluster: the first one that answered last.
        let n = plan::one_node(&cluster.name, &nodes)?;
        let kind = if delete { plan::KIND_DELETE } else { plan::KIND_VERIFY };
        let phase = if delete { ph::BACKUP_REMOVE } else { ph::BACKUP_VERIFY };
        let plan = Plan {
            kind: kind.into(),
            cluster: cluster.name.clone(),
            exclusive_clusters: if delete { vec![cluster.name.clone()] } else { vec![] },
            backup_id: backup.id.clone(),
            storage_cluster: backup.labels.get("cassandra_cluster").cloned().unwrap_or(cluster.cassandra_cluster_name),
            nodes: vec![plan::plan_node(n)],
            steps: vec![Step {
                phase: phase.into(),
                scope: Scope::Every,
                per_dc_limit: false,
                droppable: false,
                always: false,
            }],
            reference: Some(spec),
            ..Plan::default()
        };
        self.create(kind, plan, request_id).await
    }

    async fn drive(&self, id: &str, cancel: &CancellationToken) -> Result<(), Stop> {
        // Everything committed before this leader took over is applied before it reads.
        self.raft.read_barrier().await?;
        let Some(op) = self.raft.state().operation(id)? else { return Ok(()) };
        if op.state.is_terminal() {
            return Ok(());
        }
        let plan: Plan = match serde_json::from_value(op.spec.clone()) {
            Ok(p) => p,
            Err(e) => return self.finish(&op, &Plan::default(), Some(format!("unreadable plan: {e}"))).await,
        };
        let mut failure = None;
        for step in plan.steps.iter().filter(|s| !s.always) {
            if let Err(f) = self.run_step(&op, &plan, step, cancel).await? {
                failure = Some(f);
                break;
            }
            if let Err(f) = self.after_step(&op, &plan, step)? {
                failure = Some(f);
                break;
            }
        }
        for step in plan.steps.iter().filter(|s| s.always) {
            if let Err(f) = self.run_step(&op, &plan, step, cancel).await? {
                tracing::warn!(operation = %op.id, step = %step.phase, error = %f, "a final step failed");
            }
        }
        self.finish(&op, &plan, failure).await
    }

    /// Nodes that left the operation (a droppable step failed with `allow_partial`).
    fn excluded(&self, op: &OperationRecord, plan: &Plan) -> Result<BTreeSet<String>, Stop> {
        let droppable: BTreeSet<&str> = plan.steps.iter().filter(|s| s.droppable).map(|s| s.phase.as_str()).collect();
        Ok(self
            .raft
            .state()
            .phases(&op.id)?
            .into_iter()
            .filter(|p| droppable.contains(p.phase.as_str()) && p.state == RunState::Failed)
            .map(|p| p.host_id)
            .collect())
    }

    async fn run_step(
        &self,
        op: &OperationRecord,
        plan: &Plan,
        step: &Step,
        cancel: &CancellationToken,
    ) -> Result<Result<(), String>, Stop> {
        let excluded = if plan.allow_partial { self.excluded(op, plan)? } else { BTreeSet::new() };
        let phases = self.raft.state().phases(&op.id)?;
        let targets: Vec<&PlanNode> = match step.scope {
            Scope::Every if step.always => plan
                .nodes
                .iter()
                .filter(|n| {
                    phases.iter().any(|p| {
                        p.host_id == n.host_id && p.phase == ph::BACKUP_SNAPSHOT && p.state != RunState::Pending
                    })
                })
                .collect(),
            Scope::Every => plan.nodes.iter().filter(|n| !excluded.contains(&n.host_id)).collect(),
            Scope::One => {
                let existing = phases.iter().find(|p| p.phase == step.phase).map(|p| p.host_id.clone());
                let host = match existing {
                    Some(h) => h,
                    None => {
                        let Some(n) = plan.nodes.iter().find(|n| !excluded.contains(&n.host_id)) else {
                            return Ok(Err("no node is left in the operation".into()));
                        };
                        self.raft
                            .propose(&Command::AddPhase { phase: pending(&op.id, &n.host_id, &step.phase) })
                            .await?;
                        n.host_id.clone()
                    }
                };
                plan.nodes.iter().filter(|n| n.host_id == host).collect()
            }
        };
        if targets.is_empty() {
            if step.always {
                return Ok(Ok(()));
            }
            return Ok(Err(format!("no node is left for phase {}", step.phase)));
        }
        let limit = if step.per_dc_limit && plan.parallel_per_dc > 0 { plan.parallel_per_dc } else { targets.len() };
        let mut sems: BTreeMap<&str, Arc<tokio::sync::Semaphore>> = BTreeMap::new();
        for n in &targets {
            sems.entry(n.datacenter.as_str()).or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(limit)));
        }
        // Without a per-datacenter limit every node starts at once: commit all their starts in
        // one raft entry, then call every agent (one raft round instead of one per node keeps
        // the skew between the nodes' snapshots small).
        let batched = if limit >= targets.len() { self.start_all(op, step, &targets).await? } else { BTreeSet::new() };
        if !batched.is_empty() {
            self.call_batch(op, plan, step, &targets, &batched).await?;
        }
        let runs = targets.iter().map(|n| {
            let sem = Arc::clone(&sems[n.datacenter.as_str()]);
            async move {
                let _permit = sem.acquire_owned().await;
                (*n, self.run_phase(op, plan, step, n, cancel).await)
            }
        });
        let results = futures::future::join_all(runs).await;
        let mut failures = Vec::new();
        for (n, r) in results {
            if let Err(e) = r? {
                failures.push(format!("{} ({}, {}): {e}", n.host_id, n.address, n.datacenter));
            }
        }
        if failures.is_empty() {
            return Ok(Ok(()));
        }
        if step.droppable && plan.allow_partial && failures.len() < targets.len() {
            tracing::warn!(operation = %op.id, phase = %step.phase, failed = ?failures, "nodes leave the operation (--allow-partial)");
            return Ok(Ok(()));
        }
        Ok(Err(format!(
            "phase {} failed on {} of {} nodes: {}",
            step.phase,
            failures.len(),
            targets.len(),
            failures.join("; ")
        )))
    }

    /// Commits the start of `step` on every target whose phase is pending, in one entry
    /// ([`Command::PhasesStarted`]); returns the nodes started. The agents are called after.
    async fn start_all(
        &self,
        op: &OperationRecord,
        step: &Step,
        targets: &[&PlanNode],
    ) -> Result<BTreeSet<String>, Stop> {
        let phases = self.raft.state().phases(&op.id)?;
        let starts: Vec<(String, String)> = targets
            .iter()
            .filter_map(|n| phases.iter().find(|p| p.host_id == n.host_id && p.phase == step.phase))
            .filter(|p| p.state == RunState::Pending)
            .map(|p| (p.host_id.clone(), dispatch::job_id(&op.id, &p.host_id, &p.phase, p.attempts + 1)))
            .collect();
        if starts.is_empty() {
            return Ok(BTreeSet::new());
        }
        let hosts = starts.iter().map(|(h, _)| h.clone()).collect();
        self.raft
            .propose(&Command::PhasesStarted {
                operation_id: op.id.clone(),
                phase: step.phase.clone(),
                starts,
                at_ms: now_ms(),
            })
            .await?;
        Ok(hosts)
    }

    /// Calls every agent whose start was just committed, all at once. A snapshot step gets one
    /// moment for every node to begin at (each agent's clock offset applied), far enough ahead
    /// for every call to arrive: the snapshots then line up however long the calls take. A
    /// failed call is left to the polling, which starts the job again under the same id.
    async fn call_batch(
        &self,
        op: &OperationRecord,
        plan: &Plan,
        step: &Step,
        targets: &[&PlanNode],
        batched: &BTreeSet<String>,
    ) -> Result<(), Stop> {
        let phases = self.raft.state().phases(&op.id)?;
        let nodes: Vec<(&PlanNode, PhaseRecord, Value)> = targets
            .iter()
            .filter(|n| batched.contains(&n.host_id))
            .filter_map(|n| {
                let rec = phases.iter().find(|p| p.host_id == n.host_id && p.phase == step.phase)?.clone();
                Some(self.params(op, plan, step, n).map(|params| (*n, rec, params)))
            })
            .collect::<Result<_, Stop>>()?;
        let at = (step.phase == ph::BACKUP_SNAPSHOT).then(|| {
            let lead = snapshot_lead(lock(&self.dispatch_times).get(&op.id).copied(), nodes.len());
            now_ms() + lead.as_millis() as u64
        });
        let began = Instant::now();
        let calls = nodes.iter().map(|(n, rec, params)| {
            let not_before = at.map_or(0, |at| {
                let offset = lock(&self.clocks).get(&n.host_id).map_or(0, |c| c.offset_ms);
                at.saturating_add_signed(offset)
            });
            async move {
                let t0 = now_ms();
                match dispatch::reattach(self.agents.as_ref(), rec, &n.agent_address, params.clone(), not_before).await
                {
                    Ok(st) => self.observe_clock(&n.host_id, &n.agent_address, t0, st.agent_time_ms),
                    Err(e) => {
                        tracing::debug!(operation = %op.id, node = %n.host_id, error = %e, "start failed; the job is recorded, waiting for the agent");
                    }
                }
            }
        });
        futures::future::join_all(calls).await;
        let took = began.elapsed();
        lock(&self.dispatch_times).insert(op.id.clone(), took);
        if let Some(at) = at {
            let late = now_ms().saturating_sub(at);
            tracing::info!(operation = %op.id, phase = %step.phase, nodes = nodes.len(), dispatch_ms = took.as_millis() as u64, late_ms = late, "snapshot start sent to every node");
        } else {
            tracing::debug!(operation = %op.id, phase = %step.phase, nodes = nodes.len(), dispatch_ms = took.as_millis() as u64, "phase started on every node");
        }
        Ok(())
    }

    /// Updates the clock estimate of an agent from an answer sent at `agent_ms` to a call made at
    /// `sent_ms` (coordinator clock) and answered now.
    fn observe_clock(&self, host: &str, address: &str, sent_ms: u64, agent_ms: u64) {
        if agent_ms == 0 {
            return; // An older agent.
        }
        let received = now_ms();
        let rtt = received.saturating_sub(sent_ms);
        let offset = agent_ms as i64 - (sent_ms + rtt / 2) as i64;
        let mut clocks = lock(&self.clocks);
        let keep = clocks.get(host).is_some_and(|c| c.rtt_ms < rtt && c.at.elapsed() < Duration::from_secs(60));
        if keep {
            return;
        }
        let previous =
            clocks.insert(host.to_owned(), ClockEstimate { offset_ms: offset, rtt_ms: rtt, at: Instant::now() });
        if offset.abs() > CLOCK_WARNING_MS && previous.is_none_or(|p| p.offset_ms.abs() <= CLOCK_WARNING_MS) {
            tracing::warn!(
                node = host,
                agent = address,
                offset_ms = offset,
                rtt_ms = rtt,
                "the agent's clock differs from the coordinator's: synchronise the clocks (NTP); snapshot start times are corrected by the estimate"
            );
        }
    }

    /// Checks between steps: one schema and one repository for every node of a backup.
    fn after_step(&self, op: &OperationRecord, plan: &Plan, step: &Step) -> Result<Result<(), String>, Stop> {
        if step.phase != ph::BACKUP_CHECK {
            return Ok(Ok(()));
        }
        let checks: Vec<(String, ph::BackupCheckResult)> = self
            .raft
            .state()
            .phases(&op.id)?
            .into_iter()
            .filter(|p| p.phase == ph::BACKUP_CHECK && p.state == RunState::Succeeded)
            .filter_map(|p| serde_json::from_value(p.summary).ok().map(|r| (p.host_id, r)))
            .collect();
        let versions: BTreeSet<&str> = checks
            .iter()
            .flat_map(|(_, c)| c.schema_versions.iter().map(String::as_str))
            .filter(|v| *v != "UNREACHABLE")
            .collect();
        if versions.len() > 1 {
            let seen: Vec<String> =
                checks.iter().map(|(h, c)| format!("{h} sees {}", c.schema_versions.join("/"))).collect();
            return Ok(Err(format!(
                "the nodes do not agree on the schema ({} versions: {}): wait for schema agreement (nodetool describecluster) and start the backup again",
                versions.len(),
                seen.join("; ")
            )));
        }
        let locations: BTreeSet<&str> = checks.iter().map(|(_, c)| c.location.as_str()).collect();
        if locations.len() > 1 {
            let seen: Vec<String> = checks.iter().map(|(h, c)| format!("{h}: {}", c.location)).collect();
            return Ok(Err(format!(
                "the agents write to different repositories ({}): give every agent of cluster {} the same --location",
                seen.join(", "),
                plan.cluster
            )));
        }
        Ok(Ok(()))
    }

    fn summary(&self, op: &str, host: &str, phase: &str) -> Result<Value, Stop> {
        Ok(self.raft.state().phase(op, host, phase)?.map(|p| p.summary).unwrap_or(Value::Null))
    }

    /// The parameters of `step` on `node`: a function of the plan and of persisted results only,
    /// so a new leader re-attaching to a job sends exactly what the first one sent.
    fn params(&self, op: &OperationRecord, plan: &Plan, step: &Step, node: &PlanNode) -> Result<Value, Stop> {
        let b = plan.backup.clone().unwrap_or_default();
        let v = match step.phase.as_str() {
            ph::BACKUP_CHECK => json!(ph::BackupCheckParams { min_free_bytes: b.min_free_bytes }),
            ph::BACKUP_SNAPSHOT => json!(ph::SnapshotParams {
                backup_id: plan.backup_id.clone(),
                tag: b.tag.clone(),
                entities: b.entities.clone(),
                system_keyspaces: b.system_keyspaces,
            }),
            ph::BACKUP_UPLOAD => json!(ph::UploadParams {
                snapshot: self.summary(&op.id, &node.host_id, ph::BACKUP_SNAPSHOT)?,
                tag: b.tag.clone(),
                entities: b.entities.clone(),
                system_keyspaces: b.system_keyspaces,
                bandwidth: b.bandwidth.clone(),
            }),
            ph::BACKUP_CLUSTER_MANIFEST => json!(self.cluster_manifest(op, plan)?),
            ph::BACKUP_CLEAR_SNAPSHOT => json!(ph::ClearSnapshotParams { backup_id: plan.backup_id.clone() }),
            ph::BACKUP_PURGE => purge_params(plan, node),
            ph::BACKUP_VERIFY | ph::BACKUP_REMOVE => json!(ph::BackupRefParams {
                cluster: plan.storage_cluster.clone(),
                backup_id: plan.backup_id.clone(),
                deep: plan.reference.as_ref().is_some_and(|r| r.deep),
            }),
            _ => {
                let r = plan.restore.clone().unwrap_or_default();
                json!(ph::RestoreParams {
                    backup_id: plan.backup_id.clone(),
                    source_cluster: plan.storage_cluster.clone(),
                    source_host: node.source_host.clone(),
                    strategy: r.strategy.clone(),
                    entities: r.entities.clone(),
                    renames: r.renames.clone(),
                    no_truncate: r.no_truncate,
                    set_tokens: r.strategy == "in-place",
                    new_cluster: r.new_cluster,
                    ignore_token_mismatch: r.ignore_token_mismatch,
                    ignore_schema_mismatch: r.ignore_schema_mismatch,
                    create_tables: r.create_tables,
                })
            }
        };
        Ok(v)
    }

    /// Included nodes (upload succeeded) and missing ones, with the skew between snapshots.
    fn cluster_manifest(&self, op: &OperationRecord, plan: &Plan) -> Result<ph::ClusterManifestParams, Stop> {
        let phases = self.raft.state().phases(&op.id)?;
        let get = |host: &str, phase: &str| phases.iter().find(|p| p.host_id == host && p.phase == phase);
        let mut nodes = Vec::new();
        let mut missing = Vec::new();
        let mut times = Vec::new();
        let mut cluster = String::new();
        for n in &plan.nodes {
            let snap =
                get(&n.host_id, ph::BACKUP_SNAPSHOT).filter(|p| p.state == RunState::Succeeded).map(|p| &p.summary);
            let tokens: Vec<String> = snap
                .and_then(|s| s["node"]["tokens"].as_array())
                .map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect())
                .unwrap_or_default();
            let Ok(host_id) = n.host_id.parse::<HostId>() else { continue };
            let up = get(&n.host_id, ph::BACKUP_UPLOAD).filter(|p| p.state == RunState::Succeeded);
            let up: Option<ph::UploadResult> = up.and_then(|p| serde_json::from_value(p.summary.clone()).ok());
            let entry = ClusterNodeEntry {
                host_id,
                datacenter: n.datacenter.clone(),
                rack: n.rack.clone(),
                tokens,
                files: up.as_ref().map_or(0, |u| u.files),
                bytes: up.as_ref().map_or(0, |u| u.bytes),
            };
            match (&up, snap) {
                (Some(_), Some(s)) => {
                    if let Some(t) =
                        s["snapshot_at"].as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    {
                        times.push(t.timestamp_millis());
                    }
                    if cluster.is_empty() {
                        cluster = s["node"]["cluster"].as_str().unwrap_or_default().to_owned();
                    }
                    nodes.push(entry);
                }
                _ => missing.push(entry),
            }
        }
        let skew = match (times.iter().min(), times.iter().max()) {
            (Some(a), Some(b)) => Some((b - a).max(0) as u64),
            _ => None,
        };
        if cluster.is_empty() {
            cluster = plan.storage_cluster.clone();
        }
        Ok(ph::ClusterManifestParams {
            cluster,
            backup_id: plan.backup_id.clone(),
            tag: plan.backup.as_ref().and_then(|b| b.tag.clone()),
            started_at_ms: op.created_at_ms,
            snapshot_skew_ms: skew,
            nodes,
            missing_nodes: missing,
        })
    }

    async fn run_phase(
        &self,
        op: &OperationRecord,
        plan: &Plan,
        step: &Step,
        node: &PlanNode,
        cancel: &CancellationToken,
    ) -> Result<Result<Value, String>, Stop> {
        let params = self.params(op, plan, step, node)?;
        let mut new_attempt = false;
        loop {
            if cancel.is_cancelled() {
                return Err(Stop::Cancelled);
            }
            let rec = self.raft.state().phase(&op.id, &node.host_id, &step.phase)?.ok_or_else(|| {
                Stop::Store(KvError::Corrupt {
                    key: crate::model::keys::phase(&op.id, &node.host_id, &step.phase),
                    reason: "the phase record is missing".into(),
                })
            })?;
            match rec.state {
                RunState::Succeeded => return Ok(Ok(rec.summary)),
                RunState::Failed | RunState::Cancelled => return Ok(Err(rec.error)),
                _ => {}
            }
            let job_id = if rec.state == RunState::Running && !rec.job_id.is_empty() && !new_attempt {
                // Started in the step's batch, or by an earlier leader: the polling re-attaches
                // (and starts the job under the same id if the agent never got it).
                rec.job_id.clone()
            } else {
                if !rec.job_id.is_empty() {
                    // The previous attempt may still run somewhere (an agent that came back).
                    let _ = self.agents.cancel_job(&node.agent_address, &rec.job_id).await;
                }
                match dispatch::dispatch(&self.raft, self.agents.as_ref(), &rec, &node.agent_address, params.clone())
                    .await
                {
                    Ok(st) => st.job_id,
                    Err(DispatchError::Record { source, .. }) => return Err(Stop::Raft(source)),
                    Err(e) => {
                        tracing::debug!(operation = %op.id, node = %node.host_id, error = %e, "dispatch failed; the job is recorded, waiting for the agent");
                        dispatch::job_id(&op.id, &node.host_id, &step.phase, rec.attempts + 1)
                    }
                }
            };
            let end = self.wait_job(op, node, &step.phase, &job_id, &params, cancel).await?;
            let at = now_ms();
            match end {
                Ok(result) => {
                    self.raft
                        .propose(&Command::PhaseFinished {
                            operation_id: op.id.clone(),
                            host_id: node.host_id.clone(),
                            phase: step.phase.clone(),
                            state: RunState::Succeeded,
                            error: String::new(),
                            summary: result.clone(),
                            at_ms: at,
                        })
                        .await?;
                    lock(&self.live).remove(&(op.id.clone(), node.host_id.clone(), step.phase.clone()));
                    return Ok(Ok(result));
                }
                Err((message, retry)) => {
                    let rec = self.raft.state().phase(&op.id, &node.host_id, &step.phase)?;
                    let attempts = rec.map_or(1, |r| r.attempts);
                    if retry != pb::RetryClass::Never && attempts < self.config.attempts {
                        let wait = self
                            .config
                            .retry_backoff
                            .saturating_mul(1 << (attempts.saturating_sub(1)).min(5))
                            .min(Duration::from_secs(60));
                        tracing::warn!(operation = %op.id, node = %node.host_id, phase = %step.phase, attempt = attempts, error = %message, "phase failed; retrying in {wait:?}");
                        tokio::select! {
                            _ = cancel.cancelled() => return Err(Stop::Cancelled),
                            _ = tokio::time::sleep(wait) => {}
                        }
                        new_attempt = true;
                        continue;
                    }
                    let error = format!("{message} (attempt {attempts} of {})", self.config.attempts);
                    self.raft
                        .propose(&Command::PhaseFinished {
                            operation_id: op.id.clone(),
                            host_id: node.host_id.clone(),
                            phase: step.phase.clone(),
                            state: RunState::Failed,
                            error: error.clone(),
                            summary: Value::Null,
                            at_ms: at,
                        })
                        .await?;
                    lock(&self.live).remove(&(op.id.clone(), node.host_id.clone(), step.phase.clone()));
                    return Ok(Err(error));
                }
            }
        }
    }

    /// Polls the job until it ends. An agent that does not know the job is asked to start it
    /// (the same id: the first start may never have arrived, or the agent lost its records).
    async fn wait_job(
        &self,
        op: &OperationRecord,
        node: &PlanNode,
        phase: &str,
        job_id: &str,
        params: &Value,
        cancel: &CancellationToken,
    ) -> Result<Result<Value, (String, pb::RetryClass)>, Stop> {
        let key = (op.id.clone(), node.host_id.clone(), phase.to_owned());
        let mut last_ok = Instant::now();
        let mut last_error = String::new();
        loop {
            if cancel.is_cancelled() {
                return Err(Stop::Cancelled);
            }
            let sent = now_ms();
            match self.agents.job(&node.agent_address, job_id).await {
                Ok(st) => {
                    last_ok = Instant::now();
                    self.observe_clock(&node.host_id, &node.agent_address, sent, st.agent_time_ms);
                    if let Some(p) = &st.progress {
                        let mut live = lock(&self.live);
                        let bytes = p.transfer.as_ref().map_or(0, |t| t.bytes_transferred);
                        let e = live.entry(key.clone()).or_insert_with(|| Live {
                            job_id: job_id.to_owned(),
                            progress: p.clone(),
                            since: Instant::now(),
                            first_bytes: bytes,
                        });
                        if e.job_id != job_id {
                            *e = Live {
                                job_id: job_id.to_owned(),
                                progress: p.clone(),
                                since: Instant::now(),
                                first_bytes: bytes,
                            };
                        }
                        e.progress = p.clone();
                    }
                    match pb::JobState::try_from(st.state).unwrap_or(pb::JobState::Unspecified) {
                        pb::JobState::Succeeded => {
                            let v = serde_json::from_str(&st.result_json).unwrap_or(Value::Null);
                            return Ok(Ok(v));
                        }
                        pb::JobState::Failed | pb::JobState::Cancelled => {
                            let (m, r) = st
                                .error
                                .map(|e| {
                                    (e.message, pb::RetryClass::try_from(e.retry).unwrap_or(pb::RetryClass::Backoff))
                                })
                                .unwrap_or_else(|| {
                                    ("the job failed without a message".into(), pb::RetryClass::Backoff)
                                });
                            return Ok(Err((format!("agent {}: {m}", node.agent_address), r)));
                        }
                        _ => {}
                    }
                }
                Err(e) if e.kind == AgentErrorKind::NotFound => {
                    let req = JobRequest {
                        job_id: job_id.to_owned(),
                        phase: phase.to_owned(),
                        params: params.clone(),
                        operation_id: op.id.clone(),
                        not_before_ms: 0,
                    };
                    match self.agents.start_job(&node.agent_address, &req).await {
                        Ok(_) => last_ok = Instant::now(),
                        Err(e) if matches!(e.kind, AgentErrorKind::Conflict | AgentErrorKind::Invalid) => {
                            return Ok(Err((e.to_string(), pb::RetryClass::Never)));
                        }
                        Err(e) => last_error = e.to_string(),
                    }
                }
                Err(e) if matches!(e.kind, AgentErrorKind::Invalid | AgentErrorKind::Conflict) => {
                    return Ok(Err((e.to_string(), pb::RetryClass::Never)));
                }
                Err(e) => last_error = e.to_string(),
            }
            if last_ok.elapsed() > self.config.agent_timeout {
                return Ok(Err((
                    format!("no answer for {:?}: {last_error}", self.config.agent_timeout),
                    pb::RetryClass::Backoff,
                )));
            }
            tokio::select! {
                _ = cancel.cancelled() => return Err(Stop::Cancelled),
                _ = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
    }

    async fn finish(&self, op: &OperationRecord, plan: &Plan, mut failure: Option<String>) -> Result<(), Stop> {
        let phases = self.raft.state().phases(&op.id)?;
        for p in phases.iter().filter(|p| p.state == RunState::Pending) {
            self.raft
                .propose(&Command::PhaseFinished {
                    operation_id: op.id.clone(),
                    host_id: p.host_id.clone(),
                    phase: p.phase.clone(),
                    state: RunState::Cancelled,
                    error: "not run: the node left the operation, or an earlier step failed".into(),
                    summary: Value::Null,
                    at_ms: now_ms(),
                })
                .await?;
        }
        let phases = self.raft.state().phases(&op.id)?;
        if failure.is_none() {
            match plan.kind.as_str() {
                plan::KIND_BACKUP => {
                    let cm = self.cluster_manifest(op, plan)?;
                    let location = phases
                        .iter()
                        .find(|p| p.phase == ph::BACKUP_CHECK && p.state == RunState::Succeeded)
                        .and_then(|p| p.summary["location"].as_str().map(str::to_owned))
                        .unwrap_or_default();
                    let mut labels = BTreeMap::new();
                    if let Some(t) = plan.backup.as_ref().and_then(|b| b.tag.clone()) {
                        labels.insert("tag".to_owned(), t);
                    }
                    labels.insert("cassandra_cluster".into(), cm.cluster.clone());
                    if let Some(s) = cm.snapshot_skew_ms {
                        labels.insert("snapshot_skew_ms".into(), s.to_string());
                    }
                    let missing: Vec<String> = cm.missing_nodes.iter().map(|n| n.host_id.to_string()).collect();
                    labels.insert("missing_nodes".into(), missing.join(","));
                    let ups: Vec<ph::UploadResult> = phases
                        .iter()
                        .filter(|p| p.phase == ph::BACKUP_UPLOAD && p.state == RunState::Succeeded)
                        .filter_map(|p| serde_json::from_value(p.summary.clone()).ok())
                        .collect();
                    labels.insert("files".into(), ups.iter().map(|u| u.files).sum::<u64>().to_string());
                    labels
                        .insert("bytes_uploaded".into(), ups.iter().map(|u| u.bytes_uploaded).sum::<u64>().to_string());
                    labels.insert("bytes_skipped".into(), ups.iter().map(|u| u.bytes_skipped).sum::<u64>().to_string());
                    if let Some(b) = &plan.backup
                        && !b.datacenters.is_empty()
                    {
                        labels.insert("datacenters".into(), b.datacenters.join(","));
                    }
                    if let Some(e) = &b_entities(plan) {
                        labels.insert("entities".into(), e.clone());
                    }
                    let record = BackupRecord {
                        cluster: plan.cluster.clone(),
                        id: plan.backup_id.clone(),
                        operation_id: op.id.clone(),
                        status: if missing.is_empty() { "complete" } else { "partial" }.into(),
                        location,
                        nodes: cm.nodes.iter().map(|n| n.host_id.to_string()).collect(),
                        bytes_total: cm.nodes.iter().map(|n| n.bytes).sum(),
                        started_at_ms: op.created_at_ms,
                        finished_at_ms: now_ms(),
                        labels,
                    };
                    self.raft.propose(&Command::PutBackup { backup: record }).await?;
                }
                plan::KIND_DELETE => {
                    self.raft
                        .propose(&Command::RemoveBackup { cluster: plan.cluster.clone(), id: plan.backup_id.clone() })
                        .await?;
                }
                plan::KIND_PURGE if !plan.purge.as_ref().is_some_and(|p| p.dry_run) => {
                    // The catalog follows the repository: cluster backups the purge removed leave it.
                    for p in phases.iter().filter(|p| p.phase == ph::BACKUP_PURGE && p.state == RunState::Succeeded) {
                        for v in p.summary["backups"].as_array().into_iter().flatten() {
                            if v["kept"].as_bool() == Some(false)
                                && let Some(id) = v["backup_id"].as_str()
                            {
                                self.raft
                                    .propose(&Command::RemoveBackup {
                                        cluster: plan.cluster.clone(),
                                        id: id.to_owned(),
                                    })
                                    .await?;
                            }
                        }
                    }
                }
                plan::KIND_VERIFY => {
                    let bad = phases
                        .iter()
                        .filter(|p| p.phase == ph::BACKUP_VERIFY)
                        .any(|p| p.summary["ok"].as_bool() == Some(false));
                    if bad {
                        failure = Some(format!(
                            "backup {} has missing or damaged blobs: see the problems in `cassette operations show {}`",
                            plan.backup_id, op.id
                        ));
                    }
                }
                _ => {}
            }
        }
        let (state, error) = match &failure {
            None => (RunState::Succeeded, String::new()),
            Some(f) => (RunState::Failed, f.clone()),
        };
        self.raft
            .propose(&Command::FinishOperation { operation_id: op.id.clone(), state, error, at_ms: now_ms() })
            .await?;
        lock(&self.live).retain(|k, _| k.0 != op.id);
        Ok(())
    }

    /// The operation as JSON, with live progress when this replica drives it.
    pub fn view(&self, op: &OperationRecord) -> Result<Value, KvError> {
        let phases = self.raft.state().phases(&op.id)?;
        let live = lock(&self.live).clone();
        Ok(view(op, &phases, &live))
    }

    /// The raft handle.
    pub fn raft(&self) -> &RaftHandle {
        &self.raft
    }
}

fn b_entities(plan: &Plan) -> Option<String> {
    plan.backup.as_ref().map(|b| b.entities.clone()).filter(|e| !e.is_empty())
}

fn pending(op: &str, host: &str, phase: &str) -> PhaseRecord {
    PhaseRecord {
        operation_id: op.to_owned(),
        host_id: host.to_owned(),
        phase: phase.to_owned(),
        job_id: String::new(),
        state: RunState::Pending,
        attempts: 0,
        started_at_ms: 0,
        finished_at_ms: 0,
        error: String::new(),
        summary: Value::Null,
    }
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
struct Totals {
    files_total: u64,
    files_done: u64,
    bytes_total: u64,
    bytes_done: u64,
    bytes_transferred: u64,
    bytes_skipped: u64,
    rate_bytes_per_sec: f64,
}

impl Totals {
    fn add(&mut self, o: &Totals) {
        self.files_total += o.files_total;
        self.files_done += o.files_done;
        self.bytes_total += o.bytes_total;
        self.bytes_done += o.bytes_done;
        self.bytes_transferred += o.bytes_transferred;
        self.bytes_skipped += o.bytes_skipped;
        self.rate_bytes_per_sec += o.rate_bytes_per_sec;
    }

    fn json(&self) -> Value {
        let eta = if self.rate_bytes_per_sec > 0.0 && self.bytes_total > self.bytes_done {
            Some(((self.bytes_total - self.bytes_done) as f64 / self.rate_bytes_per_sec).ceil() as u64)
        } else {
            None
        };
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        v["eta_seconds"] = json!(eta);
        v
    }
}

/// The agent's `PurgeRequest` for a purge plan (the ring travels in the node's `source_host`).
fn purge_params(plan: &Plan, node: &PlanNode) -> Value {
    let p = plan.purge.clone().unwrap_or_default();
    let mut rules = Vec::new();
    if p.keep_last.is_some() || p.keep_within.is_some() {
        let mut rule = json!({ "cluster": plan.storage_cluster, "tag": p.tag });
        if let Some(n) = p.keep_last {
            rule["keep_last"] = json!(n);
        }
        if let Some(w) = &p.keep_within {
            rule["keep_within"] = json!(w);
        }
        rules.push(rule);
    }
    let departed = if p.departed.is_empty() {
        json!("none")
    } else if p.departed.iter().any(|d| d == "all") {
        json!("all")
    } else {
        json!({ "hosts": p.departed })
    };
    let ring: Vec<&str> = node.source_host.split(',').filter(|h| !h.is_empty()).collect();
    json!({
        "rules": rules,
        "ring": { plan.storage_cluster.clone(): ring },
        "departed": departed,
        "protect": p.protect,
        "dry_run": p.dry_run,
    })
}

/// The transfer phase of a kind, whose progress is the operation's.
fn transfer_phase(kind: &str) -> &'static str {
    if kind == plan::KIND_RESTORE { ph::RESTORE_DOWNLOAD } else { ph::BACKUP_UPLOAD }
}

fn phase_totals(p: &PhaseRecord, live: Option<&Live>) -> Totals {
    let mut t = Totals::default();
    if let Some(l) = live.filter(|_| p.state == RunState::Running)
        && let Some(tr) = &l.progress.transfer
    {
        t.files_total = tr.files_total;
        t.bytes_total = tr.bytes_total;
        t.files_done = tr.files_transferred + tr.files_skipped;
        t.bytes_done = tr.bytes_transferred + tr.bytes_skipped;
        t.bytes_transferred = tr.bytes_transferred;
        t.bytes_skipped = tr.bytes_skipped;
        let secs = l.since.elapsed().as_secs_f64();
        if secs > 0.5 {
            t.rate_bytes_per_sec = tr.bytes_transferred.saturating_sub(l.first_bytes) as f64 / secs;
        }
        return t;
    }
    if p.state == RunState::Succeeded {
        let s = &p.summary;
        if p.phase == ph::BACKUP_UPLOAD {
            t.files_total = s["files"].as_u64().unwrap_or(0);
            t.files_done = t.files_total;
            t.bytes_total = s["bytes"].as_u64().unwrap_or(0);
            t.bytes_done = t.bytes_total;
            t.bytes_transferred = s["bytes_uploaded"].as_u64().unwrap_or(0);
            t.bytes_skipped = s["bytes_skipped"].as_u64().unwrap_or(0);
        } else if let Some(d) = s.get("download").filter(|d| !d.is_null()) {
            t.files_total = d["files_total"].as_u64().unwrap_or(0);
            t.files_done = t.files_total;
            t.bytes_total = d["bytes_total"].as_u64().unwrap_or(0);
            t.bytes_done = t.bytes_total;
            t.bytes_transferred = d["bytes_transferred"].as_u64().unwrap_or(0);
            t.bytes_skipped = d["bytes_skipped"].as_u64().unwrap_or(0);
        }
    }
    t
}

fn state_name(s: RunState) -> Value {
    serde_json::to_value(s).unwrap_or(Value::Null)
}

fn view(op: &OperationRecord, phases: &[PhaseRecord], live: &HashMap<(String, String, String), Live>) -> Value {
    let plan: Plan = serde_json::from_value(op.spec.clone()).unwrap_or_default();
    let order: Vec<&str> = plan.steps.iter().map(|s| s.phase.as_str()).collect();
    let rank = |p: &str| order.iter().position(|x| *x == p).unwrap_or(usize::MAX);
    let tp = transfer_phase(&op.kind);
    let mut nodes = Vec::new();
    let mut dcs: BTreeMap<String, (usize, Totals)> = BTreeMap::new();
    let mut total = Totals::default();
    for n in &plan.nodes {
        let mut mine: Vec<&PhaseRecord> = phases.iter().filter(|p| p.host_id == n.host_id).collect();
        mine.sort_by_key(|p| rank(&p.phase));
        let mut t = Totals::default();
        let ph_json: Vec<Value> = mine
            .iter()
            .map(|p| {
                let l = live.get(&(op.id.clone(), p.host_id.clone(), p.phase.clone()));
                if p.phase == tp {
                    t = phase_totals(p, l);
                }
                json!({
                    "phase": p.phase,
                    "state": state_name(p.state),
                    "attempts": p.attempts,
                    "job_id": p.job_id,
                    "error": p.error,
                    "message": l.filter(|_| p.state == RunState::Running).map(|l| l.progress.message.clone()).unwrap_or_default(),
                    "result": if p.phase == ph::BACKUP_SNAPSHOT { json!({"snapshot_at": p.summary["snapshot_at"]}) } else if p.summary.is_null() { Value::Null } else { p.summary.clone() },
                })
            })
            .collect();
        let current = mine.iter().find(|p| !p.state.is_terminal()).map(|p| p.phase.clone());
        let failed = mine.iter().any(|p| p.state == RunState::Failed);
        let e = dcs.entry(n.datacenter.clone()).or_default();
        e.0 += 1;
        e.1.add(&t);
        total.add(&t);
        nodes.push(json!({
            "host_id": n.host_id,
            "address": n.address,
            "datacenter": n.datacenter,
            "rack": n.rack,
            "source_host": n.source_host,
            "current_phase": current,
            "failed": failed,
            "transfer": t.json(),
            "phases": ph_json,
        }));
    }
    let end = if op.finished_at_ms > 0 { op.finished_at_ms } else { now_ms() };
    let mut out = json!({
        "id": op.id,
        "kind": op.kind,
        "cluster": op.cluster,
        "state": state_name(op.state),
        "error": op.error,
        "backup_id": plan.backup_id,
        "created_at_ms": op.created_at_ms,
        "finished_at_ms": op.finished_at_ms,
        "elapsed_seconds": end.saturating_sub(op.created_at_ms) as f64 / 1000.0,
        "steps": order,
        "current_step": order.iter().find(|s| phases.iter().any(|p| p.phase == **s && !p.state.is_terminal())),
        "warnings": plan.warnings,
        "totals": total.json(),
        "datacenters": dcs.iter().map(|(name, (n, t))| {
            let mut v = t.json();
            v["name"] = json!(name);
            v["nodes"] = json!(n);
            v
        }).collect::<Vec<_>>(),
        "nodes": nodes,
    });
    if op.kind == plan::KIND_BACKUP {
        let snaps: Vec<i64> = phases
            .iter()
            .filter(|p| p.phase == ph::BACKUP_SNAPSHOT && p.state == RunState::Succeeded)
            .filter_map(|p| p.summary["snapshot_at"].as_str())
            .filter_map(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_millis())
            .collect();
        if let (Some(a), Some(b)) = (snaps.iter().min(), snaps.iter().max()) {
            out["snapshot_skew_ms"] = json!(b - a);
        }
        out["options"] = serde_json::to_value(&plan.backup).unwrap_or(Value::Null);
    }
    if op.kind == plan::KIND_RESTORE {
        out["options"] = serde_json::to_value(&plan.restore).unwrap_or(Value::Null);
        let diffs: Vec<String> = phases
            .iter()
            .filter(|p| p.phase == ph::RESTORE_CHECK)
            .flat_map(|p| {
                p.summary["schema_differences"]
                    .as_array()
                    .map(|a| {
                        a.iter().filter_map(|d| d.as_str().map(|d| format!("{}: {d}", p.host_id))).collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
            })
            .collect();
        out["schema_differences"] = json!(diffs);
    }
    if op.kind == plan::KIND_VERIFY || op.kind == plan::KIND_DELETE {
        out["result"] = phases.first().map(|p| p.summary.clone()).unwrap_or(Value::Null);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_sum_transfers_per_datacenter() {
        let plan = Plan {
            kind: plan::KIND_BACKUP.into(),
            backup_id: "b".into(),
            nodes: vec![
                PlanNode { host_id: "h1".into(), datacenter: "dc1".into(), ..Default::default() },
                PlanNode { host_id: "h2".into(), datacenter: "dc2".into(), ..Default::default() },
            ],
            steps: vec![Step {
                phase: ph::BACKUP_UPLOAD.into(),
                scope: Scope::Every,
                per_dc_limit: true,
                droppable: true,
                always: false,
            }],
            ..Plan::default()
        };
        let op = OperationRecord {
            id: "op".into(),
            cluster: "prod".into(),
            kind: plan::KIND_BACKUP.into(),
            state: RunState::Running,
            spec: serde_json::to_value(&plan).unwrap(),
            created_at_ms: 1,
            finished_at_ms: 0,
            error: String::new(),
            request_id: String::new(),
        };
        let mut done = pending("op", "h1", ph::BACKUP_UPLOAD);
        done.state = RunState::Succeeded;
        done.summary = json!({"files": 3, "bytes": 300, "bytes_uploaded": 100, "bytes_skipped": 200});
        let mut running = pending("op", "h2", ph::BACKUP_UPLOAD);
        running.state = RunState::Running;
        let mut live = HashMap::new();
        live.insert(
            ("op".to_owned(), "h2".to_owned(), ph::BACKUP_UPLOAD.to_owned()),
            Live {
                job_id: "j".into(),
                progress: pb::JobProgress {
                    transfer: Some(pb::TransferStats {
                        files_total: 4,
                        bytes_total: 400,
                        bytes_transferred: 100,
                        files_transferred: 1,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                since: Instant::now(),
                first_bytes: 0,
            },
        );
        let v = view(&op, &[done, running], &live);
        assert_eq!(v["totals"]["bytes_total"], 700);
        assert_eq!(v["totals"]["bytes_done"], 400);
        assert_eq!(v["datacenters"][0]["name"], "dc1");
        assert_eq!(v["datacenters"][1]["bytes_done"], 100);
        assert_eq!(v["nodes"][1]["current_phase"], ph::BACKUP_UPLOAD);
        assert_eq!(v["current_step"], ph::BACKUP_UPLOAD);
    }
}
