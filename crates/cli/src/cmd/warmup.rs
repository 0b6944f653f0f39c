//! `tessera warmup PATH...`: fill a mount's local cache with the blocks of
//! files and directories, report how much of them is cached (`--check`),
//! drop them (`--evict`), or pin them against eviction (`--pin`,
//! `--unpin`).
//!
//! The paths are walked here; each file is opened on the mount (so the
//! kernel checks read permission) and the mount is asked, 64 MiB at a time,
//! to act on the blocks behind the range (the ioctls of
//! `tessera_fuse::control`). Several ranges are in flight at once
//! (`--threads`), and the progress bar moves as each one completes.

use parking_lot::Mutex;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use tessera_fuse::control::{decode_report, Op, Request, FLAG_BACKGROUND, FLAG_GROUP};
use tessera_vfs::CacheReport;

use crate::common::{human, parse_duration, report_failures};

/// Bytes asked for in one warm-up request: one chunk.
const RANGE: u64 = 64 << 20;
/// `statfs` type of every FUSE file system.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Files and directories on a Tessera mount (directories recursively).
    pub paths: Vec<PathBuf>,
    /// A file listing more paths, one per line.
    #[arg(short = 'f', long = "file", value_name = "LIST")]
    pub list: Option<PathBuf>,
    /// Ranges in flight at once.
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
    /// Hand the work to the mount and return at once.
    #[arg(long)]
    pub background: bool,
    /// Report how many bytes of each path are cached, and where.
    #[arg(long, conflicts_with_all = ["evict", "unpin", "background", "pin"])]
    pub check: bool,
    /// Drop the paths' blocks from the cache.
    #[arg(long, conflicts_with_all = ["unpin", "background", "pin"])]
    pub evict: bool,
    /// Keep the warmed blocks from eviction until --unpin or --pin-ttl.
    #[arg(long)]
    pub pin: bool,
    /// How long a pin lasts (seconds, or with s, m, h, d).
    #[arg(long, default_value = "24h", value_name = "DURATION")]
    pub pin_ttl: String,
    /// End the pins of the paths' blocks (they stay cached).
    #[arg(long, conflicts_with_all = ["background", "pin"])]
    pub unpin: bool,
    /// Also keep a whole contiguous copy of each file on the local disk,
    /// which the kernel reads directly (FUSE passthrough) while the file
    /// is unchanged: local-disk read speed, for twice the disk space.
    #[arg(long, conflicts_with_all = ["check", "evict", "unpin", "background", "cache_group"])]
    pub local_copy: bool,
    /// Act on the cache group the mount belongs to instead of its local
    /// cache: each block's owner fetches it (--check reports per member).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["pin", "unpin"])]
    pub cache_group: Option<String>,
}

/// A regular file found under one of the paths given.
struct Target {
    /// Index of the path given that it was found under.
    root: usize,
    path: PathBuf,
    size: u64,
}

/// One request: a range of a target.
struct Task {
    target: usize,
    offset: u64,
    length: u64,
}

/// Fail unless `path` is on a FUSE file system (a Tessera mount answers
/// the ioctls; another FUSE file system says ENOTTY, reported per file).
fn check_on_mount(path: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("{}: bad path", path.display()))?;
    // SAFETY: statfs writes into the zeroed struct; c is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("{}", path.display()));
    }
    if st.f_type as i64 != FUSE_SUPER_MAGIC {
        bail!(
            "{} is not on a Tessera mount: warm-up works on a mounted volume's files",
            path.display()
        );
    }
    Ok(())
}

/// Every regular file at or under `path` (symlinks are not followed).
fn collect(root: usize, path: &Path, out: &mut Vec<Target>, skipped: &mut u64) -> Result<()> {
    let meta = std::fs::symlink_metadata(path).with_context(|| format!("{}", path.display()))?;
    if meta.is_file() {
        out.push(Target {
            root,
            path: path.to_path_buf(),
            size: meta.len(),
        });
    } else if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("{}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            collect(root, &e, out, skipped)?;
        }
    } else {
        *skipped += 1;
    }
    Ok(())
}

/// Ask the mount to act on one range of an open file.
fn control(file: &File, req: &Request) -> std::io::Result<CacheReport> {
    let mut buf = req.encode();
    // SAFETY: the command encodes a read-write argument of exactly
    // `control::SIZE` bytes, which `buf` is.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), req.op.command() as _, buf.as_mut_ptr()) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENOTTY) | Some(libc::ENOSYS) => std::io::Error::other(
                "not a Tessera mount (the file system does not answer warm-up requests)",
            ),
            _ => e,
        });
    }
    Ok(decode_report(&buf))
}

