//! Objects imported from a bucket without copying (`tessera import`): their
//! records, and the files whose chunks point into them.

use super::*;

impl Meta {
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
        if records.is_empty() {
            // An empty object still gets its (empty) record: it is how a
            // rerun of import knows the file is the object's.
            records.push((
                0,
                SliceRecord {
                    kind: crate::SliceKind::External,
                    pos: 0,
                    id,
                    size: 0,
                    off: 0,
                    len: 0,
                },
            ));
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

    /// [`Meta::imported_object`] for many files at once: one transaction
    /// that reads every first chunk together, then every object record
    /// together (one round trip each where the engine batches reads), for
    /// a re-import that compares a whole directory with its bucket.
    pub fn imported_objects(&self, inos: &[Ino]) -> Result<Vec<Option<(u64, ExternalObject)>>> {
        self.read_txn(|tx| {
            let chunk_keys: Vec<Vec<u8>> = inos.iter().map(|i| keys::chunk(*i, 0)).collect();
            let refs: Vec<&[u8]> = chunk_keys.iter().map(Vec::as_slice).collect();
            let firsts = tx.get_many(&refs)?;
            let mut ids = Vec::with_capacity(inos.len());
            for raw in &firsts {
                let id = match raw {
                    Some(v) => SliceRecord::decode_all(v)?
                        .first()
                        .filter(|r| r.kind == crate::SliceKind::External)
                        .map(|r| r.id),
                    None => None,
                };
                ids.push(id);
            }
            let ext_keys: Vec<Vec<u8>> =
                ids.iter().flatten().map(|id| keys::external(*id)).collect();
            let refs: Vec<&[u8]> = ext_keys.iter().map(Vec::as_slice).collect();
            let mut records = tx.get_many(&refs)?.into_iter();
            let mut out = Vec::with_capacity(inos.len());
            for id in ids {
                let Some(id) = id else {
                    out.push(None);
                    continue;
                };
                let raw = records.next().flatten().ok_or(MetaError::NotFound)?;
                let obj: ExternalObject = serde_json::from_slice(&raw)
                    .map_err(|e| MetaError::Corrupt(format!("external object {id}: {e}")))?;
                out.push(Some((id, obj)));
            }
            Ok(out)
        })
    }

    /// Make `dir` a lazily imported directory (or change how it is).
    pub fn set_lazy_import(&self, dir: Ino, lazy: &LazyImport) -> Result<()> {
        self.writable()?;
        let raw = serde_json::to_vec(lazy).map_err(|e| MetaError::Corrupt(e.to_string()))?;
        self.txn(|tx| {
            match tx.get(&keys::attr(dir))? {
                Some(a) if Attr::decode(&a)?.typ == FileType::Dir => {}
                Some(_) => return Err(MetaError::NotDir),
                None => return Err(MetaError::NotFound),
            }
            tx.set(&keys::lazy_import(dir), &raw)
        })
    }

    /// Every lazily imported directory of the volume, in one scan.
    pub fn lazy_imports(&self) -> Result<Vec<(Ino, LazyImport)>> {
        let rows = self.read_txn(|tx| scan_prefix(tx, keys::LAZY_IMPORT_PREFIX))?;
        rows.iter()
            .map(|(k, v)| {
                let ino = keys::be_u64(k, 1)
                    .ok_or_else(|| MetaError::Corrupt("lazy import key".into()))?;
                let lazy = serde_json::from_slice(v)
                    .map_err(|e| MetaError::Corrupt(format!("lazy import of {ino}: {e}")))?;
                Ok((ino, lazy))
            })
            .collect()
    }

    /// Stop listing `dir` from its bucket; its files stay. False when it
    /// was not lazily imported.
    pub fn remove_lazy_import(&self, dir: Ino) -> Result<bool> {
        self.writable()?;
        self.txn(|tx| {
            let had = tx.get(&keys::lazy_import(dir))?.is_some();
            tx.delete(&keys::lazy_import(dir))?;
            Ok(had)
        })
    }

    pub fn get_external(&self, id: u64) -> Result<ExternalObject> {
        let raw = self
            .read_txn(|tx| tx.get(&keys::external(id)))?
            .ok_or(MetaError::NotFound)?;
        serde_json::from_slice(&raw)
            .map_err(|e| MetaError::Corrupt(format!("external object {id}: {e}")))
    }
}
