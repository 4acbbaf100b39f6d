//! The storage conformance scenario: the same repository and transfer behaviour checked against
//! any backend (tests run it on a directory, s3s-fs, moto and Azurite, and on real GCS when
//! credentials are given).
//!
//! What it proves, per backend:
//! - the layout marker is created once and a newer layout is refused;
//! - uploads send each distinct content once (empty, tiny, boundary-sized, multipart, duplicate files);
//! - a second upload of unchanged files reads no data and sends nothing; another "node" with the
//!   same files sends nothing either;
//! - downloads are verified, skip files already in place, replace wrong local copies, and leave no
//!   temporary files; a missing blob fails without leaving a file;
//! - documents are create-only and round-trip; listings by prefix and by time offset work;
//! - two engines uploading the same new blobs at once both succeed with one correct blob.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed check is a failed test: panicking is the point

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::data::random_file;
use cassette_agent::hashcache::HashCache;
use cassette_agent::storage::engine::{DownloadItem, UploadedFile};
use cassette_agent::storage::repo::Written;
use cassette_agent::storage::{NoProgress, Repository, TransferConfig, TransferEngine};
use cassette_common::hash::sha256_file;
use cassette_common::ids::{BackupId, HostId};
use cassette_common::layout::{self, LayoutMarker};
use cassette_common::manifest::{
    COMMITLOG_ENTRY_FORMAT, CommitLogEntry, FileEntry, NODE_MANIFEST_FORMAT, NodeInfo, NodeManifest,
};
use cassette_common::units::ByteSize;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;

const MIB: u64 = 1 << 20;

/// Transfer settings small enough that a few MiB exercise multipart uploads and ranged reads.
pub fn transfer_config() -> TransferConfig {
    TransferConfig {
        concurrency: 4,
        multipart_threshold: ByteSize(5 * MIB),
        part_size: ByteSize(5 * MIB),
        parts_per_file: 3,
        memory_budget: ByteSize(32 * MIB),
        max_attempts: 4,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        ..TransferConfig::default()
    }
}

fn engine(repo: &Repository, cache: &Arc<HashCache>) -> TransferEngine {
    TransferEngine::new(repo.clone(), Arc::clone(cache), transfer_config(), Arc::new(NoProgress)).unwrap()
}

fn step(backend: &str, s: &str) {
    eprintln!("--- [{backend}] {s}");
}

fn by_name(files: &[UploadedFile], name: &str) -> UploadedFile {
    files.iter().find(|f| f.path.file_name().unwrap() == name).cloned().unwrap()
}

