//! The trash (`format --trash-days N`, N > 0): a file whose last name is
//! removed (unlink, or a rename over it) is moved, not deleted, into
//! `/.trash/{YYYY-MM-DD-HH}/{parent}-{ino}-{name}` for the hour it went,
//! keeping its owner, mode and data. `.trash` is looked up by name from the
//! root but not listed there, so `tar`, `rsync` and `du` of a volume do not
//! see it. The trash and its hour directories have fixed inode numbers
//! (the hour's number follows from its time) and mode 0555: nobody writes
//! into them through the kernel; `tessera restore` puts a file back where
//! it was (its owner or root), and mounts purge hours older than the trash
//! days, one mount at a time per volume.

use super::*;

/// The trash directory's inode, and its name under the root.
pub const TRASH_INO: Ino = 0x7FFF_FFFE_0000_0000;
pub const TRASH_NAME: &[u8] = b".trash";
/// Hour directories: `TRASH_INO + 1 + hours since the epoch`.
const HOURS: u64 = 1 << 31;

/// The key of the purge claim (one mount purges at a time).
const PURGE_KEY: &[u8] = b"trashpurge";
/// Slices freed by truncate, punch-hole or compaction while the volume
/// keeps a trash: `T` + hour (u64 BE) + slice id + size, no value. Their
/// blocks stay until the hour is purged.
const DELAYED_PREFIX: &[u8] = b"T";

fn delayed_key(hour: i64, id: u64, size: u64) -> Vec<u8> {
    let mut k = DELAYED_PREFIX.to_vec();
    k.extend_from_slice(&(hour.max(0) as u64).to_be_bytes());
    k.extend_from_slice(&id.to_be_bytes());
    k.extend_from_slice(&size.to_be_bytes());
    k
}

/// Whether `ino` is the trash or one of its hour directories.
pub(crate) fn in_trash(ino: Ino) -> bool {
    (TRASH_INO..=TRASH_INO + HOURS).contains(&ino)
}

fn hour_ino(hour: i64) -> Ino {
    TRASH_INO + 1 + hour.max(0) as u64
}

/// `YYYY-MM-DD-HH` of an hour since the epoch.
fn hour_name(hour: i64) -> String {
    let s = crate::backup::utc_stamp(hour * 3600);
    format!("{}-{}-{}-{}", &s[..4], &s[4..6], &s[6..8], &s[9..11])
}

/// The hour an hour directory's name stands for.
fn parse_hour_name(name: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(name).ok()?;
    let stamp = format!(
        "{}{}{}-{}0000",
        s.get(..4)?,
        s.get(5..7)?,
        s.get(8..10)?,
        s.get(11..13)?
    );
    Some(crate::backup::parse_utc_stamp(&stamp)? / 3600)
}

/// `{parent}-{ino}-{name}`, the name cut to fit 255 bytes.
fn trash_entry_name(parent: Ino, ino: Ino, name: &[u8]) -> Vec<u8> {
    let mut n = format!("{parent}-{ino}-").into_bytes();
    let room = MAX_NAME_LEN.saturating_sub(n.len());
    n.extend_from_slice(&name[..name.len().min(room)]);
    n
}

/// The parent and name a trash entry came from.
fn parse_entry_name(n: &[u8]) -> Option<(Ino, Vec<u8>)> {
    let mut parts = n.splitn(3, |&b| b == b'-');
    let number = |p: &[u8]| std::str::from_utf8(p).ok()?.parse::<Ino>().ok();
    let parent = number(parts.next()?)?;
    number(parts.next()?)?;
    let name = parts.next()?.to_vec();
    (!name.is_empty()).then_some((parent, name))
}

/// Make directory `ino` named `name` in `parent` unless it exists.
fn ensure_dir(tx: &mut dyn KvTxn, parent: Ino, name: &[u8], ino: Ino, t: (i64, u32)) -> Result<()> {
    if tx.get(&keys::attr(ino))?.is_some() {
        return Ok(());
    }
    let mut a = Attr::new(FileType::Dir, 0o555, 0, 0, t);
    a.nlink = 2;
    a.length = 4096;
    a.parent = parent;
    put_attr(tx, ino, &a)?;
    account(parent, usage_of(&a), 1);
    if parent != ino {
        put_dentry(tx, parent, name, ino, FileType::Dir)?;
        let mut p = get_attr(tx, parent)?;
        p.nlink += 1;
        p.touch_mtime(t);
        put_attr(tx, parent, &p)?;
    }
    Ok(())
}

impl Meta {
    pub(crate) fn trash_days(&self) -> u32 {
        // Every unlink asks: read the field, do not clone the settings.
        self.format.lock().as_ref().map_or(0, |f| f.trash_days)
    }

    /// Give file `ino` (its last name `name` in `parent` just removed) a
    /// name in this hour's trash directory instead of deleting it.
    pub(crate) fn move_to_trash(
        &self,
        tx: &mut dyn KvTxn,
        parent: Ino,
        name: &[u8],
        ino: Ino,
        a: &mut Attr,
        t: (i64, u32),
    ) -> Result<()> {
        // The trash's own parent is the root, though no entry names it there.
        if tx.get(&keys::attr(TRASH_INO))?.is_none() {
            ensure_dir(tx, TRASH_INO, TRASH_NAME, TRASH_INO, t)?;
            let mut root = get_attr(tx, TRASH_INO)?;
            root.parent = ROOT_INO;
            put_attr(tx, TRASH_INO, &root)?;
        }
        let hour = t.0.div_euclid(3600);
        let dir = hour_ino(hour);
        ensure_dir(tx, TRASH_INO, hour_name(hour).as_bytes(), dir, t)?;
        let entry = trash_entry_name(parent, ino, name);
        a.nlink = 1;
        account_move(a.parent, dir, usage_of(a), 1);
        a.parent = dir;
        put_attr(tx, ino, a)?;
        put_dentry(tx, dir, &entry, ino, FileType::File)
    }

