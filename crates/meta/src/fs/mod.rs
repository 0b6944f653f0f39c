//! Every file-system operation on metadata, written once over [`KvEngine`].
//!
//! Each operation is one transaction: it reads what it needs, checks the
//! POSIX rules the kernel leaves to the file system, and writes the new
//! state. Data objects are never touched here; operations that free slices
//! return them so the chunk layer can delete their blocks.
//!
//! This file holds the types, the encoding helpers and the volume's
//! lifecycle (format, load, id batches); the operations are in
//! `namespace`, `data` (chunks and slices), `open` (open files and
//! deferred deletion), `external` (imported objects), `xattr` and `usage`.

mod clone;
mod data;
mod external;
mod namespace;
mod open;
mod quota;
mod rmr;
mod trash;
mod usage;
mod xattr;

pub use clone::CloneReport;
pub use quota::{Quota, QuotaCheck};
pub use rmr::RemoveReport;
pub use trash::{TRASH_INO, TRASH_NAME};

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use crate::acl;
use crate::attr::{Attr, FileType};
use crate::keys;
use crate::kv::{run_txn, scan_prefix, KvEngine, KvTxn, Nested, NestedRead};
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

/// A directory read whole for a mount that trusts what it saw: see
/// [`Meta::readdir_with_records`].
#[derive(Debug, Clone)]
pub struct DirWithRecords {
    pub attr: Attr,
    /// False when the directory had more entries than asked for: then
    /// `entries` is empty.
    pub complete: bool,
    /// Entries; each carries its attributes unless it went away between
    /// the reads.
    pub entries: Vec<Entry>,
    /// The slice records of every chunk of regular files, by their place
    /// in `entries`.
    pub records: Vec<(usize, Vec<Vec<SliceRecord>>)>,
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

/// A directory imported lazily (`tessera import --lazy`): mounts list
/// each of its directories from the bucket the first time it is looked
/// up or read, and again once `relist_secs` have passed.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LazyImport {
    /// Where the objects are, as the files' [`ExternalObject`]s name it:
    /// source URL, endpoint, region, and keys only if asked to store them.
    pub origin: ExternalObject,
    /// Seconds a directory's listing is trusted before it is listed again.
    pub relist_secs: f64,
    /// `--include` / `--exclude` patterns on object keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Keep files whose object has gone from the bucket.
    #[serde(default)]
    pub keep_deleted: bool,
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
    /// Directory quotas as this process knows them.
    quotas: quota::Quotas,
}

/// The usage changes one transaction attempt counted: the volume's totals,
/// and per directory the changes of its direct entries (for quotas).
#[derive(Default)]
struct TxnUsage {
    space: i64,
    inodes: i64,
    dirs: Vec<(Ino, i64, i64)>,
}

