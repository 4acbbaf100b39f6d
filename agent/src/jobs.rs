//! Jobs: phases the coordinator pushes to the agent, run under an idempotent job id and kept on
//! disk.
//!
//! A phase (snapshot, upload, download, import, … — the library functions in `ops`) plugs in as a
//! [`PhaseRunner`]; the [`JobManager`] runs it as a job:
//!
//! - **Idempotent start.** The coordinator picks the job id. Starting an id again with the same
//!   phase and parameters returns the existing job, running or finished, so a coordinator that
//!   lost its leader (or a reply) simply starts again and re-attaches. The same id with other
//!   parameters is refused.
//! - **Durable.** The record is written (and fsynced) before the phase starts and again when it
//!   ends. After an agent restart, finished jobs report their outcome, and jobs that were running
//!   are resumed (attempt + 1) when their phase is [`PhaseRunner::resumable`], or marked failed
//!   ("the agent restarted…", retryable) when it is not.
//! - **Observable and cancellable.** Progress is kept in memory and pushed to watchers; cancel
//!   signals the phase through its token.
//!
//! # Layout
//! - this module: [`PhaseRunner`], [`JobContext`], [`JobManager`], the records.
//! - [`phases`]: the real phases (backup, restore, verify, remove) over `ops`; names and
//!   parameters in [`cassette_common::phases`].
//! - [`synthetic`]: phases that only take time (tests, the coordinator-at-scale benchmark).

pub mod phases;
pub mod purge;
pub mod synthetic;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::storage::Retry;

/// Runs one kind of phase.
///
/// Contract: `run` does the whole phase for one job and returns its result as JSON. It must be
/// idempotent per job id: when the agent restarts mid-phase, a resumable phase is run again with
/// the same id and parameters (and a higher [`JobContext::attempt`]) and must finish the work
/// without redoing what is already durable (e.g. skip blobs already uploaded). It should check
/// [`JobContext::cancel`] between steps and return [`PhaseError::cancelled`] when it fires.
#[async_trait::async_trait]
pub trait PhaseRunner: Send + Sync {
    /// The stable phase name (`snapshot`, `upload`, `synthetic.sleep`, …).
    fn name(&self) -> &str;
    /// Whether a job interrupted by an agent restart may be run again.
    fn resumable(&self) -> bool;
    /// Runs the phase.
    async fn run(&self, ctx: JobContext) -> Result<serde_json::Value, PhaseError>;
}

/// Why a phase failed, and whether the coordinator should try again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct PhaseError {
    /// What was attempted and what went wrong.
    pub message: String,
    /// Whether a retry makes sense.
    pub retry: RetryClass,
    /// True when the phase stopped because it was cancelled.
    #[serde(default)]
    pub cancelled: bool,
}

impl PhaseError {
    /// A failure with a retry class.
    pub fn new(message: impl Into<String>, retry: RetryClass) -> Self {
        Self { message: message.into(), retry, cancelled: false }
    }

    /// The phase observed its cancellation.
    pub fn cancelled() -> Self {
        Self { message: "cancelled".into(), retry: RetryClass::Never, cancelled: true }
    }

    /// The same error with every secret in its message replaced ([`cassette_common::redact`]).
    pub fn redacted(mut self) -> Self {
        if let std::borrow::Cow::Owned(m) = cassette_common::redact::redact(&self.message) {
            self.message = m;
        }
        self
    }
}

/// Persisted form of [`Retry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetryClass {
    /// Permanent.
    Never,
    /// Retry at once.
    Now,
    /// Retry after a backoff.
    Backoff,
}

impl From<Retry> for RetryClass {
    fn from(r: Retry) -> Self {
        match r {
            Retry::Never => Self::Never,
            Retry::Now => Self::Now,
            Retry::Backoff => Self::Backoff,
        }
    }
}

/// What a phase gets to run one job.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// The job id.
    pub job_id: String,
    /// The phase parameters.
    pub params: serde_json::Value,
    /// 1 on the first run, +1 on each resume after an agent restart.
    pub attempt: u32,
    /// Fires when the job is cancelled or the agent shuts down.
    pub cancel: CancellationToken,
    progress: ProgressReporter,
}

impl JobContext {
    /// Where the phase reports progress.
    pub fn progress(&self) -> &ProgressReporter {
        &self.progress
    }
}

