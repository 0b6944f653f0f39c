//! The FUSE adapter: translates kernel requests into [`Vfs`] calls and their
//! results into replies. No file-system behaviour lives here.
//!
//! Permission checks are left to the kernel (`default_permissions`); flock
//! requests arrive as whole-file record locks (FUSE_FLOCK_LOCKS) and share the
//! POSIX lock table.

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
use tessera_vfs::{OpenMode, OpenModes, Vfs, VfsError};
use tracing::{debug, warn};

pub mod control;

/// Cache lifetimes handed to the kernel.
#[derive(Debug, Clone, Copy)]
pub struct CacheTtls {
    pub attr: Duration,
    pub entry: Duration,
    pub dir_entry: Duration,
    /// How long a name found absent stays absent (a negative entry).
    pub negative: Duration,
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
    /// Whether the kernel took FUSE_PASSTHROUGH (reads of files with a
    /// local copy go straight to it).
    passthrough: std::sync::atomic::AtomicBool,
    /// How each open inode is open in the kernel (passthrough or cached).
    modes: OpenModes<Arc<fuser::BackingId>>,
    /// Tells the kernel to drop cached names that a request changed behind
    /// its back (`tessera rmr`, `tessera clone`); set once the session is.
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
}

/// Drop the kernel's cached entry `name` in `parent` (a kernel inode).
fn forget_entry(notifier: &std::sync::OnceLock<fuser::Notifier>, parent: INodeNo, name: &[u8]) {
    if let Some(n) = notifier.get() {
        if let Err(e) = n.inval_entry(parent, OsStr::from_bytes(name)) {
            debug!(error = %e, "cannot invalidate a kernel entry");
        }
    }
}

/// The errno of a failed request, after logging it at its level (failures
/// of the system at warn, the answers applications expect at debug) and
/// counting it per operation and errno.
fn fail(vfs: &Vfs, op: &'static str, e: VfsError) -> Errno {
    let name = errno_name(e.errno);
    if matches!(
        e.errno,
        libc::EIO | libc::ENOSPC | libc::EDQUOT | libc::ESTALE | libc::ENOMEM | libc::ETIMEDOUT
    ) {
        warn!(op, errno = name, reason = %e.reason, "request failed");
    } else {
        debug!(op, errno = name, reason = %e.reason, "request failed");
    }
    vfs.metrics().op_error(op, name);
    Errno::from_i32(e.errno)
}

/// The symbolic name of an errno, for logs and metric labels.
fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOTTY => "ENOTTY",
        libc::ETXTBSY => "ETXTBSY",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::EDEADLK => "EDEADLK",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ESTALE => "ESTALE",
        libc::EDQUOT => "EDQUOT",
        _ => "other",
    }
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
            passthrough: std::sync::atomic::AtomicBool::new(false),
            modes: OpenModes::default(),
            notifier: Arc::new(std::sync::OnceLock::new()),
        }
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

    fn fail(&self, op: &'static str, e: VfsError) -> Errno {
        fail(&self.vfs, op, e)
    }

    fn empty(&self, op: &'static str, reply: ReplyEmpty, r: tessera_vfs::Result<()>) {
        empty(&self.vfs, op, reply, r)
    }

    fn reply_entry(
        &self,
        op: &'static str,
        reply: ReplyEntry,
        r: tessera_vfs::Result<(u64, Attr)>,
    ) {
        match r {
            Ok((ino, a)) => reply.entry_with_ttls(
                &self.ttls.attr,
                &self.entry_ttl(&a),
                &file_attr(self.o(ino), &a),
                Generation(0),
            ),
            Err(e) => reply.error(self.fail(op, e)),
        }
    }
}

