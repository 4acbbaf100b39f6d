//! The coordinator's gRPC services: the operator API (operator certificates only) and the raft
//! transport (coordinator certificates only).
//!
//! Calls that need the leader are answered by followers with `UNAVAILABLE` plus the metadata
//! [`LEADER_ID`] and [`LEADER_ADDRESS`] when a leader is known; the CLI retries there. Reads go
//! through a raft read barrier, so what the CLI shows is never older than what it wrote.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use cassette_common::tls::{self, Role};
use cassette_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::agents::AgentClient;
use crate::model::Command;
use crate::raft::{FaultState, Faults, GrpcTransport, Input, MembershipChange, RaftError, RaftHandle, RaftStatus};
use crate::registry;

/// Metadata key: the leader's raft id, on a not-the-leader answer.
pub const LEADER_ID: &str = "x-cassette-leader-id";
/// Metadata key: the leader's address, on a not-the-leader answer.
pub const LEADER_ADDRESS: &str = "x-cassette-leader-address";
/// Metadata key present on every not-the-leader answer.
pub const NOT_LEADER: &str = "x-cassette-not-leader";
/// Metadata key present when a write was not confirmed in time: it may or may not be applied.
pub const OUTCOME_UNKNOWN: &str = "x-cassette-outcome-unknown";

/// The answer for a write whose outcome is unknown (`DEADLINE_EXCEEDED`, which in gRPC means
/// the operation may have completed, with [`OUTCOME_UNKNOWN`]): `look_up` says how to find out.
pub fn outcome_unknown(e: &RaftError, look_up: &str) -> Status {
    let mut s = Status::deadline_exceeded(format!("{e}: {look_up}"));
    s.metadata_mut().insert(OUTCOME_UNKNOWN, tonic::metadata::MetadataValue::from_static("1"));
    s
}

/// Maps a raft error to a gRPC status (the one mapping at this edge).
pub fn raft_status(e: RaftError) -> Status {
    let msg = e.to_string();
    match e {
        RaftError::NotLeader { leader, .. } => {
            let mut s = Status::unavailable(msg);
            let md = s.metadata_mut();
            md.insert(NOT_LEADER, tonic::metadata::MetadataValue::from_static("1"));
            if let Some((id, addr)) = leader
                && !addr.is_empty()
                && let (Ok(i), Ok(a)) = (id.to_string().parse(), addr.parse())
            {
                md.insert(LEADER_ID, i);
                md.insert(LEADER_ADDRESS, a);
            }
            s
        }
        RaftError::Rejected(_) => Status::failed_precondition(msg),
        RaftError::OutcomeUnknown(_) => outcome_unknown(
            &e,
            "look at the state (`cassette debug get …`, `cassette cluster list`) before sending it again",
        ),
        RaftError::Dropped(_) | RaftError::Busy(_) | RaftError::Timeout(_) => Status::unavailable(msg),
        RaftError::Stopped(_) => Status::unavailable(msg),
    }
}

fn store_status(e: crate::kv::KvError) -> Status {
    Status::internal(format!("read the replicated state: {e}"))
}

/// What the services share.
#[derive(Clone)]
pub struct ReplicaContext {
    /// The raft loop.
    pub raft: RaftHandle,
    /// This replica's address.
    pub address: String,
    /// Agent clients.
    pub agents: Arc<dyn AgentClient>,
    /// Fault injection, when enabled.
    pub faults: Option<Arc<Faults>>,
    /// Time allowed for one agent probe.
    pub probe_timeout: Duration,
    /// Cluster operations.
    pub executor: Arc<crate::executor::Executor>,
    /// This replica's TLS material (its revocation list is updated at once by a revocation).
    pub tls: cassette_common::tls::TlsMode,
    /// Certificates expiring within this long are warned about in `cluster status`.
    pub cert_expiry_warning: Duration,
}

impl std::fmt::Debug for ReplicaContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaContext").field("address", &self.address).finish()
    }
}

/// Builds the operator's view of a replica's status.
pub fn status_view(s: &RaftStatus, version: &str) -> pb::ReplicaStatusResponse {
    let mut replicas = Vec::new();
    for id in &s.membership.voters {
        replicas.push((*id, "voter"));
    }
    for id in &s.membership.learners {
        replicas.push((*id, "learner"));
    }
    pb::ReplicaStatusResponse {
        id: s.id,
        address: s.peers.get(&s.id).cloned().unwrap_or_default(),
        role: s.role.clone(),
        term: s.term,
        leader_id: s.leader_id,
        leader_address: s.leader().map(|l| l.1).unwrap_or_default(),
        commit_index: s.commit,
        applied_index: s.applied,
        first_index: s.first_index,
        last_index: s.last_index,
        snapshot_index: s.snapshot_index,
        replicas: replicas
            .into_iter()
            .map(|(id, kind)| pb::ReplicaInfo {
                id,
                address: s.peers.get(&id).cloned().unwrap_or_default(),
                kind: kind.into(),
                matched: s.matched.get(&id).copied().unwrap_or(0),
            })
            .collect(),
        version: version.to_owned(),
        snapshots_received: s.snapshots_received,
        ..Default::default()
    }
}

