//! Cache control of a file's byte range, for `tessera warmup`: fill the
//! local cache with its blocks (optionally pinned), report how much of it
//! is cached and where, drop it, or end its pins.
//!
//! Warming writes blocks to the disk tier (the memory tier when the mount
//! has no disk cache) without passing them through the memory tier, so a
//! warm-up of a large model does not flush the blocks readers are using.
//! All the missing blocks of one request are fetched at once, within
//! `--max-downloads`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tessera_meta::SliceRecord;

use crate::read::for_each_chunk;
use crate::{ChunkStore, Result};

/// What to do with the blocks of a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheAction {
    /// Report only.
    Check,
    /// Fetch what is not cached locally; pin every block for the duration.
    Warm {
        pin: Option<Duration>,
    },
    /// Drop the blocks from memory and disk (pins included).
    Evict,
    /// End the pins; the blocks stay cached.
    Unpin,
    /// The same through the cache group: each block's owner warms it,
    /// reports it, or drops it (`tessera warmup --cache-group`).
    GroupWarm,
    GroupCheck,
    GroupEvict,
}

/// The state of a range's blocks after an action. Byte counts are of the
/// file's data in the range (holes are not data and count nowhere).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheReport {
    /// Data bytes in the range.
    pub bytes: u64,
    /// Of those, cached locally in either tier.
    pub cached: u64,
    /// Of those, in the memory tier.
    pub memory: u64,
    /// Of those, in the disk tier.
    pub disk: u64,
    /// Of those, on pinned disk blocks.
    pub pinned: u64,
    /// Bytes of blocks this action fetched from object storage.
    pub fetched: u64,
    /// Blocks that could not be fetched or stored.
    pub failed_blocks: u64,
    /// The first failure, for the caller to show.
    pub error: Option<String>,
    /// Through the group: bytes cached per member (address).
    pub members: Vec<(String, u64)>,
}

/// One block of the range: its cache key, its length, and how many bytes
/// of the range it holds.
struct Block {
    key: String,
    len: u64,
    visible: u64,
}

impl ChunkStore {
    /// Apply `action` to the blocks behind `[off, off + len)` of a file
    /// whose slice records per chunk come from `records`.
    pub fn cache_range(
        self: &Arc<Self>,
        off: u64,
        len: u64,
        records: &mut dyn FnMut(u32) -> Result<Arc<Vec<SliceRecord>>>,
        action: CacheAction,
    ) -> Result<CacheReport> {
        let blocks = self.blocks_of(off, len, records)?;
        let mut report = CacheReport::default();
        let keys: Vec<String> = blocks.iter().map(|b| b.key.clone()).collect();
        if matches!(
            action,
            CacheAction::GroupWarm | CacheAction::GroupCheck | CacheAction::GroupEvict
        ) {
            self.group_range(&blocks, action, &mut report);
            return Ok(report);
        }
        match action {
            CacheAction::Check => {}
            CacheAction::Evict => {
                for key in &keys {
                    self.mem.remove(key);
                    if let Some(disk) = &self.disk {
                        disk.remove(key);
                    }
                }
            }
            CacheAction::Unpin => {
                if let Some(disk) = &self.disk {
                    disk.unpin(&keys);
                }
            }
            CacheAction::Warm { pin } => {
                self.warm(&blocks, &mut report);
                if let (Some(ttl), Some(disk)) = (pin, &self.disk) {
                    disk.pin(&keys, ttl);
                }
            }
            CacheAction::GroupWarm | CacheAction::GroupCheck | CacheAction::GroupEvict => {}
        }
        for b in &blocks {
            report.bytes += b.visible;
            let in_memory = self.mem.contains(&b.key);
            let on_disk = self.disk.as_ref().is_some_and(|d| d.contains(&b.key));
            if in_memory {
                report.memory += b.visible;
            }
            if on_disk {
                report.disk += b.visible;
                if self.disk.as_ref().is_some_and(|d| d.is_pinned(&b.key)) {
                    report.pinned += b.visible;
                }
            }
            if in_memory || on_disk {
                report.cached += b.visible;
            }
        }
        Ok(report)
    }

