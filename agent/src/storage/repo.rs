//! The repository: a storage location seen through the remote layout.
//!
//! It owns the marker check, blob existence, and create-only JSON documents (markers,
//! manifests, index entries). Bulk transfers live in [`super::engine`].

use std::sync::Arc;

use bytes::Bytes;
use cassette_common::ids::BlobHash;
use cassette_common::layout::{self, LayoutMarker};
use cassette_common::location::{Provider, StorageLocation};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::backend::{Environment, build_store};
use super::config::{StorageConfig, TransferConfig};
use super::error::StoreError;
use super::limits::{BandwidthLimiter, ThrottledStore};

/// Largest marker this build reads.
const MAX_MARKER_BYTES: u64 = 64 << 10;

/// A repository at a storage location.
#[derive(Clone)]
pub struct Repository {
    store: Arc<dyn ObjectStore>,
    location: StorageLocation,
    display: String,
}

/// Written by hand: a store's own `Debug` may print its credentials (object_store's Azure key).
impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository").field("location", &self.display).finish_non_exhaustive()
    }
}

/// The result of writing a create-only document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The document was created.
    Created,
    /// An identical document was already there (a retried write that had succeeded).
    AlreadyPresent,
}

impl Repository {
    /// Wraps an existing store (already scoped to the location's prefix).
    pub fn new(location: StorageLocation, store: Arc<dyn ObjectStore>) -> Self {
        let display = location.to_string();
        Self { store, location, display }
    }

    /// Builds the client for `location`, throttled to `transfer.bandwidth` if set. No network I/O.
    pub fn connect(
        location: &StorageLocation,
        storage: &StorageConfig,
        transfer: &TransferConfig,
        env: &Environment,
    ) -> Result<Self, StoreError> {
        let mut store = build_store(location, storage, env)?;
        if let Some(rate) = transfer.bandwidth {
            store = Arc::new(ThrottledStore::new(store, Arc::new(BandwidthLimiter::new(rate))));
        }
        Ok(Self::new(location.clone(), store))
    }

    /// The location.
    pub fn location(&self) -> &StorageLocation {
        &self.location
    }