/// "; N blocks failed" when any did, for the summary line.
fn failed_note(total: &CacheReport) -> String {
    if total.failed_blocks > 0 {
        format!("; {} blocks failed", total.failed_blocks)
    } else {
        String::new()
    }
}

fn add(total: &mut CacheReport, r: &CacheReport) {
    total.bytes += r.bytes;
    total.cached += r.cached;
    total.memory += r.memory;
    total.disk += r.disk;
    total.pinned += r.pinned;
    total.fetched += r.fetched;
    total.failed_blocks += r.failed_blocks;
    if total.error.is_none() {
        total.error.clone_from(&r.error);
    }
    for (addr, bytes) in &r.members {
        match total.members.iter_mut().find(|(a, _)| a == addr) {
            Some((_, b)) => *b += bytes,
            None => total.members.push((addr.clone(), *bytes)),
        }
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        100.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

pub fn run(a: Args) -> Result<()> {
    let started = Instant::now();
    let mut roots = a.paths.clone();
    if let Some(list) = &a.list {
        let text = std::fs::read_to_string(list)
            .with_context(|| format!("cannot read the path list {}", list.display()))?;
        roots.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(PathBuf::from),
        );
    }
    if roots.is_empty() {
        bail!("no paths to warm up: name files or directories, or a list with -f");
    }
    let op = if a.check {
        Op::Check
    } else if a.evict {
        Op::Evict
    } else if a.unpin {
        Op::Unpin
    } else {
        Op::Warm
    };
    let pin_secs = if a.pin {
        let ttl = parse_duration(&a.pin_ttl).context("--pin-ttl")?;
        if ttl.is_zero() {
            bail!("--pin-ttl must be more than 0 seconds");
        }
        ttl.as_secs()
    } else {
        0
    };
    let mut targets = Vec::new();
    let mut skipped = 0u64;
    for (i, r) in roots.iter().enumerate() {
        check_on_mount(r)?;
        collect(i, r, &mut targets, &mut skipped)?;
    }
    let mut flags = if a.background { FLAG_BACKGROUND } else { 0 };
    if let Some(g) = &a.cache_group {
        crate::cmd::group::check_group_name(g)?;
        flags |= FLAG_GROUP;
    }
    let group = a.cache_group.clone().unwrap_or_default();
    // Warm-ups go a chunk at a time, for progress and parallelism; the
    // other operations are quick, one request per file.
    let mut tasks = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        if op == Op::Warm {
            let mut offset = 0;
            while offset < t.size {
                let length = RANGE.min(t.size - offset);
                tasks.push(Task {
                    target: i,
                    offset,
                    length,
                });
                offset += length;
            }
        } else {
            tasks.push(Task {
                target: i,
                offset: 0,
                length: u64::MAX,
            });
        }
    }
    let total_bytes: u64 = targets.iter().map(|t| t.size).sum();
    let bar = if op == Op::Warm && !a.background {
        ProgressBar::new(total_bytes)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg} [{elapsed_precise}] {wide_bar}",
        )
        .map_err(|e| anyhow!("progress bar: {e}"))?,
    );
    let left_per_file: Vec<AtomicUsize> = targets.iter().map(|_| AtomicUsize::new(0)).collect();
    for t in &tasks {
        left_per_file[t.target].fetch_add(1, Ordering::Relaxed);
    }
    let files_done = AtomicU64::new(0);
    let copies = AtomicU64::new(0);
    let per_root = Mutex::new(vec![CacheReport::default(); roots.len()]);
    let failures = Mutex::new(Vec::<String>::new());
    let files_total = targets.len();
    tessera_chunk::par::par_for_each(&tasks, a.threads, |task| {
        let t = &targets[task.target];
        let req = Request {
            op,
            offset: task.offset,
            length: task.length,
            pin_secs,
            flags,
            group: group.clone(),
        };
        let result = File::open(&t.path).and_then(|f| control(&f, &req));
        match result {
            Ok(r) => {
                if r.failed_blocks > 0 {
                    {
                        let mut f = failures.lock();
                        f.push(format!(
                            "{}: {} blocks failed at offset {}: {}",
                            t.path.display(),
                            r.failed_blocks,
                            task.offset,
                            r.error.as_deref().unwrap_or("see the mount's log")
                        ));
                    }
                }
                {
                    let mut p = per_root.lock();
                    add(&mut p[t.root], &r);
                }
            }
            Err(e) => {
                let mut f = failures.lock();
                f.push(format!("{}: {e}", t.path.display()));
            }
        }
        bar.inc(task.length.min(t.size.saturating_sub(task.offset)));
        if left_per_file[task.target].fetch_sub(1, Ordering::Relaxed) == 1 {
            if a.local_copy {
                let copy = Request {
                    op: Op::LocalCopy,
                    offset: 0,
                    length: t.size,
                    pin_secs: 0,
                    flags: 0,
                    group: String::new(),
                };
                match File::open(&t.path).and_then(|f| control(&f, &copy)) {
                    Ok(_) => {
                        copies.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        // Only the errno crosses the ioctl; say
                        // what ENOSPC means here.
                        let why = if e.raw_os_error() == Some(libc::ENOSPC) {
                            format!(
                                "{e}: the copy does not fit the mount's disk cache \
                                             quota (--cache-size) beside the local copies it \
                                             keeps, or the disk itself is full"
                            )
                        } else {
                            e.to_string()
                        };
                        {
                            let mut f = failures.lock();
                            f.push(format!("{}: local copy: {why}", t.path.display()));
                        }
                    }
                }
            }
            let done = files_done.fetch_add(1, Ordering::Relaxed) + 1;
            bar.set_message(format!("{done}/{files_total} files"));
        }
    });
    bar.finish_and_clear();
    let per_root = per_root.into_inner();
    let failures = failures.into_inner();
    let mut total = CacheReport::default();
    for r in &per_root {
        add(&mut total, r);
    }
    let secs = started.elapsed().as_secs_f64();
    let files = |root: usize| targets.iter().filter(|t| t.root == root).count();
    match op {
        Op::Warm if a.background => println!(
            "queued {} files ({}) for warm-up by the mount in the background; `tessera warmup --check` shows progress",
            targets.len(),
            human(total_bytes)
        ),
        // The owners fetch what they lack and do not say how much that
        // was: the rate is of the bytes the group holds now.
        Op::Warm if a.cache_group.is_some() => println!(
            "warmed up {} files, {} in {secs:.1}s ({}/s) through cache group {}: {} cached on {} members ({:.1}%){}",
            targets.len(),
            human(total.bytes),
            human((total.cached as f64 / secs.max(1e-3)) as u64),
            group,
            human(total.cached),
            total.members.len(),
            percent(total.cached, total.bytes),
            failed_note(&total),
        ),
        Op::Warm => println!(
            "warmed up {} files, {} in {secs:.1}s ({}/s): {} fetched, {} cached now ({:.1}%), {} pinned{}{}",
            targets.len(),
            human(total.bytes),
            human((total.fetched as f64 / secs.max(1e-3)) as u64),
            human(total.fetched),
            human(total.cached),
            percent(total.cached, total.bytes),
            human(total.pinned),
            failed_note(&total),
            if a.local_copy {
                format!("; {} local copies", copies.load(Ordering::Relaxed))
            } else {
                String::new()
            }
        ),
        Op::Check if a.cache_group.is_some() => {
            for (i, r) in per_root.iter().enumerate() {
                println!(
                    "{}: {} of {} cached in group {} ({:.1}%); {} files",
                    roots[i].display(),
                    human(r.cached),
                    human(r.bytes),
                    group,
                    percent(r.cached, r.bytes),
                    files(i)
                );
                let mut members = r.members.clone();
                members.sort();
                for (addr, bytes) in members {
                    println!("  {addr}: {}", human(bytes));
                }
            }
        }
        Op::Check => {
            for (i, r) in per_root.iter().enumerate() {
                println!(
                    "{}: {} of {} cached ({:.1}%): memory {}, disk {}, pinned {}; {} files",
                    roots[i].display(),
                    human(r.cached),
                    human(r.bytes),
                    percent(r.cached, r.bytes),
                    human(r.memory),
                    human(r.disk),
                    human(r.pinned),
                    files(i)
                );
            }
        }
        Op::Evict | Op::Unpin | Op::LocalCopy => {
            let verb = if op == Op::Evict { "evicted" } else { "unpinned" };
            for (i, r) in per_root.iter().enumerate() {
                println!(
                    "{verb} {}: {} files; {} of {} cached now ({:.1}%), {} pinned",
                    roots[i].display(),
                    files(i),
                    human(r.cached),
                    human(r.bytes),
                    percent(r.cached, r.bytes),
                    human(r.pinned)
                );
            }
        }
    }
    if skipped > 0 {
        eprintln!("skipped {skipped} symlinks or special files");
    }
    report_failures(&failures, &format!("of {} requests failed", tasks.len()))
}
