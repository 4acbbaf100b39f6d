//! Single-node backup and restore with the real `cassette-agent` binary, an emulated node and
//! real storage servers (a directory, s3s-fs, moto, Azurite).
//!
//! What it proves:
//! - backup → new SSTables and a compaction → backup sends only the new blobs and reads (hashes)
//!   only the new files; snapshots are cleared; JBOD, native secondary indexes, a multipart-sized file;
//! - restore with each strategy (import, hardlinks, in-place) gives back exactly the content
//!   that was snapshotted, on every backend and on every Cassandra version the emulator models
//!   (3.11 refuses import with a clear error; 4.1 with UUID ids; 5.0 with bti);
//! - dry runs, --keep-snapshot, --entities, --system-keyspaces, --duration; list and verify;
//!   config file → environment → flags; --help with examples on every command;
//! - a blob deleted outside Cassette is noticed by the next incremental backup (stored again,
//!   not referenced silently), and verify says clearly what is missing and why it may be.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet};

use cassette_common::ids::BlobHash;
use cassette_integration::emulator::{ClusterSpec, Version};
use cassette_integration::node::{NodeEnv, content, live_files, step};
use cassette_integration::servers::Backend;

const EMU: &str = env!("CARGO_BIN_EXE_cassandra-emulator");

fn spec(version: Version) -> ClusterSpec {
    let mut s = ClusterSpec::single(version);
    s.data_dirs = 2;
    s
}

/// Keyspace `shop`: `users` (with a native index) and `orders` (one SSTable above the multipart threshold).
fn load_shop(env: &NodeEnv, big: bool) {
    env.admin(&["create-keyspace", "shop"]);
    env.admin(&["create-table", "shop.users", "--columns", "id int, email text", "--pk", "id"]);
    env.admin(&["create-index", "shop.users", "users_email", "email"]);
    env.admin(&["create-table", "shop.orders"]);
    env.admin(&["write-sstables", "shop.users", "--count", "3", "--size", "30000"]);
    if big {
        env.admin(&["write-sstables", "shop.orders", "--count", "1", "--size", "6000000"]);
    }
    env.admin(&["write-sstables", "shop.orders", "--count", "2", "--size", "20000"]);
    env.admin(&["insert", "shop.users", "--rows", "100"]);
}

fn no_cassette_snapshots(env: &NodeEnv) {
    for root in env.roots() {
        for f in cassette_integration::node::all_files(&root) {
            let s = f.to_string_lossy();
            assert!(!s.contains("/snapshots/cassette-"), "snapshot left behind: {s}");
        }
    }
}

fn without_indexes(c: Vec<(String, String, BlobHash)>) -> Vec<(String, String, BlobHash)> {
    c.into_iter().filter(|(t, _, _)| !t.contains("/.")).collect()
}

fn u(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} missing in {v}"))
}

