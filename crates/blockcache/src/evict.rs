//! Eviction policies shared by the memory and disk tiers.
//!
//! A policy only orders keys; the cache owns the entries and their sizes and
//! asks the policy for a victim while it is over its quota.
//!
//! * `2-random` samples two cached blocks and evicts the one used longer
//!   ago: O(1), no list to maintain, close to LRU on large caches.
//! * `lru` evicts the least recently used block.
//! * `s3fifo` (Yang et al., SOSP '23): new blocks enter a small FIFO; those
//!   read again move to the main FIFO, the rest leave early (one-hit wonders
//!   such as a checkpoint streamed once do not flush the working set); keys
//!   recently evicted from the small queue go straight to main on return.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::str::FromStr;
use std::sync::Arc;

/// The eviction policy of a cache tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Eviction {
    #[default]
    TwoRandom,
    Lru,
    S3Fifo,
}

impl FromStr for Eviction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "2-random" => Ok(Eviction::TwoRandom),
            "lru" => Ok(Eviction::Lru),
            "s3fifo" => Ok(Eviction::S3Fifo),
            other => Err(format!(
                "unknown cache eviction policy {other:?}: use 2-random, lru or s3fifo"
            )),
        }
    }
}

pub(crate) type Key = Arc<str>;

/// Orders cached keys for eviction.
pub(crate) trait Policy: Send {
    fn insert(&mut self, key: Key);
    fn touch(&mut self, key: &str);
    fn remove(&mut self, key: &str);
    /// The next key to evict; it is forgotten by the policy.
    fn victim(&mut self) -> Option<Key>;
}

pub(crate) fn new_policy(e: Eviction) -> Box<dyn Policy> {
    match e {
        Eviction::TwoRandom => Box::new(TwoRandom::default()),
        Eviction::Lru => Box::new(Lru::default()),
        Eviction::S3Fifo => Box::new(S3Fifo::default()),
    }
}

/// A small xorshift generator: sampling victims needs speed, not quality.
struct Rng(u64);

impl Default for Rng {
    fn default() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        Rng(seed | 1)
    }
}

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

#[derive(Default)]
struct TwoRandom {
    keys: Vec<Key>,
    /// Position in `keys` and the tick of the last use.
    slots: HashMap<Key, (usize, u64)>,
    tick: u64,
    rng: Rng,
}

impl TwoRandom {
    fn take(&mut self, pos: usize) -> Key {
        let key = self.keys.swap_remove(pos);
        self.slots.remove(&key);
        if let Some(moved) = self.keys.get(pos) {
            if let Some(slot) = self.slots.get_mut(moved) {
                slot.0 = pos;
            }
        }
        key
    }
}

impl Policy for TwoRandom {
    fn insert(&mut self, key: Key) {
        self.tick += 1;
        if let Some(slot) = self.slots.get_mut(&key) {
            slot.1 = self.tick;
            return;
        }
        self.slots.insert(key.clone(), (self.keys.len(), self.tick));
        self.keys.push(key);
    }

    fn touch(&mut self, key: &str) {
        self.tick += 1;
        if let Some(slot) = self.slots.get_mut(key) {
            slot.1 = self.tick;
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some(&(pos, _)) = self.slots.get(key) {
            self.take(pos);
        }
    }

    fn victim(&mut self) -> Option<Key> {
        if self.keys.is_empty() {
            return None;
        }
        let (a, b) = (
            self.rng.below(self.keys.len()),
            self.rng.below(self.keys.len()),
        );
        let used = |k: &Key| self.slots.get(k).map(|s| s.1).unwrap_or(0);
        let pos = if used(&self.keys[a]) <= used(&self.keys[b]) {
            a
        } else {
            b
        };
        Some(self.take(pos))
    }
}

#[derive(Default)]
struct Lru {
    ticks: HashMap<Key, u64>,
    order: BTreeMap<u64, Key>,
    tick: u64,
}

impl Policy for Lru {
    fn insert(&mut self, key: Key) {
        self.tick += 1;
        if let Some(old) = self.ticks.insert(key.clone(), self.tick) {
            self.order.remove(&old);
        }
        self.order.insert(self.tick, key);
    }

