//! The replica's raft loop: the one place that drives raft-rs.
//!
//! raft-rs is sans-IO. This loop owns the `RawNode`, the log store and the state machine, runs
//! on its own thread (sled and raft-rs are synchronous), and talks to the rest of the process
//! through an input channel ([`Input`]) and a status watch ([`RaftStatus`]). Each `Ready` is
//! handled in raft-rs's required order:
//!
//! 1. send `messages` (a leader may send before its own disk write);
//! 2. install a received snapshot (log and state machine in one batch);
//! 3. note read states; apply committed entries (each entry's effects and the applied index in
//!    one batch);
//! 4. persist new entries and the hard state in one batch, and fsync;
//! 5. only then send `persisted_messages` (votes, append acknowledgements);
//! 6. `advance`, then handle the light ready the same way (commit index, messages, entries);
//!    `advance_apply`.
//!
//! Proposals are accepted only on the leader and tracked by (index, term): the proposer learns
//! the outcome when its entry is applied, or that it was lost when another term's entry is
//! applied at that index.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use prost_011::Message as _;
use raft::prelude::{ConfChange, ConfChangeType, Entry, EntryType, Message, MessageType, Snapshot};
use raft::{RawNode, SnapshotStatus, StateRole};
use serde::Serialize;
use tokio::sync::{oneshot, watch};

use super::storage::LogStore;
use super::transport::Transport;
use crate::Retry;
use crate::kv::{Kv, KvError, KvTree, Versioned, WriteBatch};
use crate::model::Command;
use crate::state::{Applied, Membership, StateMachine};

/// Raft timing and log-size settings.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftConfig {
    /// One raft tick.
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    /// Ticks without hearing from a leader before a follower campaigns (randomized up to twice this).
    pub election_ticks: usize,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_ticks: usize,
    /// Applied entries between two snapshots (each snapshot compacts the log).
    pub snapshot_interval: u64,
    /// Entries kept in the log behind a snapshot, so briefly lagging replicas catch up from the
    /// log instead of a snapshot.
    pub compact_keep: u64,
    /// Largest append message.
    pub max_size_per_msg: u64,
    /// Appends in flight to one replica.
    pub max_inflight_msgs: usize,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 2,
            snapshot_interval: 5000,
            compact_keep: 500,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
        }
    }
}

impl RaftConfig {
    /// Every problem with these settings.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.tick < Duration::from_millis(1) {
            p.push("raft.tick must be at least 1ms".to_owned());
        }
        if self.heartbeat_ticks == 0 || self.election_ticks <= self.heartbeat_ticks {
            p.push("raft.election_ticks must be greater than raft.heartbeat_ticks (>= 1)".to_owned());
        }
        if self.snapshot_interval == 0 {
            p.push("raft.snapshot_interval must be at least 1".to_owned());
        }
        if self.max_inflight_msgs == 0 {
            p.push("raft.max_inflight_msgs must be at least 1".to_owned());
        }
        p
    }
}

/// Why a request to the raft group did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaftError {
    /// This replica is not the leader.
    #[error("replica {id} is not the leader{}", match leader { Some((l, a)) => format!("; the leader is replica {l} at {a}"), None => "; no leader is known (an election may be in progress)".to_owned() })]
    NotLeader {
        /// This replica.
        id: u64,
        /// The leader's id and address, when known.
        leader: Option<(u64, String)>,
    },
    /// The state machine refused the command (deterministically, on every replica).
    #[error("{0}")]
    Rejected(String),
    /// The entry was lost to a leader change before it committed; it may be retried.
    #[error("the proposal was lost when leadership changed ({0}); it was not applied")]
    Dropped(String),
    /// Another membership change is still in progress.
    #[error("{0}")]
    Busy(String),
    /// No answer in time (e.g. the leader lost its quorum) to a request that changes nothing
    /// (a read barrier).
    #[error("no answer from the raft group within {0:?} (is a majority of replicas up?)")]
    Timeout(Duration),
    /// A proposal was not confirmed in time: it is in the leader's log and may still commit, or
    /// be lost. Look it up before sending it again (unless it is idempotent).
    #[error(
        "the raft group did not confirm the write within {0:?}: its outcome is unknown (it may still be applied; is a majority of replicas up?)"
    )]
    OutcomeUnknown(Duration),
    /// The replica is shutting down or has stopped.
    #[error("the replica's raft loop has stopped{}", if .0.is_empty() { String::new() } else { format!(": {}", .0) })]
    Stopped(String),
}

