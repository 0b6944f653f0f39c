//! Directory quotas (`tessera quota`): limits on the bytes and inodes under
//! a directory, EDQUOT beyond them, `df` inside one showing it; and the
//! volume's own capacity and inode limit (ENOSPC beyond them).
//!
//! Keys: `Q` ino `L` holds the limits (capacity, inodes: u64 LE each, 0 for
//! none); `Q` ino `U` the usage (space, inodes: i64 LE each). A quota
//! counts every entry below its directory, not the directory itself, by the
//! volume's rule (a file its stored bytes in 4 KiB units, a directory 4 KiB,
//! a symlink its target); a file with several hard links counts under the
//! directory its `parent` names.
//!
//! No write makes a quota a hot key: each transaction records what changed
//! per directory (its direct entries); this process charges those changes
//! to the quota directories above them (walking a cache of directory
//! parents) and adds them to the stored usage once a second
//! ([`Meta::sync_quotas`]), reloading every quota in the same breath.
//! Checks are in memory. So a quota may be overshot by what other mounts
//! wrote within the last second and by data still in write buffers;
//! `tessera quota check --repair` recounts.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use super::*;

/// How long a cached directory parent is trusted: a directory renamed on
/// another mount is charged to its old place for at most this long.
const PARENT_TTL: Duration = Duration::from_secs(30);
/// Deepest directory tree a walk to the root follows.
const MAX_DEPTH: usize = 4096;

/// One directory's quota: limits (0: none) and usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Quota {
    pub capacity: u64,
    pub inodes: u64,
    pub used_space: i64,
    pub used_inodes: i64,
}

/// What `quota check` found for one quota.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QuotaCheck {
    pub ino: Ino,
    pub stored: Quota,
    /// Usage as counted now: (space, inodes).
    pub counted: (i64, i64),
    pub repaired: bool,
}

impl QuotaCheck {
    pub fn consistent(&self) -> bool {
        (self.stored.used_space, self.stored.used_inodes) == self.counted
    }
}

fn limit_key(ino: Ino) -> Vec<u8> {
    let mut k = vec![b'Q'];
    k.extend_from_slice(&ino.to_be_bytes());
    k.push(b'L');
    k
}

fn usage_key(ino: Ino) -> Vec<u8> {
    let mut k = vec![b'Q'];
    k.extend_from_slice(&ino.to_be_bytes());
    k.push(b'U');
    k
}

const QUOTA_PREFIX: &[u8] = b"Q";

fn pair(v: &[u8]) -> Option<[u8; 16]> {
    v.try_into().ok()
}

fn encode_pair(a: u64, b: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&a.to_le_bytes());
    v[8..].copy_from_slice(&b.to_le_bytes());
    v
}

fn decode_limits(v: &[u8]) -> Result<(u64, u64)> {
    let v = pair(v).ok_or_else(|| MetaError::Corrupt("quota limits".into()))?;
    let (a, b) = v.split_at(8);
    Ok((
        u64::from_le_bytes(a.try_into().unwrap_or_default()),
        u64::from_le_bytes(b.try_into().unwrap_or_default()),
    ))
}

fn decode_usage(v: Option<&[u8]>) -> Result<(i64, i64)> {
    let Some(v) = v else { return Ok((0, 0)) };
    let (a, b) = decode_limits(v)?;
    Ok((a as i64, b as i64))
}

fn encode_usage((space, inodes): (i64, i64)) -> [u8; 16] {
    encode_pair(space as u64, inodes as u64)
}

/// Usage under a moved directory: the quotas it leaves, those it enters,
/// and (space, inodes).
pub(crate) type QuotaMove = (Vec<Ino>, Vec<Ino>, (i64, i64));

/// A quota as this process knows it.
#[derive(Debug, Clone, Copy, Default)]
struct Known {
    limits: (u64, u64),
    stored: (i64, i64),
    /// Charged here and not yet added to the stored usage.
    unflushed: (i64, i64),
}

impl Known {
    fn used(&self) -> (i64, i64) {
        (
            self.stored.0 + self.unflushed.0,
            self.stored.1 + self.unflushed.1,
        )
    }

    fn quota(&self) -> Quota {
        let (used_space, used_inodes) = self.used();
        Quota {
            capacity: self.limits.0,
            inodes: self.limits.1,
            used_space,
            used_inodes,
        }
    }

