//! Taking part in a cache group, for a mount (`--cache-group`) and a
//! cache server alike: serve this process's caches to peers, register as a
//! member, and let the data path ask blocks' owners. A member given weight
//! 0 drains: it hands each block it holds to the block's new owner and
//! drops it, and reports an empty cache once done.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tessera_cachegroup::{
    check_group_name, listen_addr, AddressError, Answer, Group, GroupConfig, Op, PeerTimeouts,
    Server, Tls,
};
use tessera_meta::{Format, MemberRecord, Meta, MetaError};
use tessera_metrics::Metrics;
use tracing::{info, warn};

use crate::{ChunkStore, Serving};

/// Heartbeat of group members, and the silence after which one is out.
const HEARTBEAT: Duration = Duration::from_secs(1);
const MEMBER_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a draining member looks for blocks to hand over.
const DRAIN_EVERY: Duration = Duration::from_secs(2);

/// How a process joins.
pub struct JoinSpec<'a> {
    pub name: &'a str,
    /// Listen address and weight when sharing; None for a consumer.
    pub share: Option<(&'a str, u32)>,
    pub backup_period: Duration,
    /// What the member is, shown by `tessera cache-group status`.
    pub kind: &'a str,
    pub tls: Option<Arc<Tls>>,
}

/// Why a process could not join its group.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Address(#[from] AddressError),
    #[error("cache group {group}: {source}")]
    Listen {
        group: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot join cache group {group}: {source}")]
    Register {
        group: String,
        #[source]
        source: MetaError,
    },
}

/// This process in a group: the view, the server when sharing, and the
/// drain when its weight is 0. [`Membership::leave`] ends all three.
pub struct Membership {
    pub group: Arc<Group>,
    pub server: Option<Server>,
    drain: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
}

impl Membership {
    /// Leave the group: the record goes, the server and the drain stop.
    pub fn leave(mut self) {
        if let Some((stop, thread)) = self.drain.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
        self.group.leave();
        if let Some(s) = &self.server {
            s.stop();
        }
    }
}

/// Join a group with `chunks` as this member's cache (see the module doc).
pub fn join(
    meta: &Arc<Meta>,
    format: &Format,
    chunks: &Arc<ChunkStore>,
    metrics: &Arc<Metrics>,
    spec: JoinSpec<'_>,
) -> Result<Membership, JoinError> {
    check_group_name(spec.name)?;
    let secret = tessera_cachegroup::Secret::derive(&format.uuid, spec.name);
    let (server, member) = match spec.share {
        Some((listen, weight)) => {
            let want = listen_addr(listen)?;
            let server = Server::start(
                &want.to_string(),
                secret,
                Arc::new(Serving(chunks.clone())),
                metrics.clone(),
                spec.tls.clone(),
            )
            .map_err(|source| JoinError::Listen {
                group: spec.name.to_string(),
                source,
            })?;
            // Peers need an address they can reach: not 0.0.0.0.
            let mut advertised = server.addr();
            if advertised.ip().is_unspecified() {
                advertised.set_ip(tessera_cachegroup::address::host_ip());
            }
            let record = MemberRecord {
                id: advertised.to_string(),
                addr: advertised.to_string(),
                weight,
                kind: spec.kind.to_string(),
                ..Default::default()
            };
            (Some(server), Some(record))
        }
        None => (None, None),
    };
    let usage_chunks = chunks.clone();
    let group = Group::join(
        meta.clone(),
        GroupConfig {
            name: spec.name.to_string(),
            volume_uuid: format.uuid.clone(),
            member: member.clone(),
            heartbeat: HEARTBEAT,
            member_timeout: MEMBER_TIMEOUT,
            backup_period: spec.backup_period,
            timeouts: PeerTimeouts::default(),
            tls: spec.tls.clone(),
        },
        Box::new(move || usage_chunks.cache_usage()),
        metrics.clone(),
    )
    .map_err(|source| JoinError::Register {
        group: spec.name.to_string(),
        source,
    })?;
    chunks.set_group(group.clone());
    match &member {
        Some(m) => {
            info!(group = spec.name, member = %m.id, weight = m.weight, "joined the cache group")
        }
        None => info!(group = spec.name, "using the cache group without sharing"),
    }
    let drain = match &member {
        Some(m) if m.weight == 0 => start_drain(chunks.clone(), group.clone()),
        _ => None,
    };
    Ok(Membership {
        group,
        server,
        drain,
    })
}

impl ChunkStore {
    /// Bytes cached and the cache's capacity, as a member publishes them:
    /// the disk tier's when there is one, else the memory tier's.
    pub fn cache_usage(&self) -> (u64, u64) {
        match &self.disk {
            Some(d) => (
                d.used(),
                self.config()
                    .disk_cache
                    .as_ref()
                    .map(|c| c.capacity)
                    .unwrap_or(0),
            ),
            None => (self.mem.used() as u64, self.config().mem_cache_size as u64),
        }
    }

