//! `fsck` of the metadata: walk every inode, entry, chunk list and slice
//! reference once, compare what is recorded with what is there, and with
//! `repair` set the records straight.
//!
//! What is checked (and what repair does):
//! * every directory entry names an inode that exists, of the entry's type
//!   (an entry to nothing is removed; a wrong type is corrected);
//! * link counts: a directory has 2 + its subdirectories, anything else one
//!   link per entry naming it (set to what was counted);
//! * inodes no entry names: with links left, they are moved to
//!   `/lost+found` under their number; without links and held open by no
//!   live mount, they are removed as an unlink would have;
//! * chunk lists of inodes that are gone and awaiting no cleanup (handed to
//!   the cleaner);
//! * slice reference counts against the records that share each slice
//!   (set to what was counted);
//! * the bytes each file's chunks hold data for, against its `stored`
//!   attribute (set to what was counted);
//! * the volume's usage counters (space and inodes), which a crashed mount
//!   may have left short by what it had not yet added (recounted);
//! * the usage of each directory quota (recounted).
//!
//! The walk reads the engine in pages, outside writing transactions; run
//! `--repair` while no mount writes to the volume (a live mount's unsaved
//! usage would be added on top of the recount, and a file created during
//! the walk could be taken for an orphan).

use std::collections::{HashMap, HashSet};

use crate::attr::Attr;
use crate::fs::{get_attr, put_attr, stored_in, usage_of};
use crate::kv::prefix_end;
use crate::slice::{SliceKind, SliceRecord};
use crate::{keys, Ctx, FileType, Ino, Meta, MetaError, Result, ROOT_INO};

/// What [`Meta::fsck`] found, and what it repaired.
#[derive(Debug, Default)]
pub struct FsckReport {
    pub inodes: u64,
    pub files: u64,
    pub dirs: u64,
    /// Usage as recounted, and as the counters had it.
    pub space: i64,
    pub recorded_space: i64,
    pub inode_count: i64,
    pub recorded_inodes: i64,
    /// Every slice the chunk lists refer to: (id, size) → records.
    pub slices: HashMap<(u64, u64), u64>,
    /// What was wrong, one line each.
    pub problems: Vec<String>,
    /// How many of them were repaired.
    pub repaired: usize,
}

impl FsckReport {
    /// Problems left standing.
    pub fn unrepaired(&self) -> usize {
        self.problems.len() - self.repaired
    }
}

/// One inode's records as the walk found them.
#[derive(Default)]
struct Seen {
    attr: Option<Attr>,
    /// Entries naming it: (parent, name).
    named_by: Vec<(Ino, Vec<u8>)>,
    subdirs: u32,
    has_chunks: bool,
    /// Bytes its chunk lists hold data for.
    stored: u64,
}

const PAGE: usize = 10_000;