/// The operator API.
#[derive(Debug, Clone)]
pub struct OperatorService {
    ctx: ReplicaContext,
}

/// The operator API's name in refusals.
pub const OPERATOR_API: &str = "the coordinator's operator API";
/// The raft transport's name in refusals.
pub const RAFT_TRANSPORT: &str = "the raft transport";
/// Roles that may call the operator API at all (each call may require more: [`ADMIN_ONLY`]).
pub const OPERATOR_ROLES: &[Role] = &[Role::Operator, Role::Admin];
/// What an admin certificate is needed for.
pub const ADMIN_ONLY: &[Role] = &[Role::Admin];

impl OperatorService {
    /// The service over a replica.
    pub fn new(ctx: ReplicaContext) -> Self {
        Self { ctx }
    }

    #[allow(clippy::result_large_err)]
    fn check<T>(&self, r: &Request<T>) -> Result<(), Status> {
        tls::require_role(r, OPERATOR_API, OPERATOR_ROLES).map(|_| ())
    }

    /// For calls that remove data or change trust (docs/security.md has the table).
    #[allow(clippy::result_large_err)]
    fn admin<T>(&self, r: &Request<T>, action: &str) -> Result<(), Status> {
        tls::require_role_to(r, OPERATOR_API, action, ADMIN_ONLY).map(|_| ())
    }

    #[allow(clippy::result_large_err)]
    fn require_leader(&self) -> Result<(), Status> {
        let s = self.ctx.raft.status();
        if s.is_leader() { Ok(()) } else { Err(raft_status(RaftError::NotLeader { id: s.id, leader: s.leader() })) }
    }

    fn view(&self) -> pb::ReplicaStatusResponse {
        let mut v = status_view(&self.ctx.raft.status(), &cassette_common::build_id("cassette-coordinator"));
        let l = self.ctx.raft.commit_latency();
        v.commit_latency_p50_us = l.p50_us;
        v.commit_latency_p99_us = l.p99_us;
        v.commit_latency_max_us = l.max_us;
        v.commit_latency_samples = l.samples;
        v
    }

    /// Waits until `f` holds for the raft status, up to `timeout`.
    async fn wait_for(&self, timeout: Duration, f: impl Fn(&RaftStatus) -> bool) -> bool {
        let mut w = self.ctx.raft.watch();
        let deadline = Instant::now() + timeout;
        loop {
            if f(&w.borrow_and_update()) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, w.changed()).await.is_err() {
                return f(&w.borrow());
            }
        }
    }

    async fn cluster_and_nodes(
        &self,
        name: &str,
    ) -> Result<(crate::model::ClusterRecord, Vec<crate::model::NodeRecord>), Status> {
        let sm = self.ctx.raft.state();
        let c = sm.cluster(name).map_err(store_status)?.ok_or_else(|| {
            Status::not_found(format!("no cluster named {name} is registered (see `cassette cluster list`)"))
        })?;
        let nodes = sm.nodes(name).map_err(store_status)?;
        Ok((c, nodes))
    }
}

#[tonic::async_trait]
impl pb::operator_server::Operator for OperatorService {
    async fn replica_status(
        &self,
        request: Request<pb::ReplicaStatusRequest>,
    ) -> Result<Response<pb::ReplicaStatusResponse>, Status> {
        self.check(&request)?;
        Ok(Response::new(self.view()))
    }

    async fn add_replica(
        &self,
        request: Request<pb::AddReplicaRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        self.admin(&request, "adding a replica")?;
        let r = request.into_inner();
        if r.id == 0 {
            return Err(Status::invalid_argument("replica ids start at 1"));
        }
        if tls::host_of(&r.address).is_none() {
            return Err(Status::invalid_argument(format!("replica address {:?} is not host:port", r.address)));
        }
        let index = self
            .ctx
            .raft
            .change_membership(MembershipChange::AddVoter { id: r.id, address: r.address.clone() })
            .await
            .map_err(raft_status)?;
        Ok(Response::new(pb::MembershipResponse {
            status: Some(self.view()),
            message: format!(
                "replica {} at {} added as a voter (raft index {index}); it catches up from a snapshot",
                r.id, r.address
            ),
        }))
    }

