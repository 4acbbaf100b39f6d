//! Backup schedules: records and commands in the replicated state, cron slots in a time zone, and
//! the leader's ticker that claims each slot through raft before it starts the run.
//!
//! - **Exactly one run per slot.** A run is started only after a [`ScheduleCommand::Claim`] for
//!   its slot committed; the state machine rejects a second claim of the same slot (and, for cron
//!   runs, any slot not newer than the last settled one). The run's operation id is derived from
//!   the slot (`sched-<name>-<slot ms>`), so a new leader that finds a claimed run re-attaches to
//!   (or starts, idempotently) the same operation instead of starting another.
//! - **Window and catch-up.** A slot may start up to `window` after its time. Slots that passed
//!   while no leader ran them (the coordinator was down) are *missed*: recorded on the schedule
//!   and shown by `cassette schedule show`. With catch-up `latest` the newest missed slot is run
//!   late, once; with `none` the schedule waits for its next slot.
//! - **Retries.** A launch that fails is retried with exponential backoff up to `max_attempts`;
//!   then the run is failed with the last error (a cluster unreachable for that long).
//! - **Retention.** After a successful run the schedule's policy (keep-last, keep-within, over
//!   the backups tagged with the schedule's name) is applied through the launcher's purge.
//!
//! The ticker starts backups through [`BackupLauncher`], a narrow seam the cluster backup
//! executor plugs into.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::kv::{KvError, Versioned, WriteBatch};
use crate::model::{self, Command, RunState};
use crate::state::StateMachine;

/// What to do with slots missed while no leader could run them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// Run the newest missed slot once, as soon as possible.
    #[default]
    Latest,
    /// Report missed slots only; wait for the next slot.
    None,
}

/// A slot that was not run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissedSlot {
    /// The slot (ms since the epoch).
    pub slot_ms: u64,
    /// When the leader noticed.
    pub noticed_at_ms: u64,
    /// Why.
    pub reason: String,
}

/// How many missed slots a schedule remembers.
pub const MISSED_KEPT: usize = 50;

/// A backup schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleRecord {
    /// Name (unique); also the tag of its backups.
    pub name: String,
    /// The registered cluster.
    pub cluster: String,
    /// Cron expression (5 fields, or 6 with seconds first).
    pub cron: String,
    /// IANA time zone the expression is read in (`UTC`, `Europe/Paris`).
    pub timezone: String,
    /// How long after its slot a run may still start (ms).
    pub window_ms: u64,
    /// Keyspaces and tables (empty: the default set).
    pub entities: Vec<String>,
    /// Datacenters (empty: all).
    pub datacenters: Vec<String>,
    /// Retention: keep the newest N of this schedule's backups.
    pub keep_last: Option<u32>,
    /// Retention: keep this schedule's backups started within this long (ms).
    pub keep_within_ms: Option<u64>,
    /// Catch-up policy.
    pub catch_up: CatchUp,
    /// Launch attempts per run.
    pub max_attempts: u32,
    /// First retry delay (ms); doubles each attempt.
    pub retry_backoff_ms: u64,
    /// Paused schedules claim no slots.
    pub paused: bool,
    /// Created.
    pub created_at_ms: u64,
    /// Slots up to this one are settled (run, or judged missed).
    pub settled_ms: u64,
    /// Recently missed slots, newest last.
    pub missed: Vec<MissedSlot>,
}

impl Versioned for ScheduleRecord {
    const KIND: &'static str = "schedule";
    const VERSION: u32 = 1;
}

/// One claimed run of a schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The schedule.
    pub schedule: String,
    /// The slot (ms); for `run-now`, the time of the request.
    pub slot_ms: u64,
    /// The operation it starts (derived from the slot: starting it twice is the same operation).
    pub operation_id: String,
    /// Replica that claimed it.
    pub claimed_by: u64,
    /// When.
    pub claimed_at_ms: u64,
    /// Started by `run-now`.
    pub manual: bool,
    /// Pending (claimed, not launched), running, succeeded, failed.
    pub state: RunState,
    /// Launch attempts so far.
    pub attempts: u32,
    /// Not before this (ms) for the next attempt.
    pub next_attempt_ms: u64,
    /// Last error.
    pub error: String,
    /// Ended.
    pub finished_at_ms: u64,
    /// What retention did afterwards.
    pub retention: String,
}

impl Versioned for RunRecord {
    const KIND: &'static str = "schedule_run";
    const VERSION: u32 = 1;
}

