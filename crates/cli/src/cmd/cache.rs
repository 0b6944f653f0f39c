//! `tessera cache gc --dir DIR --target-size SIZE`: bring a cache directory
//! (every volume's blocks in it) under a size; the work is
//! `tessera_blockcache::gc`.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::common::{human, parse_size};

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Evict cached blocks until a cache directory is under a size.
    Gc(GcArgs),
}

#[derive(clap::Args, Debug)]
pub struct GcArgs {
    /// The cache directory (as given to --cache-dir).
    #[arg(long)]
    pub dir: PathBuf,
    /// Size to bring it under; a bare number is MiB.
    #[arg(long)]
    pub target_size: String,
}

pub fn run(c: Command) -> Result<()> {
    match c {
        Command::Gc(a) => {
            let target = parse_size(&a.target_size, 1 << 20).context("--target-size")?;
            let r = tessera_blockcache::gc::collect(&a.dir, target)?;
            println!(
                "cache gc {}: removed {} blocks ({}), {} left in {} (target {}){} in {:.1}s",
                a.dir.display(),
                r.removed,
                human(r.freed),
                human(r.left),
                r.files_left,
                human(target),
                if r.copies > 0 {
                    format!(", {} of it local copies (kept)", human(r.copies))
                } else {
                    String::new()
                },
                r.secs
            );
            Ok(())
        }
    }
}
