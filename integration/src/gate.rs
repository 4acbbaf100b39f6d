//! An `ObjectStore` decorator that holds chosen requests until the test lets them go: races
//! between operations (a removal and a backup) are set up at an exact point instead of hoped for
//! with sleeps.
//!
//! ```ignore
//! let gate = Gate::new(GateOn::Delete("blobs/".into()));
//! let store = Arc::new(GatedStore::new(repo.store().clone(), gate.clone()));
//! // … start the operation on a repository over `store` …
//! gate.wait_until_held(Duration::from_secs(10)).await; // it is now stopped right before a blob delete
//! gate.release();
//! ```

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, RenameOptions,
};

/// Which requests the gate holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateOn {
    /// Single-request writes (`put`) of keys starting with this prefix.
    Put(String),
    /// Deletions of keys starting with this prefix.
    Delete(String),
}

/// Holds matching requests while closed; opens for good on [`Gate::release`].
#[derive(Debug)]
pub struct Gate {
    on: GateOn,
    open: AtomicBool,
    held: AtomicU64,
    notify: tokio::sync::Notify,
}

impl Gate {
    /// A closed gate.
    pub fn new(on: GateOn) -> Arc<Self> {
        Arc::new(Self { on, open: AtomicBool::new(false), held: AtomicU64::new(0), notify: tokio::sync::Notify::new() })
    }

    /// Opens the gate: held requests continue, later ones pass.
    pub fn release(&self) {
        self.open.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Requests held so far.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::SeqCst)
    }

    /// Waits until a request is held (or panics after `timeout`).
    pub async fn wait_until_held(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.held() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "no request reached the gate within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn pass(&self, matches: bool) {
        if !matches || self.open.load(Ordering::SeqCst) {
            return;
        }
        self.held.fetch_add(1, Ordering::SeqCst);
        loop {
            let notified = self.notify.notified();
            if self.open.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

/// The decorator.
#[derive(Debug)]
pub struct GatedStore {
    inner: Arc<dyn ObjectStore>,
    gate: Arc<Gate>,
}

impl GatedStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>, gate: Arc<Gate>) -> Self {
        Self { inner, gate }
    }
}

impl fmt::Display for GatedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gated({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for GatedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let m = matches!(&self.gate.on, GateOn::Put(p) if location.as_ref().starts_with(p.as_str()));
        self.gate.pass(m).await;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let gate = Arc::clone(&self.gate);
        let inner = Arc::clone(&self.inner);
        locations
            .then(move |loc| {
                let gate = Arc::clone(&gate);
                let inner = Arc::clone(&inner);
                async move {
                    let loc = loc?;
                    let m = matches!(&gate.on, GateOn::Delete(p) if loc.as_ref().starts_with(p.as_str()));
                    gate.pass(m).await;
                    let mut one = inner.delete_stream(futures::stream::iter([Ok(loc)]).boxed());
                    one.next().await.unwrap_or_else(|| {
                        Err(object_store::Error::NotImplemented {
                            operation: "delete".into(),
                            implementer: "GatedStore".into(),
                        })
                    })
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}