    async fn remove_replica(
        &self,
        request: Request<pb::RemoveReplicaRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        self.admin(&request, "removing a replica")?;
        let id = request.into_inner().id;
        self.require_leader()?;
        let me = self.ctx.raft.status();
        if id == me.id {
            // A leader does not remove itself: hand leadership to the most caught-up voter, then
            // let the client retry at the new leader.
            let to = me
                .membership
                .voters
                .iter()
                .filter(|v| **v != me.id)
                .max_by_key(|v| me.matched.get(v).copied().unwrap_or(0))
                .copied()
                .ok_or_else(|| Status::failed_precondition(format!("replica {id} is the only voter")))?;
            tracing::info!(from = me.id, to, "transferring leadership before removing this replica");
            self.ctx.raft.transfer_leader(to);
            self.wait_for(Duration::from_secs(5), |s| !s.is_leader()).await;
            return Err(raft_status(RaftError::NotLeader { id: me.id, leader: self.ctx.raft.status().leader() }));
        }
        let index = self.ctx.raft.change_membership(MembershipChange::Remove { id }).await.map_err(raft_status)?;
        Ok(Response::new(pb::MembershipResponse {
            status: Some(self.view()),
            message: format!("replica {id} removed (raft index {index}); stop its process"),
        }))
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        self.admin(&request, "transferring the leadership")?;
        let to = request.into_inner().to;
        self.require_leader()?;
        if !self.ctx.raft.status().membership.voters.contains(&to) {
            return Err(Status::invalid_argument(format!("replica {to} is not a voter")));
        }
        self.ctx.raft.transfer_leader(to);
        let ok = self.wait_for(Duration::from_secs(5), |s| s.leader_id == to).await;
        if !ok {
            return Err(Status::unavailable(format!(
                "replica {to} did not take over within 5s (is it caught up and reachable?)"
            )));
        }
        Ok(Response::new(pb::MembershipResponse {
            status: Some(self.view()),
            message: format!("replica {to} is the leader"),
        }))
    }

    async fn cluster_add(&self, request: Request<pb::ClusterAddRequest>) -> Result<Response<pb::ClusterView>, Status> {
        self.check(&request)?;
        let r = request.into_inner();
        self.require_leader()?;
        if self.ctx.raft.state().cluster(&r.name).map_err(store_status)?.is_some() {
            return Err(Status::already_exists(format!("cluster {} is already registered", r.name)));
        }
        let (cluster, nodes) = registry::discover(
            Arc::clone(&self.ctx.agents),
            &r.name,
            &r.seed_agent,
            Some(r.agent_pattern.as_str()),
            r.allow_unhealthy,
            self.ctx.probe_timeout,
        )
        .await
        .map_err(|e| match e {
            registry::RegistryError::InvalidName(_) | registry::RegistryError::InvalidPattern(_) => {
                Status::invalid_argument(e.to_string())
            }
            _ => Status::failed_precondition(e.to_string()),
        })?;
        self.ctx
            .raft
            .propose(&Command::PutCluster { cluster: cluster.clone(), nodes: nodes.clone(), replace: false })
            .await
            .map_err(raft_status)?;
        tracing::info!(cluster = %cluster.name, nodes = nodes.len(), "cluster registered");
        Ok(Response::new(registry::cluster_view(&cluster, &nodes)))
    }

    async fn cluster_list(
        &self,
        request: Request<pb::ClusterListRequest>,
    ) -> Result<Response<pb::ClusterListResponse>, Status> {
        self.check(&request)?;
        self.ctx.raft.read_barrier().await.map_err(raft_status)?;
        let sm = self.ctx.raft.state();
        let mut clusters = Vec::new();
        for c in sm.clusters().map_err(store_status)? {
            let nodes = sm.nodes(&c.name).map_err(store_status)?;
            clusters.push(registry::cluster_view(&c, &nodes));
        }
        Ok(Response::new(pb::ClusterListResponse { clusters }))
    }

    async fn cluster_status(
        &self,
        request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        self.check(&request)?;
        let r = request.into_inner();
        self.ctx.raft.read_barrier().await.map_err(raft_status)?;
        let (cluster, mut nodes) = self.cluster_and_nodes(&r.name).await?;
        if !r.cached {
            let probes = registry::probe_all(Arc::clone(&self.ctx.agents), &nodes, self.ctx.probe_timeout).await;
            let mut changed = BTreeMap::new();
            for (n, (h, id)) in nodes.iter_mut().zip(probes) {
                if registry::health_changed(&n.health, &h) {
                    changed.insert(n.host_id.clone(), h.clone());
                }
                if let Some(id) = id
                    && !id.release_version.is_empty()
                {
                    n.release_version = id.release_version;
                }
                n.health = h;
            }
            if !changed.is_empty() {
                // Advisory: the answer does not depend on this write succeeding.
                if let Err(e) =
                    self.ctx.raft.propose(&Command::RecordHealth { cluster: r.name.clone(), health: changed }).await
                {
                    tracing::debug!(error = %e, "could not record node health");
                }
            }
        }
        let mut warnings = registry::certificate_warnings(&nodes, self.ctx.cert_expiry_warning);
        if let Some(w) = self.ctx.tls.context().and_then(|c| c.expiry_warning(self.ctx.cert_expiry_warning)) {
            warnings.push(format!("coordinator replica at {}: {w}", self.ctx.address));
        }
        Ok(Response::new(pb::ClusterStatusResponse {
            cluster: Some(registry::cluster_view(&cluster, &nodes)),
            warnings,
        }))
    }

