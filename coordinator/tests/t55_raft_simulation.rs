//! Simulation of the raft wiring (ready loop, log store, state machine, snapshots) over an
//! in-process network that drops, delays and reorders messages, with partitions and crashes.
//!
//! - every write acknowledged to a client is applied on every replica, exactly once;
//! - a write whose outcome was unknown to the client is applied at most once;
//! - after healing, every replica holds byte-identical state (same entries at the same indexes);
//! - replicas restarted from their directories (crash) and replicas behind compaction (snapshot)
//!   converge too.
//!
//! Seeds are fixed so a failure can be replayed: `CASSETTE_SIM_SEEDS=7,8 cargo test … t55`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cassette_coordinator::kv::Kv;
use cassette_coordinator::model::Command;
use cassette_coordinator::raft::Transport;
use cassette_coordinator::raft::node::{Bootstrap, Input, RaftConfig, RaftError, RaftHandle, RaftNode, is_snapshot};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

struct Net {
    inboxes: Mutex<HashMap<u64, Sender<Input>>>,
    isolated: Mutex<HashSet<u64>>,
    drop_rate: Mutex<f64>,
    max_delay: Duration,
    rng: Mutex<StdRng>,
    runtime: tokio::runtime::Handle,
    delivered: Mutex<u64>,
    dropped: Mutex<u64>,
}

impl Net {
    fn deliver(&self, from: u64, m: raft::prelude::Message) {
        let to = m.to;
        let snapshot = is_snapshot(&m);
        let lost = {
            let iso = self.isolated.lock().unwrap();
            iso.contains(&from) || iso.contains(&to)
        } || self.rng.lock().unwrap().random::<f64>() < *self.drop_rate.lock().unwrap();
        let sender_inbox = self.inboxes.lock().unwrap().get(&from).cloned();
        if lost {
            *self.dropped.lock().unwrap() += 1;
            if let Some(s) = sender_inbox {
                let _ = s.send(Input::Unreachable(to));
                if snapshot {
                    let _ = s.send(Input::SnapshotSent(to, false));
                }
            }
            return;
        }
        let delay = self.max_delay.mul_f64(self.rng.lock().unwrap().random::<f64>());
        let inbox = self.inboxes.lock().unwrap().get(&to).cloned();
        *self.delivered.lock().unwrap() += 1;
        self.runtime.spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(i) = inbox {
                let ok = i.send(Input::Step(Box::new(m))).is_ok();
                if snapshot && let Some(s) = sender_inbox {
                    let _ = s.send(Input::SnapshotSent(to, ok));
                }
            }
        });
    }
}

struct SimTransport {
    id: u64,
    net: Arc<Net>,
}

impl Transport for SimTransport {
    fn send(&self, msgs: Vec<raft::prelude::Message>) {
        for m in msgs {
            self.net.deliver(self.id, m);
        }
    }
    fn update_peers(&self, _peers: &BTreeMap<u64, String>) {}
}

struct Replica {
    handle: Option<RaftHandle>,
    join: Option<std::thread::JoinHandle<()>>,
    dir: PathBuf,
}

struct Sim {
    net: Arc<Net>,
    replicas: BTreeMap<u64, Replica>,
    config: RaftConfig,
    peers: BTreeMap<u64, String>,
}

impl Sim {
    fn start_replica(&mut self, id: u64) {
        let r = self.replicas.get_mut(&id).unwrap();
        let kv = Kv::open(&r.dir).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        self.net.inboxes.lock().unwrap().insert(id, tx.clone());
        let transport = Arc::new(SimTransport { id, net: Arc::clone(&self.net) });
        let (handle, join) = RaftNode::start(
            id,
            kv,
            Bootstrap::NewGroup(self.peers.clone()),
            self.config.clone(),
            transport,
            (tx, rx),
            Duration::from_secs(2),
        )
        .unwrap();
        r.handle = Some(handle);
        r.join = Some(join);
    }

    fn crash(&mut self, id: u64) {
        self.net.inboxes.lock().unwrap().remove(&id);
        let r = self.replicas.get_mut(&id).unwrap();
        if let Some(h) = r.handle.take() {
            h.stop();
        }
        if let Some(j) = r.join.take() {
            j.join().unwrap();
        }
    }

    fn leader(&self) -> Option<&RaftHandle> {
        self.replicas.values().filter_map(|r| r.handle.as_ref()).find(|h| h.status().is_leader())
    }

    fn running(&self) -> impl Iterator<Item = &RaftHandle> {
        self.replicas.values().filter_map(|r| r.handle.as_ref())
    }
}

fn seeds() -> Vec<u64> {
    std::env::var("CASSETTE_SIM_SEEDS")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2, 3])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t55_committed_entries_are_never_lost_or_applied_twice_over_a_lossy_network() {
    for seed in seeds() {
        eprintln!("--- step seed {seed}");
        run(seed).await;
    }
}

