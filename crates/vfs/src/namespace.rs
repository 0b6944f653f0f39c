//! Names: lookup, create, link, unlink, rename, directories and their
//! listing, symlinks, attributes.

use super::*;

impl Vfs {
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<(Ino, Attr)> {
        self.metrics().op("lookup");
        if let Some(ino) = internal::lookup(parent, name) {
            return Ok((ino, self.getattr(ino)?));
        }
        self.refresh_lazy(parent);
        let (ino, attr) = match self.trusted_lookup(parent, name) {
            Some(answer) => answer?,
            None => self.meta.lookup(parent, name)?,
        };
        self.remember_name(parent, name, ino);
        self.note_prefetch(name, ino, &attr);
        if self.open_file(ino).is_some() {
            return Ok((ino, self.getattr(ino)?));
        }
        Ok((ino, attr))
    }

    pub fn getattr(&self, ino: Ino) -> Result<Attr> {
        self.metrics().op("getattr");
        if internal::is_internal(ino) {
            return Ok(internal::attr(self.stats_text().len() as u64));
        }
        if let Some((attr, of)) = self.cached_open(ino) {
            if !of.writer.has_dirty() {
                return Ok(attr);
            }
        }
        if let Some((attr, _)) = self.dir_cache.get(ino, self.config.open_cache) {
            return Ok(attr);
        }
        self.settle_appends(ino)?;
        // Sample the buffer before metadata: a flush that commits in between
        // then shows up in one or the other, never in neither.
        let buffered = self.buffered_length(ino);
        let written = self
            .open_file(ino)
            .and_then(|of| of.writer.uncommitted_mtime());
        let mut attr = match self.meta.getattr(ino) {
            Err(MetaError::NotFound) => {
                return self
                    .removed_open_dir(ino)
                    .ok_or_else(|| VfsError::new(libc::ENOENT, "no such file or directory"))
            }
            other => other?,
        };
        attr.length = attr.length.max(buffered);
        // Writes not yet committed changed the file when they were made, as
        // a local file system shows at once.
        if let Some((secs, ns)) = written.filter(|w| *w > (attr.mtime, attr.mtime_ns)) {
            (attr.mtime, attr.mtime_ns) = (secs, ns);
            (attr.ctime, attr.ctime_ns) = (secs, ns);
        }
        Ok(attr)
    }

    /// A directory removed (or renamed over) while open: fstat of its
    /// handle still works and shows no links, as on a local file system.
    pub(crate) fn removed_open_dir(&self, ino: Ino) -> Option<Attr> {
        let handles = self.handles.lock();
        let attr = handles
            .values()
            .filter(|h| h.ino == ino)
            .find_map(|h| h.dir_attr)?;
        Some(Attr { nlink: 0, ..attr })
    }

    /// Commit pending O_APPEND writes, whose place in the file is unknown
    /// until then, before anything that shows the file's length or bytes.
    pub(crate) fn settle_appends(&self, ino: Ino) -> Result<()> {
        match self.open_file(ino) {
            Some(of) if of.writer.has_appends() => self.flush_file(ino, &of),
            _ => Ok(()),
        }
    }

    pub(crate) fn buffered_length(&self, ino: Ino) -> u64 {
        self.open_file(ino)
            .map(|of| of.writer.buffered_length())
            .unwrap_or(0)
    }

    pub fn setattr(&self, ino: Ino, set: &SetAttr, size: Option<u64>) -> Result<Attr> {
        self.metrics().op("setattr");
        if internal::is_internal(ino) {
            return Err(VfsError::new(libc::EPERM, ".stats is read-only"));
        }
        self.writable()?;
        self.forget_open(ino);
        if let Some(size) = size {
            self.truncate(ino, size)?;
        }
        if set.mtime.is_some() {
            // Times set on a file with buffered writes (futimens after
            // write, as tar and cp -p do) must outlive them: commit the
            // writes first, so their commit does not stamp a later time.
            if let Some(of) = self.open_file(ino) {
                self.flush_file(ino, &of)?;
            }
        }
        if set.mode.is_some()
            || set.uid.is_some()
            || set.gid.is_some()
            || set.atime.is_some()
            || set.mtime.is_some()
        {
            self.meta.setattr(ino, set)?;
        }
        self.getattr(ino)
    }

    pub fn truncate(&self, ino: Ino, size: u64) -> Result<Attr> {
        self.writable()?;
        self.forget_open(ino);
        let of = self.open_file(ino);
        if let Some(of) = &of {
            self.flush_file(ino, of)?;
        }
        let t = self.meta.truncate(ino, size)?;
        if let Some(of) = &of {
            of.invalidate();
        }
        self.release_slices(&t.freed, true);
        Ok(t.attr)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn mknod(
        &self,
        ctx: &Ctx,
        parent: Ino,
        name: &[u8],
        mode: u32,
        rdev: u32,
    ) -> Result<(Ino, Attr)> {
        self.metrics().op("mknod");
        self.check_name(parent, name)?;
        self.writable()?;
        let typ = FileType::from_mode(mode).ok_or_else(|| {
            VfsError::new(libc::EINVAL, format!("bad file type in mode {mode:o}"))
        })?;
        if typ == FileType::Dir || typ == FileType::Symlink {
            return Err(VfsError::new(
                libc::EINVAL,
                "mknod cannot make directories or symlinks",
            ));
        }
        Ok(self.meta.mknod(ctx, parent, name, typ, mode, rdev, None)?)
    }

    pub fn mkdir(&self, ctx: &Ctx, parent: Ino, name: &[u8], mode: u32) -> Result<(Ino, Attr)> {
        self.metrics().op("mkdir");
        self.check_name(parent, name)?;
        self.writable()?;
        Ok(self
            .meta
            .mknod(ctx, parent, name, FileType::Dir, mode, 0, None)?)
    }

    pub fn symlink(
        &self,
        ctx: &Ctx,
        parent: Ino,
        name: &[u8],
        target: &[u8],
    ) -> Result<(Ino, Attr)> {
        self.check_name(parent, name)?;
        self.writable()?;
        if target.is_empty() || target.len() >= 4096 {
            return Err(VfsError::new(libc::ENAMETOOLONG, "symlink target length"));
        }
        Ok(self
            .meta
            .mknod(ctx, parent, name, FileType::Symlink, 0o777, 0, Some(target))?)
    }

    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        Ok(self.meta.readlink(ino)?)
    }

