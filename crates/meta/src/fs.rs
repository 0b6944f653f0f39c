//! Every file-system operation on metadata, written once over [`KvEngine`].
//!
//! Each operation is one transaction: it reads what it needs, checks the
//! POSIX rules the kernel leaves to the file system, and writes the new
//! state. Data objects are never touched here; operations that free slices
//! return them so the chunk layer can delete their blocks.

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use crate::acl;
use crate::attr::{Attr, FileType};
use crate::keys;
use crate::kv::{run_txn, scan_prefix, KvEngine, KvTxn};
use crate::slice::SliceRecord;
use crate::{
    now, Ctx, Format, Ino, MetaError, Result, CHUNK_SIZE, MAX_FILE_SIZE, MAX_NAME_LEN, ROOT_INO,
};

/// Runtime options of a mounted volume.
#[derive(Debug, Clone, Default)]
pub struct MetaConfig {
    pub read_only: bool,
}

/// A directory entry as readdir returns it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: Vec<u8>,
    pub ino: Ino,
    pub typ: FileType,
    pub attr: Option<Attr>,
}

/// Which attributes a setattr changes. Times: `Some(None)` means "now".
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime: Option<Option<(i64, u32)>>,
    pub mtime: Option<Option<(i64, u32)>>,
}

/// statfs figures.
#[derive(Debug, Clone, Copy)]
pub struct StatFs {
    pub total_space: u64,
    pub avail_space: u64,
    pub used_inodes: u64,
    pub avail_inodes: u64,
}

/// What an unlink (or a rename over an existing name) did to the target.
#[derive(Debug, Clone, Default)]
pub struct UnlinkResult {
    pub ino: Ino,
    /// The target's data is scheduled for deletion.
    pub data_freed: bool,
}

/// An object in a bucket that imported files read in place.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExternalObject {
    /// Storage URL of the source (bucket and prefix).
    pub source: String,
    pub key: String,
    pub size: u64,
    /// ETag at import time; a read that finds another one fails.
    pub etag: Option<String>,
    /// Where and how to reach the source, when it is not the environment's
    /// default: endpoint and region always, keys only if the user asked to
    /// store them (`import --store-credentials`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key: Option<String>,
}

/// Slices no longer referenced, whose blocks can be deleted: (id, size).
pub type FreedSlices = Vec<(u64, u64)>;

#[derive(Debug, Clone)]
pub struct TruncateResult {
    pub attr: Attr,
    pub freed: FreedSlices,
}

const ID_BATCH: u64 = 1024;

/// The metadata client of one process.
pub struct Meta {
    engine: Arc<dyn KvEngine>,
    config: MetaConfig,
    format: Mutex<Option<Format>>,
    inode_ids: Mutex<(u64, u64)>,
    slice_ids: Mutex<(u64, u64)>,
    pub(crate) sid: AtomicU64,
    /// Open handles per inode in this process.
    open_counts: Mutex<HashMap<Ino, u32>>,
    /// Inodes unlinked while open here; removed when the last handle closes.
    pub(crate) sustained: Mutex<HashSet<Ino>>,
    /// Space and inode count changes committed by this process but not yet
    /// added to the volume's counters (see [`Meta::flush_usage`]).
    pending_space: AtomicI64,
    pending_inodes: AtomicI64,
}

thread_local! {
    /// Usage changes of the transaction attempt running on this thread;
    /// kept only if the attempt commits.
    static TXN_USAGE: std::cell::Cell<(i64, i64)> = const { std::cell::Cell::new((0, 0)) };
}

/// Count a change of used space and inodes in the running transaction.
/// Every create or delete touching the two volume-wide counters would make
/// all of them conflict with each other (and cost two reads each), so the
/// changes are summed per process and added by [`Meta::flush_usage`].
fn account(space: i64, inodes: i64) {
    TXN_USAGE.with(|u| {
        let (s, i) = u.get();
        u.set((s + space, i + inodes));
    });
}

/// Chunk lists one transaction drops at most when a file shrinks: a large
/// file is truncated in several short transactions, not one long one.
const CHUNKS_PER_TXN: usize = 1024;

/// Most bytes one copy_file_range call copies; callers loop, as they must
/// for short copies anyway, so one call's work stays bounded.
pub const COPY_RANGE_MAX: u64 = 1 << 30;

/// `off + len`, if it stays within the largest file.
fn end_within_limit(off: u64, len: u64) -> Result<u64> {
    off.checked_add(len)
        .filter(|end| *end <= MAX_FILE_SIZE)
        .ok_or(MetaError::FileTooBig)
}

fn align4k(n: u64) -> i64 {
    (n.div_ceil(4096) * 4096) as i64
}

/// What an inode counts towards the volume's used space: a file what its
/// slices store (holes are free), anything else its length, in 4 KiB units.
pub(crate) fn usage_of(a: &Attr) -> i64 {
    if a.typ == FileType::File {
        align4k(a.stored)
    } else {
        align4k(a.length)
    }
}

/// Bytes of a chunk that its records hold data for (holes not counted).
pub(crate) fn stored_in(chunk: &[u8]) -> Result<u64> {
    stored_between(chunk, 0, CHUNK_SIZE as u32)
}

/// Bytes of `[a, b)` of a chunk that its records hold data for.
fn stored_between(chunk: &[u8], a: u32, b: u32) -> Result<u64> {
    Ok(crate::slice::data_bytes(
        &SliceRecord::decode_all(chunk)?,
        a,
        b,
    ))
}

/// Account a record about to be added to a chunk list `v`: the bytes of
/// its range that held data before, against what it holds after (all of
/// it for data, none for a hole). Only the record's range is looked at.
fn restore_for(a: &mut Attr, v: &[u8], rec: &SliceRecord) -> Result<()> {
    let before = stored_between(v, rec.pos, rec.pos + rec.len)?;
    let after = if rec.holds_space() {
        u64::from(rec.len)
    } else {
        0
    };
    restore(a, before, after);
    Ok(())
}

/// Change `stored` by how much a chunk's data went from `before` to `after`.
fn restore(a: &mut Attr, before: u64, after: u64) {
    a.stored = (a.stored + after).saturating_sub(before);
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > MAX_NAME_LEN {
        return Err(MetaError::NameTooLong);
    }
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        return Err(MetaError::Invalid(format!(
            "bad file name {:?}",
            String::from_utf8_lossy(name)
        )));
    }
    Ok(())
}

/// chmod of a node with an access ACL: the ACL's owner, mask (or owning
/// group) and other entries take the new bits in the same transaction.
fn rewrite_access_acl(tx: &mut dyn KvTxn, ino: Ino, mode: u16) -> Result<()> {
    let key = keys::xattr(ino, acl::ACCESS);
    if let Some(raw) = tx.get(&key)? {
        let mut access = acl::Acl::decode(&raw)?;
        access.chmod(mode);
        tx.set(&key, &access.encode())?;
    }
    Ok(())
}

pub(crate) fn get_attr(tx: &mut dyn KvTxn, ino: Ino) -> Result<Attr> {
    decode_attr(tx.get(&keys::attr(ino))?)
}

fn decode_attr(v: Option<Vec<u8>>) -> Result<Attr> {
    match v {
        Some(v) => Attr::decode(&v),
        None => Err(MetaError::NotFound),
    }
}

/// Read independent keys in one go (one round trip where the engine can).
fn get_n<const N: usize>(tx: &mut dyn KvTxn, keys: [&[u8]; N]) -> Result<[Option<Vec<u8>>; N]> {
    tx.get_many(&keys)?
        .try_into()
        .map_err(|_| MetaError::Engine("get_many answered the wrong number of values".into()))
}

pub(crate) fn put_attr(tx: &mut dyn KvTxn, ino: Ino, attr: &Attr) -> Result<()> {
    tx.set(&keys::attr(ino), &attr.encode())
}

fn get_dentry(tx: &mut dyn KvTxn, parent: Ino, name: &[u8]) -> Result<Option<(Ino, FileType)>> {
    decode_dentry(tx.get(&keys::dentry(parent, name))?)
}

fn decode_dentry(v: Option<Vec<u8>>) -> Result<Option<(Ino, FileType)>> {
    match v {
        Some(v) if v.len() == 9 => {
            let ino = keys::be_u64(&v, 0).unwrap_or(0);
            let typ = FileType::from_u8(v[8])
                .ok_or_else(|| MetaError::Corrupt(format!("dentry type {}", v[8])))?;
            Ok(Some((ino, typ)))
        }
        Some(v) => Err(MetaError::Corrupt(format!("dentry of {} bytes", v.len()))),
        None => Ok(None),
    }
}

