//! The host's side of the node plugin: is a path mounted (and alive), bind
//! mounts, unmounts, and starting a `tessera mount` daemon.

use std::ffi::CString;
use std::path::Path;
use std::process::Command;

/// Whether `path` is a mount point now (from `/proc/self/mountinfo`).
pub fn is_mountpoint(path: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = path.to_string_lossy();
    text.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|mp| unescape(mp) == want.as_ref())
    })
}

/// mountinfo escapes spaces, tabs, newlines and backslashes as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Whether a mount point answers: a FUSE mount whose process died says
/// ENOTCONN.
pub fn answers(path: &Path) -> bool {
    std::fs::metadata(path).is_ok()
}

fn cpath(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in a path"))
}

/// Bind-mount `src` at `dst` (made if missing), read-only if asked.
pub fn bind(src: &Path, dst: &Path, readonly: bool) -> std::io::Result<()> {
    std::fs::create_dir_all(dst)?;
    let (s, d) = (cpath(src)?, cpath(dst)?);
    // SAFETY: valid NUL-terminated paths; no file system type or data.
    let rc = unsafe {
        libc::mount(
            s.as_ptr(),
            d.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if readonly {
        // SAFETY: as above; a remount of the bind just made.
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                d.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            let _ = unmount(dst);
            return Err(e);
        }
    }
    Ok(())
}

/// Unmount `path`; a busy or dead mount is detached lazily.
pub fn unmount(path: &Path) -> std::io::Result<()> {
    let p = cpath(path)?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(p.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        // Not mounted, or not there at all: nothing to undo.
        Some(libc::EINVAL) if !is_mountpoint(path) => Ok(()),
        Some(libc::ENOENT) => Ok(()),
        _ => {
            // SAFETY: as above.
            if unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) } == 0 {
                Ok(())
            } else {
                Err(e)
            }
        }
    }
}

/// Start `tessera mount META MOUNTPOINT -d --log LOG ARGS...` with `env`;
/// returns once the volume is mounted (the command waits for that before
/// it returns) or with what it printed when it failed.
pub fn start_mount(
    exe: &Path,
    meta_url: &str,
    mountpoint: &Path,
    log: &Path,
    args: &[String],
    env: &[(String, String)],
) -> Result<(), String> {
    std::fs::create_dir_all(mountpoint)
        .map_err(|e| format!("cannot create {}: {e}", mountpoint.display()))?;
    let out = Command::new(exe)
        .arg("mount")
        .arg(meta_url)
        .arg(mountpoint)
        .arg("-d")
        .arg("--log")
        .arg(log)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    if !is_mountpoint(mountpoint) {
        return Err(format!(
            "tessera mount returned but {} is not mounted (see {})",
            mountpoint.display(),
            log.display()
        ));
    }
    Ok(())
}

/// Bytes and inodes of the file system at `path`: (total, available, used)
/// for each.
pub fn usage(path: &Path) -> std::io::Result<([u64; 3], [u64; 3])> {
    let p = cpath(path)?;
    // SAFETY: statvfs fills the zeroed struct; p is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(p.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let frsize = st.f_frsize;
    let bytes = [
        st.f_blocks * frsize,
        st.f_bavail * frsize,
        (st.f_blocks - st.f_bfree) * frsize,
    ];
    let inodes = [st.f_files, st.f_favail, st.f_files - st.f_ffree];
    Ok((bytes, inodes))
}
