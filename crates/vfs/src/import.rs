//! Directories kept in step with a bucket prefix, one level at a time.
//!
//! [`sync_dir`] compares one directory of the volume with one level of a
//! bucket listing (the objects right under a prefix and the prefixes
//! below it): new objects become imported files, changed ones (other ETag
//! or size) point at the new version, files whose object is gone are
//! removed, and every deeper prefix is a directory. `tessera import` walks
//! a bucket with it directory by directory, so its memory is bounded by
//! the largest directory, not the bucket; a mount runs it for lazily
//! imported directories ([`LazyDirs`]) the first time each is looked up or
//! read, and again once its listing is older than the import's relist
//! time. Files and directories the import did not make are never touched.

use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_meta::{Ctx, ExternalObject, FileType, Ino, LazyImport, Meta, MetaError, UnlinkResult};
use tessera_object::{Listing, ObjectInfo};

use crate::glob::glob_match;

/// Files whose records are read in one transaction.
const RECORDS_PER_TXN: usize = 1000;

/// What syncing one directory did.
#[derive(Debug, Default)]
pub struct DirReport {
    pub added: u64,
    pub changed: u64,
    pub unchanged: u64,
    pub removed: u64,
    /// Bytes of the objects added or changed.
    pub bytes: u64,
    /// Directories for the listed prefixes: (prefix, inode).
    pub subdirs: Vec<(String, Ino)>,
    /// Directories here that no listed prefix names any more (their
    /// imported files are gone from the bucket): (prefix, inode).
    pub vanished: Vec<(String, Ino)>,
    /// Files the bucket no longer has that were kept: `keep_deleted`, or
    /// an empty listing taken for a missing source (`guard_empty`).
    pub kept: u64,
    /// Files removed, for the caller to free what they held.
    pub unlinked: Vec<UnlinkResult>,
    /// Objects that could not be imported, each with the reason.
    pub failures: Vec<String>,
}

/// Whether an import takes `key` (its `--include` / `--exclude`).
pub fn wants(how: &LazyImport, key: &str) -> bool {
    (how.include.is_empty() || how.include.iter().any(|p| glob_match(p, key)))
        && !how.exclude.iter().any(|p| glob_match(p, key))
}

/// Whether keys under the directory `prefix` (ending in `/`) may be
/// wanted: no `--include` pattern can match below it, or an `--exclude`
/// pattern `DIR/**` covers it, and its directory is not made at all.
pub fn prefix_wanted(how: &LazyImport, prefix: &str) -> bool {
    let dirs: Vec<&str> = prefix.trim_end_matches('/').split('/').collect();
    let excluded = how.exclude.iter().any(|p| {
        p.strip_suffix("/**")
            .is_some_and(|head| (1..=dirs.len()).any(|n| glob_match(head, &dirs[..n].join("/"))))
    });
    if excluded {
        return false;
    }
    how.include.is_empty()
        || how.include.iter().any(|p| {
            let segments: Vec<&str> = p.split('/').collect();
            for (i, dir) in dirs.iter().enumerate() {
                match segments.get(i) {
                    Some(s) if s.contains("**") => return true,
                    // The pattern's last segment names files, not directories.
                    Some(s) if i + 1 < segments.len() && glob_match(s, dir) => {}
                    _ => return false,
                }
            }
            true
        })
}

/// The owner of what an import makes.
pub fn import_ctx() -> Ctx {
    Ctx {
        uid: 0,
        gid: 0,
        pid: std::process::id(),
        umask: 0,
    }
}

/// Brings directories in step with their listings: [`Syncer::sync_dir`]
/// takes directory `dir` and one level of the bucket under `prefix`
/// (empty, or ending in `/`). With `guard_empty`, a listing with nothing
/// in it removes nothing: it is taken for a missing or unreachable source
/// (the import's root without `--allow-empty`).
pub struct Syncer<'a> {
    pub meta: &'a Meta,
    pub how: &'a LazyImport,
    /// Files created at once.
    pub threads: usize,
    /// Told of every object looked at.
    pub progress: &'a (dyn Fn(&ObjectInfo) + Sync),
}

