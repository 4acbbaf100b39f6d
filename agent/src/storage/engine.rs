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

use cassette_common::hash::sha256_reader_with;
use cassette_common::ids::BlobHash;
use serde::Serialize;

pub use download::{Dest, DownloadItem, DownloadReport, DownloadedFile, temp_path_for};
pub use upload::{ProbeReport, ProbedFile, UploadReport, UploadSource, UploadedFile};

use super::config::{self, TransferConfig};
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
    /// Every stored blob and its size, from one bounded listing taken when the first file of a
    /// large enough upload needs an existence check; `None` inside when the repository was too
    /// large for that to be cheaper than one request per file.
    listing: tokio::sync::OnceCell<Option<HashMap<BlobHash, u64>>>,
    /// Files in the current upload or probe, which sizes the listing.
    listing_files: std::sync::atomic::AtomicUsize,
    /// See [`TransferEngine::seeded`].
    seeded: std::sync::atomic::AtomicBool,
    /// One lock per blob being checked or uploaded, so that two files with the same content in
    /// one operation upload it once.
    blob_locks: Mutex<HashMap<BlobHash, Arc<tokio::sync::Mutex<()>>>>,
    /// Slots for files larger than [`config::SMALL_FILE`] (`concurrency`).
    large_slots: tokio::sync::Semaphore,
    /// Slots for small files (`small_file_concurrency`).
    small_slots: tokio::sync::Semaphore,
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
            backoff,
            progress,
            present: Mutex::default(),
            listing: tokio::sync::OnceCell::new(),
            listing_files: std::sync::atomic::AtomicUsize::new(0),
            seeded: std::sync::atomic::AtomicBool::new(false),
            blob_locks: Mutex::default(),
            large_slots: tokio::sync::Semaphore::new(cfg.concurrency),
            small_slots: tokio::sync::Semaphore::new(cfg.small_file_concurrency),
            cfg,
        })
    }

    /// Files handled at once, small and large together.
    fn in_flight(&self) -> usize {
        self.cfg.concurrency + self.cfg.small_file_concurrency
    }

    /// Waits for a transfer slot for a file of `size` bytes.
    async fn slot(&self, size: u64) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let slots = if size <= config::SMALL_FILE { &self.small_slots } else { &self.large_slots };
        slots.acquire().await.ok()
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

    /// Treats these blobs as stored without checking them again: the blobs of this node's
    /// previous backup that a listing of the bucket just showed stored
    /// ([`Repository::retain_stored`]), and removal does not run while a backup holds its lock.
    /// Do not seed from anything weaker: a manifest alone says what was stored once, not what
    /// the bucket holds now (a lifecycle rule or a person may have deleted blobs since).
    pub fn assume_present(&self, hashes: impl IntoIterator<Item = BlobHash>) {
        let mut present = self.present.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = present.len();
        present.extend(hashes);
        if present.len() > before {
            self.seeded.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Whether [`TransferEngine::assume_present`] seeded the known blobs (an incremental backup).
    /// The files left unknown are then new SSTables, nearly all of them new blobs: no listing of
    /// the repository (which holds every earlier backup, and costs the store a walk of all of
    /// it), and small files go straight to their create-only request, which also tells whether
    /// the blob was there.
    fn seeded(&self) -> bool {
        self.seeded.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What the listing says about a blob: `Some(Some(size))` stored, `Some(None)` not stored at
    /// listing time, `None` no listing (too few files, or too large a repository). The listing is
    /// taken at the first call, so an upload whose blobs are all known needs no request at all.
    async fn listed(&self, hash: &BlobHash) -> Option<Option<u64>> {
        let files = self.listing_files.load(std::sync::atomic::Ordering::Relaxed);
        let per_file = self.cfg.list_blobs_per_file;
        if per_file == 0 || files < LISTING_MIN_FILES || self.seeded() {
            return None;
        }
        let listing = self
            .listing
            .get_or_init(|| async {
                match self.repo.list_blobs_bounded(files.saturating_mul(per_file)).await {
                    Ok(Some(map)) => {
                        tracing::debug!(blobs = map.len(), files, "checking blobs against one listing");
                        self.progress.checked(map.len().div_ceil(1000).max(1) as u64);
                        Some(map)
                    }
                    Ok(None) => {
                        // The pages read before giving up count as checks too.
                        self.progress.checked(files.saturating_mul(per_file).div_ceil(1000) as u64);
                        tracing::debug!(files, "repository too large to list; checking blobs one by one");
                        None
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "listing blobs failed; checking blobs one by one");
                        None
                    }
                }
            })
            .await;
        listing.as_ref().map(|l| l.get(hash).copied())
    }

    /// Sizes the listing for an upload or probe of `files` files (see [`Self::listed`]).
    fn expect_files(&self, files: usize) {
        self.listing_files.fetch_max(files, std::sync::atomic::Ordering::Relaxed);
    }

    /// Hashes a file on a blocking thread, reporting progress as it reads.
    async fn hash_file(&self, path: &Path) -> Result<(BlobHash, u64), StoreError> {
        let path_buf = path.to_owned();
        let progress = Arc::clone(&self.progress);
        tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&path_buf)?;
            sha256_reader_with(file, |n| progress.hashed(n as u64))
        })
        .await
        .map_err(|e| StoreError::local("hash", path, std::io::Error::other(e)))?
        .map_err(|e| StoreError::local("hash", path, e))
    }
}

/// Uploads of fewer files check each blob on its own (see
/// [`TransferConfig::list_blobs_per_file`](crate::storage::TransferConfig::list_blobs_per_file)).
const LISTING_MIN_FILES: usize = 16;

/// Whether two stats of the same path show the same file content, by the hash cache's rules.
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev()
        && a.ino() == b.ino()
        && a.size() == b.size()
        && a.mtime() == b.mtime()
        && a.mtime_nsec() == b.mtime_nsec()
}
