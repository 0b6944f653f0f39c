//! `tessera umount`: unmount a mounted volume.

use std::path::PathBuf;

use anyhow::{anyhow, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    pub mountpoint: PathBuf,
    /// Detach even if busy (lazy unmount).
    #[arg(short, long)]
    pub force: bool,
}

pub fn run(a: Args) -> Result<()> {
    let canon = a.mountpoint.canonicalize().ok();
    let here = canon.as_ref().and_then(|c| {
        crate::common::mounts()
            .into_iter()
            .rev()
            .find(|m| &m.mountpoint == c)
    });
    let Some(entry) = here else {
        return Err(anyhow!("{} is not a mount point", a.mountpoint.display()));
    };
    // Only our own mounts: `tessera umount` of a tmpfs or a disk by mistake
    // must not take it away.
    if !crate::common::is_tessera_mount(&entry) {
        return Err(anyhow!(
            "{} is a {} mount, not a Tessera volume: refusing to unmount it",
            a.mountpoint.display(),
            entry.fstype
        ));
    }
    // The mount's process, named in its .stats file (a dead mount has none).
    let pid = std::fs::read_to_string(a.mountpoint.join(".stats"))
        .ok()
        .and_then(|t| {
            t.lines()
                .next()?
                .strip_prefix("# tessera mount pid ")?
                .trim()
                .parse::<u32>()
                .ok()
        });
    unmount(&a.mountpoint, a.force)?;
    // Wait for the mount process to let go, so the next mount can start.
    for _ in 0..100 {
        if !crate::common::is_mounted(&a.mountpoint) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // And for it to finish: it commits what was buffered, ends running
    // compactions and deletions and saves its usage counters after the
    // kernel lets go, and a fsck or gc right after umount must see that.
    if let Some(pid) = pid {
        let started = std::time::Instant::now();
        let mut told = false;
        while running(pid) && started.elapsed() < std::time::Duration::from_secs(120) {
            if !told && started.elapsed() > std::time::Duration::from_secs(2) {
                eprintln!("waiting for the mount process {pid} to finish its last writes");
                told = true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    Ok(())
}

/// Whether process `pid` still runs (an exited one its parent has not
/// reaped yet is a zombie, state Z, and counts as done).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

pub fn unmount(path: &std::path::Path, force: bool) -> Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let flags = if force { libc::MNT_DETACH } else { 0 };
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EBUSY) {
        return Err(anyhow!(
            "{} is busy: close the files open there, or use --force",
            path.display()
        ));
    }
    let mut cmd = std::process::Command::new("fusermount3");
    cmd.arg("-u");
    if force {
        cmd.arg("-z");
    }
    let status = cmd.arg(path).status();
    match status {
        Ok(s) if s.success() => Ok(()),
        _ => Err(anyhow!("cannot unmount {}: {err}", path.display())),
    }
}
