//! Downloads: fetch a blob (ranged and in parallel when large), hash while writing to a
//! temporary file beside the destination, and rename it into place only if the SHA-256 matches.
//!
//! A failure or mismatch removes the temporary file, so the destination either does not exist or
//! holds verified content. A destination that already holds the right content is not fetched.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};

use crate::storage::limits::{BufferPool, Lease};
use cassette_common::hash::Hasher;
use cassette_common::ids::BlobHash;
use cassette_common::layout;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetResultPayload, ObjectStoreExt};
use serde::Serialize;

use super::{FileFailure, TransferEngine};
use crate::storage::error::StoreError;
use crate::storage::progress::TransferStats;

/// A blob to place at a local path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadItem<'a> {
    /// The blob.
    pub hash: BlobHash,
    /// Its size (from the manifest).
    pub size: u64,
    /// Where it goes.
    pub dest: Dest<'a>,
}

/// Where a download goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest<'a> {
    /// A full path.
    Path(PathBuf),
    /// `root` joined with the relative `rel`, both borrowed from what the caller keeps anyway (a
    /// restore plan's staging directories and manifest paths): the download list of a node with
    /// tens of thousands of files then holds no path of its own, and each path is put together
    /// only while its file is in flight.
    Under(&'a Path, &'a Path),
}

impl DownloadItem<'static> {
    /// `hash` (of `size` bytes) to the full path `dest`.
    pub fn new(hash: BlobHash, size: u64, dest: impl Into<PathBuf>) -> Self {
        Self { hash, size, dest: Dest::Path(dest.into()) }
    }
}

impl<'a> DownloadItem<'a> {
    /// `hash` (of `size` bytes) to `root/rel`.
    pub fn under(hash: BlobHash, size: u64, root: &'a Path, rel: &'a Path) -> Self {
        Self { hash, size, dest: Dest::Under(root, rel) }
    }

    /// The destination as (root, path under it); a full path is under the root "".
    fn parts(&self) -> (&Path, &Path) {
        match &self.dest {
            Dest::Path(p) => (Path::new(""), p),
            Dest::Under(root, rel) => (root, rel),
        }
    }

    /// The full destination path.
    pub fn dest(&self) -> std::borrow::Cow<'_, Path> {
        match &self.dest {
            Dest::Path(p) => std::borrow::Cow::Borrowed(p),
            Dest::Under(root, rel) => std::borrow::Cow::Owned(root.join(rel)),
        }
    }

    /// The item with its path put together, for the engine.
    fn into_target(self) -> Target {
        let dest = match self.dest {
            Dest::Path(p) => p,
            Dest::Under(root, rel) => root.join(rel),
        };
        Target { hash: self.hash, size: self.size, dest }
    }
}

/// An item being placed: its full path exists only while the file is in flight.
struct Target {
    hash: BlobHash,
    size: u64,
    dest: PathBuf,
}

/// The items of a list, each with its path put together as it is taken.
// A named iterator rather than `map(DownloadItem::into_target)`: the function item's lifetime
// makes the download future fail rustc's `Send` check (rust-lang/rust#102211).
struct Targets<'a>(std::vec::IntoIter<DownloadItem<'a>>);

impl Iterator for Targets<'_> {
    type Item = Target;

    fn next(&mut self) -> Option<Target> {
        self.0.next().map(|i| i.into_target())
    }
}

