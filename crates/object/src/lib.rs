//! Object storage behind one small trait.
//!
//! Everything above this crate talks to [`ObjectStore`]; the only
//! implementation, [`OpendalStore`], turns a storage URL (`file://`, `mem://`,
//! `s3://`, `oss://`, `gs://`, `azblob://`) into an OpenDAL operator with
//! retries. Keeping the trait ours lets tests wrap a store (fault injection,
//! request counting) without touching OpenDAL.
//!
//! Every request has a deadline: OpenDAL's timeouts cut a stalled attempt
//! (10 s without progress) and its retry layer tries up to four times with
//! backoff; around all of that, [`deadline_for`] bounds the request as a
//! whole, so a store that accepts connections and never answers (a frozen
//! server) ends in [`ObjectError::Timeout`] naming the object, never in a
//! reader blocked for good.

pub mod faults;
mod instrument;
mod url_parse;

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use opendal::layers::{RetryLayer, TimeoutLayer};
use opendal::Operator;

pub use instrument::{Instrumented, RateLimiter};
pub use url_parse::{StorageOptions, StorageUrl};

/// A boxed future, so the trait stays object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The parts of a large upload, produced as they are sent, so an object of
/// any size is never held in memory whole (a read error ends the upload).
pub type PartStream<'a> = Pin<Box<dyn futures::Stream<Item = std::io::Result<Bytes>> + Send + 'a>>;

/// Errors of the object storage layer.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("object not found: {0}")]
    NotFound(String),
    #[error("invalid storage URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("reading the data for {key:?} failed: {source}")]
    Source {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("object storage {op} {key:?} failed: {source}")]
    Backend {
        op: &'static str,
        key: String,
        #[source]
        source: Box<opendal::Error>,
    },
    #[error("object storage {op} {key:?} gave no answer within {after:?}")]
    Timeout {
        op: &'static str,
        key: String,
        after: Duration,
    },
    #[error("object storage {op} {key:?} failed: {reason}")]
    Injected {
        op: &'static str,
        key: String,
        reason: String,
    },
}

impl ObjectError {
    /// The store is out of space (a full local disk, or a service that
    /// says so), which applications should see as ENOSPC.
    /// The store refused a conditional read: the object is no longer the
    /// version asked for (If-Match failed).
    pub fn is_condition_not_match(&self) -> bool {
        matches!(self, ObjectError::Backend { source, .. }
            if source.kind() == opendal::ErrorKind::ConditionNotMatch)
    }

    pub fn is_no_space(&self) -> bool {
        match self {
            ObjectError::Backend { source, .. } => {
                let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
                while let Some(e) = cause {
                    if let Some(io) = e.downcast_ref::<std::io::Error>() {
                        if io.raw_os_error() == Some(libc_enospc()) {
                            return true;
                        }
                    }
                    cause = e.source();
                }
                let text = source.to_string();
                [
                    "No space left",
                    "InsufficientStorage",
                    "StorageFull",
                    "EntityTooLarge",
                ]
                .iter()
                .any(|s| text.contains(s))
            }
            ObjectError::Source { source, .. } => source.raw_os_error() == Some(libc_enospc()),
            _ => false,
        }
    }
}

/// ENOSPC, without a libc dependency for one constant (28 on every Linux).
const fn libc_enospc() -> i32 {
    28
}

pub type Result<T> = std::result::Result<T, ObjectError>;

/// What a listing or a head request says about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    /// Seconds since the epoch, when the store reports it.
    pub mtime: Option<i64>,
}

/// One level of a listing: the objects directly under a prefix, and the
/// deeper prefixes ("directories", each ending in `/`) below it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub objects: Vec<ObjectInfo>,
    pub prefixes: Vec<String>,
}

impl Listing {
    /// One level of a recursive listing of `prefix`.
    pub fn one_level(prefix: &str, all: Vec<ObjectInfo>) -> Listing {
        let mut out = Listing::default();
        for o in all {
            let Some(rest) = o.key.strip_prefix(prefix) else {
                continue;
            };
            match rest.find('/') {
                Some(i) => {
                    let dir = format!("{prefix}{}", &rest[..=i]);
                    if out.prefixes.last() != Some(&dir) && !out.prefixes.contains(&dir) {
                        out.prefixes.push(dir);
                    }
                }
                None if !rest.is_empty() => out.objects.push(o),
                None => {}
            }
        }
        out
    }
}

