//! `tessera rmr PATH...`: remove files and directory trees on a mount in
//! the engine (the mount walks the tree: `Meta::remove_tree`), with no
//! kernel round trip per file; permissions are checked as for `rm -r`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use tessera_fuse::control::{decode_counts, EntryOp, EntryRequest};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Files or directories on a Tessera mount.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

/// Send `op` about the entry `path` names to the mount, on its directory;
/// returns the reply's two counts.
pub(crate) fn entry_request(path: &PathBuf, op: EntryOp) -> Result<(u64, u64)> {
    std::fs::symlink_metadata(path).with_context(|| format!("cannot stat {}", path.display()))?;
    let name = path
        .file_name()
        .filter(|n| *n != "." && *n != "..")
        .ok_or_else(|| anyhow!("{} names no entry to remove", path.display()))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir = File::open(&parent)
        .with_context(|| format!("cannot open the directory {}", parent.display()))?;
    let req = EntryRequest {
        op,
        name: name.as_bytes().to_vec(),
    };
    let mut buf = req
        .encode()
        .ok_or_else(|| anyhow!("{:?} is not a usable name", name))?;
    // SAFETY: the command encodes a read-write argument of exactly
    // `control::SIZE` bytes, which `buf` is.
    let rc = unsafe { libc::ioctl(dir.as_raw_fd(), req.command() as _, buf.as_mut_ptr()) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENOTTY) | Some(libc::ENOSYS) => anyhow!(
                "{} is not on a Tessera mount (use rm -r there)",
                path.display()
            ),
            _ => anyhow!(
                "cannot {} {}: {e}",
                match op {
                    EntryOp::RemoveTree => "remove",
                    EntryOp::Restore => "restore",
                },
                path.display()
            ),
        });
    }
    Ok(decode_counts(&buf))
}

pub fn run(a: Args) -> Result<()> {
    let started = Instant::now();
    let (mut files, mut dirs) = (0, 0);
    for p in &a.paths {
        let (f, d) = entry_request(p, EntryOp::RemoveTree)?;
        files += f;
        dirs += d;
    }
    println!(
        "removed {files} files and {dirs} directories in {:.2}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
