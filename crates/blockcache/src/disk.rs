//! The disk tier: one file per block under one or more cache directories,
//! plus the write-back staging area.
//!
//! Layout under each directory given to `--cache-dir`:
//!
//! ```text
//! {dir}/{volume uuid}/raw/{block key}       cached blocks (evictable)
//! {dir}/{volume uuid}/staging/{block key}   write-back blocks not yet uploaded
//! ```
//!
//! The volume's UUID, not its name, names the directory: a cache directory
//! is shared by every mount on a host, and two volumes (or a volume
//! formatted again under an old name) reuse slice ids and so block keys.
//! The checksums of each file are bound to the UUID and the key as well
//! ([`checksum::key_tag`]), so a file that lands under another name is
//! refused, never served.
//!
//! A key lives in the directory its CRC32C hashes to. Files are written to a
//! temporary name and renamed, and carry a CRC32C per 32 KiB
//! ([`crate::checksum`]), so a torn or corrupted file is detected on read,
//! dropped and counted, never returned. The index (key → size, directory,
//! last use) lives in memory and is rebuilt by scanning `raw/` at start, so a
//! restarted mount keeps its cache. Staged blocks are outside the index and
//! never evicted; once uploaded they are renamed into `raw/` and become
//! ordinary cached blocks.
//!
//! Pinned blocks (`tessera warmup --pin`) stay in the index but leave the
//! eviction policy until their pin ends (`--unpin`, or its deadline), so a
//! scan cannot push a warmed model out. Pins are kept in `{first dir}/{volume uuid}/pins`
//! and survive restarts.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tessera_metrics::{tier, Metrics};
use tracing::{debug, info, warn};

use crate::checksum;
use crate::evict::{new_policy, Eviction, Key, Policy};

/// Settings of the disk tier.
#[derive(Debug, Clone)]
pub struct DiskCacheConfig {
    pub dirs: Vec<PathBuf>,
    /// Bytes of cached blocks (as stored, checksums included) across all dirs.
    pub capacity: u64,
    /// Keep at least this fraction of each cache disk free.
    pub free_space_ratio: f64,
    /// Drop blocks not used for this long.
    pub expire: Option<Duration>,
    pub eviction: Eviction,
}

struct Entry {
    dir: u16,
    stored: u64,
    /// Seconds since the epoch of the last use.
    used_at: u64,
}

struct Index {
    entries: HashMap<Key, Entry>,
    policy: Box<dyn Policy>,
    used: u64,
    /// Bytes of whole-file local copies (`files/` of the first directory):
    /// they count against the quota, but only their owner removes them.
    copies: u64,
    last_sweep: Instant,
    /// Pinned keys (out of the policy) and the second their pin ends.
    pins: HashMap<Key, u64>,
    /// The earliest pin deadline, so expiry costs nothing until then.
    next_unpin: u64,
    /// Bumped at every change of `pins`; the pins file is rewritten (with
    /// the index unlocked) when it is ahead of what was saved.
    pins_changed: u64,
}

impl Index {
    /// Give pins whose deadline has passed back to the eviction policy.
    fn release_expired_pins(&mut self, now: u64) -> bool {
        if now < self.next_unpin {
            return false;
        }
        let expired: Vec<Key> = self
            .pins
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &expired {
            self.pins.remove(k);
            if self.entries.contains_key(k) {
                self.policy.insert(k.clone());
            }
        }
        self.next_unpin = self.pins.values().copied().min().unwrap_or(u64::MAX);
        !expired.is_empty()
    }
}

/// The disk cache of one volume.
pub struct DiskCache {
    roots: Vec<PathBuf>,
    /// The volume's UUID: what every file's checksums are bound to.
    scope: String,
    config: DiskCacheConfig,
    index: Mutex<Index>,
    /// The `pins_changed` the pins file holds; its lock orders writers of
    /// the file (taken before the index lock, never inside it).
    pins_saved: Mutex<u64>,
    metrics: Arc<Metrics>,
    tmp_seq: AtomicU64,
    /// Whether the cache file system takes O_DIRECT reads and writes.
    direct_io: AtomicBool,
    /// When (seconds since the epoch) a full disk was last logged.
    short_logged: AtomicU64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Fraction of the file system holding `path` that is free for us.
fn free_ratio(path: &Path) -> Option<f64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we pass; c is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 || st.f_blocks == 0 {
        return None;
    }
    Some(st.f_bavail as f64 / st.f_blocks as f64)
}

