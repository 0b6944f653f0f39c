//! Open file and directory handles, and the read pattern of each.

use parking_lot::Mutex;
use std::sync::Arc;

use tessera_chunk::{Access, Reach};
use tessera_meta::{Entry, Ino};

/// One open file description (what a file descriptor points at).
pub struct Handle {
    pub ino: Ino,
    /// open(2) flags.
    pub flags: i32,
    /// Directory listing taken by the read from offset 0 (the first, or
    /// one after rewinddir), so later offsets stay stable.
    pub entries: Mutex<Option<Arc<Vec<Entry>>>>,
    /// A directory's attributes at opendir: what fstat of the handle shows
    /// (with no links) once the directory is removed while open.
    pub dir_attr: Option<tessera_meta::Attr>,
    /// Content of an internal file, snapshotted at open.
    pub content: Option<Vec<u8>>,
    /// Owners that took locks through this handle. An open file
    /// description lock (F_OFD_SETLK) is owned by the description itself,
    /// and the kernel sends nothing to end it when the description closes:
    /// the release of the handle ends the locks of these owners.
    pub lock_owners: Mutex<Vec<u64>>,
    /// Owners a close flushed through this handle: processes, whose POSIX
    /// locks that flush dropped (open file description locks never come
    /// with a flush), so the release leaves their later locks alone.
    pub flushed_owners: Mutex<Vec<u64>>,
    /// A file's times when it was opened, for the access-time rule of the
    /// first read (taken once per handle).
    pub opened_times: Mutex<Option<tessera_meta::Attr>>,
    reads: Mutex<ReadPattern>,
}

/// Where this handle's reads have been going, and how far ahead to fetch.
#[derive(Default)]
struct ReadPattern {
    /// End of the furthest read so far.
    next: u64,
    /// Readahead window in bytes; 0 while reads look random.
    window: u64,
    /// Where the reader was when readahead was last asked for.
    asked_at: u64,
    /// A read has jumped (backwards, or past the slack) since the first.
    jumped: bool,
}

/// What a read asks to be fetched ahead of it: `len` bytes from `from`
/// (none when `len` is 0), as far as `reach` allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ahead {
    pub from: u64,
    pub len: u64,
    pub reach: Reach,
}

/// Reads this close to the last one still count as sequential: the kernel
/// issues a sequential stream's requests in parallel, so they arrive a
/// little out of order.
const SEQUENTIAL_SLACK: u64 = 2 << 20;

impl Handle {
    pub fn file(ino: Ino, flags: i32) -> Self {
        Handle {
            ino,
            flags,
            entries: Mutex::new(None),
            dir_attr: None,
            content: None,
            lock_owners: Mutex::new(Vec::new()),
            flushed_owners: Mutex::new(Vec::new()),
            opened_times: Mutex::new(None),
            reads: Mutex::new(ReadPattern::default()),
        }
    }

    pub fn snapshot(ino: Ino, content: Vec<u8>) -> Self {
        Handle {
            ino,
            flags: libc::O_RDONLY,
            entries: Mutex::new(None),
            dir_attr: None,
            content: Some(content),
            lock_owners: Mutex::new(Vec::new()),
            flushed_owners: Mutex::new(Vec::new()),
            opened_times: Mutex::new(None),
            reads: Mutex::new(ReadPattern::default()),
        }
    }

    pub fn dir(ino: Ino, attr: tessera_meta::Attr) -> Self {
        Handle {
            ino,
            flags: 0,
            entries: Mutex::new(None),
            dir_attr: Some(attr),
            content: None,
            lock_owners: Mutex::new(Vec::new()),
            flushed_owners: Mutex::new(Vec::new()),
            opened_times: Mutex::new(None),
            reads: Mutex::new(ReadPattern::default()),
        }
    }

