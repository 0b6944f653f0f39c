//! The transactional key-value trait that every metadata engine implements.
//!
//! Engines only store bytes; the schema lives in `keys`, `attr` and `fs`.
//! A transaction is a closure that may run more than once: engines report a
//! conflict as [`MetaError::Conflict`] and [`run_txn`] retries it with
//! jittered backoff a bounded number of times.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::{MetaError, Result};

/// Operations available inside one transaction. Reads see the transaction's
/// own writes.
pub trait KvTxn {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<()>;
    fn delete(&mut self, key: &[u8]) -> Result<()>;
    /// Keys in `[begin, end)` in ascending order, at most `limit` of them.
    fn scan(&mut self, begin: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;

    /// Read several independent keys; engines that can answer them in one
    /// round trip do (a writing transaction still watches or locks each).
    fn get_many(&mut self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        keys.iter().map(|k| self.get(k)).collect()
    }

    /// Read `key` and, when it exists, the key its value points at:
    /// `prefix + value[at..at + len] + suffix` (a directory entry holds the
    /// inode number whose attributes a lookup wants next). Engines that can
    /// follow the pointer on the server do both in one round trip.
    fn get_follow(&mut self, key: &[u8], pointer: Pointer<'_>) -> Result<Followed> {
        follow_by_gets(self, key, pointer)
    }

    /// A directory-shaped read in one step (see [`Nested`]), for engines
    /// that can run it on the server in one round trip. `None`: this
    /// engine (or this transaction) cannot; the caller reads the same
    /// things with the plain calls.
    fn read_nested(&mut self, request: &Nested<'_>) -> Result<Option<NestedRead>> {
        let _ = request;
        Ok(None)
    }
}

/// What [`KvTxn::read_nested`] reads together: the key `head`, the rows of
/// `[begin, end)` (at most `limit`), for every row the key its value
/// points at (`follow`), and for every row whose value has the byte `tag`
/// at `tag_at`, the rows under the prefix `under` points at (all keys
/// starting with it; at most `under_limit` such rows over the whole read,
/// a row's whole set or none of it). A directory's attributes, its
/// entries, their attributes and its files' chunk records.
#[derive(Debug, Clone, Copy)]
pub struct Nested<'a> {
    pub head: &'a [u8],
    pub begin: &'a [u8],
    pub end: &'a [u8],
    pub limit: usize,
    pub follow: Pointer<'a>,
    pub under: Pointer<'a>,
    pub tag_at: usize,
    pub tag: u8,
    pub under_limit: usize,
}

/// The answer to a [`Nested`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NestedRead {
    /// The value of `head`.
    pub head: Option<Vec<u8>>,
    /// More than `limit` rows: `rows` is then empty.
    pub more: bool,
    pub rows: Vec<NestedRow>,
}

/// Keys and values, in key order.
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// One part of an engine's one-statement answer to a [`Nested`] read:
/// (part, row, key, value); see [`nested_from_parts`].
pub type NestedPart = (i16, Vec<u8>, Vec<u8>, Vec<u8>);

/// One row of a [`NestedRead`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NestedRow {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// The value of the key `follow` points at.
    pub followed: Option<Vec<u8>>,
    /// The rows under the prefix `under` points at, in key order: `None`
    /// when the row lacks the tag, or its rows did not fit `under_limit`.
    pub under: Option<Rows>,
}

/// [`KvTxn::get_follow`] as two plain reads, for engines that cannot follow
/// the pointer on the server (or not in every mode).
pub fn follow_by_gets<T: KvTxn + ?Sized>(
    tx: &mut T,
    key: &[u8],
    pointer: Pointer<'_>,
) -> Result<Followed> {
    let Some(first) = tx.get(key)? else {
        return Ok(None);
    };
    let second = match pointer.target(&first) {
        Some(k) => tx.get(&k)?,
        None => None,
    };
    Ok(Some((first, second)))
}

/// What [`KvTxn::get_follow`] found: None when the first key is absent,
/// else its value and the value it points at (None when that is absent).
pub type Followed = Option<(Vec<u8>, Option<Vec<u8>>)>;

/// Where the key of a second read sits inside a first value, for
/// [`KvTxn::get_follow`].
#[derive(Debug, Clone, Copy)]
pub struct Pointer<'a> {
    pub prefix: &'a [u8],
    pub at: usize,
    pub len: usize,
    pub suffix: &'a [u8],
}

impl Pointer<'_> {
    /// The key `value` points at, or None when it is too short.
    pub fn target(&self, value: &[u8]) -> Option<Vec<u8>> {
        let bytes = value.get(self.at..self.at + self.len)?;
        let mut k = Vec::with_capacity(self.prefix.len() + self.len + self.suffix.len());
        k.extend_from_slice(self.prefix);
        k.extend_from_slice(bytes);
        k.extend_from_slice(self.suffix);
        Some(k)
    }
}

impl Nested<'_> {
    /// Whether `value` (a row's) has the tag and is long enough to point
    /// under.
    pub fn tagged(&self, value: &[u8]) -> bool {
        value.get(self.tag_at) == Some(&self.tag) && value.len() >= self.under.at + self.under.len
    }
}

