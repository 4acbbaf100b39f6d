//! Running named phases on every node of a cluster, with a barrier between phases: the
//! executor of `RunPhases` operations (and of the coordinator benchmark).
//!
//! An operation of kind [`KIND`] records its phase names and parameters in its spec and one
//! [`PhaseRecord`] per node and phase, all pending. The leader's executor ([`worker`]) finds
//! running operations and drives each: for phase k, every node's start and job id are committed
//! in one raft entry ([`Command::PhasesStarted`]), then every agent is called at once with the
//! recorded id (as [`dispatch::reattach`] does; a retry after a failed call is a new attempt
//! through [`dispatch::dispatch`]), the
//! executor follows each job until it ends and records the outcome; phase k+1 starts when every
//! node has finished phase k. A failed phase on any node fails the operation after the barrier.
//!
//! A new leader resumes: records still pending are dispatched, running ones are re-attached by
//! their recorded job id (the agent answers with the existing job), ended ones are left alone.
//! The cluster backup executor can reuse this by registering its phases under their real names.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cassette_common::worker::{self, WorkerHandle};
use cassette_proto::v1 as pb;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::Retry;
use crate::agents::AgentClient;
use crate::dispatch;
use crate::model::{Command, OperationRecord, PhaseRecord, RunState, now_ms};
use crate::raft::{RaftError, RaftHandle};

/// The operation kind the executor drives (unless the request names another kind with the
/// same spec layout; see [`is_phases_spec`]).
pub const KIND: &str = "phases";

/// What a phases operation records in its spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhasesSpec {
    /// Phase names, in order.
    pub phases: Vec<String>,
    /// Parameters of every phase.
    pub params: serde_json::Value,
    /// Marks the spec as the executor's.
    pub executor: String,
}

const EXECUTOR: &str = "phases/v1";

/// Whether an operation is one the executor drives.
pub fn is_phases_spec(op: &OperationRecord) -> bool {
    op.spec.get("executor").and_then(|v| v.as_str()) == Some(EXECUTOR)
}

