//! POSIX semantics over metadata and the data path, independent of FUSE.
//!
//! [`Vfs`] owns file handles, open files (one write buffer and one cache of
//! slice records per open inode), lock owners and the background workers
//! (session heartbeat, stale-session cleanup, deletion of freed data,
//! compaction). The FUSE adapter only translates requests into these calls,
//! so everything here can be exercised in-process.

mod backup;
pub mod control;
mod copies;
mod dircache;
mod files;
pub mod glob;
mod handles;
pub mod import;
pub mod internal;
mod listing;
mod locks;
mod namespace;
pub mod open_modes;
mod trash;
mod xattr;

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use bytes::Bytes;
pub use tessera_chunk::{CacheAction, CacheReport};
use tessera_chunk::{ChunkError, ChunkStore, FileWriter, Span};
use tessera_meta::{
    Attr, Ctx, Entry, FileType, Ino, Meta, MetaError, PosixLock, SessionInfo, SetAttr, SliceRecord,
    StatFs, UnlinkResult,
};
use tracing::{debug, info, warn};

pub use control::{CacheControl, ControlOp};
pub use handles::Handle;
pub use locks::LockRequest;
pub use open_modes::{Current as OpenMode, OpenModes};

/// An errno with the reason behind it, for logs.
#[derive(Debug, thiserror::Error)]
#[error("{reason} (errno {errno})")]
pub struct VfsError {
    pub errno: i32,
    pub reason: String,
    /// The typed error of the layer below, when one caused this.
    #[source]
    pub cause: Option<Cause>,
}

/// What a [`VfsError`] came from.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Chunk(#[from] ChunkError),
}

impl VfsError {
    pub fn new(errno: i32, reason: impl Into<String>) -> Self {
        VfsError {
            errno,
            reason: reason.into(),
            cause: None,
        }
    }
}

impl From<MetaError> for VfsError {
    fn from(e: MetaError) -> Self {
        let errno = e.errno();
        if errno == libc::EIO {
            warn!(error = %e, "metadata operation failed");
        }
        VfsError {
            errno,
            reason: e.to_string(),
            cause: Some(e.into()),
        }
    }
}

impl From<ChunkError> for VfsError {
    fn from(e: ChunkError) -> Self {
        let errno = e.errno();
        if errno == libc::EIO {
            warn!(error = %e, "data operation failed");
        }
        VfsError {
            errno,
            reason: e.to_string(),
            cause: Some(e.into()),
        }
    }
}

pub type Result<T> = std::result::Result<T, VfsError>;

/// Mount-level options the VFS needs.
#[derive(Debug, Clone)]
pub struct VfsConfig {
    pub read_only: bool,
    /// Seconds between heartbeats of this session.
    pub heartbeat: Duration,
    /// A session silent for this long is cleaned up by live ones.
    pub session_timeout: Duration,
    /// How long attributes and slice records of a file opened read-only
    /// are trusted without asking metadata again (0: close-to-open only).
    pub open_cache: Duration,
    /// The volume keeps POSIX ACLs (`Format::acl`): their xattrs go to
    /// the engine's ACL rules instead of being refused.
    pub acl: bool,
    /// When reads update a file's access time.
    pub atime: AtimeMode,
    /// Back the metadata up into the bucket this often (one mount of the
    /// volume does each round); None: never.
    pub backup_meta: Option<Duration>,
    /// Keep trashed files this long instead of the volume's trash days
    /// (tests); and how often a mount looks for hours to purge.
    pub trash_keep: Option<Duration>,
    pub trash_purge_every: Duration,
    /// Files whose name matches one of these patterns are read whole into
    /// the cache, in the background, when opened for reading (model files
    /// that a loader will mmap and touch in its own order).
    pub prefetch_on_open: Vec<String>,
}

/// When reads update a file's access time (the mount's `-o` option).
/// Never, by default: a read then costs no metadata write, which matters
/// when the metadata engine is a cross-cloud round trip away and every node
/// reads every file of a dataset (JuiceFS's default too).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AtimeMode {
    /// Never.
    #[default]
    NoAtime,
    /// When the access time is not after the last modification or change,
    /// or is a day old (Linux's default for local file systems).
    RelAtime,
    /// At every open that reads.
    StrictAtime,
}

