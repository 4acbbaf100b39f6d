//! One coordinator replica: settings and `run(listener, config, tls, shutdown)`.
//!
//! The caller binds the listener (tests bind port 0). A replica serves the raft transport and the
//! operator API on that one port, runs its raft loop on a thread, and, while it is the leader,
//! a health-check worker over the agents of every registered cluster.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cassette_common::tls::{self, Role, TlsMode};
use cassette_common::worker::{self, WorkerHandle};
use cassette_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;

use crate::agents::{AgentClient, GrpcAgents};
use crate::executor::{Executor, ExecutorConfig};
use crate::kv::Kv;
use crate::model::Command;
use crate::raft::{Bootstrap, Faults, GrpcTransport, RaftConfig, RaftHandle, RaftNode, StartError};
use crate::registry;
use crate::service::{OperatorService, RaftService, ReplicaContext};

/// Settings of a replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicaConfig {
    /// This replica's raft id (unique in the group, never reused).
    pub id: u64,
    /// The address other replicas and the CLI reach this one at (`host:port`).
    pub advertise: String,
    /// Where the replicated state lives.
    pub state_dir: PathBuf,
    /// Raft timing and compaction.
    pub raft: RaftConfig,
    /// How often the leader checks every agent.
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
    /// Time allowed for one agent to answer a health probe. The agent asks its node through
    /// nodetool, a JVM started per call: about 2 s each on a small real node (measured on
    /// Cassandra 5.0.9, 2 cores), more under load, so the default leaves room.
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Duration,
    /// Time allowed for a write or read through raft.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How often certificate files are checked for changes.
    #[serde(with = "humantime_serde")]
    pub tls_reload_interval: Duration,
    /// Accept fault-injection requests (tests only).
    pub fault_injection: bool,
    /// How cluster operations are driven (timeouts, retries).
    pub operations: ExecutorConfig,
    /// How often the leader looks for due backup schedules.
    #[serde(with = "humantime_serde")]
    pub schedule_interval: Duration,
    /// Sizes and concurrency the gRPC server accepts.
    pub limits: ReplicaLimits,
    /// Certificates that expire within this long are warned about: this replica's own in its
    /// log (at start, then daily), agents' in `cassette cluster status`.
    #[serde(with = "humantime_serde")]
    pub cert_expiry_warning: Duration,
}

/// What a replica's gRPC server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicaLimits {
    /// Largest operator API request, in bytes.
    pub request_bytes: usize,
    /// Largest raft batch, in bytes. A snapshot travels in one message, so this bounds the
    /// replicated state a new or lagging replica can receive: raise it (on every replica) if a
    /// replica logs that its raft messages are refused as too large.
    pub raft_message_bytes: usize,
    /// Requests (HTTP/2 streams) in flight on one connection.
    pub concurrent_streams: u32,
}

impl Default for ReplicaLimits {
    fn default() -> Self {
        let d = tls::ServerLimits::default();
        Self { request_bytes: d.request_bytes, raft_message_bytes: 256 << 20, concurrent_streams: d.concurrent_streams }
    }
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        Self {
            id: 1,
            advertise: String::new(),
            state_dir: PathBuf::new(),
            raft: RaftConfig::default(),
            health_interval: Duration::from_secs(30),
            probe_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            tls_reload_interval: Duration::from_secs(10),
            fault_injection: false,
            operations: ExecutorConfig::default(),
            schedule_interval: Duration::from_secs(5),
            limits: ReplicaLimits::default(),
            cert_expiry_warning: tls::DEFAULT_EXPIRY_WARNING,
        }
    }
}

impl ReplicaConfig {
    /// Every problem, one line each.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut p = self.raft.problems();
        p.extend(self.operations.problems());
        if self.id == 0 {
            p.push("id must be at least 1".into());
        }
        if tls::host_of(&self.advertise).is_none() {
            p.push(format!("advertise address {:?} is not host:port", self.advertise));
        }
        if self.state_dir.as_os_str().is_empty() {
            p.push("state_dir must be set".into());
        }
        for (name, d) in [("probe_timeout", self.probe_timeout), ("request_timeout", self.request_timeout)] {
            if d < Duration::from_millis(100) {
                p.push(format!("{name} must be at least 100ms"));
            }
        }
        if self.schedule_interval < Duration::from_millis(100) {
            p.push("schedule_interval must be at least 100ms".into());
        }
        p.extend(
            tls::ServerLimits {
                request_bytes: self.limits.request_bytes,
                concurrent_streams: self.limits.concurrent_streams,
            }
            .problems("limits."),
        );
        // A full append (raft.max_size_per_msg) plus the batch's framing must fit.
        if (self.limits.raft_message_bytes as u64) < self.raft.max_size_per_msg.saturating_add(64 << 10) {
            p.push(format!(
                "limits.raft_message_bytes ({}) must exceed raft.max_size_per_msg ({}) by at least 64 KiB",
                self.limits.raft_message_bytes, self.raft.max_size_per_msg
            ));
        }
        if self.health_interval < Duration::from_secs(1) {
            p.push("health_interval must be at least 1s".into());
        }
        if p.is_empty() { Ok(()) } else { Err(p) }
    }
}

