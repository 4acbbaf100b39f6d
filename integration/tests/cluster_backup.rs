//! Cluster backups and restores from one command, as processes: an emulated cluster in two
//! datacenters with `cassette-agent serve` on every node, coordinator replicas, real storage
//! servers, and the `cassette` CLI.
//!
//! What it proves:
//! - t70: a cluster backup on s3s-fs (check, snapshot together, upload, node and cluster
//!   manifests, catalog, snapshots cleared), a second backup that sends only the new blobs, a
//!   live restore under another table name, a lost (truncated) table restored; list/show/verify;
//! - t71: the same on a local directory, --dc, hardlinks, delete; a damaged blob fails the
//!   download's verification on one node and nothing is truncated on any node;
//! - t72: kill -9 of an agent mid-upload and of the coordinator leader mid-operation: the
//!   operation completes, the killed node's job is re-attached (one attempt), finished blobs
//!   are not sent again;
//! - t73: an unreachable node fails the backup naming it, or with --allow-partial completes and
//!   records the node and its tokens as missing; a conflicting operation is refused naming the
//!   running one;
//! - t74: checks before a restore refuse with clear errors and change nothing; an in-place
//!   restore of the whole cluster onto another cluster with the same topology;
//! - t75: the JMX and CQL secrets an agent uses never leave it: not in any log, any stored record
//!   (raft state, job records, the repository) or the CLI's output, also when nodetool fails
//!   with the JVM's start-up notes in its output.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use cassette_common::ids::BlobHash;
use cassette_integration::lab::{Lab, LabOptions};
use cassette_integration::node::{all_files, content, live_files, step};
use cassette_integration::servers::Backend;
use serde_json::Value;

const EMULATOR: &str = env!("CARGO_BIN_EXE_cassandra-emulator");

fn lab(name: &str, backend: Backend, f: impl FnOnce(&mut LabOptions)) -> Option<Lab> {
    let mut o = LabOptions::new(name, EMULATOR, backend);
    f(&mut o);
    Lab::start(&o).unwrap()
}

fn load(lab: &Lab) {
    lab.admin(&["create-keyspace", "shop", "--rf", "2"]).unwrap();
    lab.admin(&["create-table", "shop.users", "--columns", "id int, email text", "--pk", "id"]).unwrap();
    lab.admin(&["create-table", "shop.orders"]).unwrap();
    lab.admin(&["write-sstables", "shop.users", "--count", "3", "--size", "20000"]).unwrap();
    lab.admin(&["write-sstables", "shop.orders", "--count", "2", "--size", "30000"]).unwrap();
    lab.admin(&["insert", "shop.users", "--rows", "50"]).unwrap();
}

/// Table content per node: (node, table, component, hash), whatever the SSTable names.
fn table_content(lab: &Lab, table: &str) -> BTreeMap<String, Vec<(String, BlobHash)>> {
    let c = lab.main.cluster.cluster().unwrap();
    let mut out = BTreeMap::new();
    for n in &c.nodes {
        let v: Vec<(String, BlobHash)> = content(&live_files(&n.roots(), "shop"))
            .into_iter()
            .filter(|(t, _, _)| t.split('/').nth(1) == Some(table))
            .map(|(_, comp, h)| (comp, h))
            .collect();
        out.insert(n.address.clone(), v);
    }
    out
}

fn no_cassette_snapshots(lab: &Lab) {
    for n in lab.main.cluster.cluster().unwrap().nodes {
        for root in n.roots() {
            for f in all_files(&root) {
                let s = f.to_string_lossy();
                assert!(!s.contains("/snapshots/cassette-"), "snapshot left behind: {s}");
            }
        }
    }
}

fn ok(lab: &Lab, args: &[&str]) -> Value {
    let (code, v, err) = lab.cli_json(args);
    assert_eq!(code, 0, "cassette {args:?} failed: {v}\nstderr: {err}\n{}", lab.logs());
    v
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} missing in {v}"))
}

