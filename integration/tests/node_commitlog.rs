//! Commit-log archiving and point-in-time restore with the real `cassette-agent` binary as
//! Cassandra's `archive_command` (run by the emulator exactly as Cassandra runs it: split on
//! spaces, no shell) and the emulator's commit-log recovery at startup.
//!
//! What it proves, on every Cassandra version the emulator models:
//! - each closed segment is archived by one call, with its time range in the index; a repeated
//!   call (Cassandra re-archives at startup) does nothing and succeeds;
//! - a restore to a time between two segments selects every segment closed after the backup's
//!   snapshot up to and including the first one closed after the target, downloads them
//!   verified, and writes `commitlog_archiving.properties` with the precision the version reads
//!   (3.11: whole seconds), keeping the original `archive_command`;
//! - the node, started, restores exactly those segments and replays them; `--finish` puts the
//!   original properties back; `--wait-and-finish` does it on its own once the node is up;
//! - a directory sweep stores and removes segments; a damaged segment is reported, not stored;
//!   replay restricted to tables goes into the JVM options and out again;
//! - an index entry from a hostile bucket whose segment name is a path (`../..`, absolute, or
//!   not the segment its key names) is refused before anything is downloaded or written.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cassette_common::layout;
use cassette_common::manifest::CommitLogEntry;
use cassette_integration::emulator::{ClusterSpec, Version};
use cassette_integration::node::{NodeEnv, step};
use cassette_integration::process::ManagedProcess;
use cassette_integration::servers::Backend;
use chrono::{DateTime, Utc};

const EMU: &str = env!("CARGO_BIN_EXE_cassandra-emulator");

fn start(test: &str, version: Version) -> NodeEnv {
    cassette_integration::init_test_logging();
    let env = NodeEnv::start(test, EMU, Backend::Local, &ClusterSpec::single(version)).unwrap().unwrap();
    env.admin(&["create-keyspace", "shop"]);
    env.admin(&["create-table", "shop.users"]);
    env.admin(&["write-sstables", "shop.users", "--count", "2", "--size", "5000"]);
    env
}

fn node(env: &NodeEnv) -> cassette_integration::emulator::Node {
    env.cluster.cluster().unwrap().nodes.into_iter().find(|n| n.address == env.address).unwrap()
}

/// `archive_command` as Cassandra runs it: the agent binary, its config, `%path`.
fn archive_command(env: &NodeEnv) -> String {
    let cmd = format!("{} --config {} commitlog-backup %path", env.agent_bin.display(), env.config_path.display());
    assert!(!cmd.contains("  "), "Cassandra splits on single spaces");
    format!("archive_command={cmd}\n")
}

/// Writes `n` segments, one per call, pausing so each has its own modification time.
fn segments(env: &NodeEnv, n: usize) {
    for _ in 0..n {
        env.admin(&["commitlog", &env.address, "--segments", "1", "--size", "40000"]);
        std::thread::sleep(Duration::from_millis(30));
    }
}

