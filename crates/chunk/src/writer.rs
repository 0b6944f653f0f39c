//! Buffered writes of one file.
//!
//! Writes become append-only slices: a write that continues the newest slice
//! of its chunk extends it, anything else starts a new slice (later slices
//! win). Every block that fills up is uploaded at once in the background;
//! `flush` uploads the partial tail blocks, waits for all uploads and then
//! commits the slice records in one metadata transaction. Reads see buffered
//! bytes through [`FileWriter::overlay`].

use parking_lot::Mutex;
use std::sync::Arc;

use bytes::Bytes;
use tessera_meta::{Ino, SliceKind, SliceRecord, CHUNK_SIZE};
use tokio::task::JoinHandle;
use tracing::debug;

use crate::{ChunkError, ChunkStore, Result};

enum Block {
    Filling(Vec<u8>),
    Sealed(Bytes),
}

impl Block {
    fn bytes(&self) -> &[u8] {
        match self {
            Block::Filling(v) => v,
            Block::Sealed(b) => b,
        }
    }
}

struct Slice {
    chunk: u32,
    pos: u32,
    id: u64,
    len: u32,
    blocks: Vec<Block>,
    uploads: Vec<JoinHandle<Result<()>>>,
}

impl Slice {
    fn file_offset(&self) -> u64 {
        u64::from(self.chunk) * CHUNK_SIZE + u64::from(self.pos)
    }

    fn record(&self) -> SliceRecord {
        SliceRecord {
            kind: SliceKind::Internal,
            pos: self.pos,
            id: self.id,
            size: u64::from(self.len),
            off: 0,
            len: self.len,
        }
    }

    /// Copy the bytes of this slice that overlap `[off, off + buf.len())`.
    fn copy_into(&self, off: u64, buf: &mut [u8], block_size: usize) {
        let start = self.file_offset();
        let end = start + u64::from(self.len);
        let (a, b) = (start.max(off), end.min(off + buf.len() as u64));
        if a >= b {
            return;
        }
        let mut in_slice = (a - start) as usize;
        let mut out = (a - off) as usize;
        let mut left = (b - a) as usize;
        while left > 0 {
            let block = &self.blocks[in_slice / block_size];
            let in_block = in_slice % block_size;
            let n = left.min(block.bytes().len() - in_block);
            buf[out..out + n].copy_from_slice(&block.bytes()[in_block..in_block + n]);
            in_slice += n;
            out += n;
            left -= n;
        }
    }
}

/// A filled (or final) block, ready to upload and cache, in a buffer of
/// its own length: the memory cache counts a block by its length, so it
/// must not keep a larger allocation alive behind it.
fn sealed_block(buf: &mut Vec<u8>) -> Bytes {
    let mut block = std::mem::take(buf);
    block.shrink_to_fit();
    Bytes::from(block)
}

#[derive(Default)]
struct State {
    /// Slices being committed by a flush; older than every dirty slice.
    flushing: Vec<Slice>,
    dirty: Vec<Slice>,
    /// O_APPEND writes not committed yet. Their place in the file is only
    /// known when they commit: the end of the file at that moment, which
    /// another mount may have moved.
    appended: Vec<u8>,
    /// End of the furthest buffered write.
    length: u64,
    buffered: usize,
    failed: Option<String>,
    /// When the latest buffered write arrived: the file's modification
    /// time as long as that write is not committed (the commit stamps its
    /// own, later time).
    written_at: (i64, u32),
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        {
            let st = self.state.lock();
            self.chunks.buffer_shrink(st.buffered);
        }
    }
}

/// What a [`FileWriter::flush`] did.
#[derive(Debug, Default)]
pub struct Flushed {
    /// Chunks whose record count calls for compaction.
    pub compact: Vec<u32>,
    /// Whether anything was committed (the file changed).
    pub committed: bool,
}

/// The write buffer of one open file (shared by its handles).
pub struct FileWriter {
    ino: Ino,
    chunks: Arc<ChunkStore>,
    state: Mutex<State>,
    /// Serialises flushes so that slices commit in write order.
    flush_lock: Mutex<()>,
}

/// Whether a failed flush certainly left its slices uncommitted, so their
/// blocks may go: an upload failed, or the engine refused the commit. An
/// engine error may have come after the commit took effect (a connection
/// lost on the way back), and then the blocks are kept for `tessera gc`
/// to judge against the metadata.
fn surely_not_committed(e: &ChunkError) -> bool {
    !matches!(e, ChunkError::Meta(tessera_meta::MetaError::Engine(_)))
}

