//! Block caches. Blocks are immutable and named by their object key, so a
//! cached copy is never stale.
//!
//! For now this is the memory tier: a size-bounded map evicted in insertion
//! order (a CLOCK-like FIFO). The disk tier, checksums and pluggable eviction
//! come with the data-path work.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;

/// Hit and miss counters of one cache.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub hit_bytes: AtomicU64,
    pub inserts: AtomicU64,
    pub evictions: AtomicU64,
}

struct Inner {
    map: HashMap<String, Bytes>,
    order: VecDeque<String>,
    used: usize,
}

/// A bounded in-memory cache of whole blocks.
pub struct MemCache {
    capacity: usize,
    inner: Mutex<Inner>,
    pub stats: CacheStats,
}

impl MemCache {
    pub fn new(capacity: usize) -> Self {
        MemCache {
            capacity,
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                order: VecDeque::new(),
                used: 0,
            }),
            stats: CacheStats::default(),
        }
    }

    pub fn get(&self, key: &str) -> Option<Bytes> {
        let found = self.inner.lock().ok().and_then(|i| i.map.get(key).cloned());
        match &found {
            Some(b) => {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .hit_bytes
                    .fetch_add(b.len() as u64, Ordering::Relaxed);
            }
            None => {
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
            }
        }
        found
    }

    pub fn insert(&self, key: &str, data: Bytes) {
        if data.len() > self.capacity {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if inner.map.contains_key(key) {
            return;
        }
        while inner.used + data.len() > self.capacity {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if let Some(b) = inner.map.remove(&old) {
                inner.used -= b.len();
                self.stats.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        inner.used += data.len();
        inner.order.push_back(key.to_string());
        inner.map.insert(key.to_string(), data);
        self.stats.inserts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn remove(&self, key: &str) {
        if let Ok(mut inner) = self.inner.lock() {
            if let Some(b) = inner.map.remove(key) {
                inner.used -= b.len();
                inner.order.retain(|k| k != key);
            }
        }
    }

    pub fn used(&self) -> usize {
        self.inner.lock().map(|i| i.used).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_under_capacity_and_counts() {
        let c = MemCache::new(10);
        c.insert("a", Bytes::from_static(b"12345"));
        c.insert("b", Bytes::from_static(b"12345"));
        assert_eq!(c.used(), 10);
        c.insert("c", Bytes::from_static(b"123"));
        assert!(c.used() <= 10);
        assert!(c.get("a").is_none(), "oldest block is evicted first");
        assert_eq!(c.get("c").as_deref(), Some(&b"123"[..]));
        assert_eq!(c.stats.hits.load(Ordering::Relaxed), 1);
        assert_eq!(c.stats.misses.load(Ordering::Relaxed), 1);
        c.insert("big", Bytes::from(vec![0u8; 11]));
        assert!(
            c.get("big").is_none(),
            "a block larger than the cache is not kept"
        );
    }
}
