//! Client sessions: each mount registers one, beats a heartbeat, and cleans
//! up after sessions whose heartbeat stopped (their locks and the files they
//! held open after unlink).

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use crate::fs::{get_attr, incr, Meta};
use crate::keys;
use crate::kv::scan_prefix;
use crate::{now, MetaError, Result};

/// What a session tells others about itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionInfo {
    pub sid: u64,
    pub host: String,
    pub pid: u32,
    pub mountpoint: String,
    pub version: String,
    /// Seconds since the epoch of the last heartbeat.
    #[serde(default)]
    pub heartbeat: i64,
}

impl Meta {
    pub fn session_id(&self) -> u64 {
        self.sid.load(Ordering::Relaxed)
    }

    /// Register this process as a session; returns its id.
    pub fn new_session(&self, mut info: SessionInfo) -> Result<u64> {
        let sid = self.txn(|tx| incr(tx, "nextSession", 1))? as u64;
        info.sid = sid;
        let raw = serde_json::to_vec(&info).map_err(|e| MetaError::Corrupt(e.to_string()))?;
        self.txn(|tx| {
            tx.set(&keys::session(sid), &raw)?;
            tx.set(&keys::heartbeat(sid), &now().0.to_be_bytes())
        })?;
        self.sid.store(sid, Ordering::Relaxed);
        Ok(sid)
    }

    pub fn heartbeat(&self) -> Result<()> {
        let sid = self.session_id();
        if sid == 0 {
            return Ok(());
        }
        self.txn(|tx| tx.set(&keys::heartbeat(sid), &now().0.to_be_bytes()))
    }

    pub fn list_sessions(&self) -> Result<Vec<SessionInfo>> {
        self.read_txn(|tx| {
            let mut out = Vec::new();
            for (k, v) in scan_prefix(tx, keys::SESSION_PREFIX)? {
                let sid = keys::be_u64(&k, 2).unwrap_or(0);
                let Ok(mut info) = serde_json::from_slice::<SessionInfo>(&v) else {
                    continue;
                };
                info.heartbeat = tx
                    .get(&keys::heartbeat(sid))?
                    .and_then(|b| keys::be_u64(&b, 0))
                    .unwrap_or(0) as i64;
                out.push(info);
            }
            Ok(out)
        })
    }

    /// Remove a session and everything it held. Used at unmount and for
    /// sessions whose heartbeat stopped.
    pub fn close_session(&self, sid: u64) -> Result<()> {
        self.release_session_locks(sid)?;
        self.txn(|tx| {
            for (k, _) in scan_prefix(tx, &keys::sustained_prefix(sid))? {
                let ino = keys::be_u64(&k, 10).unwrap_or(0);
                tx.delete(&k)?;
                if let Ok(a) = get_attr(tx, ino) {
                    if a.nlink == 0 {
                        self.remove_inode(tx, ino, &a)?;
                    }
                }
            }
            tx.delete(&keys::session(sid))?;
            tx.delete(&keys::heartbeat(sid))
        })
    }

    /// Clean up every session whose last heartbeat is older than `max_age`
    /// seconds. Returns the ids cleaned.
    pub fn clean_stale_sessions(&self, max_age: i64) -> Result<Vec<u64>> {
        let limit = now().0 - max_age;
        let me = self.session_id();
        let stale: Vec<u64> = self
            .list_sessions()?
            .into_iter()
            .filter(|s| s.sid != me && s.heartbeat < limit)
            .map(|s| s.sid)
            .collect();
        for sid in &stale {
            tracing::info!(sid, "cleaning up stale session");
            self.close_session(*sid)?;
        }
        Ok(stale)
    }
}
