//! A reference-model test: random sequences of file operations run against
//! the VFS in process and against a plain local directory (the kernel's own
//! file system is the model), and every observable result compared: the
//! errno of each call, the bytes read, and what stat shows (type, size,
//! mode, link count, and modification times that were set explicitly).
//!
//! The VFS side is called the way the kernel's FUSE client calls it: a
//! lookup before a create, O_CREAT|O_EXCL turned into EEXIST on a name
//! that exists, a setattr for ftruncate/futimens. Calls the kernel refuses
//! before they reach a file system (a write on a read-only descriptor) are
//! not generated.
//!
//! On a mismatch the sequence is shrunk (ops dropped one at a time while
//! it still fails) and printed with its seed. `TESSERA_MODEL_CASES` sets
//! the number of sequences (default 300) and `TESSERA_MODEL_SEED` the first
//! seed, for long runs and for replaying a failure.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use tessera_meta::{Ctx, FileType, Ino, SetAttr, ROOT_INO};

use crate::tests::{fixture, Fixture};

const CTX: Ctx = Ctx {
    uid: 0,
    gid: 0,
    pid: 1,
    umask: 0,
};
/// Names the operations use: three in the root, two in a subdirectory.
const NAMES: [&str; 5] = ["a", "b", "c", "s/a", "s/b"];
const SLOTS: usize = 4;
/// Open flags the generator picks from (access mode plus extras).
const FLAGS: [i32; 8] = [
    libc::O_RDONLY,
    libc::O_RDWR,
    libc::O_WRONLY | libc::O_CREAT,
    libc::O_RDWR | libc::O_CREAT,
    libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
    libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
    libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND,
    libc::O_RDWR | libc::O_APPEND,
];
/// Explicit times are chosen below this; anything later is "now".
const EXPLICIT_BEFORE: i64 = 1_000_000_000 + 1_000_000;

#[derive(Debug, Clone)]
enum Op {
    Open {
        name: usize,
        flags: usize,
        slot: usize,
    },
    Write {
        slot: usize,
        off: u64,
        len: usize,
        seed: u8,
    },
    Read {
        slot: usize,
        off: u64,
        len: usize,
    },
    Ftruncate {
        slot: usize,
        size: u64,
    },
    Truncate {
        name: usize,
        size: u64,
    },
    Fallocate {
        slot: usize,
        mode: i32,
        off: u64,
        len: u64,
    },
    Fsync {
        slot: usize,
    },
    Close {
        slot: usize,
    },
    Rename {
        from: usize,
        to: usize,
    },
    Link {
        from: usize,
        to: usize,
    },
    Unlink {
        name: usize,
    },
    Chmod {
        name: usize,
        mode: u32,
    },
    Utimens {
        name: usize,
        secs: i64,
    },
    Futimens {
        slot: usize,
        secs: i64,
    },
    Stat {
        name: usize,
    },
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Offsets and sizes around the interesting places: 0, a few bytes,
    /// the 64 KiB block of the fixture, past the end.
    fn offset(&mut self) -> u64 {
        match self.below(4) {
            0 => self.below(100),
            1 => self.below(3 * 65_536),
            2 => 65_536 * self.below(4) + self.below(3),
            _ => self.below(600_000),
        }
    }
}