fn put_dentry(tx: &mut dyn KvTxn, parent: Ino, name: &[u8], ino: Ino, typ: FileType) -> Result<()> {
    let mut v = ino.to_be_bytes().to_vec();
    v.push(typ as u8);
    tx.set(&keys::dentry(parent, name), &v)
}

/// An i64 value (little endian) stored at `key`; 0 when absent.
fn get_i64(tx: &mut dyn KvTxn, key: &[u8]) -> Result<i64> {
    Ok(match tx.get(key)? {
        Some(v) => v.as_slice().try_into().map(i64::from_le_bytes).unwrap_or(0),
        None => 0,
    })
}

pub(crate) fn incr(tx: &mut dyn KvTxn, name: &str, delta: i64) -> Result<i64> {
    let key = keys::counter(name);
    let cur = get_i64(tx, &key)?;
    let next = cur + delta;
    tx.set(&key, &next.to_le_bytes())?;
    Ok(next)
}

pub(crate) fn get_counter(tx: &mut dyn KvTxn, name: &str) -> Result<i64> {
    get_i64(tx, &keys::counter(name))
}

fn dir_is_empty(tx: &mut dyn KvTxn, ino: Ino) -> Result<bool> {
    let p = keys::dentry_prefix(ino);
    Ok(tx.scan(&p, &crate::kv::prefix_end(&p), 1)?.is_empty())
}

/// Drop one reference to a slice; returns it when nothing refers to it any more.
pub(crate) fn unref_slice(
    tx: &mut dyn KvTxn,
    r: &SliceRecord,
    freed: &mut FreedSlices,
) -> Result<()> {
    if r.is_hole() || r.kind != crate::SliceKind::Internal {
        return Ok(());
    }
    let key = keys::slice_refs(r.id, r.size);
    match get_i64(tx, &key)? {
        0 => freed.push((r.id, r.size)),
        1 => tx.delete(&key)?,
        extra => tx.set(&key, &(extra - 1).to_le_bytes())?,
    }
    Ok(())
}

fn add_slice_ref(tx: &mut dyn KvTxn, r: &SliceRecord) -> Result<()> {
    if r.is_hole() || r.kind != crate::SliceKind::Internal {
        return Ok(());
    }
    let key = keys::slice_refs(r.id, r.size);
    let cur = get_i64(tx, &key)?;
    tx.set(&key, &(cur + 1).to_le_bytes())
}

/// Where [`Meta::append_slice`] put a slice.
#[derive(Debug, Clone)]
pub struct Appended {
    pub attr: Attr,
    /// Offset of the slice's first byte in the file.
    pub at: u64,
    /// Chunks the slice landed in, with their record counts after it.
    pub touched: Vec<(u32, usize)>,
}

impl Meta {
    pub fn new(engine: Arc<dyn KvEngine>, config: MetaConfig) -> Self {
        Meta {
            engine,
            config,
            format: Mutex::new(None),
            inode_ids: Mutex::new((0, 0)),
            slice_ids: Mutex::new((0, 0)),
            sid: AtomicU64::new(0),
            open_counts: Mutex::new(HashMap::new()),
            sustained: Mutex::new(HashSet::new()),
            pending_space: AtomicI64::new(0),
            pending_inodes: AtomicI64::new(0),
        }
    }

    pub fn engine(&self) -> &dyn KvEngine {
        &*self.engine
    }

    pub(crate) fn txn<T>(&self, mut f: impl FnMut(&mut dyn KvTxn) -> Result<T>) -> Result<T> {
        // Set aside what an enclosing transaction on this thread counted.
        let outer = TXN_USAGE.with(|u| u.replace((0, 0)));
        let out = run_txn(&*self.engine, false, |tx| {
            TXN_USAGE.with(|u| u.set((0, 0)));
            f(tx)
        });
        let (space, inodes) = TXN_USAGE.with(|u| u.replace(outer));
        if out.is_ok() {
            self.pending_space.fetch_add(space, Ordering::Relaxed);
            self.pending_inodes.fetch_add(inodes, Ordering::Relaxed);
        }
        out
    }

    /// Usage changes this process has counted and not yet added.
    pub(crate) fn pending_usage(&self) -> (i64, i64) {
        (
            self.pending_space.load(Ordering::Relaxed),
            self.pending_inodes.load(Ordering::Relaxed),
        )
    }

    /// Drop the unsaved usage changes (the counters were just recounted).
    pub(crate) fn take_pending_usage(&self) {
        self.pending_space.store(0, Ordering::Relaxed);
        self.pending_inodes.store(0, Ordering::Relaxed);
    }

    /// Add this process's usage changes to the volume's counters. Mounts
    /// call it every second and at unmount; a process killed in between
    /// loses at most that second's accounting (the data is not affected).
    pub fn flush_usage(&self) -> Result<()> {
        let space = self.pending_space.swap(0, Ordering::Relaxed);
        let inodes = self.pending_inodes.swap(0, Ordering::Relaxed);
        if space == 0 && inodes == 0 {
            return Ok(());
        }
        let done = run_txn(&*self.engine, false, |tx| {
            incr(tx, "usedSpace", space)?;
            incr(tx, "totalInodes", inodes)
        });
        if done.is_err() {
            self.pending_space.fetch_add(space, Ordering::Relaxed);
            self.pending_inodes.fetch_add(inodes, Ordering::Relaxed);
        }
        done.map(|_| ())
    }

    pub(crate) fn read_txn<T>(&self, f: impl FnMut(&mut dyn KvTxn) -> Result<T>) -> Result<T> {
        run_txn(&*self.engine, true, f)
    }

    pub(crate) fn writable(&self) -> Result<()> {
        if self.config.read_only {
            Err(MetaError::ReadOnly)
        } else {
            Ok(())
        }
    }

    /// Create the volume, or confirm an existing one has the same settings.
    /// Returns true when a new volume was written.
    pub fn init(&self, format: &Format) -> Result<bool> {
        let created = self.txn(|tx| {
            if let Some(v) = tx.get(keys::SETTING)? {
                let old: Format = serde_json::from_slice(&v)
                    .map_err(|e| MetaError::Corrupt(format!("volume settings: {e}")))?;
                if let Some(diff) = old.incompatible_with(format) {
                    return Err(MetaError::Format(format!(
                        "refusing to reformat volume {:?}: it exists with other settings ({diff}); \
                         use the same settings, or a new metadata URL",
                        old.name
                    )));
                }
                let mut merged = old.clone();
                merged.trash_days = format.trash_days;
                merged.capacity = format.capacity;
                merged.inodes = format.inodes;
                merged.acl = old.acl || format.acl;
                let raw =
                    serde_json::to_vec(&merged).map_err(|e| MetaError::Corrupt(e.to_string()))?;
                tx.set(keys::SETTING, &raw)?;
                return Ok(false);
            }
            let raw = serde_json::to_vec(format).map_err(|e| MetaError::Corrupt(e.to_string()))?;
            tx.set(keys::SETTING, &raw)?;
            let mut root = Attr::new(FileType::Dir, 0o777, 0, 0, now());
            root.nlink = 2;
            root.length = 4096;
            root.parent = ROOT_INO;
            put_attr(tx, ROOT_INO, &root)?;
            tx.set(&keys::counter("nextInode"), &2i64.to_le_bytes())?;
            tx.set(&keys::counter("nextSlice"), &1i64.to_le_bytes())?;
            Ok(true)
        })?;
        self.load()?;
        Ok(created)
    }

    /// Read the volume settings; fails with [`MetaError::NotFormatted`] on an
    /// empty engine.
    pub fn load(&self) -> Result<Format> {
        let raw = self
            .read_txn(|tx| tx.get(keys::SETTING))?
            .ok_or(MetaError::NotFormatted)?;
        let format: Format = serde_json::from_slice(&raw)
            .map_err(|e| MetaError::Corrupt(format!("volume settings: {e}")))?;
        if format.version > Format::VERSION {
            return Err(MetaError::Format(format!(
                "volume layout version {} is newer than this binary understands ({})",
                format.version,
                Format::VERSION
            )));
        }
        {
            let mut f = self.format.lock();
            *f = Some(format.clone());
        }
        Ok(format)
    }

    pub fn format(&self) -> Result<Format> {
        self.format.lock().clone().ok_or(MetaError::NotFormatted)
    }