impl RaftError {
    /// Whether a retry makes sense.
    pub fn retry(&self) -> Retry {
        match self {
            Self::NotLeader { .. } => Retry::Now,
            Self::Rejected(_) => Retry::Never,
            // Retrying an outcome-unknown write is right only for idempotent commands (the
            // executor's are: keyed by operation, node and phase); callers decide.
            Self::Dropped(_) | Self::Busy(_) | Self::Timeout(_) | Self::OutcomeUnknown(_) => Retry::Backoff,
            Self::Stopped(_) => Retry::Never,
        }
    }
}

/// A membership change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    /// Adds a voting replica that serves at `address`.
    AddVoter {
        /// Its id.
        id: u64,
        /// Its address.
        address: String,
    },
    /// Removes a replica.
    Remove {
        /// Its id.
        id: u64,
    },
}

type Reply = oneshot::Sender<Result<u64, RaftError>>;

/// What the raft loop is asked to do.
#[derive(Debug)]
pub enum Input {
    /// Propose an encoded [`Command`]; the reply is its applied index.
    Propose(Vec<u8>, Reply),
    /// Propose a membership change; the reply is its applied index.
    ChangeMembership(MembershipChange, Reply),
    /// Confirm leadership and wait until the state machine is current; the reply is the read index.
    ReadIndex(Reply),
    /// A message from another replica.
    Step(Box<Message>),
    /// The transport could not reach a replica.
    Unreachable(u64),
    /// A snapshot sent to a replica arrived (`true`) or not.
    SnapshotSent(u64, bool),
    /// Hand leadership to another replica.
    TransferLeader(u64),
    /// Stop the loop.
    Stop,
}

/// A replica's raft state, published after every change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RaftStatus {
    /// This replica.
    pub id: u64,
    /// `leader`, `follower`, `candidate`, `pre-candidate`, or `removed`.
    pub role: String,
    /// Current term.
    pub term: u64,
    /// Leader id (0: unknown).
    pub leader_id: u64,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// First index in the log.
    pub first_index: u64,
    /// Last index in the log.
    pub last_index: u64,
    /// Latest snapshot.
    pub snapshot_index: u64,
    /// Membership.
    pub membership: Membership,
    /// Replica addresses.
    pub peers: BTreeMap<u64, String>,
    /// On the leader: replica → matched index.
    pub matched: BTreeMap<u64, u64>,
    /// Snapshots received and installed since start.
    pub snapshots_received: u64,
    /// Set when the loop stopped on an unrecoverable error.
    pub fatal: Option<String>,
}

impl RaftStatus {
    /// Whether this replica is the leader.
    pub fn is_leader(&self) -> bool {
        self.role == "leader"
    }

    /// The leader's id and address, when known.
    pub fn leader(&self) -> Option<(u64, String)> {
        (self.leader_id != 0).then(|| (self.leader_id, self.peers.get(&self.leader_id).cloned().unwrap_or_default()))
    }
}

/// The handle the rest of the process uses.
#[derive(Debug, Clone)]
pub struct RaftHandle {
    tx: Sender<Input>,
    status: watch::Receiver<RaftStatus>,
    sm: StateMachine,
    request_timeout: Duration,
    latency: Arc<LatencyWindow>,
}

/// Latencies of the most recent successful proposals (µs), for the operator's status.
#[derive(Debug, Default)]
pub struct LatencyWindow {
    samples: std::sync::Mutex<std::collections::VecDeque<u64>>,
}

