//! The data path: slices and blocks between the file system and object
//! storage.
//!
//! * [`ChunkStore`] reads the visible bytes of a file range (committed slices
//!   resolved into segments, blocks fetched once and cached), deletes the
//!   blocks of freed slices and compacts fragmented chunks.
//! * [`writer::FileWriter`] buffers a file's writes as append-only slices,
//!   uploads full blocks while the writer continues, and commits slices to
//!   metadata only after their blocks are stored.
//!
//! Block keys: `{volume}/chunks/{id/1_000_000}/{id/1_000}/{id}_{index}_{len}`.

mod codec;
pub mod writer;

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;
use tessera_blockcache::MemCache;
use tessera_meta::{Compression, Ino, Meta, MetaError, SliceKind, SliceRecord, CHUNK_SIZE};
use tessera_object::{DynStore, ObjectError};
use tracing::{debug, warn};

pub use writer::FileWriter;

/// Errors of the data path.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error(transparent)]
    Object(#[from] ObjectError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("corrupt block {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("{0}")]
    Unsupported(String),
}

impl ChunkError {
    /// A block that should exist is gone: the records it came from are stale.
    pub fn is_missing_block(&self) -> bool {
        matches!(self, ChunkError::Object(ObjectError::NotFound(_)))
    }

    pub fn errno(&self) -> i32 {
        match self {
            ChunkError::Meta(e) => e.errno(),
            _ => libc::EIO,
        }
    }
}

pub type Result<T> = std::result::Result<T, ChunkError>;

/// Settings of the data path of one mount.
#[derive(Debug, Clone)]
pub struct ChunkConfig {
    /// Volume name: the key prefix of every block.
    pub volume: String,
    pub block_size: usize,
    pub compression: Compression,
    /// Bytes of memory for cached blocks.
    pub mem_cache_size: usize,
    /// Buffered bytes per file before its writes are flushed.
    pub buffer_size: usize,
    /// Records in one chunk that trigger compaction.
    pub compact_threshold: usize,
}

impl Default for ChunkConfig {
    fn default() -> Self {
        ChunkConfig {
            volume: "tessera".into(),
            block_size: 4 << 20,
            compression: Compression::None,
            mem_cache_size: 512 << 20,
            buffer_size: 256 << 20,
            compact_threshold: 64,
        }
    }
}

type Flight = Arc<(Mutex<Option<std::result::Result<Bytes, String>>>, Condvar)>;

/// Object storage, cache and metadata, put together for file data.
pub struct ChunkStore {
    pub(crate) store: DynStore,
    pub(crate) meta: Arc<Meta>,
    pub(crate) rt: tokio::runtime::Handle,
    pub(crate) config: ChunkConfig,
    pub cache: MemCache,
    /// Block fetches in flight, so that concurrent readers share one GET.
    inflight: Mutex<HashMap<String, Flight>>,
}

