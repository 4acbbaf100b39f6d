//! Downloads: fetch a blob (ranged and in parallel when large), hash while writing to a
//! temporary file beside the destination, and rename it into place only if the SHA-256 matches.
//!
//! A failure or mismatch removes the temporary file, so the destination either does not exist or
//! holds verified content. A destination that already holds the right content is not fetched.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use cassette_common::hash::Hasher;
use cassette_common::ids::BlobHash;
use cassette_common::layout;
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{GetResultPayload, ObjectStoreExt};
use serde::Serialize;

use super::{FileFailure, TransferEngine};
use crate::storage::error::StoreError;
use crate::storage::progress::TransferStats;

/// A blob to place at a local path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadItem {
    /// The blob.
    pub hash: BlobHash,
    /// Its size (from the manifest).
    pub size: u64,
    /// Where it goes.
    pub dest: PathBuf,
}

/// One file handled by a download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DownloadedFile {
    /// The local path.
    pub dest: PathBuf,
    /// SHA-256 of its content, verified.
    pub sha256: BlobHash,
    /// Size in bytes.
    pub size: u64,
    /// True if fetched; false if the file was already there with the right content.
    pub downloaded: bool,
}

/// What a download did.
#[derive(Debug)]
pub struct DownloadReport {
    /// Files in place and verified.
    pub files: Vec<DownloadedFile>,
    /// Files that could not be placed.
    pub failures: Vec<FileFailure>,
    /// Counters.
    pub stats: TransferStats,
}

impl DownloadReport {
    /// The first failure, for callers that stop at any failure.
    pub fn into_result(self) -> Result<(Vec<DownloadedFile>, TransferStats), StoreError> {
        match self.failures.into_iter().next() {
            Some(f) => Err(f.error),
            None => Ok((self.files, self.stats)),
        }
    }
}

/// Bytes gathered before one blocking write+hash hop, for streams that arrive in small chunks.
const WRITE_BATCH: usize = 1 << 20;

impl TransferEngine {
    /// Places every item, `concurrency` at a time. A destination listed twice with different
    /// hashes is an error for both; listed twice with the same hash, once.
    pub async fn download_files(&self, items: Vec<DownloadItem>) -> DownloadReport {
        let mut failures = Vec::new();
        let mut by_dest: std::collections::BTreeMap<PathBuf, DownloadItem> = std::collections::BTreeMap::new();
        for item in items {
            match by_dest.get(&item.dest) {
                Some(prev) if prev.hash != item.hash => {
                    failures.push(FileFailure {
                        path: item.dest.clone(),
                        error: StoreError::local(
                            "download",
                            &item.dest,
                            std::io::Error::new(
                                std::io::ErrorKind::InvalidInput,
                                format!(
                                    "listed twice with different content ({} and {})",
                                    prev.hash.short(),
                                    item.hash.short()
                                ),
                            ),
                        ),
                    });
                }
                Some(_) => {}
                None => {
                    by_dest.insert(item.dest.clone(), item);
                }
            }
        }
        let conflicted: std::collections::BTreeSet<PathBuf> = failures.iter().map(|f| f.path.clone()).collect();
        let items: Vec<DownloadItem> = by_dest.into_values().filter(|i| !conflicted.contains(&i.dest)).collect();
        self.progress.add_total(items.len() as u64, items.iter().map(|i| i.size).sum());

        let results: Vec<(PathBuf, Result<DownloadedFile, StoreError>)> = futures::stream::iter(items)
            .map(|item| async move {
                let r = self.download_file(&item).await;
                (item.dest, r)
            })
            .buffer_unordered(self.cfg.concurrency)
            .collect()
            .await;
        if let Err(e) = self.cache.save() {
            tracing::warn!(error = %e, "could not save the hash cache");
        }
        let mut report = DownloadReport { files: Vec::new(), failures, stats: TransferStats::default() };
        for (dest, r) in results {
            match r {
                Ok(f) => report.files.push(f),
                Err(error) => report.failures.push(FileFailure { path: dest, error }),
            }
        }
        report.stats = self.stats();
        report
    }