impl FileWriter {
    pub fn new(ino: Ino, chunks: Arc<ChunkStore>) -> Self {
        FileWriter {
            ino,
            chunks,
            state: Mutex::new(State::default()),
            flush_lock: Mutex::new(()),
        }
    }

    /// Buffer a write. Returns true when the buffer is over its budget and
    /// the caller should flush.
    pub fn write(&self, off: u64, data: &[u8]) -> Result<bool> {
        let bs = self.chunks.config.block_size;
        // Appends still waiting for their place go first, in write order.
        if self.has_appends() {
            self.flush()?;
        }
        let mut st = self.state.lock();
        if let Some(e) = &st.failed {
            return Err(ChunkError::EarlierWriteFailed { reason: e.clone() });
        }
        st.written_at = tessera_meta::now();
        let mut done = 0usize;
        // A slice id fetched with the state unlocked (the engine is asked
        // once per batch of ids; no round trip is made under the lock).
        let mut fetched_id: Option<u64> = None;
        // Bytes of buffer memory this write allocates: what the mount's
        // budget counts (a buffer's capacity, not only the bytes in it).
        let mut allocated = 0usize;
        while done < data.len() {
            let pos_file = off + done as u64;
            let chunk = (pos_file / CHUNK_SIZE) as u32;
            let pos = (pos_file % CHUNK_SIZE) as u32;
            let n = (data.len() - done).min((CHUNK_SIZE - u64::from(pos)) as usize);
            let piece = &data[done..done + n];
            let extend = st
                .dirty
                .iter()
                .rposition(|s| s.chunk == chunk)
                .filter(|&i| st.dirty[i].pos + st.dirty[i].len == pos);
            let idx = match extend {
                Some(i) => i,
                None => {
                    let spare = fetched_id
                        .take()
                        .or_else(|| self.chunks.meta.spare_slice_id());
                    let Some(id) = spare else {
                        drop(st);
                        fetched_id = Some(self.chunks.meta.new_slice_id()?);
                        st = self.state.lock();
                        continue;
                    };
                    st.dirty.push(Slice {
                        chunk,
                        pos,
                        id,
                        len: 0,
                        blocks: Vec::new(),
                        uploads: Vec::new(),
                    });
                    st.dirty.len() - 1
                }
            };
            let slice = &mut st.dirty[idx];
            let mut left = piece;
            while !left.is_empty() {
                if !matches!(slice.blocks.last(), Some(Block::Filling(v)) if v.len() < bs) {
                    // A slice that has filled a block is a stream: it takes
                    // the next whole block at once rather than growing (and
                    // copying) it. A slice's first block takes what the
                    // write needs: random small writes (pages of an mmap)
                    // must not each hold a large buffer.
                    let capacity = if slice.blocks.is_empty() {
                        left.len().min(bs)
                    } else {
                        bs
                    };
                    slice
                        .blocks
                        .push(Block::Filling(Vec::with_capacity(capacity)));
                    allocated += capacity;
                }
                let index = slice.blocks.len() - 1;
                let Some(Block::Filling(buf)) = slice.blocks.last_mut() else {
                    unreachable!("a filling block was pushed above");
                };
                let take = left.len().min(bs - buf.len());
                let before = buf.capacity();
                buf.extend_from_slice(&left[..take]);
                allocated += buf.capacity() - before;
                left = &left[take..];
                slice.len += take as u32;
                if buf.len() == bs {
                    let sealed = sealed_block(buf);
                    let handle = self.spawn_upload(slice.id, index as u64, sealed.clone());
                    slice.blocks[index] = Block::Sealed(sealed);
                    slice.uploads.push(handle);
                }
            }
            done += n;
        }
        st.length = st.length.max(off + data.len() as u64);
        st.buffered += allocated;
        // Over the mount's budget, the writer flushes its own buffer: it
        // waits for its uploads, which is what slows it to the store's pace.
        Ok(self.chunks.buffer_grow(allocated))
    }

    /// Buffer an O_APPEND write. Positional writes buffered before it are
    /// committed first so the file keeps the order of the writes. Returns
    /// true when the caller should flush (a block's worth of appends, or
    /// the mount's budget used).
    pub fn append(&self, data: &[u8]) -> Result<bool> {
        let positional_first = !self.state.lock().dirty.is_empty();
        if positional_first {
            self.flush()?;
        }
        let mut st = self.state.lock();
        if let Some(e) = &st.failed {
            return Err(ChunkError::EarlierWriteFailed { reason: e.clone() });
        }
        st.appended.extend_from_slice(data);
        st.buffered += data.len();
        st.written_at = tessera_meta::now();
        let over_budget = self.chunks.buffer_grow(data.len());
        Ok(over_budget || st.appended.len() >= self.chunks.config.block_size)
    }