/// Why a replica stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Invalid settings.
    #[error("invalid settings: {}", .0.join("; "))]
    Config(Vec<String>),
    /// The state could not be opened or the loop not started.
    #[error("start the replica: {0}")]
    Start(#[from] StartError),
    /// The state store.
    #[error(transparent)]
    Store(#[from] crate::kv::KvError),
    /// The gRPC server.
    #[error("serve gRPC: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The raft loop stopped on an unrecoverable error.
    #[error("the raft loop failed: {0}")]
    Fatal(String),
}

/// A started replica (for callers that need its raft handle, e.g. in-process tests).
#[derive(Debug)]
pub struct Replica {
    /// The raft handle.
    pub raft: RaftHandle,
    /// The executor of cluster operations (start backups through it).
    pub executor: Arc<Executor>,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
}

impl Replica {
    /// Starts a replica on `listener`; it stops when `shutdown` is cancelled.
    pub async fn start(
        listener: TcpListener,
        config: ReplicaConfig,
        bootstrap: Bootstrap,
        tls: TlsMode,
        shutdown: CancellationToken,
    ) -> Result<Self, ServerError> {
        config.validate().map_err(ServerError::Config)?;
        std::fs::create_dir_all(&config.state_dir)
            .map_err(|e| ServerError::Config(vec![format!("create {}: {e}", config.state_dir.display())]))?;
        let kv = Kv::open(&config.state_dir.join("db"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let faults = Arc::new(Faults::default());
        let transport = GrpcTransport::new(
            config.id,
            config.advertise.clone(),
            tls.clone(),
            tx.clone(),
            Arc::clone(&faults),
            config.limits.raft_message_bytes,
        );
        let (raft, join) = RaftNode::start(
            config.id,
            kv.clone(),
            bootstrap,
            config.raft.clone(),
            transport.clone(),
            (tx.clone(), rx),
            config.request_timeout,
        )?;
        let agents: Arc<dyn AgentClient> = Arc::new(GrpcAgents::new(tls.clone(), crate::agents::default_timeouts()));
        let executor = Executor::new(raft.clone(), Arc::clone(&agents), config.operations.clone());
        let ctx = ReplicaContext {
            executor: Arc::clone(&executor),
            raft: raft.clone(),
            address: config.advertise.clone(),
            agents: Arc::clone(&agents),
            faults: config.fault_injection.then(|| Arc::clone(&faults)),
            probe_timeout: config.probe_timeout,
            tls: tls.clone(),
            cert_expiry_warning: config.cert_expiry_warning,
        };
        let operator = OperatorService::new(ctx);
        let raft_service = RaftService::new(config.id, tx.clone(), Arc::clone(&transport), faults);
        let task = tokio::spawn(serve(
            listener,
            config,
            tls,
            raft.clone(),
            operator,
            raft_service,
            agents,
            Arc::clone(&executor),
            kv,
            join,
            shutdown,
        ));
        Ok(Self { raft, executor, task })
    }

    /// Waits for the replica to stop.
    pub async fn wait(self) -> Result<(), ServerError> {
        self.task.await.unwrap_or_else(|e| Err(ServerError::Fatal(format!("replica task panicked: {e}"))))
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    listener: TcpListener,
    config: ReplicaConfig,
    tls: TlsMode,
    raft: RaftHandle,
    operator: OperatorService,
    raft_service: RaftService,
    agents: Arc<dyn AgentClient>,
    executor: Arc<Executor>,
    kv: Kv,
    join: std::thread::JoinHandle<()>,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let stop = shutdown.child_token();
    let mut workers: Vec<WorkerHandle> = Vec::new();
    if let Some(ctx) = tls.context() {
        workers.push(ctx.spawn_reloader(config.tls_reload_interval, config.cert_expiry_warning, stop.clone()));
        workers.push(revocation_worker(raft.clone(), Arc::clone(ctx), stop.clone()));
    }
    workers.push(health_worker(raft.clone(), agents, config.health_interval, config.probe_timeout, stop.clone()));
    workers.push(executor.spawn(stop.clone()));
    workers.push(crate::schedule::spawn(raft.clone(), Arc::clone(&executor), config.schedule_interval, stop.clone()));
    // Stop serving when the raft loop dies: a replica without raft must not answer.
    let fatal = {
        let mut w = raft.watch();
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                if let Some(f) = w.borrow_and_update().fatal.clone() {
                    stop.cancel();
                    return Some(f);
                }
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    r = w.changed() => if r.is_err() { return None },
                }
            }
        })
    };
    let limits = config.limits;
    let (raft_gate, operator_gate) = (
        tls::RoleGate::new(crate::service::RAFT_TRANSPORT, &[Role::Coordinator], &tls),
        tls::RoleGate::new(crate::service::OPERATOR_API, crate::service::OPERATOR_ROLES, &tls),
    );
    let incoming = tls::serve_incoming(listener, tls, stop.clone());
    // The interceptors refuse a wrong role before a body is read; the decoding limits bound
    // what a right role can make the replica buffer.
    let raft_server = InterceptedService::new(
        pb::raft_transport_server::RaftTransportServer::new(raft_service)
            .max_decoding_message_size(limits.raft_message_bytes),
        raft_gate,
    );
    let operator_server = InterceptedService::new(
        pb::operator_server::OperatorServer::new(operator).max_decoding_message_size(limits.request_bytes),
        operator_gate,
    );
    let result = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(limits.concurrent_streams))
        .add_service(raft_server)
        .add_service(operator_server)
        .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned())
        .await;
    stop.cancel();
    for w in workers {
        w.join().await;
    }
    raft.stop();
    let _ = tokio::task::spawn_blocking(move || join.join()).await;
    kv.flush()?;
    if let Ok(Some(f)) = fatal.await {
        return Err(ServerError::Fatal(f));
    }
    result?;
    Ok(())
}

