//! Storage faults, against real servers (s3s-fs verifies signatures and checksums; Azurite for
//! Azure-specific errors), a fault-injecting proxy, and the real `cassette-agent` binary.
//!
//! What it proves:
//! - a blob corrupted on the server's disk is caught on download: the error names the path and
//!   both hashes, and no file (not even a temporary one) is left;
//! - a connection dropped mid-upload is retried and the stored blob is correct (single request
//!   and multipart);
//! - a body corrupted in transit is rejected by the server's checksum check and the upload is
//!   retried to a correct blob. s3s-fs commits the body before it checks the checksum, so the
//!   rejected attempt also leaves a damaged object behind: the retry reads it back, sees that it
//!   does not hash to its name, and replaces it (other S3-compatible servers may behave alike);
//! - wrong credentials and a missing bucket fail fast with errors that say what to fix;
//! - killing an upload (kill -9) leaves no visible partial object, and rerunning completes it;
//! - killing a download leaves no partial file under the destination name, and rerunning completes it;
//! - the CLI's `put --output json` list round-trips through `get --list`;
//! - t28: a download destination listed twice is placed once (same content) or refused once per content;
//! - t29: files of an upload that cannot be read fail alone; the stored files and the failures keep the
//!   order given;
//! - t2a: `storage check` fails on a store that ignores `If-None-Match` (create-only documents could
//!   be overwritten there), and says so.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cassette_agent::hashcache::HashCache;
use cassette_agent::storage::engine::{DownloadItem, UploadSource, temp_path_for};
use cassette_agent::storage::{Environment, NoProgress, Repository, StoreError, TransferConfig, TransferEngine};
use cassette_common::hash::sha256_file;
use cassette_common::layout;
use cassette_common::location::StorageLocation;
use cassette_common::units::ByteSize;
use cassette_integration::data::random_file;
use cassette_integration::process::ManagedProcess;
use cassette_integration::proxy::{Fault, FaultProxy};
use cassette_integration::servers::{Backend, StorageServer};
use cassette_integration::tools::workspace_binary;

const MIB: u64 = 1 << 20;

fn cfg() -> TransferConfig {
    TransferConfig {
        concurrency: 4,
        multipart_threshold: ByteSize(5 * MIB),
        part_size: ByteSize(5 * MIB),
        parts_per_file: 2,
        max_attempts: 4,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(300),
        ..TransferConfig::default()
    }
}

