//! `tessera bench PATH`: big-file write and read, small-file write, read and
//! stat, through the file system like any application, one table per phase.
//! When PATH is inside a Tessera mount, the cache figures of each phase
//! (bytes per tier, hit ratio) come from the mount's `.stats`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, Context, Result};

use crate::common::{parse_size, read_stats, tessera_mount_of};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A directory to run in (a scratch subdirectory is made and removed).
    pub path: PathBuf,
    /// Size of each big file; a bare number is MiB.
    #[arg(long, default_value = "1G")]
    pub big_file_size: String,
    /// Size of each small file; a bare number is KiB.
    #[arg(long, default_value = "128K")]
    pub small_file_size: String,
    /// Small files per thread.
    #[arg(long, default_value_t = 100)]
    pub small_file_count: usize,
    /// Concurrent threads (each with its own files).
    #[arg(short = 'p', long, default_value_t = 1)]
    pub threads: usize,
    /// I/O size of big-file reads and writes; a bare number is KiB.
    #[arg(long, default_value = "1M")]
    pub block_size: String,
    /// Keep the files instead of removing them.
    #[arg(long)]
    pub keep: bool,
}

/// Drop the kernel's page cache so reads reach the file system (root only).
fn drop_caches() -> bool {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

struct Phase {
    name: &'static str,
    secs: f64,
    amount: f64,
    unit: &'static str,
    cache: Option<String>,
}

fn run_threads<F>(threads: usize, f: F) -> Result<f64>
where
    F: Fn(usize) -> Result<()> + Sync,
{
    let start = Instant::now();
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = (0..threads).map(|t| s.spawn(move || f(t))).collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow!("bench thread panicked"))?)
            .collect::<Result<Vec<()>>>()
    })?;
    Ok(start.elapsed().as_secs_f64())
}

fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

/// Tier bytes from a mount's `.stats`, to show what each phase hit.
fn cache_line(
    mnt: Option<&Path>,
    before: &Option<std::collections::HashMap<String, f64>>,
) -> Option<String> {
    let (mnt, before) = (mnt?, before.as_ref()?);
    let after = read_stats(mnt).ok()?;
    let d = |tier: &str| {
        let k = format!("tessera_tier_read_bytes_total{{tier=\"{tier}\"}}");
        after.get(&k).copied().unwrap_or(0.0) - before.get(&k).copied().unwrap_or(0.0)
    };
    let (m, dk, o) = (d("memory"), d("disk"), d("object"));
    let total = m + dk + o;
    if total <= 0.0 {
        return Some("no block reads".into());
    }
    let mib = 1048576.0;
    Some(format!(
        "memory {:.1} MiB, disk {:.1} MiB, object {:.1} MiB, hit {:.1}%",
        m / mib,
        dk / mib,
        o / mib,
        100.0 * (m + dk) / total
    ))
}

pub fn run(a: Args) -> Result<()> {
    let big = parse_size(&a.big_file_size, 1 << 20)?;
    let small = parse_size(&a.small_file_size, 1 << 10)? as usize;
    let io = parse_size(&a.block_size, 1 << 10)?.max(4096) as usize;
    let threads = a.threads.max(1);
    let base = a
        .path
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", a.path.display()))?;
    let mount = tessera_mount_of(&base).map(|m| m.mountpoint);
    let dir = base.join(format!("__tessera_bench_{}", std::process::id()));
    std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let stats = || mount.as_deref().and_then(|m| read_stats(m).ok());
    let mut phases = Vec::new();
    let mut dropped = true;

    if big > 0 {
        let before = stats();
        let secs = run_threads(threads, |t| {
            let mut f = std::fs::File::create(dir.join(format!("big.{t}")))?;
            let mut buf = vec![0u8; io];
            let mut left = big;
            let mut seed = t as u64 + 1;
            while left > 0 {
                let n = left.min(io as u64) as usize;
                fill(&mut buf[..n], seed);
                seed += 1;
                f.write_all(&buf[..n])?;
                left -= n as u64;
            }
            f.sync_all()?;
            Ok(())
        })?;
        phases.push(Phase {
            name: "write big file",
            secs,
            amount: (big * threads as u64) as f64 / 1048576.0,
            unit: "MiB/s",
            cache: cache_line(mount.as_deref(), &before),
        });
        dropped &= drop_caches();
        let before = stats();
        let secs = run_threads(threads, |t| {
            let mut f = std::fs::File::open(dir.join(format!("big.{t}")))?;
            let mut buf = vec![0u8; io];
            let mut total = 0u64;
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            if total != big {
                return Err(anyhow!("read {total} bytes of a {big}-byte file"));
            }
            Ok(())
        })?;
        phases.push(Phase {
            name: "read big file",
            secs,
            amount: (big * threads as u64) as f64 / 1048576.0,
            unit: "MiB/s",
            cache: cache_line(mount.as_deref(), &before),
        });
    }

    let count = a.small_file_count;
    if count > 0 {
        let before = stats();
        let secs = run_threads(threads, |t| {
            let mut buf = vec![0u8; small];
            for i in 0..count {
                fill(&mut buf, (t * count + i) as u64 + 1);
                let mut f = std::fs::File::create(dir.join(format!("small.{t}.{i}")))?;
                f.write_all(&buf)?;
            }
            Ok(())
        })?;
        let files = (count * threads) as f64;
        phases.push(Phase {
            name: "write small files",
            secs,
            amount: files,
            unit: "files/s",
            cache: cache_line(mount.as_deref(), &before),
        });
        dropped &= drop_caches();
        let before = stats();
        let secs = run_threads(threads, |t| {
            let mut buf = Vec::with_capacity(small);
            for i in 0..count {
                buf.clear();
                std::fs::File::open(dir.join(format!("small.{t}.{i}")))?.read_to_end(&mut buf)?;
                if buf.len() != small {
                    return Err(anyhow!("small file {t}.{i} has {} bytes", buf.len()));
                }
            }
            Ok(())
        })?;
        phases.push(Phase {
            name: "read small files",
            secs,
            amount: files,
            unit: "files/s",
            cache: cache_line(mount.as_deref(), &before),
        });
        let before = stats();
        let secs = run_threads(threads, |t| {
            for i in 0..count {
                std::fs::metadata(dir.join(format!("small.{t}.{i}")))?;
            }
            Ok(())
        })?;
        phases.push(Phase {
            name: "stat small files",
            secs,
            amount: files,
            unit: "files/s",
            cache: cache_line(mount.as_deref(), &before),
        });
    }

    if !a.keep {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    println!(
        "tessera bench {} ({} thread{}, big file {}, small files {} x {}, io {})",
        base.display(),
        threads,
        if threads == 1 { "" } else { "s" },
        a.big_file_size,
        count * threads,
        a.small_file_size,
        a.block_size
    );
    if !dropped {
        println!("(page cache not dropped: reads may be served by the kernel; run as root for cold reads)");
    }
    println!(
        "{:<20} {:>12} {:>10} {:>9}   cache",
        "phase", "rate", "unit", "seconds"
    );
    for p in &phases {
        println!(
            "{:<20} {:>12.1} {:>10} {:>9.2}   {}",
            p.name,
            p.amount / p.secs,
            p.unit,
            p.secs,
            p.cache.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}
