//! The agent's gRPC service (`cassette-agent serve`): node identity and topology from the
//! Cassandra adapter, and phases run as jobs ([`crate::jobs`]).
//!
//! Every call requires a coordinator certificate (mutual TLS, see
//! [`cassette_common::tls`]); in insecure mode nothing is checked.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use cassette_common::tls::{self, Revocations, Role, TlsContext, TlsMode};
use cassette_proto::v1 as pb;
use futures::Stream;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::cassandra::{CassandraControl, Liveness, RingState};
use crate::jobs::{JobError, JobManager, JobRecord, JobSpec, JobState, RetryClass};

const SERVICE: &str = "the agent API";

/// The service.
pub struct AgentService {
    control: Arc<dyn CassandraControl>,
    jobs: Arc<JobManager>,
    tls: Option<Arc<TlsContext>>,
    revocations_file: Option<PathBuf>,
    /// Serializes updates of the revocation list (file and context).
    revocations_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for AgentService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentService").field("jobs", &self.jobs).finish()
    }
}

impl AgentService {
    /// A service over this node's adapter and job manager.
    pub fn new(control: Arc<dyn CassandraControl>, jobs: Arc<JobManager>) -> Self {
        Self { control, jobs, tls: None, revocations_file: None, revocations_lock: tokio::sync::Mutex::new(()) }
    }

    /// Enforces the revocation list the coordinator pushes with `tls` (this agent's TLS
    /// material), keeping it in `file` across restarts; a list kept there is loaded now.
    pub fn with_revocations(mut self, tls: &TlsMode, file: PathBuf) -> Result<Self, String> {
        if let Some(ctx) = tls.context() {
            if let Some(list) = read_revocations(&file)? {
                tracing::info!(version = list.version, file = %file.display(), "revocation list loaded");
                ctx.set_revocations(list);
            }
            self.tls = Some(Arc::clone(ctx));
        }
        self.revocations_file = Some(file);
        Ok(self)
    }
}

/// The revocation list kept in `file` (`None` when there is none yet).
pub fn read_revocations(file: &std::path::Path) -> Result<Option<Revocations>, String> {
    match std::fs::read(file) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            format!(
                "read the revocation list {}: {e} (remove the file to wait for the coordinator's list)",
                file.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("read the revocation list {}: {e}", file.display())),
    }
}

/// Writes the list durably (temporary file, fsync, rename, fsync of the directory).
fn write_revocations(file: &std::path::Path, list: &Revocations) -> std::io::Result<()> {
    use std::io::Write;
    let dir = file.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = file.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(list).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, file)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Serves the agent API on `listener` until `shutdown`, then drains in-flight calls. A caller
/// without a coordinator certificate is refused before its request is read; requests above
/// `limits.request_bytes` are refused from their length prefix.
pub async fn run(
    listener: TcpListener,
    tls: TlsMode,
    service: AgentService,
    limits: tls::ServerLimits,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let server = tonic::service::interceptor::InterceptedService::new(
        pb::agent_server::AgentServer::new(service).max_decoding_message_size(limits.request_bytes),
        tls::RoleGate::new(SERVICE, &[Role::Coordinator], &tls),
    );
    let incoming = tls::serve_incoming(listener, tls, shutdown.clone());
    tonic::transport::Server::builder()
        .max_concurrent_streams(Some(limits.concurrent_streams))
        .add_service(server)
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
}

fn job_status(r: &JobRecord) -> pb::JobStatus {
    let state = match r.state {
        JobState::Running => pb::JobState::Running,
        JobState::Succeeded => pb::JobState::Succeeded,
        JobState::Failed => pb::JobState::Failed,
        JobState::Cancelled => pb::JobState::Cancelled,
    };
    pb::JobStatus {
        job_id: r.spec.job_id.clone(),
        phase: r.spec.phase.clone(),
        operation_id: r.spec.operation_id.clone(),
        state: state as i32,
        started_at_ms: r.started_at_ms,
        finished_at_ms: r.finished_at_ms,
        attempt: r.attempt,
        progress: Some(pb::JobProgress {
            done: r.progress.done,
            total: r.progress.total,
            message: r.progress.message.clone(),
            transfer: r.progress.transfer.map(|t| pb::TransferStats {
                files_total: t.files_total,
                bytes_total: t.bytes_total,
                files_transferred: t.files_transferred,
                bytes_transferred: t.bytes_transferred,
                files_skipped: t.files_skipped,
                bytes_skipped: t.bytes_skipped,
                bytes_hashed: t.bytes_hashed,
                retries: t.retries,
                remote_checks: t.remote_checks,
            }),
        }),
        error: r.error.as_ref().map(|e| pb::JobError {
            message: e.message.clone(),
            retry: match e.retry {
                RetryClass::Never => pb::RetryClass::Never,
                RetryClass::Now => pb::RetryClass::Now,
                RetryClass::Backoff => pb::RetryClass::Backoff,
            } as i32,
        }),
        result_json: r.result.as_ref().map(|v| v.to_string()).unwrap_or_default(),
        resumable: r.resumable,
        agent_time_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    }
}