fn entries(env: &NodeEnv) -> Vec<CommitLogEntry> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let repo = env.repo();
    let c = env.cluster.cluster().unwrap();
    let host = node(env).host_id.parse().unwrap();
    let prefix = layout::commitlog_prefix(&c.cluster_name, &host);
    let mut v: Vec<CommitLogEntry> = rt
        .block_on(repo.list(&prefix))
        .unwrap()
        .iter()
        .map(|m| rt.block_on(repo.get_json::<CommitLogEntry>(m.location.as_ref(), 1 << 20)).unwrap())
        .collect();
    v.sort_by_key(|e| e.closed_at);
    v
}

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn point_in_time(version: Version) {
    let test = format!("t60_{}", version.short().replace('.', ""));
    let env = start(&test, version);
    let n = node(&env);
    let conf = n.conf_dir.clone();

    step(&format!("[{version:?}] backup, then segments archived by archive_command"));
    let b = env.agent_ok(&["backup"]);
    let original = archive_command(&env);
    env.cluster.set_commitlog_archiving(&env.address, &original).unwrap();
    segments(&env, 5);
    let archived = entries(&env);
    assert_eq!(archived.len(), 4, "four closed segments, the fifth is active: {archived:?}");
    let v = version.commitlog_version(false);
    for e in &archived {
        assert!(e.segment.starts_with(&format!("CommitLog-{v}-")), "{}", e.segment);
        assert_eq!(e.version as i32, v);
        assert_eq!(e.host_id.as_str(), n.host_id);
    }
    assert!(archived.windows(2).all(|w| w[0].segment_id < w[1].segment_id), "write order");

    step("archiving a segment again does nothing and succeeds");
    let first = n.commitlog_dir.join(&archived[0].segment);
    let r = env.agent_ok(&["commitlog-backup", first.to_str().unwrap()]);
    assert_eq!(r["segments"][0]["already_archived"], true, "{r}");

    step("the node is lost and rebuilt in place from the backup");
    env.admin(&["stop", &env.address]);
    env.agent_ok(&["restore", b["backup_id"].as_str().unwrap(), "--strategy", "in-place"]);
    assert!(std::fs::read_dir(&n.commitlog_dir).unwrap().next().is_none(), "old segments moved aside");

    step("restore to a time between the second and third segment");
    let until = archived[1].closed_at + (archived[2].closed_at - archived[1].closed_at) / 2;
    let dl = env.dir.path().join("segments");
    let r = env.agent_ok(&[
        "commitlog-restore",
        "--until",
        &rfc(until),
        "--conf-dir",
        conf.to_str().unwrap(),
        "--download-dir",
        dl.to_str().unwrap(),
    ])["restore"]
        .clone();
    let selected: Vec<String> =
        r["segments"].as_array().unwrap().iter().map(|s| s["segment"].as_str().unwrap().to_owned()).collect();
    let expected: Vec<String> = archived[..3].iter().map(|e| e.segment.clone()).collect();
    assert_eq!(selected, expected, "every segment after the snapshot, up to the first closed after the target");
    assert_eq!(r["from_backup"], b["backup_id"]);
    assert!(!r["warnings"].to_string().contains("replayed as well"), "{r}");
    for e in &archived[..3] {
        let (h, _) = cassette_common::hash::sha256_file(&dl.join(&e.segment)).unwrap();
        assert_eq!(h, e.sha256, "downloaded and verified");
    }
    let props = std::fs::read_to_string(conf.join("commitlog_archiving.properties")).unwrap();
    let point = props.lines().find_map(|l| l.strip_prefix("restore_point_in_time=")).unwrap();
    if version == Version::V311 {
        assert_eq!(point, until.format("%Y:%m:%d %H:%M:%S").to_string());
        assert!(r["warnings"].to_string().contains("whole seconds"), "{r}");
    } else {
        assert_eq!(point, until.format("%Y:%m:%d %H:%M:%S%.6f").to_string());
    }
    assert!(props.contains(&format!("restore_directories={}\n", dl.display())));
    assert!(props.contains("restore_command=/bin/cp -f %from %to\n"));
    assert!(props.contains(original.trim()), "archiving goes on after the restore: {props}");
    assert!(r["next_steps"].to_string().contains("--finish"), "{r}");

    step("the node starts: it restores and replays exactly those segments");
    env.admin(&["start", &env.address]);
    let replayed: Vec<String> = node(&env).replayed_segments.into_iter().map(|(s, _)| s).collect();
    assert_eq!(replayed, expected);

    step("--finish puts the original properties back");
    let f = env.agent_ok(&[
        "commitlog-restore",
        "--finish",
        "--conf-dir",
        conf.to_str().unwrap(),
        "--download-dir",
        dl.to_str().unwrap(),
        "--remove-downloads",
    ]);
    assert_eq!(f["restored_original"], true, "{f}");
    assert_eq!(std::fs::read_to_string(conf.join("commitlog_archiving.properties")).unwrap(), original);
    assert!(!dl.exists() && !conf.join("commitlog_archiving.properties.cassette-original").exists());
}

#[test]
fn t60_point_in_time_3_11() {
    point_in_time(Version::V311);
}

#[test]
fn t60_point_in_time_4_0() {
    point_in_time(Version::V40);
}

#[test]
fn t60_point_in_time_4_1() {
    point_in_time(Version::V41);
}

