//! Whole directories read for a mount that trusts what it saw.
//!
//! A loader walks a model repository (`os.walk`, a glob) and then opens
//! every file in it. Over a far link each lookup and each open is a
//! metadata round trip, so a repository of a hundred adapters costs two
//! hundred of them. With `--open-cache`, a directory's listing is read
//! with every entry's attributes and every file's slice records
//! ([`Meta::readdir_with_records`]: one round trip on Redis and the SQL
//! engines, three on etcd) and kept: lookups in it and opens of its files
//! are then answered from memory for the open-cache time, as reopening an
//! already-opened file is. This mount's own changes retire all of it (the
//! listing's generation and the open cache's own rules), other mounts'
//! changes show once the time is up.
//!
//! With `--prefetch-on-open`, the listing also starts fetching the small
//! files the pattern names (at most one block each): those are the files
//! whose load is all latency, and fetched together they cost about one
//! round trip instead of one each. Larger files are fetched whole when
//! opened, as before.

use super::*;
use crate::dircache::Answer;

/// Directories of more entries than this are listed by name only (their
/// attributes and records would be a large read for a guess).
pub(crate) const MAX_TRUSTED_ENTRIES: usize = 4096;
/// Chunk records read with one listing at most.
pub(crate) const MAX_TRUSTED_CHUNKS: usize = 16_384;
/// A lookup reads its directory whole only when this mount has changed
/// nothing for this long: each change retires the kept listings, and a
/// mount that is writing (`tar x`, a checkpoint being saved) would read a
/// growing directory whole at every lookup.
const QUIET_BEFORE_LISTING: Duration = Duration::from_secs(1);

impl Vfs {
    /// Whether a listing is read whole, with attributes and records: the
    /// open cache keeps them, a prefetch pattern fetches the files they
    /// name.
    pub(crate) fn reads_listings_whole(&self) -> bool {
        !self.config.open_cache.is_zero() || !self.config.prefetch_on_open.is_empty()
    }

    /// `dir` was found too large to read whole lately (within the open
    /// cache's time, and at least a minute: a mount that only prefetches
    /// must not scan thousands of names again at every listing).
    pub(crate) fn listing_too_large(&self, dir: Ino) -> bool {
        let remembered = self.config.open_cache.max(Duration::from_secs(60));
        self.dir_cache.is_large(dir, remembered)
    }

    pub(crate) fn prefetch_pattern_matches(&self, name: &[u8]) -> bool {
        let name = String::from_utf8_lossy(name);
        self.config
            .prefetch_on_open
            .iter()
            .any(|p| crate::glob::glob_match(p, &name))
    }

    /// Read `dir` whole with its files' records, and keep or prefetch what
    /// it holds; returns its attributes and entries, or `None` for a
    /// directory too large to read whole (remembered, so lookups in it do
    /// not try again within the open-cache time).
    pub(crate) fn read_listing(
        &self,
        dir: Ino,
        generation: u64,
    ) -> tessera_meta::Result<Option<(Attr, Arc<Vec<Entry>>)>> {
        let keep = !self.config.open_cache.is_zero();
        let block = self.chunks.config().block_size as u64;
        let wanted = |name: &[u8], attr: &Attr| {
            keep || (attr.length <= block && self.prefetch_pattern_matches(name))
        };
        let listed = self.meta.readdir_with_records(
            dir,
            MAX_TRUSTED_ENTRIES,
            MAX_TRUSTED_CHUNKS,
            &wanted,
        )?;
        if !listed.complete {
            self.dir_cache.mark_large(dir);
            return Ok(None);
        }
        let names = Arc::new(listed.entries);
        if keep {
            self.dir_cache
                .put(dir, generation, listed.attr, names.clone(), true);
        }
        for (at, records) in listed.records {
            let entry = &names[at];
            let (ino, name) = (entry.ino, entry.name.as_slice());
            let Some(attr) = entry.attr else { continue };
            let records: Vec<Arc<Vec<SliceRecord>>> = records.into_iter().map(Arc::new).collect();
            if attr.length > 0
                && attr.length <= block
                && !self.config.prefetch_on_open.is_empty()
                && self.prefetch_pattern_matches(name)
            {
                let mut by_index =
                    |index: u32| Ok(records.get(index as usize).cloned().unwrap_or_default());
                self.chunks
                    .readahead(0, attr.length, tessera_chunk::Reach::Full, &mut by_index);
            }
            // Kept only if this mount changed nothing since the read began
            // and has no open of its own of the file (whose state is newer).
            if keep && self.dir_cache.generation() == generation && self.open_file(ino).is_none() {
                let file = self.new_open_file(ino, &attr);
                file.set_length(attr.length);
                file.prime_shared(records);
                self.keep_open(ino, attr, file);
            }
        }
        Ok(Some((listed.attr, names)))
    }

    /// A lookup answered from `parent`'s listing, read whole first if this
    /// mount trusts listings (`--open-cache`), has none of it and is not
    /// busy changing things: the first lookup in a directory costs its
    /// listing's read (one round trip, three on etcd), every later one
    /// (and the opens of its files) none. `None`: ask the engine.
    pub(crate) fn trusted_lookup(&self, parent: Ino, name: &[u8]) -> Option<Result<(Ino, Attr)>> {
        let ttl = self.config.open_cache;
        if ttl.is_zero() || name == b"." || name == b".." {
            return None;
        }
        let answer = match self.dir_cache.lookup(parent, name, ttl) {
            Answer::Unknown
                if !self.listing_too_large(parent)
                    && self.dir_cache.quiet_for(QUIET_BEFORE_LISTING) =>
            {
                let generation = self.dir_cache.generation();
                // An error (not a directory, gone) is the engine's to give
                // by the plain lookup's rules.
                let _ = self.read_listing(parent, generation).ok()?;
                self.dir_cache.lookup(parent, name, ttl)
            }
            other => other,
        };
        match answer {
            Answer::Found(ino, attr) => Some(Ok((ino, attr))),
            Answer::Absent => Some(Err(VfsError::new(
                libc::ENOENT,
                "no such file or directory",
            ))),
            Answer::Unknown => None,
        }
    }
}
