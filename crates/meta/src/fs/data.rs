//! File data in metadata: chunk lists of slice records, writes, truncate,
//! fallocate, copy_file_range, compaction, and the reference counts of
//! shared slices.

use super::*;

impl Meta {
    pub fn read_chunk(&self, ino: Ino, index: u32) -> Result<Vec<SliceRecord>> {
        let raw = self.read_txn(|tx| tx.get(&keys::chunk(ino, index)))?;
        match raw {
            Some(v) => SliceRecord::decode_all(&v),
            None => Ok(Vec::new()),
        }
    }

    /// A file's attributes and the slice records of its first `chunks`
    /// chunks, read together (one round trip where the engine batches
    /// reads): what an open for reading needs before the first read.
    /// Chunks past the end come back empty.
    pub fn getattr_with_chunks(
        &self,
        ino: Ino,
        chunks: u32,
    ) -> Result<(Attr, Vec<Vec<SliceRecord>>)> {
        let mut owned = vec![keys::attr(ino)];
        owned.extend((0..chunks).map(|i| keys::chunk(ino, i)));
        let refs: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        let mut raw = self.read_txn(|tx| tx.get_many(&refs))?.into_iter();
        let attr = decode_attr(raw.next().flatten())?;
        let records = raw
            .map(|v| v.map_or(Ok(Vec::new()), |v| SliceRecord::decode_all(&v)))
            .collect::<Result<Vec<_>>>()?;
        Ok((attr, records))
    }

    /// The slice records of chunks `range` of a file, read together.
    pub fn read_chunks(
        &self,
        ino: Ino,
        range: std::ops::Range<u32>,
    ) -> Result<Vec<Vec<SliceRecord>>> {
        let owned: Vec<Vec<u8>> = range.map(|i| keys::chunk(ino, i)).collect();
        let refs: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        self.read_txn(|tx| tx.get_many(&refs))?
            .into_iter()
            .map(|v| v.map_or(Ok(Vec::new()), |v| SliceRecord::decode_all(&v)))
            .collect()
    }

    pub fn read_chunk_raw(&self, ino: Ino, index: u32) -> Result<Vec<u8>> {
        Ok(self
            .read_txn(|tx| tx.get(&keys::chunk(ino, index)))?
            .unwrap_or_default())
    }

    /// Append written slices and grow the file to at least `min_length`.
    /// Returns the new attributes and the largest record count of any chunk
    /// touched (the compaction trigger).
    pub fn write_slices(
        &self,
        ino: Ino,
        slices: &[(u32, SliceRecord)],
        min_length: u64,
    ) -> Result<(Attr, usize)> {
        self.writable()?;
        end_within_limit(min_length, 0)?;
        let mut indices: Vec<u32> = slices.iter().map(|(index, _)| *index).collect();
        indices.sort_unstable();
        indices.dedup();
        let owned: Vec<Vec<u8>> = std::iter::once(keys::attr(ino))
            .chain(indices.iter().map(|&index| keys::chunk(ino, index)))
            .collect();
        let refs: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        self.txn(|tx| {
            // The attributes and every touched chunk's records in one read
            // (one round trip where the engine batches reads; a commit
            // over a far link was three: attributes, records, commit).
            let mut raw = tx.get_many(&refs)?.into_iter();
            let mut a = decode_attr(raw.next().flatten())?;
            if a.typ != FileType::File {
                return Err(MetaError::Invalid("write to a non-regular file".into()));
            }
            let mut chunks: std::collections::BTreeMap<u32, Vec<u8>> = indices
                .iter()
                .copied()
                .zip(raw.map(Option::unwrap_or_default))
                .collect();
            let usage = usage_of(&a);
            let mut most = 0usize;
            for (index, rec) in slices {
                let v = chunks.entry(*index).or_default();
                restore_for(&mut a, v, rec)?;
                rec.encode_into(v);
                most = most.max(v.len() / crate::slice::RECORD_LEN);
            }
            for (index, v) in &chunks {
                tx.set(&keys::chunk(ino, *index), v)?;
            }
            if min_length > a.length {
                a.length = min_length;
            }
            account(a.parent, usage_of(&a) - usage, 0);
            a.touch_mtime(now());
            put_attr(tx, ino, &a)?;
            Ok((a, most))
        })
    }

