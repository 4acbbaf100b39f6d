//! Bad input and faults in single-node backups and restores, each with a clear error and nothing
//! lost, against the real `cassette-agent` binary, the emulator and real storage servers.
//!
//! What it proves:
//! - wrong location (missing bucket, no repository), unknown backup or tag, missing tables and
//!   rename targets, schema and token mismatches, in-place on a running node: refused before
//!   anything is touched, with an error that says what to fix; in place, "nodetool cannot
//!   connect" is not taken as "stopped": a process holding the node's files or an open native
//!   port refuses it too;
//! - a corrupted blob during a restore: nothing truncated, nothing imported, no temporary file;
//! - disk full during the download: reported before downloading when the free space is known,
//!   and when it runs out midway, no partial file is left and the live data is untouched;
//! - nodetool failing after it took the snapshot, or the storage failing mid-upload: the
//!   snapshot is still cleared; a snapshot that cannot be cleared is reported with the command;
//! - untrusted manifests (path traversal, bad data-directory index, oversized, malformed, table
//!   entries whose names are paths) and symbolic links on the way are refused before any file is
//!   written or removed;
//! - renames, live restores phase by phase on a two-node cluster, in-place rebuilds with system
//!   keyspaces and the backup's tokens written into cassandra.yaml; in place onto more data
//!   directories than the backup had, every SSTable kept in one directory.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};

use cassette_common::layout;
use cassette_common::manifest::NodeManifest;
use cassette_integration::emulator::{ClusterSpec, Version};
use cassette_integration::node::{NodeEnv, all_files, content, live_files, step};
use cassette_integration::servers::Backend;

const EMU: &str = env!("CARGO_BIN_EXE_cassandra-emulator");

fn spec(version: Version) -> ClusterSpec {
    let mut s = ClusterSpec::single(version);
    s.data_dirs = 2;
    s
}

fn shop(env: &NodeEnv) {
    env.admin(&["create-keyspace", "shop"]);
    env.admin(&["create-table", "shop.users", "--columns", "id int, email text", "--pk", "id"]);
    env.admin(&["create-table", "shop.orders"]);
    env.admin(&["write-sstables", "shop.users", "--count", "3", "--size", "30000"]);
    env.admin(&["write-sstables", "shop.orders", "--count", "2", "--size", "20000"]);
}

