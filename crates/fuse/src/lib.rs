//! The FUSE adapter: translates kernel requests into [`Vfs`] calls and their
//! results into replies. No file-system behaviour lives here.
//!
//! Permission checks are left to the kernel (`default_permissions`); flock
//! requests arrive as whole-file record locks (FUSE_FLOCK_LOCKS) and share the
//! POSIX lock table.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Config, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, MountOption, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyIoctl, ReplyLock, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, SessionACL,
    TimeOrNow, WriteFlags,
};
use tessera_meta::{Attr, Ctx, SetAttr};
use tessera_vfs::{Vfs, VfsError};
use tracing::{debug, warn};

pub mod control;

/// Cache lifetimes handed to the kernel.
#[derive(Debug, Clone, Copy)]
pub struct CacheTtls {
    pub attr: Duration,
    pub entry: Duration,
    pub dir_entry: Duration,
}

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountConfig {
    pub fs_name: String,
    pub read_only: bool,
    pub threads: usize,
    pub ttls: CacheTtls,
    /// Extra `-o` options, passed through.
    pub options: Vec<String>,
    /// Inode shown as the root of the mount (`--subdir`).
    pub root: u64,
}

pub struct TesseraFs {
    vfs: Arc<Vfs>,
    ttls: CacheTtls,
    /// The volume inode that the kernel sees as inode 1.
    root: u64,
    /// Cache work queued by `tessera warmup --background`, started on
    /// first use.
    background: std::sync::Mutex<Option<std::sync::mpsc::Sender<(u64, control::Request)>>>,
    /// Whether the kernel took FUSE_PASSTHROUGH (reads of files with a
    /// local copy go straight to it).
    passthrough: std::sync::atomic::AtomicBool,
    modes: std::sync::Mutex<OpenModes>,
    /// Signalled whenever a handle is released, for a writer waiting out
    /// the releases of readers that have already closed.
    modes_released: std::sync::Condvar,
}

/// How long a writer waits for passthrough readers to be released before
/// it is refused. The kernel sends FUSE_RELEASE after close() has already
/// returned, so `cat f; echo x >> f` must not fail on the reader's release
/// still being in flight; a reader that is really still open is refused.
const RELEASE_GRACE: Duration = Duration::from_secs(2);

/// Threads that work through background warm-ups, one range at a time each.
const BACKGROUND_WORKERS: usize = 4;

/// How an inode is open in the kernel. FUSE fails an open with EIO if it
/// would mix passthrough and cached opens of one inode, or give one inode
/// two backing files, so every open is decided against this.
enum IoMode {
    Passthrough {
        backing: Arc<fuser::BackingId>,
        opens: usize,
    },
    Cached {
        opens: usize,
    },
}

/// How a new handle opens its inode.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HandleMode {
    Passthrough,
    Cached,
}

#[derive(Default)]
struct OpenModes {
    inodes: HashMap<u64, IoMode>,
    /// The inode of every file handle; each counts for its inode's mode
    /// (a handle is never opened against the inode's current mode).
    handles: HashMap<u64, u64>,
}

impl OpenModes {
    fn opened(
        &mut self,
        ino: u64,
        fh: u64,
        mode: HandleMode,
        backing: Option<Arc<fuser::BackingId>>,
    ) {
        self.handles.insert(fh, ino);
        match (self.inodes.get_mut(&ino), mode, backing) {
            (Some(IoMode::Passthrough { opens, .. }), HandleMode::Passthrough, _)
            | (Some(IoMode::Cached { opens }), HandleMode::Cached, _) => *opens += 1,
            (None, HandleMode::Passthrough, Some(backing)) => {
                self.inodes
                    .insert(ino, IoMode::Passthrough { backing, opens: 1 });
            }
            (None, _, _) => {
                self.inodes.insert(ino, IoMode::Cached { opens: 1 });
            }
            _ => {}
        }
    }