/// Changes to schedules and their runs (inside [`Command::Schedule`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ScheduleCommand {
    /// Creates (or replaces) a schedule.
    Put {
        /// The schedule.
        schedule: ScheduleRecord,
        /// Replace an existing one (keeps its settled slot and missed list).
        replace: bool,
    },
    /// Pauses or resumes.
    SetPaused {
        /// Name.
        name: String,
        /// Paused.
        paused: bool,
    },
    /// Deletes a schedule and its run records.
    Delete {
        /// Name.
        name: String,
    },
    /// Claims a slot: committed before the run starts; a slot is claimed once.
    Claim {
        /// Schedule.
        name: String,
        /// The slot.
        slot_ms: u64,
        /// `run-now` (not a cron slot).
        manual: bool,
        /// Slots judged missed on the way (settled without a run).
        missed: Vec<MissedSlot>,
        /// Claiming replica.
        by: u64,
        /// When.
        at_ms: u64,
    },
    /// Settles missed slots without a run (catch-up `none`).
    Skip {
        /// Schedule.
        name: String,
        /// The missed slots.
        missed: Vec<MissedSlot>,
    },
    /// Records a run's progress.
    UpdateRun {
        /// Schedule.
        name: String,
        /// Slot.
        slot_ms: u64,
        /// New state.
        state: RunState,
        /// Attempts so far.
        attempts: u32,
        /// Next attempt not before.
        next_attempt_ms: u64,
        /// Error.
        error: String,
        /// Retention summary.
        retention: String,
        /// When.
        at_ms: u64,
    },
}

/// Keys.
pub mod keys {
    /// A schedule.
    pub fn schedule(name: &str) -> String {
        format!("s/schedule/{name}")
    }
    /// Every schedule.
    pub const SCHEDULES: &str = "s/schedule/";
    /// A run.
    pub fn run(name: &str, slot_ms: u64) -> String {
        format!("s/schedrun/{name}/{slot_ms:020}")
    }
    /// A schedule's runs.
    pub fn runs(name: &str) -> String {
        format!("s/schedrun/{name}/")
    }
}

/// The operation id of a slot's run.
pub fn operation_id(name: &str, slot_ms: u64) -> String {
    format!("sched-{name}-{slot_ms}")
}

/// Reads every schedule.
pub fn schedules(sm: &StateMachine) -> Result<Vec<ScheduleRecord>, KvError> {
    sm.read_prefix(keys::SCHEDULES)
}

/// Reads one schedule.
pub fn schedule(sm: &StateMachine, name: &str) -> Result<Option<ScheduleRecord>, KvError> {
    sm.read(&keys::schedule(name))
}

/// A schedule's runs, oldest first.
pub fn runs(sm: &StateMachine, name: &str) -> Result<Vec<RunRecord>, KvError> {
    sm.read_prefix(&keys::runs(name))
}

/// Checks a schedule's settings; the error says what is wrong and how to fix it.
pub fn validate(s: &ScheduleRecord) -> Result<(), String> {
    if !model::valid_name(&s.name) {
        return Err(format!("invalid schedule name {:?}: use letters, digits, '.', '_' and '-'", s.name));
    }
    parse_cron(&s.cron)?;
    parse_tz(&s.timezone)?;
    if s.keep_last == Some(0) && s.keep_within_ms.is_none_or(|d| d == 0) {
        return Err("--keep-last 0 keeps nothing: give at least 1, or --keep-within".into());
    }
    if s.max_attempts == 0 {
        return Err("--max-attempts must be at least 1".into());
    }
    Ok(())
}

fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    croner::Cron::from_str(expr).map_err(|e| {
        format!("invalid cron expression {expr:?}: {e} (five fields: minute hour day-of-month month day-of-week, e.g. \"0 2 * * *\")")
    })
}

fn parse_tz(tz: &str) -> Result<chrono_tz::Tz, String> {
    tz.parse::<chrono_tz::Tz>()
        .map_err(|_| format!("unknown time zone {tz:?}: use an IANA name such as UTC, Europe/Paris, America/New_York"))
}

fn to_utc_ms(t: DateTime<Utc>) -> u64 {
    t.timestamp_millis().max(0) as u64
}

/// The slots of `s` after `after_ms` up to `until_ms` (at most `limit`, the newest kept).
pub fn slots_between(s: &ScheduleRecord, after_ms: u64, until_ms: u64, limit: usize) -> Result<Vec<u64>, String> {
    let cron = parse_cron(&s.cron)?;
    let tz = parse_tz(&s.timezone)?;
    let mut t =
        tz.from_utc_datetime(&Utc.timestamp_millis_opt(after_ms as i64).single().unwrap_or_default().naive_utc());
    let mut out = std::collections::VecDeque::new();
    loop {
        let next = cron.find_next_occurrence(&t, false).map_err(|e| format!("cron {:?}: {e}", s.cron))?;
        let ms = to_utc_ms(next.with_timezone(&Utc));
        if ms > until_ms {
            break;
        }
        out.push_back(ms);
        if out.len() > limit {
            out.pop_front();
        }
        t = next;
    }
    Ok(out.into())
}