    /// Whether O_APPEND writes wait to be committed; until they are, this
    /// mount does not know where they will land.
    pub fn has_appends(&self) -> bool {
        {
            let s = self.state.lock();
            !s.appended.is_empty()
        }
    }

    fn spawn_upload(&self, id: u64, index: u64, data: Bytes) -> JoinHandle<Result<()>> {
        let chunks = self.chunks.clone();
        self.chunks
            .rt
            .spawn(async move { chunks.put_block(id, index, data).await })
    }

    /// Copy buffered bytes over `buf`, which holds committed data at `off`.
    pub fn overlay(&self, off: u64, buf: &mut [u8]) {
        let bs = self.chunks.config.block_size;
        {
            let st = self.state.lock();
            for s in st.flushing.iter().chain(st.dirty.iter()) {
                s.copy_into(off, buf, bs);
            }
        }
    }

    /// End of the furthest buffered write, 0 when nothing is buffered.
    pub fn buffered_length(&self) -> u64 {
        {
            let s = self.state.lock();
            {
                if s.dirty.is_empty() && s.flushing.is_empty() {
                    0
                } else {
                    s.length
                }
            }
        }
    }

    /// The time of the latest write not yet committed, if any: what stat
    /// shows as the file's modification time meanwhile.
    pub fn uncommitted_mtime(&self) -> Option<(i64, u32)> {
        let st = self.state.lock();
        let dirty = !st.dirty.is_empty() || !st.flushing.is_empty() || !st.appended.is_empty();
        dirty.then_some(st.written_at)
    }

    pub fn has_dirty(&self) -> bool {
        {
            let s = self.state.lock();
            !s.dirty.is_empty() || !s.flushing.is_empty() || !s.appended.is_empty()
        }
    }

    /// Upload everything buffered and commit it.
    pub fn flush(&self) -> Result<Flushed> {
        let _order = self.flush_lock.lock();
        let positional = self.flush_positional()?;
        let appended = self.flush_appends()?;
        let committed = positional.is_some() || appended.is_some();
        let mut compact: Vec<u32> = positional.into_iter().chain(appended).flatten().collect();
        compact.sort_unstable();
        compact.dedup();
        Ok(Flushed { compact, committed })
    }

    /// Upload the buffered appends as one slice and place it at the end of
    /// the file in the commit transaction.
    fn flush_appends(&self) -> Result<Option<Vec<u32>>> {
        let data = {
            let mut st = self.state.lock();
            if st.appended.is_empty() {
                return Ok(None);
            }
            let data = Bytes::from(std::mem::take(&mut st.appended));
            self.chunks.buffer_shrink(data.len());
            st.buffered = st.buffered.saturating_sub(data.len());
            data
        };
        let _span =
            tracing::debug_span!("flush_appends", ino = self.ino, len = data.len()).entered();
        let id = self.chunks.meta.new_slice_id().map_err(ChunkError::Meta)?;
        let committed = self
            .chunks
            .rt
            .block_on(self.chunks.upload_slice(id, &data))
            .and_then(|()| {
                self.chunks
                    .meta
                    .append_slice(self.ino, id, data.len() as u64)
                    .map_err(ChunkError::Meta)
            });
        if let Err(e) = &committed {
            if surely_not_committed(e) {
                self.chunks.abandon_slices(vec![(id, data.len() as u64)]);
            }
        }
        match committed {
            Ok(appended) => {
                debug!(
                    ino = self.ino,
                    at = appended.at,
                    len = data.len(),
                    "committed appends"
                );
                Ok(Some(
                    appended
                        .touched
                        .into_iter()
                        .filter(|(_, n)| *n >= self.chunks.config.compact_threshold)
                        .map(|(c, _)| c)
                        .collect(),
                ))
            }
            Err(e) => {
                {
                    let mut st = self.state.lock();
                    st.failed = Some(e.to_string());
                }
                Err(e)
            }
        }
    }