fn generate(seed: u64, len: usize) -> Vec<Op> {
    let mut r = Rng(seed);
    let mut ops = Vec::with_capacity(len);
    let n = NAMES.len() as u64;
    for _ in 0..len {
        let slot = r.below(SLOTS as u64) as usize;
        let op = match r.below(20) {
            0..=3 => Op::Open {
                name: r.below(n) as usize,
                flags: r.below(FLAGS.len() as u64) as usize,
                slot,
            },
            4..=7 => {
                let most = if r.below(4) == 0 { 200_000 } else { 5_000 };
                Op::Write {
                    slot,
                    off: r.offset(),
                    len: 1 + r.below(most) as usize,
                    seed: r.below(256) as u8,
                }
            }
            8 | 9 => Op::Read {
                slot,
                off: r.offset(),
                len: 1 + r.below(150_000) as usize,
            },
            10 => Op::Ftruncate {
                slot,
                size: r.offset(),
            },
            11 => Op::Truncate {
                name: r.below(n) as usize,
                size: r.offset(),
            },
            12 => Op::Fallocate {
                slot,
                mode: [
                    0,
                    libc::FALLOC_FL_KEEP_SIZE,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                ][r.below(3) as usize],
                off: r.offset(),
                len: 1 + r.below(100_000),
            },
            13 => Op::Fsync { slot },
            14 => Op::Close { slot },
            15 => {
                if r.below(2) == 0 {
                    Op::Rename {
                        from: r.below(n) as usize,
                        to: r.below(n) as usize,
                    }
                } else {
                    Op::Link {
                        from: r.below(n) as usize,
                        to: r.below(n) as usize,
                    }
                }
            }
            16 => Op::Unlink {
                name: r.below(n) as usize,
            },
            17 => match r.below(3) {
                0 => Op::Chmod {
                    name: r.below(n) as usize,
                    mode: [0o600, 0o644, 0o755, 0o4755, 0o000][r.below(5) as usize],
                },
                1 => Op::Utimens {
                    name: r.below(n) as usize,
                    secs: 1_000_000_000 + r.below(999_999) as i64,
                },
                _ => Op::Futimens {
                    slot,
                    secs: 1_000_000_000 + r.below(999_999) as i64,
                },
            },
            _ => Op::Stat {
                name: r.below(n) as usize,
            },
        };
        ops.push(op);
    }
    ops
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

/// Access and modification times both set to `secs`.
fn times(secs: i64) -> SetAttr {
    let when = Some(Some((secs, 0)));
    SetAttr {
        atime: when,
        mtime: when,
        ..Default::default()
    }
}

/// The errno of the last libc call that failed.
fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in test paths")
}

/// What a stat shows that both sides must agree on.
#[derive(Debug, PartialEq, Eq)]
struct Shown {
    kind: u8,
    size: u64,
    mode: u32,
    nlink: u64,
    /// The mtime if it was set explicitly, else None ("now", not compared).
    explicit_mtime: Option<i64>,
}

fn shown_local(st: &libc::stat) -> Shown {
    Shown {
        kind: if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            b'd'
        } else {
            b'f'
        },
        size: if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            0
        } else {
            st.st_size as u64
        },
        mode: st.st_mode & 0o7777,
        nlink: st.st_nlink,
        explicit_mtime: (st.st_mtime < EXPLICIT_BEFORE).then_some(st.st_mtime),
    }
}

fn shown_vfs(a: &tessera_meta::Attr, buffered_len: u64) -> Shown {
    Shown {
        kind: if a.typ == FileType::Dir { b'd' } else { b'f' },
        size: if a.typ == FileType::Dir {
            0
        } else {
            a.length.max(buffered_len)
        },
        mode: u32::from(a.mode) & 0o7777,
        nlink: u64::from(a.nlink),
        explicit_mtime: (a.mtime < EXPLICIT_BEFORE).then_some(a.mtime),
    }
}

/// One run of a sequence on both sides; Err describes the first mismatch.
struct World {
    local: tempfile::TempDir,
    fx: Fixture,
    sub: Ino,
    /// Open descriptors: local fd, VFS (ino, fh), open flags.
    slots: [Option<(i32, Ino, u64, i32)>; SLOTS],
}

impl Drop for World {
    fn drop(&mut self) {
        for (fd, _, _, _) in self.slots.iter().flatten() {
            // SAFETY: closing descriptors this world opened.
            unsafe { libc::close(*fd) };
        }
    }
}

impl World {
    fn new() -> World {
        let local = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(local.path().join("s")).expect("mkdir s");
        let fx = fixture(64 << 10);
        let (sub, _) = fx.vfs.mkdir(&CTX, ROOT_INO, b"s", 0o755).expect("mkdir s");
        World {
            local,
            fx,
            sub,
            slots: Default::default(),
        }
    }

    fn local_path(&self, name: usize) -> PathBuf {
        self.local.path().join(NAMES[name])
    }

    /// Parent inode and leaf name of a name on the VFS side.
    fn vfs_place(&self, name: usize) -> (Ino, &'static [u8]) {
        match NAMES[name].split_once('/') {
            Some((_, leaf)) => (self.sub, leaf.as_bytes()),
            None => (ROOT_INO, NAMES[name].as_bytes()),
        }
    }

    fn vfs_lookup(&self, name: usize) -> Result<(Ino, tessera_meta::Attr), i32> {
        let (parent, leaf) = self.vfs_place(name);
        self.fx.vfs.lookup(parent, leaf).map_err(|e| e.errno)
    }

