//! A store wrapper that measures every request and enforces the node's
//! upload and download rate limits.
//!
//! Latency goes into a histogram per method, failures and bytes into
//! counters (all in the mount's [`Metrics`]). The limits are token buckets
//! kept as a virtual clock: each transfer books `len / rate` seconds after
//! the previous one and waits until its booking ends, so concurrent
//! transfers share the rate and the average over any span of a few blocks
//! holds it. (A crate such as governor would add a dependency tree for what
//! is a dozen lines here.)

use parking_lot::Mutex;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tessera_metrics::Metrics;

use crate::{
    Body, BoxFuture, DynStore, ObjectInfo, ObjectStore, PartStream, RequestCounters, Result,
};

/// A bandwidth limit shared by every request of one direction.
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_sec: f64,
    next_free: Mutex<Instant>,
}

impl RateLimiter {
    /// A limit in megabits per second, as `--upload-limit` takes it.
    pub fn from_mbps(mbps: f64) -> Option<Arc<Self>> {
        (mbps > 0.0).then(|| {
            Arc::new(RateLimiter {
                bytes_per_sec: mbps * 1e6 / 8.0,
                next_free: Mutex::new(Instant::now()),
            })
        })
    }

    /// How long a transfer of `len` bytes must wait for its share.
    fn book(&self, len: u64) -> Duration {
        let now = Instant::now();
        let mut next = self.next_free.lock();
        let start = (*next).max(now);
        *next = start + Duration::from_secs_f64(len as f64 / self.bytes_per_sec);
        next.saturating_duration_since(now)
    }

    pub async fn acquire(&self, len: u64) -> Duration {
        let wait = self.book(len);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        wait
    }
}

/// Measures and throttles another store.
pub struct Instrumented {
    inner: DynStore,
    metrics: Arc<Metrics>,
    upload: Option<Arc<RateLimiter>>,
    download: Option<Arc<RateLimiter>>,
}

impl std::fmt::Debug for Instrumented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instrumented")
            .field("inner", &self.inner)
            .field("upload", &self.upload)
            .field("download", &self.download)
            .finish()
    }
}

impl Instrumented {
    pub fn wrap(
        inner: DynStore,
        metrics: Arc<Metrics>,
        upload: Option<Arc<RateLimiter>>,
        download: Option<Arc<RateLimiter>>,
    ) -> DynStore {
        Arc::new(Instrumented {
            inner,
            metrics,
            upload,
            download,
        })
    }

    fn observe<T>(&self, method: &'static str, started: Instant, r: &Result<T>) {
        let l = [("method", method)];
        self.metrics
            .object_latency
            .get_or_create(&l)
            .observe(started.elapsed().as_secs_f64());
        if r.is_err() {
            self.metrics.object_errors.get_or_create(&l).inc();
        }
    }

    async fn throttle(
        &self,
        limiter: &Option<Arc<RateLimiter>>,
        direction: &'static str,
        len: u64,
    ) {
        if let Some(l) = limiter {
            let waited = l.acquire(len).await;
            if !waited.is_zero() {
                self.metrics
                    .throttle_seconds
                    .get_or_create(&[("direction", direction)])
                    .inc_by(waited.as_secs_f64());
            }
        }
    }
}

impl Instrumented {
    /// A download: time it, count its bytes, then hold the reader to the
    /// download limit.
    async fn timed_get(&self, get: BoxFuture<'_, Result<Bytes>>) -> Result<Bytes> {
        let started = Instant::now();
        let r = get.await;
        self.observe("get", started, &r);
        if let Ok(b) = &r {
            self.metrics
                .object_bytes
                .get_or_create(&[("method", "get")])
                .inc_by(b.len() as u64);
            self.throttle(&self.download, "download", b.len() as u64)
                .await;
        }
        r
    }