#[test]
fn t60_point_in_time_5_0() {
    point_in_time(Version::V50);
}

#[test]
fn t61_sweep_a_directory_and_damaged_segments() {
    let env = start("t61", Version::V41);
    let n = node(&env);
    env.agent_ok(&["backup"]);
    let dir = env.dir.path().join("archive");
    std::fs::create_dir_all(&dir).unwrap();
    env.cluster
        .set_commitlog_archiving(&env.address, &format!("archive_command=/bin/ln %path {}/%name\n", dir.display()))
        .unwrap();
    segments(&env, 4);
    std::fs::write(dir.join("README"), b"not a segment").unwrap();
    step("sweep with --remove");
    let r = env.agent_ok(&["commitlog-backup", "--remove", dir.to_str().unwrap()]);
    assert_eq!(r["segments"].as_array().unwrap().len(), 3, "{r}");
    assert!(r["segments"].as_array().unwrap().iter().all(|s| s["removed"] == true && s["uploaded"] == true));
    let left: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(left, vec![dir.join("README")], "segments removed, other files left alone");
    assert_eq!(entries(&env).len(), 3);
    step("a damaged segment is reported and not stored");
    let bad = dir.join("CommitLog-7-123.log");
    std::fs::write(&bad, b"garbage that is not a header").unwrap();
    let good = n.commitlog_dir.join(node(&env).active_segment.unwrap());
    let r = env.agent(&["commitlog-backup", bad.to_str().unwrap(), good.to_str().unwrap()]);
    assert_eq!(r.code, 1);
    let j = r.json();
    assert_eq!(j["segments"].as_array().unwrap().len(), 1, "the good one is stored: {j}");
    assert!(j["failures"][0]["error"].as_str().unwrap().contains("not a commit-log segment"), "{j}");
    assert!(bad.exists(), "a failed segment is never removed");
}