    /// Place the stored slice `id` (`len` bytes) at the end of the file, as
    /// the file's length stands inside this transaction. This is what makes
    /// O_APPEND writes from several mounts land one after another instead of
    /// over each other.
    pub fn append_slice(&self, ino: Ino, id: u64, len: u64) -> Result<Appended> {
        self.writable()?;
        self.txn(|tx| {
            let mut a = get_attr(tx, ino)?;
            if a.typ != FileType::File {
                return Err(MetaError::Invalid("write to a non-regular file".into()));
            }
            let start = a.length;
            end_within_limit(start, len)?;
            let usage = usage_of(&a);
            let mut touched = Vec::new();
            let mut done = 0u64;
            while done < len {
                let at = start + done;
                let index = (at / CHUNK_SIZE) as u32;
                let pos = at % CHUNK_SIZE;
                let n = (len - done).min(CHUNK_SIZE - pos);
                let rec = SliceRecord {
                    kind: crate::slice::SliceKind::Internal,
                    pos: pos as u32,
                    id,
                    size: len,
                    off: done,
                    len: n as u32,
                };
                if done > 0 {
                    // A slice split over chunks is one object referred to
                    // by several records.
                    add_slice_ref(tx, &rec)?;
                }
                let key = keys::chunk(ino, index);
                let mut v = tx.get(&key)?.unwrap_or_default();
                restore_for(&mut a, &v, &rec)?;
                rec.encode_into(&mut v);
                touched.push((index, v.len() / crate::slice::RECORD_LEN));
                tx.set(&key, &v)?;
                done += n;
            }
            a.length = start + len;
            account(a.parent, usage_of(&a) - usage, 0);
            a.touch_mtime(now());
            put_attr(tx, ino, &a)?;
            Ok(Appended {
                attr: a,
                at: start,
                touched,
            })
        })
    }

    /// Replace the first records of a chunk (exactly `old` bytes) with
    /// `replacement`, if the chunk still starts with them. Records appended
    /// since stay after it. Returns the freed slices, or None when the chunk
    /// changed under us.
    pub fn replace_chunk_prefix(
        &self,
        ino: Ino,
        index: u32,
        old: &[u8],
        replacement: &[SliceRecord],
    ) -> Result<Option<FreedSlices>> {
        self.txn(|tx| {
            let key = keys::chunk(ino, index);
            let cur = tx.get(&key)?.unwrap_or_default();
            if !cur.starts_with(old) {
                return Ok(None);
            }
            let mut v = SliceRecord::encode_all(replacement);
            v.extend_from_slice(&cur[old.len()..]);
            tx.set(&key, &v)?;
            // Compaction writes a chunk's holes between data as zeros.
            let (before, after) = (stored_in(&cur)?, stored_in(&v)?);
            if before != after {
                if let Ok(mut a) = get_attr(tx, ino) {
                    let usage = usage_of(&a);
                    restore(&mut a, before, after);
                    account(a.parent, usage_of(&a) - usage, 0);
                    put_attr(tx, ino, &a)?;
                }
            }
            let mut freed = Vec::new();
            for r in SliceRecord::decode_all(old)? {
                unref_slice(tx, &r, &mut freed)?;
            }
            Ok(Some(freed))
        })
    }