    fn released(&mut self, fh: u64) {
        let Some(ino) = self.handles.remove(&fh) else {
            return;
        };
        let last = match self.inodes.get_mut(&ino) {
            Some(IoMode::Passthrough { opens, .. }) | Some(IoMode::Cached { opens }) => {
                *opens = opens.saturating_sub(1);
                *opens == 0
            }
            None => false,
        };
        if last {
            // Dropping the last reference closes the backing file id.
            self.inodes.remove(&ino);
        }
    }
}

fn errno(e: VfsError) -> Errno {
    debug!(errno = e.errno, reason = %e.reason, "request failed");
    Errno::from_i32(e.errno)
}

fn to_time(secs: i64, nsec: u32) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
            + Duration::from_nanos(u64::from(nsec))
    }
}

fn from_time(t: TimeOrNow) -> Option<(i64, u32)> {
    match t {
        TimeOrNow::Now => None,
        TimeOrNow::SpecificTime(t) => Some(match t.duration_since(UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
            Err(e) => {
                let d = e.duration();
                let (mut s, mut ns) = (-(d.as_secs() as i64), d.subsec_nanos());
                if ns > 0 {
                    s -= 1;
                    ns = 1_000_000_000 - ns;
                }
                (s, ns)
            }
        }),
    }
}

fn kind(t: tessera_meta::FileType) -> FileType {
    use tessera_meta::FileType as T;
    match t {
        T::File => FileType::RegularFile,
        T::Dir => FileType::Directory,
        T::Symlink => FileType::Symlink,
        T::Fifo => FileType::NamedPipe,
        T::BlockDev => FileType::BlockDevice,
        T::CharDev => FileType::CharDevice,
        T::Socket => FileType::Socket,
    }
}

fn file_attr(ino: u64, a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: a.length,
        // What is stored, not the length: a sparse file's holes take no
        // blocks (`du`, `ls -s`, `stat`).
        blocks: if a.typ == tessera_meta::FileType::File {
            a.stored.div_ceil(512)
        } else {
            a.length.div_ceil(512)
        },
        atime: to_time(a.atime, a.atime_ns),
        mtime: to_time(a.mtime, a.mtime_ns),
        ctime: to_time(a.ctime, a.ctime_ns),
        crtime: to_time(a.ctime, a.ctime_ns),
        kind: kind(a.typ),
        perm: a.mode,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: 4096,
        flags: 0,
    }
}

/// The caller of a create. The kernel masks the mode itself unless the
/// mount took FUSE_DONT_MASK (ACL volumes, where a default ACL replaces
/// the umask); the engine applies the umask again either way, which
/// changes nothing when the kernel already did.
fn with_umask(req: &Request, umask: u32) -> Ctx {
    Ctx { umask, ..ctx(req) }
}

fn ctx(req: &Request) -> Ctx {
    Ctx {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
        umask: 0,
    }
}

impl TesseraFs {
    pub fn new(vfs: Arc<Vfs>, ttls: CacheTtls, root: u64) -> Self {
        TesseraFs {
            vfs,
            ttls,
            root,
            background: std::sync::Mutex::new(None),
            passthrough: std::sync::atomic::AtomicBool::new(false),
            modes: std::sync::Mutex::new(OpenModes::default()),
            modes_released: std::sync::Condvar::new(),
        }
    }