/// Request counters, so tests and metrics can prove what went to the store.
#[derive(Debug, Default)]
pub struct RequestCounters {
    pub gets: AtomicU64,
    pub puts: AtomicU64,
    pub heads: AtomicU64,
    pub lists: AtomicU64,
    pub deletes: AtomicU64,
    pub get_bytes: AtomicU64,
    pub put_bytes: AtomicU64,
}

/// The body of an upload: one buffer or several sent back to back (a
/// block and its checksum trailer go out without being joined in memory).
#[derive(Debug, Clone, Default)]
pub struct Body(pub Vec<Bytes>);

impl Body {
    pub fn len(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        Body(vec![b])
    }
}

/// How long one attempt may go without progress, unless the options say.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The deadline of a whole request moving `len` bytes, retries included,
/// when one attempt may stall for `attempt`: six attempts' worth, plus a
/// second per MiB (a floor of 1 MiB/s for large bodies).
pub fn deadline_for(attempt: Duration, len: u64) -> Duration {
    attempt * 6 + Duration::from_secs(len >> 20)
}

/// Run a request under its deadline.
async fn within<T>(
    attempt: Duration,
    op: &'static str,
    key: &str,
    len: u64,
    request: impl Future<Output = Result<T>>,
) -> Result<T> {
    let after = deadline_for(attempt, len);
    match tokio::time::timeout(after, request).await {
        Ok(r) => r,
        Err(_) => Err(ObjectError::Timeout {
            op,
            key: key.to_string(),
            after,
        }),
    }
}

/// The operations Tessera needs from an object store.
pub trait ObjectStore: Send + Sync + fmt::Debug {
    /// A human readable description (scheme, bucket, prefix), never credentials.
    fn describe(&self) -> String;
    /// Read a whole object, or a byte range of it.
    fn get<'a>(&'a self, key: &'a str, range: Option<Range<u64>>) -> BoxFuture<'a, Result<Bytes>>;
    /// Read bytes of an object only if it is still the version `etag`
    /// names (If-Match); a changed object is an error, never other bytes.
    /// Stores without ETags (a local directory) read it plainly.
    fn get_version<'a>(
        &'a self,
        key: &'a str,
        range: Range<u64>,
        etag: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Bytes>> {
        let _ = etag;
        self.get(key, Some(range))
    }
    /// Store an object in one request.
    fn put<'a>(&'a self, key: &'a str, data: Body) -> BoxFuture<'a, Result<()>>;
    /// Store a large object from parts read as they go, uploaded
    /// concurrently (multipart where the service has it).
    fn put_multipart<'a>(
        &'a self,
        key: &'a str,
        parts: PartStream<'a>,
    ) -> BoxFuture<'a, Result<()>>;
    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectInfo>>;
    /// Every object whose key starts with `prefix`, recursively.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<ObjectInfo>>>;
    /// One level under `prefix` (empty, or ending in `/`): the objects
    /// there and the prefixes below, as a listing with a `/` delimiter
    /// gives them, without walking deeper.
    fn list_dir<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Listing>> {
        Box::pin(async move { Ok(Listing::one_level(prefix, self.list(prefix).await?)) })
    }
    /// Delete an object; deleting a missing object is not an error.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<()>>;
    fn counters(&self) -> &RequestCounters;
    /// Another store (an imported object's bucket) dressed as this one is:
    /// the same request metrics and rate limits. Plain stores return it as
    /// it is.
    fn beside(&self, other: DynStore) -> DynStore {
        other
    }
}

pub type DynStore = Arc<dyn ObjectStore>;

/// Size of the parts of a multipart upload (S3 wants at least 5 MiB).
const MULTIPART_PART: usize = 8 << 20;

impl OpendalStore {
    /// Listed objects with their sizes and times. Some services (a local
    /// directory) list names only: each such object is asked for them.
    async fn described(
        &self,
        entries: impl Iterator<Item = opendal::Entry>,
    ) -> Result<Vec<ObjectInfo>> {
        let mut out = Vec::new();
        for e in entries {
            let meta = if e.metadata().last_modified().is_some() {
                e.metadata().clone()
            } else {
                match self.op.stat(e.path()).await {
                    Ok(m) => m,
                    // Deleted since it was listed: no longer there.
                    Err(err) if err.kind() == opendal::ErrorKind::NotFound => continue,
                    Err(err) => return Err(backend("HEAD", e.path(), err)),
                }
            };
            out.push(ObjectInfo {
                key: e.path().to_string(),
                size: meta.content_length(),
                etag: meta.etag().map(str::to_string),
                mtime: meta.last_modified().map(|t| t.into_inner().as_second()),
            });
        }
        Ok(out)
    }
}

