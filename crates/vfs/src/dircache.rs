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
    /// Read whole with every entry's attributes: lookups in the directory
    /// are answered from it, a name it lacks as absent.
    answers_lookups: bool,
}

impl Kept {
    /// Taken at the current generation `now`, less than `ttl` ago.
    fn stands(&self, now: u64, ttl: Duration) -> bool {
        self.generation == now && self.at.elapsed() < ttl
    }
}

/// What a kept listing says of a name.
#[derive(Debug, PartialEq)]
pub(crate) enum Answer {
    Found(Ino, Attr),
    Absent,
    /// No listing that answers lookups: ask the engine.
    Unknown,
}

#[derive(Default)]
pub(crate) struct DirCache {
    generation: AtomicU64,
    dirs: Mutex<HashMap<Ino, Kept>>,
    /// Directories too large to be read whole, and since when: lookups in
    /// them go to the engine one by one.
    large: Mutex<HashMap<Ino, Instant>>,
    /// When this mount last changed something, in milliseconds since
    /// [`EPOCH`] plus one (0: never). An atomic, not a lock: every write
    /// passes here.
    last_change: AtomicU64,
}

/// The clock `last_change` counts from.
static EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

fn millis_since_epoch() -> u64 {
    EPOCH.elapsed().as_millis() as u64 + 1
}

impl DirCache {
    /// This mount is changing something: no kept listing stands.
    pub(crate) fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.last_change
            .store(millis_since_epoch(), Ordering::Relaxed);
    }

    /// This mount changed nothing for `quiet`: it is reading, not writing.
    pub(crate) fn quiet_for(&self, quiet: Duration) -> bool {
        let last = self.last_change.load(Ordering::Relaxed);
        last == 0 || millis_since_epoch().saturating_sub(last) >= quiet.as_millis() as u64
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
            Some(k) if k.stands(now, ttl) => Some((k.attr, k.names.clone())),
            Some(_) => {
                dirs.remove(&dir);
                None
            }
            None => None,
        }
    }

    /// What `dir`'s kept listing says of `name`, if it was read whole
    /// with attributes (by a listing that also primed the open cache): a
    /// lookup then costs no round trip, and a name it lacks is absent for
    /// as long as the listing is trusted (as the kernel's negative entries
    /// are).
    pub(crate) fn lookup(&self, dir: Ino, name: &[u8], ttl: Duration) -> Answer {
        if ttl.is_zero() {
            return Answer::Unknown;
        }
        let now = self.generation();
        let dirs = self.dirs.lock();
        let Some(k) = dirs
            .get(&dir)
            .filter(|k| k.answers_lookups && k.stands(now, ttl))
        else {
            return Answer::Unknown;
        };
        match k.names.iter().find(|e| e.name == name) {
            Some(e) => e.attr.map_or(Answer::Unknown, |a| Answer::Found(e.ino, a)),
            None => Answer::Absent,
        }
    }

    /// `dir` was found too large to read whole (within `ttl`).
    pub(crate) fn is_large(&self, dir: Ino, ttl: Duration) -> bool {
        self.large
            .lock()
            .get(&dir)
            .is_some_and(|at| at.elapsed() < ttl)
    }

    pub(crate) fn mark_large(&self, dir: Ino) {
        let mut large = self.large.lock();
        if large.len() >= MAX_DIRS {
            large.clear();
        }
        large.insert(dir, Instant::now());
    }

    /// Keep `dir`'s listing, taken at `generation`.
    pub(crate) fn put(
        &self,
        dir: Ino,
        generation: u64,
        attr: Attr,
        names: Arc<Vec<Entry>>,
        answers_lookups: bool,
    ) {
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
                answers_lookups,
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
        c.put(1, g, attr, names.clone(), false);
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
        c.put(2, g, attr, names.clone(), false);
        assert!(c.get(2, ttl).is_none());
        let g = c.generation();
        c.put(3, g, attr, names, false);
        // A listing read whole with attributes answers lookups, a name it
        // lacks as absent; one read by name only answers none.
        let file = Attr::new(tessera_meta::FileType::File, 0o644, 0, 0, (0, 0));
        let entry = |name: &[u8], attr| Entry {
            name: name.to_vec(),
            ino: 9,
            typ: tessera_meta::FileType::File,
            attr,
        };
        let listed = Arc::new(vec![entry(b"a", Some(file)), entry(b"b", None)]);
        let g = c.generation();
        c.put(4, g, attr, listed.clone(), true);
        assert_eq!(c.lookup(4, b"a", ttl), Answer::Found(9, file));
        assert_eq!(
            c.lookup(4, b"b", ttl),
            Answer::Unknown,
            "gone between reads"
        );
        assert_eq!(c.lookup(4, b"c", ttl), Answer::Absent);
        assert_eq!(c.lookup(4, b"c", Duration::ZERO), Answer::Unknown);
        c.put(5, g, attr, listed, false);
        assert_eq!(c.lookup(5, b"a", ttl), Answer::Unknown, "names only");
        c.changed();
        assert_eq!(
            c.lookup(4, b"a", ttl),
            Answer::Unknown,
            "this mount changed"
        );
        std::thread::sleep(Duration::from_millis(250));
        assert!(c.get(3, ttl).is_none(), "its time is up");
    }
}
