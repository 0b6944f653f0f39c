//! flock and POSIX record locks, stored per inode so that every mount of a
//! volume sees them. An owner is (session id, lock owner from the kernel).
//! Requests never block here; the caller retries a conflicting blocking
//! request.

use crate::fs::Meta;
use crate::keys;
use crate::kv::scan_prefix;
use crate::{Ino, MetaError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlockType {
    Read,
    Write,
    Unlock,
}

/// A POSIX lock as F_GETLK reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PosixLock {
    /// libc::F_RDLCK, F_WRLCK or F_UNLCK.
    pub typ: i32,
    pub start: u64,
    /// Inclusive end; u64::MAX means to the end of the file.
    pub end: u64,
    pub pid: u32,
    /// The holder is a process of this mount.
    pub local: bool,
    /// The holder's lock owner (meaningful within its mount).
    pub owner: u64,
}

/// Decoded flock table: (sid, owner, is_write).
fn decode_flocks(v: &[u8]) -> Vec<(u64, u64, bool)> {
    v.chunks_exact(17)
        .map(|c| {
            let sid = keys::be_u64(c, 0).unwrap_or(0);
            let owner = keys::be_u64(c, 8).unwrap_or(0);
            (sid, owner, c[16] == b'W')
        })
        .collect()
}

fn encode_flocks(l: &[(u64, u64, bool)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(l.len() * 17);
    for (sid, owner, w) in l {
        v.extend_from_slice(&sid.to_be_bytes());
        v.extend_from_slice(&owner.to_be_bytes());
        v.push(if *w { b'W' } else { b'R' });
    }
    v
}

/// One POSIX lock range of one owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    sid: u64,
    owner: u64,
    pid: u32,
    write: bool,
    start: u64,
    end: u64,
}

const RANGE_LEN: usize = 8 + 8 + 4 + 1 + 8 + 8;

fn decode_ranges(v: &[u8]) -> Vec<Range> {
    v.chunks_exact(RANGE_LEN)
        .map(|c| Range {
            sid: keys::be_u64(c, 0).unwrap_or(0),
            owner: keys::be_u64(c, 8).unwrap_or(0),
            pid: u32::from_be_bytes([c[16], c[17], c[18], c[19]]),
            write: c[20] == b'W',
            start: keys::be_u64(c, 21).unwrap_or(0),
            end: keys::be_u64(c, 29).unwrap_or(0),
        })
        .collect()
}

fn encode_ranges(l: &[Range]) -> Vec<u8> {
    let mut v = Vec::with_capacity(l.len() * RANGE_LEN);
    for r in l {
        v.extend_from_slice(&r.sid.to_be_bytes());
        v.extend_from_slice(&r.owner.to_be_bytes());
        v.extend_from_slice(&r.pid.to_be_bytes());
        v.push(if r.write { b'W' } else { b'R' });
        v.extend_from_slice(&r.start.to_be_bytes());
        v.extend_from_slice(&r.end.to_be_bytes());
    }
    v
}

impl Meta {
    /// flock(2) semantics; a conflict is [`MetaError::WouldBlock`].
    pub fn flock(&self, ino: Ino, owner: u64, typ: FlockType) -> Result<()> {
        let sid = self.session_id();
        self.txn(|tx| {
            let key = keys::flock(ino);
            let mut locks = tx.get(&key)?.map(|v| decode_flocks(&v)).unwrap_or_default();
            locks.retain(|(s, o, _)| !(*s == sid && *o == owner));
            match typ {
                FlockType::Unlock => {}
                FlockType::Read => {
                    if locks.iter().any(|(_, _, w)| *w) {
                        return Err(MetaError::WouldBlock);
                    }
                    locks.push((sid, owner, false));
                }
                FlockType::Write => {
                    if !locks.is_empty() {
                        return Err(MetaError::WouldBlock);
                    }
                    locks.push((sid, owner, true));
                }
            }
            if locks.is_empty() {
                tx.delete(&key)
            } else {
                tx.set(&key, &encode_flocks(&locks))
            }
        })
    }