/// `suffix` with its last byte one higher: where the keys that start with
/// a prefix ending in `suffix` end. None when it is empty or ends in 0xff.
pub fn suffix_past(suffix: &[u8]) -> Option<Vec<u8>> {
    let (&last, head) = suffix.split_last()?;
    let mut past = head.to_vec();
    past.push(last.checked_add(1)?);
    Some(past)
}

/// Rows under tagged rows at most, over one [`Nested`] read, that an
/// engine answering in one statement sends (each row's set is capped at
/// `under_limit` + 1 by itself): a directory of very large files does not
/// send all their records to find that they do not fit.
pub fn nested_under_cap(request: &Nested<'_>) -> usize {
    request.under_limit.saturating_mul(4).saturating_add(1)
}

/// A [`NestedRead`] from an engine's one-statement answer: (part, row,
/// key, value), part 0 the head, 1 the rows (row = key), 2 the key a row
/// points at, 3 a row under a row's prefix, in (row, key) order and cut
/// after [`nested_under_cap`] of them; parts in any order. The budget is
/// applied here as the Redis script applies it: in row order, a row's set
/// whole while it fits, skipped when not.
pub fn nested_from_parts(
    request: &Nested<'_>,
    parts: impl Iterator<Item = NestedPart>,
) -> NestedRead {
    use std::collections::BTreeMap;
    let mut head = None;
    let mut rows = BTreeMap::new();
    let mut followed = BTreeMap::new();
    let mut under: BTreeMap<Vec<u8>, Rows> = BTreeMap::new();
    let mut under_count = 0;
    for (part, row, key, value) in parts {
        match part {
            0 => head = Some(value),
            1 => {
                rows.insert(key, value);
            }
            2 => {
                followed.insert(row, value);
            }
            _ => {
                under_count += 1;
                under.entry(row).or_default().push((key, value));
            }
        }
    }
    if rows.len() > request.limit {
        return NestedRead {
            head,
            more: true,
            rows: Vec::new(),
        };
    }
    // Cut by the cap: the last row's set may be partial, later rows' absent.
    let cut_from = (under_count >= nested_under_cap(request))
        .then(|| under.keys().next_back().cloned())
        .flatten();
    let mut budget = request.under_limit;
    let rows = rows
        .into_iter()
        .map(|(key, value)| {
            let pointed = value.len() >= request.follow.at + request.follow.len;
            let followed = followed.remove(&key).filter(|_| pointed);
            let reached = cut_from.as_ref().is_none_or(|cut| key < *cut);
            let under = if request.tagged(&value) && reached {
                let mut set = under.remove(&key).unwrap_or_default();
                set.sort();
                (set.len() <= budget).then(|| {
                    budget -= set.len();
                    set
                })
            } else {
                None
            };
            NestedRow {
                key,
                value,
                followed,
                under,
            }
        })
        .collect();
    NestedRead {
        head,
        more: false,
        rows,
    }
}

/// A metadata engine: something that runs transactions over ordered keys.
pub trait KvEngine: Send + Sync {
    /// Short name of the engine, for status output ("sqlite", "memory").
    fn name(&self) -> &'static str;
    /// Run `f` once inside a transaction. `read_only` lets the engine pick a
    /// cheaper mode. Conflicts come back as [`MetaError::Conflict`].
    fn run_once(
        &self,
        read_only: bool,
        f: &mut dyn FnMut(&mut dyn KvTxn) -> Result<()>,
    ) -> Result<()>;
    /// Remove every key (tests and `format --force` on an empty volume).
    fn reset(&self) -> Result<()>;
}

/// Conflicts retried so far, process-wide, for metrics.
pub static TXN_RESTARTS: AtomicU64 = AtomicU64::new(0);
/// Transaction attempts so far, process-wide, for metrics.
pub static TXNS: AtomicU64 = AtomicU64::new(0);
/// Of those, the attempts of background threads (heartbeats, usage and
/// quota syncs, cleaners), for telling a request's round trips apart.
pub static BACKGROUND_TXNS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static BACKGROUND: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Count this thread's transactions as background work from now on.
pub fn mark_background_thread() {
    BACKGROUND.with(|b| b.set(true));
}
const MAX_ATTEMPTS: u32 = 50;

/// Run a transaction, retrying on conflicts with jittered exponential backoff.
pub fn run_txn<T>(
    engine: &dyn KvEngine,
    read_only: bool,
    mut f: impl FnMut(&mut dyn KvTxn) -> Result<T>,
) -> Result<T> {
    let mut attempt = 0u32;
    loop {
        let mut out = None;
        TXNS.fetch_add(1, Ordering::Relaxed);
        if BACKGROUND.with(std::cell::Cell::get) {
            BACKGROUND_TXNS.fetch_add(1, Ordering::Relaxed);
        }
        let res = engine.run_once(read_only, &mut |tx| {
            out = Some(f(tx)?);
            Ok(())
        });
        match res {
            Ok(()) => {
                return out
                    .ok_or_else(|| MetaError::Engine("transaction produced no result".into()))
            }
            Err(e) if e.is_retryable() && attempt + 1 < MAX_ATTEMPTS => {
                attempt += 1;
                TXN_RESTARTS.fetch_add(1, Ordering::Relaxed);
                let base = 1u64 << attempt.min(8);
                let jitter = jitter_micros(base * 100);
                std::thread::sleep(Duration::from_micros(base * 100 + jitter));
            }
            Err(MetaError::Conflict(_)) => return Err(MetaError::Conflict(attempt + 1)),
            Err(e) => return Err(e),
        }
    }
}

