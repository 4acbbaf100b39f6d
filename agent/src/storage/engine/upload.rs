//! Uploads: hash (or look up), check whether the blob exists, send only what is missing.
//!
//! Integrity: the blob key is the SHA-256 of the bytes sent. Small files are read once into
//! memory, hashed, and sent from that same buffer. Large files are hashed (or found in the hash
//! cache), then streamed as a multipart upload; before the upload is completed the file is
//! checked to be unchanged (same inode, size and mtime as when it was hashed), and when the hash
//! came from the cache the streamed bytes are hashed again and compared. A mismatch aborts the
//! upload, so a wrong blob is never made visible.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::io::Read;

use bytes::{Bytes, BytesMut};
use cassette_common::hash::{Hasher, sha256};
use cassette_common::ids::BlobHash;
use cassette_common::layout;
use futures::stream::{FuturesUnordered, StreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutMultipartOptions, PutPayload};
use serde::Serialize;

use super::{FileFailure, TransferEngine, same_file};
use crate::storage::error::StoreError;
use crate::storage::progress::TransferStats;
use crate::storage::retry::PartRetryPolicy;

/// A file [`TransferEngine::upload_files`] can store, named by its path.
///
/// A path is one. A caller with many files in few directories can give an item of its own that
/// puts the path together when asked: the engine asks for one path at a time before the upload
/// (its `stat`, and the progress of a file found stored) and keeps one only while its file is in
/// flight, so tens of thousands of full paths are never held at once.
pub trait UploadSource: Send + Sync {
    /// The file's path.
    fn path(&self) -> Cow<'_, Path>;
}

impl UploadSource for PathBuf {
    fn path(&self) -> Cow<'_, Path> {
        Cow::Borrowed(self)
    }
}

/// One file handled by an upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UploadedFile<S = PathBuf> {
    /// The file as given (its local path, see [`UploadSource`]).
    pub path: S,
    /// SHA-256 of its content.
    pub sha256: BlobHash,
    /// Size in bytes.
    pub size: u64,
    /// True if bytes were sent; false if the blob was already stored.
    pub uploaded: bool,
}

/// What an upload did.
#[derive(Debug)]
pub struct UploadReport<S = PathBuf> {
    /// Files stored (sent or already present), in the order given.
    pub files: Vec<UploadedFile<S>>,
    /// Files that could not be stored.
    pub failures: Vec<FileFailure>,
    /// Counters.
    pub stats: TransferStats,
}

impl<S> UploadReport<S> {
    /// The first failure, for callers that stop at any failure.
    pub fn into_result(self) -> Result<(Vec<UploadedFile<S>>, TransferStats), StoreError> {
        match self.failures.into_iter().next() {
            Some(f) => Err(f.error),
            None => Ok((self.files, self.stats)),
        }
    }
}

/// One file as a dry run sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbedFile {
    /// The local path.
    pub path: PathBuf,
    /// SHA-256 of its content.
    pub sha256: BlobHash,
    /// Size in bytes.
    pub size: u64,
    /// Whether the blob is already stored (an upload would skip it).
    pub stored: bool,
}

/// What [`TransferEngine::probe_files`] found.
#[derive(Debug)]
pub struct ProbeReport {
    /// Files hashed and checked.
    pub files: Vec<ProbedFile>,
    /// Files that could not be hashed or checked.
    pub failures: Vec<FileFailure>,
}

/// A file stored as a blob (what [`UploadedFile`] says besides the path).
struct Stored {
    sha256: BlobHash,
    size: u64,
    uploaded: bool,
}

/// How the hash of a file was obtained.
enum Hashed {
    /// Read into memory and hashed; the buffer is sent as is.
    InMemory(Bytes),
    /// Hashed by streaming the file now.
    Fresh,
    /// Taken from the hash cache: nothing was read.
    Cached,
}

