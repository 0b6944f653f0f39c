//! Membership: who is in the group now, and who was before the last change.
//!
//! A member (one that shares its cache) writes its record every heartbeat;
//! every participant, members and consumers alike, re-reads the group's
//! records on the same beat and keeps those whose heartbeat is recent. A
//! join or leave is therefore seen by all within a couple of heartbeats.
//! When the view changes, the previous one is kept for `backup_period`, so
//! a new owner can ask the block's previous owner before object storage.

use parking_lot::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tessera_meta::{MemberRecord, Meta};
use tessera_metrics::Metrics;
use tracing::{info, warn};

use crate::client::{PeerTimeouts, Peers};
use crate::placement::{owner, Member};
use crate::proto::Secret;

/// How a process takes part in a group.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub name: String,
    /// The volume's UUID, from which the group secret is derived.
    pub volume_uuid: String,
    /// This process's record when it shares its cache; None for a consumer
    /// (`--no-sharing`).
    pub member: Option<MemberRecord>,
    pub heartbeat: Duration,
    /// A member silent this long is out of the view.
    pub member_timeout: Duration,
    /// After a change, ask the previous owner first for this long.
    pub backup_period: Duration,
    pub timeouts: PeerTimeouts,
    /// TLS towards members, when the group uses it.
    pub tls: Option<Arc<crate::tls::Tls>>,
}

/// Figures a member publishes in its record each heartbeat.
pub type Usage = Box<dyn Fn() -> (u64, u64) + Send + Sync>;

struct View {
    members: Vec<Member>,
    previous: Vec<Member>,
    changed_at: Option<Instant>,
}

/// This process's view of one group, kept fresh by a background thread.
pub struct Group {
    meta: Arc<Meta>,
    config: GroupConfig,
    view: RwLock<View>,
    pub peers: Peers,
    stop: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Group {
    /// Join (or, as a consumer, watch) a group: the record is written and
    /// the first view read before this returns.
    pub fn join(
        meta: Arc<Meta>,
        config: GroupConfig,
        usage: Usage,
        metrics: Arc<Metrics>,
    ) -> tessera_meta::Result<Arc<Group>> {
        let secret = Secret::derive(&config.volume_uuid, &config.name);
        let group = Arc::new(Group {
            meta: meta.clone(),
            peers: Peers::new(&config.name, secret, config.timeouts, config.tls.clone()),
            config,
            view: RwLock::new(View {
                members: Vec::new(),
                previous: Vec::new(),
                changed_at: None,
            }),
            stop: Arc::new(AtomicBool::new(false)),
            metrics,
        });
        group.beat(&meta, &usage)?;
        let g = group.clone();
        let spawned = std::thread::Builder::new()
            .name("group-heartbeat".into())
            .spawn(move || {
                while !g.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(g.config.heartbeat);
                    if g.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Err(e) = g.beat(&meta, &usage) {
                        warn!(group = %g.config.name, error = %e, "cache group heartbeat failed");
                    }
                }
                g.remove_record();
            });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start the cache group heartbeat");
        }
        Ok(group)
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// This process's member id, when it shares its cache.
    pub fn me(&self) -> Option<&str> {
        self.config.member.as_ref().map(|m| m.id.as_str())
    }

    /// Leave the group now: the others drop us at their next beat.
    pub fn leave(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.remove_record();
    }

    fn remove_record(&self) {
        if let Some(me) = &self.config.member {
            if let Err(e) = self.meta.group_leave(&self.config.name, &me.id) {
                warn!(error = %e, "cannot leave the cache group cleanly");
            }
        }
    }

    /// Write our record (if we share) and re-read the view.
    fn beat(&self, meta: &Meta, usage: &Usage) -> tessera_meta::Result<()> {
        if let Some(me) = &self.config.member {
            let (cache_bytes, cache_capacity) = usage();
            let record = MemberRecord {
                heartbeat_ms: now_ms(),
                cache_bytes,
                cache_capacity,
                hits: self.metrics.group_hits.get(),
                misses: self.metrics.group_misses.get(),
                bytes_served: self.metrics.group_served_bytes.get(),
                ..me.clone()
            };
            meta.group_register(&self.config.name, &record)?;
        }
        let fresh_after = now_ms() - self.config.member_timeout.as_millis() as i64;
        let mut members: Vec<Member> = meta
            .group_members(&self.config.name)?
            .into_iter()
            .filter(|r| r.heartbeat_ms >= fresh_after)
            .map(|r| Member {
                id: r.id,
                addr: r.addr,
                weight: r.weight,
            })
            .collect();
        members.sort_by(|a, b| a.id.cmp(&b.id));
        self.metrics.group_members.set(members.len() as i64);
        {
            let mut view = self.view.write();
            if view.members != members {
                info!(
                    group = %self.config.name,
                    members = members.len(),
                    was = view.members.len(),
                    "cache group membership changed"
                );
                view.previous = std::mem::replace(&mut view.members, members);
                view.changed_at = Some(Instant::now());
            }
        }
        Ok(())
    }

    /// The members in the current view.
    pub fn members(&self) -> Vec<Member> {
        self.view.read().members.clone()
    }

    /// The owner of a block now.
    pub fn owner(&self, key: &str) -> Option<Member> {
        let view = self.view.read();
        owner(&view.members, key).cloned()
    }

    /// The block's owner before the last change, if that was within the
    /// backup period, is still alive, and is not the owner now.
    pub fn previous_owner(&self, key: &str) -> Option<Member> {
        let view = self.view.read();
        let changed = view.changed_at?;
        if changed.elapsed() > self.config.backup_period {
            return None;
        }
        let before = owner(&view.previous, key)?;
        let now = owner(&view.members, key);
        let alive = view.members.iter().any(|m| m.id == before.id);
        (alive && now.map(|n| n.id != before.id).unwrap_or(true)).then(|| before.clone())
    }

    pub fn is_me(&self, m: &Member) -> bool {
        self.me() == Some(m.id.as_str())
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
