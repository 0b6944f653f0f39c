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

mod layout;
mod pins;
mod staging;

pub use layout::{copies_bytes, is_temporary_copy};
pub(crate) use layout::{read_pins, walk, COPIES_DIR, PINS_FILE, RAW_DIR};

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
    /// The piece sums of blocks lately read in part, so that a small random
    /// read is one read of its pieces, not a second one of the trailer. A
    /// key's bytes never change (slice ids are not reused, and the
    /// directory is the volume's UUID), so neither do its sums; a file
    /// damaged since is still refused against them.
    sums: Mutex<HashMap<String, Arc<[u32]>>>,
}

/// Blocks whose piece sums [`DiskCache::sums`] keeps (about 4 MiB of sums
/// for 4 MiB blocks); emptied when full.
const SUMS_KEPT: usize = 8192;

/// Every piece sum of a stored block of `block_len` bytes whose file is
/// `size` bytes: one read, from the page that holds the first sum to
/// the end of the file, checked against the trailer's tail.
fn read_sums(
    file: &std::fs::File,
    block_len: usize,
    size: usize,
) -> std::io::Result<Result<Arc<[u32]>, checksum::Damage>> {
    let trailer_at = block_len / tessera_buf::ALIGN * tessera_buf::ALIGN;
    let trailer = crate::direct::read_at(file, trailer_at as u64, size - trailer_at)?;
    if trailer.len() < size - trailer_at || checksum::tail_len(&trailer) != Some(block_len) {
        return Ok(Err(checksum::Damage::BadTrailer));
    }
    let sums = &trailer[block_len - trailer_at..size - trailer_at - checksum::TAIL];
    Ok(Ok(checksum::decode_sums(sums).into()))
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
            sums: Mutex::new(HashMap::new()),
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
        self.checked_read(key, |path| {
            Ok(checksum::open_bytes(self.read_file(path)?, self.tag(key)))
        })
    }

    /// Bytes `start..start + n` of the cached block `key`, `block_len`
    /// bytes long: only the 32 KiB pieces that hold them and those pieces'
    /// sums are read, and checked before any byte is returned. A small
    /// random read (a record sampled from a large dataset, a page fault far
    /// from the last) must not move a whole 4 MiB block off the disk for
    /// the 4 KiB it asked for. None when the block is not here or fails its
    /// check (then dropped and counted, as by [`Self::get`]).
    pub fn get_range(&self, key: &str, block_len: usize, start: usize, n: usize) -> Option<Bytes> {
        if n == 0 || start.checked_add(n)? > block_len {
            return None;
        }
        self.checked_read(key, |path| self.read_range(path, key, block_len, start, n))
    }

    /// `read` of a cached block's file, its use noted: a damaged file is
    /// dropped and counted, a vanished one forgotten.
    fn checked_read(
        &self,
        key: &str,
        read: impl FnOnce(&Path) -> std::io::Result<Result<Bytes, checksum::Damage>>,
    ) -> Option<Bytes> {
        let path = self.raw_path(self.use_entry(key)?, key);
        match read(&path) {
            Ok(Ok(b)) => Some(b),
            Ok(Err(damage)) => {
                warn!(path = %path.display(), %damage, "corrupt cached block dropped; fetching it again");
                self.metrics.corrupt_blocks.inc();
                self.remove(key);
                None
            }
            Err(e) => {
                debug!(path = %path.display(), error = %e, "cached block vanished");
                self.remove(key);
                None
            }
        }
    }

    fn read_range(
        &self,
        path: &Path,
        key: &str,
        block_len: usize,
        start: usize,
        n: usize,
    ) -> std::io::Result<Result<Bytes, checksum::Damage>> {
        use crate::direct::read_at;
        use checksum::{Damage, PIECE};
        let file = self.open_file(path)?;
        let size = file.metadata()?.len() as usize;
        if size != checksum::stored_len(block_len) {
            return Ok(Err(Damage::BadTrailer));
        }
        let (first, end) = (start / PIECE, (start + n).div_ceil(PIECE));
        let data_at = first * PIECE;
        let data_len = (end * PIECE).min(block_len) - data_at;
        let data = read_at(&file, data_at as u64, data_len)?;
        if data.len() < data_len {
            return Ok(Err(Damage::BadTrailer));
        }
        let kept = self.sums.lock().get(key).cloned();
        let sums = match kept {
            Some(sums) => sums,
            None => match read_sums(&file, block_len, size)? {
                Ok(sums) => {
                    let mut kept = self.sums.lock();
                    if kept.len() >= SUMS_KEPT {
                        kept.clear();
                    }
                    kept.insert(key.to_string(), sums.clone());
                    sums
                }
                Err(damage) => return Ok(Err(damage)),
            },
        };
        let Some(sums) = sums.get(first..end) else {
            return Ok(Err(Damage::BadTrailer));
        };
        if let Err(damage) = checksum::check_pieces(&data[..data_len], first, sums, self.tag(key)) {
            return Ok(Err(damage));
        }
        self.metrics.disk_range_reads.inc();
        let at = start - data_at;
        Ok(Ok(data.slice(at..at + n)))
    }

    /// Where a cached block is, its use noted; None when it is not cached,
    /// or has outlived `--cache-expire` (then it is removed).
    fn use_entry(&self, key: &str) -> Option<usize> {
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
        Some(dir)
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
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.no_direct_io(path),
                Err(e) => return Err(e),
            }
        }
        std::fs::read(path).map(Bytes::from)
    }

    /// A cached file opened for reading: with O_DIRECT where the file
    /// system allows it (see [`Self::read_file`]).
    fn open_file(&self, path: &Path) -> std::io::Result<std::fs::File> {
        if self.direct_io.load(Ordering::Relaxed) {
            match crate::direct::open(path) {
                Ok(f) => return Ok(f),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.no_direct_io(path),
                Err(e) => return Err(e),
            }
        }
        std::fs::File::open(path)
    }

    fn no_direct_io(&self, path: &Path) {
        debug!(path = %path.display(), "no O_DIRECT here; reading through the page cache");
        self.direct_io.store(false, Ordering::Relaxed);
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
        self.sums.lock().remove(key);
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
}

#[cfg(test)]
mod tests;