/// The next slot after `now_ms`.
pub fn next_slot(s: &ScheduleRecord, now_ms: u64) -> Option<u64> {
    let cron = parse_cron(&s.cron).ok()?;
    let tz = parse_tz(&s.timezone).ok()?;
    let t = tz.from_utc_datetime(&Utc.timestamp_millis_opt(now_ms as i64).single()?.naive_utc());
    cron.find_next_occurrence(&t, false).ok().map(|n| to_utc_ms(n.with_timezone(&Utc)))
}

/// What the ticker should do for a schedule now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Due {
    /// Claim and run this slot.
    pub run: Option<u64>,
    /// Settle these slots as missed.
    pub missed: Vec<MissedSlot>,
}

/// Decides, for an unpaused schedule, which slot to run and which were missed.
pub fn due(s: &ScheduleRecord, now_ms: u64) -> Result<Due, String> {
    let after = s.settled_ms.max(s.created_at_ms);
    let slots = slots_between(s, after, now_ms, MISSED_KEPT + 1)?;
    let Some(&latest) = slots.last() else { return Ok(Due::default()) };
    let miss = |slot: u64, reason: &str| MissedSlot { slot_ms: slot, noticed_at_ms: now_ms, reason: reason.into() };
    let mut d = Due::default();
    for &slot in &slots[..slots.len() - 1] {
        d.missed.push(miss(slot, "no coordinator leader ran it in time"));
    }
    if now_ms.saturating_sub(latest) <= s.window_ms {
        d.run = Some(latest);
    } else {
        match s.catch_up {
            CatchUp::Latest => d.run = Some(latest),
            CatchUp::None => {
                d.missed.push(miss(latest, "its window passed before a leader could run it (catch-up: none)"))
            }
        }
    }
    Ok(d)
}

/// Applies a schedule command (called by the state machine). `Ok(Err(reason))` rejects it.
pub fn apply(sm: &StateMachine, cmd: &ScheduleCommand, b: &mut WriteBatch) -> Result<Result<(), String>, KvError> {
    match cmd {
        ScheduleCommand::Put { schedule: s, replace } => {
            if let Err(e) = validate(s) {
                return Ok(Err(e));
            }
            if sm.cluster(&s.cluster)?.is_none() {
                return Ok(Err(format!(
                    "no cluster {} is registered: add it with `cassette cluster add` first",
                    s.cluster
                )));
            }
            let mut s = s.clone();
            match schedule(sm, &s.name)? {
                Some(_) if !replace => {
                    return Ok(Err(format!("schedule {} already exists; delete it first or pass --replace", s.name)));
                }
                Some(old) => {
                    s.settled_ms = old.settled_ms;
                    s.missed = old.missed;
                    s.created_at_ms = old.created_at_ms;
                }
                None => {}
            }
            b.put(keys::schedule(&s.name), s.encode());
        }
        ScheduleCommand::SetPaused { name, paused } => {
            let Some(mut s) = schedule(sm, name)? else { return Ok(Err(format!("no schedule {name}"))) };
            s.paused = *paused;
            b.put(keys::schedule(name), s.encode());
        }
        ScheduleCommand::Delete { name } => {
            if schedule(sm, name)?.is_none() {
                return Ok(Err(format!("no schedule {name}")));
            }
            b.delete(keys::schedule(name));
            for r in runs(sm, name)? {
                b.delete(keys::run(name, r.slot_ms));
            }
        }
        ScheduleCommand::Claim { name, slot_ms, manual, missed, by, at_ms } => {
            let Some(mut s) = schedule(sm, name)? else { return Ok(Err(format!("no schedule {name}"))) };
            if sm.read::<RunRecord>(&keys::run(name, *slot_ms))?.is_some() {
                return Ok(Err(format!("slot {slot_ms} of schedule {name} is already claimed")));
            }
            if !manual {
                if s.paused {
                    return Ok(Err(format!("schedule {name} is paused")));
                }
                if *slot_ms <= s.settled_ms {
                    return Ok(Err(format!("slot {slot_ms} of schedule {name} is already settled")));
                }
                s.settled_ms = *slot_ms;
            }
            settle_missed(&mut s, missed);
            b.put(keys::schedule(name), s.encode());
            let run = RunRecord {
                schedule: name.clone(),
                slot_ms: *slot_ms,
                operation_id: operation_id(name, *slot_ms),
                claimed_by: *by,
                claimed_at_ms: *at_ms,
                manual: *manual,
                state: RunState::Pending,
                attempts: 0,
                next_attempt_ms: 0,
                error: String::new(),
                finished_at_ms: 0,
                retention: String::new(),
            };
            b.put(keys::run(name, *slot_ms), run.encode());
        }
        ScheduleCommand::Skip { name, missed } => {
            let Some(mut s) = schedule(sm, name)? else { return Ok(Err(format!("no schedule {name}"))) };
            if missed.iter().all(|m| m.slot_ms <= s.settled_ms) {
                return Ok(Err(format!("those slots of schedule {name} are already settled")));
            }
            settle_missed(&mut s, missed);
            b.put(keys::schedule(name), s.encode());
        }
        ScheduleCommand::UpdateRun { name, slot_ms, state, attempts, next_attempt_ms, error, retention, at_ms } => {
            let Some(mut r) = sm.read::<RunRecord>(&keys::run(name, *slot_ms))? else {
                return Ok(Err(format!("no run of schedule {name} for slot {slot_ms}")));
            };
            r.state = *state;
            r.attempts = *attempts;
            r.next_attempt_ms = *next_attempt_ms;
            r.error = error.clone();
            r.retention = retention.clone();
            if state.is_terminal() {
                r.finished_at_ms = *at_ms;
            }
            b.put(keys::run(name, *slot_ms), r.encode());
        }
    }
    Ok(Ok(()))
}