fn job_error(e: JobError) -> Status {
    match e {
        JobError::InvalidId(_) | JobError::UnknownPhase { .. } => Status::invalid_argument(e.to_string()),
        JobError::Conflict { .. } => Status::already_exists(e.to_string()),
        JobError::NotFound(_) => Status::not_found(e.to_string()),
        JobError::Persist { .. } => Status::internal(e.to_string()),
    }
}

/// Free and total bytes of the file system holding `path`.
pub fn disk_usage(path: &std::path::Path) -> Option<pb::DiskUsage> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    let frag = st.fragment_size() as u64;
    Some(pb::DiskUsage {
        path: path.display().to_string(),
        total_bytes: st.blocks() as u64 * frag,
        free_bytes: st.blocks_available() as u64 * frag,
    })
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::JobStatus, Status>> + Send>>;

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentService {
    async fn describe(&self, request: Request<pb::DescribeRequest>) -> Result<Response<pb::NodeIdentity>, Status> {
        tls::require_role(&request, SERVICE, &[Role::Coordinator])?;
        let mut out = pb::NodeIdentity {
            agent_version: cassette_common::build_id("cassette-agent"),
            running_jobs: self.jobs.running() as u32,
            ..Default::default()
        };
        if let Some(ctx) = &self.tls {
            out.revocations_version = ctx.revocations().version;
            out.certificate_name = ctx.name();
            out.certificate_not_after_ms =
                ctx.not_after().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        }
        let mut dirs: Vec<PathBuf> = Vec::new();
        match self.control.describe_node().await {
            Ok(d) => {
                out.cassandra_up = d.gossip_active && d.native_transport_active;
                if !out.cassandra_up {
                    out.cassandra_error = format!(
                        "the node answers but gossip is {} and the native transport is {}",
                        if d.gossip_active { "running" } else { "stopped" },
                        if d.native_transport_active { "running" } else { "stopped" }
                    );
                }
                out.host_id = d.host_id.to_string();
                out.cluster_name = d.cluster_name;
                out.datacenter = d.datacenter;
                out.rack = d.rack;
                out.token_count = d.tokens.len() as u32;
                out.release_version = d.release_version.raw;
                dirs = d.directories.all_data_roots();
                dirs.extend(d.directories.commitlog);
            }
            Err(e) => {
                out.cassandra_error = cassette_common::redact::redact(&e.to_string()).into_owned();
                if let Ok(d) = self.control.directories().await {
                    dirs = d.all_data_roots();
                    dirs.extend(d.commitlog);
                }
            }
        }
        out.disks = dirs.iter().filter_map(|d| disk_usage(d)).collect();
        Ok(Response::new(out))
    }

    async fn ring(&self, request: Request<pb::RingRequest>) -> Result<Response<pb::RingResponse>, Status> {
        tls::require_role(&request, SERVICE, &[Role::Coordinator])?;
        let (ring, node) = tokio::join!(self.control.ring(), self.control.describe_node());
        let ring = ring.map_err(|e| {
            Status::unavailable(cassette_common::redact::redact(&format!("read the ring from the local node: {e}")))
        })?;
        let members = ring
            .into_iter()
            .map(|m| pb::RingMember {
                address: m.address,
                datacenter: m.datacenter,
                rack: m.rack,
                host_id: m.host_id.map(|h| h.to_string()).unwrap_or_default(),
                liveness: match m.liveness {
                    Liveness::Up => "up",
                    Liveness::Down => "down",
                    Liveness::Unknown => "unknown",
                }
                .into(),
                state: match m.state {
                    RingState::Normal => "normal",
                    RingState::Joining => "joining",
                    RingState::Leaving => "leaving",
                    RingState::Moving => "moving",
                }
                .into(),
                token_count: m.token_count.unwrap_or(u32::from(m.token.is_some())),
            })
            .collect();
        Ok(Response::new(pb::RingResponse { cluster_name: node.map(|n| n.cluster_name).unwrap_or_default(), members }))
    }

    async fn start_job(&self, request: Request<pb::StartJobRequest>) -> Result<Response<pb::JobStatus>, Status> {
        let peer = tls::require_role(&request, SERVICE, &[Role::Coordinator])?;
        let r = request.into_inner();
        let params = if r.params_json.trim().is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            serde_json::from_str(&r.params_json)
                .map_err(|e| Status::invalid_argument(format!("job {}: params_json is not JSON: {e}", r.job_id)))?
        };
        tracing::debug!(%peer, job = %r.job_id, phase = %r.phase, "start job");
        let rec = self
            .jobs
            .start(JobSpec {
                job_id: r.job_id,
                phase: r.phase,
                params,
                operation_id: r.operation_id,
                not_before_ms: r.not_before_ms,
            })
            .await
            .map_err(job_error)?;
        Ok(Response::new(job_status(&rec)))
    }

    async fn get_job(&self, request: Request<pb::JobRequest>) -> Result<Response<pb::JobStatus>, Status> {
        tls::require_role(&request, SERVICE, &[Role::Coordinator])?;
        let rec = self.jobs.get(&request.get_ref().job_id).map_err(job_error)?;
        Ok(Response::new(job_status(&rec)))
    }

    type WatchJobStream = WatchStream;

    async fn watch_job(&self, request: Request<pb::JobRequest>) -> Result<Response<Self::WatchJobStream>, Status> {
        tls::require_role(&request, SERVICE, &[Role::Coordinator])?;
        let mut rx = self.jobs.watch(&request.get_ref().job_id).map_err(job_error)?;
        let stream = async_stream_from_watch(move || {
            let r = rx.borrow_and_update().clone();
            (r, rx.clone())
        });
        Ok(Response::new(stream))
    }

    async fn set_revocations(
        &self,
        request: Request<pb::RevocationList>,
    ) -> Result<Response<pb::RevocationAck>, Status> {
        let peer = tls::require_role(&request, SERVICE, &[Role::Coordinator])?;
        let r = request.into_inner();
        let list = Revocations {
            version: r.version,
            serials: r.serials.into_iter().map(|s| s.to_ascii_lowercase()).collect(),
            names: r.names.into_iter().collect(),
        };
        let _guard = self.revocations_lock.lock().await;
        let held = self.tls.as_ref().map(|c| c.revocations().version).unwrap_or(0);
        if list.version > held {
            if let Some(file) = &self.revocations_file {
                write_revocations(file, &list)
                    .map_err(|e| Status::internal(format!("keep the revocation list in {}: {e}", file.display())))?;
            }
            if let Some(ctx) = &self.tls {
                ctx.set_revocations(list.clone());
            }
            tracing::info!(%peer, version = list.version, serials = list.serials.len(), names = list.names.len(), "revocation list updated; revoked certificates are refused from now on");
        }
        Ok(Response::new(pb::RevocationAck {
            version: self.tls.as_ref().map(|c| c.revocations().version).unwrap_or(list.version.max(held)),
        }))
    }

    async fn cancel_job(&self, request: Request<pb::JobRequest>) -> Result<Response<pb::JobStatus>, Status> {
        tls::require_role(&request, SERVICE, &[Role::Coordinator])?;
        let rec = self.jobs.cancel(&request.get_ref().job_id).map_err(job_error)?;
        Ok(Response::new(job_status(&rec)))
    }

    async fn list_jobs(&self, request: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        tls::require_role(&request, SERVICE, &[Role::Coordinator])?;
        let limit = request.get_ref().limit as usize;
        Ok(Response::new(pb::ListJobsResponse {
            jobs: self.jobs.list(limit).iter().map(job_status).collect(),
            phases: self.jobs.phases(),
        }))
    }
}

/// The current status, then one per change, ending after a terminal state.
fn async_stream_from_watch(
    first: impl FnOnce() -> (JobRecord, tokio::sync::watch::Receiver<JobRecord>),
) -> WatchStream {
    let (current, rx) = first();
    let state = (Some(current), rx, false);
    Box::pin(futures::stream::unfold(state, |(pending, mut rx, done)| async move {
        if done {
            return None;
        }
        if let Some(r) = pending {
            let terminal = r.state.is_terminal();
            return Some((Ok(job_status(&r)), (None, rx, terminal)));
        }
        if rx.changed().await.is_err() {
            return None;
        }
        let r = rx.borrow_and_update().clone();
        let terminal = r.state.is_terminal();
        Some((Ok(job_status(&r)), (None, rx, terminal)))
    }))
}
