//! Open file and directory handles.

use std::sync::atomic::{AtomicU64, Ordering};

use tessera_meta::{Entry, Ino};

/// One open file description (what a file descriptor points at).
pub struct Handle {
    pub ino: Ino,
    /// open(2) flags.
    pub flags: i32,
    /// Directory listing taken at opendir, so offsets stay stable.
    pub entries: Option<Vec<Entry>>,
    /// Lock owner of a flock taken through this handle, 0 if none.
    flock_owner: AtomicU64,
}

impl Handle {
    pub fn file(ino: Ino, flags: i32) -> Self {
        Handle {
            ino,
            flags,
            entries: None,
            flock_owner: AtomicU64::new(0),
        }
    }

    pub fn dir(ino: Ino, entries: Vec<Entry>) -> Self {
        Handle {
            ino,
            flags: 0,
            entries: Some(entries),
            flock_owner: AtomicU64::new(0),
        }
    }

    pub fn set_flock_owner(&self, owner: u64) {
        self.flock_owner.store(owner, Ordering::Relaxed);
    }

    pub fn flock_owner(&self) -> Option<u64> {
        match self.flock_owner.load(Ordering::Relaxed) {
            0 => None,
            o => Some(o),
        }
    }
}
