//! The registry of cache groups: each member (a `tessera cache-server`, or a
//! mount with `--cache-group`) keeps a record under `G{group}\0{member id}`
//! with its address, weight, a heartbeat and a few figures of its cache,
//! rewritten every second or so. Readers list a group's records and treat
//! those whose heartbeat stopped as gone. This is live state, like
//! sessions: dumps leave it out.

use serde::{Deserialize, Serialize};

use crate::fs::Meta;
use crate::keys;
use crate::kv::scan_prefix;
use crate::{MetaError, Result};

/// What a member says about itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MemberRecord {
    /// Unique for the member's life: host, pid and start time.
    pub id: String,
    /// Where peers connect (`ip:port`).
    pub addr: String,
    /// Share of the blocks it owns, relative to the others (0: none).
    pub weight: u32,
    /// Milliseconds since the epoch of the last heartbeat.
    pub heartbeat_ms: i64,
    /// `cache-server` or `mount`.
    #[serde(default)]
    pub kind: String,
    /// Bytes in its disk cache, and the quota.
    #[serde(default)]
    pub cache_bytes: u64,
    #[serde(default)]
    pub cache_capacity: u64,
    /// Blocks it served from its cache, and those it had to fetch.
    #[serde(default)]
    pub hits: u64,
    #[serde(default)]
    pub misses: u64,
    #[serde(default)]
    pub bytes_served: u64,
}

fn corrupt(e: serde_json::Error) -> MetaError {
    MetaError::Corrupt(format!("cache group member record: {e}"))
}

impl Meta {
    /// Write (or refresh) a member's record.
    pub fn group_register(&self, group: &str, member: &MemberRecord) -> Result<()> {
        let raw = serde_json::to_vec(member).map_err(corrupt)?;
        self.txn(|tx| tx.set(&keys::group_member(group, &member.id), &raw))
    }

    /// Remove a member's record (it leaves at once for the others).
    pub fn group_leave(&self, group: &str, member: &str) -> Result<()> {
        self.txn(|tx| tx.delete(&keys::group_member(group, member)))
    }

    /// Every record of a group, live or not, in member id order.
    pub fn group_members(&self, group: &str) -> Result<Vec<MemberRecord>> {
        self.read_txn(|tx| {
            let mut out = Vec::new();
            for (_, v) in scan_prefix(tx, &keys::group_prefix(group))? {
                out.push(serde_json::from_slice(&v).map_err(corrupt)?);
            }
            Ok(out)
        })
    }
}
