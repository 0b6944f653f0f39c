//! `tessera info`: how a file is stored.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use tessera_meta::{MetaConfig, SliceKind, CHUNK_SIZE};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A file or directory inside a mounted volume.
    pub path: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let path = a
        .path
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", a.path.display()))?;
    let mount = crate::common::tessera_mount_of(&path)
        .ok_or_else(|| anyhow!("{} is not inside a mounted Tessera volume", path.display()))?;
    let ino = std::fs::symlink_metadata(&path)?.ino();
    let (meta, format) = crate::common::open_volume(&mount.source, MetaConfig { read_only: true })?;
    let attr = meta.getattr(ino)?;
    println!("{}", path.display());
    println!("  inode   {ino}");
    println!("  type    {:?}", attr.typ);
    println!("  size    {}", attr.length);
    println!("  links   {}", attr.nlink);
    let bs = u64::from(format.block_size);
    for (index, records) in meta.chunks_of(ino)? {
        println!(
            "  chunk {index} (offset {}): {} slice records",
            u64::from(index) * CHUNK_SIZE,
            records.len()
        );
        for r in records {
            if r.is_hole() {
                let what = if r.holds_space() { "alloc " } else { "hole  " };
                println!("    {what} pos {} len {}", r.pos, r.len);
                continue;
            }
            let kind = if r.kind == SliceKind::External {
                "extern"
            } else {
                "slice"
            };
            println!(
                "    {kind} {} pos {} off {} len {} (slice size {})",
                r.id, r.pos, r.off, r.len, r.size
            );
            if r.kind == SliceKind::Internal {
                let first = r.off / bs;
                let last = (r.off + u64::from(r.len)).div_ceil(bs);
                for b in first..last {
                    let len = (r.size - b * bs).min(bs);
                    println!(
                        "      {}",
                        tessera_chunk::block_key(&format.name, r.id, b, len)
                    );
                }
            }
        }
    }
    Ok(())
}
