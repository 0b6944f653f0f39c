//! The data path's side of the cache group.
//!
//! As a reader: a block cached nowhere locally is asked of its owner (when
//! that is another member) before object storage; the answer goes to the
//! memory tier only, the owner keeps the disk copy. A failed peer costs a
//! short timeout and the read goes to object storage (counted as a
//! fallback). As an owner (reading for itself, or asked by a peer): within
//! the backup period after a membership change, the block's previous owner
//! is asked first, then object storage; the block is then kept on disk.
//! Peers are served from this process's caches through [`Serving`].

use std::sync::Arc;

use bytes::Bytes;
use futures::future::FutureExt;
use tessera_cachegroup::{Answer, BlockSource, Group, Held, Op, PeerError};
use tessera_metrics::tier;
use tracing::warn;

use crate::read::FetchError;
use crate::ChunkStore;

impl ChunkStore {
    /// Take part in a cache group from now on.
    pub fn set_group(&self, group: Arc<Group>) {
        let _ = self.group.set(group);
    }

    pub fn group(&self) -> Option<&Arc<Group>> {
        self.group.get()
    }

    /// Ask `addr` (blocking work, off the async threads) and count the result.
    async fn ask_peer(
        self: &Arc<Self>,
        addr: String,
        op: Op,
        key: &str,
        len: u64,
    ) -> Option<Answer> {
        let group = self.group.get()?.clone();
        let k = key.to_string();
        let asked =
            tokio::task::spawn_blocking(move || group.peers.request(&addr, op, &k, len)).await;
        let (result, answer) = match asked {
            Ok(Ok(Answer::Data(b))) => ("hit", Some(Answer::Data(b))),
            Ok(Ok(other)) => ("miss", Some(other)),
            Ok(Err(PeerError::Down(_))) => ("down", None),
            Ok(Err(e)) => {
                warn!(block = key, error = %e, "cache group request failed");
                ("error", None)
            }
            Err(_) => ("error", None),
        };
        self.metrics
            .group_requests
            .get_or_create(&[("result", result)])
            .inc();
        answer
    }

    /// Whether `key` would be asked of another member of the group (this
    /// process is in or reads through a group, and does not own it).
    pub(crate) fn owned_by_a_peer(&self, key: &str) -> bool {
        self.group
            .get()
            .and_then(|g| g.owner(key).map(|o| !g.is_me(&o)))
            .unwrap_or(false)
    }

    /// A block another member owns, from that member; None when this
    /// process owns it, there is no group, or the owner failed (then the
    /// caller reads object storage and the fallback is counted).
    pub(crate) async fn from_owner(self: &Arc<Self>, key: &str, len: u64) -> Option<Bytes> {
        let group = self.group.get()?;
        let owner = group.owner(key)?;
        if group.is_me(&owner) {
            return None;
        }
        match self.ask_peer(owner.addr, Op::Get, key, len).await {
            Some(Answer::Data(b)) => {
                self.note_origin(key, tier::PEER, b.len());
                Some(b)
            }
            _ => {
                self.metrics.group_fallbacks.inc();
                None
            }
        }
    }

    /// A block straight from object storage, not cached (for benchmarks).
    pub async fn fetch_uncached(
        self: &Arc<Self>,
        key: &str,
        len: u64,
    ) -> std::result::Result<Bytes, String> {
        self.fetch_object(key, len).await.map_err(|e| e.to_string())
    }

    /// A block this process owns (or one read without a group): from the
    /// previous owner within the backup period, else from object storage.
    pub(crate) async fn fetch_owned(
        self: &Arc<Self>,
        key: &str,
        len: u64,
    ) -> std::result::Result<Bytes, FetchError> {
        if let Some(group) = self.group.get() {
            if let Some(prev) = group.previous_owner(key).filter(|p| !group.is_me(p)) {
                if let Some(Answer::Data(b)) = self.ask_peer(prev.addr, Op::Peek, key, len).await {
                    return Ok(b);
                }
            }
        }
        self.fetch_object(key, len).await
    }

    /// A block a peer asked this member for: fetched once however many ask
    /// (never passed on to another member, so views that differ for a
    /// moment cannot bounce a request around), kept in memory and on disk.
    fn serve_fetch(self: &Arc<Self>, key: &str, len: u64) -> Result<Bytes, String> {
        let fetch = {
            let mut map = self.served.lock();
            match map.get(key) {
                Some(f) => f.clone(),
                None => {
                    let me = self.clone();
                    let owned = key.to_string();
                    let f = async move {
                        let r = me.fetch_owned(&owned, len).await;
                        if let Ok(data) = &r {
                            me.mem.insert(&owned, data.clone());
                            let (m, k, d) = (me.clone(), owned.clone(), data.clone());
                            let _ = tokio::task::spawn_blocking(move || {
                                if let Some(disk) = &m.disk {
                                    if let Err(e) = disk.insert(&k, &d) {
                                        warn!(key = %k, error = %e, "cannot keep a served block on disk");
                                    }
                                }
                            })
                            .await;
                        }
                        {
 let mut map = me.served.lock();
                            map.remove(&owned);
                        }
                        r
                    }
                    .boxed()
                    .shared();
                    map.insert(key.to_string(), f.clone());
                    f
                }
            }
        };
        self.rt.block_on(fetch).map_err(|e| e.to_string())
    }
}

/// This process's caches, served to the group.
pub struct Serving(pub Arc<ChunkStore>);

impl BlockSource for Serving {
    fn held(&self, key: &str) -> Option<Held> {
        if let Some(data) = self.0.mem.get(key) {
            // The trailer of the disk copy (one small read) spares
            // checksumming the whole block again.
            let sums = self.0.disk.as_ref().and_then(|d| d.open_sealed(key));
            let sums = sums.filter(|s| s.1 == data.len()).map(|s| s.2);
            return Some(Held::Memory { data, sums });
        }
        let (file, len, sums) = self.0.disk.as_ref()?.open_sealed(key)?;
        Some(Held::File { file, len, sums })
    }

    fn fetch(&self, key: &str, len: u64) -> Result<Bytes, String> {
        self.0.serve_fetch(key, len)
    }

    fn evict(&self, key: &str) {
        self.0.mem.remove(key);
        if let Some(disk) = &self.0.disk {
            disk.remove(key);
        }
    }
}
