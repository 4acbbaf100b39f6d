//! Removal of backups: only blobs nothing else references go, and never one a running backup is
//! about to reference. Real races are set up exactly with a gate that holds a chosen storage
//! request ([`cassette_integration::gate`]), the other side being the real `cassette-agent` binary.
//!
//! What it proves:
//! - removing a backup keeps every blob another backup (or a commit-log entry) needs; the bytes
//!   freed are what `list` predicted; the other backups verify deeply and restore byte for byte;
//! - a dry run deletes nothing; --keep-last and --older-than per node; --all-nodes; a cluster
//!   backup (with a cluster manifest) goes whole or not at all;
//! - a removal started while a backup runs refuses and deletes nothing; a backup started while
//!   a removal runs waits, then stores again what the removal took, and loses nothing;
//! - the lock of a killed backup goes stale and stops blocking; the grace period keeps young
//!   unreferenced blobs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::{Duration, Instant};

use cassette_agent::config::AgentConfig;
use cassette_agent::ops::backup::{self, BackupRequest};
use cassette_agent::ops::remove::{self, RemoveRequest, RemoveScope};
use cassette_common::layout;
use cassette_integration::emulator::{ClusterSpec, Version};
use cassette_integration::gate::{Gate, GateOn, GatedStore};
use cassette_integration::node::{NodeEnv, content, live_files, step};
use cassette_integration::process::ManagedProcess;
use cassette_integration::servers::Backend;

const EMU: &str = env!("CARGO_BIN_EXE_cassandra-emulator");

fn start(test: &str, backend: Backend, nodes: usize) -> Option<NodeEnv> {
    cassette_integration::init_test_logging();
    let mut s = ClusterSpec::single(Version::V41);
    s.data_dirs = 2;
    s.datacenters = vec![("dc1".into(), nodes)];
    let env = NodeEnv::start(test, EMU, backend, &s).unwrap()?;
    env.admin(&["create-keyspace", "shop"]);
    env.admin(&["create-table", "shop.users", "--columns", "id int, email text", "--pk", "id"]);
    env.admin(&["write-sstables", "shop.users", "--count", "3", "--size", "40000"]);
    // Removal tests run without a grace period unless they test it.
    let mut cfg = env.base_config().unwrap();
    cfg.removal.grace = Duration::ZERO;
    env.write_config(&cfg).unwrap();
    Some(env)
}

