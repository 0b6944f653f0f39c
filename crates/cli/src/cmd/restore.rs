//! `tessera restore PATH...`: put files from the trash back where they
//! were. PATH is an entry of `MNT/.trash/{hour}/` or a whole hour
//! directory; the mount renames each entry to its old name in its old
//! directory (the file's owner or root may), refusing to replace anything.

use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use tessera_fuse::control::EntryOp;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Entries of a trash hour directory (MNT/.trash/2026-11-30-23/…), or
    /// hour directories (every entry in them).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let mut entries = Vec::new();
    for p in &a.paths {
        // An hour directory's parent, or an entry's grandparent, is .trash.
        let inside_trash = p
            .ancestors()
            .skip(1)
            .take(2)
            .any(|a| a.file_name().is_some_and(|n| n == ".trash"));
        if !inside_trash {
            return Err(anyhow!(
                "{} is not in a trash (MNT/.trash/HOUR or MNT/.trash/HOUR/ENTRY)",
                p.display()
            ));
        }
        let meta =
            std::fs::symlink_metadata(p).with_context(|| format!("cannot stat {}", p.display()))?;
        if meta.is_dir() {
            let mut names: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot list {}", p.display()))?
                .map(|e| e.map(|e| e.path()))
                .collect::<std::io::Result<_>>()?;
            names.sort();
            entries.extend(names);
        } else {
            entries.push(p.clone());
        }
    }
    let mut restored = 0;
    let mut failed = Vec::new();
    for e in &entries {
        match crate::cmd::rmr::entry_request(e, EntryOp::Restore) {
            Ok(_) => restored += 1,
            Err(err) => failed.push(format!("{err:#}")),
        }
    }
    println!("restored {restored} of {} files", entries.len());
    if failed.is_empty() {
        Ok(())
    } else {
        Err(anyhow!("{}", failed.join("; ")))
    }
}