impl TransferEngine {
    /// Stores every file of `items` as a blob, sending only those not yet stored.
    ///
    /// Files are processed `concurrency` at a time. A failure of one file does not stop the
    /// others (so a rerun has less to do), except a permanent storage error (denied, missing
    /// bucket), which stops scheduling new files.
    pub async fn upload_files<S: UploadSource>(&self, items: Vec<S>) -> UploadReport<S> {
        // One pass of `stat`s: a file whose hash the cache knows and whose blob is known to be
        // stored (an incremental backup's unchanged files) is done here, without a task, a second
        // `stat` or a question to the store; the rest are uploaded below.
        //
        // The items become the report's list, in the order given, filled in as files finish; the
        // files left to send are indices into it. A file's path is put together when its task
        // starts and dropped when it finishes. No second list of the sent files, and none is
        // built at the end.
        let total = items.len();
        let mut files: Vec<UploadedFile<S>> = Vec::with_capacity(total);
        let mut todo: Vec<usize> = Vec::new();
        let mut bytes = 0;
        for item in items {
            let (size, stored) = self.known_stored(&item.path());
            bytes += size;
            if stored.is_none() {
                todo.push(files.len());
            }
            // Unknown files get a placeholder hash until they are stored (the size decides
            // their slot).
            let sha256 = stored.unwrap_or_else(|| BlobHash::from_bytes([0; 32]));
            files.push(UploadedFile { path: item, sha256, size, uploaded: false });
        }
        todo.shrink_to_fit();
        self.progress.add_total(total as u64, bytes);
        let mut pending = todo.iter().copied().peekable();
        for (i, f) in files.iter().enumerate() {
            if pending.next_if_eq(&i).is_none() {
                self.progress.file_finished(&f.path.path(), f.size, true);
            }
        }
        self.expect_files(todo.len());
        // Sized once for what is to come (see `HashCache::reserve`).
        self.cache.reserve(todo.len());
        self.present.lock().unwrap_or_else(std::sync::PoisonError::into_inner).reserve(todo.len());
        // The stream reads each item as it starts the file and the loop below puts results back:
        // both touch the list, one at a time (never across an await).
        let files = std::sync::Mutex::new(files);
        let take = |i: usize| {
            let files = files.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let f = &files[i];
            (i, f.path.path().into_owned(), f.size)
        };
        let stop = std::sync::atomic::AtomicBool::new(false);
        let mut sent = futures::stream::iter(todo.into_iter().map(take))
            .map(|(i, path, size)| {
                let stop = &stop;
                async move {
                    let _slot = self.slot(size).await;
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return (i, path, Err(StoreError::Cancelled));
                    }
                    let r = self.store_file(&path).await;
                    if let Err(
                        StoreError::Denied { .. } | StoreError::MissingBucket { .. } | StoreError::Config { .. },
                    ) = &r
                    {
                        stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    (i, path, r)
                }
            })
            .buffer_unordered(self.in_flight());
        let mut failures: Vec<(usize, FileFailure)> = Vec::new();
        while let Some((i, path, r)) = sent.next().await {
            match r {
                Ok(s) => {
                    let mut files = files.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    let f = &mut files[i];
                    (f.sha256, f.size, f.uploaded) = (s.sha256, s.size, s.uploaded);
                }
                Err(error) => failures.push((i, FileFailure { path, error })),
            }
        }
        drop(sent);
        if let Err(e) = self.cache.save() {
            tracing::warn!(error = %e, "could not save the hash cache; hashes will be recomputed next time");
        }
        let mut files = files.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Failures in the order given, and out of the list of stored files.
        failures.sort_unstable_by_key(|(i, _)| *i);
        if !failures.is_empty() {
            let mut at = 0;
            let mut next = failures.iter().map(|(i, _)| *i).peekable();
            files.retain(|_| {
                let failed = next.next_if_eq(&at).is_some();
                at += 1;
                !failed
            });
        }
        let failures = failures.into_iter().map(|(_, f)| f).collect();
        UploadReport { files, failures, stats: self.stats() }
    }