impl Syncer<'_> {
    /// See the module comment and [`Syncer`].
    pub fn sync_dir(
        &self,
        dir: Ino,
        prefix: &str,
        listing: Listing,
        guard_empty: bool,
    ) -> Result<DirReport, MetaError> {
        let (meta, how, threads, progress) = (self.meta, self.how, self.threads, self.progress);
        let ctx = import_ctx();
        let source = how.origin.source.as_str();
        let mut report = DirReport::default();
        // What is there now: every name, and for files the object they read.
        let mut present: HashMap<Vec<u8>, (Ino, FileType, Option<ExternalObject>)> = HashMap::new();
        let entries = meta.readdir(dir, false)?;
        let files: Vec<&tessera_meta::Entry> =
            entries.iter().filter(|e| e.typ == FileType::File).collect();
        for batch in files.chunks(RECORDS_PER_TXN) {
            let inos: Vec<Ino> = batch.iter().map(|e| e.ino).collect();
            for (e, found) in batch.iter().zip(meta.imported_objects(&inos)?) {
                present.insert(e.name.clone(), (e.ino, e.typ, found.map(|(_, o)| o)));
            }
        }
        for e in entries.iter().filter(|e| e.typ != FileType::File) {
            present.insert(e.name.clone(), (e.ino, e.typ, None));
        }
        // Files this import made here (a file moved in from elsewhere keeps
        // its own key and is left alone).
        let ours = |o: &Option<ExternalObject>| {
            o.as_ref()
                .is_some_and(|o| o.source == source && o.key.starts_with(prefix))
        };

        let listed_nothing = listing.objects.is_empty() && listing.prefixes.is_empty();
        let mut todo: Vec<(ObjectInfo, Option<Vec<u8>>)> = Vec::new();
        for o in listing.objects {
            let Some(name) = o.key.strip_prefix(prefix).map(str::to_string) else {
                continue;
            };
            if !wants(how, &o.key) {
                continue;
            }
            if name.is_empty() || name == "." || name == ".." || name.len() > 255 {
                report
                    .failures
                    .push(format!("{}: not a usable file name", o.key));
                continue;
            }
            match present.remove(name.as_bytes()) {
                Some((_, FileType::File, Some(old)))
                    if old.source == source && old.key == o.key =>
                {
                    if old.etag == o.etag && old.size == o.size {
                        report.unchanged += 1;
                        progress(&o);
                    } else {
                        todo.push((o, Some(name.into_bytes())));
                    }
                }
                Some(_) => report.failures.push(format!(
                    "{}: {name} exists in the volume and was not imported from {source}",
                    o.key
                )),
                None => todo.push((o, None)),
            }
        }

        let failures = Mutex::new(Vec::new());
        let unlinked = Mutex::new(Vec::new());
        let (added, changed, bytes) = (
            std::sync::atomic::AtomicU64::new(0),
            std::sync::atomic::AtomicU64::new(0),
            std::sync::atomic::AtomicU64::new(0),
        );
        tessera_chunk::par::par_for_each(&todo, threads, |(o, old)| {
            use std::sync::atomic::Ordering::Relaxed;
            let name = &o.key[prefix.len()..];
            let result = (|| -> Result<(), MetaError> {
                if let Some(old) = old {
                    unlinked.lock().push(meta.unlink(dir, old)?);
                }
                let obj = ExternalObject {
                    key: o.key.clone(),
                    size: o.size,
                    etag: o.etag.clone(),
                    ..how.origin.clone()
                };
                meta.import_file(&ctx, dir, name.as_bytes(), &obj, 0o644, o.mtime)?;
                Ok(())
            })();
            match result {
                Ok(()) => {
                    if old.is_some() { &changed } else { &added }.fetch_add(1, Relaxed);
                    bytes.fetch_add(o.size, Relaxed);
                }
                Err(e) => failures.lock().push(format!("{}: {e}", o.key)),
            }
            progress(o);
        });
        report.added = added.into_inner();
        report.changed = changed.into_inner();
        report.bytes = bytes.into_inner();
        report.failures.extend(failures.into_inner());
        report.unlinked = unlinked.into_inner();

        for p in listing.prefixes {
            let Some(name) = p
                .strip_prefix(prefix)
                .map(|n| n.trim_end_matches('/').to_string())
            else {
                continue;
            };
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                continue;
            }
            if !prefix_wanted(how, &p) {
                continue;
            }
            match present.remove(name.as_bytes()) {
                Some((ino, FileType::Dir, _)) => report.subdirs.push((p, ino)),
                Some(_) => report.failures.push(format!(
                    "{p}: {name} exists in the volume and is not a directory"
                )),
                None => match meta.mknod(&ctx, dir, name.as_bytes(), FileType::Dir, 0o755, 0, None)
                {
                    Ok((ino, _)) => report.subdirs.push((p, ino)),
                    // Another mount made it first.
                    Err(MetaError::Exists) => {
                        let (ino, attr) = meta.lookup(dir, name.as_bytes())?;
                        if attr.typ == FileType::Dir {
                            report.subdirs.push((p, ino));
                        }
                    }
                    Err(e) => report.failures.push(format!("{p}: {e}")),
                },
            }
        }

        // What is left was not listed.
        for (name, (ino, typ, obj)) in present {
            match typ {
                FileType::Dir => {
                    let mut p = format!("{prefix}{}", String::from_utf8_lossy(&name));
                    p.push('/');
                    report.vanished.push((p, ino));
                }
                FileType::File if ours(&obj) => {
                    if how.keep_deleted || (guard_empty && listed_nothing) {
                        report.kept += 1;
                        continue;
                    }
                    match meta.unlink(dir, &name) {
                        Ok(r) => {
                            report.removed += 1;
                            report.unlinked.push(r);
                        }
                        // Removed meanwhile by someone else.
                        Err(MetaError::NotFound) => {}
                        Err(e) => report
                            .failures
                            .push(format!("{}: removing: {e}", String::from_utf8_lossy(&name))),
                    }
                }
                _ => {}
            }
        }
        Ok(report)
    }
}