    async fn cluster_remove(
        &self,
        request: Request<pb::ClusterRemoveRequest>,
    ) -> Result<Response<pb::ClusterRemoveResponse>, Status> {
        self.admin(&request, "removing a cluster from the registry")?;
        let name = request.into_inner().name;
        self.ctx.raft.propose(&Command::RemoveCluster { name }).await.map_err(|e| match e {
            RaftError::Rejected(m) => Status::not_found(m),
            e => raft_status(e),
        })?;
        Ok(Response::new(pb::ClusterRemoveResponse {}))
    }

    async fn state_get(&self, request: Request<pb::StateGetRequest>) -> Result<Response<pb::StateGetResponse>, Status> {
        self.check(&request)?;
        let key = request.into_inner().key;
        let index = self.ctx.raft.read_barrier().await.map_err(raft_status)?;
        let values = self.ctx.raft.state().dump(&key).map_err(store_status)?;
        Ok(Response::new(pb::StateGetResponse { values: values.into_iter().collect(), applied_index: index }))
    }

    async fn debug_put(&self, request: Request<pb::DebugPutRequest>) -> Result<Response<pb::DebugPutResponse>, Status> {
        self.check(&request)?;
        let r = request.into_inner();
        let look_up = format!("look it up with `cassette debug get debug/{}` before writing it again", r.key);
        let index =
            self.ctx.raft.propose(&Command::DebugPut { key: r.key, value: r.value }).await.map_err(|e| match e {
                RaftError::OutcomeUnknown(_) => outcome_unknown(&e, &look_up),
                e => raft_status(e),
            })?;
        Ok(Response::new(pb::DebugPutResponse { index }))
    }

    async fn set_faults(
        &self,
        request: Request<pb::SetFaultsRequest>,
    ) -> Result<Response<pb::SetFaultsResponse>, Status> {
        self.admin(&request, "fault injection")?;
        let Some(faults) = &self.ctx.faults else {
            return Err(Status::failed_precondition(
                "fault injection is off on this replica (it is a test facility: start it with --enable-fault-injection)",
            ));
        };
        let r = request.into_inner();
        if !(0.0..=1.0).contains(&r.drop_rate) {
            return Err(Status::invalid_argument("drop_rate must be between 0 and 1"));
        }
        faults.set(FaultState { isolate: r.isolate, drop_rate: r.drop_rate, delay: Duration::from_millis(r.delay_ms) });
        Ok(Response::new(pb::SetFaultsResponse {}))
    }

