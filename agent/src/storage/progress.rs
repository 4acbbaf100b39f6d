//! Progress of transfers: counters the engine always keeps, and an injected sink for
//! whoever draws it (the CLI's progress bar, a gRPC status stream). The library never draws.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Receives progress events. Every method has a no-op default.
pub trait ProgressSink: Send + Sync + fmt::Debug {
    /// Files and bytes were added to the work to do.
    fn add_total(&self, _files: u64, _bytes: u64) {}
    /// Bytes went over the network (up or down).
    fn transferred(&self, _bytes: u64) {}
    /// Bytes were read from disk to compute hashes.
    fn hashed(&self, _bytes: u64) {}
    /// A file is finished: transferred, or skipped because it was already there.
    fn file_finished(&self, _path: &Path, _size: u64, _skipped: bool) {}
    /// An operation reached a step worth telling the operator ("snapshot taken", "waiting for a
    /// removal to finish"): one line, no trailing newline.
    fn message(&self, _text: &str) {}
}

/// A sink that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl ProgressSink for NoProgress {}

/// Cumulative counters of a transfer, as shown in `--output json`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TransferStats {
    /// Files the transfer covers.
    pub files_total: u64,
    /// Their total size.
    pub bytes_total: u64,
    /// Files sent or received.
    pub files_transferred: u64,
    /// Bytes sent or received.
    pub bytes_transferred: u64,
    /// Files skipped because the blob (upload) or a verified local copy (download) existed.
    pub files_skipped: u64,
    /// Bytes of skipped files.
    pub bytes_skipped: u64,
    /// Bytes read from disk to compute hashes.
    pub bytes_hashed: u64,
    /// Operations retried after transient failures.
    pub retries: u64,
    /// Requests made to find out whether blobs exist (existence checks and listing pages).
    pub remote_checks: u64,
}

impl From<TransferStats> for cassette_proto::v1::TransferStats {
    fn from(s: TransferStats) -> Self {
        Self {
            files_total: s.files_total,
            bytes_total: s.bytes_total,
            files_transferred: s.files_transferred,
            bytes_transferred: s.bytes_transferred,
            files_skipped: s.files_skipped,
            bytes_skipped: s.bytes_skipped,
            bytes_hashed: s.bytes_hashed,
            retries: s.retries,
            remote_checks: s.remote_checks,
        }
    }
}

/// The engine's view: counters plus the external sink.
#[derive(Debug)]
pub struct Progress {
    files_total: AtomicU64,
    bytes_total: AtomicU64,
    files_transferred: AtomicU64,
    bytes_transferred: AtomicU64,
    files_skipped: AtomicU64,
    bytes_skipped: AtomicU64,
    bytes_hashed: AtomicU64,
    remote_checks: AtomicU64,
    retries: Arc<AtomicU64>,
    sink: Arc<dyn ProgressSink>,
}

impl Progress {
    /// Counters that also report to `sink`. `retries` is shared with the retry policies.
    pub fn new(sink: Arc<dyn ProgressSink>, retries: Arc<AtomicU64>) -> Self {
        Self {
            files_total: AtomicU64::new(0),
            bytes_total: AtomicU64::new(0),
            files_transferred: AtomicU64::new(0),
            bytes_transferred: AtomicU64::new(0),
            files_skipped: AtomicU64::new(0),
            bytes_skipped: AtomicU64::new(0),
            bytes_hashed: AtomicU64::new(0),
            remote_checks: AtomicU64::new(0),
            retries,
            sink,
        }
    }

    pub(crate) fn add_total(&self, files: u64, bytes: u64) {
        self.files_total.fetch_add(files, Ordering::Relaxed);
        self.bytes_total.fetch_add(bytes, Ordering::Relaxed);
        self.sink.add_total(files, bytes);
    }

    pub(crate) fn transferred(&self, bytes: u64) {
        self.bytes_transferred.fetch_add(bytes, Ordering::Relaxed);
        self.sink.transferred(bytes);
    }

    pub(crate) fn hashed(&self, bytes: u64) {
        self.bytes_hashed.fetch_add(bytes, Ordering::Relaxed);
        self.sink.hashed(bytes);
    }

    pub(crate) fn checked(&self, requests: u64) {
        self.remote_checks.fetch_add(requests, Ordering::Relaxed);
    }

    pub(crate) fn file_finished(&self, path: &Path, size: u64, skipped: bool) {
        if skipped {
            self.files_skipped.fetch_add(1, Ordering::Relaxed);
            self.bytes_skipped.fetch_add(size, Ordering::Relaxed);
        } else {
            self.files_transferred.fetch_add(1, Ordering::Relaxed);
        }
        self.sink.file_finished(path, size, skipped);
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TransferStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TransferStats {
            files_total: l(&self.files_total),
            bytes_total: l(&self.bytes_total),
            files_transferred: l(&self.files_transferred),
            bytes_transferred: l(&self.bytes_transferred),
            files_skipped: l(&self.files_skipped),
            bytes_skipped: l(&self.bytes_skipped),
            bytes_hashed: l(&self.bytes_hashed),
            retries: l(&self.retries),
            remote_checks: l(&self.remote_checks),
        }
    }
}