/// Listings are retried this soon after a failure (the bucket down or
/// unreachable), whatever the relist time.
const RETRY_FAILED: Duration = Duration::from_secs(5);

/// A directory under a lazy import, as this mount knows it.
struct LazyDir {
    how: Arc<LazyImport>,
    /// Whether this is the import's own directory (guarded against an
    /// empty listing).
    root: bool,
    prefix: String,
    /// When the directory is to be listed again (None: never listed here).
    /// Its lock is held while listing, so lookups that arrive meanwhile
    /// wait for the one listing instead of making their own.
    next: Mutex<Option<Instant>>,
}

/// The lazily imported directories this mount has met.
#[derive(Default)]
pub(crate) struct LazyDirs {
    /// Whether the volume has any lazy import (as of the last reload):
    /// without one, a lookup pays nothing but this check.
    any: std::sync::atomic::AtomicBool,
    /// Every lazily listed directory met so far (imports and the
    /// directories their listings made), by inode.
    dirs: RwLock<HashMap<Ino, Arc<LazyDir>>>,
    /// On a read-only mount, a handle on the engine that may write the
    /// listed files' records.
    twin: Mutex<Option<Arc<Meta>>>,
}

impl LazyDirs {
    /// Take the imports the engine lists now.
    pub(crate) fn reload(&self, meta: &Meta) -> Result<(), MetaError> {
        let now: HashMap<Ino, Arc<LazyImport>> = meta
            .lazy_imports()?
            .into_iter()
            .map(|(ino, how)| (ino, Arc::new(how)))
            .collect();
        let mut dirs = self.dirs.write();
        // Directories of an import that went (or changed) are forgotten.
        dirs.retain(|_, d| now.values().any(|how| **how == *d.how));
        for (ino, how) in &now {
            let same = dirs.get(ino).is_some_and(|d| *d.how == **how);
            if !same {
                dirs.insert(
                    *ino,
                    Arc::new(LazyDir {
                        how: how.clone(),
                        root: true,
                        prefix: String::new(),
                        next: Mutex::new(None),
                    }),
                );
            }
        }
        self.any
            .store(!now.is_empty(), std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// The metadata handle listings write through: the mount's own, or on
    /// a read-only mount a writable twin of it (the bucket's changes are
    /// not the mount's user's to refuse).
    fn writer(&self, mount: &Arc<Meta>) -> Result<Arc<Meta>, MetaError> {
        if !mount.is_read_only() {
            return Ok(mount.clone());
        }
        let mut twin = self.twin.lock();
        if let Some(t) = twin.as_ref() {
            return Ok(t.clone());
        }
        let t = Arc::new(mount.writable_twin()?);
        *twin = Some(t.clone());
        Ok(t)
    }

    pub(crate) fn is_empty(&self) -> bool {
        !self.any.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl crate::Vfs {
    /// List `dir` from its bucket if it is a lazily imported directory
    /// whose listing is due. A listing that fails is logged and the
    /// directory served as it is; it is tried again in a few seconds.
    pub(crate) fn refresh_lazy(&self, dir: Ino) {
        if self.lazy.is_empty() {
            return;
        }
        let Some(d) = self.lazy.dirs.read().get(&dir).cloned() else {
            return;
        };
        let mut next = d.next.lock();
        if next.is_some_and(|at| Instant::now() < at) {
            return;
        }
        let _span = tracing::debug_span!("lazy_listing", dir, prefix = %d.prefix).entered();
        let listed = self.chunks.list_source(&d.how.origin, &d.prefix);
        let listing = match listed {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(dir, prefix = %d.prefix, error = %e, "listing a lazily imported directory failed; serving it as it is");
                *next = Some(Instant::now() + RETRY_FAILED);
                return;
            }
        };
        let relist = Duration::try_from_secs_f64(d.how.relist_secs).unwrap_or(Duration::MAX);
        let meta = match self.lazy.writer(&self.meta) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list a lazily imported directory");
                *next = Some(Instant::now() + RETRY_FAILED);
                return;
            }
        };
        let ignore = |_: &ObjectInfo| {};
        let syncer = Syncer {
            meta: &meta,
            how: &d.how,
            threads: 8,
            progress: &ignore,
        };
        let synced = syncer.sync_dir(dir, &d.prefix, listing, d.root);
        if !Arc::ptr_eq(&meta, &self.meta) {
            if let Err(e) = meta.flush_usage() {
                tracing::warn!(error = %e, "updating the usage of a lazy listing failed");
            }
        }
        match synced {
            Ok(report) => {
                for r in &report.unlinked {
                    self.freed(r);
                }
                if report.removed + report.changed > 0 {
                    self.forget_all_opens();
                }
                if report.added + report.changed + report.removed > 0 || !report.subdirs.is_empty()
                {
                    self.dir_cache.changed();
                }
                for f in &report.failures {
                    tracing::debug!(dir, "lazy import: {f}");
                }
                let mut dirs = self.lazy.dirs.write();
                for (prefix, ino) in report.subdirs {
                    dirs.entry(ino).or_insert_with(|| {
                        Arc::new(LazyDir {
                            how: d.how.clone(),
                            root: false,
                            prefix,
                            next: Mutex::new(None),
                        })
                    });
                }
                self.metrics().lazy_listing();
                *next = Some(
                    Instant::now()
                        .checked_add(relist)
                        .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365)),
                );
            }
            Err(e) => {
                tracing::warn!(dir, prefix = %d.prefix, error = %e, "syncing a lazily imported directory failed");
                *next = Some(Instant::now() + RETRY_FAILED);
            }
        }
    }

    /// Take the lazy imports the engine lists now (at start, then from
    /// the heartbeat).
    pub(crate) fn reload_lazy_imports(&self) {
        if let Err(e) = self.lazy.reload(&self.meta) {
            tracing::warn!(error = %e, "reading the lazy imports failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_meta::engines::MemoryEngine;
    use tessera_meta::{MetaConfig, ROOT_INO};

    fn meta() -> Meta {
        let meta = Meta::new(Arc::new(MemoryEngine::default()), MetaConfig::default());
        meta.init(&tessera_meta::conformance::test_format())
            .expect("format");
        meta
    }

    fn how(source: &str) -> LazyImport {
        LazyImport {
            origin: ExternalObject {
                source: source.into(),
                ..Default::default()
            },
            relist_secs: 60.0,
            ..Default::default()
        }
    }

    fn object(key: &str, size: u64, etag: &str) -> ObjectInfo {
        ObjectInfo {
            key: key.into(),
            size,
            etag: Some(etag.into()),
            mtime: Some(1_700_000_000),
        }
    }

    fn sync(
        meta: &Meta,
        how: &LazyImport,
        dir: Ino,
        prefix: &str,
        listing: Listing,
        guard: bool,
    ) -> DirReport {
        let none = |_: &ObjectInfo| {};
        let syncer = Syncer {
            meta,
            how,
            threads: 4,
            progress: &none,
        };
        syncer.sync_dir(dir, prefix, listing, guard).expect("sync")
    }

    fn names(meta: &Meta, dir: Ino) -> Vec<String> {
        let mut n: Vec<String> = meta
            .readdir(dir, false)
            .expect("readdir")
            .into_iter()
            .map(|e| String::from_utf8_lossy(&e.name).to_string())
            .collect();
        n.sort();
        n
    }

    #[test]
    fn a_directory_follows_its_listing_and_leaves_what_it_did_not_make() {
        let meta = meta();
        let how = how("s3://bucket/repo");
        let ctx = import_ctx();
        let (dir, _) = meta
            .mknod(&ctx, ROOT_INO, b"repo", FileType::Dir, 0o755, 0, None)
            .expect("mkdir");
        // A file of the user's own, and one named like an object.
        meta.mknod(&ctx, dir, b"notes", FileType::File, 0o644, 0, None)
            .expect("user file");
        meta.mknod(&ctx, dir, b"clash", FileType::File, 0o644, 0, None)
            .expect("user file");
        let first = Listing {
            objects: vec![
                object("m/a.bin", 10, "e1"),
                object("m/b.bin", 20, "e2"),
                object("m/clash", 5, "e3"),
                object("m/empty", 0, "e0"),
            ],
            prefixes: vec!["m/lora/".into()],
        };
        let r = sync(&meta, &how, dir, "m/", first, true);
        assert_eq!((r.added, r.changed, r.unchanged, r.removed), (3, 0, 0, 0));
        assert_eq!(r.failures.len(), 1, "the user's clash: {:?}", r.failures);
        assert_eq!(r.subdirs.len(), 1);
        assert_eq!(
            names(&meta, dir),
            ["a.bin", "b.bin", "clash", "empty", "lora", "notes"]
        );
        let (a, attr) = meta.lookup(dir, b"a.bin").expect("a.bin");
        assert_eq!(attr.length, 10);
        let (_, obj) = meta.imported_object(a).expect("record").expect("imported");
        assert_eq!(
            (obj.key.as_str(), obj.source.as_str()),
            ("m/a.bin", "s3://bucket/repo")
        );

        // Changed, unchanged, gone; the prefix gone too.
        let second = Listing {
            objects: vec![
                object("m/a.bin", 11, "e9"),
                object("m/c.bin", 1, "e4"),
                object("m/empty", 0, "e0"),
            ],
            prefixes: vec![],
        };
        let r = sync(&meta, &how, dir, "m/", second, true);
        assert_eq!((r.added, r.changed, r.unchanged, r.removed), (1, 1, 1, 1));
        assert_eq!(r.vanished.len(), 1, "lora is no longer listed");
        assert_eq!(meta.lookup(dir, b"a.bin").expect("a").1.length, 11);
        assert_eq!(
            names(&meta, dir),
            ["a.bin", "c.bin", "clash", "empty", "lora", "notes"]
        );

        // An empty listing of a guarded directory removes nothing...
        let r = sync(&meta, &how, dir, "m/", Listing::default(), true);
        assert_eq!((r.removed, r.kept), (0, 3));
        // ...unguarded, the bucket's files go, never the user's.
        let r = sync(&meta, &how, dir, "m/", Listing::default(), false);
        assert_eq!(r.removed, 3);
        assert_eq!(names(&meta, dir), ["clash", "lora", "notes"]);
        // Another source's files are not this import's.
        let other = self::how("s3://other");
        meta.import_file(
            &ctx,
            dir,
            b"theirs",
            &ExternalObject {
                source: "s3://other".into(),
                key: "m/theirs".into(),
                size: 3,
                ..Default::default()
            },
            0o644,
            None,
        )
        .expect("import");
        let r = sync(&meta, &how, dir, "m/", Listing::default(), false);
        assert_eq!(r.removed, 0);
        let r = sync(&meta, &other, dir, "m/", Listing::default(), false);
        assert_eq!(r.removed, 1);
    }

    #[test]
    fn filters_skip_keys_and_the_directories_no_wanted_key_can_be_in() {
        let mut h = how("file:///x");
        h.include = vec!["lora/**".into(), "ckpt/*.safetensors".into()];
        assert!(wants(&h, "lora/a/b.bin"));
        assert!(wants(&h, "ckpt/model.safetensors"));
        assert!(!wants(&h, "ckpt/deep/model.safetensors"));
        assert!(prefix_wanted(&h, "lora/"));
        assert!(prefix_wanted(&h, "lora/a/"));
        assert!(prefix_wanted(&h, "ckpt/"));
        assert!(
            !prefix_wanted(&h, "ckpt/deep/"),
            "only files right in ckpt/"
        );
        assert!(!prefix_wanted(&h, "logs/"));
        let mut h = how("file:///x");
        h.exclude = vec!["logs/**".into()];
        assert!(!prefix_wanted(&h, "logs/"));
        assert!(!prefix_wanted(&h, "logs/2026/"));
        assert!(prefix_wanted(&h, "data/"));

        let meta = meta();
        let mut h = how("file:///x");
        h.include = vec!["lora/**".into()];
        let listing = Listing {
            objects: vec![object("README.md", 1, "r")],
            prefixes: vec!["lora/".into(), "ckpt/".into()],
        };
        let r = sync(&meta, &h, ROOT_INO, "", listing, false);
        assert_eq!(r.added, 0);
        assert_eq!(r.subdirs.len(), 1);
        assert_eq!(names(&meta, ROOT_INO), ["lora"]);
    }

    /// A lazy import through the file system: a directory is listed when
    /// first looked up, not again within its relist time, and then again.
    #[test]
    fn a_lazy_directory_is_listed_at_its_first_lookup_and_again_after_its_time() {
        let src = tempfile::tempdir().expect("source");
        for (path, body) in [
            ("top.txt", "t"),
            ("a/one", "1"),
            ("a/b/two", "22"),
            ("z/x", "x"),
        ] {
            let p = src.path().join(path);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, body).expect("write");
        }
        let f = crate::tests::fixture(1 << 20);
        let v = &f.vfs;
        let ctx = import_ctx();
        let (repo, _) = v
            .meta
            .mknod(&ctx, ROOT_INO, b"repo", FileType::Dir, 0o755, 0, None)
            .expect("mkdir");
        let mut h = how(&format!("file://{}", src.path().display()));
        h.relist_secs = 0.5;
        v.meta.set_lazy_import(repo, &h).expect("lazy");
        v.reload_lazy_imports();
        let listings = || v.metrics().lazy_listings.get();
        assert_eq!(listings(), 0, "nothing is listed before it is looked up");

        let (a, _) = v.lookup(repo, b"a").expect("a");
        let (b, _) = v.lookup(a, b"b").expect("b");
        let (two, attr) = v.lookup(b, b"two").expect("two");
        assert_eq!(attr.length, 2);
        assert_eq!(listings(), 3, "the path's three directories, not z/");
        let (fh, _) = v.open(two, libc::O_RDONLY).expect("open");
        assert_eq!(&v.read(two, fh, 0, 10).expect("read")[..], b"22");
        v.release(two, fh, None).expect("release");
        // Within its time a directory is not listed again.
        v.lookup(a, b"one").expect("one");
        assert!(v.lookup(repo, b"missing").is_err());
        assert_eq!(listings(), 3);
        // Added and removed in the bucket: seen once the time is up.
        std::fs::write(src.path().join("a/new"), "new").expect("add");
        std::fs::remove_file(src.path().join("a/one")).expect("remove");
        assert!(v.lookup(a, b"new").is_err(), "not listed again yet");
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(v.lookup(a, b"new").expect("new now").1.length, 3);
        assert!(v.lookup(a, b"one").is_err(), "gone from the bucket");
        assert_eq!(listings(), 4);
    }
}
