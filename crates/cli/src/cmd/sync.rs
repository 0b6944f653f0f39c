//! `tessera sync SRC DST`: copy files between a directory (a path on a
//! Tessera mount, or any local directory) and a storage URL, either way or
//! between two of either, as plain files and objects with the same relative
//! keys: a volume can always be exported back to its owner's bucket.
//!
//! Both sides are listed first; each wanted source key is then copied
//! unless `--update` finds the destination unchanged (same size, and the
//! same ETag or a destination at least as new), and `--delete-dst` removes
//! destination keys the source lacks. Copies stream in 8 MiB pieces (large
//! objects as multipart uploads), several files at once (`--threads`).
//! Files written to a directory appear whole (temporary name, then rename)
//! and take the source's modification time, so a later `--update` run
//! recognises them.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use tessera_object::{DynStore, PartStream};

use crate::common::{human, redact, report_failures, StorageFlags};
use crate::filter::KeyFilter;

/// Bytes read or written in one piece.
const PIECE: u64 = 8 << 20;
/// Temporary files in a destination directory start with this.
const TMP_PREFIX: &str = ".tessera-sync.";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to copy from: a directory (e.g. on a Tessera mount) or a
    /// storage URL (s3://bucket/prefix, file:///dir, ...).
    pub src: String,
    /// Where to copy to: a directory or a storage URL.
    pub dst: String,
    #[command(flatten)]
    pub filter: KeyFilter,
    /// Files copied at once.
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
    /// Skip files unchanged at the destination: same size, and the same
    /// ETag or a destination at least as new as the source.
    #[arg(long)]
    pub update: bool,
    /// Delete destination files the source does not have (within the
    /// --include/--exclude patterns).
    #[arg(long)]
    pub delete_dst: bool,
    /// Say what would be copied and deleted, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub storage_flags: StorageFlags,
}

/// One side of a sync.
enum Side {
    Dir(PathBuf),
    Store { store: DynStore, url: String },
}

/// What a listing says about one file or object.
#[derive(Debug, Clone)]
struct Entry {
    size: u64,
    /// Seconds since the epoch.
    mtime: Option<i64>,
    etag: Option<String>,
}

impl Side {
    fn open(spec: &str, flags: &StorageFlags, is_source: bool) -> Result<Side> {
        let dir = match spec.strip_prefix("file://") {
            Some(path) => Some(PathBuf::from(path)),
            None if !spec.contains("://") => Some(PathBuf::from(spec)),
            None => None,
        };
        if let Some(dir) = dir {
            match std::fs::metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => bail!("{} is not a directory", dir.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !is_source => {
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                }
                Err(e) => return Err(e).with_context(|| format!("{}", dir.display())),
            }
            return Ok(Side::Dir(dir));
        }
        let url = spec.trim_end_matches('/').to_string();
        let store = tessera_object::open_store(&url, &flags.options()?)
            .with_context(|| format!("cannot open {}", redact(&url)))?;
        Ok(Side::Store { store, url })
    }

    fn describe(&self) -> String {
        match self {
            Side::Dir(d) => d.display().to_string(),
            Side::Store { url, .. } => redact(url),
        }
    }

    /// Every file or object, by relative key. Returns also how many entries
    /// were passed over (symlinks, special files, non-UTF-8 names).
    fn list(&self, rt: &tokio::runtime::Runtime) -> Result<(BTreeMap<String, Entry>, u64)> {
        let mut out = BTreeMap::new();
        let mut skipped = 0;
        match self {
            Side::Dir(root) => walk(root, root, &mut out, &mut skipped)?,
            Side::Store { store, url } => {
                let listed = rt
                    .block_on(store.list(""))
                    .with_context(|| format!("cannot list {}", redact(url)))?;
                for o in listed {
                    if o.key.is_empty() || o.key.ends_with('/') {
                        continue;
                    }
                    out.insert(
                        o.key,
                        Entry {
                            size: o.size,
                            mtime: o.mtime,
                            etag: o.etag,
                        },
                    );
                }
            }
        }
        Ok((out, skipped))
    }
}