    fn touch(&mut self, key: &str) {
        if let Some(k) = self.ticks.get_key_value(key).map(|(k, _)| k.clone()) {
            self.insert(k);
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some(t) = self.ticks.remove(key) {
            self.order.remove(&t);
        }
    }

    fn victim(&mut self) -> Option<Key> {
        let (_, key) = self.order.pop_first()?;
        self.ticks.remove(&key);
        Some(key)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Queue {
    Small,
    Main,
}

#[derive(Default)]
struct S3Fifo {
    small: VecDeque<Key>,
    main: VecDeque<Key>,
    /// Queue and access frequency (0..=3) of every live key. Removed keys
    /// are dropped from here and skipped lazily when popped.
    live: HashMap<Key, (Queue, u8)>,
    ghost: HashSet<Key>,
    ghost_order: VecDeque<Key>,
    small_count: usize,
}

impl S3Fifo {
    fn remember_ghost(&mut self, key: Key) {
        if self.ghost.insert(key.clone()) {
            self.ghost_order.push_back(key);
        }
        while self.ghost_order.len() > self.live.len().max(16) {
            if let Some(old) = self.ghost_order.pop_front() {
                self.ghost.remove(&old);
            }
        }
    }
}

impl Policy for S3Fifo {
    fn insert(&mut self, key: Key) {
        if self.live.contains_key(&key) {
            self.touch(&key);
            return;
        }
        if self.ghost.remove(&key) {
            self.live.insert(key.clone(), (Queue::Main, 0));
            self.main.push_back(key);
        } else {
            self.live.insert(key.clone(), (Queue::Small, 0));
            self.small.push_back(key);
            self.small_count += 1;
        }
    }

    fn touch(&mut self, key: &str) {
        if let Some((_, f)) = self.live.get_mut(key) {
            *f = (*f + 1).min(3);
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some((Queue::Small, _)) = self.live.remove(key) {
            self.small_count -= 1;
        }
    }

    fn victim(&mut self) -> Option<Key> {
        // Bounded: every pass either evicts, moves a key to main, or lowers
        // a frequency, and frequencies are at most 3.
        let budget = 8 * (self.small.len() + self.main.len()) + 8;
        for _ in 0..budget {
            let from_small = self.small_count * 10 >= self.live.len() && !self.small.is_empty()
                || self.main.is_empty();
            let queue = if from_small {
                &mut self.small
            } else {
                &mut self.main
            };
            let key = queue.pop_front()?;
            let Some(&(q, freq)) = self.live.get(&key) else {
                continue; // removed earlier
            };
            if (q == Queue::Small) != from_small {
                continue; // a stale copy left behind by a move
            }
            if freq > 0 {
                if from_small {
                    self.small_count -= 1;
                    self.live.insert(key.clone(), (Queue::Main, 0));
                } else {
                    self.live.insert(key.clone(), (Queue::Main, freq - 1));
                }
                self.main.push_back(key);
                continue;
            }
            self.live.remove(&key);
            if from_small {
                self.small_count -= 1;
                self.remember_ghost(key.clone());
            }
            return Some(key);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> Key {
        Arc::from(s)
    }

    fn drain(p: &mut dyn Policy) -> Vec<String> {
        std::iter::from_fn(|| p.victim().map(|k| k.to_string())).collect()
    }

    #[test]
    fn parses_names_and_rejects_others() {
        assert_eq!("2-random".parse(), Ok(Eviction::TwoRandom));
        assert_eq!("lru".parse(), Ok(Eviction::Lru));
        assert_eq!("s3fifo".parse(), Ok(Eviction::S3Fifo));
        let err = "fifo".parse::<Eviction>().unwrap_err();
        assert!(err.contains("\"fifo\""), "{err}");
    }

    #[test]
    fn lru_evicts_least_recently_used() {
        let mut p = new_policy(Eviction::Lru);
        for s in ["a", "b", "c"] {
            p.insert(k(s));
        }
        p.touch("a");
        p.remove("c");
        assert_eq!(drain(p.as_mut()), ["b", "a"]);
    }

    #[test]
    fn every_policy_yields_each_live_key_once() {
        for e in [Eviction::TwoRandom, Eviction::Lru, Eviction::S3Fifo] {
            let mut p = new_policy(e);
            for i in 0..100 {
                p.insert(k(&i.to_string()));
                if i % 3 == 0 {
                    p.touch(&i.to_string());
                }
            }
            p.remove("42");
            let mut got = drain(p.as_mut());
            got.sort();
            got.dedup();
            assert_eq!(got.len(), 99, "{e:?}");
            assert!(!got.contains(&"42".to_string()), "{e:?}");
        }
    }

    #[test]
    fn two_random_prefers_the_older_of_its_samples() {
        let mut p = TwoRandom::default();
        p.insert(k("old"));
        p.insert(k("new"));
        for _ in 0..10 {
            p.touch("new");
        }
        // With two keys, a sample either holds both (old loses) or one key
        // twice; over many rounds "old" must go first far more often.
        let mut old_first = 0;
        for _ in 0..200 {
            let mut q = TwoRandom::default();
            q.insert(k("old"));
            q.insert(k("new"));
            q.touch("new");
            if q.victim().as_deref() == Some("old") {
                old_first += 1;
            }
        }
        assert!(old_first > 120, "old evicted first {old_first}/200 times");
        assert!(p.victim().is_some());
    }

    #[test]
    fn s3fifo_keeps_reused_blocks_over_one_hit_wonders() {
        let mut p = new_policy(Eviction::S3Fifo);
        for i in 0..10 {
            p.insert(k(&format!("hot{i}")));
            p.touch(&format!("hot{i}"));
        }
        for i in 0..50 {
            p.insert(k(&format!("scan{i}")));
        }
        let first: Vec<String> = (0..45)
            .filter_map(|_| p.victim())
            .map(|k| k.to_string())
            .collect();
        assert!(
            first.iter().all(|s| s.starts_with("scan")),
            "a one-pass scan is evicted before reused blocks: {first:?}"
        );
    }
}