/// The main scenario on one node; returns the seconds the second backup took.
fn scenario(env: &NodeEnv, version: Version, big: bool) {
    step(&format!("[{version:?}] load keyspace shop"));
    load_shop(env, big);
    let roots = env.roots();

    step("first backup");
    let r1 = env.agent_ok(&["backup", "--tag", "first"]);
    let a = live_files(&roots, "shop");
    // system_auth (roles) and system_schema (what rebuilds a cluster from nothing) come along.
    let mut auth = live_files(&roots, "system_auth");
    auth.extend(live_files(&roots, "system_schema"));
    assert_eq!(u(&r1, "files_total") as usize, a.len() + auth.len(), "{r1}");
    assert!(r1["snapshot_cleared"].as_bool().unwrap());
    assert!(r1["manifest_key"].as_str().unwrap().ends_with(".json"));
    no_cassette_snapshots(env);
    let stored: BTreeSet<BlobHash> = a.values().chain(auth.values()).map(|(h, _)| *h).collect();
    assert_eq!(u(&r1, "files_uploaded") as usize, stored.len(), "each distinct content once: {r1}");

    step("new SSTables and a compaction");
    env.admin(&["write-sstables", "shop.users", "--count", "2", "--size", "25000"]);
    env.admin(&["compact", "shop.orders"]);
    let b = live_files(&roots, "shop");
    let new: BTreeMap<&String, &(BlobHash, u64)> = b.iter().filter(|(k, _)| !a.contains_key(*k)).collect();
    assert!(!new.is_empty());
    let hashed: u64 = new.values().map(|(_, n)| n).sum();
    let mut to_send: BTreeMap<BlobHash, u64> = BTreeMap::new();
    for (h, n) in new.values() {
        if !stored.contains(h) {
            to_send.insert(*h, *n);
        }
    }

    step("second backup: only the new blobs are sent, only the new files are read");
    let r2 = env.agent_ok(&["backup"]);
    assert_eq!(u(&r2, "bytes_hashed"), hashed, "nothing but the new files was hashed: {r2}");
    assert_eq!(u(&r2, "files_uploaded") as usize, to_send.len(), "{r2}");
    assert_eq!(u(&r2, "bytes_uploaded"), to_send.values().sum::<u64>(), "{r2}");
    assert_eq!(u(&r2, "files_total") as usize, b.len() + auth.len());
    assert!(u(&r2, "existence_checks") <= new.len() as u64 + 1, "only new files are checked (or one listing): {r2}");
    no_cassette_snapshots(env);

    step("a backup of the unchanged node reads nothing, sends nothing, asks nothing about blobs");
    let r3 = env.agent_ok(&["backup"]);
    assert_eq!((u(&r3, "bytes_hashed"), u(&r3, "files_uploaded")), (0, 0), "{r3}");
    assert_eq!(u(&r3, "existence_checks"), 0, "the previous backup's blobs are known stored: {r3}");
    no_cassette_snapshots(env);
    let snapshotted = content(&b);

    if version >= Version::V40 {
        step("restore --strategy import over changed data");
        env.admin(&["write-sstables", "shop.users", "--count", "1", "--size", "1000"]);
        let r = env.agent_ok(&["restore", "latest", "--strategy", "import", "--entities", "shop"]);
        assert_eq!(r["phases"], serde_json::json!(["download", "truncate", "import", "cleanup"]), "{r}");
        assert_eq!(without_indexes(content(&live_files(&roots, "shop"))), without_indexes(snapshotted.clone()));
    } else {
        step("restore --strategy import is refused on 3.11");
        let e = env.agent_err(&["restore", "latest", "--strategy", "import"]).error();
        assert!(e.contains("has no nodetool import") && e.contains("hardlinks"), "{e}");
    }

    step("restore --strategy hardlinks over changed data");
    env.admin(&["write-sstables", "shop.orders", "--count", "1", "--size", "1000"]);
    env.agent_ok(&["restore", "latest", "--strategy", "hardlinks", "--entities", "shop"]);
    assert_eq!(without_indexes(content(&live_files(&roots, "shop"))), without_indexes(snapshotted.clone()));
    for r in &roots {
        assert!(!r.join(".cassette-restore").exists(), "cleanup removed the staging directory");
    }

    step("restore --strategy in-place on the stopped node, over stray files");
    env.admin(&["stop", &env.address]);
    let users_dir =
        roots[0].join("shop").join(b.keys().find(|k| k.contains("/users-")).unwrap().split('/').nth(1).unwrap());
    std::fs::write(users_dir.join("nb-999-big-Data.db"), b"stray").unwrap();
    std::fs::write(users_dir.join("nb_txn_compaction_0b8b7d30-1c42-11ef-9d55-7f9d1b9b5a2e.log"), b"").unwrap();
    // A planned file whose live copy changed (same size, other bytes) is replaced, not kept.
    let changed = std::fs::read_dir(&users_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("-Data.db") && !p.to_string_lossy().contains("nb-999-"))
        .unwrap();
    let mut bytes = std::fs::read(&changed).unwrap();
    bytes[0] ^= 0xff;
    std::fs::remove_file(&changed).unwrap();
    std::fs::write(&changed, &bytes).unwrap();
    let r = env.agent_ok(&["restore", "latest", "--strategy", "in-place"]);
    assert!(u(&r, "removed_files") >= 3, "{r}");
    let after = live_files(&roots, "shop");
    assert_eq!(after, b, "in place: the same files at the same paths, byte for byte");
    env.admin(&["start", &env.address]);
    step("the node starts with the restored SSTables");
    let state = env.cluster.cluster().unwrap();
    let live: usize = state.nodes[0].live.iter().filter(|(k, _)| k.starts_with("shop/")).map(|(_, s)| s.len()).sum();
    let expected: BTreeSet<String> = b
        .keys()
        .map(|k| {
            let (root, rel) = k.split_once(':').unwrap();
            let dir = rel.rsplit_once('/').unwrap().0;
            let name = rel.rsplit('/').next().unwrap();
            format!("{root}:{dir}/{}", cassette_common::sstable::SstableName::parse(name).unwrap().sstable_prefix())
        })
        .collect();
    assert_eq!(live, expected.len(), "every restored SSTable is live after the start");
}