fn walk(
    root: &Path,
    dir: &Path,
    out: &mut BTreeMap<String, Entry>,
    skipped: &mut u64,
) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
        let e = e.with_context(|| format!("{}", dir.display()))?;
        let path = e.path();
        let meta =
            std::fs::symlink_metadata(&path).with_context(|| format!("{}", path.display()))?;
        if meta.is_dir() {
            walk(root, &path, out, skipped)?;
            continue;
        }
        let key = path
            .strip_prefix(root)
            .ok()
            .and_then(|p| p.to_str())
            .map(str::to_string);
        match key {
            Some(key) if meta.is_file() => {
                let name = e.file_name();
                if name.to_string_lossy().starts_with(TMP_PREFIX) {
                    continue;
                }
                let mtime = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_secs() as i64);
                out.insert(
                    key,
                    Entry {
                        size: meta.len(),
                        mtime,
                        etag: None,
                    },
                );
            }
            _ => *skipped += 1,
        }
    }
    Ok(())
}

/// Whether the destination already holds what the source has.
fn unchanged(src: &Entry, dst: &Entry) -> bool {
    src.size == dst.size
        && ((src.etag.is_some() && src.etag == dst.etag)
            || matches!((src.mtime, dst.mtime), (Some(s), Some(d)) if d >= s))
}

/// The source's bytes of `key`, piece by piece.
fn reader<'a>(side: &'a Side, key: &'a str, size: u64) -> Result<PartStream<'a>> {
    match side {
        Side::Dir(root) => {
            let mut f = std::fs::File::open(root.join(key))?;
            let pieces = futures::stream::unfold(false, move |done| {
                let next = if done {
                    None
                } else {
                    let mut buf = Vec::with_capacity(PIECE as usize);
                    match (&mut f).take(PIECE).read_to_end(&mut buf) {
                        Ok(0) => None,
                        Ok(_) => Some((Ok(Bytes::from(buf)), false)),
                        Err(e) => Some((Err(e), true)),
                    }
                };
                std::future::ready(next)
            });
            Ok(Box::pin(pieces))
        }
        Side::Store { store, .. } => {
            let ranges =
                (0..size.div_ceil(PIECE)).map(move |i| i * PIECE..((i + 1) * PIECE).min(size));
            let pieces = futures::stream::iter(ranges)
                .map(move |r| async move {
                    store.get(key, Some(r)).await.map_err(std::io::Error::other)
                })
                .buffered(4);
            Ok(Box::pin(pieces))
        }
    }
}

/// Copy one file or object; returns the bytes copied.
async fn copy(src: &Side, dst: &Side, key: &str, entry: &Entry) -> Result<u64> {
    let mut pieces = reader(src, key, entry.size)?;
    let copied = AtomicU64::new(0);
    match dst {
        Side::Store { store, .. } => {
            let counted: PartStream<'_> = Box::pin(pieces.map(|p| {
                if let Ok(b) = &p {
                    copied.fetch_add(b.len() as u64, Ordering::Relaxed);
                }
                p
            }));
            if entry.size <= PIECE {
                let data = counted
                    .collect::<Vec<_>>()
                    .await
                    .into_iter()
                    .collect::<std::io::Result<Vec<Bytes>>>()?
                    .concat();
                store.put(key, Bytes::from(data).into()).await?;
            } else {
                store.put_multipart(key, counted).await?;
            }
        }
        Side::Dir(root) => {
            let path = root.join(key);
            let parent = path
                .parent()
                .ok_or_else(|| anyhow!("{} has no parent directory", path.display()))?;
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let tmp = parent.join(format!(
                "{TMP_PREFIX}{}.{}",
                name.unwrap_or_default(),
                std::process::id()
            ));
            let written = async {
                let mut f = std::fs::File::create(&tmp)?;
                while let Some(piece) = pieces.next().await {
                    let piece = piece?;
                    f.write_all(&piece)?;
                    copied.fetch_add(piece.len() as u64, Ordering::Relaxed);
                }
                if let Some(secs) = entry.mtime.filter(|s| *s >= 0) {
                    f.set_modified(UNIX_EPOCH + Duration::from_secs(secs as u64))?;
                }
                f.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                Ok::<(), std::io::Error>(())
            }
            .await;
            if let Err(e) = written {
                let _ = std::fs::remove_file(&tmp);
                return Err(e).with_context(|| format!("cannot write {}", path.display()));
            }
        }
    }
    let n = copied.load(Ordering::Relaxed);
    if n != entry.size {
        bail!(
            "the source changed while it was copied ({n} bytes where the listing said {})",
            entry.size
        );
    }
    Ok(n)
}

async fn delete(dst: &Side, key: &str) -> Result<()> {
    match dst {
        Side::Dir(root) => std::fs::remove_file(root.join(key))
            .with_context(|| format!("cannot delete {}", root.join(key).display())),
        Side::Store { store, .. } => Ok(store.delete(key).await?),
    }
}