/// Sorts `items` so that items with the same destination are side by side (and, among those, by
/// content). When no root lies inside another, two items go to the same path exactly when their
/// [`parts`](DownloadItem::parts) are equal, and the list sorts by them without putting any path
/// together (a list of full paths is one with the single root ""); otherwise it sorts by full paths.
fn sort_by_destination(items: &mut [DownloadItem<'_>]) {
    let mut roots: Vec<&Path> = Vec::new();
    let by_parts = items.iter().all(|item| {
        let (root, rel) = item.parts();
        if !roots.contains(&root) {
            roots.push(root);
        }
        (root.as_os_str().is_empty() || rel.is_relative()) && roots.len() <= 64
    }) && !roots
        .iter()
        .enumerate()
        .any(|(i, a)| roots[i + 1..].iter().any(|b| a.starts_with(b) || b.starts_with(a)));
    if by_parts {
        items.sort_unstable_by(|a, b| (a.parts(), a.hash).cmp(&(b.parts(), b.hash)));
    } else {
        items.sort_by_cached_key(|i| (i.dest().into_owned(), i.hash));
    }
}

/// Sorts `items` by destination (then content) and keeps one item per destination, in place (no
/// second list, no copy of any path). A destination listed with several contents is not kept and
/// fails once per content.
fn deduplicate(items: &mut Vec<DownloadItem<'_>>) -> Vec<FileFailure> {
    let mut failures = Vec::new();
    sort_by_destination(items);
    let mut kept = 0;
    let mut i = 0;
    while i < items.len() {
        let mut j = i + 1;
        while j < items.len() && same_destination(&items[j], &items[i]) {
            j += 1;
        }
        let group = &items[i..j];
        if group.iter().all(|x| x.hash == group[0].hash) {
            items.swap(kept, i);
            kept += 1;
        } else {
            let mut hashes: Vec<BlobHash> = group.iter().map(|x| x.hash).collect();
            hashes.dedup();
            let listed = hashes.iter().map(BlobHash::short).collect::<Vec<_>>().join(", ");
            let dest = group[0].dest().into_owned();
            for h in &hashes {
                failures.push(FileFailure {
                    error: StoreError::local(
                        "download",
                        &dest,
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidInput,
                            format!("listed twice with different content ({listed}); this one is {}", h.short()),
                        ),
                    ),
                    path: dest.clone(),
                });
            }
        }
        i = j;
    }
    items.truncate(kept);
    failures
}

/// Whether two items go to the same path.
fn same_destination(a: &DownloadItem<'_>, b: &DownloadItem<'_>) -> bool {
    let ((ra, xa), (rb, xb)) = (a.parts(), b.parts());
    if ra == rb && xa.is_relative() == xb.is_relative() { xa == xb } else { a.dest() == b.dest() }
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

/// Flushes every file system holding one of `dirs` (one `syncfs` each, found by device id).
async fn flush_file_systems(dirs: std::collections::BTreeSet<PathBuf>) -> Result<(), (PathBuf, std::io::Error)> {
    if dirs.is_empty() {
        return Ok(());
    }
    tokio::task::spawn_blocking(move || {
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::fs::MetadataExt;
            let mut devices = std::collections::BTreeMap::new();
            for d in dirs {
                let dev = std::fs::metadata(&d).map_err(|e| (d.clone(), e))?.dev();
                devices.entry(dev).or_insert(d);
            }
            for dir in devices.into_values() {
                let f = std::fs::File::open(&dir).map_err(|e| (dir.clone(), e))?;
                nix::unistd::syncfs(&f).map_err(|e| (dir.clone(), std::io::Error::from(e)))?;
            }
        }
        #[cfg(not(target_os = "linux"))]
        drop(dirs);
        Ok(())
    })
    .await
    .map_err(|e| (PathBuf::from("."), std::io::Error::other(e)))?
}

/// Bytes gathered before one blocking write+hash hop, for streams that arrive in small chunks.
const WRITE_BATCH: usize = 1 << 20;

impl TransferEngine {
    /// Places every item, `concurrency` at a time. A destination listed twice with different
    /// hashes is not placed and fails once per hash; listed twice with the same hash, it is
    /// placed once.
    pub async fn download_files(&self, items: Vec<DownloadItem<'_>>) -> DownloadReport {
        self.download(items, true).await
    }

    /// [`download_files`](Self::download_files) for callers that need only the failures and
    /// the counters: `files` stays empty, and each item's path is freed as soon as it is placed
    /// (a restore of a large node holds tens of megabytes of paths otherwise).
    pub async fn download_files_counted(&self, items: Vec<DownloadItem<'_>>) -> DownloadReport {
        self.download(items, false).await
    }

