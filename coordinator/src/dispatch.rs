//! Dispatching one phase of an operation to one node's agent, and re-attaching to it.
//!
//! The rule that makes leader changes safe: **"phase X started on node N as job J" is committed
//! through raft before the agent is called.** A leader that dies after the commit but before (or
//! during) the call leaves a record with the job id; the next leader re-attaches by starting the
//! same id again, which the agent answers with the existing job (or starts it, if the first call
//! never arrived). Two leaders can therefore never run the same phase attempt twice under two ids.
//!
//! The executor of cluster operations ([`crate::executor`]) drives phases through these two calls.

use cassette_proto::v1 as pb;
use serde_json::Value;

use crate::Retry;
use crate::agents::{AgentClient, AgentError, JobRequest};
use crate::model::{Command, PhaseRecord, RunState, now_ms};
use crate::raft::{RaftError, RaftHandle};

/// Why a dispatch failed.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The start could not be recorded (nothing was sent to the agent).
    #[error("record that phase {phase} of {operation} starts on {host}: {source}")]
    Record {
        /// Operation.
        operation: String,
        /// Node.
        host: String,
        /// Phase.
        phase: String,
        /// Why.
        #[source]
        source: RaftError,
    },
    /// The agent did not accept the job (the start is recorded: re-attach later).
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The phase has no recorded job to re-attach to.
    #[error("phase {phase} of {operation} on {host} was never dispatched")]
    NotDispatched {
        /// Operation.
        operation: String,
        /// Node.
        host: String,
        /// Phase.
        phase: String,
    },
}

impl DispatchError {
    /// Whether a retry makes sense.
    pub fn retry(&self) -> Retry {
        match self {
            Self::Record { source, .. } => source.retry(),
            Self::Agent(e) => e.retry(),
            Self::NotDispatched { .. } => Retry::Never,
        }
    }
}

/// The job id of an attempt: unique per operation, node, phase and attempt, stable across leaders.
pub fn job_id(operation: &str, host_id: &str, phase: &str, attempt: u32) -> String {
    let host: String = host_id.chars().filter(|c| c.is_ascii_alphanumeric()).take(12).collect();
    let phase: String = phase.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' }).collect();
    // Agents accept ids of up to 128 characters.
    let operation: String = operation.chars().take(64).collect();
    let phase: String = phase.chars().take(40).collect();
    format!("{operation}.{host}.{phase}.{attempt}")
}

/// Starts a new attempt of `phase` on the agent at `agent`: commits the start with its job id,
/// then calls the agent.
pub async fn dispatch(
    raft: &RaftHandle,
    agents: &dyn AgentClient,
    phase: &PhaseRecord,
    agent: &str,
    params: Value,
) -> Result<pb::JobStatus, DispatchError> {
    let job = job_id(&phase.operation_id, &phase.host_id, &phase.phase, phase.attempts + 1);
    raft.propose(&Command::PhaseStarted {
        operation_id: phase.operation_id.clone(),
        host_id: phase.host_id.clone(),
        phase: phase.phase.clone(),
        job_id: job.clone(),
        at_ms: now_ms(),
    })
    .await
    .map_err(|source| DispatchError::Record {
        operation: phase.operation_id.clone(),
        host: phase.host_id.clone(),
        phase: phase.phase.clone(),
        source,
    })?;
    let req = JobRequest {
        job_id: job,
        phase: phase.phase.clone(),
        params,
        operation_id: phase.operation_id.clone(),
        not_before_ms: 0,
    };
    Ok(agents.start_job(agent, &req).await?)
}