/// Quantiles of a [`LatencyWindow`], in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LatencySummary {
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Largest.
    pub max_us: u64,
    /// Samples in the window.
    pub samples: u64,
}

impl LatencyWindow {
    const CAPACITY: usize = 8192;

    fn record(&self, d: Duration) {
        let mut s = self.samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if s.len() == Self::CAPACITY {
            s.pop_front();
        }
        s.push_back(d.as_micros() as u64);
    }

    /// Quantiles over the window.
    pub fn summary(&self) -> LatencySummary {
        let mut v: Vec<u64> =
            self.samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().copied().collect();
        if v.is_empty() {
            return LatencySummary::default();
        }
        v.sort_unstable();
        let q = |f: f64| v[((v.len() - 1) as f64 * f).round() as usize];
        LatencySummary { p50_us: q(0.5), p99_us: q(0.99), max_us: v[v.len() - 1], samples: v.len() as u64 }
    }
}

impl RaftHandle {
    /// The sender the transport uses to deliver messages and reports.
    pub fn input(&self) -> Sender<Input> {
        self.tx.clone()
    }

    /// The current status.
    pub fn status(&self) -> RaftStatus {
        self.status.borrow().clone()
    }

    /// A receiver of status changes.
    pub fn watch(&self) -> watch::Receiver<RaftStatus> {
        self.status.clone()
    }

    /// The local state machine (read it after [`Self::read_barrier`] for linearizable reads).
    pub fn state(&self) -> &StateMachine {
        &self.sm
    }

    /// Sends a request to the loop and waits for its answer; `writes`: a timeout leaves the
    /// outcome unknown (the entry may be in the log), otherwise it is a plain timeout.
    async fn ask(&self, writes: bool, make: impl FnOnce(Reply) -> Input) -> Result<u64, RaftError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| RaftError::Stopped(self.status().fatal.unwrap_or_default()))?;
        match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(RaftError::Stopped(self.status().fatal.unwrap_or_default())),
            Err(_) if writes => Err(RaftError::OutcomeUnknown(self.request_timeout)),
            Err(_) => Err(RaftError::Timeout(self.request_timeout)),
        }
    }

    /// Replicates and applies a command; returns its index. Only on the leader.
    pub async fn propose(&self, cmd: &Command) -> Result<u64, RaftError> {
        let bytes = cmd.encode();
        let start = std::time::Instant::now();
        let r = self.ask(true, |r| Input::Propose(bytes, r)).await;
        if r.is_ok() {
            self.latency.record(start.elapsed());
        }
        r
    }

    /// Latency of this replica's recent proposals (propose → applied here).
    pub fn commit_latency(&self) -> LatencySummary {
        self.latency.summary()
    }

    /// Changes the membership; returns when the change is applied here. Only on the leader.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<u64, RaftError> {
        self.ask(true, |r| Input::ChangeMembership(change, r)).await
    }

    /// Returns once this replica is confirmed leader by a quorum and has applied everything
    /// committed before the call: reads of the local state machine after it are linearizable.
    pub async fn read_barrier(&self) -> Result<u64, RaftError> {
        self.ask(false, Input::ReadIndex).await
    }

    /// Asks raft to hand leadership to `to`.
    pub fn transfer_leader(&self, to: u64) {
        let _ = self.tx.send(Input::TransferLeader(to));
    }

    /// Stops the loop.
    pub fn stop(&self) {
        let _ = self.tx.send(Input::Stop);
    }
}

/// How a replica starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// Use the state on disk; fail if there is none.
    Existing,
    /// Start a new group with these voters (id → address) unless state exists.
    NewGroup(BTreeMap<u64, String>),
    /// Start empty and wait for a leader to add this replica (it receives a snapshot).
    Join,
}

/// Starts a replica's raft loop on its own thread.
#[derive(Debug)]
pub struct RaftNode;