    /// F_GETLK: the first lock of another owner that conflicts, if any.
    pub fn getlk(
        &self,
        ino: Ino,
        owner: u64,
        typ: i32,
        start: u64,
        end: u64,
    ) -> Result<Option<PosixLock>> {
        let sid = self.session_id();
        self.read_txn(|tx| {
            let ranges = tx
                .get(&keys::plock(ino))?
                .map(|v| decode_ranges(&v))
                .unwrap_or_default();
            // The conflicting lock that starts first, as local file systems
            // report it.
            Ok(ranges
                .iter()
                .filter(|r| {
                    !(r.sid == sid && r.owner == owner)
                        && r.start <= end
                        && start <= r.end
                        && (r.write || typ == libc::F_WRLCK)
                })
                .min_by_key(|r| r.start)
                .map(|r| PosixLock {
                    typ: if r.write {
                        libc::F_WRLCK
                    } else {
                        libc::F_RDLCK
                    },
                    start: r.start,
                    end: r.end,
                    pid: r.pid,
                    local: r.sid == sid,
                    owner: r.owner,
                }))
        })
    }

    /// F_SETLK: set, change or release `[start, end]` for this owner.
    pub fn setlk(
        &self,
        ino: Ino,
        owner: u64,
        pid: u32,
        typ: i32,
        start: u64,
        end: u64,
    ) -> Result<()> {
        if start > end {
            return Err(MetaError::Invalid(
                "lock range ends before it starts".into(),
            ));
        }
        let sid = self.session_id();
        self.txn(|tx| {
            let key = keys::plock(ino);
            let ranges = tx.get(&key)?.map(|v| decode_ranges(&v)).unwrap_or_default();
            let mine = |r: &Range| r.sid == sid && r.owner == owner;
            if typ != libc::F_UNLCK
                && ranges.iter().any(|r| {
                    !mine(r)
                        && r.start <= end
                        && start <= r.end
                        && (r.write || typ == libc::F_WRLCK)
                })
            {
                return Err(MetaError::WouldBlock);
            }
            let mut next = Vec::with_capacity(ranges.len() + 2);
            for r in ranges {
                if !mine(&r) || r.end < start || r.start > end {
                    next.push(r);
                    continue;
                }
                if r.start < start {
                    next.push(Range {
                        end: start - 1,
                        ..r
                    });
                }
                if r.end > end {
                    next.push(Range {
                        start: end + 1,
                        ..r
                    });
                }
            }
            if typ != libc::F_UNLCK {
                next.push(Range {
                    sid,
                    owner,
                    pid,
                    write: typ == libc::F_WRLCK,
                    start,
                    end,
                });
            }
            if next.is_empty() {
                tx.delete(&key)
            } else {
                tx.set(&key, &encode_ranges(&next))
            }
        })
    }

    /// Drop every lock a session holds (its end, or its cleanup when stale).
    pub(crate) fn release_session_locks(&self, sid: u64) -> Result<()> {
        self.txn(|tx| {
            for prefix in [keys::FLOCK_PREFIX, keys::PLOCK_PREFIX] {
                for (k, v) in scan_prefix(tx, prefix)? {
                    let flock = prefix == keys::FLOCK_PREFIX;
                    let new = if flock {
                        let mut l = decode_flocks(&v);
                        l.retain(|(s, _, _)| *s != sid);
                        (l.is_empty(), encode_flocks(&l))
                    } else {
                        let mut l = decode_ranges(&v);
                        l.retain(|r| r.sid != sid);
                        (l.is_empty(), encode_ranges(&l))
                    };
                    if new.0 {
                        tx.delete(&k)?;
                    } else if new.1 != v {
                        tx.set(&k, &new.1)?;
                    }
                }
            }
            Ok(())
        })
    }
}
