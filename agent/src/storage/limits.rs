//! Process-wide limits: a bandwidth limit shared by every stream (an `ObjectStore` decorator),
//! and a memory budget for buffered bytes.

use std::num::NonZeroU32;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use cassette_common::units::Rate;
use futures::StreamExt;
use futures::stream::BoxStream;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetRange, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, UploadPart,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A token bucket in bytes, shared by all transfers of the process.
#[derive(Debug)]
pub struct BandwidthLimiter {
    limiter: DefaultDirectRateLimiter,
    burst: u32,
    rate: Rate,
}

impl BandwidthLimiter {
    /// A limiter for `rate` bytes per second. Rates above 4 GiB/s are capped there.
    pub fn new(rate: Rate) -> Self {
        let per_second = u32::try_from(rate.0).unwrap_or(u32::MAX).max(1);
        // A tenth of a second of traffic (at least 64 KiB) may go out at once; larger requests
        // wait for their share chunk by chunk.
        let burst = (per_second / 10).max(64 << 10).min(per_second);
        let quota = Quota::per_second(nz(per_second)).allow_burst(nz(burst));
        Self { limiter: RateLimiter::direct(quota), burst, rate }
    }

    /// The configured rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Waits until `bytes` may be sent or received.
    pub async fn acquire(&self, mut bytes: u64) {
        while bytes > 0 {
            let n = u32::try_from(bytes).unwrap_or(u32::MAX).min(self.burst);
            // `n <= burst`, so the limiter can always grant it; an error would mean a bug in
            // that invariant, and waiting would be wrong, so go on without limiting.
            let _ = self.limiter.until_n_ready(nz(n)).await;
            bytes -= u64::from(n);
        }
    }
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

/// An [`ObjectStore`] decorator that charges every body byte, up and down, to a shared
/// [`BandwidthLimiter`]. Uploads wait before the request is sent, ranged reads before they are
/// requested (so a slow share never trips a request timeout); unbounded reads are charged
/// chunk by chunk as they stream.
#[derive(Debug)]
pub struct ThrottledStore {
    inner: Arc<dyn ObjectStore>,
    limiter: Arc<BandwidthLimiter>,
}

impl ThrottledStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>, limiter: Arc<BandwidthLimiter>) -> Self {
        Self { inner, limiter }
    }
}

impl std::fmt::Display for ThrottledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Throttled({}, {})", self.inner, self.limiter.rate())
    }
}

#[async_trait]
impl ObjectStore for ThrottledStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.limiter.acquire(payload.content_length() as u64).await;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let upload = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(ThrottledUpload { inner: upload, limiter: Arc::clone(&self.limiter) }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        let bounded = match &options.range {
            Some(GetRange::Bounded(r)) if !options.head => Some(r.end.saturating_sub(r.start)),
            _ => None,
        };
        if let Some(n) = bounded {
            self.limiter.acquire(n).await;
            return self.inner.get_opts(location, options).await;
        }
        let head = options.head;
        let result = self.inner.get_opts(location, options).await?;
        if head {
            return Ok(result);
        }
        let GetResult { meta, range, attributes, extensions, payload } = result;
        let stream = match payload {
            GetResultPayload::Stream(s) => s,
            file @ GetResultPayload::File(..) => GetResult {
                payload: file,
                meta: meta.clone(),
                range: range.clone(),
                attributes: attributes.clone(),
                extensions: extensions.clone(),
            }
            .into_stream(),
        };
        let limiter = Arc::clone(&self.limiter);
        let throttled = stream
            .then(move |chunk| {
                let limiter = Arc::clone(&limiter);
                async move {
                    if let Ok(bytes) = &chunk {
                        limiter.acquire(bytes.len() as u64).await;
                    }
                    chunk
                }
            })
            .boxed();
        Ok(GetResult { payload: GetResultPayload::Stream(throttled), meta, range, attributes, extensions })
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        self.limiter.acquire(ranges.iter().map(|r| r.end.saturating_sub(r.start)).sum()).await;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
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

#[derive(Debug)]
struct ThrottledUpload {
    inner: Box<dyn MultipartUpload>,
    limiter: Arc<BandwidthLimiter>,
}

#[async_trait]
impl MultipartUpload for ThrottledUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let n = data.content_length() as u64;
        // The inner future is lazy for every backend: nothing is sent until it is polled,
        // which happens only after the limiter granted the bytes.
        let part = self.inner.put_part(data);
        let limiter = Arc::clone(&self.limiter);
        Box::pin(async move {
            limiter.acquire(n).await;
            part.await
        })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

/// A bound on bytes buffered in memory by all transfers together.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    sem: Arc<Semaphore>,
    total: u32,
}