impl RaftNode {
    /// Opens the state in `kv`, bootstraps when asked, and starts the loop. `input` is the
    /// channel the transport was given; `transport` carries outgoing messages.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        id: u64,
        kv: Kv,
        bootstrap: Bootstrap,
        config: RaftConfig,
        transport: Arc<dyn Transport>,
        input: (Sender<Input>, Receiver<Input>),
        request_timeout: Duration,
    ) -> Result<(RaftHandle, std::thread::JoinHandle<()>), StartError> {
        let tree = kv.tree("cassette")?;
        let sm = StateMachine::new(tree.clone());
        let mut store = LogStore::open(tree.clone(), sm.clone())?;
        match (&bootstrap, store.is_initialized()) {
            (Bootstrap::NewGroup(peers), false) => {
                if !peers.contains_key(&id) {
                    return Err(StartError::Config(format!(
                        "the initial replicas {:?} do not include this replica's id {id}",
                        peers.keys().collect::<Vec<_>>()
                    )));
                }
                tracing::info!(id, ?peers, "bootstrapping a new raft group");
                store.bootstrap(peers)?;
                kv.flush()?;
            }
            (Bootstrap::Existing, false) => {
                return Err(StartError::Config(
                    "the state directory holds no coordinator state: start with --peers (a new group) or --join".into(),
                ));
            }
            (Bootstrap::Join, false) => tracing::info!(id, "starting empty; waiting for a leader to add this replica"),
            (Bootstrap::NewGroup(peers), true) => {
                let stored = sm.peers()?;
                if stored != *peers && peers.len() > 1 {
                    tracing::warn!(?stored, given = ?peers, "--peers differs from the membership in the state directory; the stored membership is used (change it with `cassette replica add/remove`)");
                }
            }
            (_, true) => {}
        }
        let applied = sm.applied()?;
        let cfg = raft::Config {
            id,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            applied: applied.index,
            max_size_per_msg: config.max_size_per_msg,
            max_inflight_msgs: config.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            ..raft::Config::default()
        };
        cfg.validate().map_err(|e| StartError::Config(format!("raft settings: {e}")))?;
        let raw = RawNode::new(&cfg, store, &super::logger::logger(id))
            .map_err(|e| StartError::Config(format!("start raft: {e}")))?;
        let peers = sm.peers()?;
        transport.update_peers(&peers);
        transport.set_group(&sm.group()?);
        let (status_tx, status_rx) = watch::channel(RaftStatus { id, ..Default::default() });
        let (tx, rx) = input;
        let mut node = Loop {
            id,
            raw,
            sm: sm.clone(),
            tree,
            kv,
            transport,
            rx,
            status_tx,
            config,
            proposals: BTreeMap::new(),
            pending_reads: HashMap::new(),
            ready_reads: Vec::new(),
            next_ctx: 1,
            peers,
            membership: sm.membership()?,
            applied,
            snapshots_received: 0,
            removed: false,
        };
        node.removed = node.applied.index > 0
            && !node.membership.voters.contains(&id)
            && !node.membership.learners.contains(&id)
            && !node.membership.voters.is_empty();
        node.publish();
        let handle = RaftHandle { tx, status: status_rx, sm, request_timeout, latency: Arc::default() };
        let join = std::thread::Builder::new()
            .name(format!("raft-{id}"))
            .spawn(move || node.run())
            .map_err(|e| StartError::Config(format!("start the raft thread: {e}")))?;
        Ok((handle, join))
    }
}

/// Why a replica could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] KvError),
    /// Settings or state do not allow starting.
    #[error("{0}")]
    Config(String),
}