    /// The cache keys and lengths of the distinct blocks of a whole file
    /// (`cache-group bench` fetches them one by one).
    pub fn file_blocks(
        self: &Arc<Self>,
        ino: tessera_meta::Ino,
        length: u64,
    ) -> Result<Vec<(String, u64)>> {
        let mut records = |index| Ok(Arc::new(self.meta.read_chunk(ino, index)?));
        Ok(self
            .blocks_of(0, length, &mut records)?
            .into_iter()
            .map(|b| (b.key, b.len))
            .collect())
    }

    /// The distinct blocks behind a range, in order.
    fn blocks_of(
        self: &Arc<Self>,
        off: u64,
        len: u64,
        records: &mut dyn FnMut(u32) -> Result<Arc<Vec<SliceRecord>>>,
    ) -> Result<Vec<Block>> {
        let mut blocks: Vec<Block> = Vec::new();
        for_each_chunk(off, len, |index, in_chunk, n| {
            for p in self.plan(&records(index)?, in_chunk, n as usize)? {
                let block_len = self.block_len(p.size, p.index);
                let key = self.piece_key(&p, block_len)?;
                match blocks.last_mut() {
                    Some(last) if last.key == key => last.visible += p.n as u64,
                    _ => blocks.push(Block {
                        key,
                        len: block_len,
                        visible: p.n as u64,
                    }),
                }
            }
            Ok(())
        })?;
        Ok(blocks)
    }

    /// Fetch the blocks behind `[off, off + len)` in the file's order, at
    /// most `window` at a time, through the shared fetches a reader joins
    /// (`--prefetch-on-open`): a reader that faults on a block being
    /// fetched waits for that fetch instead of starting a second one, and
    /// one that gets ahead of the window finds the link not filled with a
    /// whole file's requests queued before its own. Blocking; returns what
    /// was fetched and what failed.
    pub fn prefetch(
        self: &Arc<Self>,
        off: u64,
        len: u64,
        records: &mut dyn FnMut(u32) -> Result<Arc<Vec<SliceRecord>>>,
        window: usize,
    ) -> Result<CacheReport> {
        use futures::StreamExt;
        let blocks = self.blocks_of(off, len, records)?;
        let mut report = CacheReport {
            bytes: blocks.iter().map(|b| b.visible).sum(),
            ..CacheReport::default()
        };
        let missing: Vec<Block> = blocks
            .into_iter()
            .filter(|b| {
                !self.mem.contains(&b.key)
                    && !self.disk.as_ref().is_some_and(|d| d.contains(&b.key))
            })
            .collect();
        let me = self.clone();
        let results = self.rt.block_on(
            futures::stream::iter(missing)
                .map(|b| me.fetch(&b.key, b.len, true))
                .buffered(window.max(1))
                .collect::<Vec<_>>(),
        );
        for r in results {
            match r {
                Ok(data) => report.fetched += data.len() as u64,
                Err(e) => {
                    report.failed_blocks += 1;
                    report.error.get_or_insert(e.to_string());
                }
            }
        }
        Ok(report)
    }

    /// Fetch every block not cached locally, all at once, and store each
    /// in the disk tier (memory when there is no disk tier).
    fn warm(self: &Arc<Self>, blocks: &[Block], report: &mut CacheReport) {
        let missing: Vec<&Block> = blocks
            .iter()
            .filter(|b| match &self.disk {
                Some(disk) => !disk.contains(&b.key),
                None => !self.mem.contains(&b.key),
            })
            .collect();
        let fetches = missing.iter().map(|b| {
            let me = self.clone();
            let (key, len) = (b.key.clone(), b.len);
            async move {
                let data = me
                    .fetch_object(&key, len)
                    .await
                    .map_err(|e| e.to_string())?;
                me.keep_warmed(key, data.clone()).await?;
                Ok::<u64, String>(data.len() as u64)
            }
        });
        let results = self.rt.block_on(futures::future::join_all(fetches));
        for r in results {
            match r {
                Ok(n) => report.fetched += n,
                Err(e) => {
                    report.failed_blocks += 1;
                    report.error.get_or_insert(e);
                }
            }
        }
    }