fn settle_missed(s: &mut ScheduleRecord, missed: &[MissedSlot]) {
    for m in missed {
        if m.slot_ms > s.settled_ms || !s.missed.iter().any(|x| x.slot_ms == m.slot_ms) {
            s.settled_ms = s.settled_ms.max(m.slot_ms);
            s.missed.push(m.clone());
        }
    }
    let excess = s.missed.len().saturating_sub(MISSED_KEPT);
    s.missed.drain(..excess);
}

/// A backup the scheduler asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledBackup {
    /// The operation id (derived from the slot: the same id on every attempt and every leader).
    pub operation_id: String,
    /// Cluster.
    pub cluster: String,
    /// Tag of the backup: the schedule's name.
    pub tag: String,
    /// Entities.
    pub entities: Vec<String>,
    /// Datacenters.
    pub datacenters: Vec<String>,
}

/// Retention the scheduler asks for after a successful run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledRetention {
    /// Cluster.
    pub cluster: String,
    /// Only backups with this tag (the schedule's name).
    pub tag: String,
    /// Keep the newest N.
    pub keep_last: Option<u32>,
    /// Keep those started within this long (ms).
    pub keep_within_ms: Option<u64>,
    /// Backups of running operations to keep whatever the policy says.
    pub protect: Vec<String>,
}

/// Where a launched operation stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchStatus {
    /// Still running.
    Running,
    /// Done.
    Succeeded,
    /// Failed for good.
    Failed(String),
}

/// Starts and observes cluster backups for the scheduler (the cluster backup executor
/// implements it). `start_backup` must be idempotent per operation id: a new leader calls it
/// again for a run its predecessor claimed.
#[async_trait::async_trait]
pub trait BackupLauncher: Send + Sync {
    /// Starts (or re-attaches to) the backup.
    async fn start_backup(&self, spec: &ScheduledBackup) -> Result<(), String>;
    /// Its state.
    async fn status(&self, operation_id: &str) -> Result<LaunchStatus, String>;
    /// Applies retention (the purge phase on one agent of the cluster); returns a summary.
    async fn apply_retention(&self, retention: &ScheduledRetention) -> Result<String, String>;
}

/// The replicated state as the ticker needs it (a raft handle; a plain state machine in tests).
#[async_trait::async_trait]
pub trait Replicated: Send + Sync {
    /// Whether this replica leads (only the leader claims slots).
    fn is_leader(&self) -> bool;
    /// This replica's raft id.
    fn replica_id(&self) -> u64;
    /// The local state.
    fn state(&self) -> &StateMachine;
    /// Proposes a command and waits until it is applied; a rejection is an error.
    async fn propose(&self, cmd: &Command) -> Result<(), String>;
}

#[async_trait::async_trait]
impl Replicated for crate::raft::RaftHandle {
    fn is_leader(&self) -> bool {
        self.status().is_leader()
    }
    fn replica_id(&self) -> u64 {
        self.status().id
    }
    fn state(&self) -> &StateMachine {
        crate::raft::RaftHandle::state(self)
    }
    async fn propose(&self, cmd: &Command) -> Result<(), String> {
        crate::raft::RaftHandle::propose(self, cmd).await.map(|_| ()).map_err(|e| e.to_string())
    }
}

/// The leader's ticker.
pub struct Scheduler {
    state: Arc<dyn Replicated>,
    launcher: Arc<dyn BackupLauncher>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").finish_non_exhaustive()
    }
}

impl Scheduler {
    /// A ticker over `state` starting backups with `launcher`.
    pub fn new(state: Arc<dyn Replicated>, launcher: Arc<dyn BackupLauncher>) -> Self {
        Self { state, launcher }
    }