    /// Change a file's length. Shrinking drops whole chunks past the end and
    /// covers the tail of the last chunk with a hole.
    pub fn truncate(&self, ino: Ino, length: u64) -> Result<TruncateResult> {
        self.writable()?;
        end_within_limit(length, 0)?;
        let mut freed = Vec::new();
        for round in 0.. {
            let done = self.txn(|tx| {
                let mut a = get_attr(tx, ino)?;
                if a.typ == FileType::Dir {
                    return Err(MetaError::IsDir);
                }
                if a.typ != FileType::File {
                    return Err(MetaError::Invalid("truncate of a special file".into()));
                }
                let mut freed = Vec::new();
                let usage = usage_of(&a);
                if length < a.length {
                    // Too many whole chunks to drop in one transaction:
                    // they go first, in batches (see shrink_from_the_top).
                    if round < 3 {
                        let from = u32::try_from(length.div_ceil(CHUNK_SIZE)).unwrap_or(u32::MAX);
                        let end = crate::kv::prefix_end(&keys::chunk_prefix(ino));
                        let beyond = tx.scan(&keys::chunk(ino, from), &end, CHUNKS_PER_TXN + 1)?;
                        if beyond.len() > CHUNKS_PER_TXN {
                            return Ok(None);
                        }
                    }
                    let dropped =
                        Self::zero_range(tx, ino, length, a.length - length, &mut freed, true)?;
                    a.stored = a.stored.saturating_sub(dropped);
                }
                a.length = length;
                account(a.parent, usage_of(&a) - usage, 0);
                a.touch_mtime(now());
                put_attr(tx, ino, &a)?;
                Ok(Some(TruncateResult { attr: a, freed }))
            })?;
            match done {
                Some(last) => {
                    freed.extend(last.freed);
                    return Ok(TruncateResult {
                        attr: last.attr,
                        freed,
                    });
                }
                None => freed.extend(self.shrink_from_the_top(ino, length)?),
            }
        }
        unreachable!("the fourth round of a truncate always finishes")
    }

    /// Keys of the chunk lists of `ino` from chunk `first` on (read in
    /// pages, outside any writing transaction).
    pub(crate) fn chunk_keys_from(&self, ino: Ino, first: u64) -> Result<Vec<Vec<u8>>> {
        let Ok(first) = u32::try_from(first) else {
            return Ok(Vec::new());
        };
        let end = crate::kv::prefix_end(&keys::chunk_prefix(ino));
        let mut from = keys::chunk(ino, first);
        let mut found = Vec::new();
        loop {
            let rows = self.read_txn(|tx| tx.scan(&from, &end, 4096))?;
            let full = rows.len() == 4096;
            found.extend(rows.into_iter().map(|(k, _)| k));
            match found.last() {
                Some(last) if full => {
                    from = last.clone();
                    from.push(0);
                }
                _ => return Ok(found),
            }
        }
    }

