//! Talking to agents: the [`AgentClient`] seam and its gRPC implementation.
//!
//! Phases run on agents as jobs with ids the coordinator chooses. Starting a job id again is
//! idempotent on the agent, so a new leader re-attaches to a running job by starting (or
//! polling, or watching) the same id it finds recorded in the replicated state.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use cassette_common::tls::{self, ChannelTimeouts, Revocations, Role, TlsMode};
use cassette_proto::v1 as pb;
use futures::{Stream, StreamExt};
use tonic::Code;
use tonic::transport::Channel;

use crate::Retry;

/// A phase to run on an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRequest {
    /// The idempotency key.
    pub job_id: String,
    /// The phase.
    pub phase: String,
    /// Its parameters (JSON).
    pub params: serde_json::Value,
    /// The operation.
    pub operation_id: String,
    /// Agent wall-clock time before which the phase must not begin (0: at once); not part of
    /// the agent's idempotency check.
    pub not_before_ms: u64,
}

/// Why a call to an agent failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("agent {agent}: {op}: {message}")]
pub struct AgentError {
    /// The agent's address.
    pub agent: String,
    /// What was attempted.
    pub op: &'static str,
    /// What kind of failure.
    pub kind: AgentErrorKind,
    /// What happened, with what to do.
    pub message: String,
}

/// Kinds of agent failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentErrorKind {
    /// No connection, or it broke, or no answer in time.
    Unreachable,
    /// TLS or role refused (by either end).
    Denied,
    /// No such job.
    NotFound,
    /// The job id is taken by another job.
    Conflict,
    /// The request is invalid (unknown phase, bad parameters).
    Invalid,
    /// The node or agent failed to do it.
    Failed,
}

impl AgentError {
    /// Whether a retry makes sense.
    pub fn retry(&self) -> Retry {
        match self.kind {
            AgentErrorKind::Unreachable | AgentErrorKind::Failed => Retry::Backoff,
            _ => Retry::Never,
        }
    }

    fn from_status(agent: &str, op: &'static str, s: tonic::Status) -> Self {
        let tls = tls::explain_transport_error(&s, tls::Side::Client);
        let kind = match (s.code(), &tls) {
            (_, Some(_)) => AgentErrorKind::Denied,
            (Code::PermissionDenied | Code::Unauthenticated, _) => AgentErrorKind::Denied,
            (Code::NotFound, _) => AgentErrorKind::NotFound,
            (Code::AlreadyExists, _) => AgentErrorKind::Conflict,
            (Code::InvalidArgument, _) => AgentErrorKind::Invalid,
            (Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown, _) => {
                AgentErrorKind::Unreachable
            }
            _ => AgentErrorKind::Failed,
        };
        let message = match tls {
            Some(t) => t,
            None if s.code() == Code::DeadlineExceeded => format!("no answer in time ({})", s.message()),
            None if kind == AgentErrorKind::Unreachable => {
                let detail = if s.message().contains("transport error") || s.message().is_empty() {
                    source_chain(&s)
                } else {
                    s.message().to_owned()
                };
                format!("cannot connect ({detail}): is `cassette-agent serve` running there?")
            }
            None => s.message().to_owned(),
        };
        Self { agent: agent.to_owned(), op, kind, message }
    }
}

fn source_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !parts.contains(&s) {
            parts.push(s);
        }
        cur = c.source();
    }
    if parts.is_empty() { e.to_string() } else { parts.join(": ") }
}

/// A stream of job statuses.
pub type JobStream = Pin<Box<dyn Stream<Item = Result<pb::JobStatus, AgentError>> + Send>>;

/// Calls agents by address.
///
/// Contract: `start_job` is idempotent per job id (the agent returns the existing job when the
/// id, phase and parameters match, and fails with [`AgentErrorKind::Conflict`] otherwise), so a
/// caller that does not know whether a start arrived simply starts again. Every call is bounded
/// in time.
#[async_trait::async_trait]
pub trait AgentClient: Send + Sync {
    /// Identity and health of the agent's node.
    async fn describe(&self, agent: &str) -> Result<pb::NodeIdentity, AgentError>;
    /// The ring as the agent's node sees it.
    async fn ring(&self, agent: &str) -> Result<pb::RingResponse, AgentError>;
    /// Starts (or re-attaches to) a job.
    async fn start_job(&self, agent: &str, job: &JobRequest) -> Result<pb::JobStatus, AgentError>;
    /// A job's status.
    async fn job(&self, agent: &str, job_id: &str) -> Result<pb::JobStatus, AgentError>;
    /// A job's status at every change, until it ends.
    async fn watch_job(&self, agent: &str, job_id: &str) -> Result<JobStream, AgentError>;
    /// Asks a job to stop.
    async fn cancel_job(&self, agent: &str, job_id: &str) -> Result<pb::JobStatus, AgentError>;
    /// Gives the agent the certificate deny list (it keeps the newest version it was given);
    /// returns the version the agent holds. Idempotent.
    async fn set_revocations(&self, agent: &str, list: &Revocations) -> Result<u64, AgentError> {
        let _ = list;
        Err(AgentError {
            agent: agent.to_owned(),
            op: "set the revocation list",
            kind: AgentErrorKind::Invalid,
            message: "this agent client cannot push revocation lists".into(),
        })
    }
}