struct Loop {
    id: u64,
    raw: RawNode<LogStore>,
    sm: StateMachine,
    tree: KvTree,
    kv: Kv,
    transport: Arc<dyn Transport>,
    rx: Receiver<Input>,
    status_tx: watch::Sender<RaftStatus>,
    config: RaftConfig,
    /// index → (term, reply) of proposals made here.
    proposals: BTreeMap<u64, (u64, Reply)>,
    /// read context → reply, waiting for raft to confirm the read index.
    pending_reads: HashMap<u64, Reply>,
    /// (read index, reply), waiting for the state machine to catch up.
    ready_reads: Vec<(u64, Reply)>,
    next_ctx: u64,
    peers: BTreeMap<u64, String>,
    membership: Membership,
    applied: Applied,
    snapshots_received: u64,
    removed: bool,
}

impl Loop {
    fn run(mut self) {
        let mut next_tick = Instant::now() + self.config.tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(wait) {
                Ok(Input::Stop) => break,
                Ok(input) => {
                    self.handle(input);
                    // Take what else is queued before the next ready: one fsync covers them all.
                    let mut stop = false;
                    for _ in 0..1024 {
                        match self.rx.try_recv() {
                            Ok(Input::Stop) => {
                                stop = true;
                                break;
                            }
                            Ok(i) => self.handle(i),
                            Err(_) => break,
                        }
                    }
                    if stop {
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if Instant::now() >= next_tick {
                if !self.removed {
                    self.raw.tick();
                }
                next_tick = Instant::now() + self.config.tick;
            }
            if let Err(e) = self.on_ready().and_then(|()| self.maybe_snapshot()) {
                tracing::error!(id = self.id, error = %e, "raft loop stopped: the state store failed");
                self.status_tx.send_modify(|s| s.fatal = Some(e.to_string()));
                break;
            }
            self.publish();
        }
        self.fail_all(|| RaftError::Stopped(String::new()));
        tracing::info!(id = self.id, "raft loop stopped");
    }

    fn not_leader(&self) -> RaftError {
        let leader = self.raw.raft.leader_id;
        RaftError::NotLeader {
            id: self.id,
            leader: (leader != 0).then(|| (leader, self.peers.get(&leader).cloned().unwrap_or_default())),
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Step(m) => {
                if let Err(e) = self.raw.step(*m) {
                    tracing::debug!(id = self.id, error = %e, "ignored a raft message");
                }
            }
            Input::Propose(data, reply) => {
                if self.raw.raft.state != StateRole::Leader {
                    let _ = reply.send(Err(self.not_leader()));
                    return;
                }
                let ctx = self.next_ctx.to_be_bytes().to_vec();
                self.next_ctx += 1;
                match self.raw.propose(ctx, data) {
                    Ok(()) => self.track(reply),
                    Err(e) => {
                        let _ = reply.send(Err(RaftError::Dropped(e.to_string())));
                    }
                }
            }
            Input::ChangeMembership(change, reply) => {
                if self.raw.raft.state != StateRole::Leader {
                    let _ = reply.send(Err(self.not_leader()));
                    return;
                }
                if self.raw.raft.has_pending_conf() {
                    let _ = reply.send(Err(RaftError::Busy(
                        "another membership change is not applied yet; retry when it is".into(),
                    )));
                    return;
                }
                let mut cc = ConfChange::default();
                match &change {
                    MembershipChange::AddVoter { id, address } => {
                        if self.membership.voters.contains(id) {
                            let _ = reply.send(Err(RaftError::Rejected(format!("replica {id} is already a voter"))));
                            return;
                        }
                        cc.set_change_type(ConfChangeType::AddNode);
                        cc.node_id = *id;
                        cc.context = address.clone().into_bytes();
                    }
                    MembershipChange::Remove { id } => {
                        if !self.membership.voters.contains(id) && !self.membership.learners.contains(id) {
                            let _ = reply.send(Err(RaftError::Rejected(format!("replica {id} is not a member"))));
                            return;
                        }
                        if self.membership.voters == [*id] {
                            let _ = reply.send(Err(RaftError::Rejected(format!("replica {id} is the only voter"))));
                            return;
                        }
                        cc.set_change_type(ConfChangeType::RemoveNode);
                        cc.node_id = *id;
                    }
                }
                let ctx = self.next_ctx.to_be_bytes().to_vec();
                self.next_ctx += 1;
                match self.raw.propose_conf_change(ctx, cc) {
                    Ok(()) => self.track(reply),
                    Err(e) => {
                        let _ = reply.send(Err(RaftError::Dropped(e.to_string())));
                    }
                }
            }
            Input::ReadIndex(reply) => {
                if self.raw.raft.state != StateRole::Leader {
                    let _ = reply.send(Err(self.not_leader()));
                    return;
                }
                let ctx = self.next_ctx;
                self.next_ctx += 1;
                self.pending_reads.insert(ctx, reply);
                self.raw.read_index(ctx.to_be_bytes().to_vec());
            }
            Input::Unreachable(id) => self.raw.report_unreachable(id),
            Input::SnapshotSent(id, ok) => {
                self.raw.report_snapshot(id, if ok { SnapshotStatus::Finish } else { SnapshotStatus::Failure })
            }
            Input::TransferLeader(to) => {
                if self.raw.raft.state == StateRole::Leader {
                    self.raw.transfer_leader(to);
                }
            }
            Input::Stop => {}
        }
    }

    fn track(&mut self, reply: Reply) {
        // propose appended the entry to the leader's log: it is the last one.
        let index = self.raw.raft.raft_log.last_index();
        let term = self.raw.raft.term;
        self.proposals.insert(index, (term, reply));
    }

    fn send(&self, msgs: Vec<Message>) {
        if !msgs.is_empty() {
            self.transport.send(msgs);
        }
    }

    fn on_ready(&mut self) -> Result<(), KvError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        if let Some(ss) = rd.ss()
            && ss.raft_state != StateRole::Leader
        {
            // Reads waiting for leadership confirmation can no longer be served here.
            for (_, r) in self.pending_reads.drain() {
                let _ = r.send(Err(RaftError::NotLeader { id: self.id, leader: None }));
            }
        }
        // 1. Messages that need no persistence first.
        self.send(rd.take_messages());
        // 2. A snapshot from the leader replaces the log and the state machine in one batch.
        if !rd.snapshot().is_empty() {
            self.install_snapshot(rd.snapshot().clone())?;
        }
        // 3. Reads and committed entries.
        for rs in rd.take_read_states() {
            let ctx = <[u8; 8]>::try_from(&rs.request_ctx[..]).map(u64::from_be_bytes).unwrap_or(0);
            if let Some(r) = self.pending_reads.remove(&ctx) {
                self.ready_reads.push((rs.index, r));
            }
        }
        self.apply(rd.take_committed_entries())?;
        // 4. Entries and hard state, durable before anything that acknowledges them is sent.
        if !rd.entries().is_empty() || rd.hs().is_some() {
            let mut b = WriteBatch::default();
            let entries = rd.take_entries();
            let hs = rd.hs().cloned();
            self.raw.mut_store().append(&entries, hs.as_ref(), &mut b);
            self.tree.apply(b)?;
            if rd.must_sync() {
                self.kv.flush()?;
            }
        }
        // 5. Now the persisted messages.
        self.send(rd.take_persisted_messages());
        // 6. Advance, and handle what became ready.
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit)?;
        }
        self.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.answer_reads();
        Ok(())
    }

    fn install_snapshot(&mut self, snap: Snapshot) -> Result<(), KvError> {
        let meta = snap.get_metadata().clone();
        tracing::info!(
            id = self.id,
            index = meta.index,
            term = meta.term,
            bytes = snap.data.len(),
            "installing a snapshot from the leader"
        );
        let mut b = self.sm.import_batch(&snap.data)?;
        self.raw.mut_store().install_snapshot(&snap, &mut b);
        self.tree.apply(b)?;
        self.kv.flush()?;
        self.applied = self.sm.applied()?;
        if self.applied.index != meta.index {
            return Err(KvError::Corrupt {
                key: "snapshot".into(),
                reason: format!("snapshot at index {} holds state applied to {}", meta.index, self.applied.index),
            });
        }
        self.membership = self.sm.membership()?;
        self.peers = self.sm.peers()?;
        self.transport.update_peers(&self.peers);
        self.transport.set_group(&self.sm.group()?);
        self.snapshots_received += 1;
        // Proposals at or below the snapshot can no longer be matched to their entries.
        let rest = self.proposals.split_off(&(meta.index + 1));
        for (_, (_, r)) in std::mem::replace(&mut self.proposals, rest) {
            let _ = r.send(Err(RaftError::Dropped("replaced by a snapshot".into())));
        }
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), KvError> {
        for e in entries {
            if e.index <= self.applied.index {
                // Already applied (e.g. covered by an installed snapshot): applying twice is the
                // one thing the state machine must never see.
                continue;
            }
            debug_assert_eq!(e.index, self.applied.index + 1, "entries are applied in order without gaps");
            let outcome = match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => {
                    self.tree.apply(self.sm.apply_empty(e.index, e.term))?;
                    Ok(e.index)
                }
                EntryType::EntryNormal => match Command::decode(&e.data) {
                    Ok(cmd) => {
                        let (b, out) = self.sm.apply(e.index, e.term, &cmd)?;
                        self.tree.apply(b)?;
                        out.map(|o| o.index).map_err(|r| RaftError::Rejected(r.0))
                    }
                    Err(why) => {
                        // An entry this build cannot read (written by a newer version): skipping
                        // it would diverge from replicas that can. Stop instead.
                        return Err(KvError::Corrupt { key: format!("raft entry {}", e.index), reason: why });
                    }
                },
                EntryType::EntryConfChange => {
                    let cc = ConfChange::decode(&e.data[..]).map_err(|err| KvError::Corrupt {
                        key: format!("raft entry {}", e.index),
                        reason: err.to_string(),
                    })?;
                    self.apply_conf_change(&e, &cc)?;
                    Ok(e.index)
                }
                EntryType::EntryConfChangeV2 => {
                    return Err(KvError::Corrupt {
                        key: format!("raft entry {}", e.index),
                        reason: "joint-consensus changes are not used by this build".into(),
                    });
                }
            };
            self.applied = Applied { index: e.index, term: e.term };
            if let Some((term, reply)) = self.proposals.remove(&e.index) {
                let _ = reply.send(if term == e.term {
                    outcome
                } else {
                    Err(RaftError::Dropped(format!("entry {} went to term {} instead of {term}", e.index, e.term)))
                });
            }
        }
        // Proposals below the applied index whose entries never came were overwritten.
        while let Some((&i, _)) = self.proposals.first_key_value() {
            if i > self.applied.index {
                break;
            }
            if let Some((_, (_, r))) = self.proposals.pop_first() {
                let _ = r.send(Err(RaftError::Dropped("the entry was replaced by a new leader".into())));
            }
        }
        Ok(())
    }

    fn apply_conf_change(&mut self, e: &Entry, cc: &ConfChange) -> Result<(), KvError> {
        let cs = match self.raw.apply_conf_change(cc) {
            Ok(cs) => cs,
            Err(err) => {
                // raft-rs refused it (e.g. removing the last voter): nothing changes, but the
                // entry is applied so the index moves on identically everywhere.
                tracing::warn!(id = self.id, error = %err, "membership change refused");
                self.tree.apply(self.sm.apply_empty(e.index, e.term))?;
                return Ok(());
            }
        };
        let (mut voters, mut learners) = (cs.voters.clone(), cs.learners.clone());
        voters.sort_unstable();
        learners.sort_unstable();
        let membership = Membership { voters, learners };
        let address = String::from_utf8_lossy(&cc.context).into_owned();
        let (add, remove) = match cc.get_change_type() {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => (Some((cc.node_id, address.as_str())), None),
            ConfChangeType::RemoveNode => (None, Some(cc.node_id)),
        };
        self.tree.apply(self.sm.apply_membership(e.index, e.term, &membership, add, remove))?;
        tracing::info!(id = self.id, index = e.index, change = ?cc.get_change_type(), node = cc.node_id, voters = ?membership.voters, "membership changed");
        self.membership = membership;
        self.peers = self.sm.peers()?;
        self.transport.update_peers(&self.peers);
        if remove == Some(self.id) {
            tracing::warn!(id = self.id, "this replica was removed from the group; it no longer takes part");
            self.removed = true;
        }
        Ok(())
    }

    fn answer_reads(&mut self) {
        let applied = self.applied.index;
        let (ready, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.ready_reads).into_iter().partition(|(i, _)| *i <= applied);
        self.ready_reads = waiting;
        for (i, r) in ready {
            let _ = r.send(Ok(i));
        }
    }

    fn maybe_snapshot(&mut self) -> Result<(), KvError> {
        let store = self.raw.store();
        let due = self.applied.index >= store.snapshot_index() + self.config.snapshot_interval;
        let wanted = store.take_snapshot_wanted() && self.applied.index > store.snapshot_index();
        if !due && !wanted {
            return Ok(());
        }
        let mut snap = Snapshot::default();
        snap.data = self.sm.export()?;
        *snap.mut_metadata() = LogStore::snapshot_metadata(self.applied, &self.membership);
        let compact_to = self.applied.index.saturating_sub(self.config.compact_keep);
        let bytes = snap.data.len();
        self.raw.mut_store().save_snapshot_and_compact(&snap, compact_to)?;
        tracing::info!(id = self.id, index = self.applied.index, bytes, compact_to, "snapshot taken, log compacted");
        Ok(())
    }

    fn publish(&self) {
        let raft = &self.raw.raft;
        let (first, last) = self.raw.store().bounds();
        let role = if self.removed {
            "removed"
        } else {
            match raft.state {
                StateRole::Leader => "leader",
                StateRole::Follower => "follower",
                StateRole::Candidate => "candidate",
                StateRole::PreCandidate => "pre-candidate",
            }
        };
        let matched = if raft.state == StateRole::Leader {
            raft.prs().iter().map(|(id, p)| (*id, p.matched)).collect()
        } else {
            BTreeMap::new()
        };
        let status = RaftStatus {
            id: self.id,
            role: role.to_owned(),
            term: raft.term,
            leader_id: raft.leader_id,
            commit: raft.raft_log.committed,
            applied: self.applied.index,
            first_index: first,
            last_index: last.max(raft.raft_log.last_index()),
            snapshot_index: self.raw.store().snapshot_index(),
            membership: self.membership.clone(),
            peers: self.peers.clone(),
            matched,
            snapshots_received: self.snapshots_received,
            fatal: None,
        };
        self.status_tx.send_if_modified(|s| {
            if *s != status {
                *s = status;
                true
            } else {
                false
            }
        });
    }

    fn fail_all(&mut self, err: impl Fn() -> RaftError) {
        for (_, (_, r)) in std::mem::take(&mut self.proposals) {
            let _ = r.send(Err(err()));
        }
        for (_, r) in self.pending_reads.drain() {
            let _ = r.send(Err(err()));
        }
        for (_, r) in self.ready_reads.drain(..) {
            let _ = r.send(Err(err()));
        }
    }
}

/// Whether a message carries a snapshot (its delivery must be reported back).
pub fn is_snapshot(m: &Message) -> bool {
    m.get_msg_type() == MessageType::MsgSnapshot
}

/// Encodes a raft message for the wire.
pub fn encode_message(m: &Message) -> Vec<u8> {
    m.encode_to_vec()
}

/// Decodes a raft message from the wire.
pub fn decode_message(b: &[u8]) -> Result<Message, String> {
    Message::decode(b).map_err(|e| e.to_string())
}