    fn flush_positional(&self) -> Result<Option<Vec<u32>>> {
        let (uploads, records, length) = {
            let mut st = self.state.lock();
            if let Some(e) = &st.failed {
                return Err(ChunkError::EarlierWriteFailed { reason: e.clone() });
            }
            if st.dirty.is_empty() {
                return Ok(None);
            }
            let mut dirty = std::mem::take(&mut st.dirty);
            let mut uploads = Vec::new();
            let mut records = Vec::new();
            for s in &mut dirty {
                let index = s.blocks.len().saturating_sub(1);
                if let Some(Block::Filling(buf)) = s.blocks.last_mut() {
                    let sealed = sealed_block(buf);
                    s.uploads
                        .push(self.spawn_upload(s.id, index as u64, sealed.clone()));
                    s.blocks[index] = Block::Sealed(sealed);
                }
                uploads.append(&mut s.uploads);
                records.push((s.chunk, s.record()));
            }
            let length = dirty
                .iter()
                .map(|s| s.file_offset() + u64::from(s.len))
                .max()
                .unwrap_or(0);
            st.flushing = dirty;
            let appended = st.appended.len();
            self.chunks.buffer_shrink(st.buffered - appended);
            st.buffered = appended;
            (uploads, records, length)
        };
        let _span = tracing::debug_span!("flush", ino = self.ino, slices = records.len()).entered();
        let mut result = Ok(());
        let joined = self.chunks.rt.block_on(futures::future::join_all(uploads));
        for r in joined {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(source) => {
                    result = Err(ChunkError::Task {
                        what: "uploading a block",
                        source,
                    })
                }
            }
        }
        let committed = result.and_then(|()| {
            self.chunks
                .meta
                .write_slices(self.ino, &records, length)
                .map_err(ChunkError::Meta)
        });
        if let Err(e) = &committed {
            if surely_not_committed(e) {
                let slices = records.iter().map(|(_, r)| (r.id, r.size)).collect();
                self.chunks.abandon_slices(slices);
            }
        }
        let mut st = self.state.lock();
        st.flushing.clear();
        // Only writes that arrived during the flush are still buffered.
        st.length = st
            .dirty
            .iter()
            .map(|s| s.file_offset() + u64::from(s.len))
            .max()
            .unwrap_or(0);
        match committed {
            Ok((_, most)) => {
                debug!(ino = self.ino, most, "committed slices");
                let mut compact: Vec<u32> = if most >= self.chunks.config.compact_threshold {
                    records.iter().map(|(c, _)| *c).collect()
                } else {
                    Vec::new()
                };
                compact.dedup();
                Ok(Some(compact))
            }
            Err(e) => {
                st.failed = Some(e.to_string());
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::{Condvar, Mutex};
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    use tessera_meta::kv::{KvEngine, KvTxn};

    /// A metadata engine whose transactions wait while its gate is closed.
    #[derive(Default)]
    struct Gated {
        inner: tessera_meta::engines::MemoryEngine,
        closed: Mutex<bool>,
        opened: Condvar,
        waiting: std::sync::atomic::AtomicBool,
    }

    impl Gated {
        fn set(&self, closed: bool) {
            {
                let mut c = self.closed.lock();
                *c = closed;
            }
            self.opened.notify_all();
        }
    }

    impl KvEngine for Gated {
        fn name(&self) -> &'static str {
            "gated"
        }

        fn run_once(
            &self,
            read_only: bool,
            f: &mut dyn FnMut(&mut dyn KvTxn) -> tessera_meta::Result<()>,
        ) -> tessera_meta::Result<()> {
            let mut closed = self.closed.lock();
            if *closed {
                self.waiting.store(true, Ordering::SeqCst);
            }
            self.opened.wait_while(&mut closed, |c| *c);
            drop(closed);
            self.inner.run_once(read_only, f)
        }

        fn reset(&self) -> tessera_meta::Result<()> {
            self.inner.reset()
        }
    }

    /// Taking a new batch of slice ids is a metadata round trip: the
    /// writer's state stays unlocked meanwhile, so reads of the file (which
    /// overlay its buffered bytes) do not wait on the engine.
    #[test]
    fn a_write_fetching_slice_ids_leaves_the_writer_unlocked() {
        let engine = Arc::new(Gated::default());
        let (chunks, _rt) = crate::store_for_tests(
            engine.clone(),
            crate::ChunkConfig {
                volume: "t".into(),
                uuid: "uuid-writer".into(),
                ..Default::default()
            },
        );
        let writer = Arc::new(FileWriter::new(2, chunks));
        engine.set(true);
        let w = writer.clone();
        let writing = std::thread::spawn(move || w.write(0, b"buffered bytes"));
        for _ in 0..500 {
            if engine.waiting.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            engine.waiting.load(Ordering::SeqCst),
            "the write asks for slice ids"
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let w = writer.clone();
        std::thread::spawn(move || tx.send(w.buffered_length()));
        let seen = rx.recv_timeout(Duration::from_secs(5));
        engine.set(false);
        assert!(
            seen.is_ok(),
            "the writer's state was locked across the round trip"
        );
        writing.join().expect("writer thread").expect("write");
        assert_eq!(writer.buffered_length(), 14);
    }
}