    /// Put a trashed file back under its old name in its old directory, as
    /// `ctx` (its owner, or root); returns that directory and name. Fails
    /// when the directory is gone or the name is taken there.
    pub fn restore(&self, ctx: &Ctx, hour_dir: Ino, entry: &[u8]) -> Result<(Ino, Vec<u8>)> {
        if !in_trash(hour_dir) || hour_dir == TRASH_INO {
            return Err(MetaError::Invalid(
                "restore takes entries of the trash's hour directories".into(),
            ));
        }
        let (parent, name) = parse_entry_name(entry)
            .ok_or_else(|| MetaError::Invalid("not a trash entry name".into()))?;
        let (_, a) = self.lookup(hour_dir, entry)?;
        if ctx.uid != 0 && ctx.uid != a.uid {
            return Err(MetaError::Perm);
        }
        self.rename(hour_dir, entry, parent, &name, libc::RENAME_NOREPLACE)?;
        Ok((parent, name))
    }

    /// Delete the trash's hour directories whose hour began `keep` or more
    /// before `now`, with the files in them. Returns files and hours purged.
    pub fn purge_trash(&self, now: i64, keep: std::time::Duration) -> Result<(u64, u64)> {
        let hours = match self.readdir(TRASH_INO, false) {
            Ok(h) => h,
            Err(MetaError::NotFound) => return Ok((0, 0)),
            Err(e) => return Err(e),
        };
        let (mut files, mut purged) = (0, 0);
        for h in hours {
            let Some(hour) = parse_hour_name(&h.name) else {
                continue;
            };
            // As JuiceFS does, an hour counts from its start.
            if now - hour * 3600 < keep.as_secs() as i64 {
                continue;
            }
            for e in self.readdir(h.ino, false)? {
                self.unlink(h.ino, &e.name)?;
                files += 1;
            }
            self.rmdir(TRASH_INO, &h.name)?;
            purged += 1;
        }
        Ok((files, purged))
    }

    /// Keep freed slices (their blocks) for the trash days instead of
    /// deleting them now; false when the volume keeps no trash (the caller
    /// deletes them).
    pub fn delay_slices(&self, freed: &[(u64, u64)]) -> Result<bool> {
        if self.trash_days() == 0 || freed.is_empty() {
            return Ok(false);
        }
        let hour = now().0.div_euclid(3600);
        for batch in freed.chunks(1000) {
            self.txn(|tx| {
                for &(id, size) in batch {
                    tx.set(&delayed_key(hour, id, size), b"")?;
                }
                Ok(())
            })?;
        }
        Ok(true)
    }

    /// Delayed slices whose hour began `keep` or more before `now`, at most
    /// `limit`; hand them to the data path, then [`Meta::forget_delayed`].
    pub fn expired_delayed_slices(
        &self,
        now: i64,
        keep: std::time::Duration,
        limit: usize,
    ) -> Result<Vec<(i64, u64, u64)>> {
        let last_hour = (now - keep.as_secs() as i64).div_euclid(3600);
        let mut end = DELAYED_PREFIX.to_vec();
        end.extend_from_slice(&((last_hour + 1).max(0) as u64).to_be_bytes());
        let rows = self.read_txn(|tx| tx.scan(DELAYED_PREFIX, &end, limit))?;
        Ok(rows
            .iter()
            .filter_map(|(k, _)| {
                Some((
                    keys::be_u64(k, 1)? as i64,
                    keys::be_u64(k, 9)?,
                    keys::be_u64(k, 17)?,
                ))
            })
            .collect())
    }

    /// Every slice kept by the trash now (`gc` counts their blocks as used).
    pub fn delayed_slices(&self) -> Result<Vec<(u64, u64)>> {
        let rows = self.read_txn(|tx| scan_prefix(tx, DELAYED_PREFIX))?;
        Ok(rows
            .iter()
            .filter_map(|(k, _)| Some((keys::be_u64(k, 9)?, keys::be_u64(k, 17)?)))
            .collect())
    }

    /// Drop the records of delayed slices whose blocks are deleted.
    pub fn forget_delayed(&self, slices: &[(i64, u64, u64)]) -> Result<()> {
        for batch in slices.chunks(1000) {
            self.txn(|tx| {
                for &(hour, id, size) in batch {
                    tx.delete(&delayed_key(hour, id, size))?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Whether this session should purge now: none did in the last
    /// `every` seconds. One transaction on the purge key.
    pub fn claim_trash_purge(&self, every: i64) -> Result<bool> {
        self.txn(|tx| {
            let last = tx
                .get(PURGE_KEY)?
                .and_then(|v| v.try_into().ok())
                .map(i64::from_le_bytes)
                .unwrap_or(0);
            let t = now().0;
            if t - last < every {
                return Ok(false);
            }
            tx.set(PURGE_KEY, &t.to_le_bytes())?;
            Ok(true)
        })
    }
}
