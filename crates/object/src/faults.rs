//! A store that misbehaves on purpose, for tests of the layers above:
//! it fails chosen calls, returns short or altered bodies, stalls, or
//! hangs, and passes every other call to the store it wraps.
//!
//! Calls are counted per method from 1, so a rule such as "the 3rd GET
//! fails" is deterministic for a test that drives one request at a time;
//! a rule may also be limited to keys containing a string.

use parking_lot::Mutex;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::{
    Body, BoxFuture, DynStore, ObjectError, ObjectInfo, ObjectStore, PartStream, RequestCounters,
    Result,
};

/// The methods a rule can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
    Head,
    Delete,
}

/// What happens to a call a rule matches.
#[derive(Debug, Clone)]
pub enum Fault {
    /// The call fails with an error naming the object.
    Fail,
    /// The call fails as a full disk does (ENOSPC).
    NoSpace,
    /// A GET returns its body less its last byte.
    Short,
    /// A GET returns its body with one byte flipped (the same length).
    Flip,
    /// The call waits this long, then goes through.
    Delay(Duration),
    /// The call never answers.
    Hang,
}

#[derive(Debug, Clone)]
struct Rule {
    method: Method,
    /// Calls of the method (counted from 1) that the rule takes: `first`
    /// and the `count - 1` after it.
    first: u64,
    count: u64,
    key_contains: Option<String>,
    fault: Fault,
}

/// The misbehaving store.
#[derive(Debug)]
pub struct Faulty {
    inner: DynStore,
    rules: Mutex<Vec<Rule>>,
    calls: [AtomicU64; 4],
    /// Calls a rule took, all methods together.
    pub injected: AtomicU64,
}

impl Faulty {
    pub fn wrap(inner: DynStore) -> Arc<Faulty> {
        Arc::new(Faulty {
            inner,
            rules: Mutex::new(Vec::new()),
            calls: Default::default(),
            injected: AtomicU64::new(0),
        })
    }

    /// Apply `fault` to calls `first ..= first + count - 1` of `method`
    /// (counted from 1 over the store's life) whose key contains
    /// `key_contains`, if given.
    pub fn inject(
        &self,
        method: Method,
        first: u64,
        count: u64,
        key_contains: Option<&str>,
        fault: Fault,
    ) {
        {
            let mut r = self.rules.lock();
            r.push(Rule {
                method,
                first,
                count,
                key_contains: key_contains.map(str::to_string),
                fault,
            });
        }
    }

    /// Apply `fault` to every later call of `method` (on keys containing
    /// `key_contains`, if given).
    pub fn always(&self, method: Method, key_contains: Option<&str>, fault: Fault) {
        let next = self.calls(method) + 1;
        self.inject(method, next, u64::MAX - next, key_contains, fault);
    }

    /// Drop every rule: the store behaves from now on.
    pub fn heal(&self) {
        {
            let mut r = self.rules.lock();
            r.clear();
        }
    }

    /// Calls of `method` so far.
    pub fn calls(&self, method: Method) -> u64 {
        self.calls[method as usize].load(Ordering::Relaxed)
    }

    /// Count a call and find the fault, if any, that it meets.
    fn fault_for(&self, method: Method, key: &str) -> Option<Fault> {
        let n = self.calls[method as usize].fetch_add(1, Ordering::Relaxed) + 1;
        let rules = self.rules.lock();
        let hit = rules.iter().find(|r| {
            r.method == method
                && n >= r.first
                && n - r.first < r.count
                && r.key_contains.as_deref().is_none_or(|s| key.contains(s))
        })?;
        self.injected.fetch_add(1, Ordering::Relaxed);
        Some(hit.fault.clone())
    }
}

fn injected(op: &'static str, key: &str) -> ObjectError {
    ObjectError::Injected {
        op,
        key: key.to_string(),
        reason: "injected failure".into(),
    }
}

/// Wait or hang as a fault says; then the error the call ends in, if any.
async fn stall(fault: &Option<Fault>, op: &'static str, key: &str) -> Result<()> {
    match fault {
        Some(Fault::Delay(d)) => {
            tokio::time::sleep(*d).await;
            Ok(())
        }
        Some(Fault::Hang) => futures::future::pending().await,
        Some(Fault::Fail) => Err(injected(op, key)),
        Some(Fault::NoSpace) => Err(ObjectError::Source {
            key: key.to_string(),
            source: std::io::Error::from_raw_os_error(28),
        }),
        _ => Ok(()),
    }
}

impl ObjectStore for Faulty {
    fn describe(&self) -> String {
        format!("faulty {}", self.inner.describe())
    }

    fn get<'a>(&'a self, key: &'a str, range: Option<Range<u64>>) -> BoxFuture<'a, Result<Bytes>> {
        Box::pin(async move {
            let fault = self.fault_for(Method::Get, key);
            stall(&fault, "GET", key).await?;
            let body = self.inner.get(key, range).await?;
            Ok(match fault {
                Some(Fault::Short) if !body.is_empty() => body.slice(..body.len() - 1),
                Some(Fault::Flip) if !body.is_empty() => {
                    let mut v = body.to_vec();
                    let at = v.len() / 2;
                    v[at] ^= 0x40;
                    Bytes::from(v)
                }
                _ => body,
            })
        })
    }

    fn put<'a>(&'a self, key: &'a str, data: Body) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let fault = self.fault_for(Method::Put, key);
            stall(&fault, "PUT", key).await?;
            self.inner.put(key, data).await
        })
    }

    fn put_multipart<'a>(
        &'a self,
        key: &'a str,
        parts: PartStream<'a>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let fault = self.fault_for(Method::Put, key);
            stall(&fault, "PUT", key).await?;
            self.inner.put_multipart(key, parts).await
        })
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectInfo>> {
        Box::pin(async move {
            let fault = self.fault_for(Method::Head, key);
            stall(&fault, "HEAD", key).await?;
            self.inner.head(key).await
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<ObjectInfo>>> {
        self.inner.list(prefix)
    }

    fn list_dir<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<crate::Listing>> {
        self.inner.list_dir(prefix)
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let fault = self.fault_for(Method::Delete, key);
            stall(&fault, "DELETE", key).await?;
            self.inner.delete(key).await
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

    #[tokio::test]
    async fn rules_take_the_calls_they_name() {
        let store = Faulty::wrap(open_store("mem://", &StorageOptions::default()).expect("mem"));
        store
            .put("k", Bytes::from_static(b"abcdef").into())
            .await
            .expect("put");
        store.inject(Method::Get, 2, 1, None, Fault::Fail);
        store.inject(Method::Get, 3, 1, None, Fault::Flip);
        store.inject(Method::Get, 4, 1, Some("k"), Fault::Short);
        assert_eq!(&store.get("k", None).await.expect("1st")[..], b"abcdef");
        assert!(store.get("k", None).await.is_err(), "2nd fails");
        let flipped = store.get("k", None).await.expect("3rd");
        assert_eq!(flipped.len(), 6);
        assert_ne!(&flipped[..], b"abcdef");
        assert_eq!(&store.get("k", None).await.expect("4th")[..], b"abcde");
        assert_eq!(&store.get("k", None).await.expect("5th")[..], b"abcdef");
        store.always(Method::Get, None, Fault::Hang);
        let hung = tokio::time::timeout(Duration::from_millis(50), store.get("k", None)).await;
        assert!(hung.is_err(), "a hung call never answers");
        store.heal();
        assert!(store.get("k", None).await.is_ok());
        assert_eq!(store.injected.load(Ordering::Relaxed), 4);
    }
}