    async fn operation_start(
        &self,
        request: Request<pb::OperationStartRequest>,
    ) -> Result<Response<pb::OperationView>, Status> {
        use crate::executor::{StartError, plan};
        self.check(&request)?;
        match request.get_ref().kind.as_str() {
            plan::KIND_DELETE => self.admin(&request, "deleting a backup")?,
            plan::KIND_PURGE => self.admin(&request, "purging backups")?,
            _ => {}
        }
        self.require_leader()?;
        let r = request.into_inner();
        let rid = r.client_request_id.trim().to_owned();
        if !rid.is_empty() && (!crate::model::valid_name(&rid) || rid.len() > 128) {
            return Err(Status::invalid_argument(format!(
                "request id {rid:?}: use at most 128 letters, digits, '.', '_' and '-'"
            )));
        }
        // A request id that started an operation already (a retry): that operation, or a
        // refusal when it was for something else.
        let existing = |rid: &str| -> Result<Option<crate::model::OperationRecord>, Status> {
            if rid.is_empty() {
                return Ok(None);
            }
            let sm = self.ctx.raft.state();
            match sm.operation_for_request(rid).map_err(store_status)? {
                None => Ok(None),
                Some(id) => sm.operation(&id).map_err(store_status),
            }
        };
        if !rid.is_empty() {
            self.ctx.raft.read_barrier().await.map_err(raft_status)?;
        }
        let found = existing(&rid)?;
        let id = if let Some(op) = found {
            same_request(&op, &rid, &r.kind)?;
            tracing::info!(operation = %op.id, request = %rid, "operation start retried: returning the operation it started");
            op.id
        } else {
            let bad =
                |e: serde_json::Error| Status::invalid_argument(format!("{} request is not valid JSON: {e}", r.kind));
            let ex = &self.ctx.executor;
            let started = match r.kind.as_str() {
                plan::KIND_BACKUP => ex.start_backup(serde_json::from_str(&r.request_json).map_err(bad)?, &rid).await,
                plan::KIND_RESTORE => ex.start_restore(serde_json::from_str(&r.request_json).map_err(bad)?, &rid).await,
                plan::KIND_VERIFY => {
                    ex.start_reference(serde_json::from_str(&r.request_json).map_err(bad)?, false, &rid).await
                }
                plan::KIND_DELETE => {
                    ex.start_reference(serde_json::from_str(&r.request_json).map_err(bad)?, true, &rid).await
                }
                plan::KIND_PURGE => ex.start_purge(serde_json::from_str(&r.request_json).map_err(bad)?, &rid).await,
                k => {
                    return Err(Status::invalid_argument(format!(
                        "unknown operation kind {k:?}: backup, restore, verify, delete or purge"
                    )));
                }
            };
            match started {
                Ok(id) => id,
                // Two starts with one request id raced: the second lost at apply.
                Err(StartError::Conflict(_)) if existing(&rid)?.is_some() => {
                    let op = existing(&rid)?.ok_or_else(|| Status::internal("request record without operation"))?;
                    same_request(&op, &rid, &r.kind)?;
                    op.id
                }
                Err(StartError::OutcomeUnknown { operation_id, source }) => {
                    let retry = if rid.is_empty() {
                        "(no request id was given: look for it before starting again)".to_owned()
                    } else {
                        format!("or send the same request again with request id {rid}, which returns it if it started")
                    };
                    return Err(outcome_unknown(
                        &source,
                        &format!(
                            "look for operation {operation_id} with `cassette operations show {operation_id}` {retry}"
                        ),
                    ));
                }
                Err(e) => {
                    return Err(match e {
                        StartError::Plan(p) => Status::invalid_argument(p.to_string()),
                        StartError::Conflict(m) => Status::failed_precondition(m),
                        StartError::Raft(e) => raft_status(e),
                        StartError::Store(e) => store_status(e),
                        StartError::OutcomeUnknown { source, .. } => raft_status(source),
                    });
                }
            }
        };
        let ex = &self.ctx.executor;
        let op = self
            .ctx
            .raft
            .state()
            .operation(&id)
            .map_err(store_status)?
            .ok_or_else(|| Status::internal("the new operation is not in the state"))?;
        let v = ex.view(&op).map_err(store_status)?;
        Ok(Response::new(pb::OperationView { json: v.to_string() }))
    }

    async fn operation_get(
        &self,
        request: Request<pb::OperationGetRequest>,
    ) -> Result<Response<pb::OperationView>, Status> {
        self.check(&request)?;
        // The leader has the live progress.
        self.require_leader()?;
        let id = request.into_inner().id;
        self.ctx.raft.read_barrier().await.map_err(raft_status)?;
        let op = self
            .ctx
            .raft
            .state()
            .operation(&id)
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no operation {id} (cassette operations list)")))?;
        let v = self.ctx.executor.view(&op).map_err(store_status)?;
        Ok(Response::new(pb::OperationView { json: v.to_string() }))
    }

    async fn operation_list(
        &self,
        request: Request<pb::OperationListRequest>,
    ) -> Result<Response<pb::OperationListResponse>, Status> {
        self.check(&request)?;
        let r = request.into_inner();
        self.ctx.raft.read_barrier().await.map_err(raft_status)?;
        let mut ops = self.ctx.raft.state().operations().map_err(store_status)?;
        ops.retain(|o| r.cluster.is_empty() || o.cluster == r.cluster);
        ops.sort_by_key(|o| std::cmp::Reverse(o.created_at_ms));
        ops.truncate(if r.limit == 0 { 50 } else { r.limit as usize });
        let mut out = Vec::new();
        for o in &ops {
            out.push(self.ctx.executor.view(o).map_err(store_status)?.to_string());
        }
        Ok(Response::new(pb::OperationListResponse { operations_json: out }))
    }