/// The OpenDAL-backed store.
pub struct OpendalStore {
    op: Operator,
    url: StorageUrl,
    counters: RequestCounters,
    /// How long one attempt may stall (see [`deadline_for`]).
    attempt: Duration,
}

impl fmt::Debug for OpendalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpendalStore")
            .field("url", &self.url.redacted())
            .finish()
    }
}

fn backend(op: &'static str, key: &str, source: opendal::Error) -> ObjectError {
    if source.kind() == opendal::ErrorKind::NotFound {
        ObjectError::NotFound(key.to_string())
    } else {
        ObjectError::Backend {
            op,
            key: key.to_string(),
            source: Box::new(source),
        }
    }
}

/// A response body (a rope of network chunks) as one buffer. Bodies of a
/// page or more go to a recycled page-aligned buffer: no fresh pages to
/// fault in per block, and the disk cache can write it with O_DIRECT. A
/// body that is already one piece is kept as it is.
fn contiguous(body: opendal::Buffer) -> Bytes {
    if opendal::Buffer::count(&body) <= 1 || body.len() < tessera_buf::ALIGN {
        return body.to_bytes();
    }
    match tessera_buf::AlignedBuf::copy_of(body.clone()) {
        Ok(buf) => buf.freeze(),
        Err(_) => body.to_bytes(),
    }
}

impl OpendalStore {
    /// One GET: the whole object or a range, of the version `etag` names
    /// where the service can check it (If-Match).
    async fn read(
        &self,
        key: &str,
        range: Option<Range<u64>>,
        etag: Option<&str>,
    ) -> Result<Bytes> {
        self.counters.gets.fetch_add(1, Ordering::Relaxed);
        // A whole-object GET is taken to be a block's worth for its deadline.
        let expected = range.as_ref().map(|r| r.end - r.start).unwrap_or(4 << 20);
        let mut req = self.op.read_with(key);
        if let Some(r) = range {
            req = req.range(r);
        }
        if let Some(etag) = etag {
            // Services without If-Match (a local directory) cannot promise
            // the version; readers check the length (and a HEAD) instead.
            if self.op.info().full_capability().read_with_if_match {
                req = req.if_match(etag);
            }
        }
        let body = within(self.attempt, "GET", key, expected, async {
            req.await.map_err(|e| backend("GET", key, e))
        })
        .await?;
        let data = contiguous(body);
        self.counters
            .get_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(data)
    }

    /// Build a store from a URL and options (flags or environment).
    pub fn open(url: &str, options: &StorageOptions) -> Result<Self> {
        let parsed = StorageUrl::parse(url)?;
        let op = parsed.operator(options)?;
        // Timeouts inside retries: a stalled request is cut and tried again,
        // with exponential backoff and jitter between attempts.
        let attempt = options.timeout.unwrap_or(DEFAULT_ATTEMPT_TIMEOUT);
        let op = op
            .layer(
                TimeoutLayer::new()
                    .with_timeout(attempt)
                    .with_io_timeout(attempt),
            )
            .layer(RetryLayer::new().with_max_times(3).with_jitter());
        Ok(Self {
            op,
            url: parsed,
            counters: RequestCounters::default(),
            attempt,
        })
    }
}

impl ObjectStore for OpendalStore {
    fn describe(&self) -> String {
        self.url.redacted()
    }

    fn get<'a>(&'a self, key: &'a str, range: Option<Range<u64>>) -> BoxFuture<'a, Result<Bytes>> {
        Box::pin(self.read(key, range, None))
    }

    fn get_version<'a>(
        &'a self,
        key: &'a str,
        range: Range<u64>,
        etag: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Bytes>> {
        Box::pin(self.read(key, Some(range), etag))
    }

