//! Open files: open, read, write, flush, fsync, release, truncate,
//! fallocate, copy_file_range, and cache warm-up of a range.

use super::*;

impl Vfs {
    pub(crate) fn new_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        {
            let mut m = self.handles.lock();
            m.insert(fh, Arc::new(h));
        }
        fh
    }

    pub fn handle(&self, fh: u64) -> Result<Arc<Handle>> {
        self.handles
            .lock()
            .get(&fh)
            .cloned()
            .ok_or_else(|| VfsError::new(libc::EBADF, format!("no open handle {fh}")))
    }

    pub(crate) fn drop_handle(&self, fh: u64) -> Option<Arc<Handle>> {
        self.handles.lock().remove(&fh)
    }

    /// Open (and, with `create`, make) a regular file.
    /// A file looked up by a name `--prefetch-on-open` matches is read
    /// whole at its next open for reading.
    pub(crate) fn note_prefetch(&self, name: &[u8], ino: Ino, attr: &Attr) {
        if attr.typ != FileType::File || self.config.prefetch_on_open.is_empty() {
            return;
        }
        if self.prefetch_pattern_matches(name) {
            let mut next = self.prefetch_next.lock();
            if next.len() >= 65_536 {
                next.clear();
            }
            next.insert(ino);
        }
    }

    /// Start reading a whole file into the cache on a background worker,
    /// if it was marked by its name: in order, as many blocks in flight as
    /// the readahead window holds, through the fetches the reader joins
    /// (an mmap loader faulting on tensors in its own order waits for the
    /// block's fetch, never starts a second one). The records come from
    /// the open file (primed at open or from a listing), so a large file's
    /// prefetch does not wait on one metadata round trip per chunk first.
    fn maybe_prefetch(&self, ino: Ino, flags: i32, length: u64, of: &Arc<OpenFile>) {
        if is_write_only(flags) || length == 0 || !self.prefetch_next.lock().remove(&ino) {
            return;
        }
        let (meta, chunks, of) = (self.meta.clone(), self.chunks.clone(), of.clone());
        let queued = self.control.background.submit(Box::new(move || {
            let mut records = |index| Ok(of.chunk_records(&meta, ino, index)?);
            let config = chunks.config();
            let window = (config.max_readahead / config.block_size.max(1)).max(4);
            match chunks.prefetch(0, length, &mut records, window) {
                Ok(r) if r.failed_blocks > 0 => {
                    warn!(
                        ino,
                        failed = r.failed_blocks,
                        "prefetch on open could not fetch every block"
                    )
                }
                Ok(r) => tracing::debug!(ino, bytes = r.fetched, "prefetched on open"),
                Err(e) => warn!(ino, error = %e, "prefetch on open failed"),
            }
        }));
        if let Err(e) = queued {
            warn!(ino, error = %e, "no worker for a prefetch on open");
        }
    }

    pub fn open(&self, ino: Ino, flags: i32) -> Result<(u64, Attr)> {
        self.open_known(ino, flags, None)
    }

    pub(crate) fn new_open_file(&self, ino: Ino, attr: &Attr) -> Arc<OpenFile> {
        Arc::new(OpenFile {
            writer: FileWriter::new(ino, self.chunks.clone()),
            handles: AtomicU64::new(0),
            records: Mutex::new(RecordCache::default()),
            length: AtomicU64::new(0),
            length_at: Mutex::new(None),
            parent: AtomicU64::new(attr.parent),
            no_xattrs: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Remember an open for `--open-cache` (bounded: expired entries go
    /// when it is full, and if that is not enough, all of them).
    pub(crate) fn keep_open(&self, ino: Ino, attr: Attr, file: Arc<OpenFile>) {
        let mut c = self.open_cache.lock();
        if c.len() >= MAX_CACHED_OPENS {
            let ttl = self.config.open_cache;
            c.retain(|_, open| open.at.elapsed() < ttl);
            if c.len() >= MAX_CACHED_OPENS {
                c.clear();
            }
        }
        c.insert(
            ino,
            CachedOpen {
                attr,
                at: std::time::Instant::now(),
                file,
            },
        );
    }

    /// Open with the inode's attributes already in hand (`known`), as
    /// create has them, saving the metadata read.
    pub(crate) fn open_known(
        &self,
        ino: Ino,
        flags: i32,
        known: Option<Attr>,
    ) -> Result<(u64, Attr)> {
        self.metrics().op("open");
        if internal::is_internal(ino) {
            if is_write_open(flags) {
                return Err(VfsError::new(libc::EACCES, ".stats is read-only"));
            }
            let text = self.stats_text().into_bytes();
            let attr = internal::attr(text.len() as u64);
            return Ok((self.new_handle(Handle::snapshot(ino, text)), attr));
        }
        if is_write_open(flags) {
            self.writable()?;
        }
        let read_only = !is_write_open(flags) && flags & libc::O_TRUNC == 0;
        let cached = if read_only {
            self.cached_open(ino)
        } else {
            self.forget_open(ino);
            None
        };
        // A read-only open reads the attributes and the first chunks'
        // records in one round trip; the records of a larger file in a
        // second, here, rather than one per chunk as its reads get there.
        let (attr, records) = match (&cached, known) {
            (Some((attr, _)), _) => (*attr, Vec::new()),
            (None, Some(attr)) => (attr, Vec::new()),
            (None, None) if read_only => self.attr_and_records(ino, MAX_OPEN_CHUNKS)?,
            (None, None) => (self.meta.getattr(ino)?, Vec::new()),
        };
        if attr.typ == FileType::Dir && is_write_open(flags) {
            return Err(VfsError::new(
                libc::EISDIR,
                "cannot open a directory for writing",
            ));
        }
        // The kernel hands O_TRUNC to open (atomic_o_trunc); truncating an
        // empty file still updates its times, as POSIX asks.
        let just_created = known.is_some() && attr.length == 0;
        let attr = if flags & libc::O_TRUNC != 0
            && is_write_open(flags)
            && attr.typ == FileType::File
            && !just_created
        {
            self.truncate(ino, 0)?
        } else {
            attr
        };
        // The handle count moves under the map's lock: a release that sees
        // no handles left removes the open file under the same lock, so an
        // open can never hold an OpenFile that has left the map.
        let (of, first) = {
            let mut files = self.open_files.lock();
            let of = files
                .entry(ino)
                .or_insert_with(|| match &cached {
                    Some((_, file)) => file.clone(),
                    None => self.new_open_file(ino, &attr),
                })
                .clone();
            let first = of.handles.fetch_add(1, Ordering::Relaxed) == 0;
            (of, first)
        };
        if first {
            self.meta.open_inode(ino);
        }
        of.no_xattrs.store(
            attr.flags & tessera_meta::attr::FLAG_XATTRS == 0,
            Ordering::Relaxed,
        );
        of.parent.store(attr.parent, Ordering::Relaxed);
        // Close-to-open: a new open sees what other mounts committed,
        // unless --open-cache says to trust what this mount saw last.
        if !of.writer.has_dirty() && cached.is_none() {
            of.invalidate();
            of.set_length(attr.length);
            // Only the first handle primes: with another open, a writer of
            // this mount may have committed since the records were read.
            if first {
                of.prime(records);
            }
        }
        if cached.is_none()
            && read_only
            && attr.typ == FileType::File
            && !self.config.open_cache.is_zero()
            && !of.writer.has_dirty()
        {
            self.keep_open(ino, attr, of.clone());
        }
        let handle = Handle::file(ino, flags);
        if self.config.atime != AtimeMode::NoAtime
            && !is_write_only(flags)
            && flags & libc::O_NOATIME == 0
        {
            {
                let mut t = handle.opened_times.lock();
                *t = Some(attr);
            }
        }
        let fh = self.new_handle(handle);
        let length = attr.length.max(of.writer.buffered_length());
        self.maybe_prefetch(ino, flags, attr.length, &of);
        Ok((fh, Attr { length, ..attr }))
    }

    pub fn create(
        &self,
        ctx: &Ctx,
        parent: Ino,
        name: &[u8],
        mode: u32,
        flags: i32,
    ) -> Result<(Ino, Attr, u64)> {
        self.metrics().op("create");
        self.check_name(parent, name)?;
        self.writable()?;
        let (ino, attr) = match self
            .meta
            .mknod(ctx, parent, name, FileType::File, mode, 0, None)
        {
            Ok(made) => made,
            // Another mount created it since the kernel looked: without
            // O_EXCL, POSIX opens the file that is there.
            Err(MetaError::Exists) if flags & libc::O_EXCL == 0 => {
                let (ino, attr) = self.meta.lookup(parent, name)?;
                if attr.typ == FileType::Dir {
                    return Err(VfsError::new(
                        libc::EISDIR,
                        "a directory of that name exists",
                    ));
                }
                let access_acl = (attr.flags & tessera_meta::attr::FLAG_ACL_ACCESS != 0)
                    .then(|| self.meta.getxattr(ino, tessera_meta::acl::ACCESS).ok())
                    .flatten()
                    .and_then(|raw| tessera_meta::acl::Acl::decode(&raw).ok());
                if !permits(&attr, access_acl.as_ref(), ctx, flags) {
                    return Err(VfsError::new(
                        libc::EACCES,
                        "the file another mount created is not open to this user",
                    ));
                }
                let (fh, attr) = self.open_known(ino, flags & !libc::O_CREAT, None)?;
                return Ok((ino, attr, fh));
            }
            Err(e) => return Err(e.into()),
        };
        // The new inode's attributes are the ones mknod just wrote.
        let (fh, attr) = self.open_known(ino, flags, Some(attr))?;
        Ok((ino, attr, fh))
    }

    /// Bytes `[off, off + size)` of an open file, short at its end.
    pub fn read(&self, ino: Ino, fh: u64, off: u64, size: usize) -> Result<Bytes> {
        let _span = tracing::debug_span!("read", ino, off, size).entered();
        self.metrics().op("read");
        if internal::is_internal(ino) {
            let h = self.handle(fh)?;
            let content = h.content.as_deref().unwrap_or_default();
            let start = (off as usize).min(content.len());
            let end = start.saturating_add(size).min(content.len());
            return Ok(Bytes::copy_from_slice(&content[start..end]));
        }
        let of = self
            .open_file(ino)
            .ok_or_else(|| VfsError::new(libc::EBADF, "file is not open"))?;
        let h = self.handle(fh)?;
        if of.writer.has_appends() {
            self.flush_file(ino, &of)?;
        }
        self.touch_atime(ino, &h);
        let length = self.read_length(ino, &of, off + size as u64)?;
        if off >= length {
            return Ok(Bytes::new());
        }
        let n = (size as u64).min(length - off) as usize;
        let config = self.chunks.config();
        let (access, ahead) = h.track_read(
            off,
            n as u64,
            config.block_size as u64,
            config.max_readahead as u64,
        );
        let mut records = |index| Ok(of.chunk_records(&self.meta, ino, index)?);
        let ahead_len = ahead.len.min(length.saturating_sub(ahead.from));
        if ahead_len > 0 {
            self.chunks
                .readahead(ahead.from, ahead_len, ahead.reach, &mut records);
        }
        let mut attempt = 0;
        let mut n = n;
        let spans = loop {
            match self.chunks.read_committed(off, n, access, &mut records) {
                // Compaction (here or in another mount) replaced the slices
                // our cached records name, or another mount rewrote the
                // file: reload the records and the length with them (a
                // length trusted by --open-cache is as stale as the
                // records, and the new bytes must not be cut or padded to
                // it), and read again.
                Err(e) if e.is_missing_block() && attempt < 3 => {
                    debug!(ino, error = %e, "stale slice records, reloading");
                    attempt += 1;
                    of.invalidate();
                    self.forget_open(ino);
                    let length = self.read_length(ino, &of, off + size as u64)?;
                    if off >= length {
                        return Ok(Bytes::new());
                    }
                    n = (size as u64).min(length - off) as usize;
                }
                other => break other?,
            }
        };
        let data = match spans.as_slice() {
            // The common case, a read inside one cached block with nothing
            // buffered over it: hand out the block's bytes without a copy.
            [Span::Data(b)] if !of.writer.has_dirty() => b.clone(),
            _ => {
                let mut buf = Vec::with_capacity(n);
                for span in &spans {
                    match span {
                        Span::Data(b) => buf.extend_from_slice(b),
                        Span::Zero(z) => buf.resize(buf.len() + z, 0),
                    }
                }
                of.writer.overlay(off, &mut buf);
                Bytes::from(buf)
            }
        };
        self.metrics().fuse_read_bytes.inc_by(data.len() as u64);
        Ok(data)
    }

    /// Warm up, check, evict or unpin the cached blocks behind
    /// `[off, off + len)` of a file (`tessera warmup`); the range is cut
    /// at the file's committed length. Slice records are read afresh, so
    /// the blocks are those of the file as committed now.
    pub fn cache_range(
        &self,
        ino: Ino,
        off: u64,
        len: u64,
        action: CacheAction,
    ) -> Result<CacheReport> {
        let _span = tracing::debug_span!("cache_range", ino, off, len, ?action).entered();
        self.metrics().op("cache");
        if internal::is_internal(ino) {
            return Ok(CacheReport::default());
        }
        let attr = self.meta.getattr(ino)?;
        if attr.typ != FileType::File {
            return Err(VfsError::new(libc::EISDIR, "only files have cached blocks"));
        }
        let end = off.saturating_add(len).min(attr.length);
        if off >= end {
            return Ok(CacheReport::default());
        }
        let mut records = |index| Ok(Arc::new(self.meta.read_chunk(ino, index)?));
        Ok(self
            .chunks
            .cache_range(off, end - off, &mut records, action)?)
    }

    /// A file's attributes and the slice records of its first `limit`
    /// chunks: the first four read with the attributes, the rest in one
    /// more round trip (none for a directory).
    pub(crate) fn attr_and_records(
        &self,
        ino: Ino,
        limit: u64,
    ) -> Result<(Attr, Vec<Vec<SliceRecord>>)> {
        let (attr, mut records) = self.meta.getattr_with_chunks(ino, OPEN_CHUNKS)?;
        if attr.typ != FileType::File {
            return Ok((attr, Vec::new()));
        }
        let chunks = attr.length.div_ceil(tessera_meta::CHUNK_SIZE).min(limit);
        if chunks > u64::from(OPEN_CHUNKS) {
            records.extend(self.meta.read_chunks(ino, OPEN_CHUNKS..chunks as u32)?);
        }
        records.truncate(chunks as usize);
        Ok((attr, records))
    }

    /// The length a read up to `want` may see: buffered writes count, and
    /// metadata is asked only when the read reaches past what we know.
    pub(crate) fn read_length(&self, ino: Ino, of: &OpenFile, want: u64) -> Result<u64> {
        let buffered = of.writer.buffered_length();
        let known = of.length.load(Ordering::Relaxed).max(buffered);
        if want <= known {
            return Ok(known);
        }
        if let Some((attr, _)) = self.cached_open(ino) {
            if !of.writer.has_dirty() {
                return Ok(attr.length);
            }
        }
        if buffered == 0 && !of.writer.has_dirty() {
            if let Some(length) = of.recent_length() {
                return Ok(length);
            }
        }
        let committed = self.meta.getattr(ino)?.length;
        of.set_length(committed);
        Ok(committed.max(buffered))
    }

    pub fn write(&self, ino: Ino, fh: u64, off: u64, data: &[u8]) -> Result<usize> {
        let _span = tracing::debug_span!("write", ino, off, len = data.len()).entered();
        self.metrics().op("write");
        self.writable()?;
        let h = self.handle(fh)?;
        let of = self
            .open_file(ino)
            .ok_or_else(|| VfsError::new(libc::EBADF, "file is not open"))?;
        self.check_growth(
            &of,
            (h.flags & libc::O_APPEND == 0).then_some(off),
            data.len(),
        )?;
        if h.flags & libc::O_APPEND != 0 {
            // The kernel's offset is its idea of the end of the file, which
            // another mount may have moved: the commit decides the place.
            if of.writer.append(data)? {
                self.flush_file(ino, &of)?;
            }
            self.metrics().fuse_write_bytes.inc_by(data.len() as u64);
            return Ok(data.len());
        }
        if off
            .checked_add(data.len() as u64)
            .is_none_or(|end| end > tessera_meta::MAX_FILE_SIZE)
        {
            return Err(VfsError::new(
                libc::EFBIG,
                "write past the largest file size (256 PiB)",
            ));
        }
        if of.writer.write(off, data)? {
            self.flush_file(ino, &of)?;
        }
        self.metrics().fuse_write_bytes.inc_by(data.len() as u64);
        Ok(data.len())
    }

    /// Quotas and the volume's capacity against a write of `len` bytes at
    /// `off` (None: at the end): what it adds past the file's end, with
    /// what this file's buffers already added and no commit has counted.
    /// Overwrites within the file never fail here.
    fn check_growth(&self, of: &OpenFile, off: Option<u64>, len: usize) -> Result<()> {
        // Most volumes limit nothing: no look at the write buffer then.
        if !self.meta.limits_apply() {
            return Ok(());
        }
        let committed = of.length.load(Ordering::Relaxed);
        let buffered = of.writer.buffered_length();
        let known = committed.max(buffered);
        let end = off.unwrap_or(known).saturating_add(len as u64);
        let growth = end.saturating_sub(known) + buffered.saturating_sub(committed);
        if growth == 0 {
            return Ok(());
        }
        let parent = of.parent.load(Ordering::Relaxed);
        Ok(self
            .meta
            .check_quota(parent, i64::try_from(growth).unwrap_or(i64::MAX), 0)?)
    }

    pub(crate) fn flush_file(&self, ino: Ino, of: &OpenFile) -> Result<()> {
        let flushed = of.writer.flush()?;
        if !flushed.committed {
            // Nothing of ours changed the file: what it caches still holds.
            return Ok(());
        }
        self.forget_open(ino);
        of.invalidate();
        for index in flushed.compact {
            self.send(Work::Compact(ino, index));
        }
        Ok(())
    }

    /// close(2) of one descriptor: commit buffered data, drop POSIX locks of
    /// the owner.
    pub fn flush(&self, ino: Ino, fh: u64, lock_owner: u64) -> Result<()> {
        if internal::is_internal(ino) {
            return Ok(());
        }
        if lock_owner != 0 {
            if let Ok(h) = self.handle(fh) {
                let mut flushed = h.flushed_owners.lock();
                if !flushed.contains(&lock_owner) {
                    flushed.push(lock_owner);
                }
            }
        }
        if let Some(of) = self.open_file(ino) {
            self.flush_file(ino, &of)?;
        }
        if lock_owner != 0 && self.may_hold_locks(ino) {
            self.meta
                .setlk(ino, lock_owner, 0, libc::F_UNLCK, 0, u64::MAX)?;
        }
        Ok(())
    }

    pub fn fsync(&self, ino: Ino) -> Result<()> {
        self.metrics().op("fsync");
        if let Some(of) = self.open_file(ino) {
            self.flush_file(ino, &of)?;
        }
        Ok(())
    }

    /// The last descriptor of an open file description is closed. A flock
    /// taken through it (`flock_owner`, as the kernel reports it) goes too
    /// (flocks arrive as whole-file record locks, see the FUSE adapter), and
    /// so do the locks of every owner that locked through it: open file
    /// description locks end with the description, and a process's POSIX
    /// locks were already dropped by the flush of its close.
    pub fn release(&self, ino: Ino, fh: u64, flock_owner: Option<u64>) -> Result<()> {
        let handle = self.drop_handle(fh);
        if internal::is_internal(ino) {
            return Ok(());
        }
        // Owners that flushed through this handle are processes: the flush
        // of their close dropped their POSIX locks, and what they hold now
        // was taken since (the kernel sends this release late, after the
        // process may have opened the file again and locked it).
        let mut owners: Vec<u64> = handle
            .map(|h| {
                let flushed = h.flushed_owners.lock().clone();
                let mut owners = h.lock_owners.lock().clone();
                owners.retain(|o| !flushed.contains(o));
                owners
            })
            .unwrap_or_default();
        // An owner that also locked through another open handle of the file
        // is a process (POSIX locks, dropped by the flush of its close),
        // not this description: the locks it holds now may have been taken
        // through the other handle after this one was closed (the kernel
        // sends this release late), and they stay.
        if !owners.is_empty() {
            {
                let handles = self.handles.lock();
                owners.retain(|owner| {
                    !handles
                        .values()
                        .any(|h| h.ino == ino && h.lock_owners.lock().contains(owner))
                });
            }
        }
        owners.extend(flock_owner);
        if self.may_hold_locks(ino) {
            for owner in owners {
                if let Err(e) = self.meta.setlk(ino, owner, 0, libc::F_UNLCK, 0, u64::MAX) {
                    debug!(error = %e, "releasing the locks of a closed file");
                }
            }
        }
        let Some(of) = self.open_file(ino) else {
            return Ok(());
        };
        let flushed = self.flush_file(ino, &of);
        if of.handles.fetch_sub(1, Ordering::Relaxed) == 1 {
            // Every descriptor is closed, and each close dropped its locks.
            {
                let mut l = self.locked.lock();
                l.remove(&ino);
            }
            {
                let mut files = self.open_files.lock();
                if of.handles.load(Ordering::Relaxed) == 0 && !of.writer.has_dirty() {
                    files.remove(&ino);
                }
            }
            if self.meta.close_inode(ino)? {
                self.send(Work::Clean);
            }
        }
        flushed
    }

    /// fallocate(2) by `ctx`. Like a write, it takes setuid (and setgid
    /// with group execute) off a file changed by anyone but root; the
    /// kernel does that for writes, but leaves fallocate to the file system.
    pub fn fallocate(&self, ctx: &Ctx, ino: Ino, mode: i32, off: u64, len: u64) -> Result<()> {
        self.writable()?;
        self.forget_open(ino);
        // An allocation larger than the space df shows cannot be promised
        // (ENOSPC, as a local file system says); punching and zeroing free
        // space are always allowed.
        let allocates = mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) == 0;
        if allocates && len > self.meta.statfs()?.avail_space {
            return Err(VfsError::new(
                libc::ENOSPC,
                "fallocate asks for more than the volume has free",
            ));
        }
        if allocates && self.meta.limits_apply() {
            let parent = self.meta.getattr(ino)?.parent;
            self.meta
                .check_quota(parent, i64::try_from(len).unwrap_or(i64::MAX), 0)?;
        }
        let of = self.open_file(ino);
        if let Some(of) = &of {
            self.flush_file(ino, of)?;
        }
        let r = self.meta.fallocate(ino, mode, off, len)?;
        let privileged = u32::from(r.attr.mode) & (libc::S_ISUID | libc::S_ISGID);
        if ctx.uid != 0 && privileged != 0 {
            let mut keep = u32::from(r.attr.mode) & !libc::S_ISUID;
            // As the kernel decides (setattr_should_drop_sgid): setgid
            // with group execute is always dropped; without it, unless
            // the caller is in the file's group (supplementary groups are
            // not known here: the caller's own group is what counts).
            if keep & libc::S_IXGRP != 0 || ctx.gid != r.attr.gid {
                keep &= !libc::S_ISGID;
            }
            if keep != u32::from(r.attr.mode) {
                let set = SetAttr {
                    mode: Some(keep),
                    ..Default::default()
                };
                self.meta.setattr(ino, &set)?;
            }
        }
        if let Some(of) = &of {
            of.invalidate();
        }
        self.release_slices(&r.freed, true);
        Ok(())
    }

    /// Copy between files by sharing slices: no data moves.
    pub fn copy_file_range(
        &self,
        ino_in: Ino,
        off_in: u64,
        ino_out: Ino,
        off_out: u64,
        len: u64,
    ) -> Result<u64> {
        self.writable()?;
        if ino_in == ino_out && off_in.max(off_out) < off_in.min(off_out).saturating_add(len) {
            return Err(VfsError::new(
                libc::EINVAL,
                "overlapping copy within one file",
            ));
        }
        for ino in [ino_in, ino_out] {
            if let Some(of) = self.open_file(ino) {
                self.flush_file(ino, &of)?;
            }
        }
        if self.meta.limits_apply() {
            let out = self.meta.getattr(ino_out)?;
            let growth = off_out.saturating_add(len).saturating_sub(out.length);
            self.meta
                .check_quota(out.parent, i64::try_from(growth).unwrap_or(i64::MAX), 0)?;
        }
        let (_, n) = self
            .meta
            .copy_range(ino_in, off_in, ino_out, off_out, len)?;
        self.forget_open(ino_out);
        if let Some(of) = self.open_file(ino_out) {
            of.invalidate();
        }
        Ok(n)
    }
}