/// Updates a job's progress (kept in memory, pushed to watchers).
#[derive(Debug, Clone)]
pub struct ProgressReporter {
    entry: Arc<JobEntry>,
}

impl ProgressReporter {
    /// Sets units done/total and the message.
    pub fn set(&self, done: u64, total: u64, message: impl Into<String>) {
        let message = cassette_common::redact::redact(&message.into()).into_owned();
        self.entry.update(|r| {
            r.progress.done = done;
            r.progress.total = total;
            r.progress.message = message;
        });
    }

    /// Sets the transfer counters.
    pub fn transfer(&self, stats: crate::storage::TransferStats) {
        self.entry.update(|r| r.progress.transfer = Some(stats.into()));
    }
}

/// State of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Running (or waiting for a slot).
    Running,
    /// Finished with a result.
    Succeeded,
    /// Finished with an error.
    Failed,
    /// Stopped by a cancel request.
    Cancelled,
}

impl JobState {
    /// Whether the job has ended.
    pub fn is_terminal(self) -> bool {
        self != JobState::Running
    }
}

/// Transfer counters as persisted (a copy of the proto message, so records stay serde).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct TransferCounters {
    pub files_total: u64,
    pub bytes_total: u64,
    pub files_transferred: u64,
    pub bytes_transferred: u64,
    pub files_skipped: u64,
    pub bytes_skipped: u64,
    pub bytes_hashed: u64,
    pub retries: u64,
    /// Existence checks asked of the store.
    #[serde(default)]
    pub remote_checks: u64,
}

impl From<crate::storage::TransferStats> for TransferCounters {
    fn from(s: crate::storage::TransferStats) -> Self {
        Self {
            files_total: s.files_total,
            bytes_total: s.bytes_total,
            files_transferred: s.files_transferred,
            bytes_transferred: s.bytes_transferred,
            files_skipped: s.files_skipped,
            bytes_skipped: s.bytes_skipped,
            bytes_hashed: s.bytes_hashed,
            retries: s.retries,
            remote_checks: s.remote_checks,
        }
    }
}

/// A job's progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobProgress {
    /// Units done.
    pub done: u64,
    /// Units in total.
    pub total: u64,
    /// What is happening now.
    pub message: String,
    /// Transfer counters, for phases that move bytes.
    pub transfer: Option<TransferCounters>,
}

/// What the coordinator asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The idempotency key.
    pub job_id: String,
    /// The phase.
    pub phase: String,
    /// Its parameters.
    pub params: serde_json::Value,
    /// The operation it belongs to (for logs).
    #[serde(default)]
    pub operation_id: String,
    /// Wall-clock time (ms since the Unix epoch, this host's clock) before which the phase must
    /// not begin; 0: at once. The coordinator gives every node of a snapshot step the same
    /// moment (corrected by each agent's clock offset), so that the snapshots line up however
    /// long the start calls took to reach every node. Not part of the idempotency check: a
    /// coordinator re-attaching after a leader change sends the same job without it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub not_before_ms: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A job as kept on disk (`<state dir>/jobs/<job id>.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Format version of this record.
    pub v: u32,
    /// The request.
    pub spec: JobSpec,
    /// State.
    pub state: JobState,
    /// Start time (ms since the Unix epoch).
    pub started_at_ms: u64,
    /// End time (0 while running).
    pub finished_at_ms: u64,
    /// Run number (1, then +1 per resume).
    pub attempt: u32,
    /// Whether the phase is resumable.
    pub resumable: bool,
    /// Progress (not persisted while running; what was last saved otherwise).
    pub progress: JobProgress,
    /// The failure, when failed or cancelled.
    pub error: Option<PhaseError>,
    /// The result, when succeeded.
    pub result: Option<serde_json::Value>,
}

/// Current version of [`JobRecord`].
pub const JOB_RECORD_VERSION: u32 = 1;

impl JobRecord {
    /// Parses a stored record, upgrading older versions (there are none yet) and refusing newer ones.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        let v = value.get("v").and_then(|v| v.as_u64()).unwrap_or(0);
        if v == 0 || v > u64::from(JOB_RECORD_VERSION) {
            return Err(format!("record version {v} is not supported by this agent (knows 1..={JOB_RECORD_VERSION})"));
        }
        serde_json::from_value(value).map_err(|e| format!("malformed job record: {e}"))
    }
}