fn no_temp_files(dir: &Path) {
    for e in walk(dir) {
        let name = e.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!name.ends_with(".tmp"), "temporary file left behind: {}", e.display());
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

/// Runs the scenario. `repo_at(prefix)` gives a repository client for a fresh prefix; `backend`
/// names the backend in the log. Panics (failing the test) on any deviation.
pub async fn run_suite(backend: &str, repo_at: &dyn Fn(&str) -> Repository) {
    let b = backend;
    let work = tempfile::tempdir().unwrap();
    let repo = repo_at("conformance");

    step(b, "init creates the marker once");
    let marker = repo.init().await.unwrap();
    assert_eq!(marker.layout_version, layout::LAYOUT_VERSION);
    assert_eq!(repo.init().await.unwrap(), marker);
    assert_eq!(repo.open_existing().await.unwrap(), marker);

    step(b, "the first upload sends each distinct content once");
    let src = work.path().join("node1");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.empty"), b"").unwrap();
    std::fs::write(src.join("b.one"), b"x").unwrap();
    random_file(&src.join("c.small"), 100 << 10, 1).unwrap();
    random_file(&src.join("d.boundary"), 5 * MIB, 2).unwrap();
    random_file(&src.join("e.large"), 12 * MIB + 123, 3).unwrap();
    std::fs::copy(src.join("c.small"), src.join("f.dup")).unwrap();
    let names = ["a.empty", "b.one", "c.small", "d.boundary", "e.large", "f.dup"];
    let paths: Vec<PathBuf> = names.iter().map(|n| src.join(n)).collect();
    let total: u64 = paths.iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    let distinct = total - (100 << 10);

    let cache = Arc::new(HashCache::in_memory());
    let report = engine(&repo, &cache).upload_files(paths.clone()).await;
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
    let files = report.files;
    assert_eq!(files.len(), 6);
    assert_eq!(files.iter().filter(|f| f.uploaded).count(), 5, "the duplicate is sent once");
    assert_eq!(by_name(&files, "c.small").sha256, by_name(&files, "f.dup").sha256);
    assert_eq!(report.stats.bytes_transferred, distinct);
    assert_eq!(report.stats.files_total, 6);
    for f in &files {
        assert_eq!(f.sha256, sha256_file(&f.path).unwrap().0, "{}", f.path.display());
        assert_eq!(repo.blob_size(&f.sha256).await.unwrap(), Some(f.size), "{}", f.path.display());
    }

    step(b, "a second upload of unchanged files reads and sends nothing");
    let report = engine(&repo, &cache).upload_files(paths.clone()).await;
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
    assert!(report.files.iter().all(|f| !f.uploaded));
    assert_eq!(report.stats.bytes_hashed, 0, "every hash came from the cache");
    assert_eq!(report.stats.bytes_transferred, 0);
    assert_eq!(report.stats.files_skipped, 6);

    step(b, "another node with the same content sends nothing");
    let src2 = work.path().join("node2");
    std::fs::create_dir_all(&src2).unwrap();
    let paths2: Vec<PathBuf> = names
        .iter()
        .map(|n| {
            std::fs::copy(src.join(n), src2.join(n)).unwrap();
            src2.join(n)
        })
        .collect();
    let other_cache = Arc::new(HashCache::in_memory());
    let report = engine(&repo, &other_cache).upload_files(paths2).await;
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
    assert_eq!(report.stats.bytes_transferred, 0);
    assert_eq!(report.stats.bytes_hashed, total, "a new node hashes its files once");

    step(b, "download everything, verified");
    let out = work.path().join("restore");
    let items: Vec<DownloadItem<'_>> = files
        .iter()
        .map(|f| DownloadItem::new(f.sha256, f.size, out.join("ks/t").join(f.path.file_name().unwrap())))
        .collect();
    let dl_cache = Arc::new(HashCache::in_memory());
    let report = engine(&repo, &dl_cache).download_files(items.clone()).await;
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
    assert!(report.files.iter().all(|f| f.downloaded));
    assert_eq!(report.stats.bytes_transferred, total);
    for f in &files {
        let dest = out.join("ks/t").join(f.path.file_name().unwrap());
        assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&f.path).unwrap(), "{}", dest.display());
    }
    no_temp_files(&out);

    step(b, "downloading again fetches nothing; a wrong local copy is replaced");
    let report = engine(&repo, &dl_cache).download_files(items.clone()).await;
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
    assert!(report.files.iter().all(|f| !f.downloaded));
    assert_eq!(report.stats.bytes_transferred, 0);
    let wrong = out.join("ks/t/c.small");
    std::fs::write(&wrong, vec![0u8; 100 << 10]).unwrap();
    let report = engine(&repo, &dl_cache).download_files(items.clone()).await;
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
    assert_eq!(report.files.iter().filter(|f| f.downloaded).count(), 1);
    assert_eq!(std::fs::read(&wrong).unwrap(), std::fs::read(src.join("c.small")).unwrap());

    step(b, "a missing blob fails with not-found and leaves no file");
    let missing = DownloadItem::new(cassette_common::hash::sha256(b"never uploaded"), 14, out.join("ks/t/missing.db"));
    let e = engine(&repo, &dl_cache).download_file(&missing).await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert!(!missing.dest().exists());
    no_temp_files(&out);

    step(b, "documents are create-only and round-trip");
    let backup: BackupId = "20261123T214100Z-3fa9c2d1".parse().unwrap();
    let host: HostId = "1b1c2ce9-e5ab-4b1e-a2cf-0f5cd9f8b1c3".parse().unwrap();
    let now = chrono::Utc::now();
    let manifest = NodeManifest {
        format: NODE_MANIFEST_FORMAT,
        backup_id: backup.clone(),
        tag: None,
        snapshot_tag: "t".into(),
        node: NodeInfo {
            host_id: host.clone(),
            cluster: "Test Cluster".into(),
            datacenter: "dc1".into(),
            rack: "r1".into(),
            tokens: vec!["0".into()],
            cassandra_version: "4.1.7".into(),
            schema_version: None,
            address: None,
            data_dirs: vec!["/var/lib/cassandra/data".into()],
        },
        started_at: now,
        snapshot_at: now,
        finished_at: now,
        tables: vec![],
        // SSTable component names: a manifest names nothing else (validate() checks the shape).
        files: files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                FileEntry::new(
                    format!("ks/t-0123456789abcdef0123456789abcdef/nb-{}-big-Data.db", i + 1),
                    0,
                    f.size,
                    f.sha256,
                )
            })
            .collect(),
    };
    let key = layout::node_manifest_key("Test Cluster", &backup, &host);
    assert_eq!(repo.put_json_create(&key, &manifest).await.unwrap(), Written::Created);
    assert_eq!(repo.put_json_create(&key, &manifest).await.unwrap(), Written::AlreadyPresent);
    let mut changed = manifest.clone();
    changed.tag = Some("other".into());
    assert!(repo.put_json_create(&key, &changed).await.unwrap_err().to_string().contains("refusing to overwrite"));
    let back: NodeManifest = repo.get_json(&key, 16 * MIB).await.unwrap();
    assert_eq!(back, manifest);
    back.validate(1_000_000).unwrap();

    step(b, "listings by prefix and by time offset");
    let dirs = repo.list_dirs(&layout::backups_prefix("Test Cluster")).await.unwrap();
    assert_eq!(dirs, vec![backup.to_string()]);
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z").unwrap().to_utc();
    for (i, minutes) in [0i64, 10, 20].iter().enumerate() {
        let closed = t0 + chrono::Duration::minutes(*minutes);
        let segment = format!("CommitLog-7-{}.log", 1_700_000_000_000u64 + i as u64);
        let entry = CommitLogEntry {
            format: COMMITLOG_ENTRY_FORMAT,
            segment: segment.clone(),
            version: 7,
            segment_id: 1_700_000_000_000 + i as u64,
            host_id: host.clone(),
            size: 1,
            sha256: files[1].sha256,
            closed_at: closed,
            archived_at: closed,
        };
        repo.put_json_create(&layout::commitlog_entry_key("Test Cluster", &host, closed, &segment), &entry)
            .await
            .unwrap();
    }
    let prefix = layout::commitlog_prefix("Test Cluster", &host);
    let from = format!("{prefix}/{}", layout::index_time(t0 + chrono::Duration::minutes(5)));
    let window = repo.list_after(&prefix, &from).await.unwrap();
    let got: Vec<String> = window.iter().map(|m| m.location.filename().unwrap().to_owned()).collect();
    assert_eq!(
        got,
        vec![
            "20261123T101000.000Z_CommitLog-7-1700000000001.log.json",
            "20261123T102000.000Z_CommitLog-7-1700000000002.log.json"
        ]
    );
    assert_eq!(repo.list(&prefix).await.unwrap().len(), 3);

    step(b, "two engines uploading the same new blobs at once store one correct copy");
    let race = work.path().join("race");
    std::fs::create_dir_all(&race).unwrap();
    random_file(&race.join("g.small"), 3 * MIB, 7).unwrap();
    random_file(&race.join("h.large"), 11 * MIB, 8).unwrap();
    let race_paths = vec![race.join("g.small"), race.join("h.large")];
    let (c1, c2) = (Arc::new(HashCache::in_memory()), Arc::new(HashCache::in_memory()));
    let (e1, e2) = (engine(&repo, &c1), engine(&repo, &c2));
    let (r1, r2) = tokio::join!(e1.upload_files(race_paths.clone()), e2.upload_files(race_paths.clone()));
    assert!(r1.failures.is_empty() && r2.failures.is_empty(), "{:#?} {:#?}", r1.failures, r2.failures);
    let race_out = work.path().join("race-out");
    let items: Vec<DownloadItem<'_>> = r1
        .files
        .iter()
        .map(|f| DownloadItem::new(f.sha256, f.size, race_out.join(f.path.file_name().unwrap())))
        .collect();
    let report = engine(&repo, &c1).download_files(items).await;
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
    for p in &race_paths {
        assert_eq!(std::fs::read(race_out.join(p.file_name().unwrap())).unwrap(), std::fs::read(p).unwrap());
    }

    step(b, "many files are checked against one listing, and a large repository falls back to one check per file");
    let many = work.path().join("many");
    // 64 files: the repository then holds more than 64 blobs, more than 4 per file of the
    // 16-file upload at the end of this step.
    let many_paths: Vec<PathBuf> = (0..64)
        .map(|i| {
            let p = many.join(format!("m{i:02}"));
            random_file(&p, 1000 + i, 200 + i).unwrap();
            p
        })
        .collect();
    let many_cache = Arc::new(HashCache::in_memory());
    let first = engine(&repo, &many_cache).upload_files(many_paths.clone()).await;
    assert!(first.failures.is_empty(), "{:#?}", first.failures);
    assert_eq!(first.stats.files_transferred, 64);
    assert_eq!(first.stats.remote_checks, 1, "one listing page instead of 64 existence checks");
    let second = engine(&repo, &many_cache).upload_files(many_paths.clone()).await;
    assert_eq!((second.stats.files_skipped, second.stats.bytes_transferred), (64, 0));
    assert_eq!(second.stats.remote_checks, 1);
    // Listing stops early for the 16-file upload and every file is checked on its own.
    let few: Vec<PathBuf> = many_paths[..16].to_vec();
    let third = engine(&repo, &Arc::new(HashCache::in_memory())).upload_files(few).await;
    assert!(third.failures.is_empty(), "{:#?}", third.failures);
    assert_eq!(third.stats.files_skipped, 16);
    assert_eq!(third.stats.remote_checks, 1 + 16, "an abandoned listing page, then one check per file");

    step(b, "many large files under a memory budget smaller than the work in flight complete");
    let tight =
        TransferConfig { memory_budget: ByteSize(12 * MIB), concurrency: 4, parts_per_file: 3, ..transfer_config() };
    let big = work.path().join("big");
    let big_paths: Vec<PathBuf> = (0..4)
        .map(|i| {
            let p = big.join(format!("big{i}"));
            random_file(&p, 16 * MIB + i * 1000, 90 + i).unwrap();
            p
        })
        .collect();
    let tight_engine =
        TransferEngine::new(repo.clone(), Arc::new(HashCache::in_memory()), tight.clone(), Arc::new(NoProgress))
            .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(120), tight_engine.upload_files(big_paths.clone()))
        .await
        .expect("uploads under a tight memory budget must not stall");
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
    let items: Vec<DownloadItem<'_>> = report
        .files
        .iter()
        .map(|f| DownloadItem::new(f.sha256, f.size, work.path().join("big-out").join(f.path.file_name().unwrap())))
        .collect();
    let report = tokio::time::timeout(Duration::from_secs(120), tight_engine.download_files(items))
        .await
        .expect("downloads under a tight memory budget must not stall");
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
    for p in &big_paths {
        assert_eq!(
            sha256_file(&work.path().join("big-out").join(p.file_name().unwrap())).unwrap(),
            sha256_file(p).unwrap()
        );
    }

    step(b, "a repository with a newer layout is refused");
    let newer_repo = repo_at("newer-layout");
    let newer = LayoutMarker { layout_version: layout::LAYOUT_VERSION + 1, ..LayoutMarker::new("future cassette") };
    newer_repo
        .store()
        .put(&ObjectPath::from(layout::MARKER_KEY), serde_json::to_vec(&newer).unwrap().into())
        .await
        .unwrap();
    let e = newer_repo.init().await.unwrap_err().to_string();
    assert!(e.contains("layout version 2") && e.contains("upgrade Cassette"), "{e}");
    let e = engine(&newer_repo, &cache).repository().open_existing().await.unwrap_err().to_string();
    assert!(e.contains("upgrade"), "{e}");
}