    /// Whether `space` more bytes and `inodes` more inodes stay within.
    fn admits(&self, space: i64, inodes: i64) -> bool {
        let (s, i) = self.used();
        let within = |limit: u64, used: i64, more: i64| {
            limit == 0 || more <= 0 || used.saturating_add(more) <= limit as i64
        };
        within(self.limits.0, s, space) && within(self.limits.1, i, inodes)
    }
}

/// The quota state of one process.
#[derive(Default)]
pub(crate) struct Quotas {
    /// Some quota exists (as of the last reload): only then is anything
    /// recorded or walked.
    active: AtomicBool,
    table: Mutex<HashMap<Ino, Known>>,
    /// Per directory: changes of its direct entries not yet charged.
    pending: Mutex<HashMap<Ino, (i64, i64)>>,
    /// Directory → (parent, when learnt).
    parents: Mutex<HashMap<Ino, (Ino, Instant)>>,
    /// The volume's stored usage counters at the last reload.
    volume: Mutex<Option<(i64, i64)>>,
}

impl Quotas {
    fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Keep a committed transaction's per-directory changes.
    pub(crate) fn record(&self, dirs: &[(Ino, i64, i64)]) {
        if dirs.is_empty() || !self.active() {
            return;
        }
        let mut pending = self.pending.lock();
        for &(dir, space, inodes) in dirs {
            let e = pending.entry(dir).or_default();
            e.0 += space;
            e.1 += inodes;
        }
    }

    /// Learn a directory's parent from attributes at hand.
    pub(crate) fn note_parent(&self, dir: Ino, parent: Ino) {
        if self.active() && dir != parent {
            self.parents.lock().insert(dir, (parent, Instant::now()));
        }
    }

    fn charge(&self, dirs: &[Ino], space: i64, inodes: i64) {
        let mut table = self.table.lock();
        for d in dirs {
            if let Some(k) = table.get_mut(d) {
                k.unflushed.0 += space;
                k.unflushed.1 += inodes;
            }
        }
    }
}

impl Meta {
    /// The parent of directory `dir`, from the cache or the engine; None
    /// at the root and in the trash (which no quota covers).
    fn dir_parent(&self, dir: Ino) -> Result<Option<Ino>> {
        if dir == ROOT_INO || dir == 0 || trash::in_trash(dir) {
            return Ok(None);
        }
        let cached = self.quotas.parents.lock().get(&dir).copied();
        if let Some((p, at)) = cached {
            if at.elapsed() < PARENT_TTL {
                return Ok(Some(p));
            }
        }
        match self.read_txn(|tx| get_attr(tx, dir)) {
            Ok(a) => {
                self.quotas
                    .parents
                    .lock()
                    .insert(dir, (a.parent, Instant::now()));
                Ok(Some(a.parent))
            }
            // A directory removed since: its last known place still says
            // where its entries were counted.
            Err(MetaError::NotFound) => Ok(cached.map(|(p, _)| p)),
            Err(e) => Err(e),
        }
    }

    /// The directories with a quota from `dir` up to the root, nearest
    /// first (`dir` itself included).
    fn quota_dirs(&self, dir: Ino) -> Result<Vec<Ino>> {
        let mut out = Vec::new();
        if !self.quotas.active() || trash::in_trash(dir) {
            return Ok(out);
        }
        let mut at = dir;
        for _ in 0..MAX_DEPTH {
            if self.quotas.table.lock().contains_key(&at) {
                out.push(at);
            }
            match self.dir_parent(at)? {
                Some(p) if p != at => at = p,
                _ => break,
            }
        }
        Ok(out)
    }

