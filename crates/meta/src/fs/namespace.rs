//! The namespace: attributes, lookup, create (mknod, mkdir, symlink),
//! link, unlink, rmdir, rename and directory listings, each one transaction
//! that checks the POSIX rules the kernel leaves to the file system.

use super::*;

impl Meta {
    pub fn getattr(&self, ino: Ino) -> Result<Attr> {
        self.read_txn(|tx| get_attr(tx, ino))
    }

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<(Ino, Attr)> {
        if name == b"." {
            return Ok((parent, self.getattr(parent)?));
        }
        check_name(name)?;
        if parent == ROOT_INO && name == super::trash::TRASH_NAME {
            return self.read_txn(|tx| {
                Ok((
                    super::trash::TRASH_INO,
                    get_attr(tx, super::trash::TRASH_INO)?,
                ))
            });
        }
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
        check_new_name(parent, name)?;
        let space = match typ {
            FileType::Dir => 4096,
            FileType::Symlink => align4k(target.map_or(0, |t| t.len() as u64)),
            _ => 0,
        };
        self.check_quota(parent, space, 1)?;
        let ino = self.new_inode()?;
        let attr = self.txn(|tx| {
            let mut p = parent_for_new_entry(tx, parent, name)?;
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
            account(parent, usage_of(&a), 1);
            Ok(a)
        })?;
        if typ == FileType::Dir {
            self.note_dir_parent(ino, parent);
        }
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
    pub(crate) fn drop_link(
        &self,
        tx: &mut dyn KvTxn,
        parent: Ino,
        name: &[u8],
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
                    account_move(parent, a.parent, usage_of(&a), 1);
                }
            }
            put_attr(tx, ino, &a)?;
            return Ok(UnlinkResult {
                ino,
                data_freed: false,
            });
        }
        if a.typ == FileType::File && self.trash_days() > 0 && !super::trash::in_trash(parent) {
            // The last name of a file goes: the file goes to the trash.
            self.move_to_trash(tx, parent, name, ino, &mut a, t)?;
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
        if a.typ == FileType::Dir {
            // Changes counted in it before it went are charged by its place.
            self.note_dir_parent(ino, a.parent);
        }
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
        account(a.parent, -usage_of(a), -1);
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
            self.drop_link(tx, parent, name, ino, t)
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
    pub(crate) fn is_ancestor(tx: &mut dyn KvTxn, ancestor: Ino, mut ino: Ino) -> Result<bool> {
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
        check_new_name(new_parent, new_name)?;
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
        let mut moves = vec![(parent, name, new_parent)];
        if exchange {
            moves.push((new_parent, new_name, parent));
        }
        let quota_moves = self.plan_quota_move(&moves)?;
        let mut moved_dirs = Vec::new();
        let replaced = self.txn(|tx| {
            moved_dirs.clear();
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
                    let (src_was, d_was) = (src.parent, d.parent);
                    Self::move_parent_link(tx, ino, &mut src, parent, new_parent)?;
                    Self::move_parent_link(tx, dino, &mut d, new_parent, parent)?;
                    account_move(src_was, src.parent, usage_of(&src), 1);
                    account_move(d_was, d.parent, usage_of(&d), 1);
                    if dtyp == FileType::Dir {
                        moved_dirs.push((dino, parent));
                    }
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
                        replaced = Some(self.drop_link(tx, new_parent, new_name, dino, t)?);
                    }
                }
                tx.delete(&keys::dentry(parent, name))?;
                put_dentry(tx, new_parent, new_name, ino, typ)?;
                if parent != new_parent {
                    let was = src.parent;
                    Self::move_parent_link(tx, ino, &mut src, parent, new_parent)?;
                    account_move(was, src.parent, usage_of(&src), 1);
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
            if typ == FileType::Dir && parent != new_parent {
                moved_dirs.push((ino, new_parent));
            }
            Ok(replaced)
        })?;
        for (dir, now_in) in moved_dirs {
            self.note_dir_parent(dir, now_in);
        }
        self.apply_quota_moves(quota_moves);
        Ok(replaced)
    }

    pub(crate) fn adjust_nlink(tx: &mut dyn KvTxn, ino: Ino, delta: i32) -> Result<()> {
        let mut a = get_attr(tx, ino)?;
        a.nlink = a.nlink.saturating_add_signed(delta);
        put_attr(tx, ino, &a)
    }

    pub(crate) fn move_parent_link(
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
        check_new_name(new_parent, new_name)?;
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

    /// A directory's attributes and entries with their attributes and, for
    /// regular files, the slice records of their chunks: three batched
    /// reads for the whole directory (the listing, every attribute with the
    /// directory's own, every record) where opening each file would take one or two per file —
    /// what a mount that trusts what it saw (`--open-cache`) keeps, so
    /// that a loader walking a model repository over a far link waits for
    /// its directories, not its files. A directory of more than
    /// `max_entries` entries comes back empty and not `complete` (after a
    /// scan of that many: a huge directory is not read whole for this);
    /// past `max_chunks` chunk records in all, later files get none; only
    /// files `wanted` accepts get theirs.
    pub fn readdir_with_records(
        &self,
        ino: Ino,
        max_entries: usize,
        max_chunks: usize,
        wanted: &dyn Fn(&[u8], &Attr) -> bool,
    ) -> Result<DirWithRecords> {
        self.read_txn(|tx| {
            let prefix = keys::dentry_prefix(ino);
            let end = crate::kv::prefix_end(&prefix);
            let head = keys::attr(ino);
            // All of it in one round trip where the engine can.
            let nested = Nested {
                head: &head,
                begin: &prefix,
                end: &end,
                limit: max_entries,
                follow: keys::DENTRY_TO_ATTR,
                under: keys::DENTRY_TO_CHUNKS,
                tag_at: keys::DENTRY_TYPE_AT,
                tag: FileType::File as u8,
                under_limit: max_chunks,
            };
            if let Some(read) = tx.read_nested(&nested)? {
                return listing_from_nested(ino, read, max_chunks, wanted);
            }
            // Else the scan first, then the directory's own attributes with
            // its entries' (a file has no entries, so its scan is empty and
            // its attributes say NotDir), then the records: three round
            // trips, not four.
            let rows = tx.scan(&prefix, &end, max_entries + 1)?;
            if rows.len() > max_entries {
                return Ok(DirWithRecords::incomplete(get_attr(tx, ino)?));
            }
            let mut entries = rows
                .iter()
                .map(|(k, v)| decode_entry(&k[prefix.len()..], v))
                .collect::<Result<Vec<_>>>()?;
            let owned: Vec<Vec<u8>> = std::iter::once(ino)
                .chain(entries.iter().map(|e| e.ino))
                .map(keys::attr)
                .collect();
            let refs: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
            let mut attrs = tx.get_many(&refs)?.into_iter();
            let dir = listed_dir_attr(attrs.next().flatten())?;
            let files = attach_attrs(&mut entries, attrs, max_chunks, wanted)?;
            let owned: Vec<Vec<u8>> = files
                .iter()
                .flat_map(|&(_, ino, chunks)| (0..chunks as u32).map(move |i| keys::chunk(ino, i)))
                .collect();
            let refs: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
            let mut raw = if refs.is_empty() {
                Vec::new().into_iter()
            } else {
                tx.get_many(&refs)?.into_iter()
            };
            let mut records = Vec::new();
            for (at, _, chunks) in files {
                let file_records = raw
                    .by_ref()
                    .take(chunks)
                    .map(|v| v.map_or(Ok(Vec::new()), |v| SliceRecord::decode_all(&v)))
                    .collect::<Result<Vec<_>>>()?;
                records.push((at, file_records));
            }
            Ok(DirWithRecords::whole(dir, entries, records))
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
                let mut entry = decode_entry(&k[prefix.len()..], &v)?;
                if with_attrs {
                    entry.attr = Some(get_attr(tx, entry.ino)?);
                }
                out.push(entry);
            }
            Ok(out)
        })
    }
}