fn start(test: &str, backend: Backend, version: Version) -> Option<NodeEnv> {
    cassette_integration::init_test_logging();
    let env = NodeEnv::start(test, EMU, backend, &spec(version)).unwrap()?;
    shop(&env);
    Some(env)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn manifest(env: &NodeEnv, key: &str) -> NodeManifest {
    rt().block_on(env.repo().get_json(key, 1 << 26)).unwrap()
}

fn no_staging(env: &NodeEnv) {
    for r in env.roots() {
        assert!(!r.join(".cassette-restore").exists(), "nothing staged under {}", r.display());
    }
}

fn no_temp_files(dir: &Path) {
    for f in all_files(dir) {
        assert!(!f.to_string_lossy().ends_with(".tmp"), "temporary file left: {}", f.display());
    }
}

fn snapshots_with(env: &NodeEnv, needle: &str) -> Vec<PathBuf> {
    env.roots()
        .iter()
        .flat_map(|r| all_files(r))
        .filter(|f| f.to_string_lossy().contains(&format!("/snapshots/{needle}")))
        .collect()
}

#[test]
fn t50_wrong_location() {
    let Some(env) = start("t50", Backend::S3sFs, Version::V41) else { return };
    step("a bucket that does not exist: refused before any snapshot");
    let r = env.agent_err(&["backup", "--location", "s3://no-such-bucket/x"]);
    let e = r.error();
    assert!(e.contains("does not exist") && e.contains("no-such-bucket"), "{e}");
    assert!(snapshots_with(&env, "cassette-").is_empty());
    step("a prefix that holds no repository");
    let e =
        env.agent_err(&["restore", "latest", "--strategy", "import", "--location", "s3://cassette-test/empty"]).error();
    assert!(e.contains("holds no Cassette repository") && e.contains("check the location"), "{e}");
    let e = env.agent_err(&["list", "--location", "file:///nonexistent/dir"]).error();
    assert!(e.contains("/nonexistent/dir"), "{e}");
    let e = env.agent_err(&["list", "--location", "ftp://x/y"]).error();
    assert!(e.to_lowercase().contains("ftp"), "{e}");
}

#[test]
fn t51_unknown_backup_and_tag() {
    let Some(env) = start("t51", Backend::S3sFs, Version::V41) else { return };
    let r = env.agent_ok(&["backup", "--tag", "monday"]);
    let id = r["backup_id"].as_str().unwrap().to_owned();
    for sel in ["20990101T000000Z-00000000", "tuesday"] {
        step(&format!("restore {sel}"));
        let e = env.agent_err(&["restore", sel, "--strategy", "import"]).error();
        assert!(e.contains(&id) && e.contains("1 backup"), "the error lists what exists: {e}");
        no_staging(&env);
    }
    let e = env.agent_err(&["verify", "tuesday"]).error();
    assert!(e.contains("tuesday"), "{e}");
    step("by tag works");
    env.agent_ok(&["restore", "monday", "--strategy", "import", "--dry-run"]);
}

#[test]
fn t52_missing_tables_renames_and_schema_differences() {
    let Some(env) = start("t52", Backend::S3sFs, Version::V41) else { return };
    env.admin(&["insert", "shop.users", "--rows", "10"]);
    let r = env.agent_ok(&["backup"]);
    let m = manifest(&env, r["manifest_key"].as_str().unwrap());
    let roots = env.roots();
    let before = content(&live_files(&roots, "shop"));

    step("an entity the backup does not have");
    let e = env.agent_err(&["restore", "latest", "--strategy", "import", "--entities", "shop.nothere"]).error();
    assert!(e.contains("shop.nothere") && e.contains("shop.users"), "{e}");

    step("a rename target that does not exist: named, with the schema to create it");
    let e = env
        .agent_err(&[
            "restore",
            "latest",
            "--strategy",
            "import",
            "--entities",
            "shop.users",
            "--rename",
            "shop.users=shop.copy",
        ])
        .error();
    assert!(e.contains("shop.copy (the --rename target for shop.users)") && e.contains("CREATE TABLE"), "{e}");
    assert_eq!(content(&live_files(&roots, "shop")), before, "nothing changed");
    no_staging(&env);

    step("a rename target with another primary key: refused, then forced");
    env.admin(&["create-table", "shop.other", "--columns", "id text, email text", "--pk", "id"]);
    let e = env
        .agent_err(&[
            "restore",
            "latest",
            "--strategy",
            "import",
            "--entities",
            "shop.users",
            "--rename",
            "shop.users=shop.other",
        ])
        .error();
    assert!(e.contains("partition key differ") && e.contains("--ignore-schema-mismatch"), "{e}");
    assert_eq!(content(&live_files(&roots, "shop")), before);

    step("a rename into an existing table of the same shape, with an added column (a warning)");
    env.admin(&["create-table", "shop.copy", "--columns", "id int, email text, extra blob", "--pk", "id"]);
    let r = env.agent_ok(&[
        "restore",
        "latest",
        "--strategy",
        "hardlinks",
        "--entities",
        "shop.users",
        "--rename",
        "shop.users=shop.copy",
    ]);
    assert!(r["warnings"].to_string().contains("extra"), "{r}");
    let after = live_files(&roots, "shop");
    let copy: Vec<_> =
        content(&after).into_iter().filter(|(t, _, _)| t == "shop/copy").map(|(_, c, h)| (c, h)).collect();
    let mut users: Vec<_> = m
        .files
        .iter()
        .filter(|f| f.path.contains("/users-"))
        .map(|f| (f.sstable().unwrap().component, f.sha256))
        .collect();
    users.sort();
    assert_eq!(copy, users, "shop.copy holds exactly the backed-up shop.users");
    let users_now: Vec<_> = content(&after).into_iter().filter(|(t, _, _)| t != "shop/copy").collect();
    assert_eq!(users_now, before, "the source table is untouched");
}

#[test]
fn t53_in_place_refused_on_a_running_node() {
    let Some(env) = start("t53", Backend::Local, Version::V41) else { return };
    env.agent_ok(&["backup"]);
    let before = live_files(&env.roots(), "shop");
    let e = env.agent_err(&["restore", "latest", "--strategy", "in-place"]).error();
    assert!(e.contains("the node is running") && e.contains("stop Cassandra first"), "{e}");
    assert_eq!(live_files(&env.roots(), "shop"), before);
    no_staging(&env);
    step("and live strategies on a stopped node");
    env.admin(&["stop", "127.0.0.1"]);
    let e = env.agent_err(&["restore", "latest", "--strategy", "import"]).error();
    assert!(e.contains("does not answer") && e.contains("in-place"), "{e}");
}

#[test]
fn t54_corrupted_blob_imports_nothing() {
    let Some(env) = start("t54", Backend::S3sFs, Version::V41) else { return };
    let r = env.agent_ok(&["backup"]);
    let m = manifest(&env, r["manifest_key"].as_str().unwrap());
    env.admin(&["write-sstables", "shop.users", "--count", "1", "--size", "500"]);
    let roots = env.roots();
    let before = live_files(&roots, "shop");
    let victim = m.files.iter().find(|f| f.path.contains("/users-") && f.path.ends_with("Data.db")).unwrap();
    let path = env.server.blob_file(&env.prefix, &victim.sha256).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[7] ^= 0x55;
    std::fs::write(&path, bytes).unwrap();

    step("restore fails on the damaged blob, before truncating or importing anything");
    for strategy in ["import", "hardlinks"] {
        let e = env.agent_err(&["restore", "latest", "--strategy", strategy]).error();
        assert!(e.contains("sha256 mismatch") && e.contains("nothing on the node was changed"), "{e}");
        assert_eq!(live_files(&roots, "shop"), before, "live data untouched");
        assert!(snapshots_with(&env, "truncated-").is_empty(), "nothing was truncated");
        for r in &roots {
            no_temp_files(r);
        }
    }
    step("the staged, verified files stay for a rerun; cleanup removes them");
    assert!(roots[0].join(".cassette-restore").exists());
    env.agent_ok(&["restore", "latest", "--strategy", "import", "--phase", "cleanup"]);
    no_staging(&env);
}

/// A small tmpfs, unmounted on drop; `None` when this process may not mount (not root).
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk(dir.to_owned()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn t55_disk_full_during_download_leaves_no_partial_file() {
    let Some(env) = start("t55", Backend::Local, Version::V41) else { return };
    env.admin(&["write-sstables", "shop.orders", "--count", "1", "--size", "3000000"]);
    env.agent_ok(&["backup"]);
    let roots = env.roots();
    let before = live_files(&roots, "shop");
    let staging = env.dir.path().join("small");
    match SmallDisk::mount(&staging, "2m") {
        Some(_disk) => {
            step("free space known to be short: refused before downloading, with both figures");
            let s = staging.to_string_lossy().into_owned();
            let e = env.agent_err(&["restore", "latest", "--strategy", "import", "--staging-dir", &s]).error();
            assert!(
                e.contains("not enough free space") && e.contains("is available") && e.contains("--staging-dir"),
                "{e}"
            );
            assert!(all_files(&staging).is_empty(), "nothing downloaded");
            step("space running out midway (--skip-space-check): no partial file, nothing changed");
            let e = env
                .agent_err(&["restore", "latest", "--strategy", "import", "--staging-dir", &s, "--skip-space-check"])
                .error();
            assert!(e.contains("the disk is full") && e.contains("nothing on the node was changed"), "{e}");
            check_complete_or_absent(&env, &staging);
        }
        None => {
            step("not root: a file-size limit stands in for the full disk (EFBIG instead of ENOSPC)");
            let mut cmd = std::process::Command::new("sh");
            cmd.arg("-c")
                .arg("trap '' XFSZ; ulimit -f 4096; exec \"$@\"")
                .arg("sh")
                .arg(&env.agent_bin)
                .args(["--config"])
                .arg(&env.config_path)
                .args(["--output", "json", "restore", "latest", "--strategy", "import", "--staging-dir"])
                .arg(&staging);
            let out = cmd.output().unwrap();
            assert!(!out.status.success());
            check_complete_or_absent(&env, &staging);
        }
    }
    assert_eq!(live_files(&roots, "shop"), before, "live data untouched");
    assert!(snapshots_with(&env, "truncated-").is_empty(), "nothing truncated");
}

/// Every file in the staging directory is complete and verified; no temporary file exists.
fn check_complete_or_absent(env: &NodeEnv, staging: &Path) {
    let files = all_files(staging);
    no_temp_files(staging);
    let key = rt().block_on(env.repo().list("clusters")).unwrap()[0].location.to_string();
    let m = manifest(env, &key);
    for f in files {
        if f.file_name().unwrap() == "cassette-restore-state.json" {
            continue;
        }
        let (h, n) = cassette_common::hash::sha256_file(&f).unwrap();
        assert!(m.files.iter().any(|e| e.sha256 == h && e.size == n), "{} is complete and verified", f.display());
    }
}

#[test]
fn t56_snapshot_cleared_when_nodetool_or_storage_fails() {
    let Some(env) = start("t56", Backend::Local, Version::V41) else { return };
    step("nodetool snapshot times out after the node took the snapshot");
    env.admin(&["fault", "127.0.0.1", "--fail-after", "snapshot:2:error: Timed out waiting for the snapshot"]);
    let e = env.agent_err(&["backup"]).error();
    assert!(e.contains("Timed out") && e.contains("the snapshot was cleared"), "{e}");
    assert!(snapshots_with(&env, "cassette-").is_empty(), "the snapshot was cleared");
    env.admin(&["fault", "127.0.0.1", "--clear"]);

    step("the storage fails mid-upload: no manifest, snapshot cleared");
    env.agent_ok(&["backup"]);
    let repo = env.server.location(&env.prefix).local_dir().unwrap();
    let blobs = repo.join("blobs");
    let moved = repo.join("blobs.moved");
    std::fs::rename(&blobs, &moved).unwrap();
    std::fs::write(&blobs, b"not a directory").unwrap();
    env.admin(&["write-sstables", "shop.users", "--count", "1", "--size", "1000"]);
    let r = env.agent_err(&["backup"]);
    assert!(r.error().contains("no manifest was written"), "{}", r.error());
    assert!(snapshots_with(&env, "cassette-").is_empty(), "the snapshot was cleared");
    let manifests = all_files(&repo.join("clusters")).len();
    assert_eq!(manifests, 1, "only the first backup's manifest");
    std::fs::remove_file(&blobs).unwrap();
    std::fs::rename(&moved, &blobs).unwrap();

    step("a snapshot that cannot be cleared is reported with the command to run");
    env.admin(&["fault", "127.0.0.1", "--fail", "clearsnapshot:2:error: disk on fire"]);
    let r = env.agent(&["backup"]);
    assert_eq!(r.code, 1);
    let j = r.json();
    assert!(j["manifest_key"].is_string(), "the backup itself completed: {j}");
    let tag = j["snapshot_tag"].as_str().unwrap();
    assert!(j["warnings"].to_string().contains(&format!("nodetool clearsnapshot -t {tag}")), "{j}");
}

#[test]
fn t57_untrusted_manifests_and_symlinks() {
    let Some(env) = start("t57", Backend::Local, Version::V41) else { return };
    let r = env.agent_ok(&["backup"]);
    let key = r["manifest_key"].as_str().unwrap().to_owned();
    let good = manifest(&env, &key);
    let repo_dir = env.server.location(&env.prefix).local_dir().unwrap();
    let put = |m: &serde_json::Value| -> String {
        let id = cassette_common::ids::BackupId::generate(chrono::Utc::now() + chrono::Duration::days(1));
        let k = layout::node_manifest_key(&good.node.cluster, &id, &good.node.host_id);
        let mut m = m.clone();
        m["backup_id"] = serde_json::json!(id.to_string());
        std::fs::create_dir_all(repo_dir.join(&k).parent().unwrap()).unwrap();
        std::fs::write(repo_dir.join(&k), serde_json::to_vec(&m).unwrap()).unwrap();
        std::fs::remove_dir_all(env.state_dir().join("manifests")).ok();
        id.to_string()
    };
    let escape = env.dir.path().join("escaped");
    for (what, edit, needle) in [
        ("path traversal", "../../../../escaped/x", "unsafe or malformed"),
        ("absolute path", "/tmp/x/y/z", "unsafe or malformed"),
    ] {
        step(what);
        let mut m = serde_json::to_value(&good).unwrap();
        m["files"][0]["path"] = serde_json::json!(edit);
        let id = put(&m);
        let e = env.agent_err(&["restore", &id, "--strategy", "import"]).error();
        assert!(e.contains(needle), "{what}: {e}");
        no_staging(&env);
        assert!(!escape.exists());
        std::fs::remove_file(repo_dir.join(layout::node_manifest_key(
            &good.node.cluster,
            &id.parse().unwrap(),
            &good.node.host_id,
        )))
        .unwrap();
    }
    step("a data-directory index the manifest does not list");
    let mut m = serde_json::to_value(&good).unwrap();
    m["files"][0]["data_dir"] = serde_json::json!(7);
    let id = put(&m);
    let e = env.agent_err(&["restore", &id, "--strategy", "import"]).error();
    assert!(e.contains("data directory #7"), "{e}");
    std::fs::remove_file(repo_dir.join(layout::node_manifest_key(
        &good.node.cluster,
        &id.parse().unwrap(),
        &good.node.host_id,
    )))
    .unwrap();

    step("malformed JSON");
    let id = cassette_common::ids::BackupId::generate(chrono::Utc::now() + chrono::Duration::days(2));
    let k = layout::node_manifest_key(&good.node.cluster, &id, &good.node.host_id);
    std::fs::create_dir_all(repo_dir.join(&k).parent().unwrap()).unwrap();
    std::fs::write(repo_dir.join(&k), b"{\"format\": 1, \"files\": [").unwrap();
    let e = env.agent_err(&["restore", id.as_str(), "--strategy", "import"]).error();
    assert!(e.contains("not a node manifest"), "{e}");
    std::fs::remove_file(repo_dir.join(&k)).unwrap();

    step("an oversized manifest is refused before it is read");
    let mut cfg = env.base_config().unwrap();
    cfg.manifests.max_bytes = cassette_common::units::ByteSize(64 << 10);
    let mut big = serde_json::to_value(&good).unwrap();
    let mut files = big["files"].as_array().unwrap().clone();
    while serde_json::to_vec(&files).unwrap().len() < 80 << 10 {
        let mut f = files[0].clone();
        f["path"] = serde_json::json!(format!(
            "shop/pad-0123456789abcdef0123456789abcdef/nb-{}-big-Data.db",
            files.len() + 1000
        ));
        files.push(f);
    }
    big["files"] = serde_json::json!(files);
    let id = put(&big);
    env.write_config(&cfg).unwrap();
    let e = env.agent_err(&["restore", &id, "--strategy", "import"]).error();
    assert!(e.contains("larger than the 65536-byte limit"), "{e}");
    env.write_config(&env.base_config().unwrap()).unwrap();
    std::fs::remove_file(repo_dir.join(layout::node_manifest_key(
        &good.node.cluster,
        &id.parse().unwrap(),
        &good.node.host_id,
    )))
    .unwrap();

    step("a symbolic link where the staging directory goes");
    let roots = env.roots();
    std::fs::create_dir_all(&escape).unwrap();
    std::os::unix::fs::symlink(&escape, roots[0].join(".cassette-restore")).unwrap();
    let e = env.agent_err(&["restore", "latest", "--strategy", "import"]).error();
    assert!(e.contains("symbolic link") && e.contains("nothing was written"), "{e}");
    assert!(all_files(&escape).is_empty(), "nothing written through the link");
    std::fs::remove_file(roots[0].join(".cassette-restore")).unwrap();

    step("a symbolic link in place of a table directory, in place");
    env.admin(&["stop", "127.0.0.1"]);
    let users = good.files.iter().find(|f| f.path.contains("/users-")).unwrap();
    let table_dir = roots[usize::from(users.data_dir)].join(users.path.rsplit_once('/').unwrap().0);
    let aside = env.dir.path().join("aside");
    std::fs::rename(&table_dir, &aside).unwrap();
    std::os::unix::fs::symlink(&escape, &table_dir).unwrap();
    let e = env.agent_err(&["restore", "latest", "--strategy", "in-place"]).error();
    assert!(e.contains("symbolic link"), "{e}");
    assert!(all_files(&escape).is_empty());
    no_staging(&env);
}

/// Puts a copy of `m` under a new backup id (a day after `days`) straight into the repository
/// directory, as someone who can write the bucket would, and returns the id.
fn put_forged(env: &NodeEnv, good: &NodeManifest, m: &serde_json::Value, days: i64) -> String {
    let repo_dir = env.server.location(&env.prefix).local_dir().unwrap();
    let id = cassette_common::ids::BackupId::generate(chrono::Utc::now() + chrono::Duration::days(days));
    let k = layout::node_manifest_key(&good.node.cluster, &id, &good.node.host_id);
    let mut m = m.clone();
    m["backup_id"] = serde_json::json!(id.to_string());
    std::fs::create_dir_all(repo_dir.join(&k).parent().unwrap()).unwrap();
    std::fs::write(repo_dir.join(&k), serde_json::to_vec(&m).unwrap()).unwrap();
    std::fs::remove_dir_all(env.state_dir().join("manifests")).ok();
    id.to_string()
}

/// - a manifest table entry whose keyspace is an absolute path, or whose table id climbs out
///   with `/..`, is refused by an in-place restore before anything is removed or written: the
///   SSTable-named file it points at stays, the node's files are untouched, nothing is staged;
/// - the error names the field and says the manifest was not written by Cassette.
#[test]
fn t5c_table_names_from_a_manifest_cannot_reach_outside_the_data_directories() {
    let Some(env) = start("t5c", Backend::Local, Version::V41) else { return };
    let r = env.agent_ok(&["backup"]);
    let good = manifest(&env, r["manifest_key"].as_str().unwrap());
    let victim = env.dir.path().join("victim");
    let victim_file = victim.join("t").join("nb-1-big-Data.db");
    std::fs::create_dir_all(victim_file.parent().unwrap()).unwrap();
    std::fs::write(&victim_file, b"someone else's SSTable").unwrap();
    env.admin(&["stop", "127.0.0.1"]);
    let before = live_files(&env.roots(), "shop");
    let climb = format!("/{}{}", "../".repeat(64), victim.display().to_string().trim_start_matches('/'));
    for (days, what, entry, field) in [
        (
            3,
            "an absolute keyspace",
            serde_json::json!({"keyspace": victim.display().to_string(), "table": "t"}),
            "keyspace",
        ),
        (
            4,
            "a table id climbing out",
            serde_json::json!({"keyspace": "shop", "table": "t", "table_id": climb}),
            "table_id",
        ),
    ] {
        step(what);
        let mut m = serde_json::to_value(&good).unwrap();
        m["tables"].as_array_mut().unwrap().push(entry);
        let id = put_forged(&env, &good, &m, days);
        let e = env.agent_err(&["restore", &id, "--strategy", "in-place"]).error();
        assert!(e.contains(field) && e.contains("not written by Cassette"), "{what}: {e}");
        assert!(victim_file.exists(), "{what}: a file outside the data directories was removed");
        assert_eq!(live_files(&env.roots(), "shop"), before, "{what}: the node's files changed");
        no_staging(&env);
    }
}

/// - nodetool cannot connect (the node looks stopped, as with a wrong JMX port), but a process
///   holds one of its data files open: the in-place restore refuses, naming the process and the
///   file, and changes nothing (no file replaced, nothing staged);
/// - the same with something listening on the node's native transport port: refused, naming
///   the address;
/// - with neither, the restore goes ahead and says what it checked.
#[test]
fn t5d_in_place_needs_proof_that_cassandra_is_stopped() {
    let Some(env) = start("t5d", Backend::Local, Version::V41) else { return };
    env.agent_ok(&["backup"]);
    env.admin(&["write-sstables", "shop.users", "--count", "1", "--size", "1000"]);
    env.admin(&["stop", "127.0.0.1"]);
    let before = live_files(&env.roots(), "shop");
    let held = before.keys().next().unwrap().split_once(':').unwrap();
    let held = env.roots()[held.0.parse::<usize>().unwrap()].join(held.1);

    step("a process holds a data file open");
    let mut holder =
        std::process::Command::new("sleep").arg("120").stdin(std::fs::File::open(&held).unwrap()).spawn().unwrap();
    let e = env.agent_err(&["restore", "latest", "--strategy", "in-place"]).error();
    let pid = holder.id();
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(e.contains(&format!("process {pid}")) && e.contains(&held.display().to_string()), "{e}");
    assert!(e.contains("nothing was changed"), "{e}");
    assert_eq!(live_files(&env.roots(), "shop"), before, "no file replaced");
    no_staging(&env);

    step("something listens on the native transport port");
    let port = env.cluster.native_port();
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let e = env.agent_err(&["restore", "latest", "--strategy", "in-place"]).error();
    drop(listener);
    assert!(e.contains(&format!("127.0.0.1:{port}")) && e.contains("native transport"), "{e}");
    assert_eq!(live_files(&env.roots(), "shop"), before, "no file replaced");
    no_staging(&env);

    step("with neither, the restore goes ahead");
    let r = env.agent_ok(&["restore", "latest", "--strategy", "in-place"]);
    assert_ne!(live_files(&env.roots(), "shop"), before, "the backup's files are back: {r}");
}

#[test]
fn t58_token_mismatch() {
    let Some(env) = start("t58", Backend::Local, Version::V40) else { return };
    let r = env.agent_ok(&["backup"]);
    let mut m = serde_json::to_value(manifest(&env, r["manifest_key"].as_str().unwrap())).unwrap();
    let id = cassette_common::ids::BackupId::generate(chrono::Utc::now() + chrono::Duration::days(1));
    m["backup_id"] = serde_json::json!(id.to_string());
    m["node"]["tokens"] = serde_json::json!(["-42", "42"]);
    let host: cassette_common::ids::HostId = m["node"]["host_id"].as_str().unwrap().parse().unwrap();
    let k = layout::node_manifest_key(m["node"]["cluster"].as_str().unwrap(), &id, &host);
    let repo_dir = env.server.location(&env.prefix).local_dir().unwrap();
    std::fs::create_dir_all(repo_dir.join(&k).parent().unwrap()).unwrap();
    std::fs::write(repo_dir.join(&k), serde_json::to_vec(&m).unwrap()).unwrap();
    let before = live_files(&env.roots(), "shop");
    let e = env.agent_err(&["restore", "latest", "--strategy", "import"]).error();
    assert!(e.contains("token mismatch") && e.contains("--ignore-token-mismatch"), "{e}");
    assert_eq!(live_files(&env.roots(), "shop"), before);
    let r = env.agent_ok(&["restore", "latest", "--strategy", "import", "--ignore-token-mismatch"]);
    assert!(r["warnings"].to_string().contains("token mismatch"));
}

#[test]
fn t59_live_restore_phase_by_phase_on_two_nodes() {
    cassette_integration::init_test_logging();
    let mut s = spec(Version::V41);
    s.datacenters = vec![("dc1".into(), 2)];
    let Some(n1) = NodeEnv::start("t59", EMU, Backend::S3sFs, &s).unwrap() else { return };
    shop(&n1);
    // A second agent on node 127.0.0.2, same repository.
    let mut cfg2 = n1.base_config().unwrap();
    cfg2.cassandra.jmx_host = "127.0.0.2".into();
    cfg2.cassandra.cql_host = "127.0.0.2".into();
    cfg2.cassandra.cassandra_yaml = Some(n1.cluster.write_cassandra_yaml("127.0.0.2").unwrap());
    cfg2.state_dir = Some(n1.dir.path().join("state2"));
    let cfg2_path = n1.dir.path().join("agent2.toml");
    std::fs::write(&cfg2_path, toml::to_string(&cfg2).unwrap()).unwrap();
    let agent2 = |args: &[&str]| {
        let mut cmd = n1.command_with(&cfg2_path, args);
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "node 2: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let roots = |addr: &str| {
        let c = n1.cluster.cluster().unwrap();
        c.nodes.iter().find(|n| n.address == addr).unwrap().roots()
    };
    n1.agent_ok(&["backup"]);
    agent2(&["backup"]);
    let want1 = content(&live_files(&roots("127.0.0.1"), "shop"));
    let want2 = content(&live_files(&roots("127.0.0.2"), "shop"));
    n1.admin(&["write-sstables", "shop.users", "--count", "2", "--size", "700"]);

    step("--phase all is refused on a ring of two: TRUNCATE reaches every node");
    let e = n1.agent_err(&["restore", "latest", "--strategy", "import"]).error();
    assert!(e.contains("--phase download on every node") && e.contains("--phase truncate on one node"), "{e}");
    step("import before download is refused");
    let e = n1.agent_err(&["restore", "latest", "--strategy", "import", "--phase", "import"]).error();
    assert!(e.contains("run the download phase"), "{e}");
    step("download on both, truncate once, import on both, cleanup on both");
    n1.agent_ok(&["restore", "latest", "--strategy", "import", "--phase", "download"]);
    agent2(&["restore", "latest", "--strategy", "hardlinks", "--phase", "download"]);
    let t = n1.agent_ok(&["restore", "latest", "--strategy", "import", "--phase", "truncate"]);
    assert_eq!(t["truncated"], serde_json::json!(["shop.orders", "shop.users"]));
    n1.agent_ok(&["restore", "latest", "--strategy", "import", "--phase", "import"]);
    agent2(&["restore", "latest", "--strategy", "hardlinks", "--phase", "import"]);
    let c1 = n1.agent_ok(&["restore", "latest", "--strategy", "import", "--phase", "cleanup", "--clear-truncated"]);
    assert_eq!(c1["truncated_snapshots"], serde_json::json!([]), "cleared: {c1}");
    agent2(&["restore", "latest", "--strategy", "hardlinks", "--phase", "cleanup"]);
    assert_eq!(content(&live_files(&roots("127.0.0.1"), "shop")), want1);
    assert_eq!(content(&live_files(&roots("127.0.0.2"), "shop")), want2);
}

#[test]
fn t5a_in_place_rebuild_with_system_keyspaces_and_tokens() {
    let Some(env) = start("t5a", Backend::Local, Version::V50) else { return };
    let r = env.agent_ok(&["backup", "--system-keyspaces"]);
    let m = manifest(&env, r["manifest_key"].as_str().unwrap());
    let roots = env.roots();
    let want_shop = live_files(&roots, "shop");
    let want_system = live_files(&roots, "system");
    let state = env.cluster.cluster().unwrap();
    let host = state.nodes[0].host_id.clone();

    step("the node is lost: stop it and wipe its data directories and its agent state");
    env.admin(&["stop", "127.0.0.1"]);
    for r in &roots {
        std::fs::remove_dir_all(r).unwrap();
        std::fs::create_dir_all(r).unwrap();
    }
    std::fs::remove_dir_all(env.state_dir()).unwrap();
    let seg = state.nodes[0].commitlog_dir.join("CommitLog-7-1.log");
    std::fs::write(&seg, b"old segment").unwrap();

    step("without an identity the restore says how to give one");
    let e = env.agent_err(&["restore", "latest", "--strategy", "in-place"]).error();
    assert!(e.contains("--cluster and --host-id"), "{e}");

    step("rebuild with --system-keyspaces --set-tokens");
    let r = env.agent_ok(&[
        "restore",
        "latest",
        "--strategy",
        "in-place",
        "--cluster",
        "Test Cluster",
        "--host-id",
        &host,
        "--system-keyspaces",
        "--set-tokens",
    ]);
    assert!(r["yaml_updated"].as_bool().unwrap());
    assert_eq!(live_files(&roots, "shop"), want_shop);
    assert_eq!(live_files(&roots, "system"), want_system);
    let moved = PathBuf::from(r["commitlog_moved_to"].as_str().unwrap());
    assert!(moved.join("CommitLog-7-1.log").is_file() && !seg.exists(), "old segments moved aside, not deleted");
    let yaml = std::fs::read_to_string(state.nodes[0].conf_dir.join("cassandra.yaml")).unwrap();
    assert!(yaml.contains(&format!("initial_token: {}", m.node.tokens.join(","))), "{yaml}");
    assert!(yaml.contains("auto_bootstrap: false") && yaml.contains(&format!("num_tokens: {}", m.node.tokens.len())));
    assert!(
        std::fs::read_dir(&state.nodes[0].conf_dir)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains("before-restore"))
    );
    env.admin(&["start", "127.0.0.1"]);

    step("--new-cluster restores system_schema but not system");
    env.admin(&["stop", "127.0.0.1"]);
    for r in &roots {
        std::fs::remove_dir_all(r).unwrap();
        std::fs::create_dir_all(r).unwrap();
    }
    env.agent_ok(&[
        "restore",
        "latest",
        "--strategy",
        "in-place",
        "--cluster",
        "Test Cluster",
        "--host-id",
        &host,
        "--new-cluster",
    ]);
    assert!(live_files(&roots, "system").is_empty());
    assert!(!live_files(&roots, "system_schema").is_empty());
    assert_eq!(live_files(&roots, "shop"), want_shop);
}

#[test]
fn t5b_in_place_onto_more_data_directories_keeps_sstables_together() {
    let Some(env) = start("t5b", Backend::Local, Version::V41) else { return };
    env.admin(&["write-sstables", "shop.users", "--count", "5", "--size", "7000"]);
    env.agent_ok(&["backup"]);
    let roots = env.roots();
    let want = content(&live_files(&roots, "shop"));
    env.admin(&["stop", "127.0.0.1"]);
    step("the node comes back with three data directories instead of two");
    let third = env.dir.path().join("data3");
    std::fs::create_dir_all(&third).unwrap();
    let dirs: Vec<String> = roots.iter().chain(std::iter::once(&third)).map(|d| d.display().to_string()).collect();
    for r in &roots {
        std::fs::remove_dir_all(r.join("shop")).unwrap();
    }
    let mut args = vec!["restore", "latest", "--strategy", "in-place"];
    for d in &dirs {
        args.extend(["--data-dir", d.as_str()]);
    }
    let r = env.agent_ok(&args);
    assert!(r["warnings"].to_string().contains("spread over this node's directories"), "{r}");
    let all: Vec<PathBuf> = roots.iter().cloned().chain(std::iter::once(third.clone())).collect();
    let placed = live_files(&all, "shop");
    assert_eq!(content(&placed), want, "every file back, byte for byte");
    // Each SSTable's components in one directory only.
    let mut home: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
    for k in placed.keys() {
        let (root, rel) = k.split_once(':').unwrap();
        let name = rel.rsplit('/').next().unwrap();
        let prefix = cassette_common::sstable::SstableName::parse(name).unwrap().sstable_prefix();
        let table = rel.split('/').nth(1).unwrap();
        let prev = home.insert(format!("{table}/{prefix}"), root.to_owned());
        assert!(prev.is_none_or(|p| p == root), "{table}/{prefix} split across directories");
    }
    let used: std::collections::BTreeSet<&String> = home.values().collect();
    assert_eq!(used.len(), 3, "spread over all three directories: {home:?}");
}
