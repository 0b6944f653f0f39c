//! `tessera destroy META_URL UUID`: remove a volume for good — every
//! object under its prefix in the bucket, then its metadata. The UUID
//! (from `tessera status`) is the confirmation that the right volume is
//! named; live mounts refuse it; `--yes` skips the interactive question.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{anyhow, Context, Result};
use tessera_meta::MetaConfig;

use crate::common::{open_volume, redact, StorageFlags};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Metadata engine URL of the volume.
    pub meta_url: String,
    /// The volume's UUID, as `tessera status` shows it.
    pub uuid: String,
    /// Do not ask; destroy at once.
    #[arg(long)]
    pub yes: bool,
    /// Destroy even with sessions that still look alive (mounts that died
    /// without unmounting and have not timed out yet).
    #[arg(long)]
    pub force: bool,
    /// Deletes in flight at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: u32,
    #[command(flatten)]
    pub storage_flags: StorageFlags,
}

pub fn run(a: Args) -> Result<()> {
    let (meta, format) = open_volume(&a.meta_url, MetaConfig::default())?;
    if a.uuid != format.uuid {
        return Err(anyhow!(
            "the volume at {} is {:?} with uuid {}, not {}: nothing destroyed",
            redact(&a.meta_url),
            format.name,
            format.uuid,
            a.uuid
        ));
    }
    let now = tessera_meta::now().0;
    let live: Vec<_> = meta
        .list_sessions()?
        .into_iter()
        .filter(|s| now - s.heartbeat < 60)
        .collect();
    if !live.is_empty() && !a.force {
        let list: Vec<String> = live
            .iter()
            .map(|s| format!("{}:{} (pid {})", s.host, s.mountpoint, s.pid))
            .collect();
        return Err(anyhow!(
            "volume {:?} is mounted: {}; unmount it first (or --force for sessions that are dead)",
            format.name,
            list.join(", ")
        ));
    }
    let store =
        tessera_object::open_store(&format.storage, &a.storage_flags.options_for(&format)?)?;
    if !a.yes {
        eprint!(
            "destroy volume {:?} ({}): every object under {}/ in {} and all its metadata? type the volume name to go on: ",
            format.name,
            format.uuid,
            format.name,
            store.describe()
        );
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if answer.trim() != format.name {
            return Err(anyhow!("not confirmed: nothing destroyed"));
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let prefix = format!("{}/", format.name);
    let listed = rt
        .block_on(store.list(&prefix))
        .with_context(|| format!("cannot list {prefix} in {}", store.describe()))?;
    let deleted = AtomicU64::new(0);
    let failed = parking_lot::Mutex::new(Vec::new());
    tessera_chunk::par::par_for_each(&listed, a.threads as usize, |o| {
        match rt.block_on(store.delete(&o.key)) {
            Ok(()) => {
                deleted.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => failed.lock().push(format!("{}: {e}", o.key)),
        }
    });
    let failed = failed.into_inner();
    if !failed.is_empty() {
        return Err(anyhow!(
            "{} of {} objects could not be deleted (the metadata is kept, so run destroy again): {}",
            failed.len(),
            listed.len(),
            failed.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
        ));
    }
    // The metadata last: until it goes, a failed run can be repeated.
    let keys = meta.destroy_metadata().map_err(|e| {
        anyhow!("objects deleted, but removing the metadata failed (run destroy again): {e}")
    })?;
    println!(
        "destroyed volume {:?} ({}): {} objects deleted from {}, {keys} metadata keys from {}",
        format.name,
        format.uuid,
        deleted.load(Ordering::Relaxed),
        store.describe(),
        redact(&a.meta_url)
    );
    Ok(())
}
