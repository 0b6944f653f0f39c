//! Volume-wide questions: space and inodes (`df`, `status`), the chunk
//! lists of a file, and a path resolved from the root (`--subdir`).

use super::*;

impl Meta {
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

impl Meta {
    /// The path of directory (or single-link node) `ino` from the root,
    /// found by walking up its parents: one listing per level. For the
    /// CLI's reports, not for any request path.
    pub fn path_of(&self, ino: Ino) -> Result<String> {
        let mut parts: Vec<String> = Vec::new();
        let mut at = ino;
        for _ in 0..4096 {
            if at == ROOT_INO {
                break;
            }
            let parent = self.getattr(at)?.parent;
            let name = self
                .readdir(parent, false)?
                .into_iter()
                .find(|e| e.ino == at)
                .map(|e| String::from_utf8_lossy(&e.name).into_owned())
                .ok_or(MetaError::NotFound)?;
            parts.push(name);
            at = parent;
        }
        parts.reverse();
        Ok(format!("/{}", parts.join("/")))
    }
}