    /// Ask each block's owner in the group to warm, check or drop it, a
    /// few blocks at a time; blocks this process owns are handled here.
    fn group_range(
        self: &Arc<Self>,
        blocks: &[Block],
        action: CacheAction,
        report: &mut CacheReport,
    ) {
        use tessera_cachegroup::{Answer, Op};
        report.bytes = blocks.iter().map(|b| b.visible).sum();
        let Some(group) = self.group.get() else {
            report.failed_blocks = blocks.len() as u64;
            report.error = Some("this mount is not in a cache group".into());
            return;
        };
        let op = match action {
            CacheAction::GroupWarm => Op::Warm,
            CacheAction::GroupEvict => Op::Evict,
            _ => Op::Check,
        };
        // Per block: the owner's address and whether it holds the block now.
        let outcomes = crate::par::par_map(blocks, 8, |b| match group.owner(&b.key) {
            None => (
                String::new(),
                Err("no member of the group has weight".to_string()),
            ),
            Some(owner) if group.is_me(&owner) => (
                owner.addr.clone(),
                Ok(self.local_group_op(op, &b.key, b.len)),
            ),
            Some(owner) => {
                let r = match group.peers.request(&owner.addr, op, &b.key, b.len) {
                    Ok(Answer::Done) => Ok(op != Op::Evict),
                    Ok(_) => Ok(false),
                    Err(e) => Err(e.to_string()),
                };
                (owner.addr.clone(), r)
            }
        });
        let mut per_member: std::collections::BTreeMap<String, u64> = Default::default();
        for (b, outcome) in blocks.iter().zip(outcomes) {
            match outcome {
                (addr, Ok(held)) => {
                    let bytes = if held { b.visible } else { 0 };
                    *per_member.entry(addr).or_insert(0) += bytes;
                    report.cached += bytes;
                }
                (_, Err(e)) => {
                    report.failed_blocks += 1;
                    report.error.get_or_insert(e);
                }
            }
        }
        report.members = per_member.into_iter().collect();
    }

    /// A group operation on a block this process owns.
    fn local_group_op(self: &Arc<Self>, op: tessera_cachegroup::Op, key: &str, len: u64) -> bool {
        use tessera_cachegroup::Op;
        let on_disk =
            |me: &Self| me.disk.as_ref().is_some_and(|d| d.contains(key)) || me.mem.contains(key);
        match op {
            Op::Evict => {
                self.mem.remove(key);
                if let Some(d) = &self.disk {
                    d.remove(key);
                }
                false
            }
            Op::Warm if !on_disk(self) => {
                let me = self.clone();
                let k = key.to_string();
                let fetched = self.rt.block_on(async move {
                    let data = me.fetch_owned(&k, len).await.map_err(|e| e.to_string())?;
                    me.keep_warmed(k, data).await
                });
                fetched.is_ok()
            }
            _ => on_disk(self),
        }
    }

    async fn keep_warmed(
        self: &Arc<Self>,
        key: String,
        data: Bytes,
    ) -> std::result::Result<(), String> {
        if self.disk.is_none() {
            self.mem.insert(&key, data);
            return Ok(());
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || match &me.disk {
            Some(disk) => disk
                .insert(&key, &data)
                .map_err(|e| format!("cannot write block {key} to the disk cache: {e}")),
            None => Ok(()),
        })
        .await
        .map_err(|e| format!("disk cache writer failed: {e}"))?
    }
}
