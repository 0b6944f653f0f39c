//! `tessera fsck META`: check a volume's metadata (entries, link counts,
//! orphans, slice references, usage counters), with `--repair` set it
//! straight, and with `--check-objects` ask the object store for every
//! block the metadata refers to.

use anyhow::{anyhow, Result};
use futures::StreamExt;
use tessera_meta::{Format, MetaConfig};

use crate::common::{human, open_volume, StorageFlags};

#[derive(clap::Args, Debug)]
pub struct Args {
    pub meta_url: String,
    /// Fix what is found (run it while no mount writes to the volume).
    #[arg(long)]
    pub repair: bool,
    /// Also check that every block the metadata refers to is in the object
    /// store (one HEAD per block).
    #[arg(long)]
    pub check_objects: bool,
    /// Object requests in flight at once for --check-objects.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: u32,
    #[command(flatten)]
    pub storage_flags: StorageFlags,
}

/// The object keys of the blocks of the slices `(id, size)`.
pub fn block_keys<'a>(
    format: &'a Format,
    slices: impl Iterator<Item = &'a (u64, u64)> + 'a,
) -> impl Iterator<Item = String> + 'a {
    let bs = u64::from(format.block_size);
    slices.flat_map(move |&(id, size)| {
        (0..size.div_ceil(bs))
            .map(move |i| tessera_chunk::block_key(&format.name, id, i, (size - i * bs).min(bs)))
    })
}

pub fn run(a: Args) -> Result<()> {
    let (meta, format) = open_volume(
        &a.meta_url,
        MetaConfig {
            read_only: !a.repair,
        },
    )?;
    let r = meta.fsck(a.repair)?;
    println!(
        "checked {} inodes ({} files, {} directories) and {} slices",
        r.inodes,
        r.files,
        r.dirs,
        r.slices.len()
    );
    println!(
        "usage: {} in {} inodes counted ({} in {} inodes recorded)",
        human(r.space.max(0) as u64),
        r.inode_count,
        human(r.recorded_space.max(0) as u64),
        r.recorded_inodes
    );
    for p in r.problems.iter().take(100) {
        println!("  {}: {p}", if a.repair { "repaired" } else { "found" });
    }
    if r.problems.len() > 100 {
        println!("  ... and {} more", r.problems.len() - 100);
    }
    let mut missing = Vec::new();
    if a.check_objects {
        let store =
            tessera_object::open_store(&format.storage, &a.storage_flags.options_for(&format)?)?;
        let keys: Vec<String> = block_keys(&format, r.slices.keys()).collect();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let results: Vec<(String, Result<(), String>)> = rt.block_on(
            futures::stream::iter(keys.iter().cloned())
                .map(|key| {
                    let store = store.clone();
                    async move {
                        let r = match store.head(&key).await {
                            Ok(_) => Ok(()),
                            Err(tessera_object::ObjectError::NotFound(_)) => Err("missing".into()),
                            Err(e) => Err(e.to_string()),
                        };
                        (key, r)
                    }
                })
                .buffer_unordered(a.threads as usize)
                .collect(),
        );
        for (key, r) in results {
            if let Err(why) = r {
                missing.push(format!("{key}: {why}"));
            }
        }
        missing.sort();
        println!(
            "objects: {} blocks referenced, {} missing or unreadable",
            keys.len(),
            missing.len()
        );
        for m in missing.iter().take(100) {
            println!("  {m}");
        }
    }
    let left = r.unrepaired();
    if left == 0 && missing.is_empty() {
        println!(
            "{}",
            if r.problems.is_empty() {
                "the volume is consistent"
            } else {
                "every problem found was repaired"
            }
        );
        return Ok(());
    }
    Err(anyhow!(
        "{left} problems{} (run with --repair to fix what can be fixed)",
        if missing.is_empty() {
            String::new()
        } else {
            format!(" and {} blocks missing from object storage", missing.len())
        }
    ))
}