impl Default for VfsConfig {
    fn default() -> Self {
        VfsConfig {
            read_only: false,
            heartbeat: Duration::from_secs(5),
            session_timeout: Duration::from_secs(60),
            open_cache: Duration::ZERO,
            acl: false,
            backup_meta: None,
            trash_keep: None,
            trash_purge_every: Duration::from_secs(3600),
            atime: AtimeMode::NoAtime,
            prefetch_on_open: Vec::new(),
        }
    }
}

/// State shared by every handle of one open inode.
pub struct OpenFile {
    pub writer: FileWriter,
    handles: AtomicU64,
    /// Slice records per chunk, refreshed at open and after our own commits.
    records: Mutex<RecordCache>,
    /// Committed length as last read from metadata (0: unknown). Reads
    /// within it need no metadata round trip; it is refreshed at open and
    /// whenever a read reaches past it.
    length: AtomicU64,
    /// When `length` was read from metadata.
    length_at: Mutex<Option<std::time::Instant>>,
    /// The directory the file was in at its latest open here: where its
    /// growth is checked against quotas.
    parent: AtomicU64,
    /// The inode had no extended attributes at its latest open here (and
    /// this mount set none since). The kernel asks for
    /// `security.capability` before every write(2), to drop file
    /// capabilities; this answers it without a metadata round trip.
    no_xattrs: std::sync::atomic::AtomicBool,
}

/// Cached slice records. The generation moves on every invalidation, so a
/// load that raced with a change is not cached.
#[derive(Default)]
struct RecordCache {
    generation: u64,
    chunks: HashMap<u32, Arc<Vec<SliceRecord>>>,
}

/// Chunks whose records an open for reading fetches with the attributes.
const OPEN_CHUNKS: u32 = 4;
/// Chunks whose records an open fetches at most (64 GiB of file).
const MAX_OPEN_CHUNKS: u64 = 1024;

/// A read that ends past the length read from metadata less than this ago
/// takes that length as the end of the file instead of asking again (the
/// kernel's last read of a file usually asks past its end). As long as the
/// kernel trusts a file's size by default; another mount's growth of an
/// open file shows within it, as it does to stat.
const LENGTH_TRUST: Duration = Duration::from_secs(1);

impl OpenFile {
    /// The committed length, as just read from metadata.
    fn set_length(&self, length: u64) {
        self.length.store(length, Ordering::Relaxed);
        *self.length_at.lock() = Some(std::time::Instant::now());
    }

    /// The committed length if it was read from metadata lately.
    fn recent_length(&self) -> Option<u64> {
        let known = self.length.load(Ordering::Relaxed);
        let fresh = self
            .length_at
            .lock()
            .is_some_and(|at| at.elapsed() < LENGTH_TRUST);
        (known > 0 && fresh).then_some(known)
    }

    /// Take the records of the first chunks, read with the attributes.
    fn prime(&self, chunks: Vec<Vec<SliceRecord>>) {
        self.prime_shared(chunks.into_iter().map(Arc::new).collect());
    }

    /// Take the records of every chunk, read with a directory's listing.
    fn prime_shared(&self, chunks: Vec<Arc<Vec<SliceRecord>>>) {
        let mut r = self.records.lock();
        for (index, records) in chunks.into_iter().enumerate() {
            r.chunks.insert(index as u32, records);
        }
    }

    fn invalidate(&self) {
        {
            let mut r = self.records.lock();
            r.generation += 1;
            r.chunks.clear();
        }
        self.length.store(0, Ordering::Relaxed);
    }

    fn chunk_records(
        &self,
        meta: &Meta,
        ino: Ino,
        index: u32,
    ) -> tessera_meta::Result<Arc<Vec<SliceRecord>>> {
        let generation = {
            let r = self.records.lock();
            if let Some(c) = r.chunks.get(&index) {
                return Ok(c.clone());
            }
            r.generation
        };
        let loaded = Arc::new(meta.read_chunk(ino, index)?);
        {
            let mut r = self.records.lock();
            if r.generation == generation {
                r.chunks.insert(index, loaded.clone());
            }
        }
        Ok(loaded)
    }
}

/// A file opened read-only, remembered for `--open-cache`: later opens and
/// getattrs within the time are served from here, and reads reuse the slice
/// records the open file already loaded.
/// Files `--open-cache` remembers at most; past it, expired entries go,
/// and if that is not enough, all of them (each holds the file's slice
/// records, so the map must not grow with every file ever opened).
const MAX_CACHED_OPENS: usize = 4096;

struct CachedOpen {
    attr: Attr,
    at: std::time::Instant,
    file: Arc<OpenFile>,
}

enum Work {
    Compact(Ino, u32),
    Clean,
}

