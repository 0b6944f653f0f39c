//! Running `tessera mount -d` in the background: the fork that returns
//! once the mount is up, and the process setup of a long-lived mount.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use crate::common::is_mounted;

/// Blocks are 4 MiB buffers allocated and freed all the time; by default
/// glibc hands such sizes back to the kernel (mmap/trim), so every block
/// faults in and zeroes fresh pages. Keeping freed memory for reuse costs a
/// steadier RSS (bounded by the caches and buffers anyway) and saves a
/// tenth of the CPU of a cold read.
pub(crate) fn keep_freed_memory() {
    // SAFETY: mallopt only tunes allocator thresholds; called before the
    // runtime's threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
}

/// Fork; the parent returns only once the child's mount is up (or exits
/// with the child's failure).
pub(crate) fn daemonize(mountpoint: &Path, log: Option<&Path>) -> Result<()> {
    let log = log.map(Path::to_path_buf).unwrap_or_else(|| {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            PathBuf::from("/var/log/tessera.log")
        } else {
            PathBuf::from(format!(
                "{}/.tessera/tessera.log",
                std::env::var("HOME").unwrap_or_default()
            ))
        }
    });
    if let Some(dir) = log.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("cannot open log file {}", log.display()))?;
    // SAFETY: no threads exist yet (the runtime is built after this), so
    // fork is safe; the child continues with a copy of this single thread.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(anyhow!("fork failed: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        use std::os::fd::AsRawFd;
        // SAFETY: plain syscalls on valid descriptors in the child.
        unsafe {
            libc::setsid();
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            if null >= 0 {
                libc::dup2(null, 0);
            }
            libc::dup2(file.as_raw_fd(), 1);
            libc::dup2(file.as_raw_fd(), 2);
        }
        return Ok(());
    }
    for _ in 0..300 {
        if is_mounted(mountpoint) {
            println!(
                "mounted on {} (pid {pid}, log {})",
                mountpoint.display(),
                log.display()
            );
            std::process::exit(0);
        }
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid status pointer.
        if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
            return Err(anyhow!(
                "the mount process exited before the mount was up; see {}",
                log.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(anyhow!(
        "the mount did not come up within 15 seconds; see {}",
        log.display()
    ))
}
