//! How each inode is open in the kernel: read by passthrough from a local
//! copy, or through the mount (and the page cache).
//!
//! FUSE fails an open with EIO if it would mix passthrough and cached
//! opens of one inode, or give one inode two backing files, so the adapter
//! decides every open against this table. `B` is the kernel's backing-file
//! id (kept opaque here, so the rules are tested without a kernel).
//!
//! The rules: the first open of an inode sets its mode (passthrough when
//! it is a read with a backing file offered, cached otherwise); later
//! opens join that mode, and readers share the one backing file; a writer
//! of an inode read by passthrough is refused with ETXTBSY, since the
//! kernel would send its writes to the local copy. The kernel sends
//! FUSE_RELEASE after close() has returned, so a writer first waits a
//! moment for releases already in flight (`cat f; echo x >> f`).

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::{Ino, Result, VfsError};

/// How long a writer waits for passthrough readers to be released before
/// it is refused.
pub const RELEASE_GRACE: Duration = Duration::from_secs(2);

enum IoMode<B> {
    Passthrough { backing: B, opens: usize },
    Cached { opens: usize },
}

/// The mode an inode is open in right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Current<B> {
    /// Not open: the next open chooses.
    Closed,
    Cached,
    Passthrough(B),
}

/// The open mode of every inode open in the kernel, and of every handle.
pub struct OpenModes<B> {
    table: Mutex<Table<B>>,
    /// Signalled whenever a handle is released.
    released: Condvar,
    grace: Duration,
}

struct Table<B> {
    inodes: HashMap<Ino, IoMode<B>>,
    /// The inode of every file handle; each counts for its inode's mode.
    handles: HashMap<u64, Ino>,
}

impl<B> Table<B> {
    fn current(&self, ino: Ino) -> Current<B>
    where
        B: Clone,
    {
        match self.inodes.get(&ino) {
            Some(IoMode::Passthrough { backing, .. }) => Current::Passthrough(backing.clone()),
            Some(IoMode::Cached { .. }) => Current::Cached,
            None => Current::Closed,
        }
    }
}

fn busy(ino: Ino) -> VfsError {
    tracing::debug!(
        ino,
        "file is open for reading from its local copy; refusing a writer"
    );
    VfsError::new(
        libc::ETXTBSY,
        "the file is open for reading from its local copy",
    )
}

impl<B: Clone> Default for OpenModes<B> {
    fn default() -> Self {
        Self::with_grace(RELEASE_GRACE)
    }
}

impl<B: Clone> OpenModes<B> {
    pub fn with_grace(grace: Duration) -> Self {
        OpenModes {
            table: Mutex::new(Table {
                inodes: HashMap::new(),
                handles: HashMap::new(),
            }),
            released: Condvar::new(),
            grace,
        }
    }

    /// The mode an open of `ino` would join, looked at before the open's
    /// own work (no lock is held across it). A writer of an inode read by
    /// passthrough waits up to the grace period for releases in flight,
    /// then is refused with ETXTBSY.
    pub fn before_open(&self, ino: Ino, read_only: bool) -> Result<Current<B>> {
        let mut table = self.table.lock();
        if !read_only {
            let _ = self.released.wait_while_for(
                &mut table,
                |t| matches!(t.current(ino), Current::Passthrough(_)),
                self.grace,
            );
            if let Current::Passthrough(_) = table.current(ino) {
                return Err(busy(ino));
            }
        }
        Ok(table.current(ino))
    }

    /// Record the opened handle `fh` of `ino` and decide its mode: it joins
    /// the inode's mode if another open settled it meanwhile, else takes
    /// passthrough with `offered` (a reader's backing file) or cached.
    /// Returns the backing file for a passthrough handle. A writer of an
    /// inode now read by passthrough is refused (ETXTBSY) and not recorded:
    /// the caller releases its handle.
    pub fn register(
        &self,
        ino: Ino,
        fh: u64,
        read_only: bool,
        offered: Option<B>,
    ) -> Result<Option<B>> {
        let mut table = self.table.lock();
        let backing = match table.inodes.get_mut(&ino) {
            Some(IoMode::Passthrough { backing, opens }) => {
                if !read_only {
                    return Err(busy(ino));
                }
                *opens += 1;
                Some(backing.clone())
            }
            Some(IoMode::Cached { opens }) => {
                *opens += 1;
                None
            }
            None => {
                let mode = match offered.filter(|_| read_only) {
                    Some(backing) => IoMode::Passthrough { backing, opens: 1 },
                    None => IoMode::Cached { opens: 1 },
                };
                let backing = match &mode {
                    IoMode::Passthrough { backing, .. } => Some(backing.clone()),
                    IoMode::Cached { .. } => None,
                };
                table.inodes.insert(ino, mode);
                backing
            }
        };
        table.handles.insert(fh, ino);
        Ok(backing)
    }