fn main_scenario(backend: Backend, test: &str) {
    cassette_integration::init_test_logging();
    let Some(env) = NodeEnv::start(test, EMU, backend, &spec(Version::V41)).unwrap() else { return };
    scenario(&env, Version::V41, true);
}

#[test]
fn t40_backup_incremental_restore_local() {
    main_scenario(Backend::Local, "t40_backup_incremental_restore_local");
}

#[test]
fn t40_backup_incremental_restore_s3s_fs() {
    main_scenario(Backend::S3sFs, "t40_backup_incremental_restore_s3s_fs");
}

#[test]
fn t40_backup_incremental_restore_moto() {
    main_scenario(Backend::Moto, "t40_backup_incremental_restore_moto");
}

#[test]
fn t40_backup_incremental_restore_azurite() {
    main_scenario(Backend::Azurite, "t40_backup_incremental_restore_azurite");
}

#[test]
fn t41_every_version_with_jbod() {
    cassette_integration::init_test_logging();
    let mut variants = Vec::new();
    for v in Version::ALL {
        variants.push((v, spec(v)));
    }
    let mut uuid = spec(Version::V41);
    uuid.uuid_sstable_ids = true;
    variants.push((Version::V41, uuid));
    let mut bti = spec(Version::V50);
    bti.bti = true;
    bti.uuid_sstable_ids = true;
    variants.push((Version::V50, bti));
    for (v, s) in variants {
        step(&format!("version {v:?} (uuid ids: {}, bti: {})", s.uuid_sstable_ids, s.bti));
        let env = NodeEnv::start("t41_every_version_with_jbod", EMU, Backend::Local, &s).unwrap().unwrap();
        scenario(&env, v, false);
    }
}

#[test]
fn t42_dry_run_keep_snapshot_entities_system_duration() {
    cassette_integration::init_test_logging();
    let Some(env) = NodeEnv::start("t42", EMU, Backend::S3sFs, &spec(Version::V50)).unwrap() else { return };
    load_shop(&env, false);

    step("dry run: reports what would be sent, writes nothing, clears the snapshot");
    let r = env.agent_ok(&["backup", "--dry-run"]);
    assert!(r["dry_run"].as_bool().unwrap() && r["manifest_key"].is_null());
    assert!(u(&r, "files_uploaded") > 0 && u(&r, "bytes_uploaded") > 0, "{r}");
    no_cassette_snapshots(&env);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let blobs = rt.block_on(env.repo().list("blobs")).unwrap_or_default();
    assert!(blobs.is_empty(), "a dry run stores nothing");
    assert!(rt.block_on(env.repo().list("clusters")).unwrap_or_default().is_empty());

    step("--entities shop.users --keep-snapshot --duration");
    let r = env.agent_ok(&["backup", "--entities", "shop.users", "--keep-snapshot", "--duration", "1m"]);
    let tag = r["snapshot_tag"].as_str().unwrap().to_owned();
    assert_eq!(u(&r, "tables"), 1, "{r}");
    assert!(!r["snapshot_cleared"].as_bool().unwrap());
    let roots = env.roots();
    let kept = roots.iter().any(|root| {
        cassette_integration::node::all_files(root)
            .iter()
            .any(|f| f.to_string_lossy().contains(&format!("snapshots/{tag}/")))
    });
    assert!(kept, "--keep-snapshot keeps {tag}");
    assert!(r["warnings"].to_string().contains("kept"), "{r}");

    step("--system-keyspaces backs up system tables too");
    let r = env.agent_ok(&["backup", "--system-keyspaces"]);
    let key = r["manifest_key"].as_str().unwrap().to_owned();
    let m: cassette_common::manifest::NodeManifest = rt.block_on(env.repo().get_json(&key, 1 << 26)).unwrap();
    for ks in ["system", "system_schema", "system_auth", "shop"] {
        assert!(m.tables.iter().any(|t| t.keyspace == ks), "{ks} in the backup");
    }
    let users = m.tables.iter().find(|t| t.table == "users").unwrap();
    assert!(users.schema_cql.as_ref().unwrap().contains("CREATE TABLE IF NOT EXISTS shop.users"), "schema recorded");
    assert!(m.files.iter().any(|f| f.path.contains("/.users_email/")), "index SSTables recorded under their live path");
    assert!(m.files.iter().any(|f| f.data_dir == 1), "files of the second data directory carry its index");

    step("an unknown keyspace in --entities fails clearly and leaves no snapshot");
    let e = env.agent_err(&["backup", "--entities", "nope"]).error();
    assert!(e.contains("nope") && e.contains("does not exist"), "{e}");
    no_cassette_snapshots_except(&env, &tag);
}