    /// Queue a range for the background workers (started on first use).
    fn queue_background(&self, ino: u64, req: control::Request) -> Result<(), Errno> {
        let mut slot = self.background.lock().map_err(|_| Errno::EIO)?;
        let sender = match slot.as_ref() {
            Some(s) => s.clone(),
            None => {
                let (tx, rx) = std::sync::mpsc::channel::<(u64, control::Request)>();
                let rx = Arc::new(std::sync::Mutex::new(rx));
                for i in 0..BACKGROUND_WORKERS {
                    let (rx, vfs) = (rx.clone(), self.vfs.clone());
                    std::thread::Builder::new()
                        .name(format!("warmup-{i}"))
                        .spawn(move || loop {
                            let next = match rx.lock() {
                                Ok(rx) => rx.recv(),
                                Err(_) => return,
                            };
                            let Ok((ino, req)) = next else { return };
                            let r = vfs.cache_range(ino, req.offset, req.length, req.action());
                            match r {
                                Ok(rep) if rep.failed_blocks > 0 => warn!(
                                    ino,
                                    failed = rep.failed_blocks,
                                    error = rep.error.as_deref().unwrap_or(""),
                                    "background warm-up could not fetch every block"
                                ),
                                Ok(_) => {}
                                Err(e) => {
                                    warn!(ino, error = %e.reason, "background warm-up failed")
                                }
                            }
                        })
                        .map_err(|_| Errno::EAGAIN)?;
                }
                *slot = Some(tx.clone());
                tx
            }
        };
        sender.send((ino, req)).map_err(|_| Errno::EIO)
    }

    /// Kernel inode to volume inode.
    fn i(&self, ino: INodeNo) -> u64 {
        if ino.0 == 1 {
            self.root
        } else {
            ino.0
        }
    }

    /// Volume inode to kernel inode.
    fn o(&self, ino: u64) -> u64 {
        if ino == self.root {
            1
        } else {
            ino
        }
    }

    fn entry_ttl(&self, a: &Attr) -> Duration {
        if a.typ == tessera_meta::FileType::Dir {
            self.ttls.dir_entry
        } else {
            self.ttls.entry
        }
    }

    fn reply_entry(&self, reply: ReplyEntry, r: tessera_vfs::Result<(u64, Attr)>) {
        match r {
            Ok((ino, a)) => reply.entry_with_ttls(
                &self.ttls.attr,
                &self.entry_ttl(&a),
                &file_attr(self.o(ino), &a),
                Generation(0),
            ),
            Err(e) => reply.error(errno(e)),
        }
    }
}