    async fn schedule(&self, request: Request<pb::ScheduleRequest>) -> Result<Response<pb::ScheduleResponse>, Status> {
        use crate::schedule::{self as sch, ScheduleCommand};
        self.check(&request)?;
        // A schedule runs backups and its retention deletes them: changing one is an admin's.
        if !matches!(request.get_ref().action.as_str(), "list" | "show") {
            let action = format!("changing schedules (schedule {})", request.get_ref().action);
            self.admin(&request, &action)?;
        }
        let r = request.into_inner();
        let raft = &self.ctx.raft;
        let propose = |c: ScheduleCommand| async move {
            raft.propose(&Command::Schedule(c)).await.map_err(|e| match e {
                RaftError::Rejected(m) => Status::failed_precondition(m),
                e => raft_status(e),
            })
        };
        let view = |s: &sch::ScheduleRecord| -> Result<serde_json::Value, Status> {
            let runs = sch::runs(raft.state(), &s.name).map_err(store_status)?;
            let mut v = serde_json::to_value(s).unwrap_or_default();
            v["next_slot_ms"] =
                serde_json::json!(if s.paused { None } else { sch::next_slot(s, crate::model::now_ms()) });
            v["runs"] = serde_json::to_value(&runs).unwrap_or_default();
            Ok(v)
        };
        let named = |name: &str| -> Result<sch::ScheduleRecord, Status> {
            sch::schedule(raft.state(), name)
                .map_err(store_status)?
                .ok_or_else(|| Status::not_found(format!("no schedule {name} (cassette schedule list)")))
        };
        let out = match r.action.as_str() {
            "list" => {
                raft.read_barrier().await.map_err(raft_status)?;
                let mut all = Vec::new();
                for s in sch::schedules(raft.state()).map_err(store_status)? {
                    all.push(view(&s)?);
                }
                serde_json::json!({ "schedules": all })
            }
            "show" => {
                raft.read_barrier().await.map_err(raft_status)?;
                view(&named(&r.name)?)?
            }
            "create" => {
                self.require_leader()?;
                let c: ScheduleCreate = serde_json::from_str(&r.request_json)
                    .map_err(|e| Status::invalid_argument(format!("schedule settings are not valid JSON: {e}")))?;
                let record = c.record().map_err(Status::invalid_argument)?;
                sch::validate(&record).map_err(Status::invalid_argument)?;
                raft.read_barrier().await.map_err(raft_status)?;
                if raft.state().cluster(&record.cluster).map_err(store_status)?.is_none() {
                    return Err(Status::not_found(format!(
                        "no cluster named {} is registered (cassette cluster list; cassette cluster add {} --agent host:port)",
                        record.cluster, record.cluster
                    )));
                }
                let name = record.name.clone();
                propose(ScheduleCommand::Put { schedule: record, replace: c.replace }).await?;
                view(&named(&name)?)?
            }
            "pause" | "resume" => {
                self.require_leader()?;
                propose(ScheduleCommand::SetPaused { name: r.name.clone(), paused: r.action == "pause" }).await?;
                view(&named(&r.name)?)?
            }
            "delete" => {
                self.require_leader()?;
                propose(ScheduleCommand::Delete { name: r.name.clone() }).await?;
                serde_json::json!({ "deleted": r.name })
            }
            "run-now" => {
                self.require_leader()?;
                let req: serde_json::Value = if r.request_json.trim().is_empty() {
                    serde_json::json!({})
                } else {
                    serde_json::from_str(&r.request_json)
                        .map_err(|e| Status::invalid_argument(format!("run-now request is not valid JSON: {e}")))?
                };
                let now = crate::model::now_ms();
                let slot = req["slot_ms"].as_u64().unwrap_or(now);
                raft.read_barrier().await.map_err(raft_status)?;
                named(&r.name)?;
                propose(ScheduleCommand::Claim {
                    name: r.name.clone(),
                    slot_ms: slot,
                    manual: true,
                    missed: vec![],
                    by: raft.status().id,
                    at_ms: now,
                })
                .await?;
                let run: Option<sch::RunRecord> =
                    sch::runs(raft.state(), &r.name).map_err(store_status)?.into_iter().find(|x| x.slot_ms == slot);
                serde_json::to_value(run).unwrap_or_default()
            }
            a => {
                return Err(Status::invalid_argument(format!(
                    "unknown schedule action {a:?}: create, list, show, pause, resume, delete or run-now"
                )));
            }
        };
        Ok(Response::new(pb::ScheduleResponse { json: out.to_string() }))
    }

