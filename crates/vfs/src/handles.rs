//! Open file and directory handles.

use tessera_meta::{Entry, Ino};

/// One open file description (what a file descriptor points at).
pub struct Handle {
    pub ino: Ino,
    /// open(2) flags.
    pub flags: i32,
    /// Directory listing taken at opendir, so offsets stay stable.
    pub entries: Option<Vec<Entry>>,
}

impl Handle {
    pub fn file(ino: Ino, flags: i32) -> Self {
        Handle {
            ino,
            flags,
            entries: None,
        }
    }

    pub fn dir(ino: Ino, entries: Vec<Entry>) -> Self {
        Handle {
            ino,
            flags: 0,
            entries: Some(entries),
        }
    }
}