fn empty(reply: ReplyEmpty, r: tessera_vfs::Result<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

impl Filesystem for TesseraFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        let wanted = InitFlags::FUSE_POSIX_LOCKS
            | InitFlags::FUSE_FLOCK_LOCKS
            | InitFlags::FUSE_ATOMIC_O_TRUNC
            | InitFlags::FUSE_BIG_WRITES
            | InitFlags::FUSE_ASYNC_READ
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_MAX_PAGES
            // File handles (name_to_handle_at, NFS export) outlive the
            // kernel's inode cache: the kernel finds an evicted inode by
            // looking up "." in it, which the engine answers. Inode numbers
            // are never reused, so a handle never names another file.
            | InitFlags::FUSE_EXPORT_SUPPORT;
        let available = wanted & config.capabilities();
        let _ = config.add_capabilities(available);
        if self.vfs.acl_enabled() {
            // Without the kernel's enforcement an ACL that narrows access
            // would silently not apply: refuse to mount rather than that.
            let acl = InitFlags::FUSE_POSIX_ACL | InitFlags::FUSE_DONT_MASK;
            if !config.capabilities().contains(acl) || config.add_capabilities(acl).is_err() {
                return Err(std::io::Error::other(
                    "the volume keeps POSIX ACLs, but this kernel's FUSE cannot enforce them",
                ));
            }
        }
        // Passthrough needs CAP_SYS_ADMIN and a kernel that offers it.
        if nix_is_root()
            && config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH)
            && config.set_max_stack_depth(1).is_ok()
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
        {
            self.passthrough
                .store(true, std::sync::atomic::Ordering::Relaxed);
            debug!("kernel passthrough available for local copies");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.reply_entry(reply, self.vfs.lookup(self.i(parent), name.as_bytes()));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.vfs.getattr(self.i(ino)) {
            Ok(a) => reply.attr(&self.ttls.attr, &file_attr(self.o(self.i(ino)), &a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            atime: atime.map(from_time),
            mtime: mtime.map(from_time),
        };
        match self.vfs.setattr(self.i(ino), &set, size) {
            Ok(a) => reply.attr(&self.ttls.attr, &file_attr(self.o(self.i(ino)), &a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.vfs.readlink(self.i(ino)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.reply_entry(
            reply,
            self.vfs.mknod(
                &with_umask(req, umask),
                self.i(parent),
                name.as_bytes(),
                mode,
                rdev,
            ),
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.reply_entry(
            reply,
            self.vfs.mkdir(
                &with_umask(req, umask),
                self.i(parent),
                name.as_bytes(),
                mode,
            ),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.vfs.unlink(self.i(parent), name.as_bytes()));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.vfs.rmdir(self.i(parent), name.as_bytes()));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.reply_entry(
            reply,
            self.vfs.symlink(
                &ctx(req),
                self.i(parent),
                link_name.as_bytes(),
                target.as_os_str().as_bytes(),
            ),
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        empty(
            reply,
            self.vfs.rename(
                self.i(parent),
                name.as_bytes(),
                self.i(newparent),
                newname.as_bytes(),
                flags.bits(),
            ),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.reply_entry(
            reply,
            self.vfs
                .link(self.i(ino), self.i(newparent), newname.as_bytes())
                .map(|a| (self.i(ino), a)),
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let ino = self.i(ino);
        // Internal files change size between getattr and read: bypass the
        // page cache so the kernel does not cut reads at a stale length.
        if tessera_vfs::internal::is_internal(ino) {
            match self.vfs.open(ino, flags.0) {
                Ok((fh, _)) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
                Err(e) => reply.error(errno(e)),
            }
            return;
        }
        let read_only = flags.0 & libc::O_ACCMODE == libc::O_RDONLY && flags.0 & libc::O_TRUNC == 0;
        // No lock is held across the metadata and file work below: the
        // inode's mode is looked at first, and again when registering.
        let open_as = |modes: &OpenModes| match modes.inodes.get(&ino) {
            Some(IoMode::Passthrough { backing, .. }) => Some(Some(backing.clone())),
            Some(IoMode::Cached { .. }) => Some(None),
            None => None,
        };
        let existing = self.modes.lock().ok().and_then(|m| {
            if read_only || !matches!(open_as(&m), Some(Some(_))) {
                return Some(open_as(&m));
            }
            let (m, _) = self
                .modes_released
                .wait_timeout_while(m, RELEASE_GRACE, |m| matches!(open_as(m), Some(Some(_))))
                .ok()?;
            Some(open_as(&m))
        });
        let Some(existing) = existing else {
            reply.error(Errno::EIO);
            return;
        };
        // The kernel wants every open of an inode read by passthrough to
        // be passthrough too, which would send writes to the local copy:
        // a writer waits until the readers have closed.
        let refuse_writer = || {
            debug!(
                ino,
                "file is open for reading from its local copy; refusing a writer"
            );
            Errno::ETXTBSY
        };
        if !read_only && matches!(existing, Some(Some(_))) {
            reply.error(refuse_writer());
            return;
        }
        let passthrough = self.passthrough.load(std::sync::atomic::Ordering::Relaxed);
        let candidate = if read_only && passthrough && existing.is_none() {
            self.vfs
                .local_copy(ino)
                .and_then(|path| std::fs::File::open(path).ok())
                .and_then(|file| match reply.open_backing(&file) {
                    Ok(id) => Some(Arc::new(id)),
                    Err(e) => {
                        debug!(ino, error = %e, "no passthrough for this file");
                        None
                    }
                })
        } else {
            None
        };
        let fh = match self.vfs.open(ino, flags.0) {
            Ok((fh, _)) => fh,
            Err(e) => {
                reply.error(errno(e));
                return;
            }
        };
        let Ok(mut modes) = self.modes.lock() else {
            reply.error(Errno::EIO);
            return;
        };
        // Another open may have settled the inode's mode meanwhile: a
        // reader joins it (one backing file per inode), a writer of an
        // inode now read by passthrough is refused.
        let (mode, backing) = match open_as(&modes) {
            Some(Some(b)) if read_only => (HandleMode::Passthrough, Some(b)),
            Some(Some(_)) => {
                drop(modes);
                let _ = self.vfs.release(ino, fh, None);
                reply.error(refuse_writer());
                return;
            }
            Some(None) => (HandleMode::Cached, None),
            None => match candidate {
                Some(b) => (HandleMode::Passthrough, Some(b)),
                None => (HandleMode::Cached, None),
            },
        };
        modes.opened(ino, fh, mode, backing.clone());
        drop(modes);
        match (mode, backing) {
            (HandleMode::Passthrough, Some(b)) => {
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &b)
            }
            _ => reply.opened(FileHandle(fh), FopenFlags::empty()),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.vfs.read(self.i(ino), fh.0, offset, size as usize) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.vfs.write(self.i(ino), fh.0, offset, data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.vfs.flush(self.i(ino), fh.0, lock_owner.0));
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Ok(mut modes) = self.modes.lock() {
            modes.released(fh.0);
        }
        self.modes_released.notify_all();
        empty(
            reply,
            self.vfs.release(self.i(ino), fh.0, lock_owner.map(|o| o.0)),
        );
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.vfs.fsync(self.i(ino)));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.vfs.opendir(self.i(ino)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.vfs.readdir(fh.0, offset) {
            Ok(entries) => entries,
            Err(e) => return reply.error(errno(e)),
        };
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(
                INodeNo(self.o(e.ino)),
                i as u64 + 1,
                kind(e.typ),
                OsStr::from_bytes(&e.name),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.vfs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.vfs.statfs() {
            Ok(s) => {
                let bsize = 4096u64;
                reply.statfs(
                    s.total_space / bsize,
                    s.avail_space / bsize,
                    s.avail_space / bsize,
                    s.used_inodes + s.avail_inodes,
                    s.avail_inodes,
                    bsize as u32,
                    255,
                    bsize as u32,
                )
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        empty(
            reply,
            self.vfs
                .setxattr(&ctx(req), self.i(ino), name.as_bytes(), value, flags),
        );
    }

    /// `tessera warmup`'s cache-control requests (see [`control`]); any
    /// other ioctl is not supported. The work runs off the FUSE thread.
    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
        reply: ReplyIoctl,
    ) {
        let Some(req) = control::Request::decode(cmd, in_data) else {
            reply.error(Errno::ENOTTY);
            return;
        };
        if (out_size as usize) < control::SIZE {
            reply.error(Errno::EINVAL);
            return;
        }
        let ino = self.i(ino);
        if req.flags & control::FLAG_GROUP != 0 {
            let mine = self.vfs.chunks.group().map(|g| g.name().to_string());
            if mine.as_deref() != Some(req.group.as_str()) {
                let report = tessera_vfs::CacheReport {
                    failed_blocks: 1,
                    error: Some(match mine {
                        Some(g) => {
                            format!("this mount is in cache group {g:?}, not {:?}", req.group)
                        }
                        None => format!(
                            "this mount is not in cache group {:?} (mount it with --cache-group)",
                            req.group
                        ),
                    }),
                    ..Default::default()
                };
                reply.ioctl(0, &control::encode_report(&report));
                return;
            }
        }
        if req.flags & control::FLAG_BACKGROUND != 0 {
            match self.queue_background(ino, req) {
                Ok(()) => reply.ioctl(0, &control::encode_report(&Default::default())),
                Err(e) => reply.error(e),
            }
            return;
        }
        let vfs = self.vfs.clone();
        let work = move || {
            if req.op == control::Op::LocalCopy {
                return match vfs.make_local_copy(ino) {
                    Ok(n) => {
                        let report = tessera_vfs::CacheReport {
                            bytes: n,
                            cached: n,
                            ..Default::default()
                        };
                        reply.ioctl(0, &control::encode_report(&report))
                    }
                    Err(e) => reply.error(errno(e)),
                };
            }
            if req.op == control::Op::Evict && req.flags & control::FLAG_GROUP == 0 {
                vfs.drop_local_copy(ino);
            }
            match vfs.cache_range(ino, req.offset, req.length, req.action()) {
                Ok(report) => reply.ioctl(0, &control::encode_report(&report)),
                Err(e) => reply.error(errno(e)),
            }
        };
        if let Err(e) = std::thread::Builder::new()
            .name("cache-control".into())
            .spawn(work)
        {
            warn!(error = %e, "cannot start a cache-control thread");
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.vfs.getxattr(self.i(ino), name.as_bytes()) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.vfs.listxattr(self.i(ino)) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(&n);
                    buf.push(0);
                }
                if size == 0 {
                    reply.size(buf.len() as u32)
                } else if buf.len() > size as usize {
                    reply.error(Errno::ERANGE)
                } else {
                    reply.data(&buf)
                }
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.vfs.removexattr(self.i(ino), name.as_bytes()));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.vfs.create(
            &with_umask(req, umask),
            self.i(parent),
            name.as_bytes(),
            mode,
            flags,
        ) {
            Ok((ino, a, fh)) => {
                if let Ok(mut modes) = self.modes.lock() {
                    modes.opened(ino, fh, HandleMode::Cached, None);
                }
                reply.created(
                    &self.entry_ttl(&a),
                    &file_attr(self.o(ino), &a),
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                )
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        match self.vfs.getlk(self.i(ino), lock_owner.0, typ, start, end) {
            Ok(Some(l)) => reply.locked(l.start, l.end, l.typ, l.pid),
            Ok(None) => reply.locked(start, end, libc::F_UNLCK, pid),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let lock = tessera_vfs::LockRequest {
            ino: self.i(ino),
            fh: Some(fh.0),
            owner: lock_owner.0,
            pid,
            typ,
            start,
            end,
            block: sleep,
        };
        self.vfs.setlk(lock, Box::new(move |r| empty(reply, r)));
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        empty(
            reply,
            self.vfs
                .fallocate(&ctx(req), self.i(ino), mode, offset, length),
        );
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        _fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        _fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        match self
            .vfs
            .copy_file_range(self.i(ino_in), offset_in, self.i(ino_out), offset_out, len)
        {
            Ok(n) => reply.written(n.min(u64::from(u32::MAX)) as u32),
            Err(e) => reply.error(errno(e)),
        }
    }
}

/// The option that `-o name` overrides, if it has an opposite.
fn opposite_option(name: &str) -> Option<MountOption> {
    Some(match name {
        "ro" => MountOption::RW,
        "rw" => MountOption::RO,
        "noatime" => MountOption::Atime,
        "atime" => MountOption::NoAtime,
        "nodev" => MountOption::Dev,
        "dev" => MountOption::NoDev,
        "nosuid" => MountOption::Suid,
        "suid" => MountOption::NoSuid,
        "noexec" => MountOption::Exec,
        "exec" => MountOption::NoExec,
        "async" => MountOption::Sync,
        "sync" => MountOption::Async,
        _ => return None,
    })
}

/// Mount and serve until unmounted. Blocks the calling thread.
pub fn mount(vfs: Arc<Vfs>, mountpoint: &Path, config: &MountConfig) -> std::io::Result<()> {
    let mut options = vec![
        MountOption::FSName(config.fs_name.clone()),
        MountOption::Subtype("tessera".into()),
        MountOption::DefaultPermissions,
    ];
    if config.read_only {
        options.push(MountOption::RO);
    }
    // Access times are the file system's to keep (see the VFS's atime
    // rule); the kernel takes no relatime or strictatime from FUSE.
    let kernel_options = config
        .options
        .iter()
        .flat_map(|o| o.split(','))
        .filter(|o| {
            !matches!(
                *o,
                "relatime" | "strictatime" | "nodiratime" | "diratime" | ""
            )
        });
    for o in kernel_options {
        // As mount(8) does, the later of two opposite options wins
        // (`-o suid -o nosuid` is nosuid), rather than refusing the pair.
        if let Some(opposite) = opposite_option(o) {
            options.retain(|kept| *kept != opposite);
        }
        options.push(match o {
            "ro" => MountOption::RO,
            "rw" => MountOption::RW,
            "noatime" => MountOption::NoAtime,
            "atime" => MountOption::Atime,
            "nodev" => MountOption::NoDev,
            "dev" => MountOption::Dev,
            "nosuid" => MountOption::NoSuid,
            "suid" => MountOption::Suid,
            "noexec" => MountOption::NoExec,
            "exec" => MountOption::Exec,
            "async" => MountOption::Async,
            "dirsync" => MountOption::DirSync,
            "sync" => MountOption::Sync,
            other => MountOption::CUSTOM(other.to_string()),
        });
    }
    let mut cfg = Config::default();
    cfg.mount_options = options;
    cfg.acl = if nix_is_root() {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    cfg.n_threads = Some(config.threads.max(1));
    cfg.clone_fd = true;
    let fs = TesseraFs::new(vfs, config.ttls, config.root);
    let target = mountpoint.to_path_buf();
    std::thread::Builder::new()
        .name("tessera-bdi".into())
        .spawn(move || raise_kernel_readahead(&target, KERNEL_READAHEAD_KB))?;
    // The session ends when the kernel ends the connection: at unmount
    // (`umount`, `tessera umount`, or the signal handler of the mount
    // command, which unmounts first). fuser's own clean-up would then
    // unmount the mountpoint *path* again, taking down whatever is mounted
    // there by then: a new mount of the same path made right after a plain
    // `umount` was unmounted by the old process's exit (xfstests
    // generic/128). So the session runs on fuser's background thread, its
    // result is joined here, and the mount handle is left to the end of
    // the process, never dropped.
    let background =
        std::mem::ManuallyDrop::new(fuser::Session::new(fs, mountpoint, &cfg)?.spawn()?);
    // SAFETY: `background` is wrapped in ManuallyDrop and never used again
    // after its join handle is read out of it, so that handle is owned and
    // dropped exactly once (by `join`).
    let guard = unsafe { std::ptr::read(&background.guard) };
    let served = guard
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the FUSE session thread panicked")));
    match served {
        // A worker that takes a request off /dev/fuse while the kernel tears
        // the connection down at unmount gets ECONNABORTED instead of the
        // usual ENODEV (seen once in a test run: the mount then exited 1
        // after a clean umount); an abort through sysfs ends it the same
        // way. Either way the mount is over, not failed.
        Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {
            tracing::info!("the kernel ended the FUSE connection (aborted)");
            Ok(())
        }
        other => other,
    }
}

/// Kernel readahead of the mount, in KiB.
const KERNEL_READAHEAD_KB: u32 = 16384;

/// The kernel proposes 128 KiB of readahead to FUSE, which caps read
/// requests at 128 KiB however large the application's reads are. Raising
/// the mount's backing-device readahead lets sequential reads arrive as
/// 1 MiB requests (max_pages), eight times fewer round trips. The device
/// comes from /proc/self/mountinfo: a stat of the mountpoint would wait
/// for this very file system. Needs root; without it reads stay at 128 KiB.
fn raise_kernel_readahead(mountpoint: &Path, kb: u32) {
    let want = mountpoint.to_string_lossy().into_owned();
    for _ in 0..200 {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let dev = info.lines().find_map(|l| {
            let mut f = l.split(' ');
            let dev = f.nth(2)?;
            let point = f.nth(1)?;
            (point.replace("\\040", " ") == want).then(|| dev.to_string())
        });
        if let Some(dev) = dev {
            let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
            match std::fs::write(&path, kb.to_string()) {
                Ok(()) => debug!(%path, kb, "raised kernel readahead"),
                Err(e) => debug!(%path, error = %e, "cannot raise kernel readahead"),
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