    /// Finds out what [`TransferEngine::upload_files`] would send, without sending anything:
    /// hashes each file (from the hash cache when possible, which it also fills) and checks
    /// whether its blob is stored. Blobs found stored are remembered, so an upload by the same
    /// engine afterwards does not ask again. For dry runs and for pacing an upload over a duration.
    pub async fn probe_files(&self, paths: Vec<PathBuf>) -> ProbeReport {
        let (sizes, unknown) = self.survey(&paths);
        self.expect_files(unknown);
        let results: Vec<(PathBuf, Result<ProbedFile, StoreError>)> =
            futures::stream::iter(paths.into_iter().zip(sizes))
                .map(|(path, size)| async move {
                    let _slot = self.slot(size).await;
                    let r = async {
                        let meta = tokio::fs::metadata(&path).await.map_err(|e| StoreError::local("stat", &path, e))?;
                        let hash = match self.cache.lookup(&meta) {
                            Some(h) => h,
                            None => {
                                let (h, len) = self.hash_file(&path).await?;
                                let after = tokio::fs::metadata(&path)
                                    .await
                                    .map_err(|e| StoreError::local("stat", &path, e))?;
                                if len != meta.len() || !same_file(&meta, &after) {
                                    return Err(self.changed(&path, h, h));
                                }
                                self.cache.insert(&meta, h);
                                h
                            }
                        };
                        let size = if self.is_present(&hash) {
                            Some(meta.len())
                        } else {
                            match self.listed(&hash).await {
                                Some(listed) => listed,
                                None => {
                                    self.progress.checked(1);
                                    self.repo.blob_size(&hash).await?
                                }
                            }
                        };
                        let stored = size == Some(meta.len());
                        if stored {
                            self.mark_present(hash);
                        }
                        Ok(ProbedFile { path: path.clone(), sha256: hash, size: meta.len(), stored })
                    }
                    .await;
                    (path, r)
                })
                .buffer_unordered(self.in_flight())
                .collect()
                .await;
        if let Err(e) = self.cache.save() {
            tracing::warn!(error = %e, "could not save the hash cache; hashes will be recomputed next time");
        }
        let mut report = ProbeReport { files: Vec::new(), failures: Vec::new() };
        for (path, r) in results {
            match r {
                Ok(f) => report.files.push(f),
                Err(error) => report.failures.push(FileFailure { path, error }),
            }
        }
        report
    }

    /// One `stat` per file: the size of each of `paths`, and how many may need an existence check
    /// (see [`TransferEngine::known_stored`]). The blob listing is sized by that count, so an
    /// incremental backup of a large node with a few new files asks about those few instead of
    /// listing every blob of the repository.
    fn survey(&self, paths: &[PathBuf]) -> (Vec<u64>, usize) {
        let mut sizes = Vec::with_capacity(paths.len());
        let mut unknown = 0usize;
        for p in paths {
            let (size, stored) = self.known_stored(p);
            sizes.push(size);
            unknown += usize::from(stored.is_none());
        }
        (sizes, unknown)
    }

    /// One `stat`: the size of `path` (0 if it cannot be read), and its blob hash when nothing is
    /// left to do for it: the hash cache knows the file and the blob is already known to be
    /// stored (e.g. from the previous backup's manifest).
    fn known_stored(&self, path: &Path) -> (u64, Option<BlobHash>) {
        let meta = std::fs::metadata(path).ok();
        let size = meta.as_ref().map_or(0, std::fs::Metadata::len);
        let hash =
            meta.filter(std::fs::Metadata::is_file).and_then(|m| self.cache.lookup(&m)).filter(|h| self.is_present(h));
        (size, hash)
    }

    /// Stores one file as a blob (with retries).
    pub async fn upload_file(&self, path: &Path) -> Result<UploadedFile, StoreError> {
        let s = self.store_file(path).await?;
        Ok(UploadedFile { path: path.to_owned(), sha256: s.sha256, size: s.size, uploaded: s.uploaded })
    }

    async fn store_file(&self, path: &Path) -> Result<Stored, StoreError> {
        let what = format!("upload {}", path.display());
        let r = self.backoff.run(&what, |attempt| self.upload_attempt(path, attempt)).await;
        if let Ok(f) = &r {
            self.progress.file_finished(path, f.size, !f.uploaded);
        }
        self.cache.save_if_due(std::time::Duration::from_secs(60)).ok();
        r
    }