    /// Places one blob at `item.dest`, verified (with retries).
    pub async fn download_file(&self, item: &DownloadItem) -> Result<DownloadedFile, StoreError> {
        let done =
            |downloaded| DownloadedFile { dest: item.dest.clone(), sha256: item.hash, size: item.size, downloaded };
        if self.already_in_place(item).await? {
            self.progress.file_finished(&item.dest, item.size, true);
            return Ok(done(false));
        }
        let what = format!("download blob {} to {}", item.hash.short(), item.dest.display());
        self.backoff.run(&what, |_| self.download_attempt(item)).await?;
        self.progress.file_finished(&item.dest, item.size, false);
        Ok(done(true))
    }

    /// True if the destination already holds exactly this content.
    async fn already_in_place(&self, item: &DownloadItem) -> Result<bool, StoreError> {
        let meta = match tokio::fs::metadata(&item.dest).await {
            Ok(m) if m.is_file() && m.len() == item.size => m,
            _ => return Ok(false),
        };
        let hash = match self.cache.lookup(&meta) {
            Some(h) => h,
            None => {
                let (h, _) = self.hash_file(&item.dest).await?;
                self.cache.insert(&meta, h);
                h
            }
        };
        Ok(hash == item.hash)
    }

    async fn download_attempt(&self, item: &DownloadItem) -> Result<(), StoreError> {
        let dest = &item.dest;
        let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        tokio::fs::create_dir_all(dir).await.map_err(|e| StoreError::local("create directory", dir, e))?;
        let tmp = temp_path_for(dest);
        let result = self.fetch_verified(item, &tmp).await;
        let result = match result {
            Ok(()) => self.commit(&tmp, dest, dir).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                if let Ok(meta) = std::fs::metadata(dest) {
                    self.cache.insert(&meta, item.hash);
                }
                Ok(())
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(e)
            }
        }
    }

    /// Fetches the blob into `tmp`, hashing on the way; fails unless size and hash match.
    async fn fetch_verified(&self, item: &DownloadItem, tmp: &Path) -> Result<(), StoreError> {
        let key = layout::blob_key(&item.hash);
        let path = ObjectPath::from(key.as_str());
        let loc = self.repo.loc().to_owned();
        let file = std::fs::File::create(tmp).map_err(|e| StoreError::local("create", tmp, e))?;
        let mut sink = HashingFile::new(file, tmp.to_owned());

        if item.size > self.cfg.multipart_threshold.0 {
            let part = self.cfg.part_size_for(item.size);
            let ranges: Vec<std::ops::Range<u64>> =
                (0..item.size.div_ceil(part)).map(|i| i * part..((i + 1) * part).min(item.size)).collect();
            let mut parts = futures::stream::iter(ranges)
                .map(|r| {
                    let (path, key, loc) = (&path, &key, &loc);
                    async move {
                        let len = r.end - r.start;
                        let permit = self.budget.reserve(len).await;
                        let what = format!("read bytes {}..{} of blob {key}", r.start, r.end);
                        let bytes = self
                            .backoff
                            .run(&what, |_| async {
                                self.repo
                                    .store()
                                    .get_range(path, r.clone())
                                    .await
                                    .map_err(|e| StoreError::remote("download", key.as_str(), loc, e))
                            })
                            .await?;
                        Ok::<_, StoreError>((bytes, permit))
                    }
                })
                .buffered(self.cfg.parts_per_file);
            while let Some(part) = parts.next().await {
                let (bytes, permit) = part?;
                let n = bytes.len() as u64;
                sink.write(bytes).await?;
                drop(permit);
                self.progress.transferred(n);
            }
        } else {
            let result = self
                .repo
                .store()
                .get(&path)
                .await
                .map_err(|e| StoreError::remote("download", key.as_str(), &loc, e))?;
            let mut stream = match result.payload {
                GetResultPayload::Stream(s) => s,
                other => {
                    let r = object_store::GetResult { payload: other, ..result };
                    r.into_stream()
                }
            };
            while let Some(chunk) = stream.next().await {
                let bytes = chunk.map_err(|e| StoreError::remote("download", key.as_str(), &loc, e))?;
                let n = bytes.len() as u64;
                sink.write(bytes).await?;
                self.progress.transferred(n);
                if sink.written > item.size {
                    break;
                }
            }
        }
        let (hash, written, file) = sink.finish().await?;
        if written != item.size {
            return Err(StoreError::SizeMismatch {
                what: format!("download blob {} to {}", item.hash.short(), item.dest.display()),
                expected: item.size,
                actual: written,
            });
        }
        if hash != item.hash {
            return Err(StoreError::HashMismatch { path: item.dest.clone(), expected: item.hash, actual: hash });
        }
        if self.cfg.fsync {
            tokio::task::spawn_blocking(move || file.sync_all())
                .await
                .map_err(|e| StoreError::local("fsync", tmp, std::io::Error::other(e)))?
                .map_err(|e| StoreError::local("fsync", tmp, e))?;
        }
        Ok(())
    }

    /// Renames the verified temporary file into place and makes the rename durable.
    async fn commit(&self, tmp: &Path, dest: &Path, dir: &Path) -> Result<(), StoreError> {
        tokio::fs::rename(tmp, dest).await.map_err(|e| StoreError::local("rename into place", dest, e))?;
        if self.cfg.fsync {
            let d = dir.to_owned();
            tokio::task::spawn_blocking(move || std::fs::File::open(&d).and_then(|f| f.sync_all()))
                .await
                .map_err(|e| StoreError::local("fsync", dir, std::io::Error::other(e)))?
                .map_err(|e| StoreError::local("fsync", dir, e))?;
        }
        Ok(())
    }
}