fn engine(repo: &Repository) -> TransferEngine {
    TransferEngine::new(repo.clone(), Arc::new(HashCache::in_memory()), cfg(), Arc::new(NoProgress)).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn start(backend: Backend, test: &str) -> Option<StorageServer> {
    cassette_integration::init_test_logging();
    StorageServer::start(backend, test).unwrap()
}

fn step(s: &str) {
    eprintln!("--- {s}");
}

/// A repository client that goes through `proxy` instead of straight to the server.
fn via_proxy(server: &StorageServer, proxy: &FaultProxy, prefix: &str) -> Repository {
    let storage =
        cassette_agent::storage::StorageConfig { s3_endpoint: Some(proxy.endpoint()), ..server.storage_config() };
    Repository::connect(&server.location(prefix), &storage, &cfg(), &server.environment()).unwrap()
}

#[test]
fn t20_blob_corrupted_on_server_disk_is_caught_on_download() {
    for backend in [Backend::S3sFs, Backend::Local] {
        let Some(server) = start(backend, "t20_blob_corrupted_on_server_disk_is_caught_on_download") else { return };
        runtime().block_on(async {
            let work = tempfile::tempdir().unwrap();
            let repo = server.repository("corrupt", &cfg());
            repo.init().await.unwrap();
            step(&format!("[{}] upload a small and a multipart file", backend.name()));
            let files = [work.path().join("small"), work.path().join("large")];
            random_file(&files[0], 300 << 10, 11).unwrap();
            random_file(&files[1], 11 * MIB, 12).unwrap();
            let (uploaded, _) = engine(&repo).upload_files(files.to_vec()).await.into_result().unwrap();

            for f in &uploaded {
                step(&format!("[{}] flip one byte of the stored blob of {}", backend.name(), f.path.display()));
                let on_disk = server.blob_file("corrupt", &f.sha256).unwrap();
                let mut bytes = std::fs::read(&on_disk).unwrap();
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0x01;
                std::fs::write(&on_disk, &bytes).unwrap();

                let dest = work.path().join("restore").join(f.path.file_name().unwrap());
                let item = DownloadItem::new(f.sha256, f.size, dest.clone());
                let err = engine(&repo).download_file(&item).await.unwrap_err();
                match &err {
                    StoreError::HashMismatch { path, expected, actual } => {
                        assert_eq!(path, &dest);
                        assert_eq!(expected, &f.sha256);
                        assert_ne!(actual, &f.sha256);
                    }
                    other => panic!("expected a hash mismatch, got {other}"),
                }
                let msg = err.to_string();
                assert!(msg.contains("sha256 mismatch") && msg.contains(&dest.display().to_string()), "{msg}");
                assert!(!dest.exists(), "a corrupted download must not be placed");
                assert!(!temp_path_for(&dest).exists(), "the temporary file must be removed");
            }
        });
    }
}

#[test]
fn t21_dropped_connection_mid_upload_is_retried() {
    let Some(server) = start(Backend::S3sFs, "t21_dropped_connection_mid_upload_is_retried") else { return };
    runtime().block_on(async {
        let work = tempfile::tempdir().unwrap();
        let proxy = FaultProxy::start(server.port).unwrap();
        let repo = via_proxy(&server, &proxy, "dropped");
        repo.init().await.unwrap();
        let files = [work.path().join("single"), work.path().join("multi")];
        random_file(&files[0], 2 * MIB, 21).unwrap();
        random_file(&files[1], 12 * MIB, 22).unwrap();

        step("cut the connection in the middle of the single-request upload");
        proxy.arm(Fault::DropAfter(MIB));
        let (a, _) = engine(&repo).upload_files(vec![files[0].clone()]).await.into_result().unwrap();
        assert_eq!(proxy.fired(), 1, "the fault must have fired");

        step("cut the connection in the middle of a multipart part");
        proxy.arm(Fault::DropAfter(3 * MIB));
        let (b, _) = engine(&repo).upload_files(vec![files[1].clone()]).await.into_result().unwrap();
        assert_eq!(proxy.fired(), 2, "the fault must have fired");
        assert!(proxy.connections() >= 3, "retries open new connections");

        step("the stored blobs are exactly the files (read straight from the server)");
        let direct = server.repository("dropped", &cfg());
        for f in a.iter().chain(&b) {
            let dest = work.path().join("check").join(f.path.file_name().unwrap());
            engine(&direct).download_file(&DownloadItem::new(f.sha256, f.size, dest.clone())).await.unwrap();
            assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&f.path).unwrap());
        }
    });
}

#[test]
fn t22_body_corrupted_in_transit_is_rejected_and_retried() {
    let Some(server) = start(Backend::S3sFs, "t22_body_corrupted_in_transit_is_rejected_and_retried") else { return };
    runtime().block_on(async {
        let work = tempfile::tempdir().unwrap();
        let proxy = FaultProxy::start(server.port).unwrap();
        let repo = via_proxy(&server, &proxy, "in-transit");
        repo.init().await.unwrap();
        let file = work.path().join("f");
        random_file(&file, 2 * MIB, 31).unwrap();

        step("flip a byte of the request body on the way to the server");
        proxy.arm(Fault::CorruptAt(MIB));
        let e = engine(&repo);
        let (up, stats) = e.upload_files(vec![file.clone()]).await.into_result().unwrap();
        assert_eq!(proxy.fired(), 1);
        assert!(stats.retries >= 1, "the server must have rejected the corrupted body (retries: {})", stats.retries);

        step("the stored blob is the file, byte for byte (without the read-back repair it is not, on s3s-fs)");
        let direct = server.repository("in-transit", &cfg());
        let dest = work.path().join("check");
        engine(&direct).download_file(&DownloadItem::new(up[0].sha256, up[0].size, dest.clone())).await.unwrap();
        assert_eq!(sha256_file(&dest).unwrap(), sha256_file(&file).unwrap());
    });
}