    /// Ticks every `every` until `stop` fires.
    pub async fn run(self, every: Duration, stop: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(e) = self.tick(model::now_ms()).await {
                tracing::warn!(error = %e, "schedule tick");
            }
        }
    }

    fn cmd(c: ScheduleCommand) -> Command {
        Command::Schedule(c)
    }

    /// One pass: claim due slots, launch claimed runs, follow running ones.
    pub async fn tick(&self, now_ms: u64) -> Result<(), String> {
        if !self.state.is_leader() {
            return Ok(());
        }
        let sm = self.state.state();
        let all = schedules(sm).map_err(|e| e.to_string())?;
        for s in &all {
            if s.paused {
                continue;
            }
            let d = due(s, now_ms)?;
            match d.run {
                Some(slot) => {
                    let claim = ScheduleCommand::Claim {
                        name: s.name.clone(),
                        slot_ms: slot,
                        manual: false,
                        missed: d.missed,
                        by: self.state.replica_id(),
                        at_ms: now_ms,
                    };
                    // A rejection means another leader claimed it first: nothing to do.
                    if let Err(e) = self.state.propose(&Self::cmd(claim)).await {
                        tracing::info!(schedule = %s.name, slot, "slot not claimed: {e}");
                    }
                }
                None if !d.missed.is_empty() => {
                    let _ = self
                        .state
                        .propose(&Self::cmd(ScheduleCommand::Skip { name: s.name.clone(), missed: d.missed }))
                        .await;
                }
                None => {}
            }
        }
        for s in &all {
            for r in runs(sm, &s.name).map_err(|e| e.to_string())? {
                self.advance(s, r, now_ms).await;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)] // one field of the run record each
    async fn update(
        &self,
        r: &RunRecord,
        state: RunState,
        attempts: u32,
        next: u64,
        error: String,
        retention: String,
        now_ms: u64,
    ) {
        let c = ScheduleCommand::UpdateRun {
            name: r.schedule.clone(),
            slot_ms: r.slot_ms,
            state,
            attempts,
            next_attempt_ms: next,
            error,
            retention,
            at_ms: now_ms,
        };
        if let Err(e) = self.state.propose(&Self::cmd(c)).await {
            tracing::warn!(schedule = %r.schedule, slot = r.slot_ms, "record run: {e}");
        }
    }

    async fn advance(&self, s: &ScheduleRecord, r: RunRecord, now_ms: u64) {
        match r.state {
            RunState::Pending if now_ms >= r.next_attempt_ms => {
                let spec = ScheduledBackup {
                    operation_id: r.operation_id.clone(),
                    cluster: s.cluster.clone(),
                    tag: s.name.clone(),
                    entities: s.entities.clone(),
                    datacenters: s.datacenters.clone(),
                };
                let attempts = r.attempts + 1;
                match self.launcher.start_backup(&spec).await {
                    Ok(()) => {
                        self.update(&r, RunState::Running, attempts, 0, String::new(), String::new(), now_ms).await
                    }
                    Err(e) if attempts >= s.max_attempts => {
                        let msg = format!("gave up after {attempts} attempt(s): {e}");
                        self.update(&r, RunState::Failed, attempts, 0, msg, String::new(), now_ms).await;
                    }
                    Err(e) => {
                        let delay = s.retry_backoff_ms.saturating_mul(1 << (attempts - 1).min(16));
                        self.update(&r, RunState::Pending, attempts, now_ms + delay, e, String::new(), now_ms).await;
                    }
                }
            }
            RunState::Running => match self.launcher.status(&r.operation_id).await {
                Ok(LaunchStatus::Running) | Err(_) => {}
                Ok(LaunchStatus::Failed(e)) => {
                    self.update(&r, RunState::Failed, r.attempts, 0, e, String::new(), now_ms).await;
                }
                Ok(LaunchStatus::Succeeded) => {
                    let retention = if s.keep_last.is_some() || s.keep_within_ms.is_some() {
                        let running: Vec<String> = runs(self.state.state(), &s.name)
                            .unwrap_or_default()
                            .into_iter()
                            .filter(|x| !x.state.is_terminal() && x.slot_ms != r.slot_ms)
                            .map(|x| x.operation_id)
                            .collect();
                        let ret = ScheduledRetention {
                            cluster: s.cluster.clone(),
                            tag: s.name.clone(),
                            keep_last: s.keep_last,
                            keep_within_ms: s.keep_within_ms,
                            protect: running,
                        };
                        match self.launcher.apply_retention(&ret).await {
                            Ok(summary) => summary,
                            Err(e) => format!("retention failed (the next run tries again): {e}"),
                        }
                    } else {
                        "no retention policy".into()
                    };
                    self.update(&r, RunState::Succeeded, r.attempts, 0, String::new(), retention, now_ms).await;
                }
            },
            _ => {}
        }
    }
}

/// The schedules' ticker as a replica worker: it acts only while the replica leads.
pub fn spawn(
    raft: crate::raft::RaftHandle,
    executor: Arc<crate::executor::Executor>,
    every: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) -> cassette_common::worker::WorkerHandle {
    let launcher: Arc<dyn BackupLauncher> = Arc::new(ExecutorLauncher { executor });
    let scheduler = Arc::new(Scheduler::new(Arc::new(raft), launcher));
    cassette_common::worker::spawn_periodic("schedules", every, shutdown, move |state| {
        let s = Arc::clone(&scheduler);
        async move {
            if !s.state.is_leader() {
                state.set("idle (not the leader)");
                return;
            }
            match s.tick(model::now_ms()).await {
                Ok(()) => state.set("ticking"),
                Err(e) => {
                    tracing::warn!(error = %e, "schedule tick");
                    state.set(format!("tick failed: {e}"));
                }
            }
        }
    })
}