async fn run(seed: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let net = Arc::new(Net {
        inboxes: Mutex::new(HashMap::new()),
        isolated: Mutex::new(HashSet::new()),
        drop_rate: Mutex::new(0.1),
        max_delay: Duration::from_millis(15),
        rng: Mutex::new(StdRng::seed_from_u64(seed)),
        runtime: tokio::runtime::Handle::current(),
        delivered: Mutex::new(0),
        dropped: Mutex::new(0),
    });
    let config = RaftConfig {
        tick: Duration::from_millis(10),
        election_ticks: 10,
        heartbeat_ticks: 2,
        snapshot_interval: 25,
        compact_keep: 5,
        ..RaftConfig::default()
    };
    let peers: BTreeMap<u64, String> = (1..=3).map(|i| (i, format!("sim-{i}"))).collect();
    let mut sim = Sim { net: Arc::clone(&net), replicas: BTreeMap::new(), config, peers };
    for id in 1..=3 {
        sim.replicas.insert(id, Replica { handle: None, join: None, dir: tmp.path().join(format!("r{id}")) });
        sim.start_replica(id);
    }
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut acked: Vec<String> = Vec::new();
    let mut unknown: Vec<String> = Vec::new();
    let started = Instant::now();
    let mut crashed: Option<(u64, usize)> = None;
    for i in 0..150usize {
        // Faults: isolate a replica now and then, heal later; crash one and restart it.
        match rng.random_range(0..20) {
            // One replica at a time: a majority must stay connected for writes to progress.
            0 if net.isolated.lock().unwrap().is_empty() && crashed.is_none() => {
                let id = rng.random_range(1..=3);
                eprintln!("    isolate {id} at write {i}");
                net.isolated.lock().unwrap().insert(id);
            }
            1 | 2 => net.isolated.lock().unwrap().clear(),
            3 if crashed.is_none() && net.isolated.lock().unwrap().is_empty() => {
                let id = rng.random_range(1..=3);
                eprintln!("    crash {id} at write {i}");
                sim.crash(id);
                crashed = Some((id, i));
            }
            _ => {}
        }
        if let Some((id, at)) = crashed
            && i >= at + 15
        {
            eprintln!("    restart {id} at write {i}");
            sim.start_replica(id);
            crashed = None;
        }
        let key = format!("s{seed}-k{i}");
        let cmd = Command::DebugPut { key: key.clone(), value: i.to_string() };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let Some(leader) = sim.leader().cloned() else {
                assert!(Instant::now() < deadline, "seed {seed}: no leader for 10 s");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            match leader.propose(&cmd).await {
                Ok(_) => {
                    acked.push(key);
                    break;
                }
                // Refused before it entered the log: safe to retry elsewhere.
                Err(RaftError::NotLeader { .. }) => {}
                // The entry may or may not commit: never retried under the same key.
                Err(RaftError::Dropped(_) | RaftError::Timeout(_) | RaftError::OutcomeUnknown(_)) => {
                    unknown.push(key);
                    break;
                }
                Err(e) => panic!("seed {seed}: unexpected {e}"),
            }
            assert!(Instant::now() < deadline, "seed {seed}: write {i} never accepted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    eprintln!("    heal; {} acknowledged, {} unknown, {:?}", acked.len(), unknown.len(), started.elapsed());
    net.isolated.lock().unwrap().clear();
    *net.drop_rate.lock().unwrap() = 0.0;
    if let Some((id, _)) = crashed {
        sim.start_replica(id);
    }
    // A final write through the healed group, then every replica must reach it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let last = loop {
        if let Some(l) = sim.leader().cloned()
            && let Ok(i) = l.propose(&Command::DebugPut { key: format!("s{seed}-final"), value: "x".into() }).await
        {
            break i;
        }
        assert!(Instant::now() < deadline, "seed {seed}: no leader after healing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for h in sim.running() {
        let deadline = Instant::now() + Duration::from_secs(20);
        while h.status().applied < last {
            assert!(Instant::now() < deadline, "seed {seed}: replica {} stuck at {:?}", h.status().id, h.status());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // Everyone at the same applied index (an election after healing adds an empty entry).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let applied: Vec<u64> = sim.running().map(|h| h.status().applied).collect();
        let commit = sim.running().map(|h| h.status().commit).max().unwrap_or(0);
        if applied.iter().all(|a| *a == commit) {
            break;
        }
        assert!(Instant::now() < deadline, "seed {seed}: replicas do not converge: {applied:?} (commit {commit})");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let exports: Vec<(u64, Vec<u8>)> = sim.running().map(|h| (h.status().id, h.state().export().unwrap())).collect();
    let snapshots: u64 = sim.running().map(|h| h.status().snapshots_received).sum();
    for h in sim.running() {
        let sm = h.state();
        for k in &acked {
            let r = sm
                .debug(k)
                .unwrap()
                .unwrap_or_else(|| panic!("seed {seed}: acknowledged {k} lost on {}", h.status().id));
            assert_eq!(r.writes, 1, "seed {seed}: {k} applied {} times on {}", r.writes, h.status().id);
        }
        for k in &unknown {
            if let Some(r) = sm.debug(k).unwrap() {
                assert_eq!(r.writes, 1, "seed {seed}: {k} applied {} times", r.writes);
            }
        }
    }
    for (id, e) in &exports[1..] {
        assert!(*e == exports[0].1, "seed {seed}: replica {id} differs from replica {}", exports[0].0);
    }
    eprintln!(
        "    seed {seed}: {} replicas identical at index {last}; messages delivered {}, dropped {}; snapshots installed {snapshots}",
        exports.len(),
        net.delivered.lock().unwrap(),
        net.dropped.lock().unwrap()
    );
    for id in 1..=3 {
        sim.crash(id);
    }
}
