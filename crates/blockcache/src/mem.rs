//! The memory tier: whole blocks in a size-bounded map.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tessera_metrics::{tier, Metrics};

use crate::evict::{new_policy, Eviction, Key, Policy};

struct Inner {
    map: HashMap<Key, Bytes>,
    policy: Box<dyn Policy>,
    used: usize,
}

/// A bounded in-memory cache of whole blocks.
pub struct MemCache {
    capacity: usize,
    inner: Mutex<Inner>,
    metrics: Arc<Metrics>,
}

impl MemCache {
    pub fn new(capacity: usize, eviction: Eviction, metrics: Arc<Metrics>) -> Self {
        MemCache {
            capacity,
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                policy: new_policy(eviction),
                used: 0,
            }),
            metrics,
        }
    }

    pub fn get(&self, key: &str) -> Option<Bytes> {
        let mut inner = self.inner.lock();
        let found = inner.map.get(key).cloned();
        if found.is_some() {
            inner.policy.touch(key);
        }
        found
    }

    /// Whether a block is cached, without counting it as a use.
    pub fn contains(&self, key: &str) -> bool {
        self.inner.lock().map.contains_key(key)
    }

    pub fn insert(&self, key: &str, data: Bytes) {
        if data.len() > self.capacity {
            return;
        }
        let mut inner = self.inner.lock();
        if inner.map.contains_key(key) {
            return;
        }
        let mut evicted = 0;
        while inner.used + data.len() > self.capacity {
            let Some(old) = inner.policy.victim() else {
                break;
            };
            if let Some(b) = inner.map.remove(&old) {
                inner.used -= b.len();
                evicted += 1;
            }
        }
        let key: Key = Arc::from(key);
        inner.used += data.len();
        inner.policy.insert(key.clone());
        inner.map.insert(key, data);
        self.report(&inner, evicted);
    }

    pub fn remove(&self, key: &str) {
        {
            let mut inner = self.inner.lock();
            if let Some(b) = inner.map.remove(key) {
                inner.used -= b.len();
                inner.policy.remove(key);
                self.report(&inner, 0);
            }
        }
    }

    fn report(&self, inner: &Inner, evicted: u64) {
        self.metrics
            .cache_usage(tier::MEMORY, inner.used as u64, inner.map.len(), evicted);
    }

    pub fn used(&self) -> usize {
        self.inner.lock().used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_under_capacity() {
        let c = MemCache::new(10, Eviction::Lru, Arc::new(Metrics::new()));
        c.insert("a", Bytes::from_static(b"12345"));
        c.insert("b", Bytes::from_static(b"12345"));
        assert_eq!(c.used(), 10);
        c.get("a");
        c.insert("c", Bytes::from_static(b"123"));
        assert!(c.used() <= 10);
        assert!(c.get("b").is_none(), "least recently used block goes first");
        assert_eq!(c.get("c").as_deref(), Some(&b"123"[..]));
        assert_eq!(c.get("a").as_deref(), Some(&b"12345"[..]));
        c.insert("big", Bytes::from(vec![0u8; 11]));
        assert!(
            c.get("big").is_none(),
            "a block larger than the cache is not kept"
        );
        c.remove("a");
        assert_eq!(c.used(), 3);
    }
}