fn empty(vfs: &Vfs, op: &'static str, reply: ReplyEmpty, r: tessera_vfs::Result<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(fail(vfs, op, e)),
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
        let found = self.vfs.lookup(self.i(parent), name.as_bytes());
        match found {
            // An entry of inode 0 is the kernel's negative entry: the name
            // is absent, and stays so without asking for that long.
            Err(e) if e.errno == libc::ENOENT && !self.ttls.negative.is_zero() => {
                // Logged and counted as any failed lookup.
                self.fail("lookup", e);
                reply.entry_with_ttls(
                    &self.ttls.attr,
                    &self.ttls.negative,
                    &file_attr(0, &Attr::new(tessera_meta::FileType::File, 0, 0, 0, (0, 0))),
                    Generation(0),
                )
            }
            found => self.reply_entry("lookup", reply, found),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.vfs.getattr(self.i(ino)) {
            Ok(a) => reply.attr(&self.ttls.attr, &file_attr(self.o(self.i(ino)), &a)),
            Err(e) => reply.error(self.fail("getattr", e)),
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
            Err(e) => reply.error(self.fail("setattr", e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.vfs.readlink(self.i(ino)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(self.fail("readlink", e)),
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
            "mknod",
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
            "mkdir",
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
        self.empty(
            "unlink",
            reply,
            self.vfs.unlink(self.i(parent), name.as_bytes()),
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.empty(
            "rmdir",
            reply,
            self.vfs.rmdir(self.i(parent), name.as_bytes()),
        );
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
            "symlink",
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
        self.empty(
            "rename",
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
            "link",
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
                Err(e) => reply.error(self.fail("open", e)),
            }
            return;
        }
        let read_only = flags.0 & libc::O_ACCMODE == libc::O_RDONLY && flags.0 & libc::O_TRUNC == 0;
        // The inode's mode is looked at first and settled when the handle
        // is registered; no lock is held across the work between.
        let current = match self.modes.before_open(ino, read_only) {
            Ok(current) => current,
            Err(e) => return reply.error(self.fail("open", e)),
        };
        let passthrough = self.passthrough.load(std::sync::atomic::Ordering::Relaxed);
        // Opened first: the local copy is then named from what the open
        // read (no metadata round trip of its own).
        let fh = match self.vfs.open(ino, flags.0) {
            Ok((fh, _)) => fh,
            Err(e) => return reply.error(self.fail("open", e)),
        };
        let offered = if read_only && passthrough && matches!(current, OpenMode::Closed) {
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
        match self.modes.register(ino, fh, read_only, offered) {
            Ok(Some(backing)) => {
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &backing)
            }
            Ok(None) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => {
                let _ = self.vfs.release(ino, fh, None);
                reply.error(self.fail("open", e))
            }
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
            Err(e) => reply.error(self.fail("read", e)),
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
            Err(e) => reply.error(self.fail("write", e)),
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
        self.empty(
            "flush",
            reply,
            self.vfs.flush(self.i(ino), fh.0, lock_owner.0),
        );
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
        self.modes.released(fh.0);
        self.empty(
            "release",
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
        self.empty("fsync", reply, self.vfs.fsync(self.i(ino)));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.vfs.opendir(self.i(ino)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(self.fail("opendir", e)),
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
            Err(e) => return reply.error(self.fail("readdir", e)),
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

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        match self.vfs.statfs(self.i(ino)) {
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
            Err(e) => reply.error(self.fail("statfs", e)),
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
        self.empty(
            "setxattr",
            reply,
            self.vfs
                .setxattr(&ctx(req), self.i(ino), name.as_bytes(), value, flags),
        );
    }

    /// `tessera warmup`'s cache-control requests (see [`control`]); any
    /// other ioctl is not supported. The work runs off the FUSE thread.
    fn ioctl(
        &self,
        request: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
        reply: ReplyIoctl,
    ) {
        if let Some(clone) = control::CloneRequest::decode(cmd, in_data) {
            let vfs = self.vfs.clone();
            let ctx = Ctx {
                umask: clone.umask,
                ..ctx(request)
            };
            let src = self.i(INodeNo(clone.src));
            let (notifier, name) = (self.notifier.clone(), clone.name.clone());
            self.vfs.submit_clone(
                ctx,
                src,
                self.i(ino),
                clone.name,
                clone.preserve,
                move |r| match r {
                    Ok(done) => {
                        // A lookup of the new name may have left a negative entry.
                        forget_entry(&notifier, ino, &name);
                        reply.ioctl(0, &control::encode_counts(done.inodes, done.bytes))
                    }
                    Err(e) => reply.error(fail(&vfs, "clone", e)),
                },
            );
            return;
        }
        if let Some(entry) = control::EntryRequest::decode(cmd, in_data) {
            let (vfs, notifier, name) =
                (self.vfs.clone(), self.notifier.clone(), entry.name.clone());
            match entry.op {
                control::EntryOp::RemoveTree => {
                    self.vfs
                        .submit_remove_tree(ctx(request), self.i(ino), entry.name, move |r| match r
                        {
                            Ok(done) => {
                                forget_entry(&notifier, ino, &name);
                                reply.ioctl(0, &control::encode_counts(done.files, done.dirs))
                            }
                            Err(e) => reply.error(fail(&vfs, "rmr", e)),
                        })
                }
                control::EntryOp::Restore => {
                    let root = self.root;
                    self.vfs
                        .submit_restore(ctx(request), self.i(ino), entry.name, move |r| match r {
                            Ok((parent, restored)) => {
                                forget_entry(&notifier, ino, &name);
                                let parent = if parent == root { 1 } else { parent };
                                forget_entry(&notifier, INodeNo(parent), &restored);
                                reply.ioctl(0, &control::encode_counts(1, 0))
                            }
                            Err(e) => reply.error(fail(&vfs, "restore", e)),
                        })
                }
            }
            return;
        }
        let Some(req) = control::Request::decode(cmd, in_data) else {
            reply.error(Errno::ENOTTY);
            return;
        };
        if (out_size as usize) < control::SIZE {
            reply.error(Errno::EINVAL);
            return;
        }
        let vfs = self.vfs.clone();
        self.vfs
            .submit_cache_control(self.i(ino), req.to_control(), move |r| match r {
                Ok(report) => reply.ioctl(0, &control::encode_report(&report)),
                Err(e) => reply.error(fail(&vfs, "ioctl", e)),
            });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.vfs.getxattr(self.i(ino), name.as_bytes()) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(self.fail("getxattr", e)),
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
            Err(e) => reply.error(self.fail("listxattr", e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.empty(
            "removexattr",
            reply,
            self.vfs.removexattr(self.i(ino), name.as_bytes()),
        );
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
                // A new file has no local copy: its handle is a cached open.
                if let Err(e) = self.modes.register(ino, fh, false, None) {
                    let _ = self.vfs.release(ino, fh, None);
                    return reply.error(self.fail("create", e));
                }
                reply.created(
                    &self.entry_ttl(&a),
                    &file_attr(self.o(ino), &a),
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                )
            }
            Err(e) => reply.error(self.fail("create", e)),
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
            Err(e) => reply.error(self.fail("getlk", e)),
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
        let vfs = self.vfs.clone();
        self.vfs
            .setlk(lock, Box::new(move |r| empty(&vfs, "setlk", reply, r)));
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
        self.empty(
            "fallocate",
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
            Err(e) => reply.error(self.fail("copy_file_range", e)),
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
    let notifier = fs.notifier.clone();
    // The session ends when the kernel ends the connection: at unmount
    // (`umount`, `tessera umount`, or the signal handler of the mount
    // command, which unmounts first). fuser's own clean-up would then
    // unmount the mountpoint *path* again, taking down whatever is mounted
    // there by then: a new mount of the same path made right after a plain
    // `umount` was unmounted by the old process's exit (xfstests
    // generic/128). So the session runs on fuser's background thread, its
    // result is joined here, and the mount handle is left to the end of
    // the process, never dropped.
    let session = fuser::Session::new(fs, mountpoint, &cfg)?;
    let _ = notifier.set(session.notifier());
    // The mount exists once the session does.
    raise_kernel_readahead(mountpoint, KERNEL_READAHEAD_KB);
    let background = std::mem::ManuallyDrop::new(session.spawn()?);
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
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    // The last entry of the path is the one just mounted over any others.
    let dev = info.lines().rev().find_map(|l| {
        let mut f = l.split(' ');
        let dev = f.nth(2)?;
        let point = f.nth(1)?;
        (point.replace("\\040", " ") == want).then(|| dev.to_string())
    });
    let Some(dev) = dev else {
        debug!(mountpoint = %want, "mount not in mountinfo; kernel readahead left as it is");
        return;
    };
    let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    match std::fs::write(&path, kb.to_string()) {
        Ok(()) => debug!(%path, kb, "raised kernel readahead"),
        Err(e) => debug!(%path, error = %e, "cannot raise kernel readahead"),
    }
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