    async fn upload_attempt(&self, path: &Path, attempt: u32) -> Result<Stored, StoreError> {
        let meta = tokio::fs::metadata(path).await.map_err(|e| StoreError::local("stat", path, e))?;
        if !meta.is_file() {
            return Err(StoreError::local(
                "upload",
                path,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
            ));
        }
        let size = meta.len();
        let (hash, mut hashed) = self.hash_for_upload(path, &meta).await?;

        let lock = self.lock_blob(hash);
        let result = async {
            let _guard = match lock.try_lock() {
                Ok(g) => g,
                Err(_) => {
                    // Another file with the same content is being handled. Waiting while holding a
                    // buffer could deadlock (that file may need a buffer to finish), so let it go;
                    // the content is read again only if the other file did not store it.
                    if matches!(hashed, Hashed::InMemory(_)) {
                        hashed = Hashed::Cached;
                    }
                    lock.lock().await
                }
            };
            if self.is_present(&hash) {
                return Ok(false);
            }
            // The listing answers first attempts; after a failure, ask the store itself. In an
            // incremental backup a small new file skips the question: its create-only request
            // answers it (see `put_small`).
            let listed = if attempt == 1 { self.listed(&hash).await } else { None };
            let stored = match listed {
                Some(listed) => listed,
                None if attempt == 1 && self.seeded() && size <= crate::storage::config::SMALL_FILE => None,
                None => {
                    self.progress.checked(1);
                    self.repo.blob_size(&hash).await?
                }
            };
            match stored {
                // After a failed attempt of ours, a blob of the right size may still be that
                // attempt's damaged body (some servers commit before checking the checksum), so a
                // small one is read back before it is trusted. Multipart uploads cannot leave a
                // blob behind: nothing is visible before they complete.
                Some(stored) if stored == size && attempt > 1 && size <= self.cfg.multipart_threshold.0 => {
                    if !self.stored_blob_matches(&hash).await? {
                        let data = self.read_small_expecting(path, &meta, hash).await?;
                        let sent = self.replace_damaged(path, hash, data).await?;
                        self.mark_present(hash);
                        return Ok(sent);
                    }
                    self.mark_present(hash);
                    return Ok(false);
                }
                Some(stored) if stored == size => {
                    self.mark_present(hash);
                    return Ok(false);
                }
                Some(stored) => {
                    return Err(StoreError::SizeMismatch {
                        what: format!(
                            "blob {} in {} (for {}) is damaged: remove it so it can be uploaded again",
                            hash,
                            self.repo.loc(),
                            path.display()
                        ),
                        expected: size,
                        actual: stored,
                    });
                }
                None => {}
            }
            let sent = match hashed {
                Hashed::InMemory(data) => self.put_small(path, hash, data).await?,
                // The blob is missing although the file was hashed before: read it now.
                Hashed::Cached if size <= self.cfg.multipart_threshold.0 => {
                    let data = self.read_small_expecting(path, &meta, hash).await?;
                    self.put_small(path, hash, data).await?
                }
                Hashed::Fresh => self.put_multipart(path, &meta, hash, false).await?,
                Hashed::Cached => self.put_multipart(path, &meta, hash, true).await?,
            };
            self.mark_present(hash);
            Ok(sent)
        }
        .await;
        self.release_blob(hash, lock);
        let uploaded = result?;
        Ok(Stored { sha256: hash, size, uploaded })
    }

    /// The file's hash. A hash-cache hit costs no read at all (the common case for SSTables,
    /// which never change). Otherwise small files are read into memory and hashed (the buffer is
    /// kept for sending), large ones are hashed by streaming.
    async fn hash_for_upload(&self, path: &Path, meta: &std::fs::Metadata) -> Result<(BlobHash, Hashed), StoreError> {
        let size = meta.len();
        if let Some(hash) = self.cache.lookup(meta) {
            return Ok((hash, Hashed::Cached));
        }
        if size <= self.cfg.multipart_threshold.0 {
            let (data, hash) = self.read_small(path, size).await?;
            self.cache.insert(meta, hash);
            return Ok((hash, Hashed::InMemory(data)));
        }
        let (hash, len) = self.hash_file(path).await?;
        let after = tokio::fs::metadata(path).await.map_err(|e| StoreError::local("stat", path, e))?;
        if len != size || !same_file(meta, &after) {
            return Err(self.changed(path, hash, hash));
        }
        self.cache.insert(meta, hash);
        Ok((hash, Hashed::Fresh))
    }

