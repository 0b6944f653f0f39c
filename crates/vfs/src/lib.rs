//! POSIX semantics over metadata and the data path, independent of FUSE.
//!
//! [`Vfs`] owns file handles, open files (one write buffer and one cache of
//! slice records per open inode), lock owners and the background workers
//! (session heartbeat, stale-session cleanup, deletion of freed data,
//! compaction). The FUSE adapter only translates requests into these calls,
//! so everything here can be exercised in-process.

pub mod control;
mod copies;
mod handles;
pub mod internal;
pub mod open_modes;

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
            atime: AtimeMode::NoAtime,
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

impl OpenFile {
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
    work: Mutex<Option<mpsc::Sender<Work>>>,
    stop: Arc<AtomicBool>,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Workers of `tessera warmup`'s requests.
    control: control::ControlWorkers,
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
            work: Mutex::new(None),
            stop: Arc::new(AtomicBool::new(false)),
            workers: Mutex::new(Vec::new()),
            control: control::ControlWorkers::default(),
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
                .spawn(move || me.heartbeat_loop())
                .map_err(|e| VfsError::new(libc::EIO, e.to_string()))?,
        );
        let me = self.clone();
        workers.push(
            std::thread::Builder::new()
                .name("tessera-cleaner".into())
                .spawn(move || me.work_loop(rx))
                .map_err(|e| VfsError::new(libc::EIO, e.to_string()))?,
        );
        {
            let mut w = self.workers.lock();
            *w = workers;
        }
        info!(sid, "session started");
        Ok(sid)
    }

    fn heartbeat_loop(&self) {
        let mut last_clean = std::time::Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            for tick in 0..(self.config.heartbeat.as_millis() / 100).max(1) {
                if self.stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
                if tick % 10 == 9 {
                    self.flush_usage();
                }
            }
            self.flush_usage();
            self.refresh_gauges();
            if let Err(e) = self.meta.heartbeat() {
                warn!(error = %e, "heartbeat failed");
            }
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
                        self.chunks.delete_slices(&freed);
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

    fn writable(&self) -> Result<()> {
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

    // ---- namespace -------------------------------------------------------

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<(Ino, Attr)> {
        self.metrics().op("lookup");
        if let Some(ino) = internal::lookup(parent, name) {
            return Ok((ino, self.getattr(ino)?));
        }
        let (ino, attr) = self.meta.lookup(parent, name)?;
        self.remember_name(parent, name, ino);
        if self.open_file(ino).is_some() {
            return Ok((ino, self.getattr(ino)?));
        }
        Ok((ino, attr))
    }

    pub fn getattr(&self, ino: Ino) -> Result<Attr> {
        self.metrics().op("getattr");
        if internal::is_internal(ino) {
            return Ok(internal::attr(self.stats_text().len() as u64));
        }
        if let Some((attr, of)) = self.cached_open(ino) {
            if !of.writer.has_dirty() {
                return Ok(attr);
            }
        }
        self.settle_appends(ino)?;
        // Sample the buffer before metadata: a flush that commits in between
        // then shows up in one or the other, never in neither.
        let buffered = self.buffered_length(ino);
        let written = self
            .open_file(ino)
            .and_then(|of| of.writer.uncommitted_mtime());
        let mut attr = match self.meta.getattr(ino) {
            Err(MetaError::NotFound) => {
                return self
                    .removed_open_dir(ino)
                    .ok_or_else(|| VfsError::new(libc::ENOENT, "no such file or directory"))
            }
            other => other?,
        };
        attr.length = attr.length.max(buffered);
        // Writes not yet committed changed the file when they were made, as
        // a local file system shows at once.
        if let Some((secs, ns)) = written.filter(|w| *w > (attr.mtime, attr.mtime_ns)) {
            (attr.mtime, attr.mtime_ns) = (secs, ns);
            (attr.ctime, attr.ctime_ns) = (secs, ns);
        }
        Ok(attr)
    }

    /// A directory removed (or renamed over) while open: fstat of its
    /// handle still works and shows no links, as on a local file system.
    fn removed_open_dir(&self, ino: Ino) -> Option<Attr> {
        let handles = self.handles.lock();
        let attr = handles
            .values()
            .filter(|h| h.ino == ino)
            .find_map(|h| h.dir_attr)?;
        Some(Attr { nlink: 0, ..attr })
    }

    /// Commit pending O_APPEND writes, whose place in the file is unknown
    /// until then, before anything that shows the file's length or bytes.
    fn settle_appends(&self, ino: Ino) -> Result<()> {
        match self.open_file(ino) {
            Some(of) if of.writer.has_appends() => self.flush_file(ino, &of),
            _ => Ok(()),
        }
    }

    fn buffered_length(&self, ino: Ino) -> u64 {
        self.open_file(ino)
            .map(|of| of.writer.buffered_length())
            .unwrap_or(0)
    }

    pub fn setattr(&self, ino: Ino, set: &SetAttr, size: Option<u64>) -> Result<Attr> {
        self.metrics().op("setattr");
        if internal::is_internal(ino) {
            return Err(VfsError::new(libc::EPERM, ".stats is read-only"));
        }
        self.writable()?;
        self.forget_open(ino);
        if let Some(size) = size {
            self.truncate(ino, size)?;
        }
        if set.mtime.is_some() {
            // Times set on a file with buffered writes (futimens after
            // write, as tar and cp -p do) must outlive them: commit the
            // writes first, so their commit does not stamp a later time.
            if let Some(of) = self.open_file(ino) {
                self.flush_file(ino, &of)?;
            }
        }
        if set.mode.is_some()
            || set.uid.is_some()
            || set.gid.is_some()
            || set.atime.is_some()
            || set.mtime.is_some()
        {
            self.meta.setattr(ino, set)?;
        }
        self.getattr(ino)
    }

    pub fn truncate(&self, ino: Ino, size: u64) -> Result<Attr> {
        self.writable()?;
        self.forget_open(ino);
        let of = self.open_file(ino);
        if let Some(of) = &of {
            self.flush_file(ino, of)?;
        }
        let t = self.meta.truncate(ino, size)?;
        if let Some(of) = &of {
            of.invalidate();
        }
        self.chunks.delete_slices_later(&t.freed);
        Ok(t.attr)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn mknod(
        &self,
        ctx: &Ctx,
        parent: Ino,
        name: &[u8],
        mode: u32,
        rdev: u32,
    ) -> Result<(Ino, Attr)> {
        self.metrics().op("mknod");
        self.check_name(parent, name)?;
        self.writable()?;
        let typ = FileType::from_mode(mode).ok_or_else(|| {
            VfsError::new(libc::EINVAL, format!("bad file type in mode {mode:o}"))
        })?;
        if typ == FileType::Dir || typ == FileType::Symlink {
            return Err(VfsError::new(
                libc::EINVAL,
                "mknod cannot make directories or symlinks",
            ));
        }
        Ok(self.meta.mknod(ctx, parent, name, typ, mode, rdev, None)?)
    }

    pub fn mkdir(&self, ctx: &Ctx, parent: Ino, name: &[u8], mode: u32) -> Result<(Ino, Attr)> {
        self.metrics().op("mkdir");
        self.check_name(parent, name)?;
        self.writable()?;
        Ok(self
            .meta
            .mknod(ctx, parent, name, FileType::Dir, mode, 0, None)?)
    }

    pub fn symlink(
        &self,
        ctx: &Ctx,
        parent: Ino,
        name: &[u8],
        target: &[u8],
    ) -> Result<(Ino, Attr)> {
        self.check_name(parent, name)?;
        self.writable()?;
        if target.is_empty() || target.len() >= 4096 {
            return Err(VfsError::new(libc::ENAMETOOLONG, "symlink target length"));
        }
        Ok(self
            .meta
            .mknod(ctx, parent, name, FileType::Symlink, 0o777, 0, Some(target))?)
    }

    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        Ok(self.meta.readlink(ino)?)
    }

    pub fn unlink(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.metrics().op("unlink");
        self.writable()?;
        self.forget_all_opens();
        let r = self.meta.unlink(parent, name)?;
        self.freed(&r);
        Ok(())
    }

    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.metrics().op("rmdir");
        self.writable()?;
        Ok(self.meta.rmdir(parent, name)?)
    }

    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: u32,
    ) -> Result<()> {
        self.metrics().op("rename");
        self.check_name(new_parent, new_name)?;
        self.writable()?;
        self.forget_all_opens();
        let hint = self.recent_names.lock().remove(&(parent, name.to_vec()));
        if let Some(r) = self
            .meta
            .rename_hinted(parent, name, new_parent, new_name, flags, hint)?
        {
            self.freed(&r);
        }
        Ok(())
    }

    pub fn link(&self, ino: Ino, new_parent: Ino, new_name: &[u8]) -> Result<Attr> {
        self.check_name(new_parent, new_name)?;
        self.writable()?;
        self.forget_open(ino);
        self.meta.link(ino, new_parent, new_name)?;
        self.getattr(ino)
    }

    pub fn opendir(&self, ino: Ino) -> Result<u64> {
        self.metrics().op("opendir");
        let attr = self.meta.getattr(ino)?;
        Ok(self.new_handle(Handle::dir(ino, attr)))
    }

    /// A directory's entries, `.` and `..` first.
    fn listing(&self, ino: Ino, attr: &Attr) -> Result<Vec<Entry>> {
        Ok(self.listing_of(ino, attr, self.meta.readdir(ino, false)?))
    }

    fn listing_of(&self, ino: Ino, attr: &Attr, names: Vec<Entry>) -> Vec<Entry> {
        let mut entries = vec![
            Entry {
                name: b".".to_vec(),
                ino,
                typ: FileType::Dir,
                attr: None,
            },
            Entry {
                name: b"..".to_vec(),
                ino: if ino == tessera_meta::ROOT_INO {
                    ino
                } else {
                    attr.parent
                },
                typ: FileType::Dir,
                attr: None,
            },
        ];
        entries.extend(names);
        entries
    }

    /// Entries of an open directory, to be read from `offset` on. The
    /// listing is taken by the read from offset 0, the first or one after
    /// a rewinddir, so names added since opendir show up, as POSIX asks of
    /// a rewind; later offsets read the same listing, so they stay stable.
    pub fn readdir(&self, fh: u64, offset: u64) -> Result<Arc<Vec<Entry>>> {
        let h = self.handle(fh)?;
        let Some(opened) = h.dir_attr else {
            return Err(VfsError::new(libc::ENOTDIR, "not an open directory"));
        };
        let held = h.entries.lock().clone();
        if let Some(entries) = held.filter(|_| offset != 0) {
            return Ok(entries);
        }
        // A directory removed while open lists as empty: `.` and `..` only.
        let fresh = match self.meta.getattr(h.ino) {
            Ok(attr) => self.listing(h.ino, &attr)?,
            Err(MetaError::NotFound) => {
                let mut only_dots = self.listing_of(h.ino, &opened, Vec::new());
                only_dots.truncate(2);
                only_dots
            }
            Err(e) => return Err(e.into()),
        };
        let fresh = Arc::new(fresh);
        *h.entries.lock() = Some(fresh.clone());
        Ok(fresh)
    }

    pub fn releasedir(&self, fh: u64) {
        self.drop_handle(fh);
    }

    // ---- files -------------------------------------------------------------

    fn new_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        {
            let mut m = self.handles.lock();
            m.insert(fh, Arc::new(h));
        }
        fh
    }

    pub fn handle(&self, fh: u64) -> Result<Arc<Handle>> {
        self.handles
            .lock()
            .get(&fh)
            .cloned()
            .ok_or_else(|| VfsError::new(libc::EBADF, format!("no open handle {fh}")))
    }

    fn drop_handle(&self, fh: u64) -> Option<Arc<Handle>> {
        self.handles.lock().remove(&fh)
    }

    /// Open (and, with `create`, make) a regular file.
    pub fn open(&self, ino: Ino, flags: i32) -> Result<(u64, Attr)> {
        self.open_known(ino, flags, None)
    }

    /// Open with the inode's attributes already in hand (`known`), as
    /// create has them, saving the metadata read.
    fn open_known(&self, ino: Ino, flags: i32, known: Option<Attr>) -> Result<(u64, Attr)> {
        self.metrics().op("open");
        if internal::is_internal(ino) {
            if is_write_open(flags) {
                return Err(VfsError::new(libc::EACCES, ".stats is read-only"));
            }
            let text = self.stats_text().into_bytes();
            let attr = internal::attr(text.len() as u64);
            return Ok((self.new_handle(Handle::snapshot(ino, text)), attr));
        }
        if is_write_open(flags) {
            self.writable()?;
        }
        let read_only = !is_write_open(flags) && flags & libc::O_TRUNC == 0;
        let cached = if read_only {
            self.cached_open(ino)
        } else {
            self.forget_open(ino);
            None
        };
        let attr = match (&cached, known) {
            (Some((attr, _)), _) => *attr,
            (None, Some(attr)) => attr,
            (None, None) => self.meta.getattr(ino)?,
        };
        if attr.typ == FileType::Dir && is_write_open(flags) {
            return Err(VfsError::new(
                libc::EISDIR,
                "cannot open a directory for writing",
            ));
        }
        // The kernel hands O_TRUNC to open (atomic_o_trunc); truncating an
        // empty file still updates its times, as POSIX asks.
        let just_created = known.is_some() && attr.length == 0;
        let attr = if flags & libc::O_TRUNC != 0
            && is_write_open(flags)
            && attr.typ == FileType::File
            && !just_created
        {
            self.truncate(ino, 0)?
        } else {
            attr
        };
        // The handle count moves under the map's lock: a release that sees
        // no handles left removes the open file under the same lock, so an
        // open can never hold an OpenFile that has left the map.
        let (of, first) = {
            let mut files = self.open_files.lock();
            let of = files
                .entry(ino)
                .or_insert_with(|| match &cached {
                    Some((_, file)) => file.clone(),
                    None => Arc::new(OpenFile {
                        writer: FileWriter::new(ino, self.chunks.clone()),
                        handles: AtomicU64::new(0),
                        records: Mutex::new(RecordCache::default()),
                        length: AtomicU64::new(0),
                        no_xattrs: std::sync::atomic::AtomicBool::new(false),
                    }),
                })
                .clone();
            let first = of.handles.fetch_add(1, Ordering::Relaxed) == 0;
            (of, first)
        };
        if first {
            self.meta.open_inode(ino);
        }
        of.no_xattrs.store(
            attr.flags & tessera_meta::attr::FLAG_XATTRS == 0,
            Ordering::Relaxed,
        );
        // Close-to-open: a new open sees what other mounts committed,
        // unless --open-cache says to trust what this mount saw last.
        if !of.writer.has_dirty() && cached.is_none() {
            of.invalidate();
            of.length.store(attr.length, Ordering::Relaxed);
        }
        if cached.is_none()
            && read_only
            && attr.typ == FileType::File
            && !self.config.open_cache.is_zero()
            && !of.writer.has_dirty()
        {
            {
                let mut c = self.open_cache.lock();
                if c.len() >= MAX_CACHED_OPENS {
                    let ttl = self.config.open_cache;
                    c.retain(|_, open| open.at.elapsed() < ttl);
                    if c.len() >= MAX_CACHED_OPENS {
                        c.clear();
                    }
                }
                c.insert(
                    ino,
                    CachedOpen {
                        attr,
                        at: std::time::Instant::now(),
                        file: of.clone(),
                    },
                );
            }
        }
        let handle = Handle::file(ino, flags);
        if self.config.atime != AtimeMode::NoAtime
            && !is_write_only(flags)
            && flags & libc::O_NOATIME == 0
        {
            {
                let mut t = handle.opened_times.lock();
                *t = Some(attr);
            }
        }
        let fh = self.new_handle(handle);
        let length = attr.length.max(of.writer.buffered_length());
        Ok((fh, Attr { length, ..attr }))
    }

    pub fn create(
        &self,
        ctx: &Ctx,
        parent: Ino,
        name: &[u8],
        mode: u32,
        flags: i32,
    ) -> Result<(Ino, Attr, u64)> {
        self.metrics().op("create");
        self.check_name(parent, name)?;
        self.writable()?;
        let (ino, attr) = match self
            .meta
            .mknod(ctx, parent, name, FileType::File, mode, 0, None)
        {
            Ok(made) => made,
            // Another mount created it since the kernel looked: without
            // O_EXCL, POSIX opens the file that is there.
            Err(MetaError::Exists) if flags & libc::O_EXCL == 0 => {
                let (ino, attr) = self.meta.lookup(parent, name)?;
                if attr.typ == FileType::Dir {
                    return Err(VfsError::new(
                        libc::EISDIR,
                        "a directory of that name exists",
                    ));
                }
                let access_acl = (attr.flags & tessera_meta::attr::FLAG_ACL_ACCESS != 0)
                    .then(|| self.meta.getxattr(ino, tessera_meta::acl::ACCESS).ok())
                    .flatten()
                    .and_then(|raw| tessera_meta::acl::Acl::decode(&raw).ok());
                if !permits(&attr, access_acl.as_ref(), ctx, flags) {
                    return Err(VfsError::new(
                        libc::EACCES,
                        "the file another mount created is not open to this user",
                    ));
                }
                let (fh, attr) = self.open_known(ino, flags & !libc::O_CREAT, None)?;
                return Ok((ino, attr, fh));
            }
            Err(e) => return Err(e.into()),
        };
        // The new inode's attributes are the ones mknod just wrote.
        let (fh, attr) = self.open_known(ino, flags, Some(attr))?;
        Ok((ino, attr, fh))
    }

    /// Bytes `[off, off + size)` of an open file, short at its end.
    pub fn read(&self, ino: Ino, fh: u64, off: u64, size: usize) -> Result<Bytes> {
        let _span = tracing::debug_span!("read", ino, off, size).entered();
        self.metrics().op("read");
        if internal::is_internal(ino) {
            let h = self.handle(fh)?;
            let content = h.content.as_deref().unwrap_or_default();
            let start = (off as usize).min(content.len());
            let end = start.saturating_add(size).min(content.len());
            return Ok(Bytes::copy_from_slice(&content[start..end]));
        }
        let of = self
            .open_file(ino)
            .ok_or_else(|| VfsError::new(libc::EBADF, "file is not open"))?;
        let h = self.handle(fh)?;
        if of.writer.has_appends() {
            self.flush_file(ino, &of)?;
        }
        self.touch_atime(ino, &h);
        let length = self.read_length(ino, &of, off + size as u64)?;
        if off >= length {
            return Ok(Bytes::new());
        }
        let n = (size as u64).min(length - off) as usize;
        let config = self.chunks.config();
        let (access, ahead_from, ahead_len) = h.track_read(
            off,
            n as u64,
            config.block_size as u64,
            config.max_readahead as u64,
        );
        let mut records = |index| Ok(of.chunk_records(&self.meta, ino, index)?);
        let ahead_len = ahead_len.min(length.saturating_sub(ahead_from));
        if ahead_len > 0 {
            self.chunks.readahead(ahead_from, ahead_len, &mut records);
        }
        let mut attempt = 0;
        let spans = loop {
            match self.chunks.read_committed(off, n, access, &mut records) {
                // Compaction (here or in another mount) replaced the slices
                // our cached records name: reload them and read again.
                Err(e) if e.is_missing_block() && attempt < 3 => {
                    debug!(ino, error = %e, "stale slice records, reloading");
                    attempt += 1;
                    of.invalidate();
                }
                other => break other?,
            }
        };
        let data = match spans.as_slice() {
            // The common case, a read inside one cached block with nothing
            // buffered over it: hand out the block's bytes without a copy.
            [Span::Data(b)] if !of.writer.has_dirty() => b.clone(),
            _ => {
                let mut buf = Vec::with_capacity(n);
                for span in &spans {
                    match span {
                        Span::Data(b) => buf.extend_from_slice(b),
                        Span::Zero(z) => buf.resize(buf.len() + z, 0),
                    }
                }
                of.writer.overlay(off, &mut buf);
                Bytes::from(buf)
            }
        };
        self.metrics().fuse_read_bytes.inc_by(data.len() as u64);
        Ok(data)
    }

    /// Warm up, check, evict or unpin the cached blocks behind
    /// `[off, off + len)` of a file (`tessera warmup`); the range is cut
    /// at the file's committed length. Slice records are read afresh, so
    /// the blocks are those of the file as committed now.
    pub fn cache_range(
        &self,
        ino: Ino,
        off: u64,
        len: u64,
        action: CacheAction,
    ) -> Result<CacheReport> {
        let _span = tracing::debug_span!("cache_range", ino, off, len, ?action).entered();
        self.metrics().op("cache");
        if internal::is_internal(ino) {
            return Ok(CacheReport::default());
        }
        let attr = self.meta.getattr(ino)?;
        if attr.typ != FileType::File {
            return Err(VfsError::new(libc::EISDIR, "only files have cached blocks"));
        }
        let end = off.saturating_add(len).min(attr.length);
        if off >= end {
            return Ok(CacheReport::default());
        }
        let mut records = |index| Ok(Arc::new(self.meta.read_chunk(ino, index)?));
        Ok(self
            .chunks
            .cache_range(off, end - off, &mut records, action)?)
    }

    /// The length a read up to `want` may see: buffered writes count, and
    /// metadata is asked only when the read reaches past what we know.
    fn read_length(&self, ino: Ino, of: &OpenFile, want: u64) -> Result<u64> {
        let buffered = of.writer.buffered_length();
        let known = of.length.load(Ordering::Relaxed).max(buffered);
        if want <= known {
            return Ok(known);
        }
        if let Some((attr, _)) = self.cached_open(ino) {
            if !of.writer.has_dirty() {
                return Ok(attr.length);
            }
        }
        let committed = self.meta.getattr(ino)?.length;
        of.length.store(committed, Ordering::Relaxed);
        Ok(committed.max(buffered))
    }

    pub fn write(&self, ino: Ino, fh: u64, off: u64, data: &[u8]) -> Result<usize> {
        let _span = tracing::debug_span!("write", ino, off, len = data.len()).entered();
        self.metrics().op("write");
        self.writable()?;
        let h = self.handle(fh)?;
        let of = self
            .open_file(ino)
            .ok_or_else(|| VfsError::new(libc::EBADF, "file is not open"))?;
        if h.flags & libc::O_APPEND != 0 {
            // The kernel's offset is its idea of the end of the file, which
            // another mount may have moved: the commit decides the place.
            if of.writer.append(data)? {
                self.flush_file(ino, &of)?;
            }
            self.metrics().fuse_write_bytes.inc_by(data.len() as u64);
            return Ok(data.len());
        }
        if off
            .checked_add(data.len() as u64)
            .is_none_or(|end| end > tessera_meta::MAX_FILE_SIZE)
        {
            return Err(VfsError::new(
                libc::EFBIG,
                "write past the largest file size (256 PiB)",
            ));
        }
        if of.writer.write(off, data)? {
            self.flush_file(ino, &of)?;
        }
        self.metrics().fuse_write_bytes.inc_by(data.len() as u64);
        Ok(data.len())
    }

    fn flush_file(&self, ino: Ino, of: &OpenFile) -> Result<()> {
        let flushed = of.writer.flush()?;
        if !flushed.committed {
            // Nothing of ours changed the file: what it caches still holds.
            return Ok(());
        }
        self.forget_open(ino);
        of.invalidate();
        for index in flushed.compact {
            self.send(Work::Compact(ino, index));
        }
        Ok(())
    }

    /// close(2) of one descriptor: commit buffered data, drop POSIX locks of
    /// the owner.
    pub fn flush(&self, ino: Ino, _fh: u64, lock_owner: u64) -> Result<()> {
        if internal::is_internal(ino) {
            return Ok(());
        }
        if let Some(of) = self.open_file(ino) {
            self.flush_file(ino, &of)?;
        }
        if lock_owner != 0 && self.may_hold_locks(ino) {
            self.meta
                .setlk(ino, lock_owner, 0, libc::F_UNLCK, 0, u64::MAX)?;
        }
        Ok(())
    }

    pub fn fsync(&self, ino: Ino) -> Result<()> {
        self.metrics().op("fsync");
        if let Some(of) = self.open_file(ino) {
            self.flush_file(ino, &of)?;
        }
        Ok(())
    }

    /// The last descriptor of an open file description is closed. A flock
    /// taken through it (`flock_owner`, as the kernel reports it) goes too
    /// (flocks arrive as whole-file record locks, see the FUSE adapter), and
    /// so do the locks of every owner that locked through it: open file
    /// description locks end with the description, and a process's POSIX
    /// locks were already dropped by the flush of its close.
    pub fn release(&self, ino: Ino, fh: u64, flock_owner: Option<u64>) -> Result<()> {
        let handle = self.drop_handle(fh);
        if internal::is_internal(ino) {
            return Ok(());
        }
        let mut owners: Vec<u64> = handle
            .map(|h| h.lock_owners.lock().clone())
            .unwrap_or_default();
        // An owner that also locked through another open handle of the file
        // is a process (POSIX locks, dropped by the flush of its close),
        // not this description: the locks it holds now may have been taken
        // through the other handle after this one was closed (the kernel
        // sends this release late), and they stay.
        if !owners.is_empty() {
            {
                let handles = self.handles.lock();
                owners.retain(|owner| {
                    !handles
                        .values()
                        .any(|h| h.ino == ino && h.lock_owners.lock().contains(owner))
                });
            }
        }
        owners.extend(flock_owner);
        if self.may_hold_locks(ino) {
            for owner in owners {
                if let Err(e) = self.meta.setlk(ino, owner, 0, libc::F_UNLCK, 0, u64::MAX) {
                    debug!(error = %e, "releasing the locks of a closed file");
                }
            }
        }
        let Some(of) = self.open_file(ino) else {
            return Ok(());
        };
        let flushed = self.flush_file(ino, &of);
        if of.handles.fetch_sub(1, Ordering::Relaxed) == 1 {
            // Every descriptor is closed, and each close dropped its locks.
            {
                let mut l = self.locked.lock();
                l.remove(&ino);
            }
            {
                let mut files = self.open_files.lock();
                if of.handles.load(Ordering::Relaxed) == 0 && !of.writer.has_dirty() {
                    files.remove(&ino);
                }
            }
            if self.meta.close_inode(ino)? {
                self.send(Work::Clean);
            }
        }
        flushed
    }

    /// fallocate(2) by `ctx`. Like a write, it takes setuid (and setgid
    /// with group execute) off a file changed by anyone but root; the
    /// kernel does that for writes, but leaves fallocate to the file system.
    pub fn fallocate(&self, ctx: &Ctx, ino: Ino, mode: i32, off: u64, len: u64) -> Result<()> {
        self.writable()?;
        self.forget_open(ino);
        // An allocation larger than the space df shows cannot be promised
        // (ENOSPC, as a local file system says); punching and zeroing free
        // space are always allowed.
        let allocates = mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) == 0;
        if allocates && len > self.meta.statfs()?.avail_space {
            return Err(VfsError::new(
                libc::ENOSPC,
                "fallocate asks for more than the volume has free",
            ));
        }
        let of = self.open_file(ino);
        if let Some(of) = &of {
            self.flush_file(ino, of)?;
        }
        let r = self.meta.fallocate(ino, mode, off, len)?;
        let privileged = u32::from(r.attr.mode) & (libc::S_ISUID | libc::S_ISGID);
        if ctx.uid != 0 && privileged != 0 {
            let mut keep = u32::from(r.attr.mode) & !libc::S_ISUID;
            // As the kernel decides (setattr_should_drop_sgid): setgid
            // with group execute is always dropped; without it, unless
            // the caller is in the file's group (supplementary groups are
            // not known here: the caller's own group is what counts).
            if keep & libc::S_IXGRP != 0 || ctx.gid != r.attr.gid {
                keep &= !libc::S_ISGID;
            }
            if keep != u32::from(r.attr.mode) {
                let set = SetAttr {
                    mode: Some(keep),
                    ..Default::default()
                };
                self.meta.setattr(ino, &set)?;
            }
        }
        if let Some(of) = &of {
            of.invalidate();
        }
        self.chunks.delete_slices_later(&r.freed);
        Ok(())
    }

    /// Copy between files by sharing slices: no data moves.
    pub fn copy_file_range(
        &self,
        ino_in: Ino,
        off_in: u64,
        ino_out: Ino,
        off_out: u64,
        len: u64,
    ) -> Result<u64> {
        self.writable()?;
        if ino_in == ino_out && off_in.max(off_out) < off_in.min(off_out).saturating_add(len) {
            return Err(VfsError::new(
                libc::EINVAL,
                "overlapping copy within one file",
            ));
        }
        for ino in [ino_in, ino_out] {
            if let Some(of) = self.open_file(ino) {
                self.flush_file(ino, &of)?;
            }
        }
        let (_, n) = self
            .meta
            .copy_range(ino_in, off_in, ino_out, off_out, len)?;
        self.forget_open(ino_out);
        if let Some(of) = self.open_file(ino_out) {
            of.invalidate();
        }
        Ok(n)
    }

    // ---- locks -------------------------------------------------------------

    pub fn getlk(
        &self,
        ino: Ino,
        owner: u64,
        typ: i32,
        start: u64,
        end: u64,
    ) -> Result<Option<PosixLock>> {
        let deadline = std::time::Instant::now() + LOCAL_RELEASE_GRACE;
        loop {
            match self.meta.getlk(ino, owner, typ, start, end)? {
                Some(held) if held.local && std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                other => return Ok(other),
            }
        }
    }

    /// Take, change or release a POSIX record lock (flocks arrive as
    /// whole-file record locks). `done` gets the answer. A lock that must
    /// wait (`block`, F_SETLKW) waits on a thread of its own, never on the
    /// caller's: the caller is a FUSE worker, and a few waiters holding all
    /// of them would leave the mount unable to serve anything, the unlock
    /// that would free them included. The waiter gives up (EINTR) when the
    /// process that asked is gone or has a signal to take (killed, or
    /// interrupted: the kernel's FUSE_INTERRUPT does not reach this layer,
    /// and a killed process waits for the answer in uninterruptible
    /// sleep), so a dead process never ends up holding a lock.
    pub fn setlk(self: &Arc<Self>, lock: LockRequest, done: Box<dyn FnOnce(Result<()>) + Send>) {
        let LockRequest {
            ino,
            fh,
            owner,
            pid,
            typ,
            start,
            end,
            block,
        } = lock;
        if typ != libc::F_UNLCK {
            {
                let mut l = self.locked.lock();
                l.insert(ino);
            }
            if let Some(h) = fh.and_then(|fh| self.handle(fh).ok()) {
                {
                    let mut owners = h.lock_owners.lock();
                    if !owners.contains(&owner) {
                        owners.push(owner);
                    }
                }
            }
        }
        let deadline = std::time::Instant::now() + LOCAL_RELEASE_GRACE;
        let first = loop {
            match self.meta.setlk(ino, owner, pid, typ, start, end) {
                Err(MetaError::WouldBlock)
                    if !block
                        && std::time::Instant::now() < deadline
                        && self
                            .meta
                            .getlk(ino, owner, typ, start, end)
                            .ok()
                            .flatten()
                            .is_some_and(|held| held.local) =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                other => break other,
            }
        };
        match first {
            Err(MetaError::WouldBlock) if block => {}
            other => return done(other.map_err(VfsError::from)),
        }
        let me = self.clone();
        let waiter = std::thread::Builder::new()
            .name("tessera-lockwait".into())
            .spawn(move || {
                let mut wait = Duration::from_millis(5);
                loop {
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_millis(200));
                    if pid != 0 && gone_or_signalled(pid) {
                        return done(Err(VfsError::new(
                            libc::EINTR,
                            "the process waiting for the lock is gone or was interrupted",
                        )));
                    }
                    match me.meta.setlk(ino, owner, pid, typ, start, end) {
                        Err(MetaError::WouldBlock) => continue,
                        other => return done(other.map_err(VfsError::from)),
                    }
                }
            });
        if let Err(e) = waiter {
            warn!(error = %e, "no thread to wait for a lock on");
        }
    }

    /// Whether this mount may hold a lock on `ino`; closes of files never
    /// locked here skip the unlock transaction.
    fn may_hold_locks(&self, ino: Ino) -> bool {
        self.locked.lock().contains(&ino)
    }

    // ---- misc ----------------------------------------------------------------

    pub fn statfs(&self) -> Result<StatFs> {
        self.metrics().op("statfs");
        Ok(self.meta.statfs()?)
    }

    // `.stats` has no extended attributes and takes none (it has no inode in
    // the engine: asking there would say ENOENT, and `ls -l`, which reads
    // its security attributes, would report the file missing).

    /// Whether the volume keeps POSIX ACLs (the mount then asks the kernel
    /// to enforce them).
    pub fn acl_enabled(&self) -> bool {
        self.config.acl
    }

    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        self.acl_kind(name)?;
        if internal::is_internal(ino) {
            return Err(VfsError::new(libc::ENODATA, ".stats has no attributes"));
        }
        if name == b"security.capability"
            && self
                .open_file(ino)
                .is_some_and(|of| of.no_xattrs.load(Ordering::Relaxed))
        {
            return Err(VfsError::new(libc::ENODATA, "no such attribute"));
        }
        Ok(self.meta.getxattr(ino, name)?)
    }

    /// `ctx` matters to ACLs only: setting one as a user outside the
    /// file's group clears its setgid bit.
    pub fn setxattr(
        &self,
        ctx: &Ctx,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        flags: i32,
    ) -> Result<()> {
        let acl = self.acl_kind(name)?;
        if internal::is_internal(ino) {
            return Err(VfsError::new(libc::EPERM, ".stats is read-only"));
        }
        self.writable()?;
        if let Some(of) = self.open_file(ino) {
            of.no_xattrs.store(false, Ordering::Relaxed);
        }
        match acl {
            Some(kind) => self.meta.set_acl(ctx, ino, kind, Some(value)).map(drop),
            None => self.meta.setxattr(ino, name, value, flags),
        }
        .map_err(VfsError::from)
    }

    pub fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        if internal::is_internal(ino) {
            return Ok(Vec::new());
        }
        Ok(self.meta.listxattr(ino)?)
    }

    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        let acl = self.acl_kind(name)?;
        if internal::is_internal(ino) {
            return Err(VfsError::new(libc::EPERM, ".stats is read-only"));
        }
        self.writable()?;
        match acl {
            Some(kind) => self.meta.set_acl(&Ctx::ROOT, ino, kind, None).map(drop),
            None => self.meta.removexattr(ino, name),
        }
        .map_err(VfsError::from)
    }

    /// Which POSIX ACL an xattr name is, if any; refused on a volume
    /// without ACLs. Stored as plain xattrs they did harm: `cp -a` sets a
    /// copy's permissions by writing an ACL equal to its mode, which then
    /// changed nothing (copies kept mode 0600). EOPNOTSUPP makes tools
    /// fall back to chmod.
    fn acl_kind(&self, name: &[u8]) -> Result<Option<tessera_meta::acl::Kind>> {
        if !name.starts_with(b"system.posix_acl_") {
            return Ok(None);
        }
        match tessera_meta::acl::Kind::of_name(name) {
            Some(kind) if self.config.acl => Ok(Some(kind)),
            Some(_) => Err(VfsError::new(
                libc::EOPNOTSUPP,
                "POSIX ACLs are not enabled on this volume (format --enable-acl)",
            )),
            None => Err(VfsError::new(libc::EOPNOTSUPP, "not a POSIX ACL name")),
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

/// How long a lock held by a process of this mount is looked at again
/// before a conflict with it is reported: the kernel sends the release that
/// ends a flock or an open file description lock after close() has
/// returned, so a lock freed by a close just now may still be on record.
const LOCAL_RELEASE_GRACE: Duration = Duration::from_millis(50);

/// A lock call as the kernel makes it.
#[derive(Debug, Clone, Copy)]
pub struct LockRequest {
    pub ino: Ino,
    /// The handle the call came through (None when unknown).
    pub fh: Option<u64>,
    /// Who holds the lock: a process's files, an open file description
    /// (OFD locks) or a flock's file, as an opaque id.
    pub owner: u64,
    /// The process that asked (0: none to watch while waiting).
    pub pid: u32,
    /// F_RDLCK, F_WRLCK or F_UNLCK.
    pub typ: i32,
    pub start: u64,
    /// Inclusive end (u64::MAX: to the end of the file).
    pub end: u64,
    /// Wait for a conflicting lock to go (F_SETLKW).
    pub block: bool,
}

/// Whether process (or thread) `pid` has exited or has a signal pending
/// that it neither blocks nor ignores, from `/proc/{pid}/status`.
fn gone_or_signalled(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    let mask = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let pending = mask("SigPnd:") | mask("ShdPnd:");
    status.contains("State:\tZ") || pending & !mask("SigBlk:") & !mask("SigIgn:") != 0
}

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
    if ctx.uid == 0 {
        return true;
    }
    let want_read = flags & libc::O_ACCMODE != libc::O_WRONLY;
    let want_write = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
    if let Some(acl) = access_acl {
        let want = if want_read { 4 } else { 0 } | if want_write { 2 } else { 0 };
        return acl.permits(attr.uid, attr.gid, ctx.uid, ctx.gid, want);
    }
    let bits = if ctx.uid == attr.uid {
        (attr.mode >> 6) & 7
    } else if ctx.gid == attr.gid {
        (attr.mode >> 3) & 7
    } else {
        attr.mode & 7
    };
    (!want_read || bits & 4 != 0) && (!want_write || bits & 2 != 0)
}
