//! `tessera clone SRC DST [--preserve]`: copy a file, symlink or directory
//! tree on a mount as metadata only (the mount does it: `Meta::clone_tree`).
//! Both copies share their blocks and change independently afterwards.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use tessera_fuse::control::{decode_counts, CloneRequest, SIZE};

use crate::common::human;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A file, symlink or directory on a Tessera mount.
    pub src: PathBuf,
    /// The new path, on the same mount; it must not exist.
    pub dst: PathBuf,
    /// Keep owner, mode and times (another owner's files only as root);
    /// otherwise the copy is the caller's, with the umask applied.
    #[arg(long, short = 'p')]
    pub preserve: bool,
}

pub fn run(a: Args) -> Result<()> {
    let src = std::fs::symlink_metadata(&a.src)
        .with_context(|| format!("cannot stat {}", a.src.display()))?;
    if std::fs::symlink_metadata(&a.dst).is_ok() {
        return Err(anyhow!(
            "{} exists: clone makes a new path",
            a.dst.display()
        ));
    }
    let name = a
        .dst
        .file_name()
        .ok_or_else(|| anyhow!("{} names no entry to create", a.dst.display()))?;
    let parent = match a.dst.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir = File::open(&parent)
        .with_context(|| format!("cannot open the directory {}", parent.display()))?;
    let dir_meta = dir.metadata()?;
    if !dir_meta.is_dir() {
        return Err(anyhow!("{} is not a directory", parent.display()));
    }
    if dir_meta.dev() != src.dev() {
        return Err(anyhow!(
            "{} and {} are on different file systems: clone works within one Tessera mount",
            a.src.display(),
            parent.display()
        ));
    }
    // SAFETY: umask only swaps the process's mask; it is put back at once.
    let umask = unsafe {
        let m = libc::umask(0o022);
        libc::umask(m);
        m
    };
    let req = CloneRequest {
        src: src.ino(),
        preserve: a.preserve,
        umask,
        name: name.as_bytes().to_vec(),
    };
    let mut buf = req
        .encode()
        .ok_or_else(|| anyhow!("{:?} is not a usable name (1 to 255 bytes)", name))?;
    let started = Instant::now();
    // SAFETY: the command encodes a read-write argument of exactly `SIZE`
    // bytes, which `buf` is.
    let rc = unsafe {
        libc::ioctl(
            dir.as_raw_fd(),
            CloneRequest::command() as _,
            buf.as_mut_ptr(),
        )
    };
    debug_assert_eq!(buf.len(), SIZE);
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENOTTY) | Some(libc::ENOSYS) => anyhow!(
                "{} is not on a Tessera mount (the file system does not answer clone requests)",
                parent.display()
            ),
            _ => anyhow!(
                "cannot clone {} to {}: {e}",
                a.src.display(),
                a.dst.display()
            ),
        });
    }
    let (inodes, bytes) = decode_counts(&buf);
    println!(
        "cloned {} to {}: {inodes} inodes, {} of data shared, in {:.3}s",
        a.src.display(),
        a.dst.display(),
        human(bytes),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