    /// Record a read of `[off, off + len)`. The window starts at one block,
    /// doubles while reads stay sequential up to `max`, and shrinks fourfold
    /// per random read. Returns the access pattern and the range to fetch
    /// ahead: the window from the reader's end, asked for after a jump or
    /// once the reader has moved a block on since the last ask (empty in
    /// between). The range always starts at the reader, so blocks the store
    /// leaves for later because they are near at hand (on the local disk)
    /// are asked for again as the reader comes closer; it does that only
    /// for a handle whose reads have jumped ([`Reach::Near`]).
    pub fn track_read(&self, off: u64, len: u64, block: u64, max: u64) -> (Access, Ahead) {
        let mut p = self.reads.lock();
        let end = off + len;
        let sequential =
            off + SEQUENTIAL_SLACK >= p.next && off <= p.next + SEQUENTIAL_SLACK && max > 0;
        if sequential {
            p.window = if p.window == 0 {
                block.min(max)
            } else {
                (p.window * 2).min(max)
            };
            p.next = p.next.max(end);
        } else {
            p.window /= 4;
            if p.window < block {
                p.window = 0;
            }
            p.next = end;
            p.jumped = true;
        }
        let reach = if p.jumped { Reach::Near } else { Reach::Full };
        let mut ahead = Ahead {
            from: end,
            len: 0,
            reach,
        };
        if p.window == 0 {
            return (Access::Random, ahead);
        }
        let asked_lately = sequential && p.asked_at > 0 && end < p.asked_at + block;
        if !asked_lately {
            p.asked_at = end;
            ahead.len = p.window;
        }
        (Access::Sequential, ahead)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: u64 = 4 << 20;

    #[test]
    fn window_grows_while_sequential_and_shrinks_when_random() {
        let h = Handle::file(2, 0);
        let (a, ahead) = h.track_read(0, 128 << 10, B, 64 << 20);
        assert_eq!(a, Access::Sequential);
        assert_eq!(
            (ahead.from, ahead.len, ahead.reach),
            (128 << 10, B, Reach::Full)
        );
        let mut off = 128 << 10;
        let mut last = 0;
        for _ in 0..20 {
            h.track_read(off, 128 << 10, B, 64 << 20);
            off += 128 << 10;
            last = h.reads.lock().window;
        }
        assert_eq!(last, 64 << 20, "window reaches the maximum");
        let (a, ahead) = h.track_read(10 << 30, 4096, B, 64 << 20);
        assert_eq!(a, Access::Sequential, "one jump keeps a window");
        assert_eq!((ahead.len, ahead.reach), (16 << 20, Reach::Near));
        h.track_read(3 << 30, 4096, B, 64 << 20);
        h.track_read(5 << 30, 4096, B, 64 << 20);
        let (a, ahead) = h.track_read(1 << 30, 4096, B, 64 << 20);
        assert_eq!(
            (a, ahead.len),
            (Access::Random, 0),
            "random reads turn readahead off"
        );
    }

    /// The range asked for starts at the reader every time (so the store
    /// can leave blocks near at hand for later), once per block of progress.
    #[test]
    fn readahead_is_asked_from_the_reader_once_per_block() {
        let h = Handle::file(2, 0);
        let step = 1 << 20;
        let asks: Vec<(u64, u64)> = (0..12)
            .map(|i| h.track_read(i * step, step, B, 64 << 20).1)
            .filter(|ahead| ahead.len > 0)
            .map(|ahead| (ahead.from, ahead.len))
            .collect();
        assert_eq!(
            asks,
            vec![(1 << 20, B), (5 << 20, 64 << 20), (9 << 20, 64 << 20)]
        );
        let (_, ahead) = h.track_read(40 << 20, 4096, B, 64 << 20);
        assert_eq!(
            (ahead.from, ahead.len, ahead.reach),
            ((40 << 20) + 4096, 16 << 20, Reach::Near),
            "a jump asks at once, for blocks near at hand only near the reader"
        );
    }

    #[test]
    fn first_read_in_the_middle_is_random() {
        let h = Handle::file(2, 0);
        let (a, ahead) = h.track_read(100 << 20, 4096, B, 64 << 20);
        assert_eq!((a, ahead.len), (Access::Random, 0));
    }
}