/// Keeps this replica's deny list (checked at every handshake and call) equal to the
/// replicated one: every replica applies revocations through raft and enforces them here.
fn revocation_worker(raft: RaftHandle, ctx: Arc<tls::TlsContext>, shutdown: CancellationToken) -> WorkerHandle {
    worker::spawn_periodic("revocations", Duration::from_millis(500), shutdown, move |state| {
        let raft = raft.clone();
        let ctx = Arc::clone(&ctx);
        async move {
            match raft.state().revocations() {
                Ok(list) => {
                    let v = list.version;
                    ctx.set_revocations(list);
                    state.set(format!("enforcing revocation list version {v}"));
                }
                Err(e) => state.set(format!("cannot read the revocation list: {e}")),
            }
        }
    })
}

/// While this replica leads: probes every registered cluster's agents and records changes;
/// gives the revocation list to every agent that holds an older one.
fn health_worker(
    raft: RaftHandle,
    agents: Arc<dyn AgentClient>,
    interval: Duration,
    probe_timeout: Duration,
    shutdown: CancellationToken,
) -> WorkerHandle {
    worker::spawn_periodic("health-check", interval, shutdown, move |state| {
        let raft = raft.clone();
        let agents = Arc::clone(&agents);
        async move {
            if !raft.status().is_leader() {
                state.set("idle (not the leader)");
                return;
            }
            let Ok(clusters) = raft.state().clusters() else { return };
            let mut problems = 0;
            for c in clusters {
                let Ok(nodes) = raft.state().nodes(&c.name) else { continue };
                state.set(format!("probing {} agents of {}", nodes.len(), c.name));
                let probes = registry::probe_all(Arc::clone(&agents), &nodes, probe_timeout).await;
                if let Ok(list) = raft.state().revocations()
                    && list.version > 0
                {
                    let behind: Vec<_> = nodes
                        .iter()
                        .zip(&probes)
                        .filter(|(_, (_, id))| id.as_ref().is_some_and(|i| i.revocations_version < list.version))
                        .map(|(n, _)| n.clone())
                        .collect();
                    registry::push_revocations(Arc::clone(&agents), &behind, &list, probe_timeout).await;
                }
                let mut changed = BTreeMap::new();
                for (n, (h, _)) in nodes.iter().zip(probes) {
                    problems += usize::from(!h.problem.is_empty());
                    if registry::health_changed(&n.health, &h) {
                        if !h.problem.is_empty() {
                            tracing::warn!(cluster = %c.name, node = %n.address, problem = %h.problem, "node unhealthy");
                        }
                        changed.insert(n.host_id.clone(), h);
                    }
                }
                if !changed.is_empty()
                    && let Err(e) =
                        raft.propose(&Command::RecordHealth { cluster: c.name.clone(), health: changed }).await
                {
                    tracing::debug!(error = %e, "could not record node health");
                }
            }
            state.set(format!("idle ({problems} nodes with problems)"));
        }
    })
}