    fn next_id(&self, which: &Mutex<(u64, u64)>, counter: &'static str) -> Result<u64> {
        let mut ids = which.lock();
        if ids.0 >= ids.1 {
            let end = self.txn(|tx| incr(tx, counter, ID_BATCH as i64))? as u64;
            *ids = (end - ID_BATCH, end);
        }
        let id = ids.0;
        ids.0 += 1;
        Ok(id)
    }

    pub fn new_slice_id(&self) -> Result<u64> {
        self.next_id(&self.slice_ids, "nextSlice")
    }

    /// A slice id from the batch this process already holds, with no
    /// round trip; None when the batch is used up (`new_slice_id` then
    /// fetches the next one). For callers that hold a lock of their own.
    pub fn spare_slice_id(&self) -> Option<u64> {
        let mut ids = self.slice_ids.lock();
        (ids.0 < ids.1).then(|| {
            ids.0 += 1;
            ids.0 - 1
        })
    }

    fn new_inode(&self) -> Result<Ino> {
        self.next_id(&self.inode_ids, "nextInode")
    }

    pub fn getattr(&self, ino: Ino) -> Result<Attr> {
        self.read_txn(|tx| get_attr(tx, ino))
    }

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<(Ino, Attr)> {
        if name == b"." {
            return Ok((parent, self.getattr(parent)?));
        }
        check_name(name)?;
        self.read_txn(|tx| {
            if name == b".." {
                let p = get_attr(tx, parent)?;
                let ino = if parent == ROOT_INO {
                    ROOT_INO
                } else {
                    p.parent
                };
                return Ok((ino, get_attr(tx, ino)?));
            }
            // A missing name needs no look at the parent: the kernel only
            // looks up names in directories, and a dentry exists only in one.
            // The entry and the attributes it points at, in one round trip
            // where the engine can.
            match tx.get_follow(&keys::dentry(parent, name), keys::DENTRY_TO_ATTR)? {
                Some((entry, attr)) if entry.len() == 9 => {
                    let ino = keys::be_u64(&entry, 0).unwrap_or(0);
                    match attr {
                        Some(a) => Ok((ino, Attr::decode(&a)?)),
                        None => Err(MetaError::NotFound),
                    }
                }
                Some((entry, _)) => Err(MetaError::Corrupt(format!(
                    "dentry of {} bytes",
                    entry.len()
                ))),
                None => Err(MetaError::NotFound),
            }
        })
    }

    /// Set the access time to now, as a read does: the change time stays.
    pub fn touch_atime(&self, ino: Ino) -> Result<()> {
        self.writable()?;
        self.txn(|tx| {
            let mut a = get_attr(tx, ino)?;
            (a.atime, a.atime_ns) = now();
            put_attr(tx, ino, &a)
        })
    }

    pub fn setattr(&self, ino: Ino, set: &SetAttr) -> Result<Attr> {
        self.writable()?;
        self.txn(|tx| {
            let mut a = get_attr(tx, ino)?;
            let t = now();
            if let Some(mode) = set.mode {
                a.mode = (mode & 0o7777) as u16;
                if a.flags & crate::attr::FLAG_ACL_ACCESS != 0 {
                    rewrite_access_acl(tx, ino, a.mode)?;
                }
            }
            if let Some(uid) = set.uid {
                a.uid = uid;
            }
            if let Some(gid) = set.gid {
                a.gid = gid;
            }
            if let Some(at) = set.atime {
                (a.atime, a.atime_ns) = at.unwrap_or(t);
            }
            if let Some(mt) = set.mtime {
                (a.mtime, a.mtime_ns) = mt.unwrap_or(t);
            }
            a.touch_ctime(t);
            put_attr(tx, ino, &a)?;
            Ok(a)
        })
    }