    async fn download(&self, items: Vec<DownloadItem<'_>>, keep_files: bool) -> DownloadReport {
        let mut items = items;
        let mut failures = deduplicate(&mut items);
        self.progress.add_total(items.len() as u64, items.iter().map(|i| i.size).sum());

        // Two stages: fetching (holds a download slot) and committing (rename into place, on
        // the blocking pool). A finished fetch frees its slot at once.
        //
        // Durability is batched: one `syncfs` per file system at the end instead of an fsync of
        // every file and directory (two journal commits per file made a restore of 80,000 small
        // files take minutes on its fsyncs alone). Nothing is reported done before that flush,
        // and the hash cache, which lets a rerun skip files already in place, is saved only
        // after it: after a crash a rerun hashes what it finds and fetches again what is wrong.
        let batched = self.cfg.fsync && cfg!(target_os = "linux");
        let written = std::sync::Mutex::new(std::collections::BTreeSet::new());
        // Sized for every file: no doubling slack on a large node.
        let mut files = Vec::with_capacity(if keep_files { items.len() } else { 0 });
        // Each path is put together as its file is taken up (the iterator is lazy).
        let mut done = futures::stream::iter(Targets(items.into_iter()))
            .map(|item| async move {
                let _slot = self.slot(item.size).await;
                let r = self.fetch(&item).await;
                (item, r)
            })
            .buffer_unordered(self.in_flight())
            .map(|(item, fetched)| {
                let written = &written;
                async move {
                    let r = match fetched {
                        Ok(f) => self.finish(&item, f, !batched).await,
                        Err(e) => Err(e),
                    };
                    if batched
                        && r.as_ref().is_ok_and(|downloaded| *downloaded)
                        && let Some(dir) = item.dest.parent()
                    {
                        let mut written = written.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        if !written.contains(dir) {
                            written.insert(dir.to_owned());
                        }
                    }
                    match r {
                        Ok(downloaded) => {
                            Ok(DownloadedFile { sha256: item.hash, size: item.size, downloaded, dest: item.dest })
                        }
                        Err(error) => Err(Box::new(FileFailure { path: item.dest, error })),
                    }
                }
            })
            .buffer_unordered(self.cfg.fsync_concurrency);
        while let Some(r) = done.next().await {
            match r {
                Ok(f) if keep_files => files.push(f),
                Ok(_) => {}
                Err(f) => failures.push(*f),
            }
        }
        drop(done);
        let written = written.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err((dir, e)) = flush_file_systems(written).await {
            // Nothing written may be trusted: every downloaded file fails with the flush.
            failures
                .push(FileFailure { path: dir.clone(), error: StoreError::local("flush to disk (syncfs)", &dir, e) });
            return DownloadReport { files: Vec::new(), failures, stats: self.stats() };
        }
        if let Err(e) = self.cache.save() {
            tracing::warn!(error = %e, "could not save the hash cache");
        }
        DownloadReport { files, failures, stats: self.stats() }
    }

    /// Places one blob at its destination, verified (with retries).
    pub async fn download_file(&self, item: &DownloadItem<'_>) -> Result<DownloadedFile, StoreError> {
        let item = &item.clone().into_target();
        let fetched = self.fetch(item).await?;
        let downloaded = self.finish(item, fetched, true).await?;
        Ok(DownloadedFile { dest: item.dest.clone(), sha256: item.hash, size: item.size, downloaded })
    }

    /// Fetches into a verified temporary file, unless the destination already has the content.
    async fn fetch(&self, item: &Target) -> Result<Fetched, StoreError> {
        if self.already_in_place(item).await? {
            return Ok(Fetched::InPlace);
        }
        let what = format!("download blob {} to {}", item.hash.short(), item.dest.display());
        self.backoff.run(&what, |_| self.fetch_attempt(item)).await.map(Fetched::Verified)
    }

    /// Puts a fetched file under its name (durably, when `sync` and fsync is on); returns whether
    /// it was fetched (false: it was already in place).
    async fn finish(&self, item: &Target, fetched: Fetched, sync: bool) -> Result<bool, StoreError> {
        let downloaded = match fetched {
            Fetched::InPlace => false,
            Fetched::Verified(tmp) => {
                self.commit(&tmp, &item.dest, sync && self.cfg.fsync).await?;
                if let Ok(meta) = std::fs::metadata(&item.dest) {
                    self.cache.insert(&meta, item.hash);
                }
                true
            }
        };
        self.progress.file_finished(&item.dest, item.size, !downloaded);
        Ok(downloaded)
    }