/// The gRPC client: one cached channel per agent address.
pub struct GrpcAgents {
    tls: TlsMode,
    timeouts: ChannelTimeouts,
    channels: Mutex<HashMap<String, Channel>>,
}

impl std::fmt::Debug for GrpcAgents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcAgents").field("timeouts", &self.timeouts).finish()
    }
}

impl GrpcAgents {
    /// Clients using `tls` (the coordinator's certificate; agents must present agent certificates).
    pub fn new(tls: TlsMode, timeouts: ChannelTimeouts) -> Self {
        Self { tls, timeouts, channels: Mutex::new(HashMap::new()) }
    }

    fn client(&self, agent: &str, op: &'static str) -> Result<pb::agent_client::AgentClient<Channel>, AgentError> {
        let mut channels = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let ch = match channels.get(agent) {
            Some(c) => c.clone(),
            None => {
                let c = tls::channel(agent, &self.tls, Role::Agent, self.timeouts).map_err(|e| AgentError {
                    agent: agent.to_owned(),
                    op,
                    kind: AgentErrorKind::Invalid,
                    message: e.to_string(),
                })?;
                channels.insert(agent.to_owned(), c.clone());
                c
            }
        };
        Ok(pb::agent_client::AgentClient::new(ch))
    }
}

#[async_trait::async_trait]
impl AgentClient for GrpcAgents {
    async fn describe(&self, agent: &str) -> Result<pb::NodeIdentity, AgentError> {
        let op = "describe the node";
        let mut c = self.client(agent, op)?;
        c.describe(pb::DescribeRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|s| AgentError::from_status(agent, op, s))
    }

    async fn ring(&self, agent: &str) -> Result<pb::RingResponse, AgentError> {
        let op = "read the ring";
        let mut c = self.client(agent, op)?;
        c.ring(pb::RingRequest {}).await.map(|r| r.into_inner()).map_err(|s| AgentError::from_status(agent, op, s))
    }

    async fn start_job(&self, agent: &str, job: &JobRequest) -> Result<pb::JobStatus, AgentError> {
        let op = "start a job";
        let mut c = self.client(agent, op)?;
        let req = pb::StartJobRequest {
            job_id: job.job_id.clone(),
            phase: job.phase.clone(),
            params_json: job.params.to_string(),
            operation_id: job.operation_id.clone(),
            not_before_ms: job.not_before_ms,
        };
        c.start_job(req).await.map(|r| r.into_inner()).map_err(|s| AgentError::from_status(agent, op, s))
    }

    async fn job(&self, agent: &str, job_id: &str) -> Result<pb::JobStatus, AgentError> {
        let op = "read a job";
        let mut c = self.client(agent, op)?;
        c.get_job(pb::JobRequest { job_id: job_id.to_owned() })
            .await
            .map(|r| r.into_inner())
            .map_err(|s| AgentError::from_status(agent, op, s))
    }

    async fn watch_job(&self, agent: &str, job_id: &str) -> Result<JobStream, AgentError> {
        let op = "watch a job";
        let mut c = self.client(agent, op)?;
        let stream = c
            .watch_job(pb::JobRequest { job_id: job_id.to_owned() })
            .await
            .map_err(|s| AgentError::from_status(agent, op, s))?
            .into_inner();
        let agent = agent.to_owned();
        Ok(Box::pin(stream.map(move |r| r.map_err(|s| AgentError::from_status(&agent, op, s)))))
    }

    async fn set_revocations(&self, agent: &str, list: &Revocations) -> Result<u64, AgentError> {
        let op = "set the revocation list";
        let mut c = self.client(agent, op)?;
        let req = pb::RevocationList {
            version: list.version,
            serials: list.serials.iter().cloned().collect(),
            names: list.names.iter().cloned().collect(),
        };
        c.set_revocations(req).await.map(|r| r.into_inner().version).map_err(|s| AgentError::from_status(agent, op, s))
    }

    async fn cancel_job(&self, agent: &str, job_id: &str) -> Result<pb::JobStatus, AgentError> {
        let op = "cancel a job";
        let mut c = self.client(agent, op)?;
        c.cancel_job(pb::JobRequest { job_id: job_id.to_owned() })
            .await
            .map(|r| r.into_inner())
            .map_err(|s| AgentError::from_status(agent, op, s))
    }
}

/// Default timeouts for agent calls.
pub fn default_timeouts() -> ChannelTimeouts {
    ChannelTimeouts { connect: Duration::from_secs(3), request: Some(Duration::from_secs(20)) }
}