    /// Reads a small file into a pooled buffer and hashes it, on a blocking thread.
    async fn read_small(&self, path: &Path, size: u64) -> Result<(Bytes, BlobHash), StoreError> {
        let len = usize::try_from(size).map_err(|e| StoreError::local("read", path, std::io::Error::other(e)))?;
        let mut lease = self.buffers.lease(len).await;
        let buf = lease.take();
        let owned = path.to_owned();
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<(BytesMut, BlobHash, bool)> {
            let file = std::fs::File::open(&owned)?;
            let mut vec = Vec::from(buf);
            vec.clear();
            // One byte more than expected tells a file that grew from one that did not.
            file.take(size + 1).read_to_end(&mut vec)?;
            let complete = vec.len() == len;
            let hash = sha256(&vec);
            Ok((BytesMut::from(Bytes::from(vec)), hash, complete))
        })
        .await
        .map_err(|e| StoreError::local("read", path, std::io::Error::other(e)))?
        .map_err(|e| StoreError::local("read", path, e))?;
        let (buf, hash, complete) = read;
        if !complete {
            // It grew or shrank since it was stat'ed: try again with a fresh look.
            return Err(self.changed(path, hash, hash));
        }
        lease.restore(buf);
        self.progress.hashed(size);
        Ok((lease.freeze(), hash))
    }

    /// Reads a small file whose hash is already known and checks that it still has it (a stale
    /// cache entry is dropped and the upload retried with a fresh hash).
    async fn read_small_expecting(
        &self,
        path: &Path,
        meta: &std::fs::Metadata,
        hash: BlobHash,
    ) -> Result<Bytes, StoreError> {
        let (data, actual) = self.read_small(path, meta.len()).await?;
        if actual != hash {
            self.cache.remove(meta);
            return Err(self.changed(path, hash, actual));
        }
        Ok(data)
    }

    fn changed(&self, path: &Path, expected: BlobHash, actual: BlobHash) -> StoreError {
        StoreError::ChangedDuringUpload { path: path.to_owned(), expected, actual }
    }

    /// One request, create-only. Returns whether bytes were sent.
    ///
    /// When the blob turns out to exist already (a concurrent writer, or a failed earlier
    /// attempt that the server committed anyway — some S3-compatible servers store a body before
    /// rejecting its checksum), the stored bytes are read back and hashed: the key promises the
    /// content, so a blob that breaks that promise is replaced with the verified bytes at hand.
    async fn put_small(&self, path: &Path, hash: BlobHash, data: Bytes) -> Result<bool, StoreError> {
        let key = layout::blob_key(&hash);
        let len = data.len() as u64;
        match self.repo.put_create(&key, PutPayload::from(data.clone())).await {
            Ok(()) => {
                self.progress.transferred(len);
                Ok(true)
            }
            Err(e) if e.is_already_exists() => {
                if self.stored_blob_matches(&hash).await? {
                    return Ok(false);
                }
                self.replace_damaged(path, hash, data).await
            }
            Err(e) => Err(e),
        }
    }

    /// Replaces a stored blob whose bytes do not hash to its name with `data`, which does.
    async fn replace_damaged(&self, path: &Path, hash: BlobHash, data: Bytes) -> Result<bool, StoreError> {
        let key = layout::blob_key(&hash);
        tracing::warn!(blob = %hash, file = %path.display(), location = self.repo.loc(), "stored blob does not match its name; replacing it with the verified content");
        self.repo
            .store()
            .delete(&ObjectPath::from(key.as_str()))
            .await
            .map_err(|e| StoreError::remote("remove damaged blob", key.clone(), self.repo.loc(), e))?;
        let len = data.len() as u64;
        self.repo.put_create(&key, PutPayload::from(data)).await?;
        self.progress.transferred(len);
        Ok(true)
    }

    /// Reads a stored blob back and checks that it hashes to its name.
    async fn stored_blob_matches(&self, hash: &BlobHash) -> Result<bool, StoreError> {
        let key = layout::blob_key(hash);
        let loc = self.repo.loc();
        let result = self
            .repo
            .store()
            .get(&ObjectPath::from(key.as_str()))
            .await
            .map_err(|e| StoreError::remote("verify blob", key.as_str(), loc, e))?;
        let mut stream = result.into_stream();
        let mut hasher = Hasher::new();
        while let Some(chunk) = stream.next().await {
            hasher.update(&chunk.map_err(|e| StoreError::remote("verify blob", key.as_str(), loc, e))?);
        }
        Ok(hasher.finish() == *hash)
    }

    /// A multipart upload with `parts_per_file` parts in flight, completed only after the
    /// content was shown to match `hash`.
    async fn put_multipart(
        &self,
        path: &Path,
        meta: &std::fs::Metadata,
        hash: BlobHash,
        rehash: bool,
    ) -> Result<bool, StoreError> {
        let key = layout::blob_key(&hash);
        let loc = self.repo.loc().to_owned();
        let opts = PutMultipartOptions::default().with_retry_policy(Arc::new(PartRetryPolicy(self.backoff.clone())));
        let mut upload = self
            .repo
            .store()
            .put_multipart_opts(&ObjectPath::from(key.as_str()), opts)
            .await
            .map_err(|e| StoreError::remote("start upload", key.clone(), &loc, e))?;
        let size = meta.len();
        let part_size = self.cfg.part_size_for(size);
        let file = Arc::new(std::fs::File::open(path).map_err(|e| StoreError::local("open", path, e))?);

        let sent: Result<(), StoreError> = async {
            let mut hasher = rehash.then(Hasher::new);
            let mut inflight = FuturesUnordered::new();
            let mut offset = 0u64;
            while offset < size {
                let len = part_size.min(size - offset);
                let mut lease = self.buffers.lease(usize::try_from(len).unwrap_or(usize::MAX)).await;
                let (buf, h) = read_part(Arc::clone(&file), len, lease.take(), hasher.take())
                    .await
                    .map_err(|e| StoreError::local("read", path, e))?;
                hasher = h;
                lease.restore(buf);
                let data = lease.freeze();
                offset += len;
                while inflight.len() >= self.cfg.parts_per_file {
                    if let Some(r) = inflight.next().await {
                        self.progress.transferred(part_result(r, &key, &loc)?);
                    }
                }
                // Spawned, not just pushed: a part must keep going while this loop waits for a
                // buffer, or parts holding the buffer budget would never finish and release it.
                let part = upload.put_part(PutPayload::from(data));
                inflight.push(tokio::spawn(async move { part.await.map(|()| len) }));
            }
            while let Some(r) = inflight.next().await {
                self.progress.transferred(part_result(r, &key, &loc)?);
            }
            if let Some(h) = hasher {
                let actual = h.finish();
                if actual != hash {
                    self.cache.remove(meta);
                    return Err(self.changed(path, hash, actual));
                }
            }
            let after = tokio::fs::metadata(path).await.map_err(|e| StoreError::local("stat", path, e))?;
            if !same_file(meta, &after) {
                self.cache.remove(meta);
                return Err(self.changed(path, hash, hash));
            }
            Ok(())
        }
        .await;

        match sent {
            Ok(()) => {
                upload.complete().await.map_err(|e| StoreError::remote("complete upload", key, &loc, e))?;
                Ok(true)
            }
            Err(e) => {
                if let Err(abort) = upload.abort().await {
                    tracing::warn!(%key, error = %abort, "could not abort the multipart upload; the store's lifecycle rule will remove it");
                }
                Err(e)
            }
        }
    }
}