#[test]
fn t62_replay_list_and_wait_and_finish() {
    let env = start("t62", Version::V40);
    let n = node(&env);
    let conf = n.conf_dir.clone();
    std::fs::write(conf.join("jvm-server.options"), "-Xss256k\n").unwrap();
    env.agent_ok(&["backup"]);
    env.cluster.set_commitlog_archiving(&env.address, &archive_command(&env)).unwrap();
    segments(&env, 3);
    let archived = entries(&env);
    env.admin(&["stop", &env.address]);
    let dl = env.dir.path().join("dl");
    let until = archived.last().unwrap().closed_at + chrono::Duration::seconds(5);

    step("prepare with --tables and --wait-and-finish, in the background");
    let log = env.dir.path().join("pitr.log");
    let cmd = env.command(&[
        "commitlog-restore",
        "--until",
        &rfc(until),
        "--conf-dir",
        conf.to_str().unwrap(),
        "--download-dir",
        dl.to_str().unwrap(),
        "--tables",
        "shop.users",
        "--wait-and-finish",
        "--remove-downloads",
    ]);
    let mut child = ManagedProcess::spawn("pitr", cmd, &log).unwrap();
    let jvm = conf.join("jvm-server.options");
    wait_for(&mut child, || std::fs::read_to_string(&jvm).unwrap().contains("-Dcassandra.replayList=shop.users"));
    wait_for(&mut child, || conf.join("commitlog_archiving.properties.cassette-original").exists());
    assert!(child.is_running(), "it waits for the node");
    step("the node starts; the settings go away on their own");
    env.admin(&["start", &env.address]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.is_running() {
        assert!(Instant::now() < deadline, "{}", child.log_tail(4000));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::read_to_string(&jvm).unwrap(), "-Xss256k\n");
    assert_eq!(std::fs::read_to_string(conf.join("commitlog_archiving.properties")).unwrap(), archive_command(&env));
    assert!(!dl.exists());
    let replayed: Vec<String> = node(&env).replayed_segments.into_iter().map(|(s, _)| s).collect();
    // The segments still in the node's own directory (here: not moved aside) are replayed too.
    for e in &archived {
        assert!(replayed.contains(&e.segment), "a target after the last archived segment replays all: {replayed:?}");
    }
    let out = std::fs::read_to_string(&log).unwrap();
    assert!(out.contains("\"restored_original\": true"), "{out}");
    assert!(out.contains("are replayed as well"), "the segments left in the node's directory are pointed out: {out}");
}

/// - an index entry whose `segment` is `../../escaped.log`, an absolute path or not the segment
///   named by its key is refused, naming the key, before any download;
/// - nothing is written outside the download directory, and no properties file is written;
/// - with the entry removed, the same restore works.
#[test]
fn t63_index_entries_from_storage_cannot_escape_the_download_directory() {
    let env = start("t63", Version::V41);
    let n = node(&env);
    let conf = n.conf_dir.clone();
    env.agent_ok(&["backup"]);
    env.cluster.set_commitlog_archiving(&env.address, &archive_command(&env)).unwrap();
    segments(&env, 3);
    let archived = entries(&env);
    assert_eq!(archived.len(), 2);
    env.admin(&["stop", &env.address]);
    let repo_dir = env.server.location(&env.prefix).local_dir().unwrap();
    let c = env.cluster.cluster().unwrap();
    let host = n.host_id.parse().unwrap();
    let dl = env.dir.path().join("pitr").join("dl");
    std::fs::create_dir_all(&dl).unwrap();
    let properties = std::fs::read_to_string(conf.join("commitlog_archiving.properties")).unwrap();
    let outside = env.dir.path().join("escaped.log");
    let absolute = env.dir.path().join("absolute.log");
    let last = archived.last().unwrap();
    let until = last.closed_at + chrono::Duration::seconds(5);
    for (what, segment, key_segment) in [
        ("a relative path", "../../escaped.log".to_owned(), "CommitLog-7-999.log"),
        ("an absolute path", absolute.display().to_string(), "CommitLog-7-999.log"),
        ("another segment than its key names", "CommitLog-7-998.log".to_owned(), "CommitLog-7-999.log"),
    ] {
        step(&format!("an index entry naming {what}"));
        // A copy of a genuine entry (its blob exists), closed after the others so it is selected.
        let mut evil = serde_json::to_value(last).unwrap();
        evil["segment"] = serde_json::json!(segment);
        evil["segment_id"] = serde_json::json!(998);
        let closed = last.closed_at + chrono::Duration::seconds(1);
        evil["closed_at"] = serde_json::json!(closed);
        let key = layout::commitlog_entry_key(&c.cluster_name, &host, closed, key_segment);
        std::fs::create_dir_all(repo_dir.join(&key).parent().unwrap()).unwrap();
        std::fs::write(repo_dir.join(&key), serde_json::to_vec(&evil).unwrap()).unwrap();
        let r = env.agent_err(&[
            "commitlog-restore",
            "--until",
            &rfc(until),
            "--conf-dir",
            conf.to_str().unwrap(),
            "--download-dir",
            dl.to_str().unwrap(),
        ]);
        let e = r.error();
        assert!(
            e.contains(&key) && e.contains("commit-log index entry") && e.contains("nothing was downloaded"),
            "{e}"
        );
        assert!(!outside.exists() && !absolute.exists(), "{what}: a file was written outside the download directory");
        assert!(std::fs::read_dir(&dl).unwrap().next().is_none(), "{what}: nothing downloaded");
        assert_eq!(
            std::fs::read_to_string(conf.join("commitlog_archiving.properties")).unwrap(),
            properties,
            "{what}: no properties written"
        );
        std::fs::remove_file(repo_dir.join(&key)).unwrap();
    }
    step("without the hostile entry the same restore works");
    let r = env.agent_ok(&[
        "commitlog-restore",
        "--until",
        &rfc(until),
        "--conf-dir",
        conf.to_str().unwrap(),
        "--download-dir",
        dl.to_str().unwrap(),
    ]);
    assert_eq!(r["restore"]["segments"].as_array().unwrap().len(), 2, "{r}");
}

fn wait_for(child: &mut ManagedProcess, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(child.is_running(), "exited early: {}", child.log_tail(4000));
        assert!(Instant::now() < deadline, "timed out: {}", child.log_tail(4000));
        std::thread::sleep(Duration::from_millis(20));
    }
}
