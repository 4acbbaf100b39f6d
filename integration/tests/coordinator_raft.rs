//! The coordinator's raft group as separate processes (`cassette-coordinator serve`), over mTLS,
//! driven through the operator API client that follows the leader.
//!
//! Each test keeps its directory (configs, state, logs) when it fails: the path is printed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cassette_coordinator::client::OperatorClient;
use cassette_integration::coordinator::{CoordinatorGroup, TestPki};
use cassette_proto::v1 as pb;

fn step(s: &str) {
    eprintln!("--- step {s}");
}

/// A test directory that is kept (and printed) when the test fails.
struct Workdir {
    dir: Option<tempfile::TempDir>,
}

impl Workdir {
    fn new(name: &str) -> Self {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        Self { dir: Some(tempfile::Builder::new().prefix(&format!("cassette-{name}-")).tempdir().unwrap()) }
    }
    fn path(&self) -> &std::path::Path {
        self.dir.as_ref().unwrap().path()
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(d) = self.dir.take()
        {
            eprintln!("test failed: its directory (logs, state, certificates) is kept at {}", d.keep().display());
        }
    }
}

async fn put(c: &OperatorClient, key: &str, value: &str) -> u64 {
    let req = pb::DebugPutRequest { key: key.into(), value: value.into() };
    c.call(|mut c| {
        let r = req.clone();
        async move { c.debug_put(r).await }
    })
    .await
    .unwrap_or_else(|e| panic!("write {key}: {e}"))
    .index
}

async fn read_all(c: &OperatorClient) -> BTreeMap<String, serde_json::Value> {
    let r =
        c.call(|mut c| async move { c.state_get(pb::StateGetRequest { key: "debug/".into() }).await }).await.unwrap();
    r.values.into_iter().map(|(k, v)| (k, serde_json::from_str(&v).unwrap())).collect()
}

/// Every key written is there exactly once (`writes` counts applications of distinct commands).
fn assert_all_present(state: &BTreeMap<String, serde_json::Value>, keys: &[String]) {
    for k in keys {
        let v = state.get(&format!("debug/{k}")).unwrap_or_else(|| panic!("committed key {k} lost"));
        assert_eq!(v["writes"], 1, "{k} applied {} times", v["writes"]);
    }
}

async fn write_n(c: &OperatorClient, prefix: &str, n: usize) -> (Vec<String>, u64) {
    let mut keys = Vec::new();
    let mut last = 0;
    for i in 0..n {
        let k = format!("{prefix}-{i}");
        last = put(c, &k, &i.to_string()).await;
        keys.push(k);
    }
    (keys, last)
}