    /// A file shrinking past more whole chunks than one transaction should
    /// drop loses them from the top down, [`CHUNKS_PER_TXN`] per
    /// transaction, each transaction leaving the file shorter and whole (a
    /// crash midway leaves a file cut at a chunk boundary, never one with
    /// holes punched in it). The last transaction of the truncate takes
    /// what is left. Work is proportional to the chunks that exist, never
    /// to the file's logical size.
    pub(crate) fn shrink_from_the_top(&self, ino: Ino, length: u64) -> Result<FreedSlices> {
        let mut freed = Vec::new();
        let keys = self.chunk_keys_from(ino, length.div_ceil(CHUNK_SIZE))?;
        let prefix_len = keys::chunk_prefix(ino).len();
        for batch in keys.rchunks(CHUNKS_PER_TXN) {
            let lowest = batch[0]
                .get(prefix_len..)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_be_bytes)
                .ok_or_else(|| MetaError::Corrupt("chunk key".into()))?;
            let cut = (u64::from(lowest) * CHUNK_SIZE).max(length);
            let dropped = self.txn(|tx| {
                let mut a = get_attr(tx, ino)?;
                if a.typ != FileType::File || a.length <= cut {
                    // Shrunk (or replaced) meanwhile: the last step decides.
                    return Ok(None);
                }
                let usage = usage_of(&a);
                let mut f = Vec::new();
                for k in batch {
                    if let Some(v) = tx.get(k)? {
                        a.stored = a.stored.saturating_sub(stored_in(&v)?);
                        for r in SliceRecord::decode_all(&v)? {
                            unref_slice(tx, &r, &mut f)?;
                        }
                        tx.delete(k)?;
                    }
                }
                a.length = cut;
                account(a.parent, usage_of(&a) - usage, 0);
                a.touch_mtime(now());
                put_attr(tx, ino, &a)?;
                Ok(Some(f))
            })?;
            match dropped {
                Some(f) => freed.extend(f),
                None => break,
            }
        }
        Ok(freed)
    }

    /// Make `[off, off + len)` read as zeros. With `drop_whole` (the range runs
    /// to the end of the file), chunks that start inside it are deleted.
    /// Only chunks that have a list are visited (one range scan), so the
    /// work follows the data stored, not the length of the range.
    /// Returns how many stored bytes the range held.
    pub(crate) fn zero_range(
        tx: &mut dyn KvTxn,
        ino: Ino,
        off: u64,
        len: u64,
        freed: &mut FreedSlices,
        drop_whole: bool,
    ) -> Result<u64> {
        let end = off.saturating_add(len).min(MAX_FILE_SIZE);
        if end <= off {
            return Ok(0);
        }
        let mut dropped = 0u64;
        let first = (off / CHUNK_SIZE) as u32;
        let last = ((end - 1) / CHUNK_SIZE) as u32;
        let upper = match last.checked_add(1) {
            Some(next) => keys::chunk(ino, next),
            None => crate::kv::prefix_end(&keys::chunk_prefix(ino)),
        };
        let prefix_len = keys::chunk_prefix(ino).len();
        for (key, mut v) in tx.scan(&keys::chunk(ino, first), &upper, usize::MAX)? {
            let index = key
                .get(prefix_len..)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_be_bytes)
                .ok_or_else(|| MetaError::Corrupt("chunk key".into()))?;
            let chunk_start = u64::from(index) * CHUNK_SIZE;
            let in_chunk = off.saturating_sub(chunk_start);
            let upto = (end - chunk_start).min(CHUNK_SIZE);
            if drop_whole && in_chunk == 0 {
                dropped += stored_in(&v)?;
                for r in SliceRecord::decode_all(&v)? {
                    unref_slice(tx, &r, freed)?;
                }
                tx.delete(&key)?;
            } else {
                dropped += stored_between(&v, in_chunk as u32, upto as u32)?;
                SliceRecord::hole(in_chunk as u32, (upto - in_chunk) as u32).encode_into(&mut v);
                tx.set(&key, &v)?;
            }
        }
        Ok(dropped)
    }

    /// Cover the holes of `[off, end)` with allocated-zero records, so the
    /// range counts as stored and a later write into it adds nothing to
    /// the file's allocation. Returns the bytes newly reserved. At most
    /// `RESERVE_CHUNKS` chunks are reserved in one call (one transaction);
    /// past them the range still reads as zeros, uncounted.
    pub(crate) fn reserve_range(tx: &mut dyn KvTxn, ino: Ino, off: u64, end: u64) -> Result<u64> {
        const RESERVE_CHUNKS: u64 = 1024;
        let end = end.min(MAX_FILE_SIZE);
        if end <= off {
            return Ok(0);
        }
        let first = off / CHUNK_SIZE;
        let last = ((end - 1) / CHUNK_SIZE).min(first + RESERVE_CHUNKS - 1);
        let mut reserved = 0u64;
        for index in first..=last {
            let chunk_start = index * CHUNK_SIZE;
            let a = off.saturating_sub(chunk_start) as u32;
            let b = (end - chunk_start).min(CHUNK_SIZE) as u32;
            let key = keys::chunk(ino, index as u32);
            let mut v = tx.get(&key)?.unwrap_or_default();
            let records = SliceRecord::decode_all(&v)?;
            let mut at = a;
            let mut gaps = Vec::new();
            for seg in crate::slice::visible_segments_in(&records, a, b) {
                if !seg.record.holds_space() {
                    continue;
                }
                if seg.pos > at {
                    gaps.push((at, seg.pos));
                }
                at = at.max(seg.end());
            }
            if b > at {
                gaps.push((at, b));
            }
            if gaps.is_empty() {
                continue;
            }
            for (x, y) in gaps {
                SliceRecord::allocated(x, y - x).encode_into(&mut v);
                reserved += u64::from(y - x);
            }
            tx.set(&key, &v)?;
        }
        Ok(reserved)
    }

    /// fallocate: plain allocation grows the file; `FALLOC_FL_PUNCH_HOLE`
    /// and `FALLOC_FL_ZERO_RANGE` make the range read as zeros.
    pub fn fallocate(&self, ino: Ino, mode: i32, off: u64, len: u64) -> Result<TruncateResult> {
        self.writable()?;
        if len == 0 {
            return Err(MetaError::Invalid("fallocate of zero bytes".into()));
        }
        end_within_limit(off, len)?;
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        let zero = mode & libc::FALLOC_FL_ZERO_RANGE != 0;
        let known =
            libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !known != 0 || (punch && !keep_size) {
            return Err(MetaError::Invalid(format!(
                "unsupported fallocate mode {mode:#x}"
            )));
        }
        self.txn(|tx| {
            let mut a = get_attr(tx, ino)?;
            if a.typ == FileType::Dir {
                return Err(MetaError::IsDir);
            }
            let mut freed = Vec::new();
            let usage = usage_of(&a);
            if punch || zero {
                let end = (off + len).min(a.length.max(if keep_size { 0 } else { off + len }));
                if end > off {
                    let dropped = Self::zero_range(tx, ino, off, end - off, &mut freed, false)?;
                    a.stored = a.stored.saturating_sub(dropped);
                }
            }
            // Allocation (and zeroing, which keeps the space allocated, as
            // Linux file systems do) reserves the range's holes.
            if !punch {
                a.stored += Self::reserve_range(tx, ino, off, off + len)?;
            }
            let t = now();
            if !keep_size && off + len > a.length {
                a.length = off + len;
            }
            account(a.parent, usage_of(&a) - usage, 0);
            // Every mode changes the file's times, as Linux file systems
            // do (ext4 and xfs stamp mtime and ctime even for KEEP_SIZE).
            a.touch_mtime(t);
            put_attr(tx, ino, &a)?;
            Ok(TruncateResult { attr: a, freed })
        })
    }

    /// Copy the slice records covering `[off_in, off_in + len)` of `src` to
    /// `off_out` of `dst`, sharing the underlying objects. Both files must
    /// have no buffered writes. Returns the destination's new attributes.
    pub fn copy_range(
        &self,
        src: Ino,
        off_in: u64,
        dst: Ino,
        off_out: u64,
        len: u64,
    ) -> Result<(Attr, u64)> {
        self.writable()?;
        self.txn(|tx| {
            let sa = get_attr(tx, src)?;
            let mut da = get_attr(tx, dst)?;
            if sa.typ != FileType::File || da.typ != FileType::File {
                return Err(MetaError::Invalid(
                    "copy_file_range needs regular files".into(),
                ));
            }
            if off_in >= sa.length {
                return Ok((da, 0));
            }
            let len = len.min(sa.length - off_in).min(COPY_RANGE_MAX);
            end_within_limit(off_out, len)?;
            let usage = usage_of(&da);
            let mut done = 0u64;
            while done < len {
                let s = off_in + done;
                let d = off_out + done;
                // Copy up to the nearer chunk boundary of source and destination.
                let step = (len - done)
                    .min(CHUNK_SIZE - s % CHUNK_SIZE)
                    .min(CHUNK_SIZE - d % CHUNK_SIZE);
                let src_pos = (s % CHUNK_SIZE) as u32;
                let dst_pos = (d % CHUNK_SIZE) as u32;
                let records = match tx.get(&keys::chunk(src, (s / CHUNK_SIZE) as u32))? {
                    Some(v) => SliceRecord::decode_all(&v)?,
                    None => Vec::new(),
                };
                let dkey = keys::chunk(dst, (d / CHUNK_SIZE) as u32);
                let mut dv = tx.get(&dkey)?.unwrap_or_default();
                let before = stored_between(&dv, dst_pos, dst_pos + step as u32)?;
                let after = crate::slice::data_bytes(&records, src_pos, src_pos + step as u32);
                // Start with a hole so that holes of the source stay holes.
                SliceRecord::hole(dst_pos, step as u32).encode_into(&mut dv);
                for seg in crate::slice::visible_segments(&records) {
                    let (a0, a1) = (seg.pos.max(src_pos), seg.end().min(src_pos + step as u32));
                    if a0 >= a1 {
                        continue;
                    }
                    let mut r = seg.record;
                    r.off = seg.off + u64::from(a0 - seg.pos);
                    r.len = a1 - a0;
                    r.pos = dst_pos + (a0 - src_pos);
                    add_slice_ref(tx, &r)?;
                    r.encode_into(&mut dv);
                }
                restore(&mut da, before, after);
                tx.set(&dkey, &dv)?;
                done += step;
            }
            let end = off_out + len;
            if end > da.length {
                da.length = end;
            }
            account(da.parent, usage_of(&da) - usage, 0);
            da.touch_mtime(now());
            put_attr(tx, dst, &da)?;
            Ok((da, len))
        })
    }
}