fn jitter_micros(max: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(max);
    h.finish() % max.max(1)
}

/// The smallest key greater than every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

/// Scan every key with the given prefix.
pub fn scan_prefix(tx: &mut dyn KvTxn, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    tx.scan(prefix, &prefix_end(prefix), usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    /// An SQL engine's answer cut by the cap: the row the cut fell in and
    /// every row after it get no set (it may be partial), rows before keep
    /// theirs; the budget skips a set too large and goes on.
    #[test]
    fn nested_parts_cut_by_the_cap_leave_no_partial_set() {
        let pointer = Pointer {
            prefix: b"u",
            at: 0,
            len: 1,
            suffix: b".",
        };
        let request = Nested {
            head: b"h",
            begin: b"r/",
            end: b"r0",
            limit: 10,
            follow: pointer,
            under: pointer,
            tag_at: 1,
            tag: b'!',
            under_limit: 2,
        };
        assert_eq!(nested_under_cap(&request), 9);
        let part = |part: i16, row: &str, key: &str| {
            (
                part,
                row.as_bytes().to_vec(),
                key.as_bytes().to_vec(),
                b"v".to_vec(),
            )
        };
        let row_of = |key: &str, value: &str| {
            (
                1,
                key.as_bytes().to_vec(),
                key.as_bytes().to_vec(),
                value.as_bytes().to_vec(),
            )
        };
        let rows = || {
            vec![
                row_of("r/a", "a!"),
                row_of("r/b", "b!"),
                row_of("r/c", "c!"),
                row_of("r/d", "d-"),
            ]
        };
        let sets = |read: NestedRead| -> Vec<Option<usize>> {
            read.rows
                .iter()
                .map(|r| r.under.as_ref().map(Vec::len))
                .collect()
        };
        // a: 1 row, b: 3 (over the budget of 2, skipped), c: 1; d untagged.
        let mut whole = rows();
        whole.extend([
            part(3, "r/a", "ua.1"),
            part(3, "r/b", "ub.1"),
            part(3, "r/b", "ub.2"),
            part(3, "r/b", "ub.3"),
            part(3, "r/c", "uc.1"),
        ]);
        assert_eq!(
            sets(nested_from_parts(&request, whole.into_iter())),
            [Some(1), None, Some(1), None]
        );
        // Nine rows under (the cap): b's set may go on past them.
        let mut cut = rows();
        cut.push(part(3, "r/a", "ua.1"));
        cut.extend((0..8).map(|i| part(3, "r/b", &format!("ub.{i}"))));
        assert_eq!(
            sets(nested_from_parts(&request, cut.into_iter())),
            [Some(1), None, None, None]
        );
        // More rows than the limit.
        let over = Nested {
            limit: 3,
            ..request
        };
        let read = nested_from_parts(&over, rows().into_iter());
        assert!(read.more && read.rows.is_empty());
    }

    /// An engine whose first `conflicts` attempts report a conflict.
    struct Contended {
        conflicts: u32,
        attempts: AtomicU32,
        inner: crate::engines::MemoryEngine,
    }

    impl KvEngine for Contended {
        fn name(&self) -> &'static str {
            "contended"
        }
        fn run_once(
            &self,
            read_only: bool,
            f: &mut dyn FnMut(&mut dyn KvTxn) -> Result<()>,
        ) -> Result<()> {
            if self.attempts.fetch_add(1, Ordering::Relaxed) < self.conflicts {
                Err(MetaError::Conflict(1))
            } else {
                self.inner.run_once(read_only, f)
            }
        }
        fn reset(&self) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn conflicts_are_retried_counted_and_bounded() {
        let before = TXN_RESTARTS.load(Ordering::Relaxed);
        let e = Contended {
            conflicts: 3,
            attempts: AtomicU32::new(0),
            inner: Default::default(),
        };
        run_txn(&e, false, |_| Ok(())).expect("succeeds on the fourth attempt");
        assert_eq!(e.attempts.load(Ordering::Relaxed), 4);
        assert!(
            TXN_RESTARTS.load(Ordering::Relaxed) - before >= 3,
            "restarts counted"
        );

        let hopeless = Contended {
            conflicts: u32::MAX,
            attempts: AtomicU32::new(0),
            inner: Default::default(),
        };
        let err = run_txn(&hopeless, false, |_| Ok(())).expect_err("gives up");
        assert!(
            matches!(err, MetaError::Conflict(n) if n == MAX_ATTEMPTS),
            "{err:?}"
        );
        assert_eq!(hopeless.attempts.load(Ordering::Relaxed), MAX_ATTEMPTS);
    }
}
