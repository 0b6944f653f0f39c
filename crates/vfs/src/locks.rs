//! POSIX record locks, OFD locks and flock: taking, testing and releasing
//! them, and the waits of blocking requests (on a thread of their own, never
//! on a request thread).

use super::*;

impl Vfs {
    pub fn getlk(
        &self,
        ino: Ino,
        owner: u64,
        typ: i32,
        start: u64,
        end: u64,
    ) -> Result<Option<PosixLock>> {
        let deadline = std::time::Instant::now() + LOCAL_RELEASE_GRACE;
        loop {
            match self.meta.getlk(ino, owner, typ, start, end)? {
                Some(held) if held.local && std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                other => return Ok(other),
            }
        }
    }

    /// Take, change or release a POSIX record lock (flocks arrive as
    /// whole-file record locks). `done` gets the answer. A lock that must
    /// wait (`block`, F_SETLKW) waits on a thread of its own, never on the
    /// caller's: the caller is a FUSE worker, and a few waiters holding all
    /// of them would leave the mount unable to serve anything, the unlock
    /// that would free them included. The waiter gives up (EINTR) when the
    /// process that asked is gone or has a signal to take (killed, or
    /// interrupted: the kernel's FUSE_INTERRUPT does not reach this layer,
    /// and a killed process waits for the answer in uninterruptible
    /// sleep), so a dead process never ends up holding a lock.
    pub fn setlk(self: &Arc<Self>, lock: LockRequest, done: Box<dyn FnOnce(Result<()>) + Send>) {
        let LockRequest {
            ino,
            fh,
            owner,
            pid,
            typ,
            start,
            end,
            block,
        } = lock;
        if typ != libc::F_UNLCK {
            {
                let mut l = self.locked.lock();
                l.insert(ino);
            }
            if let Some(h) = fh.and_then(|fh| self.handle(fh).ok()) {
                {
                    let mut owners = h.lock_owners.lock();
                    if !owners.contains(&owner) {
                        owners.push(owner);
                    }
                }
            }
        }
        let deadline = std::time::Instant::now() + LOCAL_RELEASE_GRACE;
        let first = loop {
            match self.meta.setlk(ino, owner, pid, typ, start, end) {
                Err(MetaError::WouldBlock)
                    if !block
                        && std::time::Instant::now() < deadline
                        && self
                            .meta
                            .getlk(ino, owner, typ, start, end)
                            .ok()
                            .flatten()
                            .is_some_and(|held| held.local) =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                other => break other,
            }
        };
        match first {
            Err(MetaError::WouldBlock) if block => {}
            other => return done(other.map_err(VfsError::from)),
        }
        {
            let _one_check = self.deadlock_checks.lock();
            if self.would_deadlock(&lock) {
                return done(Err(deadlock()));
            }
            self.lock_waits.lock().insert(owner, lock);
        }
        let me = self.clone();
        let waiter = std::thread::Builder::new()
            .name("tessera-lockwait".into())
            .spawn(move || {
                let mut wait = Duration::from_millis(5);
                let answer = loop {
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_millis(200));
                    if pid != 0 && gone_or_signalled(pid) {
                        break Err(VfsError::new(
                            libc::EINTR,
                            "the process waiting for the lock is gone or was interrupted",
                        ));
                    }
                    match me.meta.setlk(ino, owner, pid, typ, start, end) {
                        // Still blocked, maybe by another holder now (a
                        // lock freed in between): a cycle may have formed
                        // since the wait began, as Linux checks on each wake.
                        Err(MetaError::WouldBlock) => {
                            let _one_check = me.deadlock_checks.lock();
                            if me.would_deadlock(&lock) {
                                me.lock_waits.lock().remove(&owner);
                                break Err(deadlock());
                            }
                        }
                        other => break other.map_err(VfsError::from),
                    }
                };
                me.lock_waits.lock().remove(&owner);
                done(answer)
            });
        if let Err(e) = waiter {
            self.lock_waits.lock().remove(&owner);
            warn!(error = %e, "no thread to wait for a lock on");
        }
    }

    /// Whether `lock`, about to wait, closes a cycle of waiters in this
    /// mount: its holder waits for a lock whose holder waits … for a lock
    /// `lock`'s owner holds (F_SETLKW's EDEADLK, which Linux detects the
    /// same way, one blocker at a time). Holders on other mounts end the
    /// chain: their waits are not known here.
    fn would_deadlock(&self, lock: &LockRequest) -> bool {
        let waits = self.lock_waits.lock().clone();
        let mut wanted = *lock;
        for _ in 0..64 {
            let held = self.meta.getlk(
                wanted.ino,
                wanted.owner,
                wanted.typ,
                wanted.start,
                wanted.end,
            );
            let Ok(Some(held)) = held else {
                return false;
            };
            if !held.local {
                return false;
            }
            if held.owner == lock.owner {
                return true;
            }
            match waits.get(&held.owner) {
                Some(next) => wanted = *next,
                None => return false,
            }
        }
        false
    }

    /// Whether this mount may hold a lock on `ino`; closes of files never
    /// locked here skip the unlock transaction.
    pub(crate) fn may_hold_locks(&self, ino: Ino) -> bool {
        self.locked.lock().contains(&ino)
    }
}

fn deadlock() -> VfsError {
    VfsError::new(
        libc::EDEADLK,
        "waiting would deadlock: the holder waits for a lock this owner holds",
    )
}

/// How long a lock held by a process of this mount is looked at again
/// before a conflict with it is reported: the kernel sends the release that
/// ends a flock or an open file description lock after close() has
/// returned, so a lock freed by a close just now may still be on record.
const LOCAL_RELEASE_GRACE: Duration = Duration::from_millis(50);

/// A lock call as the kernel makes it.
#[derive(Debug, Clone, Copy)]
pub struct LockRequest {
    pub ino: Ino,
    /// The handle the call came through (None when unknown).
    pub fh: Option<u64>,
    /// Who holds the lock: a process's files, an open file description
    /// (OFD locks) or a flock's file, as an opaque id.
    pub owner: u64,
    /// The process that asked (0: none to watch while waiting).
    pub pid: u32,
    /// F_RDLCK, F_WRLCK or F_UNLCK.
    pub typ: i32,
    pub start: u64,
    /// Inclusive end (u64::MAX: to the end of the file).
    pub end: u64,
    /// Wait for a conflicting lock to go (F_SETLKW).
    pub block: bool,
}

/// Whether process (or thread) `pid` has exited or has a signal pending
/// that it neither blocks nor ignores, from `/proc/{pid}/status`.
fn gone_or_signalled(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    let mask = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let pending = mask("SigPnd:") | mask("ShdPnd:");
    status.contains("State:\tZ") || pending & !mask("SigBlk:") & !mask("SigIgn:") != 0
}