impl DiskCache {
    /// Open (creating) the cache directories of the volume whose UUID is
    /// `scope` and rebuild the index.
    pub fn open(
        config: DiskCacheConfig,
        scope: &str,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        if scope.is_empty() || scope.contains('/') || scope.starts_with('.') {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{scope:?} cannot name a volume's cache directory"),
            ));
        }
        if config.dirs.is_empty() || config.dirs.len() > u16::MAX as usize {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the disk cache needs between 1 and 65535 directories",
            ));
        }
        let mut roots = Vec::new();
        for d in &config.dirs {
            let root = d.join(scope);
            for sub in [RAW_DIR, "staging"] {
                std::fs::create_dir_all(root.join(sub)).map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!(
                            "cannot create cache directory {}: {e}",
                            root.join(sub).display()
                        ),
                    )
                })?;
            }
            roots.push(root);
        }
        let cache = DiskCache {
            index: Mutex::new(Index {
                entries: HashMap::new(),
                policy: new_policy(config.eviction),
                used: 0,
                copies: 0,
                last_sweep: Instant::now(),
                pins: HashMap::new(),
                next_unpin: u64::MAX,
                pins_changed: 0,
            }),
            pins_saved: Mutex::new(0),
            roots,
            scope: scope.to_string(),
            config,
            metrics,
            tmp_seq: AtomicU64::new(0),
            short_logged: AtomicU64::new(0),
            direct_io: AtomicBool::new(true),
        };
        cache.rebuild();
        Ok(cache)
    }

    /// Scan `raw/` of every directory into the index, oldest first, and
    /// remove temporary files left by a crash.
    fn rebuild(&self) {
        let started = Instant::now();
        let mut found = Vec::new();
        for (dir, root) in self.roots.iter().enumerate() {
            let raw = root.join(RAW_DIR);
            walk(&raw, &mut |path, meta| {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name.contains(".tmp.") {
                    let _ = std::fs::remove_file(path);
                    return;
                }
                let Some(key) = path.strip_prefix(&raw).ok().and_then(|p| p.to_str()) else {
                    return;
                };
                let mtime = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                found.push((mtime, key.to_string(), dir as u16, meta.len()));
            });
            walk(&root.join("staging"), &mut |path, _| {
                if path.to_string_lossy().contains(".tmp.") {
                    let _ = std::fs::remove_file(path);
                }
            });
        }
        let copies = copies_bytes(&self.copies_root());
        found.sort();
        let mut index = self.index.lock();
        index.copies = copies;
        for (mtime, key, dir, stored) in found {
            let key: Key = Arc::from(key.as_str());
            index.policy.insert(key.clone());
            index.used += stored;
            index.entries.insert(
                key,
                Entry {
                    dir,
                    stored,
                    used_at: mtime,
                },
            );
        }
        for (key, until) in self.load_pins() {
            if let Some((k, _)) = index.entries.get_key_value(key.as_str()) {
                let k = k.clone();
                index.policy.remove(&k);
                index.next_unpin = index.next_unpin.min(until);
                index.pins.insert(k, until);
            }
        }
        info!(
            blocks = index.entries.len(),
            bytes = index.used,
            copies = index.copies,
            pinned = index.pins.len(),
            ms = started.elapsed().as_millis() as u64,
            "disk cache index rebuilt"
        );
        let victims = self.evict_over_quota(&mut index);
        self.report(&index, 0);
        drop(index);
        self.unlink(victims);
    }

    /// Where whole-file local copies live (kept by the VFS layer).
    pub fn copies_root(&self) -> PathBuf {
        self.roots[0].join(COPIES_DIR)
    }

    /// Whether a local copy of `bytes` fits the quota beside the copies
    /// already kept (blocks give way to it; copies do not).
    pub fn copy_fits(&self, bytes: u64) -> std::io::Result<()> {
        let copies = self.copies();
        if copies.saturating_add(bytes) > self.config.capacity {
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!(
                    "a local copy of {bytes} bytes does not fit the cache quota \
                     (--cache-size {} bytes, {copies} of it already in local copies)",
                    self.config.capacity
                ),
            ));
        }
        Ok(())
    }

    /// A local copy of `bytes` was put in place under [`Self::copies_root`]:
    /// blocks are evicted as the quota asks.
    pub fn add_copy(&self, bytes: u64) {
        let victims = {
            let mut index = self.index.lock();
            index.copies += bytes;
            let victims = self.evict_over_quota(&mut index);
            self.report(&index, victims.len() as u64);
            victims
        };
        self.unlink(victims);
    }

    /// Local copies of `bytes` in all were removed (or never written).
    pub fn release_copy(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        {
            let mut index = self.index.lock();
            index.copies = index.copies.saturating_sub(bytes);
            self.report(&index, 0);
        }
    }

    /// The tag this volume's block `key` is sealed with.
    pub fn tag(&self, key: &str) -> u32 {
        checksum::key_tag(&self.scope, key)
    }

    fn dir_of(&self, key: &str) -> usize {
        checksum::crc32c(key.as_bytes()) as usize % self.roots.len()
    }

    fn raw_path(&self, dir: usize, key: &str) -> PathBuf {
        self.roots[dir].join(RAW_DIR).join(key)
    }

    fn staging_path(&self, key: &str) -> PathBuf {
        self.roots[self.dir_of(key)].join("staging").join(key)
    }

    /// A cached block, checked. A damaged file is removed and counted.
    pub fn get(&self, key: &str) -> Option<Bytes> {
        let dir = {
            let mut guard = self.index.lock();
            let index = &mut *guard;
            let expire = self.config.expire.map(|d| d.as_secs());
            let now = now_secs();
            let e = index.entries.get_mut(key)?;
            let stale = expire.is_some_and(|x| now.saturating_sub(e.used_at) > x);
            if stale && !index.pins.contains_key(key) {
                drop(guard);
                self.remove(key);
                return None;
            }
            e.used_at = now;
            let dir = e.dir as usize;
            index.policy.touch(key);
            dir
        };
        let path = self.raw_path(dir, key);
        match self.read_file(&path) {
            Ok(stored) => match checksum::open_bytes(stored, self.tag(key)) {
                Ok(b) => Some(b),
                Err(damage) => {
                    warn!(path = %path.display(), %damage, "corrupt cached block dropped; fetching it again");
                    self.metrics.corrupt_blocks.inc();
                    self.remove(key);
                    None
                }
            },
            Err(e) => {
                debug!(path = %path.display(), error = %e, "cached block vanished");
                self.remove(key);
                None
            }
        }
    }

    /// A cached block's file, opened, with its data length and stored
    /// CRCs (from the trailer), for sending as it is: a cache-group member
    /// sends it with sendfile and the reader checks the CRCs. Counts as a
    /// use. A file with a bad trailer is dropped.
    pub fn open_sealed(&self, key: &str) -> Option<(std::fs::File, usize, Vec<u32>)> {
        let dir = {
            let mut index = self.index.lock();
            let e = index.entries.get_mut(key)?;
            e.used_at = now_secs();
            let dir = e.dir as usize;
            index.policy.touch(key);
            dir
        };
        let path = self.raw_path(dir, key);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(_) => {
                self.remove(key);
                return None;
            }
        };
        match checksum::read_trailer(&file) {
            Ok((len, sums)) => Some((file, len, sums)),
            Err(damage) => {
                warn!(path = %path.display(), %damage, "corrupt cached block dropped");
                self.metrics.corrupt_blocks.inc();
                self.remove(key);
                None
            }
        }
    }

    /// Read a whole cached file. O_DIRECT where the file system allows it:
    /// the bytes go straight to our buffer, skipping a copy through the
    /// page cache (the memory tier caches hot blocks already).
    fn read_file(&self, path: &Path) -> std::io::Result<Bytes> {
        if self.direct_io.load(Ordering::Relaxed) {
            match crate::direct::read(path) {
                Ok(b) => return Ok(b),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    debug!(path = %path.display(), "no O_DIRECT here; reading through the page cache");
                    self.direct_io.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        std::fs::read(path).map(Bytes::from)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.index.lock().entries.contains_key(key)
    }

    /// Cache a block. Skipped (not an error) when the disk is short of free
    /// space or the block is larger than the whole cache.
    pub fn insert(&self, key: &str, data: &[u8]) -> std::io::Result<()> {
        let stored = checksum::stored_len(data.len()) as u64;
        if stored > self.config.capacity || self.contains(key) {
            return Ok(());
        }
        let dir = self.dir_of(key);
        if !self.has_free_space(dir, stored) {
            return Ok(());
        }
        let path = self.raw_path(dir, key);
        self.write_file(&path, self.tag(key), data, false)?;
        self.add_to_index(key, dir, stored);
        Ok(())
    }

    /// Below the free-space floor, evict some blocks of this directory's
    /// share; if that is not enough, refuse to cache.
    fn has_free_space(&self, dir: usize, want: u64) -> bool {
        let floor = self.config.free_space_ratio;
        if floor <= 0.0 {
            return true;
        }
        let root = &self.roots[dir];
        if free_ratio(root).is_some_and(|r| r >= floor) {
            return true;
        }
        let victims = {
            let mut index = self.index.lock();
            // Make room for a few blocks' worth below current usage.
            let limit = index.used.saturating_sub(want.saturating_mul(4));
            let v = self.evict_down_to(&mut index, limit);
            self.report(&index, v.len() as u64);
            v
        };
        self.unlink(victims);
        let free = free_ratio(root);
        if free.is_some_and(|r| r >= floor) {
            return true;
        }
        // Say why blocks stop being cached, once a minute at most.
        let now = now_secs();
        let last = self.short_logged.load(Ordering::Relaxed);
        if now >= last + 60
            && self
                .short_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(
                dir = %root.display(),
                free_percent = free.map(|r| format!("{:.1}", r * 100.0)).unwrap_or_default(),
                floor_percent = floor * 100.0,
                "cache disk below --free-space-ratio: blocks are not cached there"
            );
        }
        false
    }

    /// Pick victims until the blocks and local copies fit the quota.
    /// Returns the paths to unlink (outside the lock).
    fn evict_over_quota(&self, index: &mut Index) -> Vec<PathBuf> {
        let limit = self.config.capacity.saturating_sub(index.copies);
        self.evict_down_to(index, limit)
    }

    /// Pick victims until the blocks take at most `limit` bytes.
    fn evict_down_to(&self, index: &mut Index, limit: u64) -> Vec<PathBuf> {
        if index.used > limit && index.release_expired_pins(now_secs()) {
            index.pins_changed += 1;
        }
        let mut victims = Vec::new();
        while index.used > limit {
            let Some(key) = index.policy.victim() else {
                break;
            };
            if let Some(e) = index.entries.remove(&key) {
                index.used -= e.stored;
                victims.push(self.raw_path(e.dir as usize, &key));
            }
        }
        victims
    }

    fn sweep_expired(&self, index: &mut Index) -> Vec<PathBuf> {
        let Some(expire) = self.config.expire else {
            return Vec::new();
        };
        if index.last_sweep.elapsed() < Duration::from_secs(60).min(expire) {
            return Vec::new();
        }
        index.last_sweep = Instant::now();
        let cutoff = now_secs().saturating_sub(expire.as_secs());
        let old: Vec<Key> = index
            .entries
            .iter()
            .filter(|(k, e)| e.used_at < cutoff && !index.pins.contains_key(*k))
            .map(|(k, _)| k.clone())
            .collect();
        let mut victims = Vec::new();
        for key in old {
            if let Some(e) = index.entries.remove(&key) {
                index.used -= e.stored;
                index.policy.remove(&key);
                victims.push(self.raw_path(e.dir as usize, &key));
            }
        }
        victims
    }

    /// Remove evicted files (with the index unlocked), and save the pins if
    /// the eviction ended some.
    fn unlink(&self, paths: Vec<PathBuf>) {
        self.save_pins();
        for p in paths {
            if let Err(e) = std::fs::remove_file(&p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!(path = %p.display(), error = %e, "cannot remove evicted block");
                }
            }
        }
    }

    pub fn remove(&self, key: &str) {
        let path = {
            let mut index = self.index.lock();
            match index.entries.remove(key) {
                Some(e) => {
                    index.used -= e.stored;
                    index.policy.remove(key);
                    if index.pins.remove(key).is_some() {
                        index.pins_changed += 1;
                    }
                    self.report(&index, 0);
                    Some(self.raw_path(e.dir as usize, key))
                }
                None => None,
            }
        };
        self.unlink(path.into_iter().collect());
    }

    fn report(&self, index: &Index, evicted: u64) {
        self.metrics.cache_usage(
            tier::DISK,
            index.used + index.copies,
            index.entries.len(),
            evicted,
        );
    }

    /// Bytes of cached blocks on disk (as stored).
    pub fn used(&self) -> u64 {
        self.index.lock().used
    }

    /// Bytes of whole-file local copies.
    pub fn copies(&self) -> u64 {
        self.index.lock().copies
    }

    pub fn len(&self) -> usize {
        self.index.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The keys of every cached block.
    pub fn keys(&self) -> Vec<String> {
        self.index
            .lock()
            .entries
            .keys()
            .map(|k| k.to_string())
            .collect()
    }

    /// The file a cached block is kept in (for tests and tools).
    pub fn path_of(&self, key: &str) -> Option<PathBuf> {
        let index = self.index.lock();
        index
            .entries
            .get(key)
            .map(|e| self.raw_path(e.dir as usize, key))
    }

    // ---- pins --------------------------------------------------------------

    /// Keep these cached blocks from eviction for `ttl`. Keys not cached
    /// are skipped; returns how many are pinned now.
    pub fn pin(&self, keys: &[String], ttl: Duration) -> usize {
        let until = now_secs().saturating_add(ttl.as_secs().max(1));
        let mut index = self.index.lock();
        let mut pinned = 0;
        for key in keys {
            let Some((k, _)) = index.entries.get_key_value(key.as_str()) else {
                continue;
            };
            let k = k.clone();
            index.policy.remove(&k);
            let slot = index.pins.entry(k).or_insert(0);
            *slot = (*slot).max(until);
            index.next_unpin = index.next_unpin.min(until);
            pinned += 1;
        }
        if pinned > 0 {
            index.pins_changed += 1;
        }
        drop(index);
        self.save_pins();
        pinned
    }

    /// End the pins of these keys; the blocks stay cached, evictable again.
    pub fn unpin(&self, keys: &[String]) -> usize {
        let mut index = self.index.lock();
        let mut unpinned = 0;
        for key in keys {
            if let Some((k, _)) = index.pins.remove_entry(key.as_str()) {
                if index.entries.contains_key(&k) {
                    index.policy.insert(k);
                }
                unpinned += 1;
            }
        }
        if unpinned > 0 {
            index.next_unpin = index.pins.values().copied().min().unwrap_or(u64::MAX);
            index.pins_changed += 1;
        }
        drop(index);
        self.save_pins();
        unpinned
    }

    /// Whether a block is cached and pinned (an expired pin counts as gone).
    pub fn is_pinned(&self, key: &str) -> bool {
        self.index
            .lock()
            .pins
            .get(key)
            .is_some_and(|until| *until > now_secs())
    }

    fn pins_path(&self) -> PathBuf {
        self.roots[0].join(PINS_FILE)
    }

    /// The pin table as saved, pins still in force.
    fn load_pins(&self) -> Vec<(String, u64)> {
        read_pins(&self.pins_path(), now_secs())
    }

    /// Rewrite the pin table (one line per pinned block) if it changed
    /// since it was last saved: the table is copied under the index lock,
    /// the file written without it. Call with the index unlocked.
    fn save_pins(&self) {
        let mut saved = self.pins_saved.lock();
        let (text, changed) = {
            let index = self.index.lock();
            if index.pins_changed == *saved {
                return;
            }
            let mut text = String::with_capacity(index.pins.len() * 64);
            for (key, until) in &index.pins {
                text.push_str(&format!("{until} {key}\n"));
            }
            (text, index.pins_changed)
        };
        let path = self.pins_path();
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path));
        match written {
            Ok(()) => *saved = changed,
            Err(e) => warn!(path = %path.display(), error = %e, "cannot save the pinned blocks"),
        }
    }

    /// Write a block and its checksum trailer to a temporary name and
    /// rename, so a reader never sees half a file; with `durable`, the data
    /// and the rename reach the disk first.
    fn write_file(&self, path: &Path, tag: u32, data: &[u8], durable: bool) -> std::io::Result<()> {
        let dir = path.parent().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "block path has no parent")
        })?;
        std::fs::create_dir_all(dir)?;
        let tmp = PathBuf::from(format!(
            "{}.tmp.{}.{}",
            path.display(),
            std::process::id(),
            self.tmp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let written = (|| {
            let trailer = checksum::trailer(data, tag);
            let f = match self.write_direct(&tmp, data, &trailer) {
                Some(f) => f,
                None => {
                    let mut f = std::fs::File::create(&tmp)?;
                    f.write_all(data)?;
                    f.write_all(&trailer)?;
                    f
                }
            };
            if durable {
                f.sync_all()?;
            }
            std::fs::rename(&tmp, path)?;
            if durable {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// Write a page-aligned block with O_DIRECT (see `direct::write`);
    /// None when that is not possible here, for the caller to write it
    /// through the page cache. A failure other than EINVAL is reported by
    /// the buffered attempt that follows.
    fn write_direct(&self, tmp: &Path, data: &[u8], trailer: &[u8]) -> Option<std::fs::File> {
        if !self.direct_io.load(Ordering::Relaxed)
            || data.len() < tessera_buf::ALIGN
            || !tessera_buf::is_aligned(data)
        {
            return None;
        }
        match crate::direct::write(tmp, data, trailer) {
            Ok(f) => Some(f),
            Err(e) => {
                if e.raw_os_error() == Some(libc::EINVAL) {
                    debug!(path = %tmp.display(), "no O_DIRECT here; writing through the page cache");
                    self.direct_io.store(false, Ordering::Relaxed);
                }
                let _ = std::fs::remove_file(tmp);
                None
            }
        }
    }

    // ---- write-back staging ------------------------------------------------

    /// Store a block durably in the staging area; it stays there until
    /// [`DiskCache::commit_staged`] after its upload.
    pub fn stage(&self, key: &str, data: &[u8]) -> std::io::Result<()> {
        self.write_file(&self.staging_path(key), self.tag(key), data, true)
    }

    /// A staged block, checked.
    pub fn read_staged(&self, key: &str) -> Option<Bytes> {
        let path = self.staging_path(key);
        let stored = std::fs::read(&path).ok()?;
        match checksum::open(stored, self.tag(key)) {
            Ok(b) => Some(b),
            Err(damage) => {
                warn!(path = %path.display(), %damage, "staged block is damaged");
                self.metrics.corrupt_blocks.inc();
                None
            }
        }
    }

    /// Keys of every staged block (after a restart: what is left to upload).
    pub fn staged(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for root in &self.roots {
            let base = root.join("staging");
            walk(&base, &mut |path, _| {
                if let Some(k) = path.strip_prefix(&base).ok().and_then(|p| p.to_str()) {
                    if !k.contains(".tmp.") {
                        keys.push(k.to_string());
                    }
                }
            });
        }
        keys
    }

    /// The staged block is in object storage now: move it into the cache.
    pub fn commit_staged(&self, key: &str) {
        let from = self.staging_path(key);
        let stored = match std::fs::metadata(&from) {
            Ok(m) => m.len(),
            Err(_) => return,
        };
        let dir = self.dir_of(key);
        let to = self.raw_path(dir, key);
        let moved = to
            .parent()
            .map(std::fs::create_dir_all)
            .unwrap_or(Ok(()))
            .and_then(|()| std::fs::rename(&from, &to));
        if moved.is_err() || stored > self.config.capacity {
            let _ = std::fs::remove_file(&from);
            let _ = std::fs::remove_file(&to);
            return;
        }
        self.add_to_index(key, dir, stored);
    }

    /// Index a file just put in place, then evict what the quota (and the
    /// expiry) asks for.
    fn add_to_index(&self, key: &str, dir: usize, stored: u64) {
        let victims = {
            let mut index = self.index.lock();
            let k: Key = Arc::from(key);
            let entry = Entry {
                dir: dir as u16,
                stored,
                used_at: now_secs(),
            };
            if let Some(old) = index.entries.insert(k.clone(), entry) {
                index.used -= old.stored;
            }
            index.used += stored;
            if !index.pins.contains_key(&k) {
                index.policy.insert(k);
            }
            let mut victims = self.evict_over_quota(&mut index);
            victims.extend(self.sweep_expired(&mut index));
            self.report(&index, victims.len() as u64);
            victims
        };
        self.unlink(victims);
    }

    /// Drop a staged block whose upload is no longer wanted (its slice was
    /// deleted before it reached object storage).
    pub fn discard_staged(&self, key: &str) {
        let _ = std::fs::remove_file(self.staging_path(key));
    }
}

/// Visit every regular file under `dir`, recursively.
/// Whether a file under a local-copies directory is a copy in progress
/// (`.{name}.tmp.{pid}`), which no quota counts.
/// Under a cache directory's volume directory: the cached blocks, the
/// whole-file local copies, and the pin table.
pub(crate) const RAW_DIR: &str = "raw";
pub(crate) const COPIES_DIR: &str = "files";
pub(crate) const PINS_FILE: &str = "pins";

/// A pins file: one `deadline key` line per pinned block; pins whose
/// deadline is not after `now` are left out.
pub(crate) fn read_pins(path: &Path, now: u64) -> Vec<(String, u64)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let (until, key) = line.split_once(' ')?;
            let until: u64 = until.parse().ok()?;
            (until > now).then(|| (key.to_string(), until))
        })
        .collect()
}

pub fn is_temporary_copy(name: &str) -> bool {
    name.starts_with('.')
}

/// Bytes of the finished local copies under `dir` (a volume's `files/`, or
/// one file's directory in it).
pub fn copies_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    walk(dir, &mut |path, meta| {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or(".");
        if !is_temporary_copy(name) {
            total += meta.len();
        }
    });
    total
}