/// The file system of one mount.
pub struct Vfs {
    pub meta: Arc<Meta>,
    pub chunks: Arc<ChunkStore>,
    config: VfsConfig,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    open_files: Mutex<HashMap<Ino, Arc<OpenFile>>>,
    /// Inodes this mount has taken a lock on since they were last closed.
    locked: Mutex<std::collections::HashSet<Ino>>,
    open_cache: Mutex<HashMap<Ino, CachedOpen>>,
    /// Inode numbers of names looked up lately, a hint that lets a rename
    /// read the moved inode together with the entries. Never trusted: the
    /// rename checks it against the entry it reads.
    recent_names: Mutex<HashMap<(Ino, Vec<u8>), Ino>>,
    /// Files looked up by a name `--prefetch-on-open` matches: their next
    /// open for reading starts a whole-file prefetch.
    prefetch_next: Mutex<std::collections::HashSet<Ino>>,
    work: Mutex<Option<mpsc::Sender<Work>>>,
    stop: Arc<AtomicBool>,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Workers of `tessera warmup`'s requests.
    control: control::ControlWorkers,
    /// When this mount started, and whether a metadata backup is running.
    started: std::time::Instant,
    backup_running: AtomicBool,
    /// A trash purge is running on the heartbeat thread.
    purging: AtomicBool,
    /// Lock owners of this mount waiting for a lock, and the lock each
    /// waits for (deadlock detection).
    lock_waits: Mutex<HashMap<u64, LockRequest>>,
    /// One deadlock check (and the registration or withdrawal that follows
    /// it) at a time, so two waiters of one cycle do not both give up. It
    /// is held across metadata reads, but only lock waiters take it.
    deadlock_checks: Mutex<()>,
    /// Lazily imported directories (`tessera import --lazy`).
    lazy: import::LazyDirs,
    /// Directory listings trusted for `--open-cache`.
    dir_cache: dircache::DirCache,
}

fn is_write_only(flags: i32) -> bool {
    flags & libc::O_ACCMODE == libc::O_WRONLY
}

fn is_write_open(flags: i32) -> bool {
    matches!(flags & libc::O_ACCMODE, libc::O_WRONLY | libc::O_RDWR)
}

impl Vfs {
    pub fn new(meta: Arc<Meta>, chunks: Arc<ChunkStore>, config: VfsConfig) -> Arc<Self> {
        Arc::new(Vfs {
            meta,
            chunks,
            config,
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            open_files: Mutex::new(HashMap::new()),
            locked: Mutex::new(std::collections::HashSet::new()),
            open_cache: Mutex::new(HashMap::new()),
            recent_names: Mutex::new(HashMap::new()),
            prefetch_next: Mutex::new(std::collections::HashSet::new()),
            work: Mutex::new(None),
            stop: Arc::new(AtomicBool::new(false)),
            workers: Mutex::new(Vec::new()),
            control: control::ControlWorkers::default(),
            started: std::time::Instant::now(),
            backup_running: AtomicBool::new(false),
            purging: AtomicBool::new(false),
            lock_waits: Mutex::new(HashMap::new()),
            deadlock_checks: Mutex::new(()),
            lazy: import::LazyDirs::default(),
            dir_cache: dircache::DirCache::default(),
        })
    }