fn no_cassette_snapshots_except(env: &NodeEnv, keep: &str) {
    for root in env.roots() {
        for f in cassette_integration::node::all_files(&root) {
            let s = f.to_string_lossy();
            assert!(!s.contains("/snapshots/cassette-") || s.contains(keep), "snapshot left behind: {s}");
        }
    }
}

#[test]
fn t43_list_and_verify() {
    cassette_integration::init_test_logging();
    let Some(env) = NodeEnv::start("t43", EMU, Backend::S3sFs, &spec(Version::V41)).unwrap() else { return };
    load_shop(&env, false);
    let r1 = env.agent_ok(&["backup", "--tag", "one"]);
    env.admin(&["write-sstables", "shop.users", "--count", "1", "--size", "50000"]);
    let r2 = env.agent_ok(&["backup"]);

    step("list: sizes, unique and reclaimable bytes");
    let l = env.agent_ok(&["list"]);
    let b = l["backups"].as_array().unwrap();
    assert_eq!(b.len(), 2);
    assert_eq!(b[0]["backup_id"], r1["backup_id"]);
    assert_eq!(b[0]["tag"], "one");
    assert_eq!(b[1]["bytes"].as_u64(), r2["bytes_total"].as_u64());
    // The second backup's new SSTable is its own; everything else is shared.
    assert!(b[1]["unique_bytes"].as_u64().unwrap() >= 50000, "{l}");
    assert_eq!(b[0]["unique_bytes"].as_u64(), Some(0), "the first backup shares every file: {l}");
    assert_eq!(b[1]["reclaimable_bytes"], b[1]["unique_bytes"]);

    let last = env.agent_ok(&["list", "--last", "1"]);
    assert_eq!(last["backups"].as_array().unwrap().len(), 1);
    assert_eq!(last["backups"][0]["backup_id"], r2["backup_id"]);

    step("verify by tag and by id, shallow and deep");
    let v = env.agent_ok(&["verify", "one"]);
    assert!(v["ok"].as_bool().unwrap());
    let v = env.agent_ok(&["verify", "latest", "--deep"]);
    assert!(v["ok"].as_bool().unwrap() && v["bytes_read"].as_u64().unwrap() > 0, "{v}");

    step("a damaged blob fails deep verification, a missing one fails both");
    let key = r2["manifest_key"].as_str().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m: cassette_common::manifest::NodeManifest = rt.block_on(env.repo().get_json(key, 1 << 26)).unwrap();
    let big = m.files.iter().filter(|f| f.size >= 50000).map(|f| f.sha256).next().unwrap();
    let path = env.server.blob_file(&env.prefix, &big).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    assert!(env.agent_ok(&["verify", "latest"])["ok"].as_bool().unwrap(), "same size: the shallow check passes");
    let r = env.agent_err(&["verify", "latest", "--deep"]);
    let j = r.json();
    assert_eq!(j["ok"], false);
    let problem = &j["backups"][0]["problems"][0];
    assert_eq!(problem["sha256"], big.to_string());
    assert!(problem["problem"].as_str().unwrap().contains("damaged"), "{j}");
    std::fs::remove_file(&path).unwrap();
    let j = env.agent_err(&["verify", r2["backup_id"].as_str().unwrap()]).json();
    assert!(j["backups"][0]["problems"][0]["problem"].as_str().unwrap().contains("missing"), "{j}");
    assert!(env.agent_ok(&["verify", "one"])["ok"].as_bool().unwrap(), "the first backup does not need that blob");
}