pub(crate) fn walk(dir: &Path, f: &mut dyn FnMut(&Path, &std::fs::Metadata)) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in rd.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if meta.is_dir() {
            walk(&path, f);
        } else if meta.is_file() {
            f(&path, &meta);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dirs: Vec<PathBuf>, capacity: u64) -> DiskCacheConfig {
        DiskCacheConfig {
            dirs,
            capacity,
            free_space_ratio: 0.0,
            expire: None,
            eviction: Eviction::TwoRandom,
        }
    }

    fn block(seed: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
    }

    #[test]
    fn local_copies_count_against_the_quota_and_survive_a_restart() {
        let d = tempfile::tempdir().unwrap();
        let m = Arc::new(Metrics::new());
        let stored = checksum::stored_len(1000) as u64;
        let cap = 10 * stored;
        let c =
            DiskCache::open(config(vec![d.path().to_path_buf()], cap), "vol", m.clone()).unwrap();
        for i in 0..10u8 {
            c.insert(&format!("vol/chunks/0/0/{i}_0_1000"), &block(i, 1000))
                .unwrap();
        }
        assert_eq!(c.len(), 10);
        // A copy the size of four blocks: four blocks give way to it.
        let copy = 4 * stored;
        c.copy_fits(copy).unwrap();
        let dir = c.copies_root().join("7");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("0badc0de-4"), vec![0u8; copy as usize]).unwrap();
        c.add_copy(copy);
        assert_eq!((c.len(), c.copies()), (6, copy));
        assert!(c.used() + c.copies() <= cap);
        // One larger than what the copies may still take is refused.
        let e = c.copy_fits(cap - copy + 1).unwrap_err();
        assert!(e.to_string().contains("--cache-size"), "{e}");
        // A restart finds the copy again (a temporary file is not counted).
        std::fs::write(dir.join(".0badc0de-4.tmp.1"), vec![0u8; 100]).unwrap();
        drop(c);
        let c = DiskCache::open(config(vec![d.path().to_path_buf()], cap), "vol", m).unwrap();
        assert_eq!((c.len(), c.copies()), (6, copy));
        c.release_copy(copy);
        assert_eq!(c.copies(), 0);
    }

    #[test]
    fn below_the_free_space_floor_blocks_are_not_cached_and_nothing_breaks() {
        let d = tempfile::tempdir().unwrap();
        let m = Arc::new(Metrics::new());
        let mut cfg = config(vec![d.path().to_path_buf()], 1 << 30);
        // No disk has every block free: the floor can never be met.
        cfg.free_space_ratio = 1.0;
        let c = DiskCache::open(cfg, "vol", m.clone()).unwrap();
        c.insert("vol/chunks/0/0/1_0_1000", &block(1, 1000))
            .unwrap();
        c.insert("vol/chunks/0/0/2_0_1000", &block(2, 1000))
            .unwrap();
        assert!(!c.contains("vol/chunks/0/0/1_0_1000"));
        assert_eq!(c.len(), 0);
        // The same directory with no floor caches as usual.
        let c = DiskCache::open(config(vec![d.path().to_path_buf()], 1 << 30), "vol", m).unwrap();
        c.insert("vol/chunks/0/0/1_0_1000", &block(1, 1000))
            .unwrap();
        assert!(c.contains("vol/chunks/0/0/1_0_1000"));
    }

    #[test]
    fn survives_restart_and_spreads_over_dirs() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let dirs = vec![a.path().to_path_buf(), b.path().to_path_buf()];
        let m = Arc::new(Metrics::new());
        let c = DiskCache::open(config(dirs.clone(), 1 << 30), "vol", m.clone()).unwrap();
        for i in 0..20u8 {
            c.insert(&format!("vol/chunks/0/0/{i}_0_1000"), &block(i, 1000))
                .unwrap();
        }
        let per_dir: Vec<usize> = dirs
            .iter()
            .map(|d| {
                let mut n = 0;
                walk(&d.join("vol/raw"), &mut |_, _| n += 1);
                n
            })
            .collect();
        assert!(per_dir.iter().all(|&n| n > 0), "blocks spread: {per_dir:?}");
        drop(c);
        let c = DiskCache::open(config(dirs, 1 << 30), "vol", m).unwrap();
        assert_eq!(c.len(), 20);
        assert_eq!(
            c.get("vol/chunks/0/0/7_0_1000").as_deref(),
            Some(&block(7, 1000)[..])
        );
    }

    #[test]
    fn corrupt_block_is_dropped_and_counted() {
        let d = tempfile::tempdir().unwrap();
        let m = Arc::new(Metrics::new());
        let c = DiskCache::open(config(vec![d.path().into()], 1 << 30), "v", m.clone()).unwrap();
        c.insert("k/1", &block(1, 100_000)).unwrap();
        let path = c.path_of("k/1").unwrap();
        let mut raw = std::fs::read(&path).unwrap();
        raw[50_000] ^= 1;
        std::fs::write(&path, raw).unwrap();
        assert!(c.get("k/1").is_none());
        assert_eq!(m.corrupt_blocks.get(), 1);
        assert!(!path.exists() && c.is_empty());
    }

    #[test]
    fn page_aligned_blocks_round_trip_and_are_checked() {
        // Aligned blocks take the O_DIRECT write path where the file system
        // has it; the trailer, the CRCs and the corruption check are the same.
        let d = tempfile::tempdir().unwrap();
        let m = Arc::new(Metrics::new());
        let c = DiskCache::open(config(vec![d.path().into()], 1 << 30), "v", m.clone()).unwrap();
        for (i, len) in [4096usize, 1 << 20, (1 << 20) + 1234]
            .into_iter()
            .enumerate()
        {
            let data = tessera_buf::AlignedBuf::copy_of(&block(i as u8, len)[..])
                .unwrap()
                .freeze();
            assert!(tessera_buf::is_aligned(&data));
            let key = format!("k/{len}");
            c.insert(&key, &data).unwrap();
            let path = c.path_of(&key).unwrap();
            assert_eq!(
                std::fs::metadata(&path).unwrap().len() as usize,
                checksum::stored_len(len)
            );
            assert_eq!(c.get(&key).as_deref(), Some(&data[..]));
        }
        let path = c.path_of("k/1048576").unwrap();
        let mut raw = std::fs::read(&path).unwrap();
        raw[700_000] ^= 1;
        std::fs::write(&path, raw).unwrap();
        assert!(c.get("k/1048576").is_none());
        assert_eq!(m.corrupt_blocks.get(), 1);
    }

    #[test]
    fn sealed_files_give_their_length_and_crcs() {
        let d = tempfile::tempdir().unwrap();
        let c = DiskCache::open(
            config(vec![d.path().into()], 1 << 30),
            "v",
            Arc::new(Metrics::new()),
        )
        .unwrap();
        let data = block(3, 100_000);
        c.insert("k/1", &data).unwrap();
        let (file, len, sums) = c.open_sealed("k/1").expect("cached");
        assert_eq!(len, 100_000);
        assert_eq!(
            sums,
            checksum::piece_sums(&data, checksum::key_tag("v", "k/1"))
        );
        drop(file);
        let path = c.path_of("k/1").unwrap();
        std::fs::write(&path, b"short").unwrap();
        assert!(c.open_sealed("k/1").is_none(), "a bad trailer is refused");
        assert!(c.is_empty());
        assert!(c.open_sealed("never/cached").is_none());
    }

    #[test]
    fn files_swapped_on_disk_are_refused_not_served() {
        let d = tempfile::tempdir().unwrap();
        let m = Arc::new(Metrics::new());
        let c = DiskCache::open(config(vec![d.path().into()], 1 << 30), "v", m.clone()).unwrap();
        let (a, b) = (block(1, 70_000), block(2, 70_000));
        c.insert("vol/chunks/0/0/1_0_70000", &a).unwrap();
        c.insert("vol/chunks/0/0/2_0_70000", &b).unwrap();
        let pa = c.path_of("vol/chunks/0/0/1_0_70000").unwrap();
        let pb = c.path_of("vol/chunks/0/0/2_0_70000").unwrap();
        let tmp = pa.with_extension("swap");
        std::fs::rename(&pa, &tmp).unwrap();
        std::fs::rename(&pb, &pa).unwrap();
        std::fs::rename(&tmp, &pb).unwrap();
        assert!(c.get("vol/chunks/0/0/1_0_70000").is_none());
        assert!(c.get("vol/chunks/0/0/2_0_70000").is_none());
        assert_eq!(m.corrupt_blocks.get(), 2);
        // A cache directory of another volume holding the same keys is
        // never read: the directory is the UUID's.
        let other = DiskCache::open(config(vec![d.path().into()], 1 << 30), "w", m).unwrap();
        other.insert("vol/chunks/0/0/1_0_70000", &b).unwrap();
        assert!(c.get("vol/chunks/0/0/1_0_70000").is_none());
        c.insert("vol/chunks/0/0/1_0_70000", &a).unwrap();
        assert_eq!(c.get("vol/chunks/0/0/1_0_70000").as_deref(), Some(&a[..]));
        assert_eq!(
            other.get("vol/chunks/0/0/1_0_70000").as_deref(),
            Some(&b[..])
        );
    }

    #[test]
    fn stays_under_quota() {
        let d = tempfile::tempdir().unwrap();
        let cap = 10 * checksum::stored_len(4096) as u64;
        let c = DiskCache::open(
            config(vec![d.path().into()], cap),
            "v",
            Arc::new(Metrics::new()),
        )
        .unwrap();
        for i in 0..100u8 {
            c.insert(&format!("k/{i}"), &block(i, 4096)).unwrap();
            assert!(c.used() <= cap);
        }
        assert_eq!(c.len(), 10);
        let mut on_disk = 0u64;
        walk(&d.path().join("v/raw"), &mut |_, m| on_disk += m.len());
        assert!(on_disk <= cap, "{on_disk} bytes on disk over quota {cap}");
    }

    #[test]
    fn pinned_blocks_outlast_a_scan_and_a_restart_until_unpinned() {
        let d = tempfile::tempdir().unwrap();
        let cap = 10 * checksum::stored_len(4096) as u64;
        let cfg = DiskCacheConfig {
            eviction: Eviction::Lru, // deterministic victims after the unpin
            ..config(vec![d.path().into()], cap)
        };
        let c = DiskCache::open(cfg.clone(), "v", Arc::new(Metrics::new())).unwrap();
        let model: Vec<String> = (0..4).map(|i| format!("model/{i}")).collect();
        for (i, k) in model.iter().enumerate() {
            c.insert(k, &block(i as u8, 4096)).unwrap();
        }
        assert_eq!(c.pin(&model, Duration::from_secs(3600)), 4);
        assert_eq!(
            c.pin(&["not/cached".to_string()], Duration::from_secs(60)),
            0
        );
        // A scan of 100 other blocks through a 10-block cache.
        for i in 0..100u8 {
            c.insert(&format!("scan/{i}"), &block(i, 4096)).unwrap();
            assert!(c.used() <= cap);
        }
        assert!(model.iter().all(|k| c.contains(k) && c.is_pinned(k)));
        drop(c);
        let c = DiskCache::open(cfg.clone(), "v", Arc::new(Metrics::new())).unwrap();
        assert!(
            model.iter().all(|k| c.is_pinned(k)),
            "pins survive a restart"
        );
        assert_eq!(c.unpin(&model[..2]), 2);
        for i in 100..200u8 {
            c.insert(&format!("scan/{i}"), &block(i, 4096)).unwrap();
        }
        assert!(!c.contains(&model[0]) && !c.contains(&model[1]));
        assert!(c.contains(&model[2]) && c.contains(&model[3]));
    }

    #[test]
    fn staged_blocks_outlive_restart_and_move_into_the_cache() {
        let d = tempfile::tempdir().unwrap();
        let cfg = config(vec![d.path().into()], 1 << 30);
        let c = DiskCache::open(cfg.clone(), "v", Arc::new(Metrics::new())).unwrap();
        c.stage("v/chunks/0/0/5_0_10", b"0123456789").unwrap();
        drop(c);
        let c = DiskCache::open(cfg, "v", Arc::new(Metrics::new())).unwrap();
        assert_eq!(c.staged(), vec!["v/chunks/0/0/5_0_10".to_string()]);
        assert_eq!(
            c.read_staged("v/chunks/0/0/5_0_10").as_deref(),
            Some(&b"0123456789"[..])
        );
        assert!(c.is_empty(), "staged blocks are not evictable cache");
        c.commit_staged("v/chunks/0/0/5_0_10");
        assert!(c.staged().is_empty());
        assert_eq!(
            c.get("v/chunks/0/0/5_0_10").as_deref(),
            Some(&b"0123456789"[..])
        );
    }
}