impl DirWithRecords {
    /// A directory read whole.
    fn whole(
        attr: Attr,
        entries: Vec<Entry>,
        records: Vec<(usize, Vec<Vec<SliceRecord>>)>,
    ) -> Self {
        DirWithRecords {
            attr,
            complete: true,
            entries,
            records,
        }
    }

    /// A directory of more entries than asked for.
    fn incomplete(attr: Attr) -> Self {
        DirWithRecords {
            attr,
            complete: false,
            entries: Vec::new(),
            records: Vec::new(),
        }
    }
}

/// The attributes of a directory being listed whole.
fn listed_dir_attr(raw: Option<Vec<u8>>) -> Result<Attr> {
    let dir = decode_attr(raw)?;
    if dir.typ != FileType::Dir {
        return Err(MetaError::NotDir);
    }
    Ok(dir)
}

/// Give each listed entry its attributes (`attrs`, in the same order) and
/// pick the files whose records are wanted, as many as `max_chunks`
/// chunks allow: (place in `entries`, inode, chunks).
fn attach_attrs(
    entries: &mut [Entry],
    attrs: impl Iterator<Item = Option<Vec<u8>>>,
    max_chunks: usize,
    wanted: &dyn Fn(&[u8], &Attr) -> bool,
) -> Result<Vec<(usize, Ino, usize)>> {
    let mut files = Vec::new();
    let mut budget = max_chunks;
    for (at, (e, raw)) in entries.iter_mut().zip(attrs).enumerate() {
        // Gone since the listing was read (another mount's unlink between
        // two reads of an engine without snapshots): no attributes, so no
        // one trusts it.
        let Some(raw) = raw else { continue };
        let attr = Attr::decode(&raw)?;
        if attr.typ == FileType::File && wanted(&e.name, &attr) {
            let chunks = attr.length.div_ceil(CHUNK_SIZE) as usize;
            if chunks <= budget {
                budget -= chunks;
                files.push((at, e.ino, chunks));
            }
        }
        e.attr = Some(attr);
    }
    Ok(files)
}