fn upload_results(op: &Value) -> Vec<Value> {
    op["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| n["phases"].as_array().unwrap().iter())
        .filter(|p| p["phase"] == "backup.upload")
        .map(|p| p["result"].clone())
        .collect()
}

async fn repo_keys(lab: &Lab, prefix: &str) -> Vec<String> {
    let repo = lab.storage.repository(&lab.prefix, &Default::default());
    repo.list(prefix).await.unwrap().into_iter().map(|m| m.location.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t70_cluster_backup_incremental_and_live_restores_on_s3s_fs() {
    let Some(lab) = lab("t70", Backend::S3sFs, |_| {}) else { return };
    lab.register("prod", None).unwrap();
    load(&lab);

    step("first cluster backup");
    let b1 = ok(&lab, &["backup", "create", "--cluster", "prod", "--tag", "first"]);
    // As snapshotted (the snapshot flushed the memtables).
    let users_before = table_content(&lab, "users");
    let orders_before = table_content(&lab, "orders");
    assert_eq!(b1["state"], "succeeded", "{b1}");
    let nodes = b1["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    for n in nodes {
        for p in n["phases"].as_array().unwrap() {
            assert_eq!(p["state"], "succeeded", "{p}");
            assert_eq!(p["attempts"], 1, "{p}");
        }
    }
    assert!(b1["snapshot_skew_ms"].as_i64().is_some(), "{b1}");
    let dcs: Vec<&str> = b1["datacenters"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(dcs, ["dc1", "dc2"]);
    let t1 = &b1["totals"];
    assert!(u(t1, "bytes_total") > 100_000 && u(t1, "bytes_done") == u(t1, "bytes_total"), "{t1}");
    no_cassette_snapshots(&lab);
    let id1 = b1["backup_id"].as_str().unwrap().to_owned();
    let keys = repo_keys(&lab, "clusters/").await;
    assert!(keys.iter().any(|k| k.ends_with(&format!("{id1}/cluster.json"))), "no cluster manifest in {keys:?}");
    assert_eq!(keys.iter().filter(|k| k.contains(&id1) && !k.ends_with("cluster.json")).count(), 3, "{keys:?}");

    step("catalog: list, show, verify");
    let list = ok(&lab, &["backup", "list", "--cluster", "prod"]);
    assert_eq!(list["backups"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["backups"][0]["status"], "complete");
    assert_eq!(list["backups"][0]["labels"]["tag"], "first");
    let show = ok(&lab, &["backup", "show", "first", "--cluster", "prod"]);
    assert_eq!(show["backup"]["id"], id1.as_str());
    let ver = ok(&lab, &["backup", "verify", "latest", "--cluster", "prod"]);
    assert_eq!(ver["result"]["ok"], true, "{ver}");

    step("more data, second backup: only new blobs are sent");
    lab.admin(&["write-sstables", "shop.orders", "--count", "2", "--size", "25000"]).unwrap();
    let b2 = ok(&lab, &["backup", "create", "--cluster", "prod"]);
    assert_eq!(b2["state"], "succeeded", "{b2}");
    let t2 = &b2["totals"];
    assert!(u(t2, "bytes_skipped") >= u(t1, "bytes_total") - 1000, "the first backup's files are deduplicated: {t2}");
    assert!(u(t2, "bytes_transferred") > 0 && u(t2, "bytes_transferred") < u(t2, "bytes_total") / 2, "{t2}");
    for r in upload_results(&b2) {
        assert!(u(&r, "files_skipped") > 0, "{r}");
    }
    let orders_after_b2 = table_content(&lab, "orders");

    step("live restore of shop.users into shop.users_copy");
    lab.admin(&["create-table", "shop.users_copy", "--columns", "id int, email text", "--pk", "id"]).unwrap();
    let r = ok(
        &lab,
        &[
            "restore",
            "create",
            "--cluster",
            "prod",
            "--backup",
            &id1,
            "--entities",
            "shop.users",
            "--rename",
            "shop.users=shop.users_copy",
        ],
    );
    assert_eq!(r["state"], "succeeded", "{r}");
    let steps: Vec<&str> = r["steps"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert_eq!(steps, ["restore.check", "restore.download", "restore.truncate", "restore.import", "restore.cleanup"]);
    assert_eq!(table_content(&lab, "users_copy"), users_before, "users_copy holds the backed-up users");
    assert_eq!(table_content(&lab, "users"), users_before, "the source table is untouched");

    step("a table is lost (TRUNCATE), then restored from the newest backup");
    let out = lab.main.cluster.cqlsh(&["127.0.0.1", "-e", "TRUNCATE shop.orders"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(table_content(&lab, "orders").values().all(Vec::is_empty));
    let r = ok(&lab, &["restore", "create", "--cluster", "prod", "--entities", "shop.orders"]);
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(table_content(&lab, "orders"), orders_after_b2);
    assert_ne!(orders_before, orders_after_b2);
    no_cassette_snapshots(&lab);

    let ops = ok(&lab, &["operations", "list", "--cluster", "prod"]);
    assert_eq!(ops["operations"].as_array().unwrap().len(), 5, "{ops}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t71_cluster_backup_restore_and_delete_on_a_directory() {
    let Some(lab) = lab("t71", Backend::Local, |o| o.datacenters = vec![("dc1".into(), 1), ("dc2".into(), 1)]) else {
        return;
    };
    lab.register("prod", None).unwrap();
    load(&lab);
    let b = ok(&lab, &["backup", "create", "--cluster", "prod", "--entities", "shop", "--dc", "dc2"]);
    assert_eq!(b["state"], "succeeded", "{b}");
    assert_eq!(b["nodes"].as_array().unwrap().len(), 1, "--dc dc2 backs up dc2 only: {b}");
    let id = b["backup_id"].as_str().unwrap().to_owned();
    let b = ok(&lab, &["backup", "create", "--cluster", "prod", "--entities", "shop.users"]);
    assert_eq!(b["nodes"].as_array().unwrap().len(), 2);
    let before = table_content(&lab, "users");
    let out = lab.main.cluster.cqlsh(&["127.0.0.1", "-e", "TRUNCATE shop.users"]);
    assert_eq!(out.code, 0, "{out:?}");
    let r = ok(&lab, &["restore", "create", "--cluster", "prod", "--strategy", "hardlinks"]);
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(table_content(&lab, "users"), before);

    step("delete the first backup: catalog and storage");
    let d = ok(&lab, &["backup", "delete", &id, "--cluster", "prod"]);
    assert_eq!(d["state"], "succeeded", "{d}");
    let list = ok(&lab, &["backup", "list", "--cluster", "prod"]);
    assert_eq!(list["backups"].as_array().unwrap().len(), 1, "{list}");
    assert!(repo_keys(&lab, "clusters/").await.iter().all(|k| !k.contains(&id)));
    let (code, v, _) = lab.cli_json(&["backup", "verify", &id, "--cluster", "prod"]);
    assert_ne!(code, 0);
    assert!(v["error"].as_str().unwrap().contains("no backup"), "{v}");

    step("a damaged blob: the download fails its verification and nothing is truncated anywhere");
    let node2 = &lab.main.cluster.cluster().unwrap().nodes[1];
    let (_, (hash, size)) = live_files(&node2.roots(), "shop")
        .into_iter()
        .find(|(k, _)| k.contains("/users-") && k.ends_with("Data.db"))
        .unwrap();
    let blob = lab.storage.blob_file(&lab.prefix, &hash).unwrap();
    std::fs::write(&blob, vec![0u8; size as usize]).unwrap();
    let (code, v, _) = lab.cli_json(&["backup", "verify", "latest", "--cluster", "prod", "--deep"]);
    assert_eq!(code, 1, "{v}");
    let (code, v, _) = lab.cli_json(&["restore", "create", "--cluster", "prod", "--entities", "shop.users"]);
    assert_eq!(code, 1, "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(e.contains("restore.download failed on 1 of 2 nodes") && e.contains("127.0.0.2"), "{e}");
    let truncate = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| n["phases"].as_array().unwrap().iter())
        .find(|p| p["phase"] == "restore.truncate");
    assert!(truncate.is_none(), "the truncate step was never reached: {v}");
    assert_eq!(table_content(&lab, "users"), before, "every node keeps its data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t72_agent_and_leader_killed_mid_backup_the_operation_completes() {
    let Some(mut lab) = lab("t72", Backend::S3sFs, |o| {
        o.replicas = 3;
        o.datacenters = vec![("dc1".into(), 2)];
    }) else {
        return;
    };
    lab.register("prod", None).unwrap();
    lab.admin(&["create-keyspace", "shop"]).unwrap();
    lab.admin(&["create-table", "shop.events"]).unwrap();
    // 40 SSTables of 100 KB per node at 1 MiB/s: several seconds of upload.
    lab.admin(&["write-sstables", "shop.events", "--count", "40", "--size", "100000"]).unwrap();
    let started = ok(&lab, &["backup", "create", "--cluster", "prod", "--bandwidth", "1MiB/s", "--detach"]);
    let id = started["id"].as_str().unwrap().to_owned();

    step("wait until node 127.0.0.2 has sent some bytes, then kill -9 its agent");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, v, _) = lab.cli_json(&["operations", "show", &id]);
        let n = v["nodes"].as_array().and_then(|a| a.iter().find(|n| n["address"] == "127.0.0.2").cloned());
        if n.as_ref().is_some_and(|n| n["transfer"]["bytes_transferred"].as_u64().unwrap_or(0) > 300_000) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no upload progress: {v}\n{}", lab.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    lab.main.agents[1].kill9();
    step("kill -9 the coordinator leader");
    let leader = lab.group.wait_for_leader(Duration::from_secs(10), &[]).await.unwrap();
    lab.group.kill9(leader);
    tokio::time::sleep(Duration::from_millis(500)).await;
    lab.main.agents[1].restart().unwrap();
    let new_leader = lab.group.wait_for_leader(Duration::from_secs(20), &[leader]).await.unwrap();
    assert_ne!(new_leader, leader);

    let v = lab.wait_operation(&id, Duration::from_secs(120)).await.unwrap();
    assert_eq!(v["state"], "succeeded", "{v}\n{}", lab.logs());
    let node = v["nodes"].as_array().unwrap().iter().find(|n| n["address"] == "127.0.0.2").unwrap();
    let up = node["phases"].as_array().unwrap().iter().find(|p| p["phase"] == "backup.upload").unwrap();
    assert_eq!(up["attempts"], 1, "the new leader re-attached to the running job instead of starting another: {up}");
    let r = &up["result"];
    assert!(u(r, "files_skipped") > 0, "the resumed job skipped what was stored before the kill: {r}");
    assert!(u(r, "bytes_uploaded") < u(r, "bytes"), "finished blobs were not sent again: {r}");
    let agent_log = lab.main.agents[1].log_text();
    assert!(agent_log.contains("resuming a job interrupted by a restart"), "{agent_log}");
    let list = ok(&lab, &["backup", "list", "--cluster", "prod"]);
    assert_eq!(list["backups"][0]["status"], "complete", "{list}");
    assert_eq!(list["backups"][0]["nodes"].as_array().unwrap().len(), 2);
    no_cassette_snapshots(&lab);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t73_unreachable_node_partial_backup_and_conflicts() {
    let Some(mut lab) = lab("t73", Backend::S3sFs, |o| {
        o.coordinator_args =
            ["--agent-timeout", "1s", "--retry-backoff", "100ms", "--phase-attempts", "2", "--poll-interval", "100ms"]
                .map(String::from)
                .to_vec();
    }) else {
        return;
    };
    lab.register("prod", None).unwrap();
    load(&lab);

    step("a conflicting operation is refused, naming the running one");
    lab.admin(&["write-sstables", "shop.orders", "--count", "20", "--size", "100000"]).unwrap();
    let first = ok(&lab, &["backup", "create", "--cluster", "prod", "--bandwidth", "1MiB/s", "--detach"]);
    let first_id = first["id"].as_str().unwrap().to_owned();
    let (code, v, err) = lab.cli_json(&["backup", "create", "--cluster", "prod"]);
    assert_ne!(code, 0);
    let e = v["error"].as_str().unwrap_or_default();
    assert!(e.contains(&first_id) && e.contains("is running on cluster prod"), "{v} {err}");
    let (code, v, _) = lab.cli_json(&["restore", "create", "--cluster", "prod"]);
    assert_ne!(code, 0, "{v}");
    let v = lab.wait_operation(&first_id, Duration::from_secs(90)).await.unwrap();
    assert_eq!(v["state"], "succeeded", "{v}");

    step("node 127.0.0.3 unreachable: the backup fails naming it");
    lab.main.agents[2].kill9();
    let (code, v, _) = lab.cli_json(&["backup", "create", "--cluster", "prod"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["state"], "failed");
    let e = v["error"].as_str().unwrap();
    assert!(e.contains("backup.check") && e.contains("127.0.0.3") && e.contains("cannot connect"), "{e}");
    no_cassette_snapshots(&lab);

    step("with --allow-partial it completes and records what it lacks");
    let v = ok(&lab, &["backup", "create", "--cluster", "prod", "--allow-partial"]);
    assert_eq!(v["state"], "succeeded", "{v}");
    let id = v["backup_id"].as_str().unwrap().to_owned();
    let list = ok(&lab, &["backup", "list", "--cluster", "prod"]);
    let b = list["backups"].as_array().unwrap().iter().find(|b| b["id"] == id.as_str()).unwrap();
    assert_eq!(b["status"], "partial");
    assert_eq!(b["nodes"].as_array().unwrap().len(), 2);
    let missing_host = lab.main.cluster.cluster().unwrap().nodes[2].host_id.clone();
    assert_eq!(b["labels"]["missing_nodes"], missing_host.as_str());
    let repo = lab.storage.repository(&lab.prefix, &Default::default());
    let key = cassette_common::layout::cluster_manifest_key("Test Cluster", &id.parse().unwrap());
    let cm: cassette_common::manifest::ClusterManifest = repo.get_json(&key, 1 << 20).await.unwrap();
    assert_eq!(cm.nodes.len(), 2);
    assert_eq!(cm.missing_nodes.len(), 1);
    assert_eq!(cm.missing_nodes[0].host_id.to_string(), missing_host);
    assert_eq!(cm.missing_nodes[0].datacenter, "dc2");
    lab.main.agents[2].restart().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t74_restore_checks_and_in_place_restore_onto_another_cluster() {
    let Some(mut lab) = lab("t74", Backend::S3sFs, |_| {}) else { return };
    lab.register("prod", None).unwrap();
    load(&lab);
    let b = ok(&lab, &["backup", "create", "--cluster", "prod"]);
    let id = b["backup_id"].as_str().unwrap().to_owned();
    let users = table_content(&lab, "users");
    assert!(!users.values().any(Vec::is_empty));

    step("checks refuse before anything changes");
    let (code, v, _) = lab.cli_json(&["restore", "create", "--cluster", "prod", "--strategy", "bogus"]);
    assert_ne!(code, 0);
    assert!(v["error"].as_str().unwrap().contains("import, hardlinks or in-place"), "{v}");
    let (code, v, _) = lab.cli_json(&["restore", "create", "--cluster", "prod", "--backup", "nope"]);
    assert_ne!(code, 0);
    assert!(v["error"].as_str().unwrap().contains(&id), "names the backups there are: {v}");
    let (code, v, _) = lab.cli_json(&[
        "restore",
        "create",
        "--cluster",
        "prod",
        "--entities",
        "shop.users",
        "--rename",
        "shop.users=shop.missing",
    ]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["current_step"], Value::Null);
    let e = v["error"].as_str().unwrap();
    assert!(e.contains("restore.check") && e.contains("shop.missing"), "{e}");
    let phases: Vec<(String, String)> = v["nodes"][0]["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["phase"].as_str().unwrap().to_owned(), p["state"].as_str().unwrap().to_owned()))
        .collect();
    assert!(
        phases.iter().any(|(p, s)| p == "restore.download" && s == "cancelled"),
        "nothing ran after the check: {phases:?}"
    );
    assert_eq!(table_content(&lab, "users"), users, "nothing changed");
    let (code, v, _) = lab.cli_json(&["restore", "create", "--cluster", "prod", "--target-cluster", "prod2"]);
    assert_ne!(code, 0);
    assert!(v["error"].as_str().unwrap().contains("no cluster named prod2"), "{v}");

    step("another cluster with a different topology is refused");
    let small = lab.start_cluster("small", vec![("dc1".into(), 1)], 0x51, "Test Cluster").unwrap();
    lab.register("small", Some(&small)).unwrap();
    let (code, v, _) = lab.cli_json(&[
        "restore",
        "create",
        "--cluster",
        "prod",
        "--target-cluster",
        "small",
        "--strategy",
        "in-place",
    ]);
    assert_ne!(code, 0);
    assert!(v["error"].as_str().unwrap().contains("topologies differ"), "{v}");
    lab.others.push(small);

    step("in-place restore of the whole cluster onto a copy with the same topology");
    let copy = lab.start_cluster("copy", vec![("dc1".into(), 2), ("dc2".into(), 1)], 0xc0b7, "Test Cluster").unwrap();
    lab.register("copy", Some(&copy)).unwrap();
    copy.cluster.admin(&["create-keyspace", "shop", "--rf", "2"]).unwrap();
    copy.cluster.admin(&["create-table", "shop.users", "--columns", "id int, email text", "--pk", "id"]).unwrap();
    copy.cluster.admin(&["create-table", "shop.orders"]).unwrap();
    for n in &copy.nodes {
        copy.cluster.admin(&["stop", n]).unwrap();
    }
    let r = ok(&lab, &["restore", "create", "--cluster", "prod", "--target-cluster", "copy", "--strategy", "in-place"]);
    assert_eq!(r["state"], "succeeded", "{r}");
    let src = lab.main.cluster.cluster().unwrap();
    let dst = copy.cluster.cluster().unwrap();
    for (s, d) in src.nodes.iter().zip(&dst.nodes) {
        assert_eq!((&s.datacenter, &s.rack), (&d.datacenter, &d.rack));
        let yaml = std::fs::read_to_string(d.conf_dir.join("cassandra.yaml")).unwrap();
        assert!(yaml.contains(&s.tokens[0]), "node {} gets the tokens of {}: {yaml}", d.address, s.address);
        let a: Vec<_> = content(&live_files(&s.roots(), "shop"))
            .into_iter()
            .map(|(t, c, h)| (t.split('/').nth(1).unwrap().to_owned(), c, h))
            .collect();
        let b: Vec<_> = content(&live_files(&d.roots(), "shop"))
            .into_iter()
            .map(|(t, c, h)| (t.split('/').nth(1).unwrap().to_owned(), c, h))
            .collect();
        assert_eq!(a, b, "node {} holds what {} backed up", d.address, s.address);
    }
    lab.others.push(copy);
}

/// Every file under `dir` that contains one of `secrets`, with the secret.
fn files_containing(dir: &std::path::Path, secrets: &[&str], skip: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    for f in all_files(dir) {
        if f.starts_with(skip) {
            continue;
        }
        let Ok(bytes) = std::fs::read(&f) else { continue };
        // Lossy text: `str::contains` is the standard library's (optimized) search.
        let text = String::from_utf8_lossy(&bytes);
        for s in secrets {
            if text.contains(s) {
                found.push(format!("{} holds {s}", f.display()));
            }
        }
    }
    found
}

/// - agents whose nodetool needs JMX TLS key and trust store passwords and a JMX password file,
///   and whose cqlsh needs CQL credentials, register a cluster and back it up; one node's
///   nodetool then crashes the way a JVM does (its start-up notes first on stderr, then an
///   exception, no `error:` line), so its raw output becomes the operation's error;
/// - the operation fails naming that node;
/// - no secret appears in the coordinator's or the agents' logs, the raft state, the agents' job
///   records and state, the CLI's output or the repository.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t75_secrets_never_leave_the_agent() {
    let secrets_dir = tempfile::Builder::new().prefix("cassette-t75-secrets-").tempdir().unwrap();
    let sd = secrets_dir.path();
    let secrets = ["ts-Secret-7a1c04", "ks-Secret-9b2d55", "jmx-Secret-3e4f66", "cql-Secret-5a6b77"];
    let file = |name: &str, text: &str| {
        let p = sd.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let env = vec![
        ("CASSETTE_CASSANDRA__JMX_SSL".to_owned(), "true".to_owned()),
        ("CASSETTE_CASSANDRA__JMX_TRUSTSTORE".to_owned(), file("truststore.jks", "not a real store")),
        ("CASSETTE_CASSANDRA__JMX_TRUSTSTORE_PASSWORD_FILE".to_owned(), file("ts.pass", &format!("{}\n", secrets[0]))),
        ("CASSETTE_CASSANDRA__JMX_KEYSTORE".to_owned(), file("keystore.jks", "not a real store")),
        ("CASSETTE_CASSANDRA__JMX_KEYSTORE_PASSWORD_FILE".to_owned(), file("ks.pass", &format!("{}\n", secrets[1]))),
        (
            "CASSETTE_CASSANDRA__JMX_PASSWORD_FILE".to_owned(),
            file("jmx.password", &format!("monitor {}\n", secrets[2])),
        ),
        (
            "CASSETTE_CASSANDRA__CQL_CREDENTIALS_FILE".to_owned(),
            file("cql.properties", &format!("username=cassandra\npassword={}\n", secrets[3])),
        ),
    ];
    let Some(lab) = lab("t75", Backend::Local, |o| {
        o.agent_env = env.clone();
        o.coordinator_args =
            ["--agent-timeout", "10s", "--retry-backoff", "100ms", "--phase-attempts", "1", "--poll-interval", "100ms"]
                .map(String::from)
                .to_vec();
    }) else {
        return;
    };
    let mut outputs = String::new();
    let mut cli = |args: &[&str]| {
        let (code, v, err) = lab.cli_json(args);
        outputs.push_str(&format!("{v}\n{err}\n"));
        (code, v)
    };
    lab.register("prod", None).unwrap();
    load(&lab);
    step("a backup that succeeds, then one where nodetool crashes on 127.0.0.3");
    let (code, v) = cli(&["backup", "create", "--cluster", "prod"]);
    assert_eq!(code, 0, "{v}\n{}", lab.logs());
    lab.admin(&[
        "fault",
        "127.0.0.3",
        "--fail",
        "snapshot:1:Exception in thread \"main\" java.lang.OutOfMemoryError: Java heap space",
    ])
    .unwrap();
    let (code, v) = cli(&["backup", "create", "--cluster", "prod"]);
    assert_eq!(code, 1, "{v}");
    assert!(v["error"].as_str().unwrap_or_default().contains("127.0.0.3"), "{v}");
    assert!(v["error"].to_string().contains("OutOfMemoryError"), "the node's own error is kept: {v}");
    let id = v["id"].as_str().unwrap_or_default().to_owned();
    let (_, show) = cli(&["operations", "show", &id]);
    let (_, status) = cli(&["cluster", "status", "prod"]);
    drop((show, status));
    step("no secret anywhere");
    let mut found: Vec<String> =
        secrets.iter().filter(|s| outputs.contains(*s)).map(|s| format!("the CLI's output holds {s}")).collect();
    found.extend(files_containing(&lab.path, &secrets, sd));
    if let Some(repo) = lab.storage.location(&lab.prefix).local_dir() {
        found.extend(files_containing(&repo, &secrets, sd));
    }
    assert!(found.is_empty(), "secrets left the agents:\n{}", found.join("\n"));
}