    /// The handle `fh` was released; the last handle of an inode drops its
    /// mode (and with it the backing file id).
    pub fn released(&self, fh: u64) {
        let mut table = self.table.lock();
        if let Some(ino) = table.handles.remove(&fh) {
            let last = match table.inodes.get_mut(&ino) {
                Some(IoMode::Passthrough { opens, .. }) | Some(IoMode::Cached { opens }) => {
                    *opens = opens.saturating_sub(1);
                    *opens == 0
                }
                None => false,
            };
            if last {
                table.inodes.remove(&ino);
            }
        }
        drop(table);
        self.released.notify_all();
    }

    /// The mode `ino` is open in now.
    pub fn current(&self, ino: Ino) -> Current<B> {
        self.table.lock().current(ino)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A backing file id that counts its live copies, as the kernel's does.
    type Backing = Arc<&'static str>;

    fn modes() -> OpenModes<Backing> {
        OpenModes::with_grace(Duration::from_millis(200))
    }

    #[test]
    fn the_first_reader_with_a_copy_sets_passthrough_and_readers_share_it() {
        let m = modes();
        let copy: Backing = Arc::new("copy");
        assert_eq!(m.before_open(7, true).unwrap(), Current::Closed);
        let b = m.register(7, 1, true, Some(copy.clone())).unwrap();
        assert!(Arc::ptr_eq(b.as_ref().unwrap(), &copy));
        // A second reader joins, even if it was offered a backing of its own.
        let other: Backing = Arc::new("other");
        let b2 = m.register(7, 2, true, Some(other)).unwrap();
        assert!(Arc::ptr_eq(b2.as_ref().unwrap(), &copy));
        m.released(1);
        assert!(matches!(m.current(7), Current::Passthrough(_)));
        m.released(2);
        assert_eq!(m.current(7), Current::Closed);
        // The table kept no copy of the backing id: closing the last reader closed it.
        drop(b);
        drop(b2);
        assert_eq!(Arc::strong_count(&copy), 1);
    }

    #[test]
    fn a_writer_never_gets_passthrough_and_readers_then_join_cached() {
        let m = modes();
        assert_eq!(
            m.register(7, 1, false, Some(Arc::new("copy"))).unwrap(),
            None
        );
        assert_eq!(m.current(7), Current::Cached);
        assert_eq!(m.before_open(7, true).unwrap(), Current::Cached);
        assert_eq!(m.register(7, 2, true, Some(Arc::new("x"))).unwrap(), None);
        m.released(1);
        m.released(2);
        assert_eq!(m.current(7), Current::Closed);
    }

    #[test]
    fn a_writer_of_a_file_read_by_passthrough_is_refused_and_not_counted() {
        let m = modes();
        m.register(7, 1, true, Some(Arc::new("copy"))).unwrap();
        let started = std::time::Instant::now();
        let e = m.before_open(7, false).unwrap_err();
        assert_eq!(e.errno, libc::ETXTBSY);
        assert!(started.elapsed() >= Duration::from_millis(200));
        // The race: the inode became passthrough between before_open and register.
        assert_eq!(
            m.register(7, 2, false, None).unwrap_err().errno,
            libc::ETXTBSY
        );
        m.released(2); // unknown handle: nothing happens
        assert!(matches!(m.current(7), Current::Passthrough(_)));
        m.released(1);
        assert_eq!(m.current(7), Current::Closed);
    }

    #[test]
    fn a_writer_waits_for_a_release_in_flight() {
        let m = Arc::new(modes());
        m.register(7, 1, true, Some(Arc::new("copy"))).unwrap();
        let m2 = m.clone();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            m2.released(1);
        });
        assert_eq!(m.before_open(7, false).unwrap(), Current::Closed);
        assert_eq!(m.register(7, 2, false, None).unwrap(), None);
        release.join().unwrap();
        assert_eq!(m.current(7), Current::Cached);
    }

    #[test]
    fn inodes_are_independent() {
        let m = modes();
        m.register(7, 1, true, Some(Arc::new("copy"))).unwrap();
        assert_eq!(m.before_open(8, false).unwrap(), Current::Closed);
        assert_eq!(m.register(8, 2, false, None).unwrap(), None);
        assert_eq!(m.current(8), Current::Cached);
    }
}