/// A listing read in one step ([`KvTxn::read_nested`]) as the plain reads
/// would have given it.
fn listing_from_nested(
    ino: Ino,
    read: NestedRead,
    max_chunks: usize,
    wanted: &dyn Fn(&[u8], &Attr) -> bool,
) -> Result<DirWithRecords> {
    let dir = listed_dir_attr(read.head)?;
    if read.more {
        return Ok(DirWithRecords::incomplete(dir));
    }
    let prefix_len = keys::dentry_prefix(ino).len();
    let mut entries = Vec::with_capacity(read.rows.len());
    let mut attrs = Vec::with_capacity(read.rows.len());
    let mut under = Vec::with_capacity(read.rows.len());
    for row in read.rows {
        entries.push(decode_entry(&row.key[prefix_len..], &row.value)?);
        attrs.push(row.followed);
        under.push(row.under);
    }
    let files = attach_attrs(&mut entries, attrs.into_iter(), max_chunks, wanted)?;
    let mut records = Vec::new();
    for (at, file, chunks) in files {
        // Not read (the server's budget ran out first): no records, as for
        // a file past the budget above.
        let Some(rows) = under[at].take() else {
            continue;
        };
        let chunk_prefix = keys::chunk_prefix(file).len();
        let mut file_records = vec![Vec::new(); chunks];
        for (key, value) in rows {
            let index = key
                .get(chunk_prefix..)
                .and_then(|i| <[u8; 4]>::try_from(i).ok())
                .map(|i| u32::from_be_bytes(i) as usize);
            if let Some(slot) = index.and_then(|i| file_records.get_mut(i)) {
                *slot = SliceRecord::decode_all(&value)?;
            }
        }
        records.push((at, file_records));
    }
    Ok(DirWithRecords::whole(dir, entries, records))
}

/// A directory entry from its key's name part and its value (the child's
/// inode number and type), without attributes.
fn decode_entry(name: &[u8], value: &[u8]) -> Result<Entry> {
    if value.len() != keys::DENTRY_TYPE_AT + 1 {
        return Err(MetaError::Corrupt("dentry value".into()));
    }
    Ok(Entry {
        name: name.to_vec(),
        ino: keys::be_u64(value, 0).unwrap_or(0),
        typ: FileType::from_u8(value[keys::DENTRY_TYPE_AT])
            .ok_or_else(|| MetaError::Corrupt("dentry type".into()))?,
        attr: None,
    })
}