    /// True if the destination already holds exactly this content.
    async fn already_in_place(&self, item: &Target) -> Result<bool, StoreError> {
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

    /// One attempt: the blob into the temporary file beside the destination, verified. The
    /// temporary file is removed on failure.
    async fn fetch_attempt(&self, item: &Target) -> Result<PathBuf, StoreError> {
        let dest = &item.dest;
        let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        tokio::fs::create_dir_all(dir).await.map_err(|e| StoreError::local("create directory", dir, e))?;
        let tmp = temp_path_for(dest);
        match self.fetch_verified(item, &tmp).await {
            Ok(()) => Ok(tmp),
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(e)
            }
        }
    }

    /// Fetches the blob into `tmp`, hashing on the way; fails unless size and hash match.
    async fn fetch_verified(&self, item: &Target, tmp: &Path) -> Result<(), StoreError> {
        let key = layout::blob_key(&item.hash);
        let path = ObjectPath::from(key.as_str());
        let loc = self.repo.loc().to_owned();
        let file = std::fs::File::create(tmp).map_err(|e| StoreError::local("create", tmp, e))?;
        let mut sink = HashingFile::new(file, tmp.to_owned(), self.buffers.clone(), item.size);

        if item.size > self.cfg.multipart_threshold.0 {
            let part = self.cfg.part_size_for(item.size);
            let ranges: Vec<std::ops::Range<u64>> =
                (0..item.size.div_ceil(part)).map(|i| i * part..((i + 1) * part).min(item.size)).collect();
            // Buffers are leased strictly in range order, and while this file waits for one it
            // keeps writing out the ranges that arrived. Otherwise later ranges could hold the
            // whole budget while the range the writer needs next waits for a buffer forever.
            let mut ranges = ranges.into_iter();
            let mut next = ranges.next();
            let mut inflight = FuturesOrdered::new();
            loop {
                let done = match next.clone() {
                    Some(r) if inflight.len() < self.cfg.parts_per_file => {
                        let len = usize::try_from(r.end - r.start).unwrap_or(usize::MAX);
                        if inflight.is_empty() {
                            let lease = self.buffers.lease(len).await;
                            inflight.push_back(self.fetch_range(&path, r, lease, &key, &loc));
                            next = ranges.next();
                            continue;
                        }
                        tokio::select! {
                            lease = self.buffers.lease(len) => {
                                inflight.push_back(self.fetch_range(&path, r, lease, &key, &loc));
                                next = ranges.next();
                                continue;
                            }
                            done = inflight.next() => done,
                        }
                    }
                    _ => inflight.next().await,
                };
                let Some(done) = done else { break };
                let bytes = done?;
                let n = bytes.len() as u64;
                sink.write(bytes).await?;
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
        let (hash, written) = sink.finish().await?;
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
        Ok(())
    }

    /// Reads one byte range of a blob into the leased buffer (with retries) and freezes it.
    async fn fetch_range(
        &self,
        path: &ObjectPath,
        range: std::ops::Range<u64>,
        mut lease: Lease,
        key: &str,
        loc: &str,
    ) -> Result<Bytes, StoreError> {
        let what = format!("read bytes {}..{} of blob {key}", range.start, range.end);
        // Each attempt owns the buffer; a failed attempt's buffer is dropped and the next one
        // starts from an empty buffer.
        let buf = self
            .backoff
            .run(&what, |_| {
                let (buf, r) = (lease.take(), range.clone());
                async move { self.read_range(path, r, buf, key, loc).await }
            })
            .await?;
        lease.restore(buf);
        Ok(lease.freeze())
    }

    /// Reads one byte range of a blob into `buf` (replacing what it held).
    async fn read_range(
        &self,
        path: &ObjectPath,
        range: std::ops::Range<u64>,
        mut buf: BytesMut,
        key: &str,
        loc: &str,
    ) -> Result<BytesMut, StoreError> {
        buf.clear();
        let opts = GetOptions { range: Some(range.clone().into()), ..GetOptions::default() };
        let result =
            self.repo.store().get_opts(path, opts).await.map_err(|e| StoreError::remote("download", key, loc, e))?;
        let mut stream = result.into_stream();
        while let Some(chunk) = stream.next().await {
            buf.extend_from_slice(&chunk.map_err(|e| StoreError::remote("download", key, loc, e))?);
        }
        let want = range.end - range.start;
        if buf.len() as u64 != want {
            return Err(StoreError::SizeMismatch {
                what: format!("read bytes {}..{} of {key} in {loc}", range.start, range.end),
                expected: want,
                actual: buf.len() as u64,
            });
        }
        Ok(buf)
    }

    /// Flushes the verified temporary file, renames it into place and makes the rename durable.
    /// On failure the temporary file is removed.
    async fn commit(&self, tmp: &Path, dest: &Path, fsync: bool) -> Result<(), StoreError> {
        let (tmp, dest) = (tmp.to_owned(), dest.to_owned());
        let dest_for_err = dest.clone();
        tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            let result = (|| {
                if fsync {
                    std::fs::File::open(&tmp)
                        .and_then(|f| f.sync_all())
                        .map_err(|e| StoreError::local("fsync", &tmp, e))?;
                }
                std::fs::rename(&tmp, &dest).map_err(|e| StoreError::local("rename into place", &dest, e))?;
                if fsync {
                    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
                    std::fs::File::open(dir)
                        .and_then(|f| f.sync_all())
                        .map_err(|e| StoreError::local("fsync", dir, e))?;
                }
                Ok(())
            })();
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            result
        })
        .await
        .map_err(|e| StoreError::local("commit", dest_for_err, std::io::Error::other(e)))?
    }
}

