//! Real Cassandra 5.0 clusters of three nodes with the coordinator and an agent per node (mutual
//! TLS), driven through the `cassette` CLI; rows read back at CL ALL through CQL.
//!
//! t30 proves, in one story on one cluster:
//! - `cassette backup create` snapshots every node (the skew is reported) and writes the
//!   cluster manifest;
//! - after data loss (every table truncated), `cassette restore create` restores live: download
//!   everywhere, one truncate, import everywhere; the rows come back;
//! - an agent killed with SIGKILL mid-upload and restarted: the backup completes, the restarted
//!   agent's job resumes without sending finished blobs again;
//! - the whole cluster restored in place onto its stopped nodes (tokens kept), started again:
//!   the rows of the backup, and none written after it;
//! - the backup restored onto a new, empty cluster of the same topology (another name, other
//!   host ids) from scratch with `--new-cluster`: schema, data and tokens; the rows come back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cassette_integration::node::step;
use cassette_integration::real::data::{self, DataSet, Rows};
use cassette_integration::real::lab::RealLab;
use cassette_integration::real::{ClusterSpec, RealCluster, Series};
use serde_json::Value;

const KS: &str = "shop";

fn assert_rows(what: &str, expected: &Rows, got: &Rows) {
    if let Some(d) = data::diff(expected, got) {
        panic!("{what}: the rows read back differ from the rows written:\n{d}");
    }
    eprintln!("    {what}: {} rows read back at CL ALL, equal to the rows written", data::count(got));
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} missing in {v}"))
}

async fn host_ids(c: &RealCluster) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..c.nodes.len() {
        let s = c.session(i).await.unwrap();
        let r = data::read_rows(&s, "SELECT host_id, cluster_name FROM system.local", false).await.unwrap();
        ids.extend(r);
    }
    ids
}