    /// Hand every block of the disk cache that another member owns now to
    /// that owner (it warms the block, taking it from us within the backup
    /// period) and drop our copy. Returns how many moved; stops early when
    /// no member is there to take blocks or `stop` is set.
    pub fn hand_over_blocks(&self, group: &Group, stop: &AtomicBool) -> usize {
        let Some(disk) = self.disk.as_ref() else {
            return 0;
        };
        let mut moved = 0usize;
        for key in disk.keys() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let Some(owner) = group.owner(&key) else {
                break; // nobody to hand blocks to yet
            };
            if group.is_me(&owner) {
                continue;
            }
            let Some((_, len, _)) = disk.open_sealed(&key) else {
                continue;
            };
            match group.peers.request(&owner.addr, Op::Warm, &key, len as u64) {
                Ok(Answer::Done) => {
                    self.mem.remove(&key);
                    disk.remove(&key);
                    moved += 1;
                }
                Ok(_) => {}
                Err(e) => warn!(key = %key, error = %e, "drain: cannot hand a block over"),
            }
        }
        moved
    }
}

/// The drain of a member of weight 0: hands blocks over every
/// [`DRAIN_EVERY`] until stopped.
fn start_drain(
    chunks: Arc<ChunkStore>,
    group: Arc<Group>,
) -> Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)> {
    chunks.disk.as_ref()?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let spawned = std::thread::Builder::new()
        .name("group-drain".into())
        .spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                // Sleep in short steps so that leaving is prompt.
                for _ in 0..20 {
                    if stopping.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(DRAIN_EVERY / 20);
                }
                let moved = chunks.hand_over_blocks(&group, &stopping);
                if moved > 0 {
                    info!(
                        moved,
                        left = chunks.disk.as_ref().map(|d| d.len()).unwrap_or(0),
                        "drain: blocks handed to their owners"
                    );
                }
            }
        });
    match spawned {
        Ok(thread) => Some((stop, thread)),
        Err(e) => {
            warn!(error = %e, "cannot start draining");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DataPath, DataPathOptions};

    fn volume() -> (Arc<Meta>, Format) {
        let meta = Arc::new(Meta::new(
            Arc::new(tessera_meta::engines::MemoryEngine::default()),
            tessera_meta::MetaConfig::default(),
        ));
        let format = tessera_meta::conformance::test_format();
        meta.init(&format).expect("format");
        (meta, format)
    }

    fn data_path(meta: &Arc<Meta>, format: &Format, cache: Option<&std::path::Path>) -> DataPath {
        let mut options = DataPathOptions::default();
        options.chunks.disk_cache = cache.map(|d| tessera_blockcache::DiskCacheConfig {
            dirs: vec![d.to_path_buf()],
            capacity: 1 << 30,
            free_space_ratio: 0.0,
            expire: None,
            eviction: Default::default(),
        });
        DataPath::open(meta, format, options).expect("data path")
    }

    /// A sharing member registers with its kind and weight and is seen by a
    /// consumer; a drained member (weight 0) owns nothing; leaving removes
    /// the record and stops the drain at once.
    #[test]
    fn members_register_are_seen_and_leave() {
        let (meta, format) = volume();
        let cache = tempfile::tempdir().expect("tempdir");
        let server = data_path(&meta, &format, Some(cache.path()));
        let spec = |share, kind| JoinSpec {
            name: "gpu",
            share,
            backup_period: Duration::from_secs(1),
            kind,
            tls: None,
        };
        let a = join(
            &meta,
            &format,
            &server.chunks,
            &server.metrics,
            spec(Some(("127.0.0.1:0", 1)), "cache-server"),
        )
        .expect("join");
        let addr = a.server.as_ref().expect("serving").addr().to_string();
        let drained_cache = tempfile::tempdir().expect("tempdir");
        let drained = data_path(&meta, &format, Some(drained_cache.path()));
        let b = join(
            &meta,
            &format,
            &drained.chunks,
            &drained.metrics,
            spec(Some(("127.0.0.1:0", 0)), "mount"),
        )
        .expect("join drained");
        assert!(b.drain.is_some(), "weight 0 drains");
        let reader = data_path(&meta, &format, None);
        let c = join(
            &meta,
            &format,
            &reader.chunks,
            &reader.metrics,
            spec(None, "mount"),
        )
        .expect("consumer");
        assert!(c.server.is_none() && c.group.me().is_none());
        let records = meta.group_members("gpu").expect("members");
        assert_eq!(records.len(), 2, "{records:?}");
        let record = records.iter().find(|r| r.addr == addr).expect("a's record");
        assert_eq!((record.weight, record.kind.as_str()), (1, "cache-server"));
        for key in ["vol/chunks/0/0/1_0_100", "vol/chunks/0/0/2_0_100"] {
            assert_eq!(c.group.owner(key).expect("an owner").addr, addr);
        }
        let started = std::time::Instant::now();
        b.leave();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the drain stops at once"
        );
        a.leave();
        assert!(meta.group_members("gpu").expect("members").is_empty());
        assert!(matches!(
            join(
                &meta,
                &format,
                &reader.chunks,
                &reader.metrics,
                JoinSpec {
                    name: "a b",
                    ..spec(None, "mount")
                }
            ),
            Err(JoinError::Address(AddressError::GroupName(_)))
        ));
        c.leave();
    }
}
