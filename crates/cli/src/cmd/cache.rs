//! `tessera cache gc --dir DIR --target-size SIZE`: bring a cache directory
//! (every volume's blocks in it) under a size, evicting by 2-random on the
//! files' last use, pinned blocks last. One GC runs per directory at a
//! time: it holds an exclusive lock on `DIR/.gc.lock`, and another waits.
//! Also run by `mount --cache-gc-before-start`. Mounts using the directory
//! notice removed blocks on their next read of them and fetch them again.

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Instant, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};

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
            let r = gc(&a.dir, target)?;
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

/// What a GC did.
pub struct GcReport {
    pub removed: u64,
    pub freed: u64,
    /// Bytes left, local copies included.
    pub left: u64,
    pub files_left: usize,
    /// Bytes of whole-file local copies (`warmup --local-copy`): they count
    /// towards the size, but GC does not remove them.
    pub copies: u64,
    pub secs: f64,
}

/// An exclusive lock on the directory's GC lock file, waited for.
fn lock(dir: &Path) -> Result<File> {
    let path = dir.join(".gc.lock");
    let f = File::create(&path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        eprintln!(
            "waiting for another cache gc of {} (lock {})",
            dir.display(),
            path.display()
        );
        // SAFETY: as above, blocking this time.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    Ok(f)
}

struct Block {
    path: PathBuf,
    size: u64,
    used: u64,
    pinned: bool,
}

/// Bytes of the local copies under `DIR/{volume}/files/`.
fn copies(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|v| tessera_blockcache::copies_bytes(&v.path().join("files")))
        .sum()
}

/// Every cached block file under `DIR/{volume}/raw/`, and the pinned keys.
fn blocks(dir: &Path) -> Vec<Block> {
    let mut out = Vec::new();
    let Ok(volumes) = std::fs::read_dir(dir) else {
        return out;
    };
    for v in volumes.flatten() {
        let raw = v.path().join("raw");
        if !raw.is_dir() {
            continue;
        }
        let pinned: HashSet<String> = std::fs::read_to_string(v.path().join("pins"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' ').map(|(_, k)| k.to_string()))
            .collect();
        let mut stack = vec![raw.clone()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                let Ok(m) = e.metadata() else { continue };
                if m.is_dir() {
                    stack.push(p);
                } else if m.is_file() {
                    let time = |t: std::io::Result<std::time::SystemTime>| {
                        t.ok()
                            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                            .map(|d| d.as_secs())
                            .unwrap_or(0)
                    };
                    let key = p
                        .strip_prefix(&raw)
                        .ok()
                        .and_then(|k| k.to_str())
                        .unwrap_or_default()
                        .to_string();
                    out.push(Block {
                        size: m.len(),
                        used: time(m.accessed()).max(time(m.modified())),
                        pinned: pinned.contains(&key),
                        path: p,
                    });
                }
            }
        }
    }
    out
}

/// Evict until the directory holds at most `target` bytes of blocks.
pub fn gc(dir: &Path, target: u64) -> Result<GcReport> {
    if !dir.is_dir() {
        return Err(anyhow!("cache directory {} does not exist", dir.display()));
    }
    let started = Instant::now();
    let _lock = lock(dir)?;
    let all = blocks(dir);
    let copies = copies(dir);
    let mut total: u64 = all.iter().map(|b| b.size).sum::<u64>() + copies;
    let (mut removed, mut freed) = (0u64, 0u64);
    // Unpinned blocks go first, by 2-random; pinned ones only if that is
    // not enough.
    let (mut pinned, mut unpinned): (Vec<Block>, Vec<Block>) =
        all.into_iter().partition(|b| b.pinned);
    let mut rng = (started.elapsed().as_nanos() as u64) | 1;
    let mut below = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    for pool in [&mut unpinned, &mut pinned] {
        while total > target && !pool.is_empty() {
            let (a, b) = (below(pool.len()), below(pool.len()));
            let victim = if pool[a].used <= pool[b].used { a } else { b };
            let block = pool.swap_remove(victim);
            match std::fs::remove_file(&block.path) {
                Ok(()) => {
                    freed += block.size;
                    removed += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot remove {}", block.path.display()))
                }
            }
            total -= block.size;
        }
    }
    let files_left = pinned.len() + unpinned.len();
    Ok(GcReport {
        removed,
        freed,
        left: total,
        files_left,
        copies,
        secs: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache directory of volume `vol` holding `n` blocks of 1,000 bytes,
    /// and the directory they are in.
    fn cache_with_blocks(n: usize) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().expect("tempdir");
        let raw = d.path().join("vol/raw/vol/chunks/0/0");
        std::fs::create_dir_all(&raw).expect("mkdir");
        for i in 0..n {
            std::fs::write(raw.join(format!("{i}_0_1000")), vec![0u8; 1000]).expect("block");
        }
        (d, raw)
    }

    #[test]
    fn brings_a_directory_under_its_target_keeping_pins() {
        let (d, raw) = cache_with_blocks(50);
        std::fs::write(
            d.path().join("vol/pins"),
            "9999999999 vol/chunks/0/0/7_0_1000\n",
        )
        .expect("pins");
        let r = gc(d.path(), 20_000).expect("gc");
        assert_eq!((r.removed, r.left, r.files_left), (30, 20_000, 20));
        assert!(raw.join("7_0_1000").exists(), "pinned block kept");
        let r = gc(d.path(), 0).expect("gc to zero");
        assert_eq!(
            (r.left, r.files_left),
            (0, 0),
            "pins give way when nothing else is left"
        );
        assert!(gc(&d.path().join("missing"), 0).is_err());
    }

    #[test]
    fn local_copies_count_towards_the_target_and_are_kept() {
        let (d, _) = cache_with_blocks(10);
        let files = d.path().join("vol/files/42");
        std::fs::create_dir_all(&files).expect("mkdir");
        std::fs::write(files.join("0badc0de-5000"), vec![0u8; 5000]).expect("copy");
        std::fs::write(files.join(".0badc0de-5000.tmp.1"), vec![0u8; 777]).expect("tmp");
        // 10,000 bytes of blocks + 5,000 of copy: down to 8,000 means the
        // copy stays and only 3 blocks do.
        let r = gc(d.path(), 8_000).expect("gc");
        assert_eq!(
            (r.removed, r.copies, r.left, r.files_left),
            (7, 5_000, 8_000, 3)
        );
        assert!(files.join("0badc0de-5000").exists());
    }
}