    /// Register a session and start the background workers.
    pub fn start(self: &Arc<Self>, mountpoint: &str) -> Result<u64> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        let sid = self.meta.new_session(SessionInfo {
            sid: 0,
            host,
            pid: std::process::id(),
            mountpoint: mountpoint.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            heartbeat: 0,
        })?;
        // Quotas (and the volume's usage, for its capacity) from the start.
        self.sync_quotas();
        self.reload_lazy_imports();
        let (tx, rx) = mpsc::channel();
        {
            let mut w = self.work.lock();
            *w = Some(tx);
        }
        let mut workers = Vec::new();
        let me = self.clone();
        workers.push(
            std::thread::Builder::new()
                .name("tessera-heartbeat".into())
                .spawn(move || {
                    tessera_meta::kv::mark_background_thread();
                    me.heartbeat_loop()
                })
                .map_err(|e| VfsError::new(libc::EIO, e.to_string()))?,
        );
        let me = self.clone();
        workers.push(
            std::thread::Builder::new()
                .name("tessera-cleaner".into())
                .spawn(move || {
                    tessera_meta::kv::mark_background_thread();
                    me.work_loop(rx)
                })
                .map_err(|e| VfsError::new(libc::EIO, e.to_string()))?,
        );
        {
            let mut w = self.workers.lock();
            *w = workers;
        }
        info!(sid, "session started");
        Ok(sid)
    }

    fn heartbeat_loop(self: &Arc<Self>) {
        let mut last_clean = std::time::Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            for tick in 0..(self.config.heartbeat.as_millis() / 100).max(1) {
                if self.stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
                if tick % 10 == 9 {
                    self.flush_usage();
                    self.sync_quotas();
                }
            }
            self.flush_usage();
            self.refresh_gauges();
            if let Err(e) = self.meta.heartbeat() {
                warn!(error = %e, "heartbeat failed");
            }
            self.reload_lazy_imports();
            self.maybe_backup();
            self.maybe_purge_trash();
            if last_clean.elapsed() >= self.config.session_timeout / 2 {
                last_clean = std::time::Instant::now();
                match self
                    .meta
                    .clean_stale_sessions(self.config.session_timeout.as_secs() as i64)
                {
                    Ok(s) if !s.is_empty() => {
                        info!(sessions = ?s, "cleaned up stale sessions");
                        self.send(Work::Clean);
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "stale session cleanup failed"),
                }
            }
        }
    }

    /// Add this mount's space and inode changes to the volume's counters.
    fn flush_usage(&self) {
        if let Err(e) = self.meta.flush_usage() {
            warn!(error = %e, "updating the volume's usage counters failed");
        }
    }

    /// Add this mount's changes to the quotas' usage and reload them.
    fn sync_quotas(&self) {
        if let Err(e) = self.meta.sync_quotas() {
            warn!(error = %e, "updating the directory quotas failed");
        }
    }

    fn work_loop(&self, rx: mpsc::Receiver<Work>) {
        loop {
            let work = rx.recv_timeout(Duration::from_secs(2));
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            match work {
                Ok(Work::Compact(ino, index)) => match self.chunks.compact(ino, index) {
                    Ok(Some(freed)) => {
                        if let Some(of) = self.open_file(ino) {
                            of.invalidate();
                        }
                        self.release_slices(&freed, false);
                    }
                    Ok(None) => {}
                    Err(e) => warn!(ino, index, error = %e, "compaction failed"),
                },
                Ok(Work::Clean) | Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Err(e) = self.chunks.clean_deleted_files() {
                        warn!(error = %e, "cleaning deleted files failed");
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn send(&self, w: Work) {
        {
            let tx = self.work.lock();
            if let Some(tx) = tx.as_ref() {
                let _ = tx.send(w);
            }
        }
    }

    /// Flush everything, stop the workers and close the session.
    pub fn shutdown(&self) {
        let files: Vec<_> = self.open_files.lock().values().cloned().collect();
        for of in files {
            if let Err(e) = of.writer.flush() {
                warn!(error = %e, "flush at unmount failed");
            }
        }
        if let Err(e) = self.chunks.clean_deleted_files() {
            warn!(error = %e, "cleaning deleted files at unmount failed");
        }
        self.chunks.wait_for_deletions(Duration::from_secs(30));
        self.stop.store(true, Ordering::Relaxed);
        {
            let mut w = self.work.lock();
            w.take();
        }
        let workers = {
            let mut w = self.workers.lock();
            std::mem::take(&mut *w)
        };
        for w in workers {
            let _ = w.join();
        }
        let sid = self.meta.session_id();
        if sid != 0 {
            if let Err(e) = self.meta.close_session(sid) {
                warn!(error = %e, "closing the session failed");
            }
        }
        self.flush_usage();
        self.sync_quotas();
    }

    pub fn metrics(&self) -> &tessera_metrics::Metrics {
        self.chunks.metrics()
    }

    /// The text of `.stats`: every metric of this mount.
    /// The `.stats` file: every metric, after a first comment line naming
    /// the mount's process (`tessera umount` waits for it to exit, so the
    /// last flushes and deletions are done when umount returns).
    pub fn stats_text(&self) -> String {
        self.refresh_gauges();
        format!(
            "# tessera mount pid {}\n{}",
            std::process::id(),
            self.metrics().render()
        )
    }

    /// Copy counters kept outside the metrics registry into it.
    pub fn refresh_gauges(&self) {
        self.metrics()
            .meta_txn_restarts
            .set(tessera_meta::kv::TXN_RESTARTS.load(Ordering::Relaxed) as f64);
        self.metrics()
            .meta_txns
            .set(tessera_meta::kv::TXNS.load(Ordering::Relaxed) as f64);
        self.metrics()
            .meta_background_txns
            .set(tessera_meta::kv::BACKGROUND_TXNS.load(Ordering::Relaxed) as f64);
    }

    /// Names of internal files cannot be taken by volume entries.
    fn check_name(&self, parent: Ino, name: &[u8]) -> Result<()> {
        if internal::lookup(parent, name).is_some() {
            return Err(VfsError::new(
                libc::EEXIST,
                format!("{} is reserved by the mount", String::from_utf8_lossy(name)),
            ));
        }
        Ok(())
    }

    /// The first read through a handle sets the file's access time when
    /// the mount's rule asks for it: `relatime` when the
    /// access time is not after the last change or is a day old, so a file
    /// read again and again costs one metadata write a day;
    /// `strictatime` at every open that reads; `noatime` (the default)
    /// never.
    fn touch_atime(&self, ino: Ino, h: &Handle) {
        let Some(opened) = h.opened_times.lock().take() else {
            return;
        };
        let (now, _) = tessera_meta::now();
        let atime = (opened.atime, opened.atime_ns);
        let due = match self.config.atime {
            AtimeMode::NoAtime => false,
            AtimeMode::StrictAtime => true,
            AtimeMode::RelAtime => {
                atime <= (opened.mtime, opened.mtime_ns)
                    || atime <= (opened.ctime, opened.ctime_ns)
                    || now - opened.atime >= 24 * 3600
            }
        };
        if !due || self.config.read_only {
            return;
        }
        if let Err(e) = self.meta.touch_atime(ino) {
            debug!(ino, error = %e, "could not update the access time");
        }
        self.forget_open(ino);
    }

    /// The remembered open of `ino`, while `--open-cache` still trusts it.
    fn cached_open(&self, ino: Ino) -> Option<(Attr, Arc<OpenFile>)> {
        let ttl = self.config.open_cache;
        if ttl.is_zero() {
            return None;
        }
        let mut cache = self.open_cache.lock();
        match cache.get(&ino) {
            Some(c) if c.at.elapsed() < ttl => Some((c.attr, c.file.clone())),
            Some(_) => {
                cache.remove(&ino);
                None
            }
            None => None,
        }
    }

    /// Remember which inode a name led to (bounded: cleared when full).
    fn remember_name(&self, parent: Ino, name: &[u8], ino: Ino) {
        {
            let mut m = self.recent_names.lock();
            if m.len() >= 4096 {
                m.clear();
            }
            m.insert((parent, name.to_vec()), ino);
        }
    }

    /// Drop what `--open-cache` remembers of `ino` (this mount changed it).
    fn forget_open(&self, ino: Ino) {
        if !self.config.open_cache.is_zero() {
            {
                let mut c = self.open_cache.lock();
                c.remove(&ino);
            }
        }
    }

    /// Drop everything `--open-cache` remembers (a namespace change may
    /// have moved link counts and change times).
    fn forget_all_opens(&self) {
        if !self.config.open_cache.is_zero() {
            {
                let mut c = self.open_cache.lock();
                c.clear();
            }
        }
    }

    /// Every change this mount makes goes through here first: it also
    /// retires the directory listings `--open-cache` keeps.
    fn writable(&self) -> Result<()> {
        self.dir_cache.changed();
        if self.config.read_only {
            Err(VfsError::new(libc::EROFS, "mounted read-only"))
        } else {
            Ok(())
        }
    }

    fn open_file(&self, ino: Ino) -> Option<Arc<OpenFile>> {
        self.open_files.lock().get(&ino).cloned()
    }

    fn freed(&self, r: &UnlinkResult) {
        if r.data_freed {
            self.send(Work::Clean);
        }
    }
}

#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod two_clients_tests;

/// Whether `ctx` may open a file with `attr` as `flags` ask, by its mode
/// bits (root may always; supplementary groups are not known here, so a
/// user who has access only through one is refused). The kernel checks
/// every other open itself (`default_permissions`); this is for the one
/// it cannot: a create that found the file made meanwhile by another mount.
fn permits(
    attr: &Attr,
    access_acl: Option<&tessera_meta::acl::Acl>,
    ctx: &Ctx,
    flags: i32,
) -> bool {
    let want_read = flags & libc::O_ACCMODE != libc::O_WRONLY;
    let want_write = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
    let want = if want_read { 4 } else { 0 } | if want_write { 2 } else { 0 };
    tessera_meta::acl::allows(attr, access_acl, ctx.uid, ctx.gid, want)
}
