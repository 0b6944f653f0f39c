//! `tessera import SOURCE_URL META_URL DEST_PATH`: make the objects under a
//! storage URL appear as files of a volume without copying a byte. Each
//! file is one external slice pointing at its object (key, size, ETag).
//! Rerun, it is incremental: new objects appear, changed ones (other ETag
//! or size) point at the new version, vanished ones are removed unless
//! `--keep-deleted`. The bucket is walked one directory (one level of a
//! `/`-delimited listing) at a time, so memory holds one directory, not
//! the bucket. `--lazy` imports nothing at once: mounts list each
//! directory when it is first looked up (`tessera_vfs::import`).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use tessera_meta::{
    Ctx, ExternalObject, FileType, Ino, LazyImport, Meta, MetaConfig, MetaError, ROOT_INO,
};
use tessera_object::{Listing, ObjectInfo};
use tessera_vfs::import::{import_ctx, DirReport, Syncer};

use crate::common::{open_volume, redact, StorageFlags};
use crate::filter::KeyFilter;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Objects to import: s3://bucket/prefix, or any storage URL.
    pub source: String,
    /// Metadata engine URL of the volume.
    pub meta_url: String,
    /// Directory in the volume that mirrors the source (made if missing).
    pub dest: String,
    #[command(flatten)]
    pub filter: KeyFilter,
    /// Files created at once.
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
    /// Keep files whose object has gone from the source.
    #[arg(long)]
    pub keep_deleted: bool,
    /// Accept a source that lists no objects at all, removing every file an
    /// earlier import made from it (without this, an empty listing is taken
    /// for a source that is missing or unreachable, and nothing is removed).
    #[arg(long)]
    pub allow_empty: bool,
    /// Store the source's access and secret keys with the volume, so mounts
    /// need no credentials of their own for it (off: read them from the
    /// environment at read time).
    #[arg(long)]
    pub store_credentials: bool,
    /// Import nothing now: record the source, and let mounts list each
    /// directory from it the first time it is looked up or read (for
    /// buckets too large to walk before the first mount).
    #[arg(long)]
    pub lazy: bool,
    /// With --lazy: seconds (or 90s, 5m, 1h) a directory's listing is
    /// trusted before a mount lists it again.
    #[arg(long, value_parser = crate::common::parse_seconds, default_value = "5m")]
    pub relist: f64,
    #[command(flatten)]
    pub storage_flags: StorageFlags,
}

/// The directory at `path` under `from`, made (with parents) if missing.
fn mkdir_p(
    meta: &Meta,
    ctx: &Ctx,
    from: Ino,
    path: &str,
    made: &Mutex<HashMap<String, Ino>>,
) -> Result<Ino> {
    if path.is_empty() {
        return Ok(from);
    }
    if let Some(ino) = made.lock().get(path).copied() {
        return Ok(ino);
    }
    let (parent_path, name) = path.rsplit_once('/').unwrap_or(("", path));
    let parent = mkdir_p(meta, ctx, from, parent_path, made)?;
    let ino = match meta.lookup(parent, name.as_bytes()) {
        Ok((ino, a)) if a.typ == FileType::Dir => ino,
        Ok(_) => {
            return Err(anyhow!(
                "{path} exists in the volume and is not a directory"
            ))
        }
        Err(MetaError::NotFound) => {
            match meta.mknod(ctx, parent, name.as_bytes(), FileType::Dir, 0o755, 0, None) {
                Ok((ino, _)) => ino,
                // Another thread made it first.
                Err(MetaError::Exists) => meta.lookup(parent, name.as_bytes())?.0,
                Err(e) => return Err(e.into()),
            }
        }
        Err(e) => return Err(e.into()),
    };
    {
        let mut m = made.lock();
        m.insert(path.to_string(), ino);
    }
    Ok(ino)
}