impl ChunkStore {
    pub fn new(
        store: DynStore,
        meta: Arc<Meta>,
        rt: tokio::runtime::Handle,
        config: ChunkConfig,
    ) -> Arc<Self> {
        Arc::new(ChunkStore {
            cache: MemCache::new(config.mem_cache_size),
            store,
            meta,
            rt,
            config,
            inflight: Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &ChunkConfig {
        &self.config
    }

    pub fn store(&self) -> &DynStore {
        &self.store
    }

    /// Object key of block `index` (of length `len`) of slice `id`.
    pub fn block_key(&self, id: u64, index: u64, len: u64) -> String {
        block_key(&self.config.volume, id, index, len)
    }

    /// Lengths of the blocks a slice of `size` bytes is stored as.
    pub fn block_len(&self, size: u64, index: u64) -> u64 {
        let bs = self.config.block_size as u64;
        (size - index * bs).min(bs)
    }

    /// One whole block, from the cache or the store (one fetch per block at a time).
    pub fn read_block(&self, id: u64, size: u64, index: u64) -> Result<Bytes> {
        let len = self.block_len(size, index);
        let key = self.block_key(id, index, len);
        if let Some(b) = self.cache.get(&key) {
            return Ok(b);
        }
        let (flight, leader) = {
            let mut map = self
                .inflight
                .lock()
                .map_err(|_| ChunkError::Unsupported("inflight lock poisoned".into()))?;
            match map.get(&key) {
                Some(f) => (f.clone(), false),
                None => {
                    let f: Flight = Arc::new((Mutex::new(None), Condvar::new()));
                    map.insert(key.clone(), f.clone());
                    (f, true)
                }
            }
        };
        if !leader {
            let (lock, cv) = &*flight;
            let mut slot = lock
                .lock()
                .map_err(|_| ChunkError::Unsupported("flight lock poisoned".into()))?;
            while slot.is_none() {
                slot = cv
                    .wait(slot)
                    .map_err(|_| ChunkError::Unsupported("flight lock poisoned".into()))?;
            }
            return match slot.as_ref() {
                Some(Ok(b)) => Ok(b.clone()),
                Some(Err(e)) => Err(ChunkError::Corrupt {
                    key,
                    reason: e.clone(),
                }),
                None => unreachable!("loop exits only once the slot is filled"),
            };
        }
        let res = self.fetch_block(&key, len);
        if let Ok(b) = &res {
            self.cache.insert(&key, b.clone());
        }
        {
            let (lock, cv) = &*flight;
            if let Ok(mut slot) = lock.lock() {
                *slot = Some(match &res {
                    Ok(b) => Ok(b.clone()),
                    Err(e) => Err(e.to_string()),
                });
            }
            cv.notify_all();
        }
        if let Ok(mut map) = self.inflight.lock() {
            map.remove(&key);
        }
        res
    }

    fn fetch_block(&self, key: &str, len: u64) -> Result<Bytes> {
        let _span = tracing::debug_span!("fetch_block", key).entered();
        let raw = self.rt.block_on(self.store.get(key, None))?;
        let data = codec::decode(self.config.compression, raw, len as usize).map_err(|reason| {
            ChunkError::Corrupt {
                key: key.to_string(),
                reason,
            }
        })?;
        if data.len() as u64 != len {
            return Err(ChunkError::Corrupt {
                key: key.to_string(),
                reason: format!("expected {len} bytes, got {}", data.len()),
            });
        }
        Ok(data)
    }

    /// Store one block (compressing it as the volume says).
    pub async fn put_block(&self, id: u64, index: u64, data: Bytes) -> Result<()> {
        let key = self.block_key(id, index, data.len() as u64);
        let body = codec::encode(self.config.compression, &data).map_err(|reason| {
            ChunkError::Corrupt {
                key: key.clone(),
                reason,
            }
        })?;
        self.store.put(&key, body).await?;
        self.cache.insert(&key, data);
        Ok(())
    }

    /// Fill `buf` with bytes `[off, off + buf.len())` of a chunk made of `records`.
    /// `buf` must be zeroed by the caller (holes stay zero).
    pub fn read_records(&self, records: &[SliceRecord], off: u32, buf: &mut [u8]) -> Result<()> {
        let end = off + buf.len() as u32;
        for seg in tessera_meta::slice::visible_segments(records) {
            let (a, b) = (seg.pos.max(off), seg.end().min(end));
            if a >= b || seg.record.is_hole() {
                continue;
            }
            if seg.record.kind == SliceKind::External {
                return Err(ChunkError::Unsupported(format!(
                    "slice {} points at an external object; reading imported data needs `tessera import` support",
                    seg.record.id
                )));
            }
            let mut slice_off = seg.off + u64::from(a - seg.pos);
            let mut out = (a - off) as usize;
            let mut left = (b - a) as usize;
            let bs = self.config.block_size as u64;
            while left > 0 {
                let index = slice_off / bs;
                let block = self.read_block(seg.record.id, seg.record.size, index)?;
                let in_block = (slice_off - index * bs) as usize;
                let n = left.min(block.len() - in_block);
                buf[out..out + n].copy_from_slice(&block[in_block..in_block + n]);
                out += n;
                left -= n;
                slice_off += n as u64;
            }
        }
        Ok(())
    }

    /// Read committed data at `off` into `buf` (zeroed by the caller), the
    /// slice records of each chunk coming from `records` (the caller's cache).
    pub fn read_committed_with(
        &self,
        off: u64,
        buf: &mut [u8],
        records: &mut dyn FnMut(u32) -> Result<Arc<Vec<SliceRecord>>>,
    ) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = off + done as u64;
            let index = (pos / CHUNK_SIZE) as u32;
            let in_chunk = (pos % CHUNK_SIZE) as u32;
            let n = (buf.len() - done).min((CHUNK_SIZE - u64::from(in_chunk)) as usize);
            let records = records(index)?;
            if !records.is_empty() {
                self.read_records(&records, in_chunk, &mut buf[done..done + n])?;
            }
            done += n;
        }
        Ok(())
    }

    /// Delete the blocks of slices nothing refers to any more.
    pub fn delete_slices(&self, freed: &[(u64, u64)]) {
        let bs = self.config.block_size as u64;
        for &(id, size) in freed {
            for index in 0..size.div_ceil(bs) {
                let key = self.block_key(id, index, self.block_len(size, index));
                self.cache.remove(&key);
                if let Err(e) = self.rt.block_on(self.store.delete(&key)) {
                    warn!(%key, error = %e, "could not delete block; it stays as garbage");
                }
            }
        }
    }

    /// Remove the data of deleted files. Returns how many files were cleaned.
    pub fn clean_deleted_files(&self) -> Result<usize> {
        let pending = self.meta.pending_deletes(1000)?;
        for &(ino, len) in &pending {
            let freed = self.meta.cleanup_deleted(ino, len)?;
            debug!(ino, slices = freed.len(), "deleting data of removed file");
            self.delete_slices(&freed);
        }
        Ok(pending.len())
    }

    /// Rewrite a fragmented chunk's visible bytes as one slice and swap it
    /// in. Returns the replaced slices, which the caller deletes once no
    /// cached record list points at them; None when nothing changed.
    pub fn compact(&self, ino: Ino, index: u32) -> Result<Option<Vec<(u64, u64)>>> {
        let raw = self.meta.read_chunk_raw(ino, index)?;
        let records = SliceRecord::decode_all(&raw).map_err(ChunkError::Meta)?;
        if records.len() < 2 {
            return Ok(None);
        }
        let segs = tessera_meta::slice::visible_segments(&records);
        let end = segs.iter().map(|s| s.end()).max().unwrap_or(0);
        let start = segs
            .iter()
            .filter(|s| !s.record.is_hole())
            .map(|s| s.pos)
            .min()
            .unwrap_or(end);
        if segs.iter().any(|s| s.record.kind == SliceKind::External) {
            return Ok(None);
        }
        let mut replacement = Vec::new();
        let mut new_slice = None;
        if end > start {
            let mut data = vec![0u8; (end - start) as usize];
            self.read_records(&records, start, &mut data)?;
            let id = self.meta.new_slice_id()?;
            let data = Bytes::from(data);
            self.rt.block_on(self.upload_slice(id, &data))?;
            replacement.push(SliceRecord {
                kind: SliceKind::Internal,
                pos: start,
                id,
                size: data.len() as u64,
                off: 0,
                len: data.len() as u32,
            });
            new_slice = Some((id, data.len() as u64));
        }
        match self
            .meta
            .replace_chunk_prefix(ino, index, &raw, &replacement)?
        {
            Some(freed) => {
                debug!(
                    ino,
                    index,
                    records = records.len(),
                    freed = freed.len(),
                    "compacted chunk"
                );
                Ok(Some(freed))
            }
            None => {
                if let Some(s) = new_slice {
                    self.delete_slices(&[s]);
                }
                Ok(None)
            }
        }
    }

    /// Upload a whole slice, its blocks concurrently.
    pub async fn upload_slice(&self, id: u64, data: &Bytes) -> Result<()> {
        let bs = self.config.block_size;
        let tasks = (0..data.len())
            .step_by(bs)
            .enumerate()
            .map(|(index, start)| {
                let block = data.slice(start..(start + bs).min(data.len()));
                self.put_block(id, index as u64, block)
            });
        futures::future::try_join_all(tasks).await?;
        Ok(())
    }
}

pub fn block_key(volume: &str, id: u64, index: u64, len: u64) -> String {
    format!(
        "{volume}/chunks/{}/{}/{id}_{index}_{len}",
        id / 1_000_000,
        id / 1_000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_keys_follow_the_layout() {
        assert_eq!(
            block_key("vol", 1_234_567, 2, 4096),
            "vol/chunks/1/1234/1234567_2_4096"
        );
    }
}