async fn stop_all(c: &mut RealCluster) {
    for i in 0..c.nodes.len() {
        c.stop_node(i).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t30_real_50_three_nodes_backup_restore_kill_in_place_and_new_cluster() {
    let mut spec = ClusterSpec::three("prod");
    spec.heap_mib = 512;
    let Some(mut lab) = RealLab::start("t30", Series::V50, &spec, 1).unwrap() else { return };
    lab.register("prod", 0).unwrap();
    let s = lab.clusters[0].cluster.session_all().await.unwrap();
    let mut ds = DataSet::new(KS, &[("dc1", 2)]);
    // About 2 MiB of new SSTables per node in generation 1: at 128 KiB/s its upload lasts long
    // enough to be interrupted.
    ds.blob_bytes = 8 << 10;

    step("schema and rows, RF 2 over three nodes");
    ds.create_schema(&s, Series::V50).await.unwrap();
    ds.write(&s, 0).await.unwrap();
    let rows0 = ds.read(&s).await.unwrap();

    step("cassette backup create: every node snapshotted together");
    let b1 = lab.ok(&["backup", "create", "--cluster", "prod", "--tag", "first"]);
    assert_eq!(b1["state"], "succeeded", "{b1}");
    assert_eq!(b1["nodes"].as_array().unwrap().len(), 3, "{b1}");
    let skew = b1["snapshot_skew_ms"].as_i64().unwrap_or_else(|| panic!("no snapshot skew in {b1}"));
    eprintln!("    snapshot skew across the three nodes: {skew} ms");

    step("data loss: every table truncated; cassette restore create restores it live");
    for t in data::TABLES {
        data::exec(&s, &format!("TRUNCATE {KS}.{t}")).await.unwrap();
    }
    let r = lab.ok(&["restore", "create", "--cluster", "prod", "--backup", "latest", "--entities", KS]);
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_rows("live cluster restore", &rows0, &ds.read(&s).await.unwrap());

    step("more rows; a backup whose agent on node 2 is killed mid-upload, then restarted");
    ds.write(&s, 1).await.unwrap();
    let rows1 = ds.read(&s).await.unwrap();
    let started = lab.ok(&["backup", "create", "--cluster", "prod", "--bandwidth", "128KiB/s", "--detach"]);
    let id = started["id"].as_str().unwrap().to_owned();
    let victim = lab.clusters[0].cluster.nodes[1].address.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (_, v, _) = lab.cli_json(&["operations", "show", &id]);
        let n = v["nodes"].as_array().and_then(|a| a.iter().find(|n| n["address"] == victim.as_str()).cloned());
        if n.as_ref().is_some_and(|n| n["transfer"]["bytes_transferred"].as_u64().unwrap_or(0) > 100_000) {
            break;
        }
        assert!(v["state"] != "succeeded", "the backup ended before node {victim} could be interrupted: {v}");
        assert!(std::time::Instant::now() < deadline, "no upload progress on {victim}: {v}\n{}", lab.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    lab.clusters[0].agents[1].kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    lab.clusters[0].agents[1].restart().unwrap();
    let v = lab.wait_operation(&id, Duration::from_secs(300)).await.unwrap();
    assert_eq!(v["state"], "succeeded", "{v}\n{}", lab.logs());
    let node = v["nodes"].as_array().unwrap().iter().find(|n| n["address"] == victim.as_str()).unwrap();
    let up = node["phases"].as_array().unwrap().iter().find(|p| p["phase"] == "backup.upload").unwrap();
    let res = &up["result"];
    assert!(u(res, "files_skipped") > 0, "the resumed upload skipped what was stored before the kill: {res}");
    assert!(u(res, "bytes_uploaded") < u(res, "bytes"), "finished blobs were not sent again: {res}");
    assert!(lab.clusters[0].agents[1].log_text().contains("resuming a job interrupted by a restart"));
    let backup2 = v["backup_id"].as_str().map(str::to_owned).unwrap_or_default();
    eprintln!("    backup {backup2} completed after the kill");

    step("rows written after that backup; every node stopped; the whole cluster restored in place");
    ds.write(&s, 2).await.unwrap();
    drop(s);
    stop_all(&mut lab.clusters[0].cluster).await;
    let r = lab.ok(&["restore", "create", "--cluster", "prod", "--backup", "latest", "--strategy", "in-place"]);
    assert_eq!(r["state"], "succeeded", "{r}");
    lab.clusters[0].cluster.start().unwrap();
    let s = lab.clusters[0].cluster.session_all().await.unwrap();
    assert_rows("in place, whole cluster", &rows1, &ds.read(&s).await.unwrap());
    let prod_ids = host_ids(&lab.clusters[0].cluster).await;
    drop(s);

    step("a new, empty cluster of the same topology: rebuilt from the backup with --new-cluster");
    stop_all(&mut lab.clusters[0].cluster).await;
    let copy = lab.add_cluster(&ClusterSpec::three("copy")).unwrap();
    lab.register("copy", copy).unwrap();
    stop_all(&mut lab.clusters[copy].cluster).await;
    let r = lab.ok(&[
        "restore",
        "create",
        "--cluster",
        "prod",
        "--backup",
        "latest",
        "--target-cluster",
        "copy",
        "--strategy",
        "in-place",
        "--new-cluster",
    ]);
    assert_eq!(r["state"], "succeeded", "{r}");
    lab.clusters[copy].cluster.start().unwrap();
    let s = lab.clusters[copy].cluster.session_all().await.unwrap();
    assert_rows("new cluster from scratch", &rows1, &ds.read(&s).await.unwrap());
    let copy_ids = host_ids(&lab.clusters[copy].cluster).await;
    for id in &copy_ids {
        assert!(id.contains("copy"), "the new cluster keeps its own name: {id}");
        assert!(!prod_ids.contains(id), "other host ids than the source: {copy_ids:?} vs {prod_ids:?}");
    }
}
