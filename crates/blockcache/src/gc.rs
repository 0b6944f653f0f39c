//! Bringing a cache directory (every volume's blocks in it) under a size
//! from outside a mount: `tessera cache gc` and `mount
//! --cache-gc-before-start`.
//!
//! Victims are chosen as the disk tier chooses them, by its 2-random policy
//! on the files' last use, with pinned blocks (read from the same pins file
//! the tier keeps) only when nothing else is left. Whole-file local copies
//! count towards the size but are kept. One GC runs per directory at a time:
//! it holds an exclusive flock on `DIR/.gc.lock`, and another waits. Mounts
//! using the directory notice removed blocks on their next read of them and
//! fetch them again.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Instant, UNIX_EPOCH};

use crate::disk::{read_pins, COPIES_DIR, PINS_FILE, RAW_DIR};
use crate::evict::{new_policy, Eviction, Key};

/// What a GC did.
#[derive(Debug, Clone, PartialEq)]
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

/// Why a GC could not run to the end.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("cache directory {0} does not exist")]
    NoDirectory(PathBuf),
    #[error("cannot lock {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An exclusive lock on the directory's GC lock file, waited for.
fn lock(dir: &Path) -> Result<File, GcError> {
    let path = dir.join(".gc.lock");
    let failed = |source| GcError::Lock {
        path: path.clone(),
        source,
    };
    let f = File::create(&path).map_err(failed)?;
    // SAFETY: flock on a descriptor we own, open for the call.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        tracing::info!(
            "waiting for another cache gc of {} (lock {})",
            dir.display(),
            path.display()
        );
        // SAFETY: as above, blocking this time.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(failed(std::io::Error::last_os_error()));
        }
    }
    Ok(f)
}

struct Block {
    path: PathBuf,
    size: u64,
    used: u64,
}

/// Every cached block file under `DIR/{volume}/raw/`, and which are pinned.
fn blocks(dir: &Path) -> (Vec<(Key, Block)>, HashSet<Key>) {
    let (mut out, mut pinned_keys) = (Vec::new(), HashSet::new());
    let Ok(volumes) = std::fs::read_dir(dir) else {
        return (out, pinned_keys);
    };
    for v in volumes.flatten() {
        let raw = v.path().join(RAW_DIR);
        if !raw.is_dir() {
            continue;
        }
        let pinned: HashSet<String> = read_pins(&v.path().join(PINS_FILE), 0)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        crate::disk::walk(&raw, &mut |p, m| {
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
                .unwrap_or_default();
            // Blocks of several volumes share one policy: their keys carry
            // the volume directory to stay apart.
            let id: Key = format!("{}/{key}", v.file_name().to_string_lossy()).into();
            if pinned.contains(key) {
                pinned_keys.insert(id.clone());
            }
            out.push((
                id,
                Block {
                    size: m.len(),
                    used: time(m.accessed()).max(time(m.modified())),
                    path: p.to_path_buf(),
                },
            ));
        });
    }
    (out, pinned_keys)
}

/// Evict until `dir` holds at most `target` bytes of blocks and copies.
pub fn collect(dir: &Path, target: u64) -> Result<GcReport, GcError> {
    if !dir.is_dir() {
        return Err(GcError::NoDirectory(dir.to_path_buf()));
    }
    let started = Instant::now();
    let _lock = lock(dir)?;
    let (mut all, pinned) = blocks(dir);
    let copies: u64 = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|v| crate::copies_bytes(&v.path().join(COPIES_DIR)))
        .sum();
    let mut total: u64 = all.iter().map(|(_, b)| b.size).sum::<u64>() + copies;
    // The policy orders by use: blocks enter it oldest first.
    all.sort_by_key(|(_, b)| b.used);
    let (mut unpinned_policy, mut pinned_policy) = (
        new_policy(Eviction::TwoRandom),
        new_policy(Eviction::TwoRandom),
    );
    let mut by_key = HashMap::with_capacity(all.len());
    for (key, block) in all {
        if pinned.contains(&key) {
            pinned_policy.insert(key.clone());
        } else {
            unpinned_policy.insert(key.clone());
        }
        by_key.insert(key, block);
    }
    let (mut removed, mut freed) = (0u64, 0u64);
    // Unpinned blocks go first; pinned ones only if that is not enough.
    for policy in [&mut unpinned_policy, &mut pinned_policy] {
        while total > target {
            let Some(victim) = policy.victim() else { break };
            let Some(block) = by_key.remove(&victim) else {
                continue;
            };
            match std::fs::remove_file(&block.path) {
                Ok(()) => {
                    freed += block.size;
                    removed += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(GcError::Remove {
                        path: block.path,
                        source,
                    })
                }
            }
            total -= block.size;
        }
    }
    Ok(GcReport {
        removed,
        freed,
        left: total,
        files_left: by_key.len(),
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
        let r = collect(d.path(), 20_000).expect("gc");
        assert_eq!((r.removed, r.left, r.files_left), (30, 20_000, 20));
        assert!(raw.join("7_0_1000").exists(), "pinned block kept");
        let r = collect(d.path(), 0).expect("gc to zero");
        assert_eq!(
            (r.left, r.files_left),
            (0, 0),
            "pins give way when nothing else is left"
        );
        assert!(matches!(
            collect(&d.path().join("missing"), 0),
            Err(GcError::NoDirectory(_))
        ));
    }

    /// Two-random on last use: with half the blocks used long ago and half
    /// just now, evicting half removes mostly old ones (a third of the old
    /// ones stay on average; a random choice would leave half).
    #[test]
    fn older_blocks_go_first() {
        let (d, raw) = cache_with_blocks(1000);
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(86_400);
        for i in 0..500 {
            let f = File::options()
                .write(true)
                .open(raw.join(format!("{i}_0_1000")))
                .expect("open");
            f.set_times(
                std::fs::FileTimes::new()
                    .set_accessed(old)
                    .set_modified(old),
            )
            .expect("times");
        }
        let r = collect(d.path(), 500_000).expect("gc");
        assert_eq!(r.removed, 500);
        let old_left = (0..500)
            .filter(|i| raw.join(format!("{i}_0_1000")).exists())
            .count();
        assert!(old_left < 215, "old blocks left: {old_left} of 500");
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
        let r = collect(d.path(), 8_000).expect("gc");
        assert_eq!(
            (r.removed, r.copies, r.left, r.files_left),
            (7, 5_000, 8_000, 3)
        );
        assert!(files.join("0badc0de-5000").exists());
    }
}