pub fn run(a: Args) -> Result<()> {
    let started = Instant::now();
    crate::common::seconds_in("--relist", a.relist, 0.0, crate::common::MAX_FLAG_SECONDS)?;
    let (meta, _) = open_volume(&a.meta_url, MetaConfig::default())?;
    let options = a.storage_flags.options()?;
    let source = a.source.trim_end_matches('/').to_string();
    if let Some(dir) = source.strip_prefix("file://") {
        if !std::path::Path::new(dir).is_dir() {
            return Err(anyhow!(
                "the source directory {dir} does not exist (nothing was imported or removed)"
            ));
        }
    }
    let store = tessera_object::open_store(&source, &options)
        .with_context(|| format!("cannot open the source {}", redact(&source)))?;
    let ctx = import_ctx();
    let made = Mutex::new(HashMap::new());
    let dest = mkdir_p(&meta, &ctx, ROOT_INO, a.dest.trim_matches('/'), &made)?;
    let how = LazyImport {
        origin: ExternalObject {
            source: source.clone(),
            endpoint: options.endpoint.clone(),
            region: options.region.clone(),
            access_key: options.access_key.clone().filter(|_| a.store_credentials),
            secret_key: options.secret_key.clone().filter(|_| a.store_credentials),
            ..Default::default()
        },
        relist_secs: a.relist,
        include: a.filter.include.clone(),
        exclude: a.filter.exclude.clone(),
        keep_deleted: a.keep_deleted,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if a.lazy {
        // One listing proves the source answers; nothing is imported now.
        rt.block_on(store.list_dir(""))
            .with_context(|| format!("cannot list {}", redact(&source)))?;
        meta.set_lazy_import(dest, &how)?;
        meta.flush_usage()?;
        eprintln!(
            "{} is imported lazily into {}: mounts list each directory the first time it is looked up or read, and again after {}s",
            redact(&source),
            a.dest,
            a.relist
        );
        return Ok(());
    }

    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {pos} objects {msg} [{elapsed_precise}]")
            .map_err(|e| anyhow!("progress bar: {e}"))?,
    );
    let seen_bytes = AtomicU64::new(0);
    let progress = |o: &ObjectInfo| {
        let b = seen_bytes.fetch_add(o.size, Ordering::Relaxed) + o.size;
        bar.set_message(format!("{:.1} GiB", b as f64 / 1073741824.0));
        bar.inc(1);
    };
    let syncer = Syncer {
        meta: &meta,
        how: &how,
        threads: a.threads,
        progress: &progress,
    };
    // Directory by directory, so memory holds one directory at a time:
    // (prefix, directory, whether its prefix was listed at all).
    let mut todo = vec![(String::new(), dest, true)];
    let mut total = DirReport::default();
    let mut listed = 0u64;
    let mut root = true;
    while let Some((prefix, dir, exists)) = todo.pop() {
        let listing = if exists {
            match rt.block_on(store.list_dir(&prefix)) {
                Ok(l) => l,
                Err(e) if root => {
                    return Err(anyhow!(e))
                        .with_context(|| format!("cannot list {}", redact(&source)))
                }
                Err(e) => {
                    total.failures.push(format!("{prefix}: listing: {e}"));
                    continue;
                }
            }
        } else {
            Listing::default()
        };
        listed += listing.objects.len() as u64;
        let guard = root && !a.allow_empty;
        let r = syncer.sync_dir(dir, &prefix, listing, guard)?;
        // An empty listing at the root is taken for a missing source: the
        // files there were kept, and the directories are not walked.
        let emptied = r.kept > 0 || (r.subdirs.is_empty() && !r.vanished.is_empty());
        if guard && emptied && !a.keep_deleted && r.added + r.unchanged == 0 {
            bar.finish_and_clear();
            return Err(anyhow!(
                "{} lists no objects{}, yet {} holds what an earlier import made from it ({} files, {} directories at its top): refusing to remove them all (check the source and its credentials, or pass --allow-empty if it really is empty)",
                redact(&source),
                if a.filter.is_empty() { "" } else { " that the filters take" },
                a.dest,
                r.kept,
                r.vanished.len()
            ));
        }
        root = false;
        todo.extend(r.subdirs.iter().map(|(p, ino)| (p.clone(), *ino, true)));
        // Directories the bucket no longer has: their imported files go.
        if !a.keep_deleted {
            todo.extend(r.vanished.iter().map(|(p, ino)| (p.clone(), *ino, false)));
        }
        total.added += r.added;
        total.changed += r.changed;
        total.unchanged += r.unchanged;
        total.removed += r.removed;
        total.kept += r.kept;
        total.failures.extend(r.failures);
    }
    bar.finish_and_clear();
    meta.flush_usage()?;
    eprintln!(
        "imported {} into {}: {} new, {} changed, {} unchanged, {} removed{} ({} objects listed, {:.1} GiB) in {:.1}s",
        redact(&source),
        a.dest,
        total.added,
        total.changed,
        total.unchanged,
        total.removed,
        if total.kept > 0 { format!(", {} kept though gone", total.kept) } else { String::new() },
        listed,
        seen_bytes.load(Ordering::Relaxed) as f64 / 1073741824.0,
        started.elapsed().as_secs_f64()
    );
    if total.failures.is_empty() {
        Ok(())
    } else {
        for f in &total.failures {
            eprintln!("  failed: {f}");
        }
        Err(anyhow!(
            "{} objects could not be imported",
            total.failures.len()
        ))
    }
}
