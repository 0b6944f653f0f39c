//! The data path: slices and blocks between the file system and object
//! storage.
//!
//! * [`ChunkStore`] stores and deletes blocks, compacts fragmented chunks,
//!   and owns the caches; its read path (`read.rs`) resolves committed
//!   slices into blocks and fetches each block once, from memory, the disk
//!   cache or object storage, with readahead.
//! * `writeback.rs`: blocks staged on local disk and uploaded in the
//!   background (`--writeback`).
//! * [`writer::FileWriter`] buffers a file's writes as append-only slices,
//!   uploads full blocks while the writer continues, and commits slices to
//!   metadata only after their blocks are stored.
//!
//! Block keys: `{volume}/chunks/{id/1_000_000}/{id/1_000}/{id}_{index}_{len}`.
//!
//! On volumes of layout version 2 and later every block object is sealed
//! ([`tessera_blockcache::checksum`]): its body (compressed or not) is
//! followed by a CRC32C per 32 KiB piece, bound to the volume's UUID and the
//! block key, and every fetch checks it, so a byte flipped in the bucket
//! (or an object copied over another) is an error naming the object, never
//! data.

mod assemble;
mod backup;
mod cache;
mod codec;
mod external;
mod group;
pub mod membership;
pub mod par;
mod read;
mod writeback;
pub mod writer;

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tessera_blockcache::{DiskCache, DiskCacheConfig, Eviction, MemCache};
use tessera_meta::{Compression, Ino, Meta, MetaError, SliceKind, SliceRecord};
use tessera_metrics::Metrics;
use tessera_object::{DynStore, ObjectError};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

pub use assemble::{DataPath, DataPathError, DataPathOptions};
pub use backup::BackupReport;
pub use cache::{CacheAction, CacheReport};
pub use group::Serving;
pub use read::{Access, Reach, Span};
pub use writer::{FileWriter, Flushed};