/// Why an operation could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// Bad request.
    #[error("{0}")]
    Invalid(String),
    /// No such cluster.
    #[error("no cluster named {0} is registered (see `cassette cluster list`)")]
    NoCluster(String),
    /// The store.
    #[error("read the replicated state: {0}")]
    Store(#[from] crate::kv::KvError),
    /// Raft.
    #[error(transparent)]
    Raft(#[from] RaftError),
}

/// Records a new operation running `phases` on every node of `cluster`; returns its id and the
/// number of nodes. The executor picks it up.
pub async fn create(
    raft: &RaftHandle,
    cluster: &str,
    kind: &str,
    phases: &[String],
    params: serde_json::Value,
) -> Result<(String, usize), CreateError> {
    if phases.is_empty() {
        return Err(CreateError::Invalid("name at least one phase".into()));
    }
    if let Some(p) = phases.iter().find(|p| !crate::model::valid_name(p)) {
        return Err(CreateError::Invalid(format!("invalid phase name {p:?}: use letters, digits, '.', '_' and '-'")));
    }
    let mut seen = HashSet::new();
    if let Some(p) = phases.iter().find(|p| !seen.insert(p.as_str())) {
        return Err(CreateError::Invalid(format!("phase {p} is named twice")));
    }
    if !params.is_object() {
        return Err(CreateError::Invalid("the parameters must be a JSON object".into()));
    }
    let kind = if kind.is_empty() { KIND } else { kind };
    if !crate::model::valid_name(kind) {
        return Err(CreateError::Invalid(format!("invalid operation kind {kind:?}")));
    }
    let sm = raft.state();
    sm.cluster(cluster)?.ok_or_else(|| CreateError::NoCluster(cluster.to_owned()))?;
    let nodes = sm.nodes(cluster)?;
    if nodes.is_empty() {
        return Err(CreateError::Invalid(format!("cluster {cluster} has no nodes")));
    }
    let now = now_ms();
    let id = format!("{kind}-{now}-{:06x}", rand::random::<u32>() >> 8);
    let spec = PhasesSpec { phases: phases.to_vec(), params, executor: EXECUTOR.into() };
    let operation = OperationRecord {
        id: id.clone(),
        cluster: cluster.to_owned(),
        kind: kind.to_owned(),
        state: RunState::Running,
        spec: serde_json::to_value(&spec).map_err(|e| CreateError::Invalid(e.to_string()))?,
        created_at_ms: now,
        finished_at_ms: 0,
        error: String::new(),
    };
    let records = phases
        .iter()
        .flat_map(|p| {
            let id = &id;
            nodes.iter().map(move |n| PhaseRecord {
                operation_id: id.clone(),
                host_id: n.host_id.clone(),
                phase: p.clone(),
                job_id: String::new(),
                state: RunState::Pending,
                attempts: 0,
                started_at_ms: 0,
                finished_at_ms: 0,
                error: String::new(),
                summary: serde_json::Value::Null,
            })
        })
        .collect();
    raft.propose(&Command::CreateOperation { operation, phases: records }).await?;
    Ok((id, nodes.len()))
}

/// An operation's progress, per phase.
pub fn status(raft: &RaftHandle, id: &str) -> Result<Option<pb::OperationStatusResponse>, crate::kv::KvError> {
    let sm = raft.state();
    let Some(op) = sm.operation(id)? else { return Ok(None) };
    let names: Vec<String> =
        serde_json::from_value::<PhasesSpec>(op.spec.clone()).map(|s| s.phases).unwrap_or_default();
    let mut phases: Vec<pb::PhaseCounts> =
        names.iter().map(|n| pb::PhaseCounts { phase: n.clone(), ..Default::default() }).collect();
    for p in sm.phases(id)? {
        let i = match phases.iter().position(|c| c.phase == p.phase) {
            Some(i) => i,
            None => {
                phases.push(pb::PhaseCounts { phase: p.phase.clone(), ..Default::default() });
                phases.len() - 1
            }
        };
        let c = &mut phases[i];
        match p.state {
            RunState::Pending => c.pending += 1,
            RunState::Running => c.running += 1,
            RunState::Succeeded => c.succeeded += 1,
            RunState::Failed => c.failed += 1,
            RunState::Cancelled => c.cancelled += 1,
        }
        if p.started_at_ms > 0 {
            c.first_started_at_ms =
                if c.first_started_at_ms == 0 { p.started_at_ms } else { c.first_started_at_ms.min(p.started_at_ms) };
            c.last_started_at_ms = c.last_started_at_ms.max(p.started_at_ms);
        }
        c.last_finished_at_ms = c.last_finished_at_ms.max(p.finished_at_ms);
    }
    Ok(Some(pb::OperationStatusResponse {
        operation_id: op.id,
        kind: op.kind,
        state: serde_json::to_value(op.state).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
        error: op.error,
        phases,
        created_at_ms: op.created_at_ms,
        finished_at_ms: op.finished_at_ms,
    }))
}

/// The executor: while this replica leads, drives every running phases operation.
pub fn worker(
    raft: RaftHandle,
    agents: Arc<dyn AgentClient>,
    interval: Duration,
    shutdown: CancellationToken,
) -> WorkerHandle {
    let driving: Arc<Mutex<HashSet<String>>> = Arc::default();
    let stop = shutdown.clone();
    worker::spawn_periodic("phases-executor", interval, shutdown, move |state| {
        let (raft, agents, driving, stop) = (raft.clone(), Arc::clone(&agents), Arc::clone(&driving), stop.clone());
        async move {
            if !raft.status().is_leader() {
                state.set("idle (not the leader)");
                return;
            }
            let Ok(ops) = raft.state().operations() else { return };
            for op in ops.into_iter().filter(|o| o.state == RunState::Running && is_phases_spec(o)) {
                if !driving.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(op.id.clone()) {
                    continue;
                }
                state.set(format!("driving {}", op.id));
                let (raft, agents, driving, stop) =
                    (raft.clone(), Arc::clone(&agents), Arc::clone(&driving), stop.clone());
                tokio::spawn(async move {
                    let id = op.id.clone();
                    tokio::select! {
                        r = drive(&raft, agents, op) => {
                            if let Err(e) = r {
                                tracing::info!(operation = %id, error = %e, "stopped driving the operation (a leader resumes it)");
                            }
                        }
                        _ = stop.cancelled() => {}
                    }
                    driving.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&id);
                });
            }
        }
    })
}

/// Drives one operation to its end; an error means this replica cannot go on (not the leader
/// any more, state unreadable): the next leader resumes.
pub async fn drive(raft: &RaftHandle, agents: Arc<dyn AgentClient>, op: OperationRecord) -> Result<(), RaftError> {
    let spec: PhasesSpec = match serde_json::from_value(op.spec.clone()) {
        Ok(s) => s,
        Err(e) => return finish(raft, &op.id, RunState::Failed, format!("unreadable spec: {e}")).await,
    };
    let sm = raft.state();
    let read_err = |e: crate::kv::KvError| RaftError::Stopped(format!("read the replicated state: {e}"));
    let nodes = sm.nodes(&op.cluster).map_err(read_err)?;
    tracing::info!(operation = %op.id, nodes = nodes.len(), phases = ?spec.phases, "driving phases");
    for phase in &spec.phases {
        let mut records: Vec<PhaseRecord> =
            sm.phases(&op.id).map_err(read_err)?.into_iter().filter(|p| &p.phase == phase).collect();
        // Commit every node's start (with its job id) in one entry, then call every agent at
        // once: the agents are re-attached to the recorded ids, as a new leader would.
        let starts: Vec<(String, String)> = records
            .iter()
            .filter(|p| p.state == RunState::Pending)
            .map(|p| (p.host_id.clone(), dispatch::job_id(&p.operation_id, &p.host_id, &p.phase, p.attempts + 1)))
            .collect();
        if !starts.is_empty() {
            raft.propose(&Command::PhasesStarted {
                operation_id: op.id.clone(),
                phase: phase.clone(),
                starts,
                at_ms: now_ms(),
            })
            .await?;
            records = sm.phases(&op.id).map_err(read_err)?.into_iter().filter(|p| &p.phase == phase).collect();
        }
        let runs = records.into_iter().map(|p| {
            let agent = nodes.iter().find(|n| n.host_id == p.host_id).map(|n| n.agent_address.clone());
            let agents = Arc::clone(&agents);
            let params = spec.params.clone();
            async move { run_one(raft, agents.as_ref(), p, agent, params).await }
        });
        let outcomes: Vec<Result<(RunState, String), RaftError>> = futures::future::join_all(runs).await;
        let mut failures = Vec::new();
        for o in outcomes {
            let (state, error) = o?;
            if state != RunState::Succeeded {
                failures.push(error);
            }
        }
        if !failures.is_empty() {
            let msg = format!(
                "phase {phase} failed on {} node(s); first: {}",
                failures.len(),
                failures.first().cloned().unwrap_or_default()
            );
            return finish(raft, &op.id, RunState::Failed, msg).await;
        }
    }
    finish(raft, &op.id, RunState::Succeeded, String::new()).await
}