/// Re-attaches to the recorded job of a running phase (after a leader change): starting the same
/// id again returns the agent's job, or starts it if the first call never arrived.
/// `not_before_ms`: see [`JobRequest::not_before_ms`].
pub async fn reattach(
    agents: &dyn AgentClient,
    phase: &PhaseRecord,
    agent: &str,
    params: Value,
    not_before_ms: u64,
) -> Result<pb::JobStatus, DispatchError> {
    if phase.state != RunState::Running || phase.job_id.is_empty() {
        return Err(DispatchError::NotDispatched {
            operation: phase.operation_id.clone(),
            host: phase.host_id.clone(),
            phase: phase.phase.clone(),
        });
    }
    let req = JobRequest {
        job_id: phase.job_id.clone(),
        phase: phase.phase.clone(),
        params,
        operation_id: phase.operation_id.clone(),
        not_before_ms,
    };
    Ok(agents.start_job(agent, &req).await?)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;
    use crate::agents::{AgentErrorKind, JobStream};
    use crate::kv::Kv;
    use crate::model::OperationRecord;
    use crate::raft::{Bootstrap, RaftConfig, RaftNode, Transport};

    struct NoNetwork;
    impl Transport for NoNetwork {
        fn send(&self, _msgs: Vec<::raft::prelude::Message>) {}
        fn update_peers(&self, _peers: &BTreeMap<u64, String>) {}
    }

    /// An agent that checks, when a job starts, that the replicated state already records it.
    struct CheckingAgent {
        raft: RaftHandle,
        jobs: Mutex<BTreeMap<String, JobRequest>>,
        starts: Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl AgentClient for CheckingAgent {
        async fn describe(&self, _agent: &str) -> Result<pb::NodeIdentity, AgentError> {
            Ok(pb::NodeIdentity::default())
        }
        async fn ring(&self, _agent: &str) -> Result<pb::RingResponse, AgentError> {
            Ok(pb::RingResponse::default())
        }
        async fn start_job(&self, agent: &str, job: &JobRequest) -> Result<pb::JobStatus, AgentError> {
            let p = &self.raft.state().phases(&job.operation_id).unwrap()[0];
            assert_eq!(p.job_id, job.job_id, "the job was not recorded before dispatch");
            assert_eq!(p.state, RunState::Running);
            self.starts.lock().unwrap().push(job.job_id.clone());
            let mut jobs = self.jobs.lock().unwrap();
            if let Some(existing) = jobs.get(&job.job_id)
                && existing != job
            {
                return Err(AgentError {
                    agent: agent.into(),
                    op: "start a job",
                    kind: AgentErrorKind::Conflict,
                    message: "other parameters".into(),
                });
            }
            jobs.insert(job.job_id.clone(), job.clone());
            Ok(pb::JobStatus { job_id: job.job_id.clone(), state: pb::JobState::Running as i32, ..Default::default() })
        }
        async fn job(&self, _agent: &str, job_id: &str) -> Result<pb::JobStatus, AgentError> {
            Ok(pb::JobStatus { job_id: job_id.into(), ..Default::default() })
        }
        async fn watch_job(&self, _agent: &str, _job_id: &str) -> Result<JobStream, AgentError> {
            Ok(Box::pin(futures::stream::empty()))
        }
        async fn cancel_job(&self, _agent: &str, job_id: &str) -> Result<pb::JobStatus, AgentError> {
            Ok(pb::JobStatus { job_id: job_id.into(), ..Default::default() })
        }
    }

    #[tokio::test]
    async fn the_start_is_committed_before_the_agent_is_called_and_reattach_reuses_the_id() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let config = RaftConfig { tick: Duration::from_millis(5), ..RaftConfig::default() };
        let (raft, join) = RaftNode::start(
            1,
            Kv::open(dir.path()).unwrap(),
            Bootstrap::NewGroup([(1, "local:1".to_owned())].into()),
            config,
            Arc::new(NoNetwork),
            (tx, rx),
            Duration::from_secs(5),
        )
        .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !raft.status().is_leader() {
            assert!(std::time::Instant::now() < deadline, "no leader");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let phase = PhaseRecord {
            operation_id: "op1".into(),
            host_id: "1b1c2ce9-e5ab-4b1e-a2cf-0f5cd9f8b1c3".into(),
            phase: "snapshot".into(),
            job_id: String::new(),
            state: RunState::Pending,
            attempts: 0,
            started_at_ms: 0,
            finished_at_ms: 0,
            error: String::new(),
            summary: Value::Null,
        };
        let op = OperationRecord {
            id: "op1".into(),
            cluster: "prod".into(),
            kind: "backup".into(),
            state: RunState::Running,
            spec: Value::Null,
            created_at_ms: 1,
            finished_at_ms: 0,
            error: String::new(),
            request_id: String::new(),
        };
        raft.propose(&Command::CreateOperation { operation: op, phases: vec![phase.clone()] }).await.unwrap();
        let agent = CheckingAgent { raft: raft.clone(), jobs: Mutex::new(BTreeMap::new()), starts: Mutex::new(vec![]) };
        let params = serde_json::json!({"tag": "t1"});
        let st = dispatch(&raft, &agent, &phase, "a:1", params.clone()).await.unwrap();
        assert_eq!(st.job_id, "op1.1b1c2ce9e5ab.snapshot.1");
        // A new leader finds the record and re-attaches under the same id.
        let recorded = raft.state().phases("op1").unwrap().remove(0);
        assert_eq!((recorded.attempts, recorded.state), (1, RunState::Running));
        let again = reattach(&agent, &recorded, "a:1", params.clone(), 0).await.unwrap();
        assert_eq!(again.job_id, st.job_id);
        assert_eq!(agent.jobs.lock().unwrap().len(), 1, "re-attaching must not create a second job");
        // A new attempt gets a new id.
        let st2 = dispatch(&raft, &agent, &recorded, "a:1", params).await.unwrap();
        assert_eq!(st2.job_id, "op1.1b1c2ce9e5ab.snapshot.2");
        assert!(matches!(
            reattach(&agent, &PhaseRecord { state: RunState::Pending, ..recorded }, "a:1", Value::Null, 0).await,
            Err(DispatchError::NotDispatched { .. })
        ));
        raft.stop();
        join.join().unwrap();
    }
}