    /// An upload of `len` bytes: wait for the rate limit, then time it.
    /// The inner request is only started (polled) after the wait.
    async fn timed_put(&self, len: u64, put: BoxFuture<'_, Result<()>>) -> Result<()> {
        self.throttle(&self.upload, "upload", len).await;
        let started = Instant::now();
        let r = put.await;
        self.observe("put", started, &r);
        if r.is_ok() {
            self.metrics
                .object_bytes
                .get_or_create(&[("method", "put")])
                .inc_by(len);
        }
        r
    }
}

impl ObjectStore for Instrumented {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn get<'a>(&'a self, key: &'a str, range: Option<Range<u64>>) -> BoxFuture<'a, Result<Bytes>> {
        Box::pin(self.timed_get(self.inner.get(key, range)))
    }

    fn get_version<'a>(
        &'a self,
        key: &'a str,
        range: Range<u64>,
        etag: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Bytes>> {
        Box::pin(self.timed_get(self.inner.get_version(key, range, etag)))
    }

    fn beside(&self, other: DynStore) -> DynStore {
        Arc::new(Instrumented {
            inner: other,
            metrics: self.metrics.clone(),
            upload: self.upload.clone(),
            download: self.download.clone(),
        })
    }

    fn put<'a>(&'a self, key: &'a str, data: Body) -> BoxFuture<'a, Result<()>> {
        let len = data.len() as u64;
        Box::pin(self.timed_put(len, self.inner.put(key, data)))
    }

    /// Each part waits for the upload limit and is counted as it goes by.
    fn put_multipart<'a>(
        &'a self,
        key: &'a str,
        parts: PartStream<'a>,
    ) -> BoxFuture<'a, Result<()>> {
        use futures::StreamExt;
        let metered = parts.then(move |part| async move {
            if let Ok(b) = &part {
                self.throttle(&self.upload, "upload", b.len() as u64).await;
                self.metrics
                    .object_bytes
                    .get_or_create(&[("method", "put")])
                    .inc_by(b.len() as u64);
            }
            part
        });
        Box::pin(async move {
            let started = Instant::now();
            let r = self.inner.put_multipart(key, Box::pin(metered)).await;
            self.observe("put", started, &r);
            r
        })
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectInfo>> {
        Box::pin(async move {
            let started = Instant::now();
            let r = self.inner.head(key).await;
            self.observe("head", started, &r);
            r
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<ObjectInfo>>> {
        Box::pin(async move {
            let started = Instant::now();
            let r = self.inner.list(prefix).await;
            self.observe("list", started, &r);
            r
        })
    }

    fn list_dir<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<crate::Listing>> {
        Box::pin(async move {
            let started = Instant::now();
            let r = self.inner.list_dir(prefix).await;
            self.observe("list", started, &r);
            r
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let started = Instant::now();
            let r = self.inner.delete(key).await;
            self.observe("delete", started, &r);
            r
        })
    }

    fn counters(&self) -> &RequestCounters {
        self.inner.counters()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{open_store, StorageOptions};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn upload_limit_holds_within_ten_percent() {
        // 16 Mbit/s = 2 MB/s; push 10 seconds' worth from 4 tasks at once.
        let metrics = Arc::new(Metrics::new());
        let store = Instrumented::wrap(
            open_store("mem://", &StorageOptions::default()).expect("mem store"),
            metrics.clone(),
            RateLimiter::from_mbps(16.0),
            None,
        );
        let started = Instant::now();
        let tasks: Vec<_> = (0..4)
            .map(|t| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in 0..5 {
                        let key = format!("k{t}_{i}");
                        store
                            .put(&key, Bytes::from(vec![0u8; 1_000_000]).into())
                            .await
                            .expect("put");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        let secs = started.elapsed().as_secs_f64();
        let rate = 20_000_000.0 / secs;
        assert!(
            (1_800_000.0..=2_200_000.0).contains(&rate),
            "20 MB in {secs:.2}s = {rate:.0} B/s, limit 2,000,000"
        );
        let text = metrics.render();
        assert!(
            text.contains("tessera_object_request_seconds_count{method=\"put\"} 20"),
            "{text}"
        );
    }
}