    async fn revoke(&self, request: Request<pb::RevokeRequest>) -> Result<Response<pb::RevokeResponse>, Status> {
        self.admin(&request, "revoking a certificate")?;
        let by = request.extensions().get::<tls::PeerIdentity>().map(|p| p.name.clone()).unwrap_or_default();
        let r = request.into_inner();
        self.require_leader()?;
        let cmd = Command::Revoke {
            serial: r.serial.trim().to_ascii_lowercase(),
            name: r.name.trim().to_owned(),
            reason: r.reason,
            by,
            at_ms: crate::model::now_ms(),
        };
        self.ctx.raft.propose(&cmd).await.map_err(|e| match e {
            RaftError::Rejected(m) => Status::invalid_argument(m),
            e => raft_status(e),
        })?;
        let sm = self.ctx.raft.state();
        let list = sm.revocations().map_err(store_status)?;
        // This replica enforces it now; the others within half a second (their worker).
        if let Some(c) = self.ctx.tls.context() {
            c.set_revocations(list.clone());
        }
        let mut nodes = Vec::new();
        for c in sm.clusters().map_err(store_status)? {
            nodes.extend(sm.nodes(&c.name).map_err(store_status)?);
        }
        let (updated, failed) =
            registry::push_revocations(Arc::clone(&self.ctx.agents), &nodes, &list, self.ctx.probe_timeout).await;
        tracing::info!(serial = %r.serial, name = %r.name, version = list.version, agents = updated.len(), failed = failed.len(), "certificate revoked");
        let records = sm.revocation_records().map_err(store_status)?;
        let out = serde_json::json!({
            "version": list.version,
            "revocations": records,
            "agents_total": nodes.len(),
            "agents_updated": updated.len(),
            "agents_failed": failed,
        });
        Ok(Response::new(pb::RevokeResponse { json: out.to_string() }))
    }

    async fn backup_list(
        &self,
        request: Request<pb::BackupListRequest>,
    ) -> Result<Response<pb::BackupListResponse>, Status> {
        self.check(&request)?;
        let cluster = request.into_inner().cluster;
        self.ctx.raft.read_barrier().await.map_err(raft_status)?;
        let list = self.ctx.raft.state().backups(&cluster).map_err(store_status)?;
        Ok(Response::new(pb::BackupListResponse {
            backups_json: list.iter().map(|b| serde_json::to_string(b).unwrap_or_default()).collect(),
        }))
    }
}

/// Refuses a request id reused for another kind of operation (a retry repeats the request).
#[allow(clippy::result_large_err)]
fn same_request(op: &crate::model::OperationRecord, rid: &str, kind: &str) -> Result<(), Status> {
    if op.kind == kind {
        return Ok(());
    }
    Err(Status::failed_precondition(format!(
        "request id {rid} already started operation {} ({} of cluster {}): a retry must repeat the same request; give a new request id for a different one",
        op.id, op.kind, op.cluster
    )))
}

/// The raft transport service.
#[derive(Debug)]
pub struct RaftService {
    id: u64,
    input: Sender<Input>,
    transport: Arc<GrpcTransport>,
    faults: Arc<Faults>,
}

impl RaftService {
    /// The service delivering into replica `id`'s raft loop.
    pub fn new(id: u64, input: Sender<Input>, transport: Arc<GrpcTransport>, faults: Arc<Faults>) -> Self {
        Self { id, input, transport, faults }
    }
}

#[tonic::async_trait]
impl pb::raft_transport_server::RaftTransport for RaftService {
    async fn send(&self, request: Request<pb::RaftBatch>) -> Result<Response<pb::RaftAck>, Status> {
        let peer = tls::require_role(&request, RAFT_TRANSPORT, &[Role::Coordinator])?;
        if self.faults.get().isolate {
            return Err(Status::unavailable("replica isolated by fault injection"));
        }
        let b = request.into_inner();
        if b.to != self.id {
            return Err(Status::failed_precondition(format!(
                "this replica is {}, not {}: two replicas share an address, or the peer table is stale",
                self.id, b.to
            )));
        }
        let ours = self.transport.group();
        if !ours.is_empty() && !b.group.is_empty() && b.group != ours {
            tracing::warn!(from = b.from, address = %b.from_address, theirs = %b.group, ours = %ours, "refused raft messages from another coordinator group");
            return Err(Status::failed_precondition(format!(
                "replica {} at {} belongs to another coordinator group ({} vs {ours}): a replica that should join this group must start with an empty state directory and --join",
                b.from, b.from_address, b.group
            )));
        }
        let refuse = |why: String| {
            tracing::warn!(%peer, from = b.from, address = %b.from_address, "refused raft messages: {why}");
            Err(Status::permission_denied(why))
        };
        if let Err(why) = self.check_sender(&peer, &b, &ours) {
            return refuse(why);
        }
        // Every message is decoded and checked before any is delivered: a batch is taken whole or not at all.
        let mut msgs = Vec::with_capacity(b.messages.len());
        for m in &b.messages {
            let msg = crate::raft::node::decode_message(m)
                .map_err(|e| Status::invalid_argument(format!("bad raft message: {e}")))?;
            if msg.from != b.from || msg.to != self.id {
                return refuse(format!(
                    "a raft message from replica {} to replica {} inside a batch from replica {} to replica {}: every message must be the sender's own, to this replica",
                    msg.from, msg.to, b.from, self.id
                ));
            }
            msgs.push(msg);
        }
        self.transport.learn(b.from, &b.from_address);
        for msg in msgs {
            if self.faults.drop_one() {
                continue;
            }
            self.input
                .send(Input::Step(Box::new(msg)))
                .map_err(|_| Status::unavailable("the replica is shutting down"))?;
        }
        Ok(Response::new(pb::RaftAck {}))
    }
}