/// What a fetch left to do.
enum Fetched {
    /// The destination already held the content.
    InPlace,
    /// The content is verified in this temporary file.
    Verified(PathBuf),
}

/// The temporary name beside `dest`: hidden, and ending in `.tmp` so Cassandra treats it as a
/// temporary file. Deterministic, so a rerun reuses (truncates) it instead of leaving litter.
pub fn temp_path_for(dest: &Path) -> PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dest.with_file_name(format!(".{name}.cassette.tmp"))
}

/// Writes and hashes on a blocking thread, batching small chunks in pooled buffers.
struct HashingFile {
    file: Option<std::fs::File>,
    hasher: Option<Hasher>,
    pending: Option<Lease>,
    /// Bytes the pending buffer gathers before it is written.
    batch: usize,
    pool: BufferPool,
    written: u64,
    /// The blob's size: a small blob's batch is leased at its size, not at [`WRITE_BATCH`].
    expected: u64,
    path: PathBuf,
}

impl HashingFile {
    fn new(file: std::fs::File, path: PathBuf, pool: BufferPool, expected: u64) -> Self {
        Self {
            file: Some(file),
            hasher: Some(Hasher::new()),
            pending: None,
            batch: WRITE_BATCH,
            pool,
            written: 0,
            expected,
            path,
        }
    }