    fn put<'a>(&'a self, key: &'a str, data: Body) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.counters.puts.fetch_add(1, Ordering::Relaxed);
            let len = data.len() as u64;
            within(self.attempt, "PUT", key, len, async {
                self.op
                    .write(key, opendal::Buffer::from(data.0))
                    .await
                    .map_err(|e| backend("PUT", key, e))
            })
            .await?;
            self.counters.put_bytes.fetch_add(len, Ordering::Relaxed);
            Ok(())
        })
    }

    fn put_multipart<'a>(
        &'a self,
        key: &'a str,
        mut parts: PartStream<'a>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            use futures::StreamExt;
            self.counters.puts.fetch_add(1, Ordering::Relaxed);
            let mut writer = self
                .op
                .writer_with(key)
                .chunk(MULTIPART_PART)
                .concurrent(4)
                .await
                .map_err(|e| backend("PUT", key, e))?;
            let mut total = 0u64;
            while let Some(part) = parts.next().await {
                let written = match part {
                    Ok(part) => {
                        total += part.len() as u64;
                        writer.write(part).await.map_err(|e| backend("PUT", key, e))
                    }
                    Err(source) => Err(ObjectError::Source {
                        key: key.to_string(),
                        source,
                    }),
                };
                if let Err(e) = written {
                    // Leave no uploaded parts behind where the service can
                    // abort (S3 multipart); a local directory cannot.
                    let _ = writer.abort().await;
                    return Err(e);
                }
            }
            writer.close().await.map_err(|e| backend("PUT", key, e))?;
            self.counters.put_bytes.fetch_add(total, Ordering::Relaxed);
            Ok(())
        })
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectInfo>> {
        Box::pin(async move {
            self.counters.heads.fetch_add(1, Ordering::Relaxed);
            let meta = within(self.attempt, "HEAD", key, 0, async {
                self.op.stat(key).await.map_err(|e| backend("HEAD", key, e))
            })
            .await?;
            Ok(ObjectInfo {
                key: key.to_string(),
                size: meta.content_length(),
                etag: meta.etag().map(str::to_string),
                mtime: meta.last_modified().map(|t| t.into_inner().as_second()),
            })
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<ObjectInfo>>> {
        Box::pin(async move {
            self.counters.lists.fetch_add(1, Ordering::Relaxed);
            let entries = match self.op.list_with(prefix).recursive(true).await {
                Ok(e) => e,
                Err(e) if e.kind() == opendal::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(backend("LIST", prefix, e)),
            };
            self.described(entries.into_iter().filter(|e| !e.path().ends_with('/')))
                .await
        })
    }

    fn list_dir<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Listing>> {
        Box::pin(async move {
            self.counters.lists.fetch_add(1, Ordering::Relaxed);
            let entries = match self.op.list_with(prefix).recursive(false).await {
                Ok(e) => e,
                Err(e) if e.kind() == opendal::ErrorKind::NotFound => return Ok(Listing::default()),
                Err(e) => return Err(backend("LIST", prefix, e)),
            };
            let (dirs, objects): (Vec<_>, Vec<_>) = entries
                .into_iter()
                .filter(|e| e.path() != prefix && e.path() != "/")
                .partition(|e| e.path().ends_with('/'));
            Ok(Listing {
                objects: self.described(objects.into_iter()).await?,
                prefixes: dirs.into_iter().map(|e| e.path().to_string()).collect(),
            })
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.counters.deletes.fetch_add(1, Ordering::Relaxed);
            within(self.attempt, "DELETE", key, 0, async {
                match self.op.delete(key).await {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(backend("DELETE", key, e)),
                }
            })
            .await
        })
    }

    fn counters(&self) -> &RequestCounters {
        &self.counters
    }
}

/// Open a store from a URL.
pub fn open_store(url: &str, options: &StorageOptions) -> Result<DynStore> {
    Ok(Arc::new(OpendalStore::open(url, options)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn memory_store_round_trip() {
        let store = open_store("mem://", &StorageOptions::default()).expect("open");
        rt().block_on(async {
            store
                .put("a/b", Bytes::from_static(b"hello world").into())
                .await
                .expect("put");
            let all = store.get("a/b", None).await.expect("get");
            assert_eq!(&all[..], b"hello world");
            let part = store.get("a/b", Some(6..11)).await.expect("range");
            assert_eq!(&part[..], b"world");
            let info = store.head("a/b").await.expect("head");
            assert_eq!(info.size, 11);
            let listed = store.list("a/").await.expect("list");
            assert_eq!(listed.len(), 1);
            assert_eq!(listed[0].key, "a/b");
            store.delete("a/b").await.expect("delete");
            store.delete("a/b").await.expect("delete missing is fine");
            assert!(matches!(
                store.get("a/b", None).await,
                Err(ObjectError::NotFound(_))
            ));
            assert_eq!(store.counters().puts.load(Ordering::Relaxed), 1);
        });
    }

    #[test]
    fn one_level_listings_give_objects_and_deeper_prefixes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file_url = format!("file://{}", dir.path().display());
        for url in ["mem://", file_url.as_str()] {
            let store = open_store(url, &StorageOptions::default()).expect("open");
            rt().block_on(async {
                for key in ["top", "a/one", "a/b/deep", "a/b/c/deeper", "a/two", "z/x"] {
                    store
                        .put(key, Bytes::from(key.as_bytes().to_vec()).into())
                        .await
                        .expect("put");
                }
                let keys = |l: &Listing| {
                    let mut k: Vec<String> = l.objects.iter().map(|o| o.key.clone()).collect();
                    k.sort();
                    k
                };
                let sorted = |mut v: Vec<String>| {
                    v.sort();
                    v
                };
                let root = store.list_dir("").await.expect("root");
                assert_eq!(keys(&root), ["top"], "{url}");
                assert_eq!(sorted(root.prefixes), ["a/", "z/"], "{url}");
                let a = store.list_dir("a/").await.expect("a/");
                assert_eq!(keys(&a), ["a/one", "a/two"], "{url}");
                assert_eq!(a.prefixes, ["a/b/"], "{url}");
                assert_eq!(a.objects[0].size, 5, "{url}: sizes are listed");
                let missing = store.list_dir("nothing/").await.expect("missing");
                assert_eq!(missing, Listing::default(), "{url}");
            });
        }
        // The fallback over a recursive listing gives the same.
        let all = ["a/x", "a/b/y", "a/b/z", "a/c/d/e", "b"]
            .iter()
            .map(|k| ObjectInfo {
                key: k.to_string(),
                size: 1,
                etag: None,
                mtime: None,
            })
            .collect();
        let l = Listing::one_level("a/", all);
        assert_eq!(l.objects.len(), 1);
        assert_eq!(l.prefixes, ["a/b/", "a/c/"]);
    }

    #[test]
    fn file_store_multipart() {
        // Removed when the test ends, passed or not.
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("file://{}", dir.path().display());
        let store = open_store(&url, &StorageOptions::default()).expect("open");
        rt().block_on(async {
            let parts = vec![
                Ok(Bytes::from(vec![1u8; 6 << 20])),
                Ok(Bytes::from(vec![2u8; 100])),
            ];
            let parts = Box::pin(futures::stream::iter(parts));
            store.put_multipart("big", parts).await.expect("multipart");
            let data = store.get("big", None).await.expect("get");
            assert_eq!(data.len(), (6 << 20) + 100);
            assert_eq!(data[(6 << 20) + 1], 2);
            // A part that cannot be read ends the upload with an error
            // naming the key.
            let parts = vec![
                Ok(Bytes::from(vec![1u8; 100])),
                Err(std::io::Error::other("disk on fire")),
            ];
            let e = store
                .put_multipart("broken", Box::pin(futures::stream::iter(parts)))
                .await
                .expect_err("read error");
            assert!(e.to_string().contains("\"broken\"") && e.to_string().contains("disk on fire"));
        });
    }

    #[test]
    fn a_frozen_server_ends_in_an_error_within_the_deadline() {
        // A server that takes connections and never answers, as a stopped
        // (SIGSTOP) or wedged S3 server does.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let held = std::thread::spawn(move || {
            let mut conns = Vec::new();
            for c in listener.incoming().take(16) {
                conns.push(c);
            }
        });
        let opts = StorageOptions {
            endpoint: Some(format!("http://{addr}")),
            access_key: Some("k".into()),
            secret_key: Some("s".into()),
            region: Some("us-east-1".into()),
            timeout: Some(Duration::from_millis(500)),
            ..Default::default()
        };
        let store = open_store("s3://bucket/prefix", &opts).expect("open");
        let started = std::time::Instant::now();
        let deadline = deadline_for(Duration::from_millis(500), 4 << 20);
        let rt = rt();
        let got = rt.block_on(store.get("vol/chunks/0/0/1_0_10", None));
        let took = started.elapsed();
        let err = got.expect_err("a frozen server gives no data").to_string();
        assert!(
            err.contains("vol/chunks/0/0/1_0_10"),
            "names the object: {err}"
        );
        assert!(took <= deadline + Duration::from_secs(5), "took {took:?}");
        let put = rt.block_on(store.put("k", Bytes::from_static(b"x").into()));
        assert!(put.is_err());
        drop(held);
    }
}