thread_local! {
    /// Usage changes of the transaction attempt running on this thread;
    /// kept only if the attempt commits.
    static TXN_USAGE: std::cell::RefCell<TxnUsage> = std::cell::RefCell::new(TxnUsage::default());
    /// Transactions of [`Meta::txn`] running on this thread, the enclosing
    /// ones included.
    static TXN_DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Unsaved space changes this large are added to the volume's counters at
/// once, not at the next second: a file's data is mostly committed when it
/// is closed, and a process killed within the second after a large close
/// would leave the counters behind by all of it (400 MiB seen after a
/// `kill -9` right after `dd` closed its file). Costs one transaction per
/// 64 MiB committed at most.
const FLUSH_USAGE_AT: i64 = 64 << 20;

/// Count a change of used space and inodes of an entry of directory `dir`
/// in the running transaction. Every create or delete touching the two
/// volume-wide counters would make all of them conflict with each other
/// (and cost two reads each), so the changes are summed per process and
/// added by [`Meta::flush_usage`]; directory quotas take theirs from the
/// same record (see `quota`).
fn account(dir: Ino, space: i64, inodes: i64) {
    TXN_USAGE.with(|u| {
        let mut u = u.borrow_mut();
        u.space += space;
        u.inodes += inodes;
        u.dirs.push((dir, space, inodes));
    });
}

/// An entry with this usage moved from directory `from` to `to`: the
/// volume's totals stay, the directories' quotas see it go and come.
fn account_move(from: Ino, to: Ino, space: i64, inodes: i64) {
    if from == to {
        return;
    }
    TXN_USAGE.with(|u| {
        let mut u = u.borrow_mut();
        u.dirs.push((from, -space, -inodes));
        u.dirs.push((to, space, inodes));
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

/// The attributes of `parent` for a new entry `name` in it: a live
/// directory in which the name is free.
fn parent_for_new_entry(tx: &mut dyn KvTxn, parent: Ino, name: &[u8]) -> Result<Attr> {
    let [p, d] = get_n(tx, [&keys::attr(parent), &keys::dentry(parent, name)])?;
    let p = decode_attr(p)?;
    if p.typ != FileType::Dir {
        return Err(MetaError::NotDir);
    }
    if p.nlink == 0 {
        return Err(MetaError::NotFound);
    }
    if decode_dentry(d)?.is_some() {
        return Err(MetaError::Exists);
    }
    Ok(p)
}

/// A name a new entry may take in `parent`: `/.trash` belongs to the trash.
fn check_new_name(parent: Ino, name: &[u8]) -> Result<()> {
    check_name(name)?;
    if parent == ROOT_INO && name == trash::TRASH_NAME {
        return Err(MetaError::Exists);
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
            quotas: quota::Quotas::default(),
        }
    }

    pub fn engine(&self) -> &dyn KvEngine {
        &*self.engine
    }

    /// Another handle on the same engine that may write, for work that is
    /// not the mount's user's to refuse: a read-only mount still lists
    /// lazily imported directories. It keeps its own usage counters
    /// (`flush_usage` them).
    pub fn writable_twin(&self) -> Result<Meta> {
        let twin = Meta::new(self.engine.clone(), MetaConfig { read_only: false });
        twin.load()?;
        Ok(twin)
    }

    pub(crate) fn txn<T>(&self, mut f: impl FnMut(&mut dyn KvTxn) -> Result<T>) -> Result<T> {
        // Set aside what an enclosing transaction on this thread counted.
        let outer = TXN_USAGE.with(|u| std::mem::take(&mut *u.borrow_mut()));
        TXN_DEPTH.with(|d| d.set(d.get() + 1));
        let out = run_txn(&*self.engine, false, |tx| {
            TXN_USAGE.with(|u| *u.borrow_mut() = TxnUsage::default());
            f(tx)
        });
        let depth = TXN_DEPTH.with(|d| {
            d.set(d.get() - 1);
            d.get()
        });
        let counted = TXN_USAGE.with(|u| std::mem::replace(&mut *u.borrow_mut(), outer));
        if out.is_ok() {
            let space = self
                .pending_space
                .fetch_add(counted.space, Ordering::Relaxed)
                + counted.space;
            self.pending_inodes
                .fetch_add(counted.inodes, Ordering::Relaxed);
            self.quotas.record(&counted.dirs);
            // Not from inside an enclosing transaction: on an engine with
            // one writer at a time it would wait for itself. A failure
            // keeps the changes for the next try.
            if depth == 0 && space.abs() >= FLUSH_USAGE_AT && !self.config.read_only {
                let _ = self.flush_usage();
            }
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
    /// call it every second and at unmount, and a transaction that leaves
    /// 64 MiB or more unsaved calls it at once; a process killed in between
    /// loses at most that second's accounting, less than 64 MiB of space
    /// (the data is not affected; `fsck --repair` recounts).
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

    /// Whether this handle refuses changes (a read-only mount).
    pub fn is_read_only(&self) -> bool {
        self.config.read_only
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
                // The stored key (passphrase-protected) may be added or
                // replaced by a format with the same key; the secret stays.
                if let (Some(m), Some(f)) = (merged.encryption.as_mut(), format.encryption.as_ref())
                {
                    if f.key_pem.is_some() {
                        m.key_pem = f.key_pem.clone();
                    }
                }
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

    /// Change the settings that may change after format (`tessera config`):
    /// `change` edits a copy, which must stay compatible with the stored one
    /// (same name, UUID, block size, compression, layout). One transaction;
    /// returns the settings before and after.
    pub fn update_format(
        &self,
        mut change: impl FnMut(&mut Format) -> Result<()>,
    ) -> Result<(Format, Format)> {
        let changed = self.txn(|tx| {
            let raw = tx.get(keys::SETTING)?.ok_or(MetaError::NotFormatted)?;
            let old: Format = serde_json::from_slice(&raw)
                .map_err(|e| MetaError::Corrupt(format!("volume settings: {e}")))?;
            let mut new = old.clone();
            change(&mut new)?;
            let fixed = (&new.name, &new.uuid, new.block_size, new.compression, new.version);
            if fixed != (&old.name, &old.uuid, old.block_size, old.compression, old.version)
                || new.encryption != old.encryption
            {
                return Err(MetaError::Format(
                    "the name, UUID, block size, compression, encryption and layout of a volume are fixed at format"
                        .into(),
                ));
            }
            if old.acl && !new.acl {
                return Err(MetaError::Format(
                    "POSIX ACLs cannot be turned off once on: that would widen access to every file an ACL narrows"
                        .into(),
                ));
            }
            let raw = serde_json::to_vec(&new).map_err(|e| MetaError::Corrupt(e.to_string()))?;
            tx.set(keys::SETTING, &raw)?;
            Ok((old, new))
        })?;
        self.load()?;
        Ok(changed)
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
}