    /// The underlying store, scoped to the repository root.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub(crate) fn loc(&self) -> &str {
        &self.display
    }

    /// Makes the location ready for writing: creates the marker if there is none, and refuses a
    /// repository with a newer or foreign layout.
    pub async fn init(&self) -> Result<LayoutMarker, StoreError> {
        if let Some(marker) = self.read_marker().await? {
            return Ok(marker);
        }
        self.check_bucket().await?;
        let marker = LayoutMarker::new(cassette_common::build_id("cassette-agent"));
        let body = Bytes::from(
            serde_json::to_vec_pretty(&marker).map_err(|e| self.bad_doc(layout::MARKER_KEY, e.to_string()))?,
        );
        match self.put_create(layout::MARKER_KEY, body.clone().into()).await {
            Ok(()) => {
                tracing::info!(location = %self.display, "created repository marker");
                // Once per repository: a store that ignores If-None-Match would let two writers
                // overwrite each other's create-only documents without a word.
                if self.put_create(layout::MARKER_KEY, body.into()).await.is_ok() {
                    tracing::warn!(
                        location = %self.display,
                        "{}",
                        Self::IGNORES_CREATE_ONLY
                    );
                }
                Ok(marker)
            }
            // Someone else initialised it at the same moment: use theirs, after checking it.
            Err(e) if e.is_already_exists() => match self.read_marker().await? {
                Some(m) => Ok(m),
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// Checks that the location holds a repository this build can read.
    pub async fn open_existing(&self) -> Result<LayoutMarker, StoreError> {
        match self.read_marker().await? {
            Some(m) => Ok(m),
            None => {
                self.check_bucket().await?;
                Err(StoreError::NotARepository { location: self.display.clone() })
            }
        }
    }

    async fn read_marker(&self) -> Result<Option<LayoutMarker>, StoreError> {
        let marker: LayoutMarker = match self.get_json(layout::MARKER_KEY, MAX_MARKER_BYTES).await {
            Ok(m) => m,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        marker.check().map_err(|source| StoreError::Layout { location: self.display.clone(), source })?;
        Ok(Some(marker))
    }

    /// Lists the root once, to tell "no such bucket" from "empty bucket".
    async fn check_bucket(&self) -> Result<(), StoreError> {
        match self.store.list_with_delimiter(None).await {
            Ok(_) => Ok(()),
            // Listing a prefix of an existing bucket never answers 404.
            Err(e) if crate::storage::error::http_status(&e) == Some(404) => Err(self.missing_bucket()),
            Err(e) => Err(StoreError::remote("list", "/", &self.display, e)),
        }
    }

    fn missing_bucket(&self) -> StoreError {
        let b = self.location.bucket();
        let (what, hint) = match self.location.provider() {
            Provider::S3 => (
                "bucket",
                format!("create it first, e.g. `aws s3 mb s3://{b}` (add --endpoint-url for S3-compatible stores)"),
            ),
            Provider::Azure => ("container", format!("create it first, e.g. `az storage container create --name {b}`")),
            Provider::Gcs => ("bucket", format!("create it first, e.g. `gcloud storage buckets create gs://{b}`")),
            Provider::File => {
                ("directory", format!("create it (mkdir -p {b}) or check that its file system is mounted"))
            }
        };
        StoreError::MissingBucket { location: self.display.clone(), what, hint }
    }

    /// Size of the blob with this hash, or `None` if it is not stored.
    pub async fn blob_size(&self, hash: &BlobHash) -> Result<Option<u64>, StoreError> {
        let key = layout::blob_key(hash);
        match self.store.head(&Path::from(key.as_str())).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(StoreError::remote("check blob", key, &self.display, e)),
        }
    }

    /// Every stored blob with its size, if there are at most `max_blobs` of them; `None` as soon
    /// as the listing passes that bound (the caller then checks blobs one by one). One request
    /// per page (1,000 keys on S3 and GCS, 5,000 on Azure).
    pub async fn list_blobs_bounded(
        &self,
        max_blobs: usize,
    ) -> Result<Option<std::collections::HashMap<BlobHash, u64>>, StoreError> {
        let prefix = Path::from(layout::BLOBS_PREFIX);
        let mut stream = self.store.list(Some(&prefix));
        let mut found = std::collections::HashMap::new();
        while let Some(meta) =
            stream.try_next().await.map_err(|e| StoreError::remote("list", layout::BLOBS_PREFIX, &self.display, e))?
        {
            if let Some(hash) = layout::parse_blob_key(meta.location.as_ref()) {
                if found.len() >= max_blobs {
                    return Ok(None);
                }
                found.insert(hash, meta.size);
            }
        }
        Ok(Some(found))
    }

    /// Keeps, of `blobs`, only those the repository holds now, from one listing of the blob
    /// prefix: the answer comes from the bucket, not from a manifest that may be older than a
    /// lifecycle rule or a person who deleted blobs. Memory: `blobs` sorted in place and one bit
    /// per blob; the listing is streamed page by page and nothing of it is kept.
    ///
    /// Returns `Ok(None)` (and leaves `blobs` as it was, sorted) when the listing passes
    /// `max_listed` objects: the repository is then too large for a listing to be cheaper than
    /// asking about each blob, and the caller must not treat any of them as stored. Otherwise
    /// `Ok(Some(n))`: `n` blobs were missing and were dropped from `blobs`.
    pub async fn retain_stored(
        &self,
        blobs: &mut Vec<BlobHash>,
        max_listed: usize,
    ) -> Result<Option<usize>, StoreError> {
        blobs.sort_unstable();
        blobs.dedup();
        let mut seen = vec![0u64; blobs.len().div_ceil(64)];
        let prefix = Path::from(layout::BLOBS_PREFIX);
        let mut stream = self.store.list(Some(&prefix));
        let mut listed = 0usize;
        while let Some(meta) =
            stream.try_next().await.map_err(|e| StoreError::remote("list", layout::BLOBS_PREFIX, &self.display, e))?
        {
            listed += 1;
            if listed > max_listed {
                return Ok(None);
            }
            if let Some(i) = layout::parse_blob_key(meta.location.as_ref()).and_then(|h| blobs.binary_search(&h).ok()) {
                seen[i / 64] |= 1 << (i % 64);
            }
        }
        let before = blobs.len();
        let mut i = 0;
        blobs.retain(|_| {
            let keep = seen[i / 64] & (1 << (i % 64)) != 0;
            i += 1;
            keep
        });
        Ok(Some(before - blobs.len()))
    }

    /// What is wrong with a store that ignores create-only writes, and what to do.
    pub const IGNORES_CREATE_ONLY: &'static str = "the store ignores If-None-Match (create-only writes): a second create-only write of the same key replaced the first instead of being refused, so manifests, commit-log index entries, locks and the repository marker could be overwritten by another writer or a retried request without anyone noticing; use a store or gateway that honours conditional writes (If-None-Match: *), and until then do not let two agents write the same repository at once";

    /// Whether the store honours create-only writes: writes a probe at `key` with `If-None-Match:
    /// *` (object_store's `PutMode::Create`), then again; the second must be refused as existing.
    /// The probe is deleted afterwards (a failure to delete is returned after the answer is
    /// known, as an error).
    pub async fn probe_create_only(&self, key: &str) -> Result<bool, StoreError> {
        self.put_create(key, b"cassette create-only probe".to_vec().into()).await?;
        let honoured = match self.put_create(key, b"cassette create-only probe, again".to_vec().into()).await {
            Ok(()) => false,
            Err(e) if e.is_already_exists() => true,
            Err(e) => {
                let _ = self.store.delete(&Path::from(key)).await;
                return Err(e);
            }
        };
        self.store
            .delete(&Path::from(key))
            .await
            .map_err(|e| StoreError::remote("delete probe", key, &self.display, e))?;
        Ok(honoured)
    }

    /// Writes `body` at `key` unless an object already exists there.
    pub(crate) async fn put_create(&self, key: &str, body: PutPayload) -> Result<(), StoreError> {
        let opts = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        match self.store.put_opts(&Path::from(key), body, opts).await {
            Ok(_) => Ok(()),
            // A write answers 404 only when the bucket itself is missing.
            Err(e) if crate::storage::error::http_status(&e) == Some(404) => Err(self.missing_bucket()),
            Err(e) => Err(StoreError::remote("put", key, &self.display, e)),
        }
    }

    /// Writes a JSON document that must never be overwritten. If the key exists already with
    /// identical content (a retried write that had in fact succeeded), that is success;
    /// different content is an error.
    pub async fn put_json_create<T: Serialize>(&self, key: &str, value: &T) -> Result<Written, StoreError> {
        let body = Bytes::from(to_json_exact(value).map_err(|e| self.bad_doc(key, e.to_string()))?);
        match self.put_create(key, body.clone().into()).await {
            Ok(()) => Ok(Written::Created),
            Err(e) if e.is_already_exists() => {
                let existing = self.get_bytes(key, body.len() as u64 + 1).await?;
                if existing == body {
                    Ok(Written::AlreadyPresent)
                } else {
                    Err(self.bad_doc(
                        key,
                        "a different document already exists at this key; refusing to overwrite it".into(),
                    ))
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Reads an object of at most `max_bytes`. Larger objects are refused before downloading
    /// when the listing says so, and in any case while streaming: the body is read chunk by chunk
    /// and the read stops as soon as it passes the limit (a HEAD can be stale, or a lie), so a
    /// document never costs more than `max_bytes` plus one chunk of memory.
    pub async fn get_bytes(&self, key: &str, max_bytes: u64) -> Result<Bytes, StoreError> {
        let path = Path::from(key);
        let meta = self.store.head(&path).await.map_err(|e| StoreError::remote("read", key, &self.display, e))?;
        if meta.size > max_bytes {
            return Err(self.bad_doc(
                key,
                format!(
                    "{} bytes is larger than the {max_bytes}-byte limit for this document; refusing to read it",
                    meta.size
                ),
            ));
        }
        let result = self.store.get(&path).await.map_err(|e| StoreError::remote("read", key, &self.display, e))?;
        let mut stream = result.into_stream();
        // Sized by the HEAD (already checked against the limit), grown only up to the limit.
        let mut body = bytes::BytesMut::with_capacity(usize::try_from(meta.size).unwrap_or(0));
        while let Some(chunk) =
            stream.try_next().await.map_err(|e| StoreError::remote("read", key, &self.display, e))?
        {
            if (body.len() + chunk.len()) as u64 > max_bytes {
                return Err(self.bad_doc(
                    key,
                    format!(
                        "grew past the {max_bytes}-byte limit for this document while being read (the listing said {} bytes); refusing to read more",
                        meta.size
                    ),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }

    /// Reads and parses a JSON document of at most `max_bytes`.
    pub async fn get_json<T: DeserializeOwned>(&self, key: &str, max_bytes: u64) -> Result<T, StoreError> {
        let bytes = self.get_bytes(key, max_bytes).await?;
        serde_json::from_slice(&bytes).map_err(|e| self.bad_doc(key, format!("not valid JSON for this document: {e}")))
    }

    /// Every object under `prefix` (recursively), in the store's listing order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let p = Path::from(prefix);
        self.store.list(Some(&p)).try_collect().await.map_err(|e| StoreError::remote("list", prefix, &self.display, e))
    }

    /// Objects under `prefix` whose key sorts after `offset` (a full key): time-ordered indexes
    /// use this to read only the window they need.
    ///
    /// The result is also filtered here, because some servers (Azurite among them) ignore the
    /// start-after parameter and return the whole prefix.
    pub async fn list_after(&self, prefix: &str, offset: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let p = Path::from(prefix);
        let offset = Path::from(offset);
        let mut found: Vec<ObjectMeta> = self
            .store
            .list_with_offset(Some(&p), &offset)
            .try_filter(|m| futures::future::ready(m.location > offset))
            .try_collect()
            .await
            .map_err(|e| StoreError::remote("list", prefix, &self.display, e))?;
        found.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(found)
    }

    /// The names of the "directories" directly under `prefix`.
    pub async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let p = Path::from(prefix);
        let result = self
            .store
            .list_with_delimiter(Some(&p))
            .await
            .map_err(|e| StoreError::remote("list", prefix, &self.display, e))?;
        Ok(result.common_prefixes.iter().filter_map(|p| p.filename().map(str::to_owned)).collect())
    }

    fn bad_doc(&self, key: &str, message: String) -> StoreError {
        StoreError::BadDocument { key: key.to_owned(), location: self.display.clone(), message }
    }
}

/// Documents up to this size (compact) are written pretty-printed, larger ones compact.
const PRETTY_MAX: usize = 1 << 20;

/// JSON in a buffer of exactly its size: measured first, then written once (a large node
/// manifest is tens of megabytes, and a growing buffer would hold up to three times that while
/// it doubles). Pretty-printed for people up to [`PRETTY_MAX`]; compact above, where the
/// indentation would add a third to a document nobody reads by eye.
fn to_json_exact<T: Serialize>(value: &T) -> serde_json::Result<Vec<u8>> {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut compact = Count(0);
    serde_json::to_writer(&mut compact, value)?;
    if compact.0 > PRETTY_MAX {
        let mut out = Vec::with_capacity(compact.0);
        serde_json::to_writer(&mut out, value)?;
        return Ok(out);
    }
    let mut pretty = Count(0);
    serde_json::to_writer_pretty(&mut pretty, value)?;
    let mut out = Vec::with_capacity(pretty.0);
    serde_json::to_writer_pretty(&mut out, value)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use object_store::memory::InMemory;

    fn repo() -> Repository {
        Repository::new("s3://bkt/p".parse().unwrap(), Arc::new(InMemory::new()))
    }

    #[tokio::test]
    async fn init_creates_the_marker_once_and_refuses_newer_layouts() {
        let r = repo();
        let m1 = r.init().await.unwrap();
        let m2 = r.init().await.unwrap();
        assert_eq!(m1, m2, "the second init reads the existing marker");
        assert_eq!(r.open_existing().await.unwrap(), m1);

        let newer = LayoutMarker { layout_version: layout::LAYOUT_VERSION + 1, ..m1 };
        r.store().put(&Path::from(layout::MARKER_KEY), serde_json::to_vec(&newer).unwrap().into()).await.unwrap();
        let e = r.init().await.unwrap_err().to_string();
        assert!(e.contains("layout version 2") && e.contains("upgrade"), "{e}");
    }

    #[tokio::test]
    async fn open_existing_needs_a_marker() {
        let e = repo().open_existing().await.unwrap_err().to_string();
        assert!(e.contains("holds no Cassette repository"), "{e}");
    }

    #[tokio::test]
    async fn create_only_documents_are_never_overwritten() {
        let r = repo();
        #[derive(Serialize)]
        struct Doc {
            v: u32,
        }
        assert_eq!(r.put_json_create("d.json", &Doc { v: 1 }).await.unwrap(), Written::Created);
        assert_eq!(r.put_json_create("d.json", &Doc { v: 1 }).await.unwrap(), Written::AlreadyPresent);
        let e = r.put_json_create("d.json", &Doc { v: 2 }).await.unwrap_err().to_string();
        assert!(e.contains("refusing to overwrite"), "{e}");
        let back: serde_json::Value = r.get_json("d.json", 1024).await.unwrap();
        assert_eq!(back["v"], 1);
    }

    /// A store a hostile or careless bucket owner runs: GET bodies far larger than the HEAD said
    /// (an object replaced between the two requests, or a server that lies), counting the bytes
    /// handed to the reader; or create-only writes that overwrite (`If-None-Match` ignored).
    #[derive(Debug, Default)]
    struct Hostile {
        inner: InMemory,
        body: Option<u64>,
        ignore_create_only: bool,
        pulled: Arc<std::sync::atomic::AtomicU64>,
    }

    impl std::fmt::Display for Hostile {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Hostile({})", self.inner)
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for Hostile {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            mut opts: PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            if self.ignore_create_only && opts.mode == PutMode::Create {
                opts.mode = PutMode::Overwrite;
            }
            self.inner.put_opts(location, payload, opts).await
        }
        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }
        async fn get_opts(
            &self,
            location: &Path,
            options: object_store::GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            let head = options.head;
            let mut r = self.inner.get_opts(location, options).await?;
            let Some(body) = self.body.filter(|_| !head) else { return Ok(r) };
            const CHUNK: u64 = 64 << 10;
            let pulled = Arc::clone(&self.pulled);
            let chunks = body.div_ceil(CHUNK);
            let stream = futures::stream::iter(0..chunks).map(move |_| {
                pulled.fetch_add(CHUNK, std::sync::atomic::Ordering::SeqCst);
                Ok(Bytes::from(vec![b' '; CHUNK as usize]))
            });
            r.range = 0..chunks * CHUNK;
            r.payload = object_store::GetResultPayload::Stream(Box::pin(stream));
            Ok(r)
        }
        fn delete_stream(
            &self,
            locations: futures::stream::BoxStream<'static, object_store::Result<Path>>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<Path>> {
            self.inner.delete_stream(locations)
        }
        fn list(&self, prefix: Option<&Path>) -> futures::stream::BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.inner.list(prefix)
        }
        async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<object_store::ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }
        async fn copy_opts(
            &self,
            from: &Path,
            to: &Path,
            options: object_store::CopyOptions,
        ) -> object_store::Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }

    /// - a document whose body turns out larger than its HEAD said is refused after at most the
    ///   limit (plus one chunk) was read, not after the whole body was buffered;
    /// - the error names the key and the limit.
    #[tokio::test]
    async fn documents_are_size_limited_while_streaming() {
        let pulled = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let store = Hostile { body: Some(64 << 20), pulled: Arc::clone(&pulled), ..Hostile::default() };
        store.inner.put(&Path::from("doc.json"), b"{}".to_vec().into()).await.unwrap();
        let r = Repository::new("s3://bkt/p".parse().unwrap(), Arc::new(store));
        let e = r.get_bytes("doc.json", 1 << 20).await.unwrap_err().to_string();
        assert!(e.contains("doc.json") && e.contains("1048576-byte limit"), "{e}");
        let read = pulled.load(std::sync::atomic::Ordering::SeqCst);
        assert!(read <= (1 << 20) + (64 << 10), "read {read} bytes of a 64 MiB body to refuse it at 1 MiB");
    }

    #[tokio::test]
    async fn oversized_and_malformed_documents_are_refused() {
        let r = repo();
        r.store().put(&Path::from("big.json"), vec![b' '; 2048].into()).await.unwrap();
        let e = r.get_bytes("big.json", 1024).await.unwrap_err().to_string();
        assert!(e.contains("2048 bytes") && e.contains("1024-byte limit"), "{e}");
        r.store().put(&Path::from("bad.json"), b"{not json".to_vec().into()).await.unwrap();
        let e = r.get_json::<serde_json::Value>("bad.json", 1024).await.unwrap_err().to_string();
        assert!(e.contains("bad.json") && e.contains("not valid JSON"), "{e}");
    }

    /// - a store that honours create-only writes passes the probe, one that overwrites fails it;
    /// - the probe object is removed either way.
    #[tokio::test]
    async fn create_only_writes_are_probed() {
        let honest = repo();
        assert!(honest.probe_create_only("probes/x").await.unwrap());
        let hostile = Repository::new(
            "s3://bkt/p".parse().unwrap(),
            Arc::new(Hostile { ignore_create_only: true, ..Hostile::default() }),
        );
        assert!(!hostile.probe_create_only("probes/x").await.unwrap());
        for r in [honest, hostile] {
            assert!(r.list("probes").await.unwrap().is_empty());
        }
        assert!(Repository::IGNORES_CREATE_ONLY.contains("If-None-Match"));
    }

    /// - of a previous backup's blobs, those the bucket no longer holds are dropped (and counted);
    /// - past the listing bound, nothing is confirmed (`None`).
    #[tokio::test]
    async fn stored_blobs_come_from_the_bucket() {
        let r = repo();
        let hashes: Vec<BlobHash> = (0..5u8).map(|i| cassette_common::hash::sha256(&[i])).collect();
        for h in &hashes[..3] {
            r.store().put(&Path::from(layout::blob_key(h).as_str()), vec![1].into()).await.unwrap();
        }
        let mut blobs = hashes.clone();
        assert_eq!(r.retain_stored(&mut blobs, 100).await.unwrap(), Some(2));
        let mut want = hashes[..3].to_vec();
        want.sort();
        assert_eq!(blobs, want);
        let mut blobs = hashes.clone();
        assert_eq!(r.retain_stored(&mut blobs, 2).await.unwrap(), None);
        assert_eq!(blobs.len(), 5);
    }
}