    /// Apply one op to both sides; compare.
    fn step(&mut self, op: &Op) -> Result<(), String> {
        let v = self.fx.vfs.clone();
        let same = |what: &str, local: i32, vfs: i32| -> Result<(), String> {
            if local == vfs {
                Ok(())
            } else {
                Err(format!("{what}: local errno {local}, tessera errno {vfs}"))
            }
        };
        match *op {
            Op::Open { name, flags, slot } => {
                if self.slots[slot].is_some() {
                    return Ok(());
                }
                let flags = FLAGS[flags];
                let p = cpath(&self.local_path(name));
                // SAFETY: a valid path; the descriptor is kept in a slot.
                let fd = unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC, 0o644) };
                let local_err = if fd < 0 { errno() } else { 0 };
                let vfs = match self.vfs_lookup(name) {
                    Ok(_) if flags & libc::O_CREAT != 0 && flags & libc::O_EXCL != 0 => {
                        Err(libc::EEXIST)
                    }
                    Ok((ino, _)) => v
                        .open(ino, flags & !(libc::O_CREAT | libc::O_EXCL))
                        .map(|(fh, _)| (ino, fh))
                        .map_err(|e| e.errno),
                    Err(libc::ENOENT) if flags & libc::O_CREAT != 0 => {
                        let (parent, leaf) = self.vfs_place(name);
                        v.create(&CTX, parent, leaf, 0o644, flags)
                            .map(|(ino, _, fh)| (ino, fh))
                            .map_err(|e| e.errno)
                    }
                    Err(e) => Err(e),
                };
                let vfs_err = vfs.as_ref().err().copied().unwrap_or(0);
                if let (true, Ok((ino, fh))) = (fd >= 0, vfs) {
                    self.slots[slot] = Some((fd, ino, fh, flags));
                } else if let Ok((ino, fh)) = vfs {
                    let _ = v.release(ino, fh, None);
                } else if fd >= 0 {
                    // SAFETY: our descriptor.
                    unsafe { libc::close(fd) };
                }
                same("open", local_err, vfs_err)
            }
            Op::Write {
                slot,
                off,
                len,
                seed,
            } => {
                let Some((fd, ino, fh, flags)) = self.slots[slot] else {
                    return Ok(());
                };
                if flags & libc::O_ACCMODE == libc::O_RDONLY {
                    return Ok(());
                }
                let buf = data(len, seed);
                // SAFETY: buf outlives the call.
                let n = unsafe { libc::pwrite(fd, buf.as_ptr().cast(), buf.len(), off as i64) };
                let local_err = if n < 0 { errno() } else { 0 };
                let vfs_err = v
                    .write(ino, fh, off, &buf)
                    .err()
                    .map(|e| e.errno)
                    .unwrap_or(0);
                same("write", local_err, vfs_err)
            }
            Op::Read { slot, off, len } => {
                let Some((fd, ino, fh, flags)) = self.slots[slot] else {
                    return Ok(());
                };
                if flags & libc::O_ACCMODE == libc::O_WRONLY {
                    return Ok(());
                }
                let mut buf = vec![0u8; len];
                // SAFETY: buf is len bytes.
                let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), len, off as i64) };
                if n < 0 {
                    return Err(format!("local read failed: errno {}", errno()));
                }
                buf.truncate(n as usize);
                let got = v
                    .read(ino, fh, off, len)
                    .map_err(|e| format!("read: {e:?}"))?;
                if got[..] != buf[..] {
                    let at = got.iter().zip(&buf).position(|(a, b)| a != b);
                    return Err(format!(
                        "read at {off} of {len}: tessera gave {} bytes, local {} (first difference at {at:?})",
                        got.len(),
                        buf.len()
                    ));
                }
                Ok(())
            }
            Op::Ftruncate { slot, size } => {
                let Some((fd, ino, _, flags)) = self.slots[slot] else {
                    return Ok(());
                };
                if flags & libc::O_ACCMODE == libc::O_RDONLY {
                    return Ok(());
                }
                // SAFETY: our descriptor.
                let r = unsafe { libc::ftruncate(fd, size as i64) };
                let local_err = if r < 0 { errno() } else { 0 };
                let vfs_err = v
                    .setattr(ino, &SetAttr::default(), Some(size))
                    .err()
                    .map(|e| e.errno)
                    .unwrap_or(0);
                same("ftruncate", local_err, vfs_err)
            }
            Op::Truncate { name, size } => {
                let p = cpath(&self.local_path(name));
                // SAFETY: a valid path.
                let r = unsafe { libc::truncate(p.as_ptr(), size as i64) };
                let local_err = if r < 0 { errno() } else { 0 };
                let vfs_err = match self.vfs_lookup(name) {
                    Ok((ino, _)) => v
                        .setattr(ino, &SetAttr::default(), Some(size))
                        .err()
                        .map(|e| e.errno)
                        .unwrap_or(0),
                    Err(e) => e,
                };
                same("truncate", local_err, vfs_err)
            }
            Op::Fallocate {
                slot,
                mode,
                off,
                len,
            } => {
                let Some((fd, ino, _, flags)) = self.slots[slot] else {
                    return Ok(());
                };
                if flags & libc::O_ACCMODE == libc::O_RDONLY {
                    return Ok(());
                }
                // SAFETY: our descriptor.
                let r = unsafe { libc::fallocate(fd, mode, off as i64, len as i64) };
                let local_err = if r < 0 { errno() } else { 0 };
                let vfs_err = v
                    .fallocate(&CTX, ino, mode, off, len)
                    .err()
                    .map(|e| e.errno)
                    .unwrap_or(0);
                same("fallocate", local_err, vfs_err)
            }
            Op::Fsync { slot } => {
                let Some((fd, ino, _, _)) = self.slots[slot] else {
                    return Ok(());
                };
                // SAFETY: our descriptor.
                unsafe { libc::fsync(fd) };
                v.fsync(ino).map_err(|e| format!("fsync: {e:?}"))
            }
            Op::Close { slot } => {
                let Some((fd, ino, fh, _)) = self.slots[slot].take() else {
                    return Ok(());
                };
                // SAFETY: our descriptor, closed once.
                unsafe { libc::close(fd) };
                v.flush(ino, fh, 0).map_err(|e| format!("close: {e:?}"))?;
                v.release(ino, fh, None)
                    .map_err(|e| format!("release: {e:?}"))
            }
            Op::Rename { from, to } => {
                let (a, b) = (cpath(&self.local_path(from)), cpath(&self.local_path(to)));
                // SAFETY: valid paths.
                let r = unsafe { libc::rename(a.as_ptr(), b.as_ptr()) };
                let local_err = if r < 0 { errno() } else { 0 };
                let ((fp, fl), (tp, tl)) = (self.vfs_place(from), self.vfs_place(to));
                let vfs_err = v
                    .rename(fp, fl, tp, tl, 0)
                    .err()
                    .map(|e| e.errno)
                    .unwrap_or(0);
                same("rename", local_err, vfs_err)
            }
            Op::Link { from, to } => {
                let (a, b) = (cpath(&self.local_path(from)), cpath(&self.local_path(to)));
                // SAFETY: valid paths.
                let r = unsafe { libc::link(a.as_ptr(), b.as_ptr()) };
                let local_err = if r < 0 { errno() } else { 0 };
                let vfs_err = match (self.vfs_lookup(from), self.vfs_lookup(to)) {
                    (Err(e), _) => e,
                    (Ok(_), Ok(_)) => libc::EEXIST,
                    (Ok((ino, _)), Err(_)) => {
                        let (tp, tl) = self.vfs_place(to);
                        v.link(ino, tp, tl).err().map(|e| e.errno).unwrap_or(0)
                    }
                };
                same("link", local_err, vfs_err)
            }
            Op::Unlink { name } => {
                let p = cpath(&self.local_path(name));
                // SAFETY: a valid path.
                let r = unsafe { libc::unlink(p.as_ptr()) };
                let local_err = if r < 0 { errno() } else { 0 };
                let (parent, leaf) = self.vfs_place(name);
                let vfs_err = v.unlink(parent, leaf).err().map(|e| e.errno).unwrap_or(0);
                same("unlink", local_err, vfs_err)
            }
            Op::Chmod { name, mode } => {
                let p = cpath(&self.local_path(name));
                // SAFETY: a valid path.
                let r = unsafe { libc::chmod(p.as_ptr(), mode) };
                let local_err = if r < 0 { errno() } else { 0 };
                let set = SetAttr {
                    mode: Some(mode),
                    ..Default::default()
                };
                same("chmod", local_err, self.setattr_by_name(name, &set))
            }
            Op::Utimens { name, secs } => {
                let p = cpath(&self.local_path(name));
                let ts = [libc::timespec {
                    tv_sec: secs,
                    tv_nsec: 0,
                }; 2];
                // SAFETY: a valid path and two timespecs.
                let r = unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), ts.as_ptr(), 0) };
                let local_err = if r < 0 { errno() } else { 0 };
                same(
                    "utimensat",
                    local_err,
                    self.setattr_by_name(name, &times(secs)),
                )
            }
            Op::Futimens { slot, secs } => {
                let Some((fd, ino, _, _)) = self.slots[slot] else {
                    return Ok(());
                };
                let ts = [libc::timespec {
                    tv_sec: secs,
                    tv_nsec: 0,
                }; 2];
                // SAFETY: our descriptor and two timespecs.
                let r = unsafe { libc::futimens(fd, ts.as_ptr()) };
                let local_err = if r < 0 { errno() } else { 0 };
                let set = times(secs);
                let vfs_err = v
                    .setattr(ino, &set, None)
                    .err()
                    .map(|e| e.errno)
                    .unwrap_or(0);
                same("futimens", local_err, vfs_err)
            }
            Op::Stat { name } => self.compare_stat(name),
        }
    }

    /// A setattr of the inode `name` names, as the kernel sends it for a
    /// call by path; the errno (0 for success).
    fn setattr_by_name(&self, name: usize, set: &SetAttr) -> i32 {
        match self.vfs_lookup(name) {
            Ok((ino, _)) => self
                .fx
                .vfs
                .setattr(ino, set, None)
                .err()
                .map(|e| e.errno)
                .unwrap_or(0),
            Err(e) => e,
        }
    }

    fn compare_stat(&self, name: usize) -> Result<(), String> {
        let p = cpath(&self.local_path(name));
        // SAFETY: a zeroed stat filled by lstat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above; p is NUL-terminated.
        let r = unsafe { libc::lstat(p.as_ptr(), &mut st) };
        let local = if r < 0 {
            Err(errno())
        } else {
            Ok(shown_local(&st))
        };
        let vfs = self.vfs_lookup(name).and_then(|(ino, _)| {
            // What the kernel would show: getattr (buffered length included).
            self.fx
                .vfs
                .getattr(ino)
                .map(|a| shown_vfs(&a, 0))
                .map_err(|e| e.errno)
        });
        if local != vfs {
            return Err(format!(
                "stat {}: local {local:?}, tessera {vfs:?}",
                NAMES[name]
            ));
        }
        Ok(())
    }

    /// After the sequence: every descriptor closed, every name compared
    /// by stat and whole content.
    fn finish(&mut self) -> Result<(), String> {
        for slot in 0..SLOTS {
            self.step(&Op::Close { slot })?;
        }
        for (name, shown) in NAMES.iter().enumerate() {
            self.compare_stat(name)?;
            let local = std::fs::read(self.local_path(name)).ok();
            let vfs = self.vfs_lookup(name).ok().and_then(|(ino, a)| {
                if a.typ != FileType::File {
                    return None;
                }
                let (fh, attr) = self.fx.vfs.open(ino, libc::O_RDONLY).ok()?;
                let got = self.fx.vfs.read(ino, fh, 0, attr.length as usize + 1).ok();
                let _ = self.fx.vfs.release(ino, fh, None);
                got.map(|b| b.to_vec())
            });
            if local != vfs {
                return Err(format!("content of {shown} differs at the end"));
            }
        }
        Ok(())
    }
}