fn guard<T>(g: &CoordinatorGroup, r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}\n{}", g.logs()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t50_kill9_of_the_leader_fails_over_within_3s_without_losing_committed_writes() {
    // - three replicas as processes; writes acknowledged by the leader;
    // - kill -9 of the leader: a new leader accepts writes within 3 s;
    // - every acknowledged write is still there, applied once;
    // - the killed replica restarts from its directory and catches up.
    let w = Workdir::new("t50");
    let pki = TestPki::new(&w.path().join("pki")).unwrap();
    let mut g = CoordinatorGroup::start(&pki, w.path(), 3, &[]).unwrap();
    step("wait for a leader");
    let leader = guard(&g, g.wait_for_leader(Duration::from_secs(20), &[]).await);
    let c = g.client().unwrap();
    step("write 30 keys");
    let (mut keys, _) = write_n(&c, "before", 30).await;
    step(&format!("kill -9 the leader (replica {leader})"));
    let killed_at = Instant::now();
    g.kill9(leader);
    let c = g.client().unwrap();
    put(&c, "after-failover", "1").await;
    let failover = killed_at.elapsed();
    eprintln!("failover: first write acknowledged {failover:?} after kill -9 of the leader");
    assert!(failover < Duration::from_secs(3), "failover took {failover:?}\n{}", g.logs());
    keys.push("after-failover".into());
    let new_leader = guard(&g, g.wait_for_leader(Duration::from_secs(5), &[leader]).await);
    assert_ne!(new_leader, leader);
    step("every committed write survived");
    assert_all_present(&read_all(&c).await, &keys);
    step("restart the old leader from its directory; it catches up");
    let (more, last) = write_n(&c, "while-down", 10).await;
    keys.extend(more);
    g.restart(leader).unwrap();
    let s = guard(&g, g.wait_applied(leader, last, Duration::from_secs(20)).await);
    assert_eq!(s.role, "follower");
    assert_all_present(&read_all(&c).await, &keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t51_an_isolated_replica_heals() {
    // - fault injection isolates a follower: the majority keeps committing, it falls behind;
    // - healed, it catches up;
    // - isolating the leader: the other two elect a new one (check-quorum), writes go on;
    //   healed, the old leader rejoins as a follower with nothing lost.
    let w = Workdir::new("t51");
    let pki = TestPki::new(&w.path().join("pki")).unwrap();
    let g = CoordinatorGroup::start(&pki, w.path(), 3, &[]).unwrap();
    let leader = guard(&g, g.wait_for_leader(Duration::from_secs(20), &[]).await);
    let c = g.client().unwrap();
    let (mut keys, _) = write_n(&c, "a", 5).await;
    let follower = *g.replicas.keys().find(|id| **id != leader).unwrap();
    step(&format!("isolate follower {follower}"));
    g.faults(follower, true, 0.0).await.unwrap();
    let before = g.status(follower).await.unwrap().applied_index;
    let (more, last) = write_n(&c, "b", 10).await;
    keys.extend(more);
    let lagging = g.status(follower).await.unwrap();
    assert!(lagging.applied_index < last, "isolated replica still applied {} >= {last}", lagging.applied_index);
    assert_eq!(lagging.applied_index, before);
    step("heal it: it catches up");
    g.faults(follower, false, 0.0).await.unwrap();
    guard(&g, g.wait_applied(follower, last, Duration::from_secs(10)).await);

    step(&format!("isolate the leader {leader}"));
    g.faults(leader, true, 0.0).await.unwrap();
    let t = Instant::now();
    let new_leader = guard(&g, g.wait_for_leader(Duration::from_secs(10), &[leader]).await);
    eprintln!("new leader {new_leader} elected {:?} after isolating {leader}", t.elapsed());
    let others: Vec<String> = g.replicas.values().filter(|r| r.id != leader).map(|r| r.address.clone()).collect();
    let c2 = OperatorClient::new(others, pki.operator().unwrap(), Duration::from_secs(10)).unwrap();
    let (more, last) = write_n(&c2, "c", 10).await;
    keys.extend(more);
    // The isolated old leader steps down after an election timeout without a quorum
    // (check-quorum), so it stops serving.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let old = g.status(leader).await.unwrap();
        if old.role != "leader" {
            break;
        }
        assert!(Instant::now() < deadline, "an isolated leader must step down: {old:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    step("heal the old leader: it follows and catches up");
    g.faults(leader, false, 0.0).await.unwrap();
    let s = guard(&g, g.wait_applied(leader, last, Duration::from_secs(10)).await);
    assert_eq!(s.role, "follower");
    assert_all_present(&read_all(&g.client().unwrap()).await, &keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t52_every_replica_restarts_from_disk() {
    // - writes, then every replica killed (-9, no clean shutdown); meanwhile the CLI reports
    //   that no leader is reachable, with what each replica answered;
    // - all restarted from their directories: same state, a leader, new writes accepted.
    let w = Workdir::new("t52");
    let pki = TestPki::new(&w.path().join("pki")).unwrap();
    let mut g = CoordinatorGroup::start(&pki, w.path(), 3, &[]).unwrap();
    let leader = guard(&g, g.wait_for_leader(Duration::from_secs(20), &[]).await);
    let c = g.client().unwrap();
    let (mut keys, last) = write_n(&c, "k", 25).await;
    step("kill -9 two replicas: the CLI says no leader is reachable, and why for each");
    // The survivor is a follower: a leader left alone keeps accepting proposals until it notices
    // it lost its quorum, and would answer "no answer from the raft group" instead.
    let survivor = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    let killed: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != survivor).collect();
    for &id in &killed {
        g.kill9(id);
    }
    let cli = |g: &CoordinatorGroup| {
        let mut a = vec!["--coordinator".to_owned(), g.endpoints().join(","), "--wait".into(), "1s".into()];
        a.extend(pki.args("operator"));
        a.extend(["debug".into(), "put".into(), "x".into(), "1".into()]);
        cassette_integration::coordinator::cassette_cli(&a).unwrap()
    };
    let (code, _, err) = cli(&g);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no coordinator leader reachable within"), "{err}");
    assert!(err.contains(&format!("{}: cannot connect", g.replicas[&killed[0]].address)), "{err}");
    assert!(err.contains(&format!("replica {survivor} is not the leader; no leader is known")), "{err}");
    g.kill9(survivor);
    let (code, _, err) = cli(&g);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("{}: cannot connect", g.replicas[&survivor].address)), "{err}");
    step("restart every replica");
    for id in [1, 2, 3] {
        g.restart(id).unwrap();
    }
    guard(&g, g.wait_for_leader(Duration::from_secs(20), &[]).await);
    let c = g.client().unwrap();
    assert_all_present(&read_all(&c).await, &keys);
    for id in [1, 2, 3] {
        assert!(guard(&g, g.wait_applied(id, last, Duration::from_secs(10)).await).applied_index >= last);
    }
    let (more, _) = write_n(&c, "after", 5).await;
    keys.extend(more);
    assert_all_present(&read_all(&c).await, &keys);
    step("a graceful stop and start works too");
    for id in [1, 2, 3] {
        g.stop(id);
    }
    for id in [1, 2, 3] {
        g.restart(id).unwrap();
    }
    guard(&g, g.wait_for_leader(Duration::from_secs(20), &[]).await);
    assert_all_present(&read_all(&g.client().unwrap()).await, &keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t53_a_replica_far_behind_catches_up_by_snapshot() {
    // - snapshots every 20 entries, 5 kept behind: the log is compacted as writes go on;
    // - a follower stopped during 150 writes cannot be served from the log any more;
    // - restarted, it receives a snapshot, installs it, and then follows the log.
    let w = Workdir::new("t53");
    let pki = TestPki::new(&w.path().join("pki")).unwrap();
    let mut g =
        CoordinatorGroup::start(&pki, w.path(), 3, &["--snapshot-interval", "20", "--compact-keep", "5"]).unwrap();
    let leader = guard(&g, g.wait_for_leader(Duration::from_secs(20), &[]).await);
    let c = g.client().unwrap();
    let (mut keys, _) = write_n(&c, "early", 5).await;
    let behind = *g.replicas.keys().find(|id| **id != leader).unwrap();
    step(&format!("stop follower {behind}; write 150 entries"));
    g.stop(behind);
    let (more, last) = write_n(&c, "while-stopped", 150).await;
    keys.extend(more);
    let ls = g.status(leader).await.unwrap();
    assert!(ls.first_index > 20, "the leader's log was not compacted: {ls:?}");
    step("restart it: snapshot catch-up");
    g.restart(behind).unwrap();
    let s = guard(&g, g.wait_applied(behind, last, Duration::from_secs(20)).await);
    assert!(s.snapshots_received >= 1, "caught up without a snapshot? {s:?}");
    assert!(s.snapshot_index >= ls.first_index - 1, "{s:?}");
    let (more, last) = write_n(&c, "after", 5).await;
    keys.extend(more);
    guard(&g, g.wait_applied(behind, last, Duration::from_secs(10)).await);
    assert_all_present(&read_all(&c).await, &keys);
    step("it can lead with what it received");
    let req = pb::TransferLeaderRequest { to: behind };
    c.call(|mut c| async move { c.transfer_leader(req).await }).await.unwrap();
    assert_eq!(guard(&g, g.wait_for_leader(Duration::from_secs(10), &[]).await), behind);
    assert_all_present(&read_all(&c).await, &keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t54_membership_from_three_to_five_and_back() {
    // - two replicas started with --join and added: five voters, both catch up (by snapshot);
    // - writes continue throughout;
    // - the leader and one new replica removed: three voters; the removed leader hands over first;
    // - removed replicas report "removed"; the remaining group keeps every write.
    let w = Workdir::new("t54");
    let pki = TestPki::new(&w.path().join("pki")).unwrap();
    let mut g = CoordinatorGroup::start(&pki, w.path(), 3, &[]).unwrap();
    let leader = guard(&g, g.wait_for_leader(Duration::from_secs(20), &[]).await);
    let c = g.client().unwrap();
    let (mut keys, _) = write_n(&c, "three", 5).await;
    for id in [4u64, 5] {
        step(&format!("start replica {id} with --join and add it"));
        let address = g.start_joining(id).unwrap();
        let req = pb::AddReplicaRequest { id, address };
        let r = c
            .call(|mut c| {
                let r = req.clone();
                async move { c.add_replica(r).await }
            })
            .await
            .unwrap_or_else(|e| panic!("add replica {id}: {e}\n{}", g.logs()));
        eprintln!("{}", r.message);
        let (more, last) = write_n(&c, &format!("with{id}"), 3).await;
        keys.extend(more);
        guard(&g, g.wait_applied(id, last, Duration::from_secs(20)).await);
    }
    let s = g.status(leader).await.unwrap();
    assert_eq!(s.replicas.iter().filter(|r| r.kind == "voter").count(), 5, "{s:?}");
    let c5 = g.client().unwrap();
    let (more, _) = write_n(&c5, "five", 5).await;
    keys.extend(more);
    assert_all_present(&read_all(&c5).await, &keys);

    for id in [leader, 4] {
        step(&format!("remove replica {id}"));
        let req = pb::RemoveReplicaRequest { id };
        let r = c5.call(|mut c| async move { c.remove_replica(req).await }).await.unwrap();
        eprintln!("{}", r.message);
    }
    let remaining: Vec<u64> = g.replicas.keys().copied().filter(|id| *id != leader && *id != 4).collect();
    let new_leader = guard(&g, g.wait_for_leader(Duration::from_secs(10), &[leader, 4]).await);
    let s = g.status(new_leader).await.unwrap();
    let voters: Vec<u64> = s.replicas.iter().filter(|r| r.kind == "voter").map(|r| r.id).collect();
    assert_eq!(voters, remaining, "{s:?}");
    for id in [leader, 4] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = g.status(id).await.unwrap();
            if s.role == "removed" {
                break;
            }
            assert!(Instant::now() < deadline, "replica {id} does not know it was removed: {s:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        g.stop(id);
    }
    let c3 = OperatorClient::new(
        remaining.iter().map(|id| g.replicas[id].address.clone()).collect(),
        pki.operator().unwrap(),
        Duration::from_secs(10),
    )
    .unwrap();
    let (more, _) = write_n(&c3, "three-again", 5).await;
    keys.extend(more);
    assert_all_present(&read_all(&c3).await, &keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t54b_a_replica_of_another_group_is_refused() {
    // - a replica started by mistake without --join founds its own one-replica group;
    // - added to the real group, its messages and the leader's are refused on both sides with
    //   an explanation (no state is mixed); the real group keeps committing.
    let w = Workdir::new("t54b");
    let pki = TestPki::new(&w.path().join("pki")).unwrap();
    let mut g = CoordinatorGroup::start(&pki, w.path(), 3, &[]).unwrap();
    let leader = guard(&g, g.wait_for_leader(Duration::from_secs(20), &[]).await);
    let c = g.client().unwrap();
    let (mut keys, _) = write_n(&c, "a", 3).await;
    step("start replica 4 alone, then add it");
    let address = g.start_alone(4).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while g.status(4).await.map(|s| s.role != "leader").unwrap_or(true) {
        assert!(Instant::now() < deadline, "the lone replica never led its own group\n{}", g.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let req = pb::AddReplicaRequest { id: 4, address };
    c.call(|mut c| {
        let r = req.clone();
        async move { c.add_replica(r).await }
    })
    .await
    .unwrap();
    let (more, _) = write_n(&c, "b", 3).await;
    keys.extend(more);
    let leader_log = || std::fs::read_to_string(&g.replicas[&leader].log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !leader_log().contains("belongs to another coordinator group") {
        assert!(Instant::now() < deadline, "the leader never reported the foreign replica\n{}", g.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lone = std::fs::read_to_string(&g.replicas[&4].log).unwrap_or_default();
    assert!(lone.contains("refused raft messages from another coordinator group"), "{lone}");
    let s4 = g.status(4).await.unwrap();
    assert_eq!(s4.replicas.len(), 1, "the lone replica's state was mixed with the group's: {s4:?}");
    assert!(read_all(&c).await.keys().all(|k| k.starts_with("debug/a-") || k.starts_with("debug/b-")));
    assert_all_present(&read_all(&c).await, &keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t55b_a_write_that_timed_out_is_reported_as_outcome_unknown_and_not_retried() {
    // - a leader that lost its followers accepts a write it cannot commit; when the write's
    //   time is up the CLI says its outcome is unknown, names what to look up, and does not
    //   send it again (it used to retry it as "unavailable" until --wait, proposing it again
    //   each time);
    // - after healing, the key was written at most once.
    let w = Workdir::new("t55b");
    let pki = TestPki::new(&w.path().join("pki")).unwrap();
    let cfg = w.path().join("replica.json");
    std::fs::write(&cfg, r#"{"request_timeout": "1s"}"#).unwrap();
    // A 3 s election timeout: the isolated leader keeps leading well past the write's 1 s.
    let extra = ["--election-ticks", "60", "--config", cfg.to_str().unwrap()];
    let g = CoordinatorGroup::start(&pki, w.path(), 3, &extra).unwrap();
    let leader = guard(&g, g.wait_for_leader(Duration::from_secs(30), &[]).await);
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    step("isolate both followers, then write at the leader");
    for f in &followers {
        g.faults(*f, true, 0.0).await.unwrap();
    }
    let mut a = vec!["--coordinator".to_owned(), g.replicas[&leader].address.clone(), "--wait".into(), "8s".into()];
    a.extend(pki.args("operator"));
    a.extend(["debug".into(), "put".into(), "once".into(), "1".into()]);
    let t = Instant::now();
    let (code, _, err) = cassette_integration::coordinator::cassette_cli(&a).unwrap();
    let took = t.elapsed();
    eprintln!("the CLI answered after {took:?}: {err}");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("outcome is unknown"), "{err}");
    assert!(err.contains("cassette debug get debug/once"), "{err}");
    assert!(took < Duration::from_secs(4), "the CLI retried a write whose outcome was unknown ({took:?})");
    step("heal: the key was written at most once");
    for f in &followers {
        g.faults(*f, false, 0.0).await.unwrap();
    }
    guard(&g, g.wait_for_leader(Duration::from_secs(30), &[]).await);
    let state = read_all(&g.client().unwrap()).await;
    if let Some(v) = state.get("debug/once") {
        assert_eq!(v["writes"], 1, "written more than once: {v}");
    }
}