fn config(env: &NodeEnv) -> AgentConfig {
    let mut cfg = env.base_config().unwrap();
    cfg.removal.grace = Duration::ZERO;
    cfg
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn id(v: &serde_json::Value) -> String {
    v["backup_id"].as_str().unwrap().to_owned()
}

fn blob_count(env: &NodeEnv) -> usize {
    rt().block_on(env.repo().list(layout::BLOBS_PREFIX)).unwrap().len()
}

#[test]
fn t70_removal_keeps_what_other_backups_need() {
    let Some(env) = start("t70", Backend::S3sFs, 1) else { return };
    let roots = env.roots();
    let b1 = env.agent_ok(&["backup"]);
    let want1 = content(&live_files(&roots, "shop"));
    env.admin(&["write-sstables", "shop.users", "--count", "2", "--size", "30000"]);
    let b2 = env.agent_ok(&["backup"]);
    env.admin(&["compact", "shop.users"]);
    let b3 = env.agent_ok(&["backup"]);
    let want3 = content(&live_files(&roots, "shop"));

    step("list predicts what removing the middle backup frees");
    let l = env.agent_ok(&["list"]);
    let middle = l["backups"].as_array().unwrap().iter().find(|b| b["backup_id"] == b2["backup_id"]).unwrap().clone();
    let predicted = middle["reclaimable_bytes"].as_u64().unwrap();
    assert!(predicted >= 60000, "the two SSTables only b2 has: {middle}");

    step("a dry run deletes nothing");
    let before = blob_count(&env);
    let d = env.agent_ok(&["remove-backup", &id(&b2), "--dry-run"]);
    assert_eq!(d["bytes_freed"].as_u64(), Some(predicted), "{d}");
    assert_eq!(blob_count(&env), before);
    assert_eq!(env.agent_ok(&["list"])["backups"].as_array().unwrap().len(), 3);

    step("remove the middle backup");
    let r = env.agent_ok(&["remove-backup", &id(&b2)]);
    assert_eq!(r["bytes_freed"].as_u64(), Some(predicted), "{r}");
    assert_eq!(r["removed"][0]["backup_id"], b2["backup_id"]);
    assert_eq!(blob_count(&env), before - r["blobs_deleted"].as_u64().unwrap() as usize);
    let left: Vec<String> = env.agent_ok(&["list"])["backups"].as_array().unwrap().iter().map(id).collect();
    assert_eq!(left, vec![id(&b1), id(&b3)]);
    for b in [&b1, &b3] {
        assert!(env.agent_ok(&["verify", &id(b), "--deep"])["ok"].as_bool().unwrap());
    }
    step("the others restore byte for byte");
    env.agent_ok(&["restore", &id(&b1), "--strategy", "import"]);
    assert_eq!(content(&live_files(&roots, "shop")), want1);
    env.agent_ok(&["restore", &id(&b3), "--strategy", "hardlinks"]);
    assert_eq!(content(&live_files(&roots, "shop")), want3);

    step("commit-log entries keep their segments whatever backups go");
    let seg = env.dir.path().join("CommitLog-7-1699285478684.log");
    std::fs::write(&seg, cassette_common::commitlog::CommitLogHeader::plain(7, 1699285478684).encode()).unwrap();
    env.agent_ok(&["commitlog-backup", seg.to_str().unwrap()]);
    let r = env.agent_ok(&["remove-backup", "--keep-last", "0"]);
    assert_eq!(r["kept"], 0);
    assert!(env.agent_ok(&["list"])["backups"].as_array().unwrap().is_empty());
    assert_eq!(blob_count(&env), 1, "only the segment's blob is left");
}

#[test]
fn t71_selection_per_node_all_nodes_and_cluster_backups() {
    let Some(env) = start("t71", Backend::Local, 2) else { return };
    let mut cfg2 = config(&env);
    cfg2.cassandra.jmx_host = "127.0.0.2".into();
    cfg2.cassandra.cql_host = "127.0.0.2".into();
    cfg2.cassandra.cassandra_yaml = Some(env.cluster.write_cassandra_yaml("127.0.0.2").unwrap());
    cfg2.state_dir = Some(env.dir.path().join("state2"));
    let cfg2_path = env.dir.path().join("agent2.toml");
    std::fs::write(&cfg2_path, toml::to_string(&cfg2).unwrap()).unwrap();
    let node2 = |args: &[&str]| {
        let out = env.command_with(&cfg2_path, args).output().unwrap();
        assert!(out.status.success(), "node 2: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let mut mine = Vec::new();
    for _ in 0..3 {
        mine.push(id(&env.agent_ok(&["backup"])));
        node2(&["backup"]);
    }
    step("--older-than spares recent backups");
    let r = env.agent_ok(&["remove-backup", "--older-than", "1h"]);
    assert!(r["removed"].as_array().unwrap().is_empty() && r["kept"] == 3, "{r}");
    step("--keep-last 2 on this node only");
    let r = env.agent_ok(&["remove-backup", "--keep-last", "2"]);
    assert_eq!(r["removed"].as_array().unwrap().len(), 1);
    assert_eq!(r["removed"][0]["backup_id"].as_str(), Some(mine[0].as_str()));
    assert_eq!(env.agent_ok(&["list", "--all-nodes"])["backups"].as_array().unwrap().len(), 5);
    step("--all-nodes --keep-last 1: each node keeps its newest");
    let r = env.agent_ok(&["remove-backup", "--all-nodes", "--keep-last", "1"]);
    assert_eq!(r["removed"].as_array().unwrap().len(), 3);
    let left = env.agent_ok(&["list", "--all-nodes"]);
    assert_eq!(left["backups"].as_array().unwrap().len(), 2);
    assert_eq!(left["backups"].as_array().unwrap().iter().filter(|b| b["backup_id"] == mine[2].as_str()).count(), 1);

    step("a cluster backup goes for every node or not at all");
    let cid = "20991231T000000Z-00000001";
    env.agent_ok(&["backup", "--backup-id", cid]);
    node2(&["backup", "--backup-id", cid]);
    let c = env.cluster.cluster().unwrap();
    let cm = cassette_common::manifest::ClusterManifest {
        format: 1,
        backup_id: cid.parse().unwrap(),
        tag: None,
        cluster: c.cluster_name.clone(),
        started_at: chrono::Utc::now(),
        finished_at: chrono::Utc::now(),
        snapshot_skew_ms: Some(3),
        nodes: vec![],
        missing_nodes: vec![],
    };
    let key = layout::cluster_manifest_key(&c.cluster_name, &cid.parse().unwrap());
    rt().block_on(env.repo().put_json_create(&key, &cm)).unwrap();
    let e = env.agent_err(&["remove-backup", cid]).error();
    assert!(e.contains("cluster backup") && e.contains("--all-nodes") && e.contains("nothing was deleted"), "{e}");
    let r = env.agent_ok(&["remove-backup", cid, "--all-nodes"]);
    assert_eq!(r["removed"].as_array().unwrap().len(), 2);
    assert_eq!(r["manifests_deleted"], 3, "both node manifests and the cluster manifest: {r}");
}

#[test]
fn t72_removal_started_during_a_backup_refuses_and_deletes_nothing() {
    let Some(env) = start("t72", Backend::Local, 1) else { return };
    let roots = env.roots();
    let old = env.agent_ok(&["backup"]);
    env.admin(&["write-sstables", "shop.users", "--count", "2", "--size", "30000"]);
    let cfg = config(&env);
    let rt = rt();
    rt.block_on(async {
        step("a backup runs, held right before it stores its first new blob");
        let gate = Gate::new(GateOn::Put("blobs/".into()));
        let store = Arc::new(GatedStore::new(Arc::clone(env.repo().store()), Arc::clone(&gate)));
        let ctx = env.context(&cfg, store);
        let running = tokio::spawn(async move { backup::run(&ctx, &BackupRequest::default()).await });
        gate.wait_until_held(Duration::from_secs(30)).await;

        step("a removal of the old backup refuses, naming the backup, and deletes nothing");
        let blobs = blob_count_async(&env).await;
        let r = tokio::task::block_in_place(|| env.agent_err(&["remove-backup", &id(&old)]));
        let e = r.error();
        assert!(e.contains("another operation is using the repository") && e.contains("backup "), "{e}");
        assert!(e.contains("nothing was removed"), "{e}");
        assert_eq!(blob_count_async(&env).await, blobs);

        step("the backup completes");
        gate.release();
        let report = running.await.unwrap().unwrap();
        assert!(report.manifest_key.is_some());
    });
    let want = content(&live_files(&roots, "shop"));
    step("now the removal runs, and the new backup lost nothing");
    env.agent_ok(&["remove-backup", &id(&old)]);
    assert!(env.agent_ok(&["verify", "latest", "--deep"])["ok"].as_bool().unwrap());
    env.admin(&["write-sstables", "shop.users", "--count", "1", "--size", "10"]);
    env.agent_ok(&["restore", "latest", "--strategy", "import"]);
    assert_eq!(content(&live_files(&roots, "shop")), want);
}

async fn blob_count_async(env: &NodeEnv) -> usize {
    env.repo().list(layout::BLOBS_PREFIX).await.unwrap().len()
}

#[test]
fn t73_backup_started_during_a_removal_waits_and_loses_nothing() {
    let Some(env) = start("t73", Backend::Local, 1) else { return };
    let roots = env.roots();
    let old = env.agent_ok(&["backup"]);
    let cfg = config(&env);
    let rt = rt();
    rt.block_on(async {
        step("a removal of the only backup runs, held right before its first blob deletion");
        let gate = Gate::new(GateOn::Delete("blobs/".into()));
        let store = Arc::new(GatedStore::new(Arc::clone(env.repo().store()), Arc::clone(&gate)));
        let ctx = env.context(&cfg, store);
        let scope = RemoveScope::Node(
            env.cluster.cluster().unwrap().cluster_name,
            old["host_id"].as_str().unwrap().parse().unwrap(),
        );
        let req = RemoveRequest { ids: vec![id(&old).parse().unwrap()], ..Default::default() };
        let removal = tokio::spawn(async move { remove::remove(&ctx, &scope, &req).await });
        gate.wait_until_held(Duration::from_secs(30)).await;

        step("a backup of the same, unchanged data starts: every blob it needs is being deleted");
        let log = env.dir.path().join("backup.log");
        let cmd = env.command(&["backup", "--output", "text"]);
        let mut child = ManagedProcess::spawn("backup", cmd, &log).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(&log).unwrap_or_default().contains("waiting for a removal") {
            assert!(Instant::now() < deadline, "the backup did not wait: {}", child.log_tail(4000));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(child.is_running(), "the backup waits while the removal runs");

        step("the removal finishes; the backup goes on, storing again what the removal took");
        gate.release();
        let removed = removal.await.unwrap().unwrap();
        assert!(removed.blobs_deleted > 0, "{removed:?}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.is_running() {
            assert!(Instant::now() < deadline, "the backup did not finish: {}", child.log_tail(4000));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = std::fs::read_to_string(&log).unwrap();
        assert!(log.contains("complete"), "{log}");
    });
    step("the new backup is complete: every blob there and intact, restorable byte for byte");
    assert!(env.agent_ok(&["verify", "latest", "--deep"])["ok"].as_bool().unwrap());
    let want = content(&live_files(&roots, "shop"));
    env.admin(&["write-sstables", "shop.users", "--count", "1", "--size", "10"]);
    env.agent_ok(&["restore", "latest", "--strategy", "import"]);
    assert_eq!(content(&live_files(&roots, "shop")), want);
}

#[test]
fn t74_lock_of_a_killed_backup_goes_stale() {
    let Some(env) = start("t74", Backend::Local, 1) else { return };
    let mut cfg = config(&env);
    cfg.locks.refresh = Duration::from_millis(500);
    cfg.locks.stale_after = Duration::from_secs(3);
    env.write_config(&cfg).unwrap();
    let old = env.agent_ok(&["backup"]);
    env.admin(&["write-sstables", "shop.users", "--count", "1", "--size", "3000000"]);
    step("a slow backup is killed (kill -9) while it uploads");
    let log = env.dir.path().join("slow.log");
    let mut child = ManagedProcess::spawn("backup", env.command(&["backup", "--bandwidth", "100KiB/s"]), &log).unwrap();
    let locks = env.server.location(&env.prefix).local_dir().unwrap().join("locks");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(&locks).map(|d| d.count()).unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "no lock appeared: {}", child.log_tail(4000));
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill9();
    step("right away, its lock still blocks a removal");
    let e = env.agent_err(&["remove-backup", &id(&old)]).error();
    assert!(e.contains("another operation"), "{e}");
    step("after the stale timeout it does not, and it is cleaned up");
    std::thread::sleep(Duration::from_secs(4));
    let r = env.agent_ok(&["remove-backup", &id(&old)]);
    assert_eq!(r["stale_locks_removed"], 1, "{r}");
    assert_eq!(std::fs::read_dir(&locks).map(|d| d.count()).unwrap_or(0), 0);
}

#[test]
fn t75_grace_period_keeps_young_blobs() {
    let Some(env) = start("t75", Backend::S3sFs, 1) else { return };
    env.write_config(&env.base_config().unwrap()).unwrap(); // the default grace period: 24h
    let b1 = env.agent_ok(&["backup"]);
    env.admin(&["compact", "shop.users"]);
    env.agent_ok(&["backup"]);
    let before = blob_count(&env);
    let r = env.agent_ok(&["remove-backup", &id(&b1)]);
    assert_eq!(r["blobs_deleted"], 0, "{r}");
    assert!(r["blobs_kept_young"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(blob_count(&env), before);
    step("with the grace period over (0s here), the next removal sweeps them");
    let mut cfg = env.base_config().unwrap();
    cfg.removal.grace = Duration::ZERO;
    env.write_config(&cfg).unwrap();
    let r = env.agent_ok(&["remove-backup", "--older-than", "1000d"]);
    assert!(r["blobs_deleted"].as_u64().unwrap() > 0, "an empty selection still sweeps orphans: {r}");
}