/// Runs scheduled backups and their retention through the cluster operations executor.
pub struct ExecutorLauncher {
    /// The replica's executor.
    pub executor: Arc<crate::executor::Executor>,
}

impl std::fmt::Debug for ExecutorLauncher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutorLauncher").finish_non_exhaustive()
    }
}

/// How long retention may take before the run is recorded without it (the purge operation
/// goes on; the next run's retention sees what it removed).
const RETENTION_WAIT: Duration = Duration::from_secs(600);

#[async_trait::async_trait]
impl BackupLauncher for ExecutorLauncher {
    async fn start_backup(&self, spec: &ScheduledBackup) -> Result<(), String> {
        let b = crate::executor::plan::BackupSpec {
            cluster: spec.cluster.clone(),
            entities: spec.entities.join(","),
            datacenters: spec.datacenters.clone(),
            tag: Some(spec.tag.clone()),
            ..Default::default()
        };
        self.executor.start_backup_as(b, &spec.operation_id).await.map(|_| ()).map_err(|e| e.to_string())
    }

    async fn status(&self, operation_id: &str) -> Result<LaunchStatus, String> {
        let op = self
            .executor
            .raft()
            .state()
            .operation(operation_id)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("operation {operation_id} is not in the state"))?;
        Ok(match op.state {
            RunState::Succeeded => LaunchStatus::Succeeded,
            RunState::Failed | RunState::Cancelled => LaunchStatus::Failed(if op.error.is_empty() {
                format!("operation {operation_id} {:?}", op.state).to_lowercase()
            } else {
                op.error
            }),
            _ => LaunchStatus::Running,
        })
    }

    async fn apply_retention(&self, r: &ScheduledRetention) -> Result<String, String> {
        let sm = self.executor.raft().state();
        // The scheduler names running runs by operation id; the purge protects backup ids.
        let mut protect = Vec::new();
        for op_id in &r.protect {
            if let Some(op) = sm.operation(op_id).map_err(|e| e.to_string())?
                && let Some(id) = op.spec.get("backup_id").and_then(|v| v.as_str())
            {
                protect.push(id.to_owned());
            }
        }
        let spec = crate::executor::plan::PurgeSpec {
            cluster: r.cluster.clone(),
            tag: Some(r.tag.clone()),
            keep_last: r.keep_last,
            keep_within: r.keep_within_ms.map(|ms| humantime::format_duration(Duration::from_millis(ms)).to_string()),
            protect,
            ..Default::default()
        };
        let id = self.executor.start_purge(spec, "").await.map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + RETENTION_WAIT;
        loop {
            let op = sm.operation(&id).map_err(|e| e.to_string())?;
            if let Some(op) = op.filter(|o| o.state.is_terminal()) {
                if op.state != RunState::Succeeded {
                    return Err(format!("{id}: {}", op.error));
                }
                let phases = sm.phases(&id).map_err(|e| e.to_string())?;
                let mut removed = Vec::new();
                let mut kept = 0;
                for p in phases.iter().filter(|p| p.phase == cassette_common::phases::BACKUP_PURGE) {
                    for v in p.summary["backups"].as_array().into_iter().flatten() {
                        if v["kept"].as_bool() == Some(false) {
                            removed.push(v["backup_id"].as_str().unwrap_or_default().to_owned());
                        } else {
                            kept += 1;
                        }
                    }
                }
                return Ok(format!(
                    "{id}: removed {} backup(s){}, kept {kept}",
                    removed.len(),
                    if removed.is_empty() { String::new() } else { format!(" ({})", removed.join(", ")) }
                ));
            }
            if tokio::time::Instant::now() > deadline {
                return Ok(format!("{id} still running after {RETENTION_WAIT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::kv::Kv;
    use crate::model::ClusterRecord;

    /// A state machine applied in place; several "replicas" share it (as committed state is shared).
    struct Local {
        sm: Arc<StateMachine>,
        index: Arc<AtomicU64>,
        id: u64,
        leader: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl Replicated for Local {
        fn is_leader(&self) -> bool {
            self.leader.load(Ordering::SeqCst)
        }
        fn replica_id(&self) -> u64 {
            self.id
        }
        fn state(&self) -> &StateMachine {
            &self.sm
        }
        async fn propose(&self, cmd: &Command) -> Result<(), String> {
            let i = self.index.fetch_add(1, Ordering::SeqCst) + 1;
            let (b, out) = self.sm.apply(i, 1, cmd).map_err(|e| e.to_string())?;
            self.sm.tree_apply(b).map_err(|e| e.to_string())?;
            out.map(|_| ()).map_err(|r| r.0)
        }
    }

    #[derive(Default)]
    struct Recording {
        started: Mutex<Vec<String>>,
        fail_starts: AtomicU64,
        status: Mutex<BTreeMap<String, LaunchStatus>>,
        retention: Mutex<Vec<ScheduledRetention>>,
    }

    #[async_trait::async_trait]
    impl BackupLauncher for Recording {
        async fn start_backup(&self, spec: &ScheduledBackup) -> Result<(), String> {
            if self.fail_starts.load(Ordering::SeqCst) > 0 {
                self.fail_starts.fetch_sub(1, Ordering::SeqCst);
                return Err("cluster unreachable".into());
            }
            self.started.lock().unwrap().push(spec.operation_id.clone());
            self.status.lock().unwrap().insert(spec.operation_id.clone(), LaunchStatus::Running);
            Ok(())
        }
        async fn status(&self, op: &str) -> Result<LaunchStatus, String> {
            self.status.lock().unwrap().get(op).cloned().ok_or_else(|| "unknown".into())
        }
        async fn apply_retention(&self, r: &ScheduledRetention) -> Result<String, String> {
            self.retention.lock().unwrap().push(r.clone());
            Ok("kept 2, removed 1".into())
        }
    }

    const H: u64 = 3_600_000;
    // 2024-01-01T00:00:00Z
    const T0: u64 = 1_704_067_200_000;

    fn setup() -> (Arc<StateMachine>, Arc<AtomicU64>) {
        let sm = Arc::new(StateMachine::new(Kv::temporary().unwrap().tree("t").unwrap()));
        let idx = Arc::new(AtomicU64::new(10));
        let r = Local { sm: Arc::clone(&sm), index: Arc::clone(&idx), id: 1, leader: true.into() };
        let cluster = ClusterRecord {
            name: "prod".into(),
            cassandra_cluster_name: "Test Cluster".into(),
            agent_pattern: "{address}:7079".into(),
            created_at_ms: 1,
        };
        futures::executor::block_on(r.propose(&Command::PutCluster { cluster, nodes: vec![], replace: false }))
            .unwrap();
        (sm, idx)
    }

    fn replica(sm: &Arc<StateMachine>, idx: &Arc<AtomicU64>, id: u64, leader: bool) -> Arc<Local> {
        Arc::new(Local { sm: Arc::clone(sm), index: Arc::clone(idx), id, leader: leader.into() })
    }

    fn record(name: &str, cron: &str, tz: &str) -> ScheduleRecord {
        ScheduleRecord {
            name: name.into(),
            cluster: "prod".into(),
            cron: cron.into(),
            timezone: tz.into(),
            window_ms: H,
            entities: vec![],
            datacenters: vec![],
            keep_last: Some(14),
            keep_within_ms: None,
            catch_up: CatchUp::Latest,
            max_attempts: 3,
            retry_backoff_ms: 60_000,
            paused: false,
            created_at_ms: T0,
            settled_ms: 0,
            missed: vec![],
        }
    }

    #[test]
    fn slots_follow_the_time_zone_and_bad_input_is_explained() {
        let s = record("n", "0 2 * * *", "Europe/Paris");
        // 02:00 in Paris in winter is 01:00 UTC.
        assert_eq!(next_slot(&s, T0), Some(T0 + H));
        let utc = record("n", "0 2 * * *", "UTC");
        assert_eq!(next_slot(&utc, T0), Some(T0 + 2 * H));
        assert_eq!(slots_between(&utc, T0, T0 + 3 * 86_400_000, 10).unwrap().len(), 3);
        assert!(validate(&record("n", "0 2 * *", "UTC")).unwrap_err().contains("invalid cron expression"));
        assert!(validate(&record("n", "0 2 * * *", "Mars/Olympus")).unwrap_err().contains("unknown time zone"));
        assert!(validate(&record("a/b", "0 2 * * *", "UTC")).is_err());
    }

    #[test]
    fn missed_slots_and_the_catch_up_policy() {
        let mut s = record("n", "0 2 * * *", "UTC");
        // Three days passed without a leader; now is 05:00 on day 4, outside the 1h window.
        let now = T0 + 3 * 86_400_000 + 5 * H;
        let d = due(&s, now).unwrap();
        assert_eq!(d.run, Some(T0 + 3 * 86_400_000 + 2 * H), "catch-up latest runs the newest slot late");
        assert_eq!(d.missed.len(), 3);
        s.catch_up = CatchUp::None;
        let d = due(&s, now).unwrap();
        assert_eq!((d.run, d.missed.len()), (None, 4));
        // Within the window: run.
        let d = due(&s, T0 + 2 * H + 60_000).unwrap();
        assert_eq!((d.run, d.missed.len()), (Some(T0 + 2 * H), 0));
        // Nothing due before the first slot.
        assert_eq!(due(&s, T0 + H).unwrap(), Due::default());
    }

    #[test]
    fn a_slot_is_claimed_once_across_leaders_and_runs_once() {
        let (sm, idx) = setup();
        let a = replica(&sm, &idx, 1, true);
        let b = replica(&sm, &idx, 2, true); // a stale leader that still thinks it leads
        futures::executor::block_on(a.propose(&Command::Schedule(ScheduleCommand::Put {
            schedule: record("nightly", "0 2 * * *", "UTC"),
            replace: false,
        })))
        .unwrap();
        let launcher = Arc::new(Recording::default());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let now = T0 + 2 * H + 1000;
        rt.block_on(async {
            let sa = Scheduler::new(a.clone(), launcher.clone());
            let sb = Scheduler::new(b.clone(), launcher.clone());
            sa.tick(now).await.unwrap();
            sb.tick(now).await.unwrap();
            sa.tick(now + 1000).await.unwrap();
        });
        assert_eq!(launcher.started.lock().unwrap().clone(), vec![operation_id("nightly", T0 + 2 * H)]);
        let runs = runs(&sm, "nightly").unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!((runs[0].claimed_by, runs[0].state), (1, RunState::Running));
        // A direct second claim of the slot is refused by the state machine.
        let again = futures::executor::block_on(b.propose(&Command::Schedule(ScheduleCommand::Claim {
            name: "nightly".into(),
            slot_ms: T0 + 2 * H,
            manual: false,
            missed: vec![],
            by: 2,
            at_ms: now,
        })));
        assert!(again.unwrap_err().contains("already claimed"));
        // The run succeeds: retention for the schedule's tag follows.
        launcher.status.lock().unwrap().insert(operation_id("nightly", T0 + 2 * H), LaunchStatus::Succeeded);
        rt.block_on(Scheduler::new(b.clone(), launcher.clone()).tick(now + 2000)).unwrap();
        let r = &super::runs(&sm, "nightly").unwrap()[0];
        assert_eq!(r.state, RunState::Succeeded);
        assert_eq!(r.retention, "kept 2, removed 1");
        let ret = launcher.retention.lock().unwrap().clone();
        assert_eq!((ret.len(), ret[0].tag.as_str(), ret[0].keep_last), (1, "nightly", Some(14)));
    }

    #[test]
    fn failed_launches_are_retried_with_backoff_then_failed() {
        let (sm, idx) = setup();
        let a = replica(&sm, &idx, 1, true);
        futures::executor::block_on(a.propose(&Command::Schedule(ScheduleCommand::Put {
            schedule: record("nightly", "0 2 * * *", "UTC"),
            replace: false,
        })))
        .unwrap();
        let launcher = Arc::new(Recording::default());
        launcher.fail_starts.store(10, Ordering::SeqCst);
        let s = Scheduler::new(a.clone(), launcher.clone());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let now = T0 + 2 * H;
        rt.block_on(s.tick(now)).unwrap();
        let r = &runs(&sm, "nightly").unwrap()[0];
        assert_eq!((r.state, r.attempts, r.next_attempt_ms), (RunState::Pending, 1, now + 60_000));
        rt.block_on(s.tick(now + 30_000)).unwrap(); // before the backoff: nothing
        assert_eq!(runs(&sm, "nightly").unwrap()[0].attempts, 1);
        rt.block_on(s.tick(now + 60_000)).unwrap();
        let r = &runs(&sm, "nightly").unwrap()[0];
        assert_eq!((r.attempts, r.next_attempt_ms), (2, now + 60_000 + 120_000), "the delay doubles");
        rt.block_on(s.tick(now + 180_000)).unwrap();
        let r = &runs(&sm, "nightly").unwrap()[0];
        assert_eq!(r.state, RunState::Failed);
        assert!(r.error.contains("gave up after 3 attempt(s): cluster unreachable"), "{}", r.error);
        assert!(launcher.started.lock().unwrap().is_empty());
        // Paused schedules claim nothing; missed slots are reported on the schedule.
        futures::executor::block_on(
            a.propose(&Command::Schedule(ScheduleCommand::SetPaused { name: "nightly".into(), paused: true })),
        )
        .unwrap();
        rt.block_on(s.tick(now + 86_400_000)).unwrap();
        assert_eq!(runs(&sm, "nightly").unwrap().len(), 1);
        futures::executor::block_on(
            a.propose(&Command::Schedule(ScheduleCommand::SetPaused { name: "nightly".into(), paused: false })),
        )
        .unwrap();
        rt.block_on(s.tick(now + 3 * 86_400_000 + 60_000)).unwrap();
        let sched = schedule(&sm, "nightly").unwrap().unwrap();
        assert_eq!(sched.missed.len(), 2, "{:?}", sched.missed);
        assert_eq!(runs(&sm, "nightly").unwrap().len(), 2);
    }
}