fn part_result(
    r: Result<object_store::Result<u64>, tokio::task::JoinError>,
    key: &str,
    loc: &str,
) -> Result<u64, StoreError> {
    r.map_err(|e| StoreError::remote("upload part", key, loc, object_store::Error::JoinError { source: e }))?
        .map_err(|e| StoreError::remote("upload part", key, loc, e))
}

/// Reads the next `len` bytes of `file` into `buf` on a blocking thread, feeding `hasher` if
/// given. Parts are read one after the other, so the shared file position is the part's offset.
/// Reading into the buffer's spare capacity avoids zero-filling it first.
async fn read_part(
    file: Arc<std::fs::File>,
    len: u64,
    buf: BytesMut,
    mut hasher: Option<Hasher>,
) -> std::io::Result<(BytesMut, Option<Hasher>)> {
    tokio::task::spawn_blocking(move || {
        let mut vec = Vec::from(buf);
        vec.clear();
        (&*file).take(len).read_to_end(&mut vec)?;
        if (vec.len() as u64) < len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file got shorter while it was read",
            ));
        }
        if let Some(h) = hasher.as_mut() {
            h.update(&vec);
        }
        Ok((BytesMut::from(Bytes::from(vec)), hasher))
    })
    .await
    .map_err(std::io::Error::other)?
}