impl MemoryBudget {
    /// A budget of `bytes` (capped at 4 GiB).
    pub fn new(bytes: u64) -> Self {
        let total = u32::try_from(bytes).unwrap_or(u32::MAX).max(1);
        Self { sem: Arc::new(Semaphore::new(total as usize)), total }
    }

    /// Reserves `bytes` until the permit is dropped. A request larger than the whole budget
    /// reserves all of it, so it runs alone instead of never.
    pub async fn reserve(&self, bytes: u64) -> OwnedSemaphorePermit {
        let n = u32::try_from(bytes).unwrap_or(u32::MAX).clamp(1, self.total);
        // The semaphore is never closed, so acquiring cannot fail.
        match Arc::clone(&self.sem).acquire_many_owned(n).await {
            Ok(p) => p,
            Err(_) => unreachable!("the memory budget semaphore is never closed"),
        }
    }

    /// Bytes currently free.
    pub fn available(&self) -> usize {
        self.sem.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;
    use std::time::Instant;

    #[tokio::test]
    async fn limiter_holds_the_configured_rate() {
        let limiter = BandwidthLimiter::new(Rate(4 << 20)); // 4 MiB/s, burst 409.6 KiB
        let start = Instant::now();
        limiter.acquire(2 << 20).await; // 2 MiB: about 0.5 s minus the initial burst
        let elapsed = start.elapsed().as_secs_f64();
        assert!((0.35..1.5).contains(&elapsed), "2 MiB at 4 MiB/s took {elapsed:.3}s");
    }

    #[tokio::test]
    async fn throttled_store_charges_puts_and_gets() {
        let limiter = Arc::new(BandwidthLimiter::new(Rate(8 << 20)));
        let store = ThrottledStore::new(Arc::new(InMemory::new()), Arc::clone(&limiter));
        let data = Bytes::from(vec![1u8; 4 << 20]);
        let p = Path::from("x");
        let start = Instant::now();
        store.put(&p, data.clone().into()).await.unwrap();
        let put = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let back = store.get(&p).await.unwrap().bytes().await.unwrap();
        let get = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let range = store.get_range(&p, 0..(2 << 20)).await.unwrap();
        let ranged = start.elapsed().as_secs_f64();
        assert_eq!(back, data);
        assert_eq!(range.len(), 2 << 20);
        // 4 MiB at 8 MiB/s is about 0.5 s (less the burst); 2 MiB about 0.25 s.
        assert!(put > 0.3, "put of 4 MiB took {put:.3}s");
        assert!(get > 0.3, "get of 4 MiB took {get:.3}s");
        assert!(ranged > 0.15, "ranged get of 2 MiB took {ranged:.3}s");
    }

    #[tokio::test]
    async fn memory_budget_blocks_until_released() {
        let budget = MemoryBudget::new(10);
        let a = budget.reserve(6).await;
        assert_eq!(budget.available(), 4);
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.reserve(6).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "second reservation must wait");
        drop(a);
        let b = waiter.await.unwrap();
        assert_eq!(budget.available(), 4);
        drop(b);
        let all = budget.reserve(1 << 30).await; // larger than the budget: takes all of it
        assert_eq!(budget.available(), 0);
        drop(all);
    }
}