    pub fn unlink(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.metrics().op("unlink");
        self.writable()?;
        self.forget_all_opens();
        let r = self.meta.unlink(parent, name)?;
        self.freed(&r);
        Ok(())
    }

    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.metrics().op("rmdir");
        self.writable()?;
        Ok(self.meta.rmdir(parent, name)?)
    }

    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: u32,
    ) -> Result<()> {
        self.metrics().op("rename");
        self.check_name(new_parent, new_name)?;
        self.writable()?;
        self.forget_all_opens();
        let hint = self.recent_names.lock().remove(&(parent, name.to_vec()));
        if let Some(r) = self
            .meta
            .rename_hinted(parent, name, new_parent, new_name, flags, hint)?
        {
            self.freed(&r);
        }
        Ok(())
    }

    pub fn link(&self, ino: Ino, new_parent: Ino, new_name: &[u8]) -> Result<Attr> {
        self.check_name(new_parent, new_name)?;
        self.writable()?;
        self.forget_open(ino);
        self.meta.link(ino, new_parent, new_name)?;
        self.getattr(ino)
    }

    pub fn opendir(&self, ino: Ino) -> Result<u64> {
        self.metrics().op("opendir");
        let attr = match self.dir_cache.get(ino, self.config.open_cache) {
            Some((attr, _)) => attr,
            // With --open-cache the listing is kept anyway: take it now,
            // attributes included, so opendir and the readdir after it
            // cost one round trip together instead of two.
            None if !self.config.open_cache.is_zero() => self.directory_listing(ino)?.0,
            None => self.meta.getattr(ino)?,
        };
        Ok(self.new_handle(Handle::dir(ino, attr)))
    }

    /// A directory's entries, `.` and `..` first.
    pub(crate) fn listing_of(&self, ino: Ino, attr: &Attr, names: Vec<Entry>) -> Vec<Entry> {
        let mut entries = vec![
            Entry {
                name: b".".to_vec(),
                ino,
                typ: FileType::Dir,
                attr: None,
            },
            Entry {
                name: b"..".to_vec(),
                ino: if ino == tessera_meta::ROOT_INO {
                    ino
                } else {
                    attr.parent
                },
                typ: FileType::Dir,
                attr: None,
            },
        ];
        entries.extend(names);
        entries
    }

    /// Entries of an open directory, to be read from `offset` on. The
    /// listing is taken by the read from offset 0, the first or one after
    /// a rewinddir, so names added since opendir show up, as POSIX asks of
    /// a rewind; later offsets read the same listing, so they stay stable.
    pub fn readdir(&self, fh: u64, offset: u64) -> Result<Arc<Vec<Entry>>> {
        let h = self.handle(fh)?;
        let Some(opened) = h.dir_attr else {
            return Err(VfsError::new(libc::ENOTDIR, "not an open directory"));
        };
        let held = h.entries.lock().clone();
        if let Some(entries) = held.filter(|_| offset != 0) {
            return Ok(entries);
        }
        self.refresh_lazy(h.ino);
        // A directory removed while open lists as empty: `.` and `..` only.
        let fresh = match self.directory_listing(h.ino) {
            Ok((attr, names)) => self.listing_of(h.ino, &attr, names.as_ref().clone()),
            Err(MetaError::NotFound) => {
                let mut only_dots = self.listing_of(h.ino, &opened, Vec::new());
                only_dots.truncate(2);
                only_dots
            }
            Err(e) => return Err(e.into()),
        };
        let fresh = Arc::new(fresh);
        *h.entries.lock() = Some(fresh.clone());
        Ok(fresh)
    }

    /// A directory's attributes and names: kept by `--open-cache`, read
    /// whole (with attributes and records, to keep or prefetch), or read by
    /// name.
    fn directory_listing(&self, dir: Ino) -> tessera_meta::Result<(Attr, Arc<Vec<Entry>>)> {
        if let Some(kept) = self.dir_cache.get(dir, self.config.open_cache) {
            return Ok(kept);
        }
        let generation = self.dir_cache.generation();
        if self.reads_listings_whole() && !self.listing_too_large(dir) {
            // None: too large to read whole, listed by name below.
            if let Some(whole) = self.read_listing(dir, generation)? {
                return Ok(whole);
            }
        }
        let attr = self.meta.getattr(dir)?;
        let names = Arc::new(self.meta.readdir(dir, false)?);
        if !self.config.open_cache.is_zero() {
            self.dir_cache
                .put(dir, generation, attr, names.clone(), false);
        }
        Ok((attr, names))
    }

    pub fn releasedir(&self, fh: u64) {
        self.drop_handle(fh);
    }
}