#[test]
fn t23_wrong_credentials_fail_fast_with_a_clear_error() {
    for backend in [Backend::S3sFs, Backend::Azurite] {
        let Some(server) = start(backend, "t23_wrong_credentials_fail_fast_with_a_clear_error") else { return };
        runtime().block_on(async {
            step(&format!("[{}] wrong secret", backend.name()));
            let env = match backend {
                Backend::S3sFs => Environment::from_pairs([
                    ("AWS_ACCESS_KEY_ID", server.access_key.as_str()),
                    ("AWS_SECRET_ACCESS_KEY", "not-the-secret"),
                ]),
                _ => Environment::from_pairs([
                    ("AZURE_STORAGE_ACCOUNT_NAME", "devstoreaccount1"),
                    ("AZURE_STORAGE_ACCOUNT_KEY", "d3Jvbmcga2V5IHdyb25nIGtleSB3cm9uZyBrZXk="),
                ]),
            };
            let repo = Repository::connect(&server.location("denied"), &server.storage_config(), &cfg(), &env).unwrap();
            let start = Instant::now();
            let err = repo.init().await.unwrap_err();
            let took = start.elapsed();
            assert!(matches!(err, StoreError::Denied { .. }), "{err}");
            assert!(took < Duration::from_secs(5), "a permanent error must not be retried ({took:?})");
            let msg = err.to_string();
            let hint = if backend == Backend::S3sFs { "AWS_SECRET_ACCESS_KEY" } else { "AZURE_STORAGE_ACCOUNT_KEY" };
            assert!(msg.contains("access denied") && msg.contains(hint), "{msg}");
        });
    }
}

#[test]
fn t24_missing_bucket_is_reported_with_how_to_create_it() {
    for (backend, hint) in [
        (Backend::S3sFs, "aws s3 mb s3://no-such-bucket"),
        (Backend::Azurite, "az storage container create --name no-such-bucket"),
    ] {
        let Some(server) = start(backend, "t24_missing_bucket_is_reported_with_how_to_create_it") else { return };
        runtime().block_on(async {
            step(&format!("[{}] a bucket that does not exist", backend.name()));
            let scheme = if backend == Backend::S3sFs { "s3" } else { "azure" };
            let loc: StorageLocation = format!("{scheme}://no-such-bucket/p").parse().unwrap();
            let repo = Repository::connect(&loc, &server.storage_config(), &cfg(), &server.environment()).unwrap();
            let start = Instant::now();
            let err = repo.init().await.unwrap_err();
            assert!(start.elapsed() < Duration::from_secs(5));
            assert!(matches!(err, StoreError::MissingBucket { .. }), "{err}");
            assert!(err.to_string().contains(hint), "{err}");
        });
    }
}