/// Why a job request was refused.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The job id is not acceptable as an id.
    #[error("invalid job id {0:?}: use 1 to 128 characters of [A-Za-z0-9._-]")]
    InvalidId(String),
    /// The agent does not know the phase.
    #[error("unknown phase {phase:?} for job {job_id}: this agent runs {known}")]
    UnknownPhase {
        /// The job.
        job_id: String,
        /// The phase asked for.
        phase: String,
        /// The phases it knows.
        known: String,
    },
    /// The id is taken by a different job.
    #[error("job {job_id} already exists with phase {existing_phase} and other parameters: job ids must not be reused")]
    Conflict {
        /// The job.
        job_id: String,
        /// Its phase.
        existing_phase: String,
    },
    /// No such job.
    #[error("no job {0} on this agent (never started, or its record was pruned)")]
    NotFound(String),
    /// The job record could not be written.
    #[error("write job record {}: {source}", path.display())]
    Persist {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Settings of the job manager.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// Jobs that run at once; more wait for a slot.
    pub max_running: usize,
    /// Finished job records kept on disk (the oldest are pruned).
    pub keep_finished: usize,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self { max_running: 16, keep_finished: 1000 }
    }
}

#[derive(Debug)]
struct JobEntry {
    record: Mutex<JobRecord>,
    watch: watch::Sender<JobRecord>,
    cancel: CancellationToken,
    /// Whether the start was recorded on disk: [`DURABLE_PENDING`], [`DURABLE_YES`] or
    /// [`DURABLE_FAILED`]. A second start of the same id waits for it.
    durable: watch::Sender<u8>,
}

const DURABLE_PENDING: u8 = 0;
const DURABLE_YES: u8 = 1;
const DURABLE_FAILED: u8 = 2;

impl JobEntry {
    fn new(record: JobRecord, parent: &CancellationToken) -> Arc<Self> {
        Self::with_durability(record, parent, DURABLE_YES)
    }

    fn with_durability(record: JobRecord, parent: &CancellationToken, durable: u8) -> Arc<Self> {
        let (watch, _) = watch::channel(record.clone());
        let (durable, _) = watch::channel(durable);
        Arc::new(Self { record: Mutex::new(record), watch, cancel: parent.child_token(), durable })
    }

    fn get(&self) -> JobRecord {
        self.record.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn update(&self, f: impl FnOnce(&mut JobRecord)) -> JobRecord {
        let snapshot = {
            let mut r = self.record.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&mut r);
            r.clone()
        };
        self.watch.send_replace(snapshot.clone());
        snapshot
    }
}

/// Runs and remembers jobs. See the module documentation.
pub struct JobManager {
    dir: PathBuf,
    runners: BTreeMap<String, Arc<dyn PhaseRunner>>,
    jobs: Mutex<HashMap<String, Arc<JobEntry>>>,
    slots: Arc<Semaphore>,
    config: JobsConfig,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for JobManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobManager").field("dir", &self.dir).field("phases", &self.phases()).finish()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        && !id.starts_with('.')
}