/// - after a blob of the previous backup is deleted outside Cassette (a lifecycle rule, a
///   person), an incremental backup of the unchanged node stores it again instead of trusting
///   the previous manifest: the new backup verifies, and the file is counted as sent;
/// - verify of the older backup, whose blob was gone meanwhile, names the blob, its files and
///   what may have removed it.
#[test]
fn t46_incremental_backup_notices_blobs_deleted_outside_cassette() {
    for backend in [Backend::Local, Backend::S3sFs] {
        cassette_integration::init_test_logging();
        let Some(env) = NodeEnv::start("t46", EMU, backend, &spec(Version::V41)).unwrap() else { continue };
        load_shop(&env, false);
        step(&format!("[{}] a full backup, then one of its blobs is deleted by someone else", backend.name()));
        let r1 = env.agent_ok(&["backup"]);
        use object_store::ObjectStoreExt;
        let rt = tokio::runtime::Runtime::new().unwrap();
        let key = r1["manifest_key"].as_str().unwrap();
        let m: cassette_common::manifest::NodeManifest = rt.block_on(env.repo().get_json(key, 1 << 26)).unwrap();
        let gone = m.files.iter().find(|f| f.path.contains("/users-") && f.path.ends_with("-Data.db")).unwrap();
        rt.block_on(
            env.repo()
                .store()
                .delete(&object_store::path::Path::from(cassette_common::layout::blob_key(&gone.sha256).as_str())),
        )
        .unwrap();
        // Verified now, checked after the backup below (which stores the blob again).
        let j = env.agent_err(&["verify", r1["backup_id"].as_str().unwrap()]).json();
        step("an incremental backup of the unchanged node stores it again");
        let r2 = env.agent_ok(&["backup"]);
        assert!(u(&r2, "files_uploaded") >= 1, "the deleted blob is sent again: {r2}");
        let v = env.agent_ok(&["verify", "latest"]);
        assert!(v["ok"].as_bool().unwrap(), "{v}");
        step("verify of the first backup, while the blob was gone, said what was missing");
        let p = &j["backups"][0]["problems"][0];
        assert_eq!(p["sha256"], gone.sha256.to_string(), "{j}");
        let text = p["problem"].as_str().unwrap();
        assert!(text.contains("missing") && text.contains("outside Cassette"), "{j}");
        assert!(p["files"].to_string().contains(&gone.path), "{j}");
    }
}

#[test]
fn t44_config_file_environment_flags() {
    cassette_integration::init_test_logging();
    let Some(env) = NodeEnv::start("t44", EMU, Backend::Local, &spec(Version::V41)).unwrap() else { return };
    load_shop(&env, false);
    let other = env.server.location("other");

    step("the environment overrides the file");
    let mut cmd = env.command(&["backup"]);
    cmd.env("CASSETTE_LOCATION", other.to_string());
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = j["manifest_key"].as_str().unwrap();
    let other_dir = other.local_dir().unwrap();
    assert!(other_dir.join(key).is_file(), "the backup went to CASSETTE_LOCATION");

    step("a flag overrides the environment");
    let third = env.server.location("third");
    let mut cmd = env.command(&["backup", "--location", &third.to_string()]);
    cmd.env("CASSETTE_LOCATION", other.to_string());
    let out = cmd.output().unwrap();
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(third.local_dir().unwrap().join(j["manifest_key"].as_str().unwrap()).is_file());

    step("bad settings are all reported at once");
    let mut cmd = env.command(&["list"]);
    cmd.env("CASSETTE_TRANSFER__CONCURRENCY", "0").env("CASSETTE_LOCKS__STALE_AFTER", "1s");
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("concurrency") && err.contains("stale_after"), "{err}");
    let mut cmd = env.command(&["list"]);
    cmd.env("CASSETTE_TRANSFER__CONCURENCY", "4");
    let err = String::from_utf8_lossy(&cmd.output().unwrap().stderr).into_owned();
    assert!(err.contains("concurency"), "a misspelt field is named: {err}");
}

#[test]
fn t45_help_with_examples_on_every_command() {
    let bin = cassette_integration::tools::workspace_binary("cassette-agent", "cassette-agent");
    for cmd in ["backup", "restore", "commitlog-backup", "commitlog-restore", "list", "verify", "remove-backup"] {
        let out = std::process::Command::new(&bin).args([cmd, "--help"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("Examples:") && text.contains("--output"), "{cmd}: {text}");
    }
}
