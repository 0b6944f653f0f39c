//! Open files and deferred deletion: which inodes this session holds open,
//! so an unlinked file stays readable until its last close.

use super::*;

impl Meta {
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
}