    /// Create a node of any type. `target` is the symlink target.
    #[allow(clippy::too_many_arguments)]
    pub fn mknod(
        &self,
        ctx: &Ctx,
        parent: Ino,
        name: &[u8],
        typ: FileType,
        mode: u32,
        rdev: u32,
        target: Option<&[u8]>,
    ) -> Result<(Ino, Attr)> {
        self.writable()?;
        check_name(name)?;
        let ino = self.new_inode()?;
        let attr = self.txn(|tx| {
            let [p, d] = get_n(tx, [&keys::attr(parent), &keys::dentry(parent, name)])?;
            let mut p = decode_attr(p)?;
            if p.typ != FileType::Dir {
                return Err(MetaError::NotDir);
            }
            if p.nlink == 0 {
                return Err(MetaError::NotFound);
            }
            if decode_dentry(d)?.is_some() {
                return Err(MetaError::Exists);
            }
            let t = now();
            let mut mode = (mode & 0o7777) as u16;
            // A directory's default ACL replaces the umask: the new node
            // gets it, narrowed by the mode asked for.
            let inherited =
                if p.flags & crate::attr::FLAG_ACL_DEFAULT != 0 && typ != FileType::Symlink {
                    tx.get(&keys::xattr(parent, acl::DEFAULT))?
                        .map(|raw| acl::Acl::decode(&raw))
                        .transpose()?
                } else {
                    None
                };
            let access = inherited.as_ref().map(|default| {
                let (access, bits) = default.inherit(mode);
                mode = (mode & !0o777) | bits;
                access
            });
            if inherited.is_none() {
                mode &= !(ctx.umask as u16 & 0o777);
            }
            let mut gid = ctx.gid;
            if p.mode & 0o2000 != 0 {
                gid = p.gid;
                if typ == FileType::Dir {
                    mode |= 0o2000;
                }
            }
            let mut a = Attr::new(typ, mode, ctx.uid, gid, t);
            a.parent = parent;
            a.rdev = rdev;
            if let Some(access) = access.filter(|acl| !acl.is_minimal()) {
                tx.set(&keys::xattr(ino, acl::ACCESS), &access.encode())?;
                a.flags |= crate::attr::FLAG_XATTRS | crate::attr::FLAG_ACL_ACCESS;
            }
            if let Some(default) = inherited.filter(|_| typ == FileType::Dir) {
                tx.set(&keys::xattr(ino, acl::DEFAULT), &default.encode())?;
                a.flags |= crate::attr::FLAG_XATTRS | crate::attr::FLAG_ACL_DEFAULT;
            }
            match typ {
                FileType::Dir => {
                    a.nlink = 2;
                    a.length = 4096;
                    p.nlink += 1;
                }
                FileType::Symlink => {
                    let target = target.unwrap_or_default();
                    a.length = target.len() as u64;
                    a.mode = 0o777;
                    tx.set(&keys::symlink(ino), target)?;
                }
                _ => {}
            }
            p.touch_mtime(t);
            put_attr(tx, parent, &p)?;
            put_attr(tx, ino, &a)?;
            put_dentry(tx, parent, name, ino, typ)?;
            account(usage_of(&a), 1);
            Ok(a)
        })?;
        Ok((ino, attr))
    }

    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        self.read_txn(|tx| {
            tx.get(&keys::symlink(ino))?
                .ok_or(MetaError::Invalid("not a symlink".into()))
        })
    }

    /// Drop one link of `ino` inside a transaction. With no links left the
    /// inode goes away, or waits for its last handle if it is open here.
    fn drop_link(
        &self,
        tx: &mut dyn KvTxn,
        parent: Ino,
        ino: Ino,
        t: (i64, u32),
    ) -> Result<UnlinkResult> {
        let mut a = get_attr(tx, ino)?;
        a.nlink = a.nlink.saturating_sub(1);
        a.touch_ctime(t);
        let pkey = keys::parent(ino, parent);
        let linked = a.flags & crate::attr::FLAG_LINKED != 0;
        if !linked {
            // Never hard-linked: no parent counts to maintain.
        } else if let Some(v) = tx.get(&pkey)? {
            let n = v.first().copied().unwrap_or(1).saturating_sub(1);
            if n == 0 {
                tx.delete(&pkey)?;
            } else {
                tx.set(&pkey, &[n])?;
            }
        }
        if a.nlink > 0 {
            if a.parent == parent && linked {
                // Point `parent` at a directory that still holds a link.
                if let Some((k, _)) = scan_prefix(tx, &keys::parent_prefix(ino))?
                    .into_iter()
                    .next()
                {
                    a.parent = keys::be_u64(&k, 10).unwrap_or(a.parent);
                }
            }
            put_attr(tx, ino, &a)?;
            return Ok(UnlinkResult {
                ino,
                data_freed: false,
            });
        }
        let open_here = self.open_counts.lock().get(&ino).copied().unwrap_or(0) > 0;
        if open_here && a.typ == FileType::File {
            put_attr(tx, ino, &a)?;
            tx.set(
                &keys::sustained(self.sid.load(Ordering::Relaxed), ino),
                b"1",
            )?;
            {
                let mut s = self.sustained.lock();
                s.insert(ino);
            }
            return Ok(UnlinkResult {
                ino,
                data_freed: false,
            });
        }
        self.remove_inode(tx, ino, &a)?;
        Ok(UnlinkResult {
            ino,
            data_freed: a.typ == FileType::File,
        })
    }

    /// Delete an inode with no links. File data is left for the cleaner.
    pub(crate) fn remove_inode(&self, tx: &mut dyn KvTxn, ino: Ino, a: &Attr) -> Result<()> {
        tx.delete(&keys::attr(ino))?;
        if a.typ == FileType::Symlink {
            tx.delete(&keys::symlink(ino))?;
        }
        // Flags say whether there is anything to look for; an inode that
        // never had xattrs or hard links costs no scans.
        if a.flags & crate::attr::FLAG_XATTRS != 0 {
            for (k, _) in scan_prefix(tx, &keys::xattr_prefix(ino))? {
                tx.delete(&k)?;
            }
        }
        if a.flags & crate::attr::FLAG_LINKED != 0 {
            for (k, _) in scan_prefix(tx, &keys::parent_prefix(ino))? {
                tx.delete(&k)?;
            }
        }
        if a.typ == FileType::File {
            tx.set(&keys::deleted(ino, a.length), b"")?;
        }
        account(-usage_of(a), -1);
        Ok(())
    }

    pub fn unlink(&self, parent: Ino, name: &[u8]) -> Result<UnlinkResult> {
        self.writable()?;
        check_name(name)?;
        self.txn(|tx| {
            let [d, p] = get_n(tx, [&keys::dentry(parent, name), &keys::attr(parent)])?;
            let (ino, typ) = decode_dentry(d)?.ok_or(MetaError::NotFound)?;
            if typ == FileType::Dir {
                return Err(MetaError::IsDir);
            }
            let t = now();
            let mut p = decode_attr(p)?;
            p.touch_mtime(t);
            put_attr(tx, parent, &p)?;
            tx.delete(&keys::dentry(parent, name))?;
            self.drop_link(tx, parent, ino, t)
        })
    }

    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.writable()?;
        if name == b"." {
            return Err(MetaError::Invalid("cannot remove \".\"".into()));
        }
        if name == b".." {
            return Err(MetaError::NotEmpty);
        }
        check_name(name)?;
        self.txn(|tx| {
            let (ino, typ) = get_dentry(tx, parent, name)?.ok_or(MetaError::NotFound)?;
            if typ != FileType::Dir {
                return Err(MetaError::NotDir);
            }
            if !dir_is_empty(tx, ino)? {
                return Err(MetaError::NotEmpty);
            }
            let a = get_attr(tx, ino)?;
            let t = now();
            let mut p = get_attr(tx, parent)?;
            p.nlink = p.nlink.saturating_sub(1);
            p.touch_mtime(t);
            put_attr(tx, parent, &p)?;
            tx.delete(&keys::dentry(parent, name))?;
            self.remove_inode(tx, ino, &a)
        })
    }

    /// Is `ancestor` on the path from `ino` up to the root?
    fn is_ancestor(tx: &mut dyn KvTxn, ancestor: Ino, mut ino: Ino) -> Result<bool> {
        for _ in 0..4096 {
            if ino == ancestor {
                return Ok(true);
            }
            if ino == ROOT_INO || ino == 0 {
                return Ok(false);
            }
            ino = get_attr(tx, ino)?.parent;
        }
        Ok(false)
    }

    /// Rename with Linux flags (`RENAME_NOREPLACE`, `RENAME_EXCHANGE`).
    /// Returns what happened to a replaced target, if any.
    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: u32,
    ) -> Result<Option<UnlinkResult>> {
        self.rename_hinted(parent, name, new_parent, new_name, flags, None)
    }

    /// [`Meta::rename`] with the inode number the caller believes `name`
    /// has (from a recent lookup): its attributes are then read together
    /// with the entries, saving a round trip. A wrong guess costs one read.
    pub fn rename_hinted(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: u32,
        hint: Option<Ino>,
    ) -> Result<Option<UnlinkResult>> {
        self.writable()?;
        check_name(name)?;
        check_name(new_name)?;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        // Anything else (RENAME_WHITEOUT for overlayfs) is refused, not
        // done as a plain rename that drops what the caller asked for.
        let known = libc::RENAME_EXCHANGE | libc::RENAME_NOREPLACE;
        if flags & !known != 0 {
            return Err(MetaError::Invalid(format!(
                "unsupported rename flags {:#x}",
                flags & !known
            )));
        }
        if exchange && noreplace {
            return Err(MetaError::Invalid(
                "RENAME_EXCHANGE with RENAME_NOREPLACE".into(),
            ));
        }
        self.txn(|tx| {
            // Everything the checks need, in one go; the parents' attributes
            // are read again (from the transaction's own reads) when touched.
            let [src, np, dst, _, hinted] = get_n(
                tx,
                [
                    &keys::dentry(parent, name),
                    &keys::attr(new_parent),
                    &keys::dentry(new_parent, new_name),
                    &keys::attr(parent),
                    &keys::attr(hint.unwrap_or(parent)),
                ],
            )?;
            let (ino, typ) = decode_dentry(src)?.ok_or(MetaError::NotFound)?;
            let hinted = hinted.filter(|_| hint == Some(ino));
            let np = decode_attr(np)?;
            if np.typ != FileType::Dir {
                return Err(MetaError::NotDir);
            }
            let dst = decode_dentry(dst)?;
            if parent == new_parent && name == new_name {
                return if noreplace {
                    Err(MetaError::Exists)
                } else {
                    Ok(None)
                };
            }
            if typ == FileType::Dir && Self::is_ancestor(tx, ino, new_parent)? {
                return Err(MetaError::Invalid(
                    "cannot move a directory into itself".into(),
                ));
            }
            if let Some((dino, dtyp)) = dst {
                if noreplace {
                    return Err(MetaError::Exists);
                }
                if exchange {
                    if dtyp == FileType::Dir && Self::is_ancestor(tx, dino, parent)? {
                        return Err(MetaError::Invalid(
                            "cannot move a directory into itself".into(),
                        ));
                    }
                } else {
                    if dino == ino {
                        return Ok(None);
                    }
                    if typ == FileType::Dir && dtyp != FileType::Dir {
                        return Err(MetaError::NotDir);
                    }
                    if typ != FileType::Dir && dtyp == FileType::Dir {
                        return Err(MetaError::IsDir);
                    }
                    if dtyp == FileType::Dir && !dir_is_empty(tx, dino)? {
                        return Err(MetaError::NotEmpty);
                    }
                }
            } else if exchange {
                return Err(MetaError::NotFound);
            }
            let t = now();
            let mut replaced = None;
            let mut src = match hinted {
                Some(raw) => Attr::decode(&raw)?,
                None => get_attr(tx, ino)?,
            };
            if let (true, Some((dino, dtyp))) = (exchange, dst) {
                let mut d = get_attr(tx, dino)?;
                put_dentry(tx, parent, name, dino, dtyp)?;
                put_dentry(tx, new_parent, new_name, ino, typ)?;
                if parent != new_parent {
                    Self::move_parent_link(tx, ino, &mut src, parent, new_parent)?;
                    Self::move_parent_link(tx, dino, &mut d, new_parent, parent)?;
                    if typ == FileType::Dir && dtyp != FileType::Dir {
                        Self::adjust_nlink(tx, parent, -1)?;
                        Self::adjust_nlink(tx, new_parent, 1)?;
                    } else if typ != FileType::Dir && dtyp == FileType::Dir {
                        Self::adjust_nlink(tx, parent, 1)?;
                        Self::adjust_nlink(tx, new_parent, -1)?;
                    }
                }
                d.touch_ctime(t);
                put_attr(tx, dino, &d)?;
            } else {
                if let Some((dino, dtyp)) = dst {
                    if dtyp == FileType::Dir {
                        let da = get_attr(tx, dino)?;
                        self.remove_inode(tx, dino, &da)?;
                        Self::adjust_nlink(tx, new_parent, -1)?;
                        replaced = Some(UnlinkResult {
                            ino: dino,
                            data_freed: false,
                        });
                    } else {
                        replaced = Some(self.drop_link(tx, new_parent, dino, t)?);
                    }
                }
                tx.delete(&keys::dentry(parent, name))?;
                put_dentry(tx, new_parent, new_name, ino, typ)?;
                if parent != new_parent {
                    Self::move_parent_link(tx, ino, &mut src, parent, new_parent)?;
                    if typ == FileType::Dir {
                        Self::adjust_nlink(tx, parent, -1)?;
                        Self::adjust_nlink(tx, new_parent, 1)?;
                    }
                }
            }
            src.touch_ctime(t);
            put_attr(tx, ino, &src)?;
            for p in [parent, new_parent] {
                let mut pa = get_attr(tx, p)?;
                pa.touch_mtime(t);
                put_attr(tx, p, &pa)?;
                if parent == new_parent {
                    break;
                }
            }
            Ok(replaced)
        })
    }

    fn adjust_nlink(tx: &mut dyn KvTxn, ino: Ino, delta: i32) -> Result<()> {
        let mut a = get_attr(tx, ino)?;
        a.nlink = a.nlink.saturating_add_signed(delta);
        put_attr(tx, ino, &a)
    }

    fn move_parent_link(
        tx: &mut dyn KvTxn,
        ino: Ino,
        a: &mut Attr,
        from: Ino,
        to: Ino,
    ) -> Result<()> {
        if a.parent == from {
            a.parent = to;
        }
        let old = keys::parent(ino, from);
        if let Some(v) = tx.get(&old)? {
            let n = v.first().copied().unwrap_or(1).saturating_sub(1);
            if n == 0 {
                tx.delete(&old)?;
            } else {
                tx.set(&old, &[n])?;
            }
            let new = keys::parent(ino, to);
            let m = tx.get(&new)?.and_then(|v| v.first().copied()).unwrap_or(0);
            tx.set(&new, &[m.saturating_add(1)])?;
        }
        Ok(())
    }

    pub fn link(&self, ino: Ino, new_parent: Ino, new_name: &[u8]) -> Result<Attr> {
        self.writable()?;
        check_name(new_name)?;
        self.txn(|tx| {
            let mut a = get_attr(tx, ino)?;
            if a.typ == FileType::Dir {
                return Err(MetaError::Perm);
            }
            let mut p = get_attr(tx, new_parent)?;
            if p.typ != FileType::Dir {
                return Err(MetaError::NotDir);
            }
            if get_dentry(tx, new_parent, new_name)?.is_some() {
                return Err(MetaError::Exists);
            }
            if a.nlink == 0 {
                return Err(MetaError::NotFound);
            }
            let t = now();
            if scan_prefix(tx, &keys::parent_prefix(ino))?.is_empty() {
                tx.set(&keys::parent(ino, a.parent), &[a.nlink.min(255) as u8])?;
            }
            let pk = keys::parent(ino, new_parent);
            let n = tx.get(&pk)?.and_then(|v| v.first().copied()).unwrap_or(0);
            tx.set(&pk, &[n.saturating_add(1)])?;
            a.nlink += 1;
            a.flags |= crate::attr::FLAG_LINKED;
            a.touch_ctime(t);
            put_attr(tx, ino, &a)?;
            put_dentry(tx, new_parent, new_name, ino, a.typ)?;
            p.touch_mtime(t);
            put_attr(tx, new_parent, &p)?;
            Ok(a)
        })
    }

    /// All entries of a directory, without `.` and `..`.
    pub fn readdir(&self, ino: Ino, with_attrs: bool) -> Result<Vec<Entry>> {
        self.read_txn(|tx| {
            let a = get_attr(tx, ino)?;
            if a.typ != FileType::Dir {
                return Err(MetaError::NotDir);
            }
            let prefix = keys::dentry_prefix(ino);
            let rows = scan_prefix(tx, &prefix)?;
            let mut out = Vec::with_capacity(rows.len());
            for (k, v) in rows {
                if v.len() != 9 {
                    return Err(MetaError::Corrupt("dentry value".into()));
                }
                let child = keys::be_u64(&v, 0).unwrap_or(0);
                let typ = FileType::from_u8(v[8])
                    .ok_or_else(|| MetaError::Corrupt("dentry type".into()))?;
                let attr = if with_attrs {
                    Some(get_attr(tx, child)?)
                } else {
                    None
                };
                out.push(Entry {
                    name: k[prefix.len()..].to_vec(),
                    ino: child,
                    typ,
                    attr,
                });
            }
            Ok(out)
        })
    }

    // ---- data: chunks and slices -------------------------------------

    pub fn read_chunk(&self, ino: Ino, index: u32) -> Result<Vec<SliceRecord>> {
        let raw = self.read_txn(|tx| tx.get(&keys::chunk(ino, index)))?;
        match raw {
            Some(v) => SliceRecord::decode_all(&v),
            None => Ok(Vec::new()),
        }
    }

    pub fn read_chunk_raw(&self, ino: Ino, index: u32) -> Result<Vec<u8>> {
        Ok(self
            .read_txn(|tx| tx.get(&keys::chunk(ino, index)))?
            .unwrap_or_default())
    }

    /// Append written slices and grow the file to at least `min_length`.
    /// Returns the new attributes and the largest record count of any chunk
    /// touched (the compaction trigger).
    pub fn write_slices(
        &self,
        ino: Ino,
        slices: &[(u32, SliceRecord)],
        min_length: u64,
    ) -> Result<(Attr, usize)> {
        self.writable()?;
        end_within_limit(min_length, 0)?;
        self.txn(|tx| {
            let mut a = get_attr(tx, ino)?;
            if a.typ != FileType::File {
                return Err(MetaError::Invalid("write to a non-regular file".into()));
            }
            let usage = usage_of(&a);
            let mut most = 0usize;
            for (index, rec) in slices {
                let key = keys::chunk(ino, *index);
                let mut v = tx.get(&key)?.unwrap_or_default();
                restore_for(&mut a, &v, rec)?;
                rec.encode_into(&mut v);
                most = most.max(v.len() / crate::slice::RECORD_LEN);
                tx.set(&key, &v)?;
            }
            if min_length > a.length {
                a.length = min_length;
            }
            account(usage_of(&a) - usage, 0);
            a.touch_mtime(now());
            put_attr(tx, ino, &a)?;
            Ok((a, most))
        })
    }

    /// Place the stored slice `id` (`len` bytes) at the end of the file, as
    /// the file's length stands inside this transaction. This is what makes
    /// O_APPEND writes from several mounts land one after another instead of
    /// over each other.
    pub fn append_slice(&self, ino: Ino, id: u64, len: u64) -> Result<Appended> {
        self.writable()?;
        self.txn(|tx| {
            let mut a = get_attr(tx, ino)?;
            if a.typ != FileType::File {
                return Err(MetaError::Invalid("write to a non-regular file".into()));
            }
            let start = a.length;
            end_within_limit(start, len)?;
            let usage = usage_of(&a);
            let mut touched = Vec::new();
            let mut done = 0u64;
            while done < len {
                let at = start + done;
                let index = (at / CHUNK_SIZE) as u32;
                let pos = at % CHUNK_SIZE;
                let n = (len - done).min(CHUNK_SIZE - pos);
                let rec = SliceRecord {
                    kind: crate::slice::SliceKind::Internal,
                    pos: pos as u32,
                    id,
                    size: len,
                    off: done,
                    len: n as u32,
                };
                if done > 0 {
                    // A slice split over chunks is one object referred to
                    // by several records.
                    add_slice_ref(tx, &rec)?;
                }
                let key = keys::chunk(ino, index);
                let mut v = tx.get(&key)?.unwrap_or_default();
                restore_for(&mut a, &v, &rec)?;
                rec.encode_into(&mut v);
                touched.push((index, v.len() / crate::slice::RECORD_LEN));
                tx.set(&key, &v)?;
                done += n;
            }
            a.length = start + len;
            account(usage_of(&a) - usage, 0);
            a.touch_mtime(now());
            put_attr(tx, ino, &a)?;
            Ok(Appended {
                attr: a,
                at: start,
                touched,
            })
        })
    }

    /// Replace the first records of a chunk (exactly `old` bytes) with
    /// `replacement`, if the chunk still starts with them. Records appended
    /// since stay after it. Returns the freed slices, or None when the chunk
    /// changed under us.
    pub fn replace_chunk_prefix(
        &self,
        ino: Ino,
        index: u32,
        old: &[u8],
        replacement: &[SliceRecord],
    ) -> Result<Option<FreedSlices>> {
        self.txn(|tx| {
            let key = keys::chunk(ino, index);
            let cur = tx.get(&key)?.unwrap_or_default();
            if !cur.starts_with(old) {
                return Ok(None);
            }
            let mut v = SliceRecord::encode_all(replacement);
            v.extend_from_slice(&cur[old.len()..]);
            tx.set(&key, &v)?;
            // Compaction writes a chunk's holes between data as zeros.
            let (before, after) = (stored_in(&cur)?, stored_in(&v)?);
            if before != after {
                if let Ok(mut a) = get_attr(tx, ino) {
                    let usage = usage_of(&a);
                    restore(&mut a, before, after);
                    account(usage_of(&a) - usage, 0);
                    put_attr(tx, ino, &a)?;
                }
            }
            let mut freed = Vec::new();
            for r in SliceRecord::decode_all(old)? {
                unref_slice(tx, &r, &mut freed)?;
            }
            Ok(Some(freed))
        })
    }

    /// Change a file's length. Shrinking drops whole chunks past the end and
    /// covers the tail of the last chunk with a hole.
    pub fn truncate(&self, ino: Ino, length: u64) -> Result<TruncateResult> {
        self.writable()?;
        end_within_limit(length, 0)?;
        let mut freed = Vec::new();
        for round in 0.. {
            let done = self.txn(|tx| {
                let mut a = get_attr(tx, ino)?;
                if a.typ == FileType::Dir {
                    return Err(MetaError::IsDir);
                }
                if a.typ != FileType::File {
                    return Err(MetaError::Invalid("truncate of a special file".into()));
                }
                let mut freed = Vec::new();
                let usage = usage_of(&a);
                if length < a.length {
                    // Too many whole chunks to drop in one transaction:
                    // they go first, in batches (see shrink_from_the_top).
                    if round < 3 {
                        let from = u32::try_from(length.div_ceil(CHUNK_SIZE)).unwrap_or(u32::MAX);
                        let end = crate::kv::prefix_end(&keys::chunk_prefix(ino));
                        let beyond = tx.scan(&keys::chunk(ino, from), &end, CHUNKS_PER_TXN + 1)?;
                        if beyond.len() > CHUNKS_PER_TXN {
                            return Ok(None);
                        }
                    }
                    let dropped =
                        Self::zero_range(tx, ino, length, a.length - length, &mut freed, true)?;
                    a.stored = a.stored.saturating_sub(dropped);
                }
                a.length = length;
                account(usage_of(&a) - usage, 0);
                a.touch_mtime(now());
                put_attr(tx, ino, &a)?;
                Ok(Some(TruncateResult { attr: a, freed }))
            })?;
            match done {
                Some(last) => {
                    freed.extend(last.freed);
                    return Ok(TruncateResult {
                        attr: last.attr,
                        freed,
                    });
                }
                None => freed.extend(self.shrink_from_the_top(ino, length)?),
            }
        }
        unreachable!("the fourth round of a truncate always finishes")
    }

    /// Keys of the chunk lists of `ino` from chunk `first` on (read in
    /// pages, outside any writing transaction).
    fn chunk_keys_from(&self, ino: Ino, first: u64) -> Result<Vec<Vec<u8>>> {
        let Ok(first) = u32::try_from(first) else {
            return Ok(Vec::new());
        };
        let end = crate::kv::prefix_end(&keys::chunk_prefix(ino));
        let mut from = keys::chunk(ino, first);
        let mut found = Vec::new();
        loop {
            let rows = self.read_txn(|tx| tx.scan(&from, &end, 4096))?;
            let full = rows.len() == 4096;
            found.extend(rows.into_iter().map(|(k, _)| k));
            match found.last() {
                Some(last) if full => {
                    from = last.clone();
                    from.push(0);
                }
                _ => return Ok(found),
            }
        }
    }

    /// A file shrinking past more whole chunks than one transaction should
    /// drop loses them from the top down, [`CHUNKS_PER_TXN`] per
    /// transaction, each transaction leaving the file shorter and whole (a
    /// crash midway leaves a file cut at a chunk boundary, never one with
    /// holes punched in it). The last transaction of the truncate takes
    /// what is left. Work is proportional to the chunks that exist, never
    /// to the file's logical size.
    fn shrink_from_the_top(&self, ino: Ino, length: u64) -> Result<FreedSlices> {
        let mut freed = Vec::new();
        let keys = self.chunk_keys_from(ino, length.div_ceil(CHUNK_SIZE))?;
        let prefix_len = keys::chunk_prefix(ino).len();
        for batch in keys.rchunks(CHUNKS_PER_TXN) {
            let lowest = batch[0]
                .get(prefix_len..)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_be_bytes)
                .ok_or_else(|| MetaError::Corrupt("chunk key".into()))?;
            let cut = (u64::from(lowest) * CHUNK_SIZE).max(length);
            let dropped = self.txn(|tx| {
                let mut a = get_attr(tx, ino)?;
                if a.typ != FileType::File || a.length <= cut {
                    // Shrunk (or replaced) meanwhile: the last step decides.
                    return Ok(None);
                }
                let usage = usage_of(&a);
                let mut f = Vec::new();
                for k in batch {
                    if let Some(v) = tx.get(k)? {
                        a.stored = a.stored.saturating_sub(stored_in(&v)?);
                        for r in SliceRecord::decode_all(&v)? {
                            unref_slice(tx, &r, &mut f)?;
                        }
                        tx.delete(k)?;
                    }
                }
                a.length = cut;
                account(usage_of(&a) - usage, 0);
                a.touch_mtime(now());
                put_attr(tx, ino, &a)?;
                Ok(Some(f))
            })?;
            match dropped {
                Some(f) => freed.extend(f),
                None => break,
            }
        }
        Ok(freed)
    }

    /// Make `[off, off + len)` read as zeros. With `drop_whole` (the range runs
    /// to the end of the file), chunks that start inside it are deleted.
    /// Only chunks that have a list are visited (one range scan), so the
    /// work follows the data stored, not the length of the range.
    /// Returns how many stored bytes the range held.
    fn zero_range(
        tx: &mut dyn KvTxn,
        ino: Ino,
        off: u64,
        len: u64,
        freed: &mut FreedSlices,
        drop_whole: bool,
    ) -> Result<u64> {
        let end = off.saturating_add(len).min(MAX_FILE_SIZE);
        if end <= off {
            return Ok(0);
        }
        let mut dropped = 0u64;
        let first = (off / CHUNK_SIZE) as u32;
        let last = ((end - 1) / CHUNK_SIZE) as u32;
        let upper = match last.checked_add(1) {
            Some(next) => keys::chunk(ino, next),
            None => crate::kv::prefix_end(&keys::chunk_prefix(ino)),
        };
        let prefix_len = keys::chunk_prefix(ino).len();
        for (key, mut v) in tx.scan(&keys::chunk(ino, first), &upper, usize::MAX)? {
            let index = key
                .get(prefix_len..)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_be_bytes)
                .ok_or_else(|| MetaError::Corrupt("chunk key".into()))?;
            let chunk_start = u64::from(index) * CHUNK_SIZE;
            let in_chunk = off.saturating_sub(chunk_start);
            let upto = (end - chunk_start).min(CHUNK_SIZE);
            if drop_whole && in_chunk == 0 {
                dropped += stored_in(&v)?;
                for r in SliceRecord::decode_all(&v)? {
                    unref_slice(tx, &r, freed)?;
                }
                tx.delete(&key)?;
            } else {
                dropped += stored_between(&v, in_chunk as u32, upto as u32)?;
                SliceRecord::hole(in_chunk as u32, (upto - in_chunk) as u32).encode_into(&mut v);
                tx.set(&key, &v)?;
            }
        }
        Ok(dropped)
    }

    /// Cover the holes of `[off, end)` with allocated-zero records, so the
    /// range counts as stored and a later write into it adds nothing to
    /// the file's allocation. Returns the bytes newly reserved. At most
    /// `RESERVE_CHUNKS` chunks are reserved in one call (one transaction);
    /// past them the range still reads as zeros, uncounted.
    fn reserve_range(tx: &mut dyn KvTxn, ino: Ino, off: u64, end: u64) -> Result<u64> {
        const RESERVE_CHUNKS: u64 = 1024;
        let end = end.min(MAX_FILE_SIZE);
        if end <= off {
            return Ok(0);
        }
        let first = off / CHUNK_SIZE;
        let last = ((end - 1) / CHUNK_SIZE).min(first + RESERVE_CHUNKS - 1);
        let mut reserved = 0u64;
        for index in first..=last {
            let chunk_start = index * CHUNK_SIZE;
            let a = off.saturating_sub(chunk_start) as u32;
            let b = (end - chunk_start).min(CHUNK_SIZE) as u32;
            let key = keys::chunk(ino, index as u32);
            let mut v = tx.get(&key)?.unwrap_or_default();
            let records = SliceRecord::decode_all(&v)?;
            let mut at = a;
            let mut gaps = Vec::new();
            for seg in crate::slice::visible_segments_in(&records, a, b) {
                if !seg.record.holds_space() {
                    continue;
                }
                if seg.pos > at {
                    gaps.push((at, seg.pos));
                }
                at = at.max(seg.end());
            }
            if b > at {
                gaps.push((at, b));
            }
            if gaps.is_empty() {
                continue;
            }
            for (x, y) in gaps {
                SliceRecord::allocated(x, y - x).encode_into(&mut v);
                reserved += u64::from(y - x);
            }
            tx.set(&key, &v)?;
        }
        Ok(reserved)
    }

    /// fallocate: plain allocation grows the file; `FALLOC_FL_PUNCH_HOLE`
    /// and `FALLOC_FL_ZERO_RANGE` make the range read as zeros.
    pub fn fallocate(&self, ino: Ino, mode: i32, off: u64, len: u64) -> Result<TruncateResult> {
        self.writable()?;
        if len == 0 {
            return Err(MetaError::Invalid("fallocate of zero bytes".into()));
        }
        end_within_limit(off, len)?;
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        let zero = mode & libc::FALLOC_FL_ZERO_RANGE != 0;
        let known =
            libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !known != 0 || (punch && !keep_size) {
            return Err(MetaError::Invalid(format!(
                "unsupported fallocate mode {mode:#x}"
            )));
        }
        self.txn(|tx| {
            let mut a = get_attr(tx, ino)?;
            if a.typ == FileType::Dir {
                return Err(MetaError::IsDir);
            }
            let mut freed = Vec::new();
            let usage = usage_of(&a);
            if punch || zero {
                let end = (off + len).min(a.length.max(if keep_size { 0 } else { off + len }));
                if end > off {
                    let dropped = Self::zero_range(tx, ino, off, end - off, &mut freed, false)?;
                    a.stored = a.stored.saturating_sub(dropped);
                }
            }
            // Allocation (and zeroing, which keeps the space allocated, as
            // Linux file systems do) reserves the range's holes.
            if !punch {
                a.stored += Self::reserve_range(tx, ino, off, off + len)?;
            }
            let t = now();
            if !keep_size && off + len > a.length {
                a.length = off + len;
            }
            account(usage_of(&a) - usage, 0);
            // Every mode changes the file's times, as Linux file systems
            // do (ext4 and xfs stamp mtime and ctime even for KEEP_SIZE).
            a.touch_mtime(t);
            put_attr(tx, ino, &a)?;
            Ok(TruncateResult { attr: a, freed })
        })
    }

    /// Copy the slice records covering `[off_in, off_in + len)` of `src` to
    /// `off_out` of `dst`, sharing the underlying objects. Both files must
    /// have no buffered writes. Returns the destination's new attributes.
    pub fn copy_range(
        &self,
        src: Ino,
        off_in: u64,
        dst: Ino,
        off_out: u64,
        len: u64,
    ) -> Result<(Attr, u64)> {
        self.writable()?;
        self.txn(|tx| {
            let sa = get_attr(tx, src)?;
            let mut da = get_attr(tx, dst)?;
            if sa.typ != FileType::File || da.typ != FileType::File {
                return Err(MetaError::Invalid(
                    "copy_file_range needs regular files".into(),
                ));
            }
            if off_in >= sa.length {
                return Ok((da, 0));
            }
            let len = len.min(sa.length - off_in).min(COPY_RANGE_MAX);
            end_within_limit(off_out, len)?;
            let usage = usage_of(&da);
            let mut done = 0u64;
            while done < len {
                let s = off_in + done;
                let d = off_out + done;
                // Copy up to the nearer chunk boundary of source and destination.
                let step = (len - done)
                    .min(CHUNK_SIZE - s % CHUNK_SIZE)
                    .min(CHUNK_SIZE - d % CHUNK_SIZE);
                let src_pos = (s % CHUNK_SIZE) as u32;
                let dst_pos = (d % CHUNK_SIZE) as u32;
                let records = match tx.get(&keys::chunk(src, (s / CHUNK_SIZE) as u32))? {
                    Some(v) => SliceRecord::decode_all(&v)?,
                    None => Vec::new(),
                };
                let dkey = keys::chunk(dst, (d / CHUNK_SIZE) as u32);
                let mut dv = tx.get(&dkey)?.unwrap_or_default();
                let before = stored_between(&dv, dst_pos, dst_pos + step as u32)?;
                let after = crate::slice::data_bytes(&records, src_pos, src_pos + step as u32);
                // Start with a hole so that holes of the source stay holes.
                SliceRecord::hole(dst_pos, step as u32).encode_into(&mut dv);
                for seg in crate::slice::visible_segments(&records) {
                    let (a0, a1) = (seg.pos.max(src_pos), seg.end().min(src_pos + step as u32));
                    if a0 >= a1 {
                        continue;
                    }
                    let mut r = seg.record;
                    r.off = seg.off + u64::from(a0 - seg.pos);
                    r.len = a1 - a0;
                    r.pos = dst_pos + (a0 - src_pos);
                    add_slice_ref(tx, &r)?;
                    r.encode_into(&mut dv);
                }
                restore(&mut da, before, after);
                tx.set(&dkey, &dv)?;
                done += step;
            }
            let end = off_out + len;
            if end > da.length {
                da.length = end;
            }
            account(usage_of(&da) - usage, 0);
            da.touch_mtime(now());
            put_attr(tx, dst, &da)?;
            Ok((da, len))
        })
    }

    // ---- open files and deferred deletion ------------------------------

    pub fn open_inode(&self, ino: Ino) {
        {
            let mut c = self.open_counts.lock();
            *c.entry(ino).or_insert(0) += 1;
        }
    }

    /// Forget one open handle; when the last handle of an inode that was
    /// unlinked meanwhile closes, the inode is removed. Returns true then.
    pub fn close_inode(&self, ino: Ino) -> Result<bool> {
        let last = {
            let mut c = self.open_counts.lock();
            let n = c.entry(ino).or_insert(1);
            *n -= 1;
            if *n == 0 {
                c.remove(&ino);
                true
            } else {
                false
            }
        };
        if !last {
            return Ok(false);
        }
        let was_sustained = self.sustained.lock().remove(&ino);
        if !was_sustained {
            return Ok(false);
        }
        let sid = self.sid.load(Ordering::Relaxed);
        self.txn(|tx| {
            tx.delete(&keys::sustained(sid, ino))?;
            match get_attr(tx, ino) {
                Ok(a) if a.nlink == 0 => {
                    self.remove_inode(tx, ino, &a)?;
                    Ok(true)
                }
                _ => Ok(false),
            }
        })
    }

    /// Files deleted whose data still awaits cleanup: (ino, length).
    pub fn pending_deletes(&self, limit: usize) -> Result<Vec<(Ino, u64)>> {
        let rows = self.read_txn(|tx| {
            tx.scan(
                keys::DELETED_PREFIX,
                &crate::kv::prefix_end(keys::DELETED_PREFIX),
                limit,
            )
        })?;
        Ok(rows
            .into_iter()
            .filter_map(|(k, _)| Some((keys::be_u64(&k, 1)?, keys::be_u64(&k, 9)?)))
            .collect())
    }

    /// Drop the chunk lists of a deleted file, [`CHUNKS_PER_TXN`] per
    /// transaction; returns slices to delete.
    pub fn cleanup_deleted(&self, ino: Ino, length: u64) -> Result<FreedSlices> {
        let prefix = keys::chunk_prefix(ino);
        let end = crate::kv::prefix_end(&prefix);
        let mut freed = Vec::new();
        loop {
            let (f, finished) = self.txn(|tx| {
                let mut freed = Vec::new();
                let rows = tx.scan(&prefix, &end, CHUNKS_PER_TXN)?;
                let finished = rows.len() < CHUNKS_PER_TXN;
                for (k, v) in rows {
                    for r in SliceRecord::decode_all(&v)? {
                        unref_slice(tx, &r, &mut freed)?;
                    }
                    tx.delete(&k)?;
                }
                if finished {
                    tx.delete(&keys::deleted(ino, length))?;
                }
                Ok((freed, finished))
            })?;
            freed.extend(f);
            if finished {
                return Ok(freed);
            }
        }
    }

    // ---- external objects (import) ------------------------------------

    /// Record an object of a bucket that slices of kind External point at.
    pub fn put_external(&self, obj: &ExternalObject) -> Result<u64> {
        self.writable()?;
        let id = self.new_slice_id()?;
        let raw = serde_json::to_vec(obj).map_err(|e| MetaError::Corrupt(e.to_string()))?;
        self.txn(|tx| tx.set(&keys::external(id), &raw))?;
        Ok(id)
    }

    /// Create `name` in `parent` as an imported file: its bytes are those of
    /// `obj`, read in place (no byte is copied), its times the object's
    /// `mtime` when known. Returns the new inode.
    pub fn import_file(
        &self,
        ctx: &Ctx,
        parent: Ino,
        name: &[u8],
        obj: &ExternalObject,
        mode: u32,
        mtime: Option<i64>,
    ) -> Result<Ino> {
        let id = self.put_external(obj)?;
        let (ino, _) = self.mknod(ctx, parent, name, FileType::File, mode, 0, None)?;
        let mut records = Vec::new();
        let mut off = 0u64;
        while off < obj.size {
            let n = (obj.size - off).min(CHUNK_SIZE);
            records.push((
                (off / CHUNK_SIZE) as u32,
                SliceRecord {
                    kind: crate::SliceKind::External,
                    pos: 0,
                    id,
                    size: obj.size,
                    off,
                    len: n as u32,
                },
            ));
            off += n;
        }
        self.write_slices(ino, &records, obj.size)?;
        if let Some(t) = mtime {
            // The object's last change is the file's.
            let when = Some(Some((t, 0)));
            self.setattr(
                ino,
                &SetAttr {
                    atime: when,
                    mtime: when,
                    ..Default::default()
                },
            )?;
        }
        Ok(ino)
    }

    /// The imported object a file reads from, if it is an imported file
    /// (its first chunk starts with an external slice).
    pub fn imported_object(&self, ino: Ino) -> Result<Option<(u64, ExternalObject)>> {
        let first = self.read_chunk(ino, 0)?;
        match first.first() {
            Some(r) if r.kind == crate::SliceKind::External => {
                Ok(Some((r.id, self.get_external(r.id)?)))
            }
            _ => Ok(None),
        }
    }

    pub fn get_external(&self, id: u64) -> Result<ExternalObject> {
        let raw = self
            .read_txn(|tx| tx.get(&keys::external(id)))?
            .ok_or(MetaError::NotFound)?;
        serde_json::from_slice(&raw)
            .map_err(|e| MetaError::Corrupt(format!("external object {id}: {e}")))
    }

    // ---- extended attributes ------------------------------------------

    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        self.read_txn(|tx| {
            get_attr(tx, ino)?;
            tx.get(&keys::xattr(ino, name))?.ok_or(MetaError::NoData)
        })
    }

    /// `flags`: XATTR_CREATE (1) or XATTR_REPLACE (2).
    pub fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], flags: i32) -> Result<()> {
        self.writable()?;
        if name.is_empty() || name.len() > 255 {
            return Err(MetaError::Range);
        }
        if value.len() > 65536 {
            return Err(MetaError::TooBig);
        }
        self.txn(|tx| {
            let mut a = get_attr(tx, ino)?;
            let key = keys::xattr(ino, name);
            let exists = tx.get(&key)?.is_some();
            if flags & libc::XATTR_CREATE != 0 && exists {
                return Err(MetaError::Exists);
            }
            if flags & libc::XATTR_REPLACE != 0 && !exists {
                return Err(MetaError::NoData);
            }
            tx.set(&key, value)?;
            a.flags |= crate::attr::FLAG_XATTRS;
            a.touch_ctime(now());
            put_attr(tx, ino, &a)
        })
    }

    /// Set (`Some`) or remove (`None`) a POSIX ACL, keeping the mode in
    /// step: an access ACL sets the permission bits (and is not stored
    /// when it says no more than they do); a caller outside the file's
    /// group who is not root loses the setgid bit, as on a local file
    /// system. Removing an ACL that is not there succeeds.
    pub fn set_acl(
        &self,
        ctx: &Ctx,
        ino: Ino,
        kind: acl::Kind,
        value: Option<&[u8]>,
    ) -> Result<Attr> {
        self.writable()?;
        let parsed = value.map(acl::Acl::decode).transpose()?;
        if kind == acl::Kind::Access && parsed.as_ref().is_some_and(|a| a.is_empty()) {
            return Err(MetaError::Invalid("an access ACL with no entries".into()));
        }
        // An empty default ACL is how setfacl -k may say "remove".
        let parsed = parsed.filter(|a| !a.is_empty());
        self.txn(|tx| {
            let mut a = get_attr(tx, ino)?;
            let keep = match (&parsed, kind) {
                (Some(_), acl::Kind::Default) if a.typ != FileType::Dir => {
                    return Err(MetaError::Access);
                }
                (Some(acl), acl::Kind::Access) => {
                    a.mode = (a.mode & !0o777) | acl.mode_bits();
                    if ctx.uid != 0 && ctx.gid != a.gid {
                        a.mode &= !0o2000;
                    }
                    (!acl.is_minimal()).then_some(acl)
                }
                (keep, _) => keep.as_ref(),
            };
            let key = keys::xattr(ino, kind.name());
            let flag = match kind {
                acl::Kind::Access => crate::attr::FLAG_ACL_ACCESS,
                acl::Kind::Default => crate::attr::FLAG_ACL_DEFAULT,
            };
            match keep {
                Some(acl) => {
                    tx.set(&key, &acl.encode())?;
                    a.flags |= crate::attr::FLAG_XATTRS | flag;
                }
                None => {
                    tx.delete(&key)?;
                    a.flags &= !flag;
                }
            }
            a.touch_ctime(now());
            put_attr(tx, ino, &a)?;
            Ok(a)
        })
    }

    pub fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        self.read_txn(|tx| {
            get_attr(tx, ino)?;
            let p = keys::xattr_prefix(ino);
            Ok(scan_prefix(tx, &p)?
                .into_iter()
                .map(|(k, _)| k[p.len()..].to_vec())
                .collect())
        })
    }

    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        self.writable()?;
        self.txn(|tx| {
            let mut a = get_attr(tx, ino)?;
            let key = keys::xattr(ino, name);
            if tx.get(&key)?.is_none() {
                return Err(MetaError::NoData);
            }
            tx.delete(&key)?;
            a.touch_ctime(now());
            put_attr(tx, ino, &a)
        })
    }

    // ---- usage ----------------------------------------------------------

    pub fn statfs(&self) -> Result<StatFs> {
        let format = self.format()?;
        let (used, inodes) = self.read_txn(|tx| {
            Ok((
                get_counter(tx, "usedSpace")?,
                get_counter(tx, "totalInodes")?,
            ))
        })?;
        let used = (used + self.pending_space.load(Ordering::Relaxed)).max(0) as u64;
        let inodes = (inodes + self.pending_inodes.load(Ordering::Relaxed)).max(0) as u64;
        let total = if format.capacity > 0 {
            format.capacity
        } else {
            (1u64 << 50).max(used * 2)
        };
        let total_inodes = if format.inodes > 0 {
            format.inodes
        } else {
            (10u64 << 20).max(inodes * 2)
        };
        Ok(StatFs {
            total_space: total,
            avail_space: total.saturating_sub(used),
            used_inodes: inodes,
            avail_inodes: total_inodes.saturating_sub(inodes),
        })
    }

    /// Every chunk key of a file with its records, for `tessera info`.
    pub fn chunks_of(&self, ino: Ino) -> Result<Vec<(u32, Vec<SliceRecord>)>> {
        self.read_txn(|tx| {
            let p = keys::chunk_prefix(ino);
            let mut out = Vec::new();
            for (k, v) in scan_prefix(tx, &p)? {
                let idx = k
                    .get(p.len()..p.len() + 4)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_be_bytes)
                    .unwrap_or(0);
                out.push((idx, SliceRecord::decode_all(&v)?));
            }
            Ok(out)
        })
    }

    /// Resolve a path relative to the root (for `--subdir` and the CLI).
    pub fn resolve(&self, path: &str) -> Result<(Ino, Attr)> {
        let mut ino = ROOT_INO;
        let mut attr = self.getattr(ino)?;
        for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            (ino, attr) = self.lookup(ino, part.as_bytes())?;
        }
        Ok((ino, attr))
    }
}
