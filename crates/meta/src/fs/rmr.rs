//! Removing a whole tree in the engine (`tessera rmr`): entries are
//! unlinked depth first by the mount, with no kernel round trip per file.
//! Each removal is the ordinary unlink or rmdir transaction, so open
//! files, hard links and the deletion queue behave as for `rm -r`.

use super::clone::may;
use super::*;

/// What a tree removal removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemoveReport {
    pub files: u64,
    pub dirs: u64,
}

impl Meta {
    /// Delete every key of the volume (`tessera destroy`), a thousand per
    /// transaction, the settings last: an interrupted run leaves a volume
    /// that still loads, so it can be run again. Only this volume's keys
    /// go, whatever else shares the engine's database. Returns the count.
    pub fn destroy_metadata(&self) -> Result<u64> {
        const BATCH: usize = 1000;
        let mut removed = 0u64;
        loop {
            let n = self.txn(|tx| {
                let rows = tx.scan(b"", &[0xff], BATCH + 1)?;
                let mut n = 0;
                for (k, _) in rows.iter().filter(|(k, _)| k != keys::SETTING).take(BATCH) {
                    tx.delete(k)?;
                    n += 1;
                }
                Ok(n)
            })?;
            removed += n as u64;
            if n == 0 {
                break;
            }
        }
        self.txn(|tx| tx.delete(keys::SETTING))?;
        Ok(removed + 1)
    }

    /// Whether `ctx` may remove entries from directory `dir`: write and
    /// search on it. Returns, for the sticky-bit rule, the owner an entry
    /// must have unless the caller owns the directory (None: any entry).
    fn may_remove_from(&self, ctx: &Ctx, dir: Ino) -> Result<Option<u32>> {
        self.read_txn(|tx| {
            let d = get_attr(tx, dir)?;
            if !may(tx, ctx, dir, &d, 2 | 1)? {
                return Err(MetaError::Access);
            }
            let sticky = ctx.uid != 0 && d.mode & 0o1000 != 0 && ctx.uid != d.uid;
            Ok(sticky.then_some(ctx.uid))
        })
    }

    /// Remove `name` in `parent` with everything under it, as `ctx`.
    /// Stops at the first entry it may not remove, leaving the rest.
    pub fn remove_tree(&self, ctx: &Ctx, parent: Ino, name: &[u8]) -> Result<RemoveReport> {
        self.writable()?;
        let (top, top_attr) = self.lookup(parent, name)?;
        let mut report = RemoveReport::default();
        let denied = |only_owner: Option<u32>, uid: u32| only_owner.is_some_and(|o| o != uid);
        if denied(self.may_remove_from(ctx, parent)?, top_attr.uid) {
            return Err(MetaError::Perm);
        }
        // Depth first: a directory is removed once its entries are. The
        // entries' types and owners come with the listing.
        let mut stack = vec![(parent, name.to_vec(), top, top_attr.typ, false)];
        while let Some((p, n, ino, typ, expanded)) = stack.pop() {
            if typ == FileType::Dir && !expanded {
                stack.push((p, n, ino, typ, true));
                let only_owner = self.may_remove_from(ctx, ino)?;
                for e in self.readdir(ino, true)? {
                    if e.name == b"." || e.name == b".." {
                        continue;
                    }
                    let uid = match e.attr {
                        Some(a) => a.uid,
                        None => self.getattr(e.ino)?.uid,
                    };
                    if denied(only_owner, uid) {
                        return Err(MetaError::Perm);
                    }
                    stack.push((ino, e.name.clone(), e.ino, e.typ, false));
                }
                continue;
            }
            if typ == FileType::Dir {
                self.rmdir(p, &n)?;
                report.dirs += 1;
            } else {
                self.unlink(p, &n)?;
                report.files += 1;
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engines::MemoryEngine;

    const ROOT: Ctx = Ctx {
        uid: 0,
        gid: 0,
        pid: 1,
        umask: 0,
    };

    fn volume() -> Meta {
        let m = Meta::new(Arc::new(MemoryEngine::default()), MetaConfig::default());
        m.init(&crate::conformance::test_format()).unwrap();
        m
    }

    fn mk(m: &Meta, ctx: &Ctx, parent: Ino, name: &str, typ: FileType, mode: u32) -> Ino {
        m.mknod(ctx, parent, name.as_bytes(), typ, mode, 0, None)
            .unwrap()
            .0
    }

    #[test]
    fn a_tree_goes_depth_first_and_usage_follows() {
        let m = volume();
        let top = mk(&m, &ROOT, ROOT_INO, "data", FileType::Dir, 0o755);
        for d in 0..3 {
            let dir = mk(&m, &ROOT, top, &format!("d{d}"), FileType::Dir, 0o755);
            for f in 0..10 {
                mk(&m, &ROOT, dir, &format!("f{f}"), FileType::File, 0o644);
            }
        }
        let before = m.statfs().unwrap().used_inodes;
        let r = m.remove_tree(&ROOT, ROOT_INO, b"data").unwrap();
        assert_eq!((r.files, r.dirs), (30, 4));
        assert!(matches!(
            m.lookup(ROOT_INO, b"data"),
            Err(MetaError::NotFound)
        ));
        m.flush_usage().unwrap();
        assert_eq!(before - m.statfs().unwrap().used_inodes, 34);
        assert!(matches!(
            m.remove_tree(&ROOT, ROOT_INO, b"data"),
            Err(MetaError::NotFound)
        ));
    }

    #[test]
    fn destroying_the_metadata_leaves_no_key() {
        let m = volume();
        let top = mk(&m, &ROOT, ROOT_INO, "d", FileType::Dir, 0o755);
        for f in 0..2500 {
            mk(&m, &ROOT, top, &format!("f{f}"), FileType::File, 0o644);
        }
        assert!(m.destroy_metadata().unwrap() > 5000);
        assert!(matches!(m.load(), Err(MetaError::NotFormatted)));
        let left = m.read_txn(|tx| tx.scan(b"", &[0xff], 10)).unwrap();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_user_removes_only_what_unix_lets_them() {
        let m = volume();
        let alice = Ctx {
            uid: 1000,
            gid: 1000,
            pid: 2,
            umask: 0o022,
        };
        // A directory alice cannot write into stops the removal there.
        let top = mk(&m, &alice, ROOT_INO, "alice", FileType::Dir, 0o755);
        mk(&m, &alice, top, "mine", FileType::File, 0o644);
        let locked = mk(&m, &ROOT, top, "roots", FileType::Dir, 0o755);
        mk(&m, &ROOT, locked, "secret", FileType::File, 0o600);
        assert!(matches!(
            m.remove_tree(&alice, ROOT_INO, b"alice"),
            Err(MetaError::Access)
        ));
        assert!(
            m.lookup(locked, b"secret").is_ok(),
            "nothing under roots/ went"
        );
        // In a sticky directory, another user's entry is not hers to remove.
        let tmp = mk(&m, &ROOT, ROOT_INO, "tmp", FileType::Dir, 0o1777);
        mk(&m, &ROOT, tmp, "other", FileType::File, 0o666);
        assert!(matches!(
            m.remove_tree(&alice, tmp, b"other"),
            Err(MetaError::Perm)
        ));
        mk(&m, &alice, tmp, "hers", FileType::File, 0o644);
        assert_eq!(m.remove_tree(&alice, tmp, b"hers").unwrap().files, 1);
    }
}