    async fn write(&mut self, bytes: Bytes) -> Result<(), StoreError> {
        // What is still to come once the bytes already gathered are counted.
        let to_come = self.expected.saturating_sub(self.written);
        self.written += bytes.len() as u64;
        if bytes.len() >= WRITE_BATCH && self.pending.is_none() {
            return self.flush(bytes).await;
        }
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            if self.pending.is_none() {
                let left = usize::try_from(to_come).unwrap_or(WRITE_BATCH).max(rest.len());
                self.batch = left.clamp(1, WRITE_BATCH);
                self.pending = Some(self.pool.lease(self.batch).await);
            }
            let batch = self.batch;
            let full = match self.pending.as_mut().and_then(Lease::buf_mut) {
                Some(buf) => {
                    let n = rest.len().min(batch.saturating_sub(buf.len()).max(1));
                    buf.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                    buf.len() >= batch
                }
                None => break,
            };
            if full && let Some(lease) = self.pending.take() {
                self.flush(lease.freeze()).await?;
            }
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

    async fn finish(mut self) -> Result<(BlobHash, u64), StoreError> {
        if let Some(lease) = self.pending.take() {
            self.flush(lease.freeze()).await?;
        }
        match (self.file.take(), self.hasher.take()) {
            (Some(_), Some(h)) => Ok((h.finish(), self.written)),
            _ => Err(StoreError::local("write", &self.path, std::io::Error::other("writer already failed"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(n: u8) -> BlobHash {
        cassette_common::hash::sha256(&[n])
    }

    fn dests(items: &[DownloadItem<'_>]) -> Vec<(PathBuf, BlobHash)> {
        items.iter().map(|i| (i.dest().into_owned(), i.hash)).collect()
    }

    #[test]
    fn items_under_roots_are_grouped_by_root_and_relative_path() {
        let (a, b) = (Path::new("/data/1/staging"), Path::new("/data/2/staging"));
        let mut items = vec![
            DownloadItem::under(hash(1), 1, a, Path::new("ks/t/nb-2-big-Data.db")),
            DownloadItem::under(hash(2), 1, b, Path::new("ks/t/nb-1-big-Data.db")),
            DownloadItem::under(hash(1), 1, a, Path::new("ks/t/nb-2-big-Data.db")),
            DownloadItem::under(hash(3), 1, a, Path::new("ks/t/nb-1-big-Data.db")),
            DownloadItem::under(hash(4), 1, b, Path::new("ks/t/nb-1-big-Data.db")),
        ];
        let failures = deduplicate(&mut items);
        // The same content twice is placed once; two contents for one path are refused, once each.
        assert_eq!(
            dests(&items),
            vec![(a.join("ks/t/nb-1-big-Data.db"), hash(3)), (a.join("ks/t/nb-2-big-Data.db"), hash(1))]
        );
        assert_eq!(failures.len(), 2);
        assert!(failures.iter().all(|f| f.path == b.join("ks/t/nb-1-big-Data.db")));
    }

    #[test]
    fn nested_roots_and_mixed_forms_still_find_the_same_destination() {
        let (outer, inner, other) = (Path::new("/s"), Path::new("/s/ks"), Path::new("/a"));
        let full = PathBuf::from("/s/ks/t/f");
        for forms in [
            // Nested roots: the same file through two roots.
            vec![
                DownloadItem::under(hash(1), 1, outer, Path::new("ks/t/f")),
                DownloadItem::under(hash(2), 1, inner, Path::new("t/f")),
                DownloadItem::under(hash(9), 1, other, Path::new("x")),
            ],
            // A full path and a root-relative one.
            vec![
                DownloadItem::new(hash(1), 1, full.clone()),
                DownloadItem::under(hash(2), 1, outer, Path::new("ks/t/f")),
                // Under a root that sorts between "" and "/s": the two must still meet.
                DownloadItem::under(hash(9), 1, other, Path::new("x")),
            ],
        ] {
            let mut items = forms;
            let failures = deduplicate(&mut items);
            assert_eq!(dests(&items), vec![(other.join("x"), hash(9))]);
            assert_eq!(failures.iter().map(|f| f.path.clone()).collect::<Vec<_>>(), vec![full.clone(), full.clone()]);
        }
        let mut same = vec![
            DownloadItem::under(hash(1), 1, outer, Path::new("ks/t/f")),
            DownloadItem::under(hash(1), 1, inner, Path::new("t/f")),
            DownloadItem::new(hash(1), 1, full.clone()),
        ];
        assert!(deduplicate(&mut same).is_empty());
        assert_eq!(dests(&same), vec![(full, hash(1))]);
    }

    #[test]
    fn full_paths_sort_by_path() {
        let mut items = vec![
            DownloadItem::new(hash(1), 1, "/r/b"),
            DownloadItem::new(hash(2), 1, "/r/a/c"),
            DownloadItem::new(hash(1), 1, "/r/b"),
        ];
        assert!(deduplicate(&mut items).is_empty());
        assert_eq!(dests(&items), vec![(PathBuf::from("/r/a/c"), hash(2)), (PathBuf::from("/r/b"), hash(1))]);
    }
}