/// Runs `cassette-agent` against `server` with a clean environment (no host credentials leak in).
fn agent(server: &StorageServer, state: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(workspace_binary("cassette-agent", "cassette-agent"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("CASSETTE_STATE_DIR", state)
        .envs(server.env_vars())
        .args(args);
    cmd
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// - `storage check` through a proxy that renames `If-None-Match` on the way to moto (a store that
///   ignores it) exits non-zero, and its problems name `If-None-Match` and what it protects;
/// - the same check straight against moto, which honours it, passes and says create-only
///   documents are safe there;
/// - the probe objects are removed in both cases.
#[test]
fn t2a_storage_check_refuses_a_store_that_ignores_if_none_match() {
    let Some(server) = start(Backend::Moto, "t2a_storage_check_refuses_a_store_that_ignores_if_none_match") else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let location = server.location("t2a").to_string();
    let check = |extra: &[&str]| {
        let mut args = vec!["--output", "json", "storage", "check", "--location", location.as_str()];
        args.extend_from_slice(extra);
        let out = agent(&server, state.path(), &args).output().unwrap();
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        (out.status.code(), j, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    step("through a proxy that drops If-None-Match: refused");
    let proxy = FaultProxy::start(server.port).unwrap();
    proxy.rename_header("if-none-match", "x-ignored-hdr");
    let endpoint = proxy.endpoint();
    let (code, j, stderr) = check(&["--s3-endpoint", endpoint.as_str()]);
    assert_ne!(code, Some(0), "a store that ignores If-None-Match must fail the check: {j} {stderr}");
    assert!(proxy.renamed() >= 1, "the proxy must have removed the header");
    let problems = j["problems"].to_string();
    assert!(problems.contains("If-None-Match") && problems.contains("overwrit"), "{j}");
    assert_eq!(j["create_only"], false, "{j}");
    step("straight to moto: create-only documents are honoured");
    let (code, j, stderr) = check(&[]);
    assert_eq!(code, Some(0), "{j} {stderr}");
    assert_eq!(j["create_only"], true, "{j}");
    step("no probe object is left behind");
    let repo = server.repository("t2a", &cfg());
    let left = runtime().block_on(repo.list("probes")).unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn t25_killed_upload_leaves_no_visible_partial_object() {
    let Some(server) = start(Backend::S3sFs, "t25_killed_upload_leaves_no_visible_partial_object") else { return };
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("big.db");
    random_file(&file, 40 * MIB, 41).unwrap();
    let hash = sha256_file(&file).unwrap().0;
    let loc = server.location("killed").to_string();
    let file_arg = file.to_str().unwrap();
    let state = work.path().join("state");

    step("start a throttled multipart upload and kill -9 it once parts are on the server");
    let args = [
        "storage",
        "put",
        "--location",
        &loc,
        "--bandwidth",
        "8MiB/s",
        "--part-size",
        "5MiB",
        "--multipart-threshold",
        "5MiB",
        file_arg,
    ];
    let mut child =
        ManagedProcess::spawn("agent put", agent(&server, &state, &args), &work.path().join("put.log")).unwrap();
    wait_until("a part is stored", Duration::from_secs(60), || server.pending_parts() > 0 || !child.is_running());
    assert!(child.is_running(), "the upload finished before it could be killed; log:\n{}", child.log_tail(2000));
    child.kill9();

    step("no blob is visible: not by name, not in a listing");
    let repo = server.repository("killed", &cfg());
    let rt = runtime();
    rt.block_on(async {
        assert_eq!(repo.blob_size(&hash).await.unwrap(), None);
        assert!(repo.list(layout::BLOBS_PREFIX).await.unwrap().is_empty());
    });

    step("running the same upload again completes it");
    let out =
        agent(&server, &state, &["storage", "put", "--location", &loc, "--output", "json", file_arg]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["files"][0]["sha256"], hash.to_string());
    assert_eq!(doc["files"][0]["uploaded"], true);
    rt.block_on(async { assert_eq!(repo.blob_size(&hash).await.unwrap(), Some(40 * MIB)) });
}

#[test]
fn t26_killed_download_leaves_no_partial_file() {
    let Some(server) = start(Backend::S3sFs, "t26_killed_download_leaves_no_partial_file") else { return };
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("big.db");
    random_file(&file, 40 * MIB, 51).unwrap();
    let repo = server.repository("killed-dl", &cfg());
    let rt = runtime();
    let up = rt.block_on(async {
        repo.init().await.unwrap();
        engine(&repo).upload_files(vec![file.clone()]).await.into_result().unwrap().0
    });
    let hash = up[0].sha256.to_string();
    let loc = server.location("killed-dl").to_string();
    let dest = work.path().join("restore/big.db");
    let state = work.path().join("state");

    step("start a throttled download and kill -9 it once bytes are arriving");
    let args = [
        "storage",
        "get",
        "--location",
        &loc,
        "--sha256",
        &hash,
        "-o",
        dest.to_str().unwrap(),
        "--bandwidth",
        "8MiB/s",
    ];
    let mut child =
        ManagedProcess::spawn("agent get", agent(&server, &state, &args), &work.path().join("get.log")).unwrap();
    let tmp = temp_path_for(&dest);
    wait_until("the temporary file has data", Duration::from_secs(60), || {
        std::fs::metadata(&tmp).is_ok_and(|m| m.len() > 0) || !child.is_running()
    });
    assert!(child.is_running(), "the download finished before it could be killed; log:\n{}", child.log_tail(2000));
    child.kill9();
    assert!(!dest.exists(), "no partial file under the destination name");

    step("running it again completes and verifies it, and cleans up the temporary file");
    let args = ["storage", "get", "--location", &loc, "--sha256", &hash, "-o", dest.to_str().unwrap()];
    let out = agent(&server, &state, &args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(sha256_file(&dest).unwrap(), sha256_file(&file).unwrap());
    assert!(!tmp.exists());
}

#[test]
fn t27_cli_put_list_round_trips_through_get() {
    let Some(server) = start(Backend::S3sFs, "t27_cli_put_list_round_trips_through_get") else { return };
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("data");
    for (i, size) in [0u64, 1, 70_000, 6 * MIB].iter().enumerate() {
        random_file(&src.join(format!("ks/t{i}/f{i}")), *size, 60 + i as u64).unwrap();
    }
    let loc = server.location("cli").to_string();
    let state = work.path().join("state");

    step("put a directory and keep the JSON list");
    let out =
        agent(&server, &state, &["storage", "put", "--location", &loc, "--output", "json", src.to_str().unwrap()])
            .output()
            .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list = work.path().join("list.json");
    std::fs::write(&list, &out.stdout).unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["files"].as_array().unwrap().len(), 4);
    assert_eq!(doc["stats"]["files_transferred"], 4);

    step("a second put sends nothing and reads nothing (hash cache in the state directory)");
    let out =
        agent(&server, &state, &["storage", "put", "--location", &loc, "--output", "json", src.to_str().unwrap()])
            .output()
            .unwrap();
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["stats"]["bytes_transferred"], 0);
    assert_eq!(again["stats"]["bytes_hashed"], 0);

    step("get the list into another directory: the trees are identical");
    let restored = work.path().join("restored");
    let out = agent(
        &server,
        &state,
        &[
            "storage",
            "get",
            "--location",
            &loc,
            "--list",
            list.to_str().unwrap(),
            "--to",
            restored.to_str().unwrap(),
            "--output",
            "json",
        ],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for i in 0..4 {
        let rel = PathBuf::from(format!("ks/t{i}/f{i}"));
        assert_eq!(
            std::fs::read(restored.join(&rel)).unwrap(),
            std::fs::read(src.join(&rel)).unwrap(),
            "{}",
            rel.display()
        );
    }

    step("a list entry that escapes the target directory is refused before anything is written");
    let evil = serde_json::json!({"location": loc, "files": [{"path": "../escaped", "sha256": doc["files"][0]["sha256"], "size": doc["files"][0]["size"]}]});
    let evil_path = work.path().join("evil.json");
    std::fs::write(&evil_path, evil.to_string()).unwrap();
    let out = agent(
        &server,
        &state,
        &[
            "storage",
            "get",
            "--location",
            &loc,
            "--list",
            evil_path.to_str().unwrap(),
            "--to",
            restored.to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a plain relative path"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!work.path().join("escaped").exists());
}

#[test]
fn t28_a_destination_listed_twice_is_placed_once_or_refused() {
    let Some(server) = start(Backend::Local, "t28_a_destination_listed_twice_is_placed_once_or_refused") else {
        return;
    };
    runtime().block_on(async {
        let work = tempfile::tempdir().unwrap();
        let repo = server.repository("dups", &cfg());
        repo.init().await.unwrap();
        let files: Vec<PathBuf> = (0..3).map(|i| work.path().join(format!("f{i}"))).collect();
        for (i, f) in files.iter().enumerate() {
            random_file(f, 1000 + i as u64, 40 + i as u64).unwrap();
        }
        let (up, _) = engine(&repo).upload_files(files.clone()).await.into_result().unwrap();
        let item =
            |i: usize, dest: &str| DownloadItem::new(up[i].sha256, up[i].size, work.path().join("restore").join(dest));
        step("same destination, same content: placed once; same destination, two contents: refused, once per content");
        let items = vec![item(2, "c"), item(0, "a"), item(1, "b"), item(0, "a"), item(2, "b"), item(1, "b")];
        for counted in [false, true] {
            let _ = std::fs::remove_dir_all(work.path().join("restore"));
            let e = engine(&repo);
            let report = if counted {
                e.download_files_counted(items.clone()).await
            } else {
                e.download_files(items.clone()).await
            };
            let mut failed: Vec<(PathBuf, String)> =
                report.failures.iter().map(|f| (f.path.clone(), f.error.to_string())).collect();
            failed.sort();
            assert_eq!(failed.len(), 2, "one failure per content of b: {failed:?}");
            for (path, error) in &failed {
                assert_eq!(path, &work.path().join("restore/b"));
                assert!(error.contains("listed twice with different content"), "{error}");
            }
            assert!(!work.path().join("restore/b").exists(), "a destination with two contents is not placed");
            assert_eq!(sha256_file(&work.path().join("restore/a")).unwrap().0, up[0].sha256);
            assert_eq!(sha256_file(&work.path().join("restore/c")).unwrap().0, up[2].sha256);
            let mut placed: Vec<PathBuf> = report.files.iter().map(|f| f.dest.clone()).collect();
            placed.sort();
            if counted {
                assert!(placed.is_empty(), "the counted variant keeps no list of files");
            } else {
                assert_eq!(placed, vec![work.path().join("restore/a"), work.path().join("restore/c")]);
            }
            assert_eq!(report.stats.files_total, 2);
        }
    });
}

#[test]
fn t29_files_that_cannot_be_read_fail_alone_and_the_rest_keep_their_order() {
    let Some(server) = start(Backend::Local, "t29_files_that_cannot_be_read_fail_alone_and_the_rest_keep_their_order")
    else {
        return;
    };
    runtime().block_on(async {
        let work = tempfile::tempdir().unwrap();
        let repo = server.repository("partial", &cfg());
        repo.init().await.unwrap();
        // Real files between missing ones; the second run has one of them stored already (its
        // hash cached), so both the stat pass and the upload tasks fill in the list.
        let names = ["a", "gone-1", "b", "c", "gone-2", "d"];
        let paths: Vec<PathBuf> = names.iter().map(|n| work.path().join(n)).collect();
        for (i, p) in paths.iter().enumerate() {
            if !p.to_string_lossy().contains("gone") {
                random_file(p, 2000 + 300 * i as u64, 60 + i as u64).unwrap();
            }
        }
        let cache = Arc::new(HashCache::in_memory());
        let engine_with = |cache: &Arc<HashCache>| {
            TransferEngine::new(repo.clone(), Arc::clone(cache), cfg(), Arc::new(NoProgress)).unwrap()
        };
        let (first, _) = engine_with(&cache).upload_files(vec![paths[2].clone()]).await.into_result().unwrap();
        for round in 0..2 {
            step(&format!("round {round}: four files stored in the order given, two failures in the order given"));
            let e = engine_with(&cache);
            if round == 1 {
                e.assume_present([first[0].sha256]);
            }
            let report = e.upload_files(paths.clone()).await;
            let stored: Vec<&Path> = report.files.iter().map(|f| f.path.as_path()).collect();
            assert_eq!(stored, vec![&*paths[0], &*paths[2], &*paths[3], &*paths[5]]);
            for f in &report.files {
                assert_eq!(f.sha256, sha256_file(&f.path).unwrap().0, "{}", f.path.display());
                assert_eq!(f.size, std::fs::metadata(&f.path).unwrap().len());
            }
            assert!(!report.files[1].uploaded, "b was stored before");
            let failed: Vec<&Path> = report.failures.iter().map(|f| f.path.as_path()).collect();
            assert_eq!(failed, vec![&*paths[1], &*paths[4]]);
            assert!(report.failures.iter().all(|f| f.error.to_string().contains("gone-")));
            assert_eq!(report.stats.files_total, 6);
        }

        step("items named by a shared directory and a file name come back as given, with their hashes");
        struct InDir {
            dir: Arc<PathBuf>,
            name: &'static str,
        }
        impl UploadSource for InDir {
            fn path(&self) -> Cow<'_, Path> {
                Cow::Owned(self.dir.join(self.name))
            }
        }
        let dir = Arc::new(work.path().to_owned());
        let items: Vec<InDir> = names.iter().map(|&name| InDir { dir: Arc::clone(&dir), name }).collect();
        let report = engine_with(&Arc::new(HashCache::in_memory())).upload_files(items).await;
        let stored: Vec<&str> = report.files.iter().map(|f| f.path.name).collect();
        assert_eq!(stored, vec!["a", "b", "c", "d"]);
        for f in &report.files {
            assert_eq!(f.sha256, sha256_file(&work.path().join(f.path.name)).unwrap().0, "{}", f.path.name);
        }
        let failed: Vec<&Path> = report.failures.iter().map(|f| f.path.as_path()).collect();
        assert_eq!(failed, vec![&*paths[1], &*paths[4]], "failures name the full path");
    });
}