/// Errors of the data path.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error(transparent)]
    Object(#[from] ObjectError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("corrupt block {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("cache directory: {0}")]
    Cache(#[source] std::io::Error),
    #[error("the object store is out of space storing {key}")]
    NoSpace { key: String },
    /// A block could not be fetched (every source failed or timed out).
    #[error("{reason}")]
    Fetch { reason: String },
    /// An imported object changed in, or vanished from, its bucket since
    /// the import: its file's bytes are no longer there to read.
    #[error("{reason}")]
    Stale { reason: String },
    /// An earlier upload of the file failed: later writes are refused
    /// until it is closed, so nothing is committed on top of a gap.
    #[error("an earlier upload of this file failed: {reason}")]
    EarlierWriteFailed { reason: String },
    #[error("{what} failed: {source}")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("write-back needs a disk cache (--cache-dir) to stage blocks in")]
    NeedsDiskCache,
    #[error("metadata backup: {0}")]
    Backup(String),
}

impl ChunkError {
    /// A block that should exist is gone: the records it came from are stale.
    pub fn is_missing_block(&self) -> bool {
        matches!(self, ChunkError::Object(ObjectError::NotFound(_)))
    }

    pub fn errno(&self) -> i32 {
        match self {
            ChunkError::Meta(e) => e.errno(),
            ChunkError::NoSpace { .. } => libc::ENOSPC,
            ChunkError::Stale { .. } => libc::ESTALE,
            ChunkError::NeedsDiskCache => libc::EINVAL,
            ChunkError::Object(_)
            | ChunkError::Corrupt { .. }
            | ChunkError::Cache(_)
            | ChunkError::Fetch { .. }
            | ChunkError::EarlierWriteFailed { .. }
            | ChunkError::Task { .. }
            | ChunkError::Backup(_) => libc::EIO,
        }
    }
}

pub type Result<T> = std::result::Result<T, ChunkError>;

/// Settings of the data path of one mount.
#[derive(Debug, Clone)]
pub struct ChunkConfig {
    /// Volume name: the key prefix of every block.
    pub volume: String,
    /// Volume UUID: what cache directories are named after and what every
    /// block checksum is bound to.
    pub uuid: String,
    /// Block objects carry a checksum trailer (volume layout version 2).
    pub sealed_objects: bool,
    pub block_size: usize,
    pub compression: Compression,
    /// Bytes of memory for cached blocks.
    pub mem_cache_size: usize,
    /// Eviction policy of both cache tiers.
    pub eviction: Eviction,
    /// The disk tier; None keeps blocks in memory only.
    pub disk_cache: Option<DiskCacheConfig>,
    /// Cache on disk only blocks read by small random reads or shorter than
    /// a full block (a large sequential read streams past the disk cache).
    pub cache_partial_only: bool,
    /// Bytes all write buffers of the mount may hold together.
    pub buffer_size: usize,
    /// Block uploads and downloads in flight at once.
    pub max_uploads: usize,
    pub max_downloads: usize,
    /// Largest readahead window of one handle, in bytes.
    pub max_readahead: usize,
    /// After a range read, fetch the whole block in the background.
    pub prefetch: bool,
    /// Stage written blocks on the disk cache and upload them later.
    pub writeback: bool,
    /// Records in one chunk that trigger compaction.
    pub compact_threshold: usize,
    /// Encryption at rest: every block object (and metadata backup) is
    /// sealed with it after compression, and opened before decompression.
    /// Caches hold plaintext.
    pub cipher: Option<Arc<tessera_crypt::BlockCipher>>,
}

impl Default for ChunkConfig {
    fn default() -> Self {
        ChunkConfig {
            volume: "tessera".into(),
            uuid: "unformatted".into(),
            sealed_objects: true,
            block_size: 4 << 20,
            compression: Compression::None,
            mem_cache_size: 512 << 20,
            eviction: Eviction::TwoRandom,
            disk_cache: None,
            cache_partial_only: false,
            buffer_size: 300 << 20,
            max_uploads: 20,
            max_downloads: 64,
            max_readahead: 64 << 20,
            prefetch: true,
            writeback: false,
            compact_threshold: 64,
            cipher: None,
        }
    }
}

/// Object storage, caches and metadata, put together for file data.
/// Object deletes one deletion of freed blocks keeps in flight.
const DELETE_CONCURRENCY: usize = 16;

pub struct ChunkStore {
    /// Background deletions (`delete_slices_later`) not yet finished.
    deleting: AtomicUsize,
    pub(crate) store: DynStore,
    pub(crate) meta: Arc<Meta>,
    pub(crate) rt: tokio::runtime::Handle,
    pub(crate) config: ChunkConfig,
    pub(crate) metrics: Arc<Metrics>,
    pub mem: MemCache,
    pub disk: Option<DiskCache>,
    /// Block fetches in flight, so that every reader of a block shares one.
    inflight: Mutex<HashMap<String, read::Fetch>>,
    /// Blocks loaded into memory lately: the tier they came from and how
    /// many of their bytes readers have yet to consume (see `count_served`).
    origins: Mutex<HashMap<String, (&'static str, usize)>>,
    pub(crate) downloads: Arc<Semaphore>,
    pub(crate) uploads: Arc<Semaphore>,
    /// Bytes held by all write buffers (against `buffer_size`).
    pub(crate) buffered: AtomicUsize,
    /// Imported objects by slice id, and the stores of their buckets.
    pub(crate) externals: Mutex<HashMap<u64, Arc<tessera_meta::ExternalObject>>>,
    pub(crate) sources: Mutex<HashMap<String, DynStore>>,
    /// What the last check of each imported object against its bucket
    /// found, and when (shared with the checks running in the background).
    pub(crate) checked: Arc<Mutex<HashMap<u64, external::Checked>>>,
    /// The cache group this process takes part in, if any.
    pub(crate) group: std::sync::OnceLock<Arc<tessera_cachegroup::Group>>,
    /// Blocks being fetched for peers, so that every asker shares one fetch.
    pub(crate) served: Mutex<HashMap<String, read::Fetch>>,
    /// Blocks whose fetch failed lately (timed out, refused): the next
    /// reader within `read::FAILURE_MEMORY` gets the same error at once
    /// instead of waiting out the deadlines again (the kernel retries a
    /// failed readahead with a read of its own).
    pub(crate) failed: Mutex<HashMap<String, (std::time::Instant, String)>>,
}

impl ChunkStore {
    /// Put the data path together; with a disk cache, blocks staged by an
    /// earlier write-back mount start uploading at once.
    pub fn new(
        store: DynStore,
        meta: Arc<Meta>,
        rt: tokio::runtime::Handle,
        config: ChunkConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>> {
        let disk = match &config.disk_cache {
            Some(dc) => Some(
                DiskCache::open(dc.clone(), &config.uuid, metrics.clone())
                    .map_err(ChunkError::Cache)?,
            ),
            None if config.writeback => return Err(ChunkError::NeedsDiskCache),
            None => None,
        };
        let cs = Arc::new(ChunkStore {
            deleting: AtomicUsize::new(0),
            mem: MemCache::new(config.mem_cache_size, config.eviction, metrics.clone()),
            disk,
            store,
            meta,
            rt,
            inflight: Mutex::new(HashMap::new()),
            origins: Mutex::new(HashMap::new()),
            externals: Mutex::new(HashMap::new()),
            sources: Mutex::new(HashMap::new()),
            checked: Arc::new(Mutex::new(HashMap::new())),
            group: std::sync::OnceLock::new(),
            served: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            downloads: Arc::new(Semaphore::new(config.max_downloads.max(1))),
            uploads: Arc::new(Semaphore::new(config.max_uploads.max(1))),
            buffered: AtomicUsize::new(0),
            config,
            metrics,
        });
        cs.warn_of_legacy_cache();
        cs.resume_staged();
        Ok(cs)
    }

    /// Caches written by versions that named a volume's cache directory
    /// after its name are never read (another volume of that name may have
    /// written them); blocks staged there and never uploaded are left for
    /// the operator, named in the log.
    fn warn_of_legacy_cache(&self) {
        let Some(dc) = &self.config.disk_cache else {
            return;
        };
        for dir in &dc.dirs {
            let legacy = dir.join(&self.config.volume);
            if self.config.volume == self.config.uuid || !legacy.join("raw").is_dir() {
                continue;
            }
            let staged = std::fs::read_dir(legacy.join("staging"))
                .map(|mut d| d.next().is_some())
                .unwrap_or(false);
            if staged {
                warn!(dir = %legacy.display(), "a cache directory named after the volume (written by an older version) holds write-back blocks that were never uploaded; they are not uploaded now, since another volume of this name may have staged them");
            } else {
                warn!(dir = %legacy.display(), "a cache directory named after the volume (written by an older version) is no longer used and can be removed");
            }
        }
    }

    /// The tag block `key` of this volume is sealed with, in object storage
    /// and in every cache.
    pub fn tag(&self, key: &str) -> u32 {
        tessera_blockcache::checksum::key_tag(&self.config.uuid, key)
    }

    pub fn config(&self) -> &ChunkConfig {
        &self.config
    }

    pub fn store(&self) -> &DynStore {
        &self.store
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
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

    /// Store one block (compressing it as the volume says), or with
    /// write-back stage it on disk and upload it later.
    pub async fn put_block(self: &Arc<Self>, id: u64, index: u64, data: Bytes) -> Result<()> {
        let key = self.block_key(id, index, data.len() as u64);
        if self.config.writeback {
            return self.stage_block(key, data).await;
        }
        self.upload_block(&key, &data).await?;
        // Partial blocks (small files, file tails) are likely read back soon
        // and cost little to keep on disk; full blocks of large writes are
        // not cached on disk (a checkpoint written once streams past it).
        if self.disk.is_some() && data.len() < self.config.block_size {
            self.cache_on_disk(&key, data.clone());
        }
        self.mem.insert(&key, data);
        Ok(())
    }

    /// Compress, seal and upload one block, within the upload concurrency
    /// limit.
    pub(crate) async fn upload_block(&self, key: &str, data: &Bytes) -> Result<()> {
        let mut encoded =
            codec::encode(self.config.compression, data).map_err(|reason| ChunkError::Corrupt {
                key: key.to_string(),
                reason,
            })?;
        if let Some(cipher) = &self.config.cipher {
            encoded = Bytes::from(cipher.seal(key.as_bytes(), &encoded).map_err(|e| {
                ChunkError::Corrupt {
                    key: key.to_string(),
                    reason: e.to_string(),
                }
            })?);
        }
        let mut body = tessera_object::Body(vec![encoded]);
        if self.config.sealed_objects {
            // The trailer goes out after the block as a second buffer: the
            // block itself is not copied.
            let trailer = tessera_blockcache::checksum::trailer(&body.0[0], self.tag(key));
            body.0.push(Bytes::from(trailer));
        }
        self.metrics.upload_queue.inc();
        let permit = self.uploads.acquire().await;
        let r = self.store.put(key, body).await;
        drop(permit);
        self.metrics.upload_queue.dec();
        r.map_err(|e| match e {
            e if e.is_no_space() => ChunkError::NoSpace {
                key: key.to_string(),
            },
            e => ChunkError::Object(e),
        })
    }

    /// Account `n` more buffered bytes; true when the mount is over budget.
    pub(crate) fn buffer_grow(&self, n: usize) -> bool {
        let now = self.buffered.fetch_add(n, Ordering::Relaxed) + n;
        self.metrics.buffer_bytes.set(now as i64);
        now >= self.config.buffer_size
    }

    pub(crate) fn buffer_shrink(&self, n: usize) {
        let now = self.buffered.fetch_sub(n, Ordering::Relaxed) - n;
        self.metrics.buffer_bytes.set(now as i64);
    }

    /// Delete the blocks of slices nothing refers to any more, and wait
    /// for it: for the cleaner thread, whose pace this sets.
    pub fn delete_slices(&self, freed: &[(u64, u64)]) {
        self.rt.block_on(self.delete_blocks(self.keys_of(freed)));
    }

    /// Delete the blocks of slices nothing refers to any more in the
    /// background, so that a truncate or fallocate of a large file returns
    /// at once instead of after thousands of DELETEs one after another.
    pub fn delete_slices_later(self: &Arc<Self>, freed: &[(u64, u64)]) {
        let keys = self.keys_of(freed);
        if keys.is_empty() {
            return;
        }
        let me = self.clone();
        self.deleting.fetch_add(1, Ordering::AcqRel);
        self.rt.spawn(async move {
            me.delete_blocks(keys).await;
            me.deleting.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// Drop the blocks of slices a failed write uploaded (or staged) but
    /// never committed: nothing refers to them, and nothing else would
    /// remove them.
    pub(crate) fn abandon_slices(self: &Arc<Self>, slices: Vec<(u64, u64)>) {
        warn!(
            slices = slices.len(),
            "a write failed before its commit; removing the blocks it had stored"
        );
        self.delete_slices_later(&slices);
    }

    /// Wait up to `limit` for background deletions to finish (at unmount:
    /// what is left over is garbage for `tessera gc`). True when none is
    /// left.
    pub fn wait_for_deletions(&self, limit: std::time::Duration) -> bool {
        let until = std::time::Instant::now() + limit;
        while self.deleting.load(Ordering::Acquire) > 0 {
            if std::time::Instant::now() >= until {
                warn!("unmounting with block deletions unfinished; `tessera gc` will find them");
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        true
    }

    fn keys_of(&self, slices: &[(u64, u64)]) -> Vec<String> {
        let bs = self.config.block_size as u64;
        slices
            .iter()
            .flat_map(|&(id, size)| (0..size.div_ceil(bs)).map(move |i| (id, i, size)))
            .map(|(id, index, size)| self.block_key(id, index, self.block_len(size, index)))
            .collect()
    }

    /// Remove blocks from every tier, `DELETE_CONCURRENCY` object deletes
    /// at a time. A block that cannot be deleted stays as garbage that
    /// `tessera gc` finds.
    async fn delete_blocks(&self, keys: Vec<String>) {
        use futures::StreamExt;
        futures::stream::iter(keys)
            .for_each_concurrent(DELETE_CONCURRENCY, |key| async move {
                self.mem.remove(&key);
                if let Some(disk) = &self.disk {
                    disk.discard_staged(&key);
                    disk.remove(&key);
                }
                if let Err(e) = self.store.delete(&key).await {
                    warn!(%key, error = %e, "could not delete block; `tessera gc` will find it");
                }
            })
            .await;
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
    pub fn compact(self: &Arc<Self>, ino: Ino, index: u32) -> Result<Option<Vec<(u64, u64)>>> {
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
            if let Err(e) = self.read_records(&records, start, &mut data, Access::Sequential) {
                // Another mount compacted this chunk first and deleted the
                // slices read here: nothing is wrong, and nothing to do.
                if e.is_missing_block() && self.meta.read_chunk_raw(ino, index)? != raw {
                    debug!(ino, index, "chunk compacted elsewhere meanwhile");
                    return Ok(None);
                }
                return Err(e);
            }
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
    pub async fn upload_slice(self: &Arc<Self>, id: u64, data: &Bytes) -> Result<()> {
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

/// A chunk store over a memory object store and a formatted volume in
/// `engine`, with its runtime (kept alive by the caller), for unit tests.
#[cfg(test)]
pub(crate) fn store_for_tests(
    engine: Arc<dyn tessera_meta::kv::KvEngine>,
    config: ChunkConfig,
) -> (Arc<ChunkStore>, tokio::runtime::Runtime) {
    let meta = Arc::new(Meta::new(engine, tessera_meta::MetaConfig::default()));
    meta.init(&tessera_meta::conformance::test_format())
        .expect("format");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let chunks = ChunkStore::new(
        tessera_object::open_store("mem://", &Default::default()).expect("store"),
        meta,
        rt.handle().clone(),
        config,
        Arc::new(Metrics::new()),
    )
    .expect("chunk store");
    (chunks, rt)
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
