//! Directory listings kept for `--open-cache`: a mount that serves a model
//! lists its directories at every load (`os.walk`, a loader's glob), and
//! over a far link each `opendir` and `readdir` is a metadata round trip.
//! With `--open-cache`, a directory's attributes and names are trusted for
//! that long, as the attributes of files opened read-only are. Any change
//! this mount makes retires every kept listing (a generation moves), so
//! the mount always sees its own changes; other mounts' changes show once
//! the time is up.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_meta::{Attr, Entry, Ino};

/// Listings kept at most; past it, all go.
const MAX_DIRS: usize = 4096;

struct Kept {
    at: Instant,
    generation: u64,
    attr: Attr,
    names: Arc<Vec<Entry>>,
}

#[derive(Default)]
pub(crate) struct DirCache {
    generation: AtomicU64,
    dirs: Mutex<HashMap<Ino, Kept>>,
}

impl DirCache {
    /// This mount is changing something: no kept listing stands.
    pub(crate) fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The current generation, read before a listing is taken from the
    /// engine: a change made while it was taken keeps it from being kept.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The attributes and names of `dir`, if kept less than `ttl` ago and
    /// nothing changed since.
    pub(crate) fn get(&self, dir: Ino, ttl: Duration) -> Option<(Attr, Arc<Vec<Entry>>)> {
        if ttl.is_zero() {
            return None;
        }
        let now = self.generation();
        let mut dirs = self.dirs.lock();
        match dirs.get(&dir) {
            Some(k) if k.generation == now && k.at.elapsed() < ttl => {
                Some((k.attr, k.names.clone()))
            }
            Some(_) => {
                dirs.remove(&dir);
                None
            }
            None => None,
        }
    }

    /// Keep `dir`'s listing, taken at `generation`.
    pub(crate) fn put(&self, dir: Ino, generation: u64, attr: Attr, names: Arc<Vec<Entry>>) {
        let mut dirs = self.dirs.lock();
        if dirs.len() >= MAX_DIRS {
            dirs.clear();
        }
        dirs.insert(
            dir,
            Kept {
                at: Instant::now(),
                generation,
                attr,
                names,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_stands_until_its_time_or_a_change_of_this_mount() {
        let c = DirCache::default();
        let attr = Attr::new(tessera_meta::FileType::Dir, 0o755, 0, 0, (0, 0));
        let names = Arc::new(Vec::new());
        let ttl = Duration::from_millis(200);
        assert!(c.get(1, ttl).is_none());
        let g = c.generation();
        c.put(1, g, attr, names.clone());
        assert!(c.get(1, ttl).is_some());
        assert!(
            c.get(1, Duration::ZERO).is_none(),
            "no --open-cache, no listing kept"
        );
        c.changed();
        assert!(c.get(1, ttl).is_none(), "a change of this mount retires it");
        // A listing taken while a change was made is not trusted.
        let g = c.generation();
        c.changed();
        c.put(2, g, attr, names.clone());
        assert!(c.get(2, ttl).is_none());
        let g = c.generation();
        c.put(3, g, attr, names);
        std::thread::sleep(Duration::from_millis(250));
        assert!(c.get(3, ttl).is_none(), "its time is up");
    }
}
