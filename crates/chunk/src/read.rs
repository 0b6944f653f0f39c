//! The read path: from a file range to block bytes.
//!
//! A read is planned into pieces (a block and a range of it) from the
//! chunk's visible segments. Every block not in memory gets one shared
//! fetch ([`Fetch`]): the disk cache, then a staged write-back copy, then
//! object storage, within `--max-downloads`. All the fetches of one read
//! start before the first is awaited, so a read spanning blocks downloads
//! them in parallel. A fetch is a spawned task, so readahead can start one
//! and walk away; a reader that arrives later joins it.
//!
//! Random reads of part of a block that is cached nowhere are served by a
//! range GET of just those bytes; with `--prefetch` the whole block then
//! follows in the background, so a reader that comes back finds it cached.
//! Small random reads of a block on the disk cache read just the 32 KiB
//! pieces that hold them, and those pieces' sums.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use tessera_blockcache::checksum;
use tessera_meta::{slice::visible_segments_in, Compression, SliceKind, SliceRecord, CHUNK_SIZE};
use tessera_metrics::tier;
use tessera_object::ObjectError;
use tracing::{debug, warn};

use crate::{codec, ChunkError, ChunkStore, Result};

/// How the reader has been moving through the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Sequential,
    Random,
}

/// How long a block fetch that failed (not a missing object) is answered
/// from memory with the same error.
pub(crate) const FAILURE_MEMORY: std::time::Duration = std::time::Duration::from_secs(10);

/// A fetch outcome every waiter can hold a copy of.
#[derive(Debug, Clone)]
pub(crate) enum FetchError {
    Missing(String),
    Failed(String),
    /// An imported object is no longer the version imported.
    Stale(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Missing(key) => write!(f, "object not found: {key}"),
            FetchError::Failed(why) | FetchError::Stale(why) => f.write_str(why),
        }
    }
}

impl From<FetchError> for ChunkError {
    fn from(e: FetchError) -> Self {
        match e {
            FetchError::Missing(key) => ChunkError::Object(ObjectError::NotFound(key)),
            FetchError::Failed(reason) => ChunkError::Fetch { reason },
            FetchError::Stale(reason) => ChunkError::Stale { reason },
        }
    }
}

/// A block fetch in flight.
pub(crate) type Fetch = Shared<BoxFuture<'static, std::result::Result<Bytes, FetchError>>>;

/// A run of bytes of a read: cached block bytes (shared, not copied) or
/// zeros of a hole.
#[derive(Debug, Clone)]
pub enum Span {
    Data(Bytes),
    Zero(usize),
}