    /// Charge the recorded per-directory changes to the quotas above them.
    fn charge_pending(&self) -> Result<()> {
        let pending = std::mem::take(&mut *self.quotas.pending.lock());
        let mut left = pending.into_iter();
        while let Some((dir, (space, inodes))) = left.next() {
            match self.quota_dirs(dir) {
                Ok(dirs) => self.quotas.charge(&dirs, space, inodes),
                Err(e) => {
                    // Keep what is not charged yet for the next try.
                    let mut p = self.quotas.pending.lock();
                    for (d, (s, i)) in std::iter::once((dir, (space, inodes))).chain(left) {
                        let e = p.entry(d).or_default();
                        e.0 += s;
                        e.1 += i;
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// May an entry of directory `dir` grow by `space` bytes and `inodes`
    /// inodes? EDQUOT when a quota above it would be exceeded, ENOSPC when
    /// the volume's capacity or inode limit would. In memory, except for
    /// directory parents not yet cached.
    pub fn check_quota(&self, dir: Ino, space: i64, inodes: i64) -> Result<()> {
        if space <= 0 && inodes <= 0 {
            return Ok(());
        }
        let (capacity, max_inodes) = self
            .format
            .lock()
            .as_ref()
            .map_or((0, 0), |f| (f.capacity, f.inodes));
        if capacity > 0 || max_inodes > 0 {
            if let Some((s, i)) = *self.quotas.volume.lock() {
                let volume = Known {
                    limits: (capacity, max_inodes),
                    stored: (s, i),
                    unflushed: self.pending_usage(),
                };
                if !volume.admits(space, inodes) {
                    return Err(MetaError::NoSpace);
                }
            }
        }
        if !self.quotas.active() {
            return Ok(());
        }
        self.charge_pending()?;
        let dirs = self.quota_dirs(dir)?;
        let table = self.quotas.table.lock();
        for d in dirs {
            if let Some(k) = table.get(&d) {
                if !k.admits(space, inodes) {
                    return Err(MetaError::QuotaExceeded(d));
                }
            }
        }
        Ok(())
    }

    /// Add this process's charges to the stored usage of each quota and
    /// reload every quota (and the volume's counters, for the capacity
    /// check). Mounts call it every second and at unmount.
    pub fn sync_quotas(&self) -> Result<()> {
        if self.quotas.active() {
            self.charge_pending()?;
            let deltas: Vec<(Ino, (i64, i64))> = self
                .quotas
                .table
                .lock()
                .iter()
                .filter(|(_, k)| k.unflushed != (0, 0))
                .map(|(ino, k)| (*ino, k.unflushed))
                .collect();
            if !deltas.is_empty() {
                self.txn(|tx| {
                    for (ino, (space, inodes)) in &deltas {
                        let [limits, usage] = get_n(tx, [&limit_key(*ino), &usage_key(*ino)])?;
                        if limits.is_none() {
                            continue; // deleted meanwhile
                        }
                        let (s, i) = decode_usage(usage.as_deref())?;
                        tx.set(&usage_key(*ino), &encode_usage((s + space, i + inodes)))?;
                    }
                    Ok(())
                })?;
                let mut table = self.quotas.table.lock();
                for (ino, (space, inodes)) in deltas {
                    if let Some(k) = table.get_mut(&ino) {
                        k.unflushed = (k.unflushed.0 - space, k.unflushed.1 - inodes);
                        k.stored = (k.stored.0 + space, k.stored.1 + inodes);
                    }
                }
            }
        }
        self.reload_quotas()
    }

    fn reload_quotas(&self) -> Result<()> {
        let (rows, volume) = self.read_txn(|tx| {
            let rows = scan_prefix(tx, QUOTA_PREFIX)?;
            let volume = (
                get_counter(tx, "usedSpace")?,
                get_counter(tx, "totalInodes")?,
            );
            Ok((rows, volume))
        })?;
        let stored = decode_quota_rows(&rows)?;
        *self.quotas.volume.lock() = Some(volume);
        let mut table = self.quotas.table.lock();
        let fresh: HashMap<Ino, Known> = stored
            .into_iter()
            .map(|(ino, q)| {
                let unflushed = table.get(&ino).map_or((0, 0), |k| k.unflushed);
                let known = Known {
                    limits: (q.capacity, q.inodes),
                    stored: (q.used_space, q.used_inodes),
                    unflushed,
                };
                (ino, known)
            })
            .collect();
        let active = !fresh.is_empty();
        *table = fresh;
        drop(table);
        if !active && self.quotas.active() {
            self.quotas.pending.lock().clear();
            self.quotas.parents.lock().clear();
        }
        self.quotas.active.store(active, Ordering::Relaxed);
        Ok(())
    }

    /// Bytes and inodes under directory `dir` (not counting itself), by
    /// the quota rule; one read per directory.
    pub fn subtree_usage(&self, dir: Ino) -> Result<(i64, i64)> {
        let (mut space, mut inodes) = (0i64, 0i64);
        let mut todo = vec![dir];
        while let Some(d) = todo.pop() {
            for e in self.readdir(d, true)? {
                let Some(a) = e.attr else { continue };
                if a.typ == FileType::Dir {
                    todo.push(e.ino);
                } else if a.parent != d {
                    continue; // a hard link: counted where its parent is
                }
                space += usage_of(&a);
                inodes += 1;
            }
        }
        Ok((space, inodes))
    }

    fn quota_dir_attr(&self, ino: Ino) -> Result<Attr> {
        let a = self.getattr(ino)?;
        if a.typ != FileType::Dir {
            return Err(MetaError::Invalid(
                "quotas apply to directories, and this is not one".into(),
            ));
        }
        if trash::in_trash(ino) {
            return Err(MetaError::Invalid("the trash takes no quota".into()));
        }
        Ok(a)
    }

    /// Set (or change) the quota of directory `ino`; a limit left None
    /// keeps its value (0: none). A new quota starts from a count of what
    /// the directory holds now.
    pub fn set_quota(&self, ino: Ino, capacity: Option<u64>, inodes: Option<u64>) -> Result<Quota> {
        self.writable()?;
        self.quota_dir_attr(ino)?;
        let exists = self.read_txn(|tx| tx.get(&limit_key(ino)))?.is_some();
        let counted = if exists {
            None
        } else {
            Some(self.subtree_usage(ino)?)
        };
        self.txn(|tx| {
            let [limits, usage] = get_n(tx, [&limit_key(ino), &usage_key(ino)])?;
            let (c, i) = limits
                .as_deref()
                .map(decode_limits)
                .transpose()?
                .unwrap_or((0, 0));
            let limits = (capacity.unwrap_or(c), inodes.unwrap_or(i));
            tx.set(&limit_key(ino), &encode_pair(limits.0, limits.1))?;
            if usage.is_none() {
                tx.set(&usage_key(ino), &encode_usage(counted.unwrap_or((0, 0))))?;
            }
            Ok(())
        })?;
        self.sync_quotas()?;
        self.get_quota(ino)?
            .ok_or_else(|| MetaError::Engine("quota vanished while being set".into()))
    }

    /// The stored quota of directory `ino`, if it has one.
    pub fn get_quota(&self, ino: Ino) -> Result<Option<Quota>> {
        let [limits, usage] = self.read_txn(|tx| get_n(tx, [&limit_key(ino), &usage_key(ino)]))?;
        let Some(limits) = limits else {
            return Ok(None);
        };
        let (capacity, inodes) = decode_limits(&limits)?;
        let (used_space, used_inodes) = decode_usage(usage.as_deref())?;
        Ok(Some(Quota {
            capacity,
            inodes,
            used_space,
            used_inodes,
        }))
    }

    /// Every quota of the volume, by directory inode.
    pub fn list_quotas(&self) -> Result<Vec<(Ino, Quota)>> {
        let rows = self.read_txn(|tx| scan_prefix(tx, QUOTA_PREFIX))?;
        decode_quota_rows(&rows)
    }

    /// Remove the quota of directory `ino`; false when it had none.
    pub fn delete_quota(&self, ino: Ino) -> Result<bool> {
        self.writable()?;
        let had = self.txn(|tx| {
            let had = tx.get(&limit_key(ino))?.is_some();
            tx.delete(&limit_key(ino))?;
            tx.delete(&usage_key(ino))?;
            Ok(had)
        })?;
        self.sync_quotas()?;
        Ok(had)
    }

    /// Recount the usage of every quota (or of `only`); with `repair`, store
    /// the counts where they differ.
    pub fn check_quotas(&self, only: Option<Ino>, repair: bool) -> Result<Vec<QuotaCheck>> {
        // This process's own charges first, so that they are not taken for
        // a difference.
        self.sync_quotas()?;
        let quotas = match only {
            Some(ino) => {
                self.quota_dir_attr(ino)?;
                let q = self
                    .get_quota(ino)?
                    .ok_or_else(|| MetaError::Invalid("this directory has no quota".into()))?;
                vec![(ino, q)]
            }
            None => self.list_quotas()?,
        };
        let mut out = Vec::with_capacity(quotas.len());
        for (ino, stored) in quotas {
            let counted = self.subtree_usage(ino)?;
            let mut check = QuotaCheck {
                ino,
                stored,
                counted,
                repaired: false,
            };
            if repair && !check.consistent() {
                self.writable()?;
                self.txn(|tx| {
                    if tx.get(&limit_key(ino))?.is_some() {
                        tx.set(&usage_key(ino), &encode_usage(counted))?;
                    }
                    Ok(())
                })?;
                check.repaired = true;
            }
            out.push(check);
        }
        if repair {
            // What this process charged before the recount is in it now.
            for k in self.quotas.table.lock().values_mut() {
                k.unflushed = (0, 0);
            }
            self.reload_quotas()?;
        }
        Ok(out)
    }

    /// statfs as seen from `ino`: inside a directory with a quota, the
    /// nearest such quota's limits and usage (a limit of 0 falls back to
    /// the volume's figure).
    pub fn statfs_in(&self, ino: Ino) -> Result<StatFs> {
        let volume = self.statfs()?;
        if !self.quotas.active() {
            return Ok(volume);
        }
        let dir = match self.quotas.table.lock().contains_key(&ino) {
            true => ino,
            false => {
                let a = self.getattr(ino)?;
                if a.typ == FileType::Dir {
                    ino
                } else {
                    a.parent
                }
            }
        };
        self.charge_pending()?;
        let Some(nearest) = self.quota_dirs(dir)?.into_iter().next() else {
            return Ok(volume);
        };
        let Some(q) = self.quotas.table.lock().get(&nearest).map(Known::quota) else {
            return Ok(volume);
        };
        let used_space = q.used_space.max(0) as u64;
        let used_inodes = q.used_inodes.max(0) as u64;
        let mut s = volume;
        if q.capacity > 0 {
            s.total_space = q.capacity;
            s.avail_space = q.capacity.saturating_sub(used_space);
        }
        if q.inodes > 0 {
            s.used_inodes = used_inodes;
            s.avail_inodes = q.inodes.saturating_sub(used_inodes);
        }
        Ok(s)
    }

    /// Before a rename that moves an entry between directories under
    /// different quotas: the entry's usage and, for a directory, what is
    /// under it, checked against the quotas it enters. Returns the moves
    /// of subtree usage to make once the rename is done.
    pub(crate) fn plan_quota_move(&self, moves: &[(Ino, &[u8], Ino)]) -> Result<Vec<QuotaMove>> {
        let mut plans = Vec::new();
        if !self.quotas.active() {
            return Ok(plans);
        }
        self.charge_pending()?;
        for &(from_dir, name, to_dir) in moves {
            if from_dir == to_dir {
                continue;
            }
            let from = self.quota_dirs(from_dir)?;
            let to = self.quota_dirs(to_dir)?;
            if from == to {
                continue;
            }
            let (ino, a) = match self.lookup(from_dir, name) {
                Ok(found) => found,
                Err(MetaError::NotFound) => continue, // the rename says so
                Err(e) => return Err(e),
            };
            let under = if a.typ == FileType::Dir {
                self.subtree_usage(ino)?
            } else {
                (0, 0)
            };
            let entering: Vec<Ino> = to.iter().filter(|d| !from.contains(d)).copied().collect();
            let leaving: Vec<Ino> = from.iter().filter(|d| !to.contains(d)).copied().collect();
            {
                let table = self.quotas.table.lock();
                for d in &entering {
                    if let Some(k) = table.get(d) {
                        if !k.admits(under.0 + usage_of(&a), under.1 + 1) {
                            return Err(MetaError::QuotaExceeded(*d));
                        }
                    }
                }
            }
            if under != (0, 0) {
                plans.push((leaving, entering, under));
            }
        }
        Ok(plans)
    }

    /// Carry out what [`Meta::plan_quota_move`] planned.
    pub(crate) fn apply_quota_moves(&self, plans: Vec<QuotaMove>) {
        for (leaving, entering, (space, inodes)) in plans {
            self.quotas.charge(&leaving, -space, -inodes);
            self.quotas.charge(&entering, space, inodes);
        }
    }

    pub(crate) fn note_dir_parent(&self, dir: Ino, parent: Ino) {
        self.quotas.note_parent(dir, parent);
    }

    /// Whether any quota exists (as of the last reload).
    pub fn has_quotas(&self) -> bool {
        self.quotas.active()
    }

    /// Whether growth can be refused at all: some quota exists, or the
    /// volume has a capacity or inode limit. Callers that would need a
    /// round trip to ask [`Meta::check_quota`] ask this first.
    pub fn limits_apply(&self) -> bool {
        self.quotas.active()
            || self
                .format
                .lock()
                .as_ref()
                .is_some_and(|f| f.capacity > 0 || f.inodes > 0)
    }
}

fn decode_quota_rows(rows: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<(Ino, Quota)>> {
    let mut limits: Vec<(Ino, (u64, u64))> = Vec::new();
    let mut usage: HashMap<Ino, (i64, i64)> = HashMap::new();
    for (k, v) in rows {
        let (Some(ino), Some(kind)) = (keys::be_u64(k, 1), k.get(9)) else {
            continue;
        };
        match kind {
            b'L' => limits.push((ino, decode_limits(v)?)),
            b'U' => {
                usage.insert(ino, decode_usage(Some(v))?);
            }
            _ => {}
        }
    }
    Ok(limits
        .into_iter()
        .map(|(ino, (capacity, inodes))| {
            let (used_space, used_inodes) = usage.get(&ino).copied().unwrap_or((0, 0));
            (
                ino,
                Quota {
                    capacity,
                    inodes,
                    used_space,
                    used_inodes,
                },
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engines::MemoryEngine;

    fn volume() -> Meta {
        let m = Meta::new(Arc::new(MemoryEngine::default()), MetaConfig::default());
        m.init(&crate::conformance::test_format()).expect("format");
        m
    }

    fn ctx() -> Ctx {
        Ctx {
            uid: 0,
            gid: 0,
            pid: 1,
            umask: 0o022,
        }
    }

    fn mkdir(m: &Meta, parent: Ino, name: &str) -> Ino {
        m.mknod(
            &ctx(),
            parent,
            name.as_bytes(),
            FileType::Dir,
            0o755,
            0,
            None,
        )
        .expect("mkdir")
        .0
    }

    fn mkfile(m: &Meta, parent: Ino, name: &str, bytes: u64) -> Ino {
        m.check_quota(parent, 0, 1).expect("room for a file");
        let (ino, _) = m
            .mknod(
                &ctx(),
                parent,
                name.as_bytes(),
                FileType::File,
                0o644,
                0,
                None,
            )
            .expect("create");
        if bytes > 0 {
            let id = m.new_slice_id().expect("slice id");
            let rec = SliceRecord {
                kind: crate::SliceKind::Internal,
                pos: 0,
                id,
                size: bytes,
                off: 0,
                len: bytes as u32,
            };
            m.write_slices(ino, &[(0, rec)], bytes).expect("write");
        }
        ino
    }

    #[test]
    fn usage_is_charged_up_the_tree_and_limits_refuse_growth() {
        let m = volume();
        let team = mkdir(&m, ROOT_INO, "team");
        let sub = mkdir(&m, team, "sub");
        mkfile(&m, sub, "before", 10_000);
        let q = m.set_quota(team, Some(1 << 20), Some(10)).expect("set");
        // sub (4 KiB) and the file (10,000 bytes in 4 KiB units).
        assert_eq!((q.used_space, q.used_inodes), (4096 + 12288, 2));

        let f = mkfile(&m, sub, "after", 100_000);
        m.sync_quotas().expect("sync");
        let q = m.get_quota(team).expect("get").expect("quota");
        assert_eq!((q.used_space, q.used_inodes), (4096 + 12288 + 102400, 3));

        // Space: a write that would pass the capacity is refused.
        let err = m.check_quota(sub, 1 << 20, 0).expect_err("over capacity");
        assert!(
            matches!(err, MetaError::QuotaExceeded(d) if d == team),
            "{err:?}"
        );
        assert_eq!(err.errno(), libc::EDQUOT);
        m.check_quota(sub, 4096, 0).expect("within capacity");
        // Outside the quota nothing is limited.
        m.check_quota(ROOT_INO, 1 << 30, 100)
            .expect("no quota at the root");

        // Inodes: 7 more fit, the 8th does not.
        for i in 0..7 {
            mkfile(&m, sub, &format!("f{i}"), 0);
        }
        let err = m.check_quota(sub, 0, 1).expect_err("over the inode limit");
        assert_eq!(err.errno(), libc::EDQUOT);

        // Deleting gives the room back, and df inside shows the quota.
        m.unlink(sub, b"after").expect("unlink");
        let _ = f;
        m.check_quota(sub, 0, 1).expect("room again");
        let df = m.statfs_in(sub).expect("statfs");
        assert_eq!(df.total_space, 1 << 20);
        assert_eq!(df.used_inodes, 9);
        assert_eq!(df.avail_inodes, 1);
        assert!(m.statfs_in(ROOT_INO).expect("root").total_space > 1 << 20);

        let checks = m.check_quotas(None, false).expect("check");
        assert!(checks.iter().all(QuotaCheck::consistent), "{checks:?}");
    }

    #[test]
    fn a_directory_moved_between_quotas_takes_its_usage_along() {
        let m = volume();
        let a = mkdir(&m, ROOT_INO, "a");
        let b = mkdir(&m, ROOT_INO, "b");
        let d = mkdir(&m, a, "d");
        mkfile(&m, d, "x", 40_960);
        m.set_quota(a, None, None).expect("quota a");
        m.set_quota(b, Some(1 << 20), None).expect("quota b");
        m.rename(a, b"d", b, b"d", 0).expect("move");
        m.sync_quotas().expect("sync");
        let qa = m.get_quota(a).expect("a").expect("a");
        let qb = m.get_quota(b).expect("b").expect("b");
        assert_eq!((qa.used_space, qa.used_inodes), (0, 0));
        assert_eq!((qb.used_space, qb.used_inodes), (4096 + 40960, 2));

        // A move that would not fit is refused, and nothing moves.
        m.set_quota(a, Some(8192), None).expect("limit a");
        let err = m.rename(b, b"d", a, b"d", 0).expect_err("too big for a");
        assert_eq!(err.errno(), libc::EDQUOT);
        assert!(m.lookup(b, b"d").is_ok());
        let checks = m.check_quotas(None, false).expect("check");
        assert!(checks.iter().all(QuotaCheck::consistent), "{checks:?}");
    }

    #[test]
    fn check_repairs_a_wrong_count_and_bad_targets_are_refused() {
        let m = volume();
        let d = mkdir(&m, ROOT_INO, "d");
        let f = mkfile(&m, d, "f", 1);
        m.set_quota(d, None, Some(100)).expect("set");
        m.txn(|tx| tx.set(&usage_key(d), &encode_usage((7, 7))))
            .expect("spoil");
        let found = m.check_quotas(Some(d), false).expect("check");
        assert!(!found[0].consistent());
        assert!(!found[0].repaired);
        let fixed = m.check_quotas(Some(d), true).expect("repair");
        assert!(fixed[0].repaired);
        let q = m.get_quota(d).expect("get").expect("quota");
        assert_eq!((q.used_space, q.used_inodes), (4096, 1));

        let err = m.set_quota(f, Some(1), None).expect_err("a file");
        assert!(err.to_string().contains("not one"), "{err}");
        assert!(m.delete_quota(d).expect("delete"));
        assert!(!m.delete_quota(d).expect("again"));
        assert!(m.list_quotas().expect("list").is_empty());
        m.sync_quotas().expect("sync");
        assert!(!m.has_quotas());
    }

    #[test]
    fn the_volume_capacity_is_enforced() {
        let m = volume();
        m.update_format(|f| {
            f.capacity = 1 << 20;
            f.inodes = 5;
            Ok(())
        })
        .expect("limits");
        m.sync_quotas().expect("load counters");
        let err = m.check_quota(ROOT_INO, 2 << 20, 0).expect_err("too big");
        assert_eq!(err.errno(), libc::ENOSPC);
        for i in 0..5 {
            mkfile(&m, ROOT_INO, &format!("f{i}"), 0);
        }
        let err = m.check_quota(ROOT_INO, 0, 1).expect_err("no inodes left");
        assert_eq!(err.errno(), libc::ENOSPC);
    }
}