async fn finish(raft: &RaftHandle, id: &str, state: RunState, error: String) -> Result<(), RaftError> {
    if !error.is_empty() {
        tracing::warn!(operation = %id, %error, "operation failed");
    }
    raft.propose(&Command::FinishOperation { operation_id: id.to_owned(), state, error, at_ms: now_ms() }).await?;
    Ok(())
}

/// Runs one node's phase to its end (dispatching or re-attaching) and records the outcome.
async fn run_one(
    raft: &RaftHandle,
    agents: &dyn AgentClient,
    p: PhaseRecord,
    agent: Option<String>,
    params: serde_json::Value,
) -> Result<(RunState, String), RaftError> {
    if p.state.is_terminal() {
        return Ok((p.state, p.error));
    }
    let record = |state: RunState, error: String, summary: serde_json::Value| {
        let cmd = Command::PhaseFinished {
            operation_id: p.operation_id.clone(),
            host_id: p.host_id.clone(),
            phase: p.phase.clone(),
            state,
            error: error.clone(),
            summary,
            at_ms: now_ms(),
        };
        async move {
            raft.propose(&cmd).await?;
            Ok((state, error))
        }
    };
    let Some(agent) = agent else {
        return record(
            RunState::Failed,
            format!("node {} is no longer registered", p.host_id),
            serde_json::Value::Null,
        )
        .await;
    };
    // Start (or re-attach), retrying an unreachable agent for a while.
    let mut rec = p.clone();
    let mut attempt = 0u32;
    let started = loop {
        let r = if rec.state == RunState::Running && !rec.job_id.is_empty() {
            dispatch::reattach(agents, &rec, &agent, params.clone()).await
        } else {
            dispatch::dispatch(raft, agents, &rec, &agent, params.clone()).await
        };
        match r {
            Ok(st) => break st,
            Err(dispatch::DispatchError::Record { source, .. }) => return Err(source),
            Err(e) if e.retry() != Retry::Never && attempt < 8 => {
                attempt += 1;
                tracing::debug!(agent = %agent, error = %e, attempt, "retrying the start of a phase");
                if let Some(fresh) = raft
                    .state()
                    .phases(&p.operation_id)
                    .ok()
                    .and_then(|v| v.into_iter().find(|x| x.host_id == p.host_id && x.phase == p.phase))
                {
                    rec = fresh;
                }
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
            }
            Err(e) => return record(RunState::Failed, e.to_string(), serde_json::Value::Null).await,
        }
    };
    let job_id = started.job_id.clone();
    let end = follow(agents, &agent, &job_id, started).await;
    let (state, error) = match pb::JobState::try_from(end.state).unwrap_or(pb::JobState::Unspecified) {
        pb::JobState::Succeeded => (RunState::Succeeded, String::new()),
        pb::JobState::Cancelled => (RunState::Cancelled, "cancelled on the agent".into()),
        _ => (RunState::Failed, end.error.map(|e| e.message).unwrap_or_else(|| "the job failed".into())),
    };
    let summary = serde_json::from_str(&end.result_json).unwrap_or(serde_json::Value::Null);
    record(state, error, summary).await
}

fn terminal(s: &pb::JobStatus) -> bool {
    matches!(
        pb::JobState::try_from(s.state).unwrap_or(pb::JobState::Unspecified),
        pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled
    )
}

/// Follows a job until it ends: its watch stream, falling back to polling when the stream breaks.
async fn follow(agents: &dyn AgentClient, agent: &str, job_id: &str, mut last: pb::JobStatus) -> pb::JobStatus {
    if terminal(&last) {
        return last;
    }
    if let Ok(mut stream) = agents.watch_job(agent, job_id).await {
        while let Some(Ok(s)) = stream.next().await {
            last = s;
            if terminal(&last) {
                return last;
            }
        }
    }
    let mut wait = Duration::from_millis(100);
    loop {
        tokio::time::sleep(wait).await;
        if let Ok(s) = agents.job(agent, job_id).await {
            last = s;
            if terminal(&last) {
                return last;
            }
        }
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}
