//! The transfer engine: content-addressed, verified uploads and downloads between local files
//! and a [`Repository`].
//!
//! One engine serves one operation (a backup, a restore download): it remembers which blobs it
//! has confirmed stored, so duplicate files in the same operation cost nothing, and it must not
//! outlive the operation (a purge may remove blobs afterwards).
//!
//! Limits shared by everything the engine does: `concurrency` files at once, `parts_per_file`
//! parts or ranges per file, `memory_budget` bytes buffered, the repository's bandwidth limit.

mod download;
mod upload;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cassette_common::hash::{HASH_BUFFER, Hasher};
use cassette_common::ids::BlobHash;
use serde::Serialize;

pub use download::{DownloadItem, DownloadReport, DownloadedFile, temp_path_for};
pub use upload::{ProbeReport, ProbedFile, UploadReport, UploadedFile};

use super::config::TransferConfig;
use super::error::StoreError;
use super::limits::BufferPool;
use super::progress::{Progress, ProgressSink, TransferStats};
use super::repo::Repository;
use super::retry::BackoffPolicy;
use crate::hashcache::HashCache;

/// A file that could not be transferred, with the reason.
#[derive(Debug)]
pub struct FileFailure {
    /// The local path.
    pub path: PathBuf,
    /// Why.
    pub error: StoreError,
}

/// A failure as shown in `--output json`.
#[derive(Debug, Clone, Serialize)]
pub struct FailureSummary {
    /// The local path.
    pub path: PathBuf,
    /// The error message.
    pub error: String,
}

impl From<&FileFailure> for FailureSummary {
    fn from(f: &FileFailure) -> Self {
        Self { path: f.path.clone(), error: f.error.to_string() }
    }
}

/// Moves files between local disk and a repository, verifying every byte.
#[derive(Debug)]
pub struct TransferEngine {
    repo: Repository,
    cache: Arc<HashCache>,
    cfg: TransferConfig,
    buffers: BufferPool,
    backoff: BackoffPolicy,
    progress: Arc<Progress>,
    /// Blobs confirmed stored during this operation.
    present: Mutex<HashSet<BlobHash>>,
    /// One lock per blob being checked or uploaded, so that two files with the same content in
    /// one operation upload it once.
    blob_locks: Mutex<HashMap<BlobHash, Arc<tokio::sync::Mutex<()>>>>,
}

impl TransferEngine {
    /// An engine for one operation on `repo`.
    pub fn new(
        repo: Repository,
        cache: Arc<HashCache>,
        cfg: TransferConfig,
        sink: Arc<dyn ProgressSink>,
    ) -> Result<Self, StoreError> {
        cfg.validate().map_err(|problems| StoreError::Config {
            location: repo.location().to_string(),
            message: format!("invalid transfer settings: {}", problems.join("; ")),
        })?;
        let backoff = BackoffPolicy::from_config(&cfg);
        let progress = Arc::new(Progress::new(sink, Arc::clone(&backoff.retries)));
        Ok(Self {
            buffers: BufferPool::new(cfg.memory_budget.0),
            repo,
            cache,
            cfg,
            backoff,
            progress,
            present: Mutex::default(),
            blob_locks: Mutex::default(),
        })
    }

    /// The repository.
    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    /// The hash cache.
    pub fn hash_cache(&self) -> &Arc<HashCache> {
        &self.cache
    }

    /// Counters so far.
    pub fn stats(&self) -> TransferStats {
        self.progress.stats()
    }

    fn lock_blob(&self, hash: BlobHash) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.blob_locks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(locks.entry(hash).or_default())
    }

    fn release_blob(&self, hash: BlobHash, lock: Arc<tokio::sync::Mutex<()>>) {
        let mut locks = self.blob_locks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Ours and the map's: nobody else is waiting, so the entry can go.
        if Arc::strong_count(&lock) == 2 {
            locks.remove(&hash);
        }
    }

    fn is_present(&self, hash: &BlobHash) -> bool {
        self.present.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(hash)
    }

    fn mark_present(&self, hash: BlobHash) {
        self.present.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(hash);
    }

    /// Hashes a file on a blocking thread, reporting progress as it reads.
    async fn hash_file(&self, path: &Path) -> Result<(BlobHash, u64), StoreError> {
        let path_buf = path.to_owned();
        let progress = Arc::clone(&self.progress);
        tokio::task::spawn_blocking(move || -> std::io::Result<(BlobHash, u64)> {
            use std::io::Read;
            let mut f = std::fs::File::open(&path_buf)?;
            let mut hasher = Hasher::new();
            let mut buf = vec![0u8; HASH_BUFFER];
            let mut total = 0u64;
            loop {
                let n = match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                hasher.update(&buf[..n]);
                total += n as u64;
                progress.hashed(n as u64);
            }
            Ok((hasher.finish(), total))
        })
        .await
        .map_err(|e| StoreError::local("hash", path, std::io::Error::other(e)))?
        .map_err(|e| StoreError::local("hash", path, e))
    }
}

/// Whether two stats of the same path show the same file content, by the hash cache's rules.
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev()
        && a.ino() == b.ino()
        && a.size() == b.size()
        && a.mtime() == b.mtime()
        && a.mtime_nsec() == b.mtime_nsec()
}
