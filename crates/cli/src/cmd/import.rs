//! `tessera import SOURCE_URL META_URL DEST_PATH`: make the objects under a
//! storage URL appear as files of a volume without copying a byte. Each
//! file is one external slice pointing at its object (key, size, ETag).
//! Rerun, it is incremental: new objects appear, changed ones (other ETag
//! or size) point at the new version, vanished ones are removed unless
//! `--keep-deleted`.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use tessera_meta::{Ctx, ExternalObject, FileType, Ino, Meta, MetaConfig, MetaError, ROOT_INO};
use tessera_object::ObjectInfo;

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
    #[command(flatten)]
    pub storage_flags: StorageFlags,
}

/// A file an earlier import made: where it is and what it points at.
struct Existing {
    parent: Ino,
    name: Vec<u8>,
    etag: Option<String>,
    size: u64,
}

/// Files of one directory whose records are read in one transaction.
const RECORDS_PER_TXN: usize = 1000;

/// Every imported file under `dir` whose object came from `source`, by key:
/// per directory one listing, and the files' records read a thousand at a
/// time (was two transactions per file).
fn existing(meta: &Meta, dir: Ino, source: &str) -> Result<HashMap<String, Existing>> {
    let mut out = HashMap::new();
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        let mut files = Vec::new();
        for e in meta.readdir(d, false)? {
            match e.typ {
                FileType::Dir => stack.push(e.ino),
                FileType::File => files.push(e),
                _ => {}
            }
        }
        for batch in files.chunks(RECORDS_PER_TXN) {
            let inos: Vec<Ino> = batch.iter().map(|e| e.ino).collect();
            for (e, found) in batch.iter().zip(meta.imported_objects(&inos)?) {
                let Some((_, obj)) = found else { continue };
                if obj.source == source {
                    out.insert(
                        obj.key.clone(),
                        Existing {
                            parent: d,
                            name: e.name.clone(),
                            etag: obj.etag,
                            size: obj.size,
                        },
                    );
                }
            }
        }
    }
    Ok(out)
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listed: Vec<ObjectInfo> = rt
        .block_on(store.list(""))
        .with_context(|| format!("cannot list {}", redact(&source)))?
        .into_iter()
        .filter(|o| !o.key.ends_with('/') && !o.key.is_empty() && a.filter.wants(&o.key))
        .collect();
    let ctx = Ctx {
        uid: 0,
        gid: 0,
        pid: std::process::id(),
        umask: 0,
    };
    let made = Mutex::new(HashMap::new());
    let dest = mkdir_p(&meta, &ctx, ROOT_INO, a.dest.trim_matches('/'), &made)?;
    // Directories are made relative to the destination from here on.
    made.lock().clear();
    let mut before = existing(&meta, dest, &source)?;

    let mut todo = Vec::new();
    let mut unchanged = 0u64;
    for o in &listed {
        match before.remove(&o.key) {
            Some(e) if e.etag == o.etag && e.size == o.size => unchanged += 1,
            Some(e) => todo.push((o, Some(e))),
            None => todo.push((o, None)),
        }
    }
    let gone: Vec<(String, Existing)> = before.into_iter().collect();
    if listed.is_empty() && !gone.is_empty() && !a.keep_deleted && !a.allow_empty {
        return Err(anyhow!(
            "{} lists no objects{}, yet {} files were imported from it: refusing to remove them all (check the source and its credentials, or pass --allow-empty if it really is empty)",
            redact(&source),
            if a.filter.is_empty() { "" } else { " that the filters take" },
            gone.len()
        ));
    }

    let total_bytes: u64 = todo.iter().map(|(o, _)| o.size).sum();
    let bar = ProgressBar::new(todo.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {pos}/{len} objects {msg} [{elapsed_precise}] {wide_bar}",
        )
        .map_err(|e| anyhow!("progress bar: {e}"))?,
    );
    let bytes_done = AtomicU64::new(0);
    let (added, changed) = (AtomicU64::new(0), AtomicU64::new(0));
    let failures = Mutex::new(Vec::new());
    let store_keys = a.store_credentials;
    tessera_chunk::par::par_for_each(&todo, a.threads, |(o, old)| {
        let result = (|| -> Result<()> {
            let (dir, name) = o.key.rsplit_once('/').unwrap_or(("", o.key.as_str()));
            if let Some(e) = old {
                meta.unlink(e.parent, &e.name)?;
            }
            let parent = mkdir_p(&meta, &ctx, dest, dir, &made)?;
            let obj = ExternalObject {
                source: source.clone(),
                key: o.key.clone(),
                size: o.size,
                etag: o.etag.clone(),
                endpoint: options.endpoint.clone(),
                region: options.region.clone(),
                access_key: options.access_key.clone().filter(|_| store_keys),
                secret_key: options.secret_key.clone().filter(|_| store_keys),
            };
            meta.import_file(&ctx, parent, name.as_bytes(), &obj, 0o644, o.mtime)?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                if old.is_some() { &changed } else { &added }.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                let mut f = failures.lock();
                f.push(format!("{}: {e:#}", o.key));
            }
        }
        let b = bytes_done.fetch_add(o.size, Ordering::Relaxed) + o.size;
        bar.set_message(format!(
            "{:.1}/{:.1} GiB",
            b as f64 / 1073741824.0,
            total_bytes as f64 / 1073741824.0
        ));
        bar.inc(1);
    });
    bar.finish_and_clear();

    let mut deleted = 0u64;
    if !a.keep_deleted {
        for (key, e) in &gone {
            match meta.unlink(e.parent, &e.name) {
                Ok(_) => deleted += 1,
                Err(err) => {
                    let mut f = failures.lock();
                    f.push(format!("{key}: removing: {err}"));
                }
            }
        }
    }
    meta.flush_usage()?;
    let failures = failures.into_inner();
    eprintln!(
        "imported {} into {}: {} new, {} changed, {} unchanged, {} removed{} ({} objects listed, {:.1} GiB) in {:.1}s",
        redact(&source),
        a.dest,
        added.load(Ordering::Relaxed),
        changed.load(Ordering::Relaxed),
        unchanged,
        deleted,
        if a.keep_deleted && !gone.is_empty() { format!(", {} kept though gone", gone.len()) } else { String::new() },
        listed.len(),
        listed.iter().map(|o| o.size).sum::<u64>() as f64 / 1073741824.0,
        started.elapsed().as_secs_f64()
    );
    if failures.is_empty() {
        Ok(())
    } else {
        for f in &failures {
            eprintln!("  failed: {f}");
        }
        Err(anyhow!("{} objects could not be imported", failures.len()))
    }
}