/// Run a sequence on a fresh pair of worlds; the first mismatch, with the
/// index of the op that showed it.
fn run(ops: &[Op]) -> Result<(), (usize, String)> {
    let mut w = World::new();
    for (i, op) in ops.iter().enumerate() {
        w.step(op).map_err(|e| (i, e))?;
    }
    w.finish().map_err(|e| (ops.len(), e))
}

/// Drop ops, one at a time, while the sequence still fails.
fn shrink(mut ops: Vec<Op>) -> (Vec<Op>, String) {
    let (upto, mut why) = run(&ops).err().unwrap_or((ops.len(), String::new()));
    ops.truncate(upto + 1);
    let mut i = 0;
    while i < ops.len() {
        let mut fewer = ops.clone();
        fewer.remove(i);
        match run(&fewer) {
            Err((_, w)) => {
                ops = fewer;
                why = w;
            }
            Ok(()) => i += 1,
        }
    }
    (ops, why)
}

#[test]
fn random_sequences_match_a_local_directory() {
    let cases: u64 = std::env::var("TESSERA_MODEL_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let first: u64 = std::env::var("TESSERA_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    for seed in first..first + cases {
        let ops = generate(seed, 40);
        if let Err((at, why)) = run(&ops) {
            let (small, small_why) = shrink(ops);
            panic!(
                "seed {seed} (TESSERA_MODEL_SEED={seed} TESSERA_MODEL_CASES=1): op {at}: {why}\nshrunk to {} ops, failing with: {small_why}\n{small:#?}",
                small.len()
            );
        }
    }
}