impl JobManager {
    /// Opens the job directory, loads every record, and resumes or fails the jobs that were
    /// running when the agent stopped. Must be called inside a tokio runtime. `shutdown` stops
    /// running phases (they resume at the next start when resumable).
    pub fn open(
        dir: &Path,
        runners: Vec<Arc<dyn PhaseRunner>>,
        config: JobsConfig,
        shutdown: CancellationToken,
    ) -> std::io::Result<Arc<Self>> {
        std::fs::create_dir_all(dir)?;
        let runners: BTreeMap<String, Arc<dyn PhaseRunner>> =
            runners.into_iter().map(|r| (r.name().to_owned(), r)).collect();
        let mgr = Arc::new(Self {
            dir: dir.to_owned(),
            runners,
            jobs: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(config.max_running.max(1))),
            config,
            shutdown,
        });
        let mut to_resume = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let record = match std::fs::read(&path).map_err(|e| e.to_string()).and_then(|b| JobRecord::decode(&b)) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable job record");
                    continue;
                }
            };
            let mut record = record;
            if record.state == JobState::Running {
                match mgr.runners.get(&record.spec.phase) {
                    Some(r) if r.resumable() => {
                        record.attempt += 1;
                        record.progress =
                            JobProgress { message: "resuming after an agent restart".into(), ..Default::default() };
                        tracing::info!(job = %record.spec.job_id, phase = %record.spec.phase, attempt = record.attempt, "resuming a job interrupted by a restart");
                        to_resume.push(record.spec.job_id.clone());
                    }
                    _ => {
                        record.state = JobState::Failed;
                        record.finished_at_ms = now_ms();
                        record.error = Some(PhaseError::new(
                            format!(
                                "the agent restarted while job {} (phase {}) was running, and this phase cannot resume: start it again under a new job id",
                                record.spec.job_id, record.spec.phase
                            ),
                            RetryClass::Now,
                        ));
                        tracing::warn!(job = %record.spec.job_id, phase = %record.spec.phase, "failed a job interrupted by a restart (not resumable)");
                    }
                }
                mgr.persist(&record).map_err(|e| std::io::Error::other(e.to_string()))?;
            }
            let e = JobEntry::new(record, &mgr.shutdown);
            mgr.lock().insert(e.get().spec.job_id.clone(), e);
        }
        for id in to_resume {
            if let Some(e) = mgr.lock().get(&id).cloned() {
                mgr.spawn(e);
            }
        }
        mgr.prune();
        Ok(mgr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<JobEntry>>> {
        self.jobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The phases this agent runs.
    pub fn phases(&self) -> Vec<String> {
        self.runners.keys().cloned().collect()
    }

    fn path(&self, job_id: &str) -> PathBuf {
        self.dir.join(format!("{job_id}.json"))
    }

    fn persist(&self, record: &JobRecord) -> Result<(), JobError> {
        let path = self.path(&record.spec.job_id);
        let tmp = self.dir.join(format!(".{}.tmp", record.spec.job_id));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|source| JobError::Persist { path: path.clone(), source })
    }

    /// Starts a job, or returns the existing one with this id (see the module documentation).
    ///
    /// The record is written and fsynced on a blocking thread, outside the job table's lock:
    /// starts of different jobs (a coordinator starting many phases at once) do not wait for
    /// each other's disk writes. A second start of an id whose first start is still being
    /// recorded waits for that record, so no caller hears "started" before it is durable.
    pub async fn start(self: &Arc<Self>, spec: JobSpec) -> Result<JobRecord, JobError> {
        if !valid_id(&spec.job_id) {
            return Err(JobError::InvalidId(spec.job_id));
        }
        let known = self.lock().get(&spec.job_id).cloned();
        let entry = match known {
            Some(e) => return self.existing(e, &spec).await,
            None => self.insert_new(spec)?,
        };
        let entry = match entry {
            Ok(e) => e,
            Err((e, spec)) => return self.existing(e, &spec).await,
        };
        // Durable before it runs: after a crash the agent knows the job existed.
        if let Err(err) = self.persist_off_thread(entry.get()).await {
            self.lock().remove(&entry.get().spec.job_id);
            entry.durable.send_replace(DURABLE_FAILED);
            return Err(err);
        }
        entry.durable.send_replace(DURABLE_YES);
        tracing::info!(job = %entry.get().spec.job_id, phase = %entry.get().spec.phase, "job started");
        self.spawn(Arc::clone(&entry));
        Ok(entry.get())
    }

    /// Puts a new job in the table, not yet durable; or hands back the entry another start put
    /// there meanwhile.
    #[allow(clippy::type_complexity)]
    fn insert_new(&self, spec: JobSpec) -> Result<Result<Arc<JobEntry>, (Arc<JobEntry>, JobSpec)>, JobError> {
        let mut jobs = self.lock();
        if let Some(e) = jobs.get(&spec.job_id) {
            return Ok(Err((Arc::clone(e), spec)));
        }
        let Some(runner) = self.runners.get(&spec.phase) else {
            return Err(JobError::UnknownPhase {
                job_id: spec.job_id,
                phase: spec.phase,
                known: self.phases().join(", "),
            });
        };
        let record = JobRecord {
            v: JOB_RECORD_VERSION,
            resumable: runner.resumable(),
            spec,
            state: JobState::Running,
            started_at_ms: now_ms(),
            finished_at_ms: 0,
            attempt: 1,
            progress: JobProgress { message: "starting".into(), ..Default::default() },
            error: None,
            result: None,
        };
        let e = JobEntry::with_durability(record, &self.shutdown, DURABLE_PENDING);
        jobs.insert(e.get().spec.job_id.clone(), Arc::clone(&e));
        Ok(Ok(e))
    }

    /// A start of an id already known: the same job if the request matches, once its start is
    /// on disk.
    async fn existing(&self, e: Arc<JobEntry>, spec: &JobSpec) -> Result<JobRecord, JobError> {
        let r = e.get();
        if r.spec.phase != spec.phase || r.spec.params != spec.params {
            return Err(JobError::Conflict { job_id: spec.job_id.clone(), existing_phase: r.spec.phase });
        }
        let mut durable = e.durable.subscribe();
        let state = durable.wait_for(|d| *d != DURABLE_PENDING).await.map(|d| *d).unwrap_or(DURABLE_FAILED);
        if state == DURABLE_FAILED {
            return Err(JobError::Persist {
                path: self.path(&spec.job_id),
                source: std::io::Error::other("the first start of this job could not be recorded"),
            });
        }
        Ok(e.get())
    }

    async fn persist_off_thread(self: &Arc<Self>, record: JobRecord) -> Result<(), JobError> {
        let mgr = Arc::clone(self);
        let path = self.path(&record.spec.job_id);
        tokio::task::spawn_blocking(move || mgr.persist(&record))
            .await
            .map_err(|e| JobError::Persist { path, source: std::io::Error::other(e) })?
    }

    fn spawn(self: &Arc<Self>, entry: Arc<JobEntry>) {
        let mgr = Arc::clone(self);
        tokio::spawn(async move {
            let record = entry.get();
            let Some(runner) = mgr.runners.get(&record.spec.phase).cloned() else { return };
            let wait = record.spec.not_before_ms.saturating_sub(now_ms());
            if wait > 0 && record.attempt == 1 {
                entry.update(|r| {
                    r.progress.message = format!("waiting {wait} ms to start at the same moment as the other nodes")
                });
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_millis(wait)) => {}
                    _ = entry.cancel.cancelled() => {}
                }
            }
            let permit = tokio::select! {
                p = Arc::clone(&mgr.slots).acquire_owned() => p.ok(),
                _ = entry.cancel.cancelled() => None,
            };
            let outcome = if permit.is_none() {
                Err(PhaseError::cancelled())
            } else {
                entry.update(|r| r.progress.message = "running".into());
                let ctx = JobContext {
                    job_id: record.spec.job_id.clone(),
                    params: record.spec.params.clone(),
                    attempt: record.attempt,
                    cancel: entry.cancel.clone(),
                    progress: ProgressReporter { entry: Arc::clone(&entry) },
                };
                // A panicking phase must not leave its job "running" forever.
                match tokio::spawn(async move { runner.run(ctx).await }).await {
                    Ok(r) => r,
                    Err(e) => {
                        Err(PhaseError::new(format!("phase {} panicked: {e}", record.spec.phase), RetryClass::Backoff))
                    }
                }
            };
            drop(permit);
            if mgr.shutdown.is_cancelled() && record.resumable && outcome.as_ref().is_err_and(|e| e.cancelled) {
                // Agent shutdown, not a cancel request: leave it "running" on disk so the next
                // start resumes it.
                tracing::info!(job = %record.spec.job_id, "job interrupted by shutdown; it resumes at the next start");
                return;
            }
            let finished = entry.update(|r| {
                r.finished_at_ms = now_ms();
                match outcome {
                    Ok(v) => {
                        r.state = JobState::Succeeded;
                        r.result = Some(v);
                        r.progress.message = "done".into();
                    }
                    Err(_) if mgr.shutdown.is_cancelled() => {
                        r.state = JobState::Failed;
                        r.progress.message = "failed".into();
                        r.error = Some(PhaseError::new(
                            format!(
                                "the agent shut down while job {} (phase {}) was running, and this phase cannot resume: start it again under a new job id",
                                r.spec.job_id, r.spec.phase
                            ),
                            RetryClass::Now,
                        ));
                    }
                    Err(e) if e.cancelled || entry.cancel.is_cancelled() => {
                        r.state = JobState::Cancelled;
                        r.error = Some(PhaseError { cancelled: true, ..e.redacted() });
                        r.progress.message = "cancelled".into();
                    }
                    Err(e) => {
                        r.state = JobState::Failed;
                        r.progress.message = "failed".into();
                        // Recorded on disk and sent to the coordinator: no secret in it.
                        r.error = Some(e.redacted());
                    }
                }
            });
            if let Err(e) = mgr.persist_off_thread(finished.clone()).await {
                tracing::error!(job = %finished.spec.job_id, error = %e, "cannot record the job's outcome");
            }
            tracing::info!(job = %finished.spec.job_id, state = ?finished.state, "job finished");
            mgr.prune();
        });
    }

    /// The job's status.
    pub fn get(&self, job_id: &str) -> Result<JobRecord, JobError> {
        self.lock().get(job_id).map(|e| e.get()).ok_or_else(|| JobError::NotFound(job_id.to_owned()))
    }

    /// A receiver that sees every change of the job.
    pub fn watch(&self, job_id: &str) -> Result<watch::Receiver<JobRecord>, JobError> {
        self.lock().get(job_id).map(|e| e.watch.subscribe()).ok_or_else(|| JobError::NotFound(job_id.to_owned()))
    }

    /// Asks the job to stop. Finished jobs are returned unchanged.
    pub fn cancel(&self, job_id: &str) -> Result<JobRecord, JobError> {
        let e = self.lock().get(job_id).cloned().ok_or_else(|| JobError::NotFound(job_id.to_owned()))?;
        if !e.get().state.is_terminal() {
            tracing::info!(job = job_id, "cancel requested");
            e.cancel.cancel();
        }
        Ok(e.get())
    }

    /// Running jobs, then finished ones newest first (at most `limit` of those; 0 = all).
    pub fn list(&self, limit: usize) -> Vec<JobRecord> {
        let mut all: Vec<JobRecord> = self.lock().values().map(|e| e.get()).collect();
        all.sort_by_key(|r| (r.state.is_terminal(), std::cmp::Reverse(r.started_at_ms)));
        let running = all.iter().filter(|r| !r.state.is_terminal()).count();
        if limit > 0 {
            all.truncate(running + limit);
        }
        all
    }

    /// Number of running jobs.
    pub fn running(&self) -> usize {
        self.lock().values().filter(|e| !e.get().state.is_terminal()).count()
    }

    /// Drops the oldest finished records beyond `keep_finished`.
    fn prune(&self) {
        let mut finished: Vec<(u64, String)> = self
            .lock()
            .values()
            .map(|e| e.get())
            .filter(|r| r.state.is_terminal())
            .map(|r| (r.finished_at_ms, r.spec.job_id))
            .collect();
        if finished.len() <= self.config.keep_finished {
            return;
        }
        finished.sort();
        let excess = finished.len() - self.config.keep_finished;
        for (_, id) in finished.into_iter().take(excess) {
            self.lock().remove(&id);
            let _ = std::fs::remove_file(self.path(&id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn wait_state(mgr: &JobManager, id: &str, state: JobState) -> JobRecord {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = mgr.get(id).unwrap();
            if r.state == state {
                return r;
            }
            assert!(std::time::Instant::now() < deadline, "job {id} stuck in {:?}", r.state);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn spec(id: &str, phase: &str, ms: u64) -> JobSpec {
        JobSpec {
            job_id: id.into(),
            phase: phase.into(),
            params: serde_json::json!({ "duration_ms": ms, "steps": 4 }),
            operation_id: "op1".into(),
            not_before_ms: 0,
        }
    }

    fn runners() -> Vec<Arc<dyn PhaseRunner>> {
        synthetic::all()
    }

    #[tokio::test]
    async fn start_is_idempotent_and_conflicts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mgr = JobManager::open(dir.path(), runners(), JobsConfig::default(), CancellationToken::new()).unwrap();
        let a = mgr.start(spec("j1", "synthetic.sleep", 50)).await.unwrap();
        assert_eq!(a.state, JobState::Running);
        let b = mgr.start(spec("j1", "synthetic.sleep", 50)).await.unwrap();
        assert_eq!(b.started_at_ms, a.started_at_ms);
        let e = mgr.start(spec("j1", "synthetic.sleep", 51)).await.unwrap_err();
        assert!(matches!(e, JobError::Conflict { .. }), "{e}");
        let e = mgr.start(spec("j2", "nope", 1)).await.unwrap_err();
        assert!(e.to_string().contains("synthetic.sleep"), "{e}");
        assert!(matches!(mgr.start(spec("../x", "synthetic.sleep", 1)).await, Err(JobError::InvalidId(_))));
        let done = wait_state(&mgr, "j1", JobState::Succeeded).await;
        assert_eq!(done.result.unwrap()["steps"], 4);
        // Finished: starting again returns the finished job, it does not run twice.
        assert_eq!(mgr.start(spec("j1", "synthetic.sleep", 50)).await.unwrap().state, JobState::Succeeded);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn not_before_delays_the_phase_and_concurrent_starts_agree() {
        let dir = tempfile::tempdir().unwrap();
        let mgr = JobManager::open(dir.path(), runners(), JobsConfig::default(), CancellationToken::new()).unwrap();
        let at = now_ms() + 400;
        let mut s = spec("later", "synthetic.sleep", 20);
        s.not_before_ms = at;
        // Two starts of the same id at once (a coordinator retrying): both answer the same job.
        let (a, b) = tokio::join!(mgr.start(s.clone()), mgr.start(s.clone()));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.started_at_ms, b.started_at_ms);
        assert!(dir.path().join("later.json").exists(), "answered before the record was on disk");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let waiting = mgr.get("later").unwrap();
        assert!(waiting.progress.message.contains("waiting"), "{:?}", waiting.progress);
        // The time is not part of the idempotency check: a re-attach without it finds the job.
        let mut again = s.clone();
        again.not_before_ms = 0;
        assert_eq!(mgr.start(again).await.unwrap().started_at_ms, a.started_at_ms);
        let done = wait_state(&mgr, "later", JobState::Succeeded).await;
        assert!(done.finished_at_ms >= at + 20, "finished at {} before {at} + 20 ms", done.finished_at_ms);
        // A cancel during the wait ends it without running the phase.
        let mut c = spec("cancelled", "synthetic.sleep", 20);
        c.not_before_ms = now_ms() + 60_000;
        mgr.start(c).await.unwrap();
        mgr.cancel("cancelled").unwrap();
        wait_state(&mgr, "cancelled", JobState::Cancelled).await;
    }

    #[tokio::test]
    async fn cancel_and_failure() {
        let dir = tempfile::tempdir().unwrap();
        let mgr = JobManager::open(dir.path(), runners(), JobsConfig::default(), CancellationToken::new()).unwrap();
        mgr.start(spec("long", "synthetic.sleep", 60_000)).await.unwrap();
        mgr.cancel("long").unwrap();
        let r = wait_state(&mgr, "long", JobState::Cancelled).await;
        assert!(r.error.unwrap().cancelled);
        let mut s = spec("bad", "synthetic.sleep", 1);
        s.params["fail"] = serde_json::json!("disk on fire");
        mgr.start(s).await.unwrap();
        let r = wait_state(&mgr, "bad", JobState::Failed).await;
        assert!(r.error.unwrap().message.contains("disk on fire"));
        assert!(matches!(mgr.get("zzz"), Err(JobError::NotFound(_))));
    }

    #[tokio::test]
    async fn restart_resumes_resumable_jobs_and_fails_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let shutdown = CancellationToken::new();
        {
            let mgr = JobManager::open(dir.path(), runners(), JobsConfig::default(), shutdown.clone()).unwrap();
            mgr.start(spec("r", "synthetic.sleep", 300)).await.unwrap();
            mgr.start(spec("o", "synthetic.sleep-once", 60_000)).await.unwrap();
            mgr.start(spec("f", "synthetic.sleep", 1)).await.unwrap();
            wait_state(&mgr, "f", JobState::Succeeded).await;
            // Simulate a crash: the records on disk still say "running" for r and o.
            shutdown.cancel();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mgr = JobManager::open(dir.path(), runners(), JobsConfig::default(), CancellationToken::new()).unwrap();
        assert_eq!(mgr.get("f").unwrap().state, JobState::Succeeded);
        let o = mgr.get("o").unwrap();
        assert_eq!(o.state, JobState::Failed);
        assert!(o.error.unwrap().message.contains("cannot resume"));
        let r = wait_state(&mgr, "r", JobState::Succeeded).await;
        assert_eq!(r.attempt, 2);
    }

    #[tokio::test]
    async fn old_finished_records_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = JobsConfig { keep_finished: 2, ..Default::default() };
        let mgr = JobManager::open(dir.path(), runners(), cfg, CancellationToken::new()).unwrap();
        for i in 0..4 {
            let id = format!("p{i}");
            mgr.start(spec(&id, "synthetic.sleep", 1)).await.unwrap();
            wait_state(&mgr, &id, JobState::Succeeded).await;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        let ids: Vec<String> = mgr.list(0).into_iter().map(|r| r.spec.job_id).collect();
        assert_eq!(ids, vec!["p3", "p2"]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