/// The temporary name beside `dest`: hidden, and ending in `.tmp` so Cassandra treats it as a
/// temporary file. Deterministic, so a rerun reuses (truncates) it instead of leaving litter.
pub fn temp_path_for(dest: &Path) -> PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dest.with_file_name(format!(".{name}.cassette.tmp"))
}

/// Writes and hashes on a blocking thread, batching small chunks.
struct HashingFile {
    file: Option<std::fs::File>,
    hasher: Option<Hasher>,
    pending: BytesMut,
    written: u64,
    path: PathBuf,
}

impl HashingFile {
    fn new(file: std::fs::File, path: PathBuf) -> Self {
        Self { file: Some(file), hasher: Some(Hasher::new()), pending: BytesMut::new(), written: 0, path }
    }

    async fn write(&mut self, bytes: Bytes) -> Result<(), StoreError> {
        self.written += bytes.len() as u64;
        if bytes.len() >= WRITE_BATCH && self.pending.is_empty() {
            return self.flush(bytes).await;
        }
        self.pending.extend_from_slice(&bytes);
        if self.pending.len() >= WRITE_BATCH {
            let batch = self.pending.split().freeze();
            self.flush(batch).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, bytes: Bytes) -> Result<(), StoreError> {
        let (Some(mut file), Some(mut hasher)) = (self.file.take(), self.hasher.take()) else {
            return Err(StoreError::local("write", &self.path, std::io::Error::other("writer already failed")));
        };
        let (file, hasher) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            hasher.update(&bytes);
            file.write_all(&bytes)?;
            Ok((file, hasher))
        })
        .await
        .map_err(|e| StoreError::local("write", &self.path, std::io::Error::other(e)))?
        .map_err(|e| StoreError::local("write", &self.path, e))?;
        self.file = Some(file);
        self.hasher = Some(hasher);
        Ok(())
    }

    async fn finish(mut self) -> Result<(BlobHash, u64, Arc<std::fs::File>), StoreError> {
        if !self.pending.is_empty() {
            let batch = self.pending.split().freeze();
            self.flush(batch).await?;
        }
        match (self.file.take(), self.hasher.take()) {
            (Some(f), Some(h)) => Ok((h.finish(), self.written, Arc::new(f))),
            _ => Err(StoreError::local("write", &self.path, std::io::Error::other("writer already failed"))),
        }
    }
}