impl Meta {
    /// Every key under `prefix`, read in pages.
    fn scan_all(
        &self,
        prefix: &[u8],
        mut each: impl FnMut(&[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        let end = prefix_end(prefix);
        let mut from = prefix.to_vec();
        loop {
            let rows = self.read_txn(|tx| tx.scan(&from, &end, PAGE))?;
            for (k, v) in &rows {
                each(k, v)?;
            }
            match rows.last() {
                Some((k, _)) if rows.len() == PAGE => {
                    from = k.clone();
                    from.push(0);
                }
                _ => return Ok(()),
            }
        }
    }

    /// Check the volume's metadata; with `repair`, fix what is found.
    pub fn fsck(&self, repair: bool) -> Result<FsckReport> {
        if repair {
            self.writable()?;
        }
        let mut r = FsckReport::default();
        let mut seen: HashMap<Ino, Seen> = HashMap::new();
        let mut entries: Vec<(Ino, Vec<u8>, Ino, u8)> = Vec::new();
        self.scan_all(b"A", |k, v| {
            let ino = keys::be_u64(k, 1).ok_or_else(|| MetaError::Corrupt("inode key".into()))?;
            match k.get(9) {
                Some(b'I') => seen.entry(ino).or_default().attr = Some(Attr::decode(v)?),
                Some(b'D') if v.len() == 9 => {
                    let child = keys::be_u64(v, 0).unwrap_or(0);
                    entries.push((ino, k[10..].to_vec(), child, v[8]));
                }
                Some(b'D') => r
                    .problems
                    .push(format!("entry {:?} of {ino}: malformed", &k[10..])),
                Some(b'C') => {
                    let s = seen.entry(ino).or_default();
                    s.has_chunks = true;
                    s.stored += stored_in(v)?;
                    for rec in SliceRecord::decode_all(v)? {
                        if rec.kind == SliceKind::Internal && !rec.is_hole() {
                            *r.slices.entry((rec.id, rec.size)).or_insert(0) += 1;
                        }
                    }
                }
                _ => {}
            }
            Ok(())
        })?;
        for (parent, name, child, typ) in &entries {
            let found = seen.get(child).and_then(|s| s.attr.as_ref()).map(|a| a.typ);
            let shown = String::from_utf8_lossy(name);
            match found {
                None => {
                    r.problems.push(format!(
                        "entry {shown:?} in directory {parent} names inode {child}, which does not exist"
                    ));
                    if repair {
                        self.txn(|tx| tx.delete(&keys::dentry(*parent, name)))?;
                        r.repaired += 1;
                    }
                    continue;
                }
                Some(t) if t as u8 != *typ => {
                    r.problems.push(format!(
                        "entry {shown:?} in directory {parent} gives inode {child} the wrong type"
                    ));
                    if repair {
                        self.txn(|tx| {
                            let mut v = child.to_be_bytes().to_vec();
                            v.push(t as u8);
                            tx.set(&keys::dentry(*parent, name), &v)
                        })?;
                        r.repaired += 1;
                    }
                }
                Some(_) => {}
            }
            let s = seen.entry(*child).or_default();
            s.named_by.push((*parent, name.clone()));
            if found == Some(FileType::Dir) {
                seen.entry(*parent).or_default().subdirs += 1;
            }
        }
        let sustained = self.sustained_inodes()?;
        let pending: HashSet<Ino> = self
            .pending_deletes(usize::MAX)?
            .into_iter()
            .map(|(ino, _)| ino)
            .collect();
        let mut inos: Vec<Ino> = seen.keys().copied().collect();
        inos.sort_unstable();
        for ino in inos {
            let s = &seen[&ino];
            let Some(a) = s.attr else {
                if s.has_chunks && !pending.contains(&ino) {
                    r.problems.push(format!(
                        "inode {ino} is gone but its chunk lists are not awaiting cleanup"
                    ));
                    if repair {
                        self.txn(|tx| tx.set(&keys::deleted(ino, 0), b""))?;
                        r.repaired += 1;
                    }
                }
                continue;
            };
            r.inodes += 1;
            match a.typ {
                FileType::File => r.files += 1,
                FileType::Dir => r.dirs += 1,
                _ => {}
            }
            let want = if a.typ == FileType::Dir {
                2 + s.subdirs
            } else {
                s.named_by.len() as u32
            };
            // The root, and the trash (looked up by name, listed nowhere).
            if ino == ROOT_INO || ino == crate::TRASH_INO {
                if a.nlink != want {
                    self.fix_nlink(&mut r, repair, ino, a.nlink, want)?;
                }
                continue;
            }
            if s.named_by.is_empty() {
                if a.nlink == 0 && sustained.contains(&ino) {
                    continue; // unlinked, still open on a live mount
                }
                r.problems.push(format!(
                    "inode {ino} ({:?}, {} bytes, {} links) is in no directory",
                    a.typ, a.length, a.nlink
                ));
                if repair {
                    if a.nlink == 0 {
                        self.txn(|tx| {
                            let a = get_attr(tx, ino)?;
                            self.remove_inode(tx, ino, &a)
                        })?;
                    } else {
                        self.adopt(ino, &a)?;
                    }
                    r.repaired += 1;
                }
                continue;
            }
            if a.nlink != want {
                self.fix_nlink(&mut r, repair, ino, a.nlink, want)?;
            }
            if a.typ == FileType::File && a.stored != s.stored {
                r.problems.push(format!(
                    "file {ino} is recorded as storing {} bytes; its chunks hold {}",
                    a.stored, s.stored
                ));
                if repair {
                    let stored = s.stored;
                    self.txn(|tx| {
                        let mut a = get_attr(tx, ino)?;
                        a.stored = stored;
                        put_attr(tx, ino, &a)
                    })?;
                    r.repaired += 1;
                }
            }
        }
        self.check_slice_refs(&mut r, repair)?;
        // Usage last, after the repairs above (which count their own
        // changes): the counters are set to a fresh count and this
        // process's unsaved changes dropped, as they are in the count.
        let (space, inodes) = self.read_txn(|tx| {
            Ok((
                crate::fs::get_counter(tx, "usedSpace")?,
                crate::fs::get_counter(tx, "totalInodes")?,
            ))
        })?;
        let (pending_space, pending_inodes) = self.pending_usage();
        (r.space, r.inode_count) = self.count_usage()?;
        r.recorded_space = space + pending_space;
        r.recorded_inodes = inodes + pending_inodes;
        if (r.recorded_space, r.recorded_inodes) != (r.space, r.inode_count) {
            r.problems.push(format!(
                "usage counters say {} bytes in {} inodes; counted {} bytes in {} inodes",
                r.recorded_space, r.recorded_inodes, r.space, r.inode_count
            ));
            if repair {
                let (s, i) = (r.space, r.inode_count);
                self.txn(|tx| {
                    tx.set(&keys::counter("usedSpace"), &s.to_le_bytes())?;
                    tx.set(&keys::counter("totalInodes"), &i.to_le_bytes())
                })?;
                self.take_pending_usage();
                r.repaired += 1;
            }
        }
        for q in self.check_quotas(None, repair)? {
            if q.consistent() {
                continue;
            }
            r.problems.push(format!(
                "the quota of directory {} says {} bytes in {} inodes; counted {} bytes in {} inodes",
                q.ino, q.stored.used_space, q.stored.used_inodes, q.counted.0, q.counted.1
            ));
            if q.repaired {
                r.repaired += 1;
            }
        }
        Ok(r)
    }

    fn fix_nlink(
        &self,
        r: &mut FsckReport,
        repair: bool,
        ino: Ino,
        has: u32,
        want: u32,
    ) -> Result<()> {
        r.problems.push(format!(
            "inode {ino} has link count {has}; its entries make {want}"
        ));
        if repair {
            self.txn(|tx| {
                let mut a = get_attr(tx, ino)?;
                a.nlink = want;
                put_attr(tx, ino, &a)
            })?;
            r.repaired += 1;
        }
        Ok(())
    }

    /// Give an inode no directory names a name in `/lost+found`.
    fn adopt(&self, ino: Ino, a: &Attr) -> Result<()> {
        let lost = match self.lookup(ROOT_INO, b"lost+found") {
            Ok((i, _)) => i,
            Err(MetaError::NotFound) => {
                self.mknod(
                    &Ctx::ROOT,
                    ROOT_INO,
                    b"lost+found",
                    FileType::Dir,
                    0o700,
                    0,
                    None,
                )?
                .0
            }
            Err(e) => return Err(e),
        };
        let name = format!("#{ino}");
        self.txn(|tx| {
            let mut v = ino.to_be_bytes().to_vec();
            v.push(a.typ as u8);
            tx.set(&keys::dentry(lost, name.as_bytes()), &v)?;
            let mut me = get_attr(tx, ino)?;
            me.parent = lost;
            if me.typ == FileType::Dir {
                let mut l = get_attr(tx, lost)?;
                l.nlink += 1;
                put_attr(tx, lost, &l)?;
            } else {
                me.nlink = 1;
            }
            put_attr(tx, ino, &me)
        })
    }

    /// Space (what each inode stores, in 4 KiB units) and inodes, the root
    /// left out, as the usage counters keep them.
    fn count_usage(&self) -> Result<(i64, i64)> {
        let (mut space, mut inodes) = (0i64, 0i64);
        self.scan_all(b"A", |k, v| {
            if k.get(9) == Some(&b'I') && keys::be_u64(k, 1) != Some(ROOT_INO) {
                space += usage_of(&Attr::decode(v)?);
                inodes += 1;
            }
            Ok(())
        })?;
        Ok((space, inodes))
    }

    /// Inodes held open after unlink by the volume's sessions.
    fn sustained_inodes(&self) -> Result<HashSet<Ino>> {
        let mut out = HashSet::new();
        self.scan_all(b"SS", |k, _| {
            if let Some(ino) = keys::be_u64(k, 10) {
                out.insert(ino);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Compare each slice's extra-reference count with the records found.
    fn check_slice_refs(&self, r: &mut FsckReport, repair: bool) -> Result<()> {
        let mut recorded: HashMap<(u64, u64), i64> = HashMap::new();
        self.scan_all(b"K", |k, v| {
            let (Some(id), Some(size)) = (keys::be_u64(k, 1), keys::be_u64(k, 9)) else {
                return Err(MetaError::Corrupt("slice reference key".into()));
            };
            let n = v.try_into().map(i64::from_le_bytes).unwrap_or(0);
            recorded.insert((id, size), n);
            Ok(())
        })?;
        let mut all: HashSet<(u64, u64)> = recorded.keys().copied().collect();
        all.extend(r.slices.keys().copied());
        let mut all: Vec<_> = all.into_iter().collect();
        all.sort_unstable();
        for slice in all {
            let found = r.slices.get(&slice).copied().unwrap_or(0) as i64;
            let extra = recorded.get(&slice).copied().unwrap_or(0);
            let want = (found - 1).max(0);
            if extra == want {
                continue;
            }
            r.problems.push(format!(
                "slice {} ({} bytes) is shared by {found} records but counted as {}",
                slice.0,
                slice.1,
                extra + 1
            ));
            if repair {
                let key = keys::slice_refs(slice.0, slice.1);
                self.txn(|tx| {
                    if want == 0 {
                        tx.delete(&key)
                    } else {
                        tx.set(&key, &want.to_le_bytes())
                    }
                })?;
                r.repaired += 1;
            }
        }
        Ok(())
    }
}