impl RaftService {
    /// Whether the batch's sender is who its certificate and this group's membership say it
    /// can be; the error says why not.
    fn check_sender(&self, peer: &tls::PeerIdentity, b: &pb::RaftBatch, ours: &str) -> Result<(), String> {
        if b.from == 0 {
            return Err("a batch from replica 0: replica ids start at 1".into());
        }
        if b.from == self.id {
            return Err(format!(
                "a batch claims to come from replica {}, this replica itself: two replicas share an id, or someone else's certificate is in use",
                b.from
            ));
        }
        let Some(host) = tls::host_of(&b.from_address) else {
            return Err(format!("replica {}'s address {:?} is not host:port", b.from, b.from_address));
        };
        // The certificate binds the sender to hosts; the membership binds ids to addresses.
        if !peer.is_insecure() && !peer.names_host(host) {
            return Err(format!(
                "replica {} claims the address {}, but its certificate ({:?}, names [{}]) does not name {host}: issue each replica's certificate with --san for the address it serves on",
                b.from,
                b.from_address,
                peer.name,
                peer.names.join(", ")
            ));
        }
        let member = self.transport.member_address(b.from);
        if let Some(a) = &member
            && *a != b.from_address
        {
            return Err(format!(
                "replica {} is at {a} in this group's membership, but the batch says it comes from {}",
                b.from, b.from_address
            ));
        }
        // A replica without a group id is one that is joining: only a member (added with
        // `cassette replica add`, so its address is known) may be.
        if !ours.is_empty() && b.group.is_empty() && member.is_none() {
            return Err(format!(
                "a batch without a group id from replica {} at {}, which is not a member of this group: add it with `cassette replica add --id {} --address {}` before it joins",
                b.from, b.from_address, b.from, b.from_address
            ));
        }
        Ok(())
    }
}

/// `cassette schedule create` settings, as the CLI sends them.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleCreate {
    /// Name (also the tag of its backups).
    pub name: String,
    /// Registered cluster.
    pub cluster: String,
    /// Cron expression.
    pub cron: String,
    /// IANA time zone (empty: UTC).
    pub timezone: String,
    /// How long after its slot a run may start (`1h`; empty: 1h).
    pub window: String,
    /// Keyspaces and tables.
    pub entities: Vec<String>,
    /// Datacenters.
    pub datacenters: Vec<String>,
    /// Keep the newest N.
    pub keep_last: Option<u32>,
    /// Keep those started within (`30d`).
    pub keep_within: Option<String>,
    /// `latest` or `none` (empty: latest).
    pub catch_up: String,
    /// Launch attempts per run (0: 5).
    pub max_attempts: u32,
    /// Replace an existing schedule of that name.
    pub replace: bool,
}

impl ScheduleCreate {
    /// The schedule record; the error says what to fix.
    pub fn record(&self) -> Result<crate::schedule::ScheduleRecord, String> {
        use crate::schedule::CatchUp;
        let dur = |flag: &str, v: &str| {
            humantime::parse_duration(v).map_err(|e| format!("{flag} {v:?}: {e} (use e.g. 30d, 12h, 90m)"))
        };
        if self.keep_last.is_none() && self.keep_within.is_none() {
            return Err("give a retention policy: --keep-last N, --keep-within DURATION (e.g. 30d), or both".into());
        }
        let window = if self.window.is_empty() { Duration::from_secs(3600) } else { dur("--window", &self.window)? };
        let keep_within = match &self.keep_within {
            Some(w) => Some(dur("--keep-within", w)?.as_millis() as u64),
            None => None,
        };
        let catch_up = match self.catch_up.as_str() {
            "" | "latest" => CatchUp::Latest,
            "none" => CatchUp::None,
            c => return Err(format!("--catch-up {c:?}: latest or none")),
        };
        Ok(crate::schedule::ScheduleRecord {
            name: if self.name.is_empty() { format!("{}-daily", self.cluster) } else { self.name.clone() },
            cluster: self.cluster.clone(),
            cron: self.cron.clone(),
            timezone: if self.timezone.is_empty() { "UTC".into() } else { self.timezone.clone() },
            window_ms: window.as_millis() as u64,
            entities: self.entities.clone(),
            datacenters: self.datacenters.clone(),
            keep_last: self.keep_last,
            keep_within_ms: keep_within,
            catch_up,
            max_attempts: if self.max_attempts == 0 { 5 } else { self.max_attempts },
            retry_backoff_ms: 30_000,
            paused: false,
            created_at_ms: crate::model::now_ms(),
            settled_ms: 0,
            missed: vec![],
        })
    }
}