impl Span {
    pub fn len(&self) -> usize {
        match self {
            Span::Data(b) => b.len(),
            Span::Zero(n) => *n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where one piece of a read stands while its block is fetched.
enum Part {
    Ready(Bytes),
    Range(Bytes),
    Pending(Fetch),
}

/// One block's share of a read.
#[derive(Debug)]
pub(crate) struct Piece {
    /// Offset in the caller's buffer.
    pub(crate) out: usize,
    pub(crate) kind: SliceKind,
    pub(crate) id: u64,
    pub(crate) size: u64,
    pub(crate) index: u64,
    pub(crate) in_block: usize,
    pub(crate) n: usize,
}

impl ChunkStore {
    /// Resolve `[off, off + len)` of a chunk into block pieces. Holes are
    /// left out (the caller's buffer is zeroed).
    pub(crate) fn plan(&self, records: &[SliceRecord], off: u32, len: usize) -> Result<Vec<Piece>> {
        let end = off + len as u32;
        let bs = self.config.block_size as u64;
        let mut pieces = Vec::new();
        for seg in visible_segments_in(records, off, end) {
            let (a, b) = (seg.pos.max(off), seg.end().min(end));
            if a >= b || seg.record.is_hole() {
                continue;
            }
            let mut slice_off = seg.off + u64::from(a - seg.pos);
            let mut out = (a - off) as usize;
            let mut left = (b - a) as usize;
            while left > 0 {
                let index = slice_off / bs;
                let in_block = (slice_off - index * bs) as usize;
                let block_len = self.block_len(seg.record.size, index) as usize;
                let n = left.min(block_len - in_block);
                pieces.push(Piece {
                    out,
                    kind: seg.record.kind,
                    id: seg.record.id,
                    size: seg.record.size,
                    index,
                    in_block,
                    n,
                });
                out += n;
                left -= n;
                slice_off += n as u64;
            }
        }
        Ok(pieces)
    }

    /// The cache (and, for volume blocks, object) key of a piece's block.
    pub(crate) fn piece_key(&self, p: &Piece, block_len: u64) -> Result<String> {
        match p.kind {
            SliceKind::External => self.external_key(p.id, p.index),
            SliceKind::Internal => Ok(self.block_key(p.id, p.index, block_len)),
            // `plan` leaves holes out; an allocated range is one.
            SliceKind::Allocated => Err(crate::ChunkError::Corrupt {
                key: format!("slice {}", p.id),
                reason: "an allocated range has no blocks to read".into(),
            }),
        }
    }

    /// A block just loaded into memory from `tier`: its bytes are counted
    /// for that tier as readers consume them, so a block fetched whole for
    /// a small read (or by readahead) is not later counted as memory hits.
    pub(crate) fn note_origin(&self, key: &str, tier: &'static str, len: usize) {
        {
            let mut o = self.origins.lock();
            if o.len() > 65_536 {
                o.clear();
            }
            o.insert(key.to_string(), (tier, len));
        }
    }

    /// Count `n` bytes served from block `key`.
    fn count_served(&self, key: &str, n: usize) {
        let tier = {
            let mut o = self.origins.lock();
            match o.get_mut(key) {
                Some((t, left)) => {
                    let t = *t;
                    *left = left.saturating_sub(n);
                    if *left == 0 {
                        o.remove(key);
                    }
                    t
                }
                None => tier::MEMORY,
            }
        };
        self.metrics.tier_read(tier, n as u64);
    }

    /// Join or start the shared fetch of a block.
    pub(crate) fn fetch(self: &Arc<Self>, key: &str, len: u64, readahead: bool) -> Fetch {
        if let Some(why) = self.failed_lately(key) {
            return futures::future::ready(Err(FetchError::Failed(why)))
                .boxed()
                .shared();
        }
        let mut map = self.inflight.lock();
        if let Some(f) = map.get(key) {
            return f.clone();
        }
        let me = self.clone();
        let owned = key.to_string();
        let fetch = async move {
            let r = me.load(&owned, len, readahead).await;
            {
                let mut map = me.inflight.lock();
                map.remove(&owned);
            }
            r
        }
        .boxed()
        .shared();
        map.insert(key.to_string(), fetch.clone());
        // Run it to the end even if every waiter gives up (or none waits).
        self.rt.spawn(fetch.clone());
        fetch
    }

    /// The error of a fetch of `key` that failed within [`FAILURE_MEMORY`].
    fn failed_lately(&self, key: &str) -> Option<String> {
        let mut failed = self.failed.lock();
        match failed.get(key) {
            Some((at, why)) if at.elapsed() < FAILURE_MEMORY => Some(why.clone()),
            Some(_) => {
                failed.remove(key);
                None
            }
            None => None,
        }
    }

    /// Disk cache, staged copy, then object storage.
    async fn load(
        self: &Arc<Self>,
        key: &str,
        len: u64,
        readahead: bool,
    ) -> std::result::Result<Bytes, FetchError> {
        if readahead {
            self.metrics.readahead_inflight.inc();
        }
        let r = self.load_inner(key, len).await;
        if let Err(FetchError::Failed(why)) = &r {
            {
                let mut failed = self.failed.lock();
                if failed.len() > 4096 {
                    failed.clear();
                }
                failed.insert(key.to_string(), (std::time::Instant::now(), why.clone()));
            }
        }
        if readahead {
            self.metrics.readahead_inflight.dec();
            self.metrics.readahead_blocks.inc();
        }
        r
    }

    async fn load_inner(
        self: &Arc<Self>,
        key: &str,
        len: u64,
    ) -> std::result::Result<Bytes, FetchError> {
        if self.disk.is_some() {
            let me = self.clone();
            let k = key.to_string();
            let found = tokio::task::spawn_blocking(move || {
                let disk = me.disk.as_ref()?;
                disk.get(&k).or_else(|| disk.read_staged(&k))
            })
            .await
            .ok()
            .flatten();
            if let Some(b) = found {
                // The origin first: a reader may find the block in memory
                // the moment it is there, and must count it for its tier.
                self.note_origin(key, tier::DISK, b.len());
                self.mem.insert(key, b.clone());
                return Ok(b);
            }
        }
        if let Some(data) = self.from_owner(key, len).await {
            // The owner keeps the disk copy; this one stays in memory.
            self.mem.insert(key, data.clone());
            return Ok(data);
        }
        let data = self.fetch_owned(key, len).await?;
        self.note_origin(key, tier::OBJECT, data.len());
        self.mem.insert(key, data.clone());
        let partial = (len as usize) < self.config.block_size;
        let external = key.starts_with(crate::external::PREFIX);
        if self.disk.is_some() && (external || !self.config.cache_partial_only || partial) {
            self.cache_on_disk(key, data.clone());
        }
        Ok(data)
    }

    /// One block from object storage (its own bucket for an imported
    /// object), within `--max-downloads`, decoded and length-checked; not
    /// cached anywhere yet.
    pub(crate) async fn fetch_object(
        self: &Arc<Self>,
        key: &str,
        len: u64,
    ) -> std::result::Result<Bytes, FetchError> {
        if key.starts_with(crate::external::PREFIX) {
            return self.load_external(key, len).await;
        }
        // A block that fails its check is fetched once more (a flaky link
        // or a torn read); a second failure is an error naming the object.
        let mut retried = false;
        loop {
            let permit = self.downloads.acquire().await;
            let raw = self.store.get(key, None).await;
            drop(permit);
            let raw = raw.map_err(|e| match e {
                ObjectError::NotFound(k) => FetchError::Missing(k),
                e => FetchError::Failed(e.to_string()),
            })?;
            match self.open_object(key, raw, len) {
                Ok(data) => return Ok(data),
                Err(reason) => {
                    self.metrics.corrupt_objects.inc();
                    warn!(object = %key, %reason, retried, "block from object storage failed its check");
                    if retried {
                        return Err(FetchError::Failed(format!(
                            "corrupt block {key} in object storage: {reason}"
                        )));
                    }
                    retried = true;
                }
            }
        }
    }

    /// A block object's data: its seal checked (layout version 2 and
    /// later), then decoded and its length checked.
    fn open_object(&self, key: &str, raw: Bytes, len: u64) -> std::result::Result<Bytes, String> {
        let mut body = if self.config.sealed_objects {
            checksum::open_bytes(raw, self.tag(key)).map_err(|d| d.to_string())?
        } else {
            raw
        };
        if let Some(cipher) = &self.config.cipher {
            body = Bytes::from(
                cipher
                    .open(key.as_bytes(), &body)
                    .map_err(|e| e.to_string())?,
            );
        }
        let data = codec::decode(self.config.compression, body, len as usize)?;
        if data.len() as u64 != len {
            return Err(format!("expected {len} bytes, got {}", data.len()));
        }
        Ok(data)
    }

    /// Write a block to the disk cache off the reader's path.
    pub(crate) fn cache_on_disk(self: &Arc<Self>, key: &str, data: Bytes) {
        let me = self.clone();
        let key = key.to_string();
        self.rt.spawn_blocking(move || {
            if let Some(disk) = &me.disk {
                if let Err(e) = disk.insert(&key, &data) {
                    warn!(%key, error = %e, "cannot write block to the disk cache");
                }
            }
        });
    }

    /// Bytes `[off, off + len)` of a chunk made of `records`, as spans that
    /// borrow the cached blocks (no copy) with zero runs for holes.
    pub fn read_spans(
        self: &Arc<Self>,
        records: &[SliceRecord],
        off: u32,
        len: usize,
        access: Access,
    ) -> Result<Vec<Span>> {
        let pieces = self.plan(records, off, len)?;
        // Start every fetch before waiting for any, so a read spanning
        // blocks downloads them in parallel.
        let mut parts = Vec::with_capacity(pieces.len());
        for p in pieces {
            let block_len = self.block_len(p.size, p.index);
            let key = self.piece_key(&p, block_len)?;
            // Memory, or else the shared fetch (which tries the disk tier
            // first): a block that readahead is already loading is joined,
            // never read twice.
            let part = match self.mem.get(&key) {
                Some(b) => Part::Ready(b.slice(p.in_block..p.in_block + p.n)),
                None => {
                    // A small random read of a block no one is loading:
                    // just its bytes, from the disk cache (the lookup there
                    // says whether it has the block) or else the store.
                    let part_wanted = access == Access::Random
                        && p.n * 2 <= block_len as usize
                        && !self.inflight.lock().contains_key(&key);
                    let from_disk = (part_wanted && p.n <= DISK_RANGE_MAX)
                        .then(|| self.disk_range(&key, block_len, p.in_block, p.n))
                        .flatten();
                    if let Some(b) = from_disk {
                        Part::Range(b)
                    } else if part_wanted
                        && self.group.get().is_none()
                        && p.kind == SliceKind::Internal
                        && !self.disk.as_ref().is_some_and(|d| d.contains(&key))
                        && self.config.compression == Compression::None
                        && self.config.cipher.is_none()
                    {
                        Part::Range(self.range_read(&key, block_len, p.in_block, p.n)?)
                    } else {
                        Part::Pending(self.fetch(&key, block_len, false))
                    }
                }
            };
            parts.push((p, key, part));
        }
        let mut spans = Vec::with_capacity(parts.len() * 2 + 1);
        let mut at = 0usize;
        for (p, key, part) in parts {
            if p.out > at {
                spans.push(Span::Zero(p.out - at));
            }
            let data = match part {
                Part::Ready(b) => {
                    self.count_served(&key, p.n);
                    b
                }
                Part::Range(b) => b,
                Part::Pending(fetch) => {
                    let started = std::time::Instant::now();
                    let b = self.rt.block_on(fetch);
                    self.metrics.read_waits.inc();
                    self.metrics
                        .read_wait_seconds
                        .inc_by(started.elapsed().as_secs_f64());
                    let b = b?;
                    self.count_served(&key, p.n);
                    b.slice(p.in_block..p.in_block + p.n)
                }
            };
            spans.push(Span::Data(data));
            at = p.out + p.n;
        }
        if len > at {
            spans.push(Span::Zero(len - at));
        }
        Ok(spans)
    }

    /// A small random read of a block on the disk cache: just the pieces
    /// that hold the bytes, checked; the block stays out of memory, since a
    /// reader that samples at random seldom comes back to the rest of it
    /// (the kernel's page cache keeps what it did read). None when the
    /// block is gone or fails its check: the caller fetches it whole.
    fn disk_range(&self, key: &str, block_len: u64, in_block: usize, n: usize) -> Option<Bytes> {
        let got = self
            .disk
            .as_ref()?
            .get_range(key, block_len as usize, in_block, n)?;
        self.metrics.tier_read(tier::DISK, n as u64);
        Some(got)
    }

    /// A small random read of a block cached nowhere: fetch just the bytes
    /// asked for, and with `--prefetch` the whole block behind it.
    fn range_read(
        self: &Arc<Self>,
        key: &str,
        block_len: u64,
        in_block: usize,
        n: usize,
    ) -> Result<Bytes> {
        let got = if self.config.sealed_objects {
            self.rt
                .block_on(self.sealed_range(key, block_len, in_block, n))?
        } else {
            let range = in_block as u64..(in_block + n) as u64;
            self.rt.block_on(async {
                let _permit = self.downloads.acquire().await;
                self.store.get(key, Some(range)).await
            })?
        };
        if got.len() != n {
            return Err(ChunkError::Corrupt {
                key: key.to_string(),
                reason: format!("range read returned {} of {n} bytes", got.len()),
            });
        }
        self.metrics.tier_read(tier::OBJECT, n as u64);
        if self.config.prefetch {
            drop(self.fetch(key, block_len, true));
        }
        Ok(got)
    }

    /// Bytes `[in_block, in_block + n)` of a sealed, uncompressed block
    /// object: the 32 KiB pieces that hold them and those pieces' sums are
    /// read by two range GETs at once, and checked before any byte is
    /// returned (a mismatch is read once more, then an error).
    async fn sealed_range(
        &self,
        key: &str,
        block_len: u64,
        in_block: usize,
        n: usize,
    ) -> Result<Bytes> {
        let piece = checksum::PIECE;
        let (first, end) = (in_block / piece, (in_block + n).div_ceil(piece));
        let data_range = (first * piece) as u64..((end * piece) as u64).min(block_len);
        let sums_range = checksum::sums_range(block_len as usize, first, end - first);
        let tag = self.tag(key);
        let mut retried = false;
        loop {
            let (data, sums) = {
                let _permit = self.downloads.acquire().await;
                futures::future::join(
                    self.store.get(key, Some(data_range.clone())),
                    self.store.get(key, Some(sums_range.clone())),
                )
                .await
            };
            let (data, sums) = (data?, sums?);
            let checked = if sums.len() as u64 != sums_range.end - sums_range.start {
                Err(checksum::Damage::BadTrailer)
            } else {
                checksum::check_pieces(&data, first, &checksum::decode_sums(&sums), tag)
            };
            match checked {
                Ok(()) if data.len() >= in_block - first * piece + n => {
                    let at = in_block - first * piece;
                    return Ok(data.slice(at..at + n));
                }
                other => {
                    self.metrics.corrupt_objects.inc();
                    let reason = match other {
                        Err(d) => d.to_string(),
                        Ok(()) => format!("range read returned {} bytes", data.len()),
                    };
                    warn!(object = %key, %reason, retried, "range of a block failed its check");
                    if retried {
                        return Err(ChunkError::Corrupt {
                            key: key.to_string(),
                            reason: format!("in object storage: {reason}"),
                        });
                    }
                    retried = true;
                }
            }
        }
    }

    /// Fill `buf` with bytes `[off, off + buf.len())` of a chunk.
    pub fn read_records(
        self: &Arc<Self>,
        records: &[SliceRecord],
        off: u32,
        buf: &mut [u8],
        access: Access,
    ) -> Result<()> {
        let mut at = 0;
        for span in self.read_spans(records, off, buf.len(), access)? {
            match &span {
                Span::Data(b) => buf[at..at + b.len()].copy_from_slice(b),
                Span::Zero(n) => buf[at..at + n].fill(0),
            }
            at += span.len();
        }
        Ok(())
    }

    /// Committed data of a file at `[off, off + len)` as spans, the slice
    /// records of each chunk coming from `records` (the caller's cache).
    pub fn read_committed(
        self: &Arc<Self>,
        off: u64,
        len: usize,
        access: Access,
        records: &mut dyn FnMut(u32) -> Result<Arc<Vec<SliceRecord>>>,
    ) -> Result<Vec<Span>> {
        let mut spans = Vec::new();
        for_each_chunk(off, len as u64, |index, in_chunk, n| {
            let records = records(index)?;
            if records.is_empty() {
                spans.push(Span::Zero(n as usize));
            } else {
                spans.extend(self.read_spans(&records, in_chunk, n as usize, access)?);
            }
            Ok(())
        })?;
        Ok(spans)
    }

    /// Start fetching the blocks behind `[off, off + len)` that are not in
    /// memory, without waiting; `off` is where the reader is. Blocks already
    /// in memory or in flight are left alone. With [`Reach::Near`] (a reader
    /// that jumps about: an mmap loader, tensor by tensor) so are blocks
    /// near at hand that are far ahead of it: those on the local disk more
    /// than [`DISK_AHEAD_BLOCKS`] ahead, those a cache-group member serves
    /// more than [`PEER_AHEAD_BLOCKS`] ahead. They take milliseconds, not a
    /// round trip to the store, and a block read far ahead of such a reader
    /// is often evicted from memory before it comes there, then read, sent
    /// and checked a second time. A reader that has only gone forward gets
    /// the whole window from every source (a deep queue is what makes a
    /// disk fast). Errors are only logged (the reader will meet them
    /// itself).
    pub fn readahead(
        self: &Arc<Self>,
        off: u64,
        len: u64,
        reach: Reach,
        records: &mut dyn FnMut(u32) -> Result<Arc<Vec<SliceRecord>>>,
    ) {
        let block = self.config.block_size as u64;
        let (disk_until, peer_until) = match reach {
            Reach::Full => (u64::MAX, u64::MAX),
            Reach::Near => (
                off + DISK_AHEAD_BLOCKS * block,
                off + PEER_AHEAD_BLOCKS * block,
            ),
        };
        let walked = for_each_chunk(off, len, |index, in_chunk, n| {
            let chunk_at = u64::from(index) * CHUNK_SIZE + u64::from(in_chunk);
            let mut last = None;
            for p in self.plan(&records(index)?, in_chunk, n as usize)? {
                if last == Some((p.id, p.index)) {
                    continue;
                }
                last = Some((p.id, p.index));
                let len = self.block_len(p.size, p.index);
                let key = self.piece_key(&p, len)?;
                // Most of a window asked for again is in memory already:
                // that cheap check first, the disk index and the group's
                // placement only for the blocks left.
                if self.mem.contains(&key) || self.inflight.lock().contains_key(&key) {
                    continue;
                }
                let at = chunk_at + p.out as u64;
                let later = (at >= disk_until
                    && self.disk.as_ref().is_some_and(|d| d.contains(&key)))
                    || (at >= peer_until && self.owned_by_a_peer(&key));
                if !later {
                    drop(self.fetch(&key, len, true));
                }
            }
            Ok(())
        });
        if let Err(e) = walked {
            debug!(error = %e, "readahead skipped");
        }
    }
}

/// The largest random read served from part of a block on the disk cache;
/// a larger one loads the whole block into memory. Page faults of an mmap
/// loader arrive as reads of up to 1 MiB (the kernel's readahead around
/// the fault) and go on sequentially into the same block, which then wants
/// all of it: reading part of it first would read those bytes twice.
const DISK_RANGE_MAX: usize = 256 << 10;

/// How far readahead reaches for blocks near at hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// The whole window, from every source.
    Full,
    /// Blocks on the local disk or a group member only a few blocks ahead.
    Near,
}

/// How far ahead of a reader that jumps about, in blocks, readahead fetches
/// blocks that are on the local disk cache, and blocks a cache-group member
/// serves (a member that lacks one fetches it from the store: a little
/// more room); the full window applies to the rest.
const DISK_AHEAD_BLOCKS: u64 = 2;
const PEER_AHEAD_BLOCKS: u64 = 4;

/// Call `f(chunk index, offset in chunk, length)` for each chunk that
/// `[off, off + len)` of a file touches, in order.
pub(crate) fn for_each_chunk(
    off: u64,
    len: u64,
    mut f: impl FnMut(u32, u32, u64) -> Result<()>,
) -> Result<()> {
    let (mut pos, end) = (off, off + len);
    while pos < end {
        let in_chunk = pos % CHUNK_SIZE;
        let n = (end - pos).min(CHUNK_SIZE - in_chunk);
        f((pos / CHUNK_SIZE) as u32, in_chunk as u32, n)?;
        pos += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_meta::SliceKind;

    const BLOCK: u64 = 64 << 10;

    /// A chunk store over memory metadata and a memory object store, with
    /// a disk cache in `cache`.
    fn disk_backed_store(
        cache: &std::path::Path,
        block: u64,
    ) -> (Arc<ChunkStore>, tokio::runtime::Runtime) {
        crate::store_for_tests(
            Arc::new(tessera_meta::engines::MemoryEngine::default()),
            crate::ChunkConfig {
                volume: "t".into(),
                uuid: "uuid-read-tests".into(),
                block_size: block as usize,
                disk_cache: Some(tessera_blockcache::DiskCacheConfig {
                    dirs: vec![cache.to_path_buf()],
                    capacity: 1 << 30,
                    free_space_ratio: 0.0,
                    expire: None,
                    eviction: Default::default(),
                }),
                ..Default::default()
            },
        )
    }

    /// A chunk that is one slice, `id`, of `size` bytes.
    fn one_slice(id: u64, size: u64) -> Vec<SliceRecord> {
        vec![SliceRecord {
            kind: SliceKind::Internal,
            pos: 0,
            id,
            size,
            off: 0,
            len: size as u32,
        }]
    }

    /// A small random read of a block on the disk cache reads only the
    /// pieces that hold it and leaves the block out of memory; a larger
    /// random read, or a sequential one, loads the whole block.
    #[test]
    fn small_random_reads_of_disk_blocks_take_only_their_pieces() {
        const MIB: u64 = 1 << 20;
        let cache = tempfile::tempdir().expect("tempdir");
        let (chunks, _rt) = disk_backed_store(cache.path(), MIB);
        let records = one_slice(7, 3 * MIB);
        let content = |index: u64| -> Vec<u8> {
            let mut x = index.wrapping_mul(0x9e37_79b9_7f4a_7c15) + 1;
            (0..MIB)
                .map(|_| {
                    x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    (x >> 56) as u8
                })
                .collect()
        };
        let disk = chunks.disk.as_ref().expect("disk tier");
        let keys: Vec<String> = (0..3).map(|i| chunks.block_key(7, i, MIB)).collect();
        for (i, key) in keys.iter().enumerate() {
            disk.insert(key, &content(i as u64)).expect("cache a block");
        }
        let whole: Vec<u8> = (0..3).flat_map(content).collect();
        let read = |off: u64, len: usize, access| -> Vec<u8> {
            let spans = chunks
                .read_spans(&records, off as u32, len, access)
                .expect("read");
            let mut out = Vec::new();
            for s in spans {
                match s {
                    Span::Data(b) => out.extend_from_slice(&b),
                    Span::Zero(n) => out.resize(out.len() + n, 0),
                }
            }
            out
        };
        let ranges = || chunks.metrics().disk_range_reads.get();
        // Small random reads, one across the boundary of blocks 0 and 1.
        for (off, len) in [(MIB / 3, 4096), (MIB - 100, 200), (2 * MIB + 77, 1000)] {
            let got = read(off, len, Access::Random);
            assert_eq!(got, &whole[off as usize..off as usize + len], "{off}+{len}");
        }
        assert_eq!(ranges(), 4);
        assert!(
            keys.iter().all(|k| !chunks.mem.contains(k)),
            "no block loaded whole"
        );
        // A random read larger than DISK_RANGE_MAX: block 1 whole.
        let off = MIB + 1000;
        let got = read(off, DISK_RANGE_MAX + 1, Access::Random);
        assert_eq!(got, &whole[off as usize..off as usize + DISK_RANGE_MAX + 1]);
        assert!(chunks.mem.contains(&keys[1]) && ranges() == 4);
        // A small sequential read: block 2 whole.
        assert_eq!(
            read(2 * MIB, 10, Access::Sequential),
            &whole[2 << 20..(2 << 20) + 10]
        );
        assert!(chunks.mem.contains(&keys[2]) && ranges() == 4);
        assert!(!chunks.mem.contains(&keys[0]));
    }

    /// Blocks fetched by readahead so far, once none is in flight.
    fn fetched_ahead(chunks: &ChunkStore) -> u64 {
        for _ in 0..500 {
            if chunks.inflight.lock().is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        chunks.metrics().readahead_blocks.get()
    }

    /// Readahead goes a whole window ahead for blocks only the store has,
    /// and, for a reader that jumps about, only two blocks ahead of it for
    /// blocks on the local disk; as the reader moves on, the disk blocks
    /// near it are fetched. A reader that only goes forward gets the whole
    /// window from the disk too.
    #[test]
    fn readahead_reaches_far_for_the_store_and_near_for_the_disk_cache() {
        let cache = tempfile::tempdir().expect("tempdir");
        let (chunks, _rt) = disk_backed_store(cache.path(), BLOCK);
        // One slice of 32 blocks; the first 16 are on the local disk.
        let records = Arc::new(one_slice(9, 32 * BLOCK));
        let disk = chunks.disk.as_ref().expect("disk tier");
        for index in 0..16 {
            let key = chunks.block_key(9, index, BLOCK);
            disk.insert(&key, &vec![index as u8; BLOCK as usize])
                .expect("cache a block");
        }
        let mut by_index = |_| Ok(records.clone());
        // The reader at the start, a window of 8 blocks: two from disk.
        chunks.readahead(0, 8 * BLOCK, Reach::Near, &mut by_index);
        assert_eq!(fetched_ahead(&chunks), DISK_AHEAD_BLOCKS);
        // The reader four blocks on: two more, the rest left for later.
        chunks.readahead(4 * BLOCK, 8 * BLOCK, Reach::Near, &mut by_index);
        assert_eq!(fetched_ahead(&chunks), 2 * DISK_AHEAD_BLOCKS);
        // Past the cached part, the store's blocks: the whole window (the
        // disk's two near the reader, then six the store alone has).
        chunks.readahead(14 * BLOCK, 8 * BLOCK, Reach::Near, &mut by_index);
        assert_eq!(fetched_ahead(&chunks), 2 * DISK_AHEAD_BLOCKS + 8);
        // A reader that only goes forward: the whole window from the disk
        // (blocks 4 and 5 are in memory already, 6 to 11 are fetched).
        chunks.readahead(4 * BLOCK, 8 * BLOCK, Reach::Full, &mut by_index);
        assert_eq!(fetched_ahead(&chunks), 2 * DISK_AHEAD_BLOCKS + 8 + 6);
    }
}
