//! `tessera gc META`: find block objects no slice refers to (uploads of
//! writes that never committed, blocks a crash left behind) and, with
//! `--delete`, remove them. Objects younger than `--age` are never taken:
//! a write in flight uploads its blocks before it commits them.

use std::collections::HashSet;

use anyhow::{Context, Result};
use futures::StreamExt;
use tessera_meta::MetaConfig;

use crate::common::{human, open_volume, parse_duration, StorageFlags};

#[derive(clap::Args, Debug)]
pub struct Args {
    pub meta_url: String,
    /// Delete the unreferenced objects (without it, only count them).
    #[arg(long)]
    pub delete: bool,
    /// Leave objects younger than this alone (e.g. 30m, 1h, 2d).
    #[arg(long, default_value = "1h")]
    pub age: String,
    /// Deletes in flight at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: u32,
    #[command(flatten)]
    pub storage_flags: StorageFlags,
}

/// What one gc pass found.
#[derive(Debug, Default)]
pub struct GcReport {
    pub objects: u64,
    pub referenced: u64,
    pub orphans: Vec<(String, u64)>,
    pub young: u64,
    pub deleted: u64,
}

pub fn run(a: Args) -> Result<()> {
    let age = parse_duration(&a.age).context("--age")?;
    let (meta, format) = open_volume(&a.meta_url, MetaConfig { read_only: true })?;
    let store =
        tessera_object::open_store(&format.storage, &a.storage_flags.options_for(&format)?)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // List first, then read the metadata: a block uploaded and committed
    // between the two is referenced by then; one uploaded after the
    // listing is not in it.
    let prefix = format!("{}/chunks/", format.name);
    let listed = rt
        .block_on(store.list(&prefix))
        .with_context(|| format!("cannot list {prefix} in {}", store.describe()))?;
    let checked = meta.fsck(false)?;
    // Slices the trash keeps (freed by truncate or compaction) are in use.
    let kept = meta.delayed_slices()?;
    let referenced: HashSet<String> =
        crate::cmd::fsck::block_keys(&format, checked.slices.keys().chain(kept.iter())).collect();
    let now = tessera_meta::now().0;
    let mut r = GcReport::default();
    for o in listed {
        r.objects += 1;
        if referenced.contains(&o.key) {
            r.referenced += 1;
        } else if o
            .mtime
            .is_some_and(|t| now.saturating_sub(t) >= age.as_secs() as i64)
        {
            r.orphans.push((o.key, o.size));
        } else {
            r.young += 1;
        }
    }
    let bytes: u64 = r.orphans.iter().map(|o| o.1).sum();
    if a.delete {
        let failures: Vec<String> = rt.block_on(
            futures::stream::iter(r.orphans.iter())
                .map(|(key, _)| {
                    let store = store.clone();
                    async move { store.delete(key).await.err().map(|e| e.to_string()) }
                })
                .buffer_unordered(a.threads as usize)
                .filter_map(|e| async move { e })
                .collect(),
        );
        r.deleted = r.orphans.len() as u64 - failures.len() as u64;
        crate::common::report_failures(&failures, "deletes failed")?;
    }
    println!(
        "{} block objects: {} referenced, {} unreferenced ({}){}, {} unreferenced but younger than {} (kept)",
        r.objects,
        r.referenced,
        r.orphans.len(),
        human(bytes),
        if a.delete {
            format!(", {} deleted", r.deleted)
        } else {
            " (run with --delete to remove them)".into()
        },
        r.young,
        a.age
    );
    Ok(())
}