pub fn run(a: Args) -> Result<()> {
    let started = Instant::now();
    let src = Side::open(&a.src, &a.storage_flags, true).context("source")?;
    let dst = Side::open(&a.dst, &a.storage_flags, false).context("destination")?;
    if let (Side::Dir(s), Side::Dir(d)) = (&src, &dst) {
        let (s, d) = (s.canonicalize()?, d.canonicalize()?);
        if s.starts_with(&d) || d.starts_with(&s) {
            bail!(
                "the source and destination directories overlap: {} and {}",
                s.display(),
                d.display()
            );
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads.clamp(1, 8))
        .enable_all()
        .build()?;
    let (src_list, skipped) = src.list(&rt).context("listing the source")?;
    let (dst_list, _) = dst.list(&rt).context("listing the destination")?;
    let mut todo = Vec::new();
    let mut same = 0u64;
    for (key, entry) in src_list.iter().filter(|(k, _)| a.filter.wants(k)) {
        match dst_list.get(key) {
            Some(d) if a.update && unchanged(entry, d) => same += 1,
            _ => todo.push((key.clone(), entry.clone())),
        }
    }
    let doomed: Vec<String> = if a.delete_dst {
        dst_list
            .keys()
            .filter(|k| a.filter.wants(k) && !src_list.contains_key(*k))
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    let total: u64 = todo.iter().map(|(_, e)| e.size).sum();
    if a.dry_run {
        for (key, e) in &todo {
            println!("copy {key} ({})", human(e.size));
        }
        for key in &doomed {
            println!("delete {key}");
        }
        println!(
            "would copy {} files ({}), skip {same} unchanged, delete {}",
            todo.len(),
            human(total),
            doomed.len()
        );
        return Ok(());
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg} [{elapsed_precise}] {wide_bar}",
        )
        .map_err(|e| anyhow!("progress bar: {e}"))?,
    );
    let (files_done, bytes_done) = (AtomicU64::new(0), AtomicU64::new(0));
    let failures = Mutex::new(Vec::<String>::new());
    let files_total = todo.len();
    tessera_chunk::par::par_for_each(&todo, a.threads, |(key, entry)| {
        match rt.block_on(copy(&src, &dst, key, entry)) {
            Ok(n) => {
                bytes_done.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                let mut f = failures.lock();
                f.push(format!("{key}: {e:#}"));
            }
        }
        bar.inc(entry.size);
        let done = files_done.fetch_add(1, Ordering::Relaxed) + 1;
        bar.set_message(format!("{done}/{files_total} files"));
    });
    bar.finish_and_clear();
    let mut deleted = 0u64;
    for key in &doomed {
        match rt.block_on(delete(&dst, key)) {
            Ok(()) => deleted += 1,
            Err(e) => {
                let mut f = failures.lock();
                f.push(format!("{key}: {e:#}"));
            }
        }
    }
    let failures = failures.into_inner();
    let secs = started.elapsed().as_secs_f64();
    let bytes = bytes_done.load(Ordering::Relaxed);
    println!(
        "synced {} -> {}: {} copied ({}), {same} unchanged, {deleted} deleted, {} failed in {secs:.1}s ({}/s)",
        src.describe(),
        dst.describe(),
        todo.len() - failures.len().min(todo.len()),
        human(bytes),
        failures.len(),
        human((bytes as f64 / secs.max(1e-3)) as u64)
    );
    if skipped > 0 {
        eprintln!("skipped {skipped} symlinks, special files or names that are not UTF-8");
    }
    report_failures(&failures, "files could not be synced")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(size: u64, mtime: Option<i64>, etag: Option<&str>) -> Entry {
        Entry {
            size,
            mtime,
            etag: etag.map(str::to_string),
        }
    }

    #[test]
    fn unchanged_needs_the_same_size_and_an_etag_or_a_newer_copy() {
        let src = entry(10, Some(100), Some("\"a\""));
        assert!(unchanged(&src, &entry(10, Some(50), Some("\"a\""))));
        assert!(unchanged(&src, &entry(10, Some(100), None)));
        assert!(!unchanged(&src, &entry(10, Some(99), Some("\"b\""))));
        assert!(!unchanged(&src, &entry(11, Some(200), Some("\"a\""))));
        assert!(!unchanged(&entry(10, None, None), &entry(10, None, None)));
    }
}
