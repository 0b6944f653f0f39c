//! `tessera mount`: serve a volume through FUSE, in the foreground or as a
//! daemon (`-d`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tessera_blockcache::{DiskCacheConfig, Eviction};
use tessera_chunk::{ChunkConfig, DataPath, DataPathOptions};
use tessera_fuse::{CacheTtls, MountConfig};
use tessera_meta::MetaConfig;
use tessera_vfs::{Vfs, VfsConfig};
use tracing::info;

use crate::common::{
    is_mounted, open_volume, parse_size, redact, seconds_in, StorageFlags, MAX_FLAG_SECONDS,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Metadata engine URL, e.g. sqlite:///var/lib/tessera/meta.db
    pub meta_url: String,
    /// An existing empty directory to mount on.
    pub mountpoint: PathBuf,
    /// Run in the background once the mount is up.
    #[arg(short = 'd', long = "background")]
    pub background: bool,
    /// Log file when running in the background.
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// Seconds the kernel caches attributes.
    #[arg(long, value_parser = crate::common::parse_seconds, default_value_t = 1.0)]
    pub attr_cache: f64,
    /// Seconds the kernel caches file name lookups.
    #[arg(long, value_parser = crate::common::parse_seconds, default_value_t = 1.0)]
    pub entry_cache: f64,
    /// Seconds the kernel caches directory name lookups.
    #[arg(long, value_parser = crate::common::parse_seconds, default_value_t = 1.0)]
    pub dir_entry_cache: f64,
    /// Mount read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Mount only this directory of the volume.
    #[arg(long)]
    pub subdir: Option<String>,
    /// Extra FUSE mount options, comma-separated (e.g. -o noatime,nodev).
    #[arg(short = 'o', value_delimiter = ',')]
    pub options: Vec<String>,
    /// FUSE worker threads.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
    /// Seconds to trust the attributes and slice records of a file opened
    /// read-only: later opens, stats and reads of it within that time need
    /// no metadata round trip (changes from other mounts show up after it).
    /// 0 keeps strict close-to-open.
    #[arg(long, value_parser = crate::common::parse_seconds, default_value_t = 0.0)]
    pub open_cache: f64,
    /// Seconds between this mount's heartbeats to the metadata engine.
    #[arg(long, value_parser = crate::common::parse_seconds, default_value_t = 5.0)]
    pub heartbeat: f64,
    /// A mount silent for this many seconds is taken for dead; live mounts
    /// release its locks and reclaim the files it held open after unlink.
    #[arg(long, value_parser = crate::common::parse_seconds, default_value_t = 60.0)]
    pub session_timeout: f64,
    /// Before mounting, evict from each cache directory down to its share
    /// of --cache-size (`tessera cache gc`; waits for another GC of it).
    #[arg(long, help_heading = "Cache")]
    pub cache_gc_before_start: bool,
    #[command(flatten)]
    pub data: DataPathArgs,
    #[command(flatten)]
    pub group: crate::cmd::group::GroupArgs,
    #[command(flatten)]
    pub storage_flags: StorageFlags,
}

/// Caching, buffering and transfer options of the data path.
#[derive(clap::Args, Debug, Clone)]
pub struct DataPathArgs {
    /// Memory for cached blocks; a bare number is MiB.
    #[arg(long, default_value = "512M", help_heading = "Cache")]
    pub mem_cache_size: String,
    /// Disk cache directories, colon-separated (blocks are spread over them
    /// by hash); "memory" keeps blocks in memory only.
    #[arg(long, help_heading = "Cache")]
    pub cache_dir: Option<String>,
    /// Disk cache quota across all directories; a bare number is MiB.
    #[arg(long, default_value = "100G", help_heading = "Cache")]
    pub cache_size: String,
    /// Keep at least this fraction of each cache disk free.
    #[arg(long, default_value_t = 0.1, help_heading = "Cache")]
    pub free_space_ratio: f64,
    /// Drop cached blocks unused for this long (seconds, or 30m, 12h, 7d;
    /// 0: never).
    #[arg(long, value_parser = crate::common::parse_seconds, default_value = "0", help_heading = "Cache")]
    pub cache_expire: f64,
    /// Eviction policy of the caches.
    #[arg(long, default_value = "2-random", help_heading = "Cache",
          value_parser = clap::builder::TypedValueParser::try_map(
              clap::builder::PossibleValuesParser::new(["2-random", "lru", "s3fifo"]),
              |s| s.parse::<Eviction>()))]
    pub cache_eviction: Eviction,
    /// Cache on disk only small or random reads, not large sequential ones.
    #[arg(long, help_heading = "Cache")]
    pub cache_partial_only: bool,
    /// Memory all write buffers may hold together; a bare number is MiB.
    #[arg(long, default_value = "300M", help_heading = "Data path")]
    pub buffer_size: String,
    /// Largest readahead window per open file; a bare number is MiB.
    #[arg(long, default_value = "64M", help_heading = "Data path")]
    pub max_readahead: String,
    /// Block downloads in flight at once.
    #[arg(long, default_value_t = 64, help_heading = "Data path")]
    pub max_downloads: usize,
    /// Block uploads in flight at once.
    #[arg(long, default_value_t = 20, help_heading = "Data path")]
    pub max_uploads: usize,
    /// After a small random read, fetch its whole block in the background
    /// (0 turns this off).
    #[arg(long, default_value_t = 1, help_heading = "Data path")]
    pub prefetch: u32,
    /// Stage written blocks on the disk cache and upload them in the
    /// background; the data is committed once staged.
    #[arg(long, help_heading = "Data path")]
    pub writeback: bool,
    /// Upload bandwidth limit of this node in Mbit/s (0: none).
    #[arg(long, default_value_t = 0.0, help_heading = "Data path")]
    pub upload_limit: f64,
    /// Download bandwidth limit of this node in Mbit/s (0: none).
    #[arg(long, default_value_t = 0.0, help_heading = "Data path")]
    pub download_limit: f64,
    /// Serve Prometheus metrics on this address ("none" turns it off); a
    /// busy port moves to the next free one.
    #[arg(long, default_value = "127.0.0.1:9567", help_heading = "Data path")]
    pub metrics: String,
}

impl DataPathArgs {
    fn default_cache_dir() -> String {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            "/var/cache/tessera".into()
        } else {
            format!(
                "{}/.cache/tessera",
                std::env::var("HOME").unwrap_or_else(|_| ".".into())
            )
        }
    }

    /// Check every option and build the data-path settings.
    pub fn options(&self, storage: &StorageFlags) -> Result<DataPathOptions> {
        Ok(DataPathOptions {
            storage: storage.options()?,
            upload_mbps: self.upload_limit,
            download_mbps: self.download_limit,
            chunks: self.chunk_config()?,
            metrics_addr: Some(self.metrics.clone()),
        })
    }

    /// The caching, buffering and transfer settings (the volume's own are
    /// filled in by the data path).
    fn chunk_config(&self) -> Result<ChunkConfig> {
        let size =
            |flag: &str, v: &str| parse_size(v, 1 << 20).map_err(|e| anyhow!("--{flag}: {e}"));
        let eviction = self.cache_eviction;
        if !(0.0..1.0).contains(&self.free_space_ratio) {
            return Err(anyhow!(
                "--free-space-ratio {} must be at least 0 and below 1",
                self.free_space_ratio
            ));
        }
        for (flag, v) in [
            ("upload-limit", self.upload_limit),
            ("download-limit", self.download_limit),
        ] {
            // 0 is no limit; below 0.01 Mbit/s a block would wait for days.
            if !(v == 0.0 || (0.01..=10_000_000.0).contains(&v)) {
                return Err(anyhow!(
                    "--{flag} {v} is out of range: give Mbit/s from 0.01 to 10000000, or 0 for no limit"
                ));
            }
        }
        let dirs = self
            .cache_dir
            .clone()
            .unwrap_or_else(Self::default_cache_dir);
        let disk_cache = if dirs == "memory" {
            None
        } else {
            let dirs: Vec<PathBuf> = dirs
                .split(':')
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .collect();
            if dirs.is_empty() {
                return Err(anyhow!("--cache-dir names no directory"));
            }
            let capacity = size("cache-size", &self.cache_size)?;
            (capacity > 0).then_some(DiskCacheConfig {
                dirs,
                capacity,
                free_space_ratio: self.free_space_ratio,
                expire: (self.cache_expire > 0.0)
                    .then(|| {
                        seconds_in("--cache-expire", self.cache_expire, 1.0, 3650.0 * 86_400.0)
                    })
                    .transpose()?,
                eviction,
            })
        };
        if self.writeback && disk_cache.is_none() {
            return Err(anyhow!(
                "--writeback stages blocks on the disk cache: give it a --cache-dir and a --cache-size above 0"
            ));
        }
        Ok(ChunkConfig {
            mem_cache_size: size("mem-cache-size", &self.mem_cache_size)? as usize,
            eviction,
            disk_cache,
            cache_partial_only: self.cache_partial_only,
            buffer_size: size("buffer-size", &self.buffer_size)?.max(1 << 20) as usize,
            max_uploads: in_flight("--max-uploads", self.max_uploads)?,
            max_downloads: in_flight("--max-downloads", self.max_downloads)?,
            max_readahead: size("max-readahead", &self.max_readahead)? as usize,
            prefetch: self.prefetch > 0,
            writeback: self.writeback,
            ..Default::default()
        })
    }
}

fn check_mountpoint(p: &Path) -> Result<()> {
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(anyhow!("mountpoint {} is not a directory", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(anyhow!("mountpoint {} does not exist: create it with `mkdir -p {}`", p.display(), p.display()))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(anyhow!(
                "mountpoint {} is a dead mount (its process is gone): run `tessera umount --force {}` first",
                p.display(),
                p.display()
            ))
        }
        Err(e) => return Err(anyhow!("cannot use mountpoint {}: {e}", p.display())),
    }
    if is_mounted(p) {
        return Err(anyhow!(
            "mountpoint {} is busy: something is already mounted there (unmount it with `tessera umount {}`)",
            p.display(),
            p.display()
        ));
    }
    let hidden = std::fs::read_dir(p)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if hidden {
        tracing::warn!(
            mountpoint = %p.display(),
            "the mountpoint is not empty: its files are hidden while the volume is mounted"
        );
        eprintln!(
            "warning: {} is not empty; its files are hidden while the volume is mounted there",
            p.display()
        );
    }
    Ok(())
}

pub fn run(a: Args) -> Result<()> {
    check_mountpoint(&a.mountpoint)?;
    let mountpoint = a.mountpoint.canonicalize()?;
    // Check the engine, the volume and the options before anything forks or mounts.
    let (_, format) = open_volume(&a.meta_url, MetaConfig::default())?;
    let chunk_config = a.data.chunk_config()?;
    session_times(&a)?;
    warn_if_storage_is_down(&format, &a.storage_flags)?;
    if let Some(name) = &a.group.cache_group {
        crate::cmd::group::check_group_name(name)?;
        a.group.tls.load(!a.group.no_sharing)?;
    }
    if a.cache_gc_before_start {
        if let Some(dc) = &chunk_config.disk_cache {
            let share = dc.capacity / dc.dirs.len().max(1) as u64;
            for dir in &dc.dirs {
                if dir.is_dir() {
                    let r = tessera_blockcache::gc::collect(dir, share)?;
                    info!(dir = %dir.display(), removed = r.removed, left = r.left, "cache gc before start");
                }
            }
        }
    }
    open_cache_time(a.open_cache)?;
    cache_ttls(&a)?;
    if !(1..=1024).contains(&a.threads) {
        return Err(anyhow!(
            "--threads {} is out of range: give 1 to 1024",
            a.threads
        ));
    }
    if a.background {
        daemonize(&mountpoint, a.log.as_deref())?;
    }
    serve(&a, &mountpoint)
}

/// Ask the object store for the volume's settings object, for at most five
/// seconds: a store that is down does not stop the mount (cached data stays
/// readable), but the user hears of it now rather than at the first miss.
fn warn_if_storage_is_down(format: &tessera_meta::Format, flags: &StorageFlags) -> Result<()> {
    let store = tessera_object::open_store(&format.storage, &flags.options()?)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let key = format!("{}/tessera.json", format.name);
    let answer =
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), store.head(&key)).await });
    let trouble = match answer {
        Ok(Ok(_)) | Ok(Err(tessera_object::ObjectError::NotFound(_))) => return Ok(()),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer within 5 seconds".to_string(),
    };
    tracing::warn!(storage = %store.describe(), %trouble, "object storage is not reachable");
    eprintln!(
        "warning: object storage {} is not reachable ({trouble}); the volume mounts, but reads of uncached data and all writes fail until it is",
        store.describe()
    );
    Ok(())
}

fn open_cache_time(v: f64) -> Result<Duration> {
    seconds_in("--open-cache", v, 0.0, MAX_FLAG_SECONDS)
}

/// The heartbeat period and the silence after which a session is dead.
fn session_times(a: &Args) -> Result<(Duration, Duration)> {
    let heartbeat = seconds_in("--heartbeat", a.heartbeat, 0.1, 3600.0)?;
    let session_timeout = seconds_in("--session-timeout", a.session_timeout, 0.2, 7.0 * 86_400.0)?;
    if session_timeout < heartbeat * 2 {
        return Err(anyhow!(
            "--session-timeout ({}s) must be at least twice --heartbeat ({}s), or live mounts would be taken for dead",
            a.session_timeout,
            a.heartbeat
        ));
    }
    Ok((heartbeat, session_timeout))
}

fn serve(a: &Args, mountpoint: &Path) -> Result<()> {
    let (heartbeat, session_timeout) = session_times(a)?;
    keep_freed_memory();
    let (meta, format) = open_volume(
        &a.meta_url,
        MetaConfig {
            read_only: a.read_only,
        },
    )?;
    let DataPath {
        runtime: rt,
        metrics,
        chunks,
    } = DataPath::open(&meta, &format, a.data.options(&a.storage_flags)?)?;
    let membership = match &a.group.cache_group {
        Some(name) => Some(tessera_chunk::membership::join(
            &meta,
            &format,
            &chunks,
            &metrics,
            tessera_chunk::membership::JoinSpec {
                name,
                share: (!a.group.no_sharing)
                    .then_some((a.group.group_listen.as_str(), a.group.group_weight)),
                backup_period: seconds_in(
                    "--backup-period",
                    a.group.backup_period,
                    0.0,
                    MAX_FLAG_SECONDS,
                )?,
                kind: "mount",
                tls: a.group.tls.load(!a.group.no_sharing)?,
            },
        )?),
        None => None,
    };
    let vfs = Vfs::new(
        meta.clone(),
        chunks,
        VfsConfig {
            read_only: a.read_only,
            heartbeat,
            session_timeout,
            open_cache: open_cache_time(a.open_cache)?,
            acl: format.acl,
            atime: atime_mode(&a.options),
        },
    );
    let root = match &a.subdir {
        Some(sub) => {
            let (ino, attr) = meta
                .resolve(sub)
                .map_err(|e| anyhow!("--subdir {sub}: {e}"))?;
            if attr.typ != tessera_meta::FileType::Dir {
                return Err(anyhow!("--subdir {sub} is not a directory"));
            }
            ino
        }
        None => tessera_meta::ROOT_INO,
    };
    vfs.start(&mountpoint.to_string_lossy())?;
    let target = mountpoint.to_path_buf();
    rt.spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        info!("signal received, unmounting");
        if let Err(e) = crate::cmd::umount::unmount(&target, false) {
            tracing::warn!(error = %e, "unmount on signal failed; detaching");
            let _ = crate::cmd::umount::unmount(&target, true);
        }
    });
    let config = MountConfig {
        fs_name: redact(&a.meta_url),
        read_only: a.read_only,
        threads: a.threads,
        ttls: cache_ttls(a)?,
        options: a.options.clone(),
        root,
    };
    info!(volume = %format.name, mountpoint = %mountpoint.display(), "mounting");
    let served = tessera_fuse::mount(vfs.clone(), mountpoint, &config)
        .with_context(|| format!("cannot mount on {}", mountpoint.display()));
    if let Some(m) = membership {
        m.leave();
    }
    vfs.shutdown();
    match &served {
        Ok(()) => info!("unmounted"),
        Err(e) => tracing::error!(error = %format!("{e:#}"), "the mount failed"),
    }
    served
}

/// The access-time rule the `-o` options ask for (the last one wins;
/// noatime when none does).
fn atime_mode(options: &[String]) -> tessera_vfs::AtimeMode {
    use tessera_vfs::AtimeMode;
    options
        .iter()
        .flat_map(|o| o.split(','))
        .rev()
        .find_map(|o| match o {
            "noatime" => Some(AtimeMode::NoAtime),
            "relatime" => Some(AtimeMode::RelAtime),
            "strictatime" => Some(AtimeMode::StrictAtime),
            _ => None,
        })
        .unwrap_or_default()
}

/// Blocks are 4 MiB buffers allocated and freed all the time; by default
/// glibc hands such sizes back to the kernel (mmap/trim), so every block
/// faults in and zeroes fresh pages. Keeping freed memory for reuse costs a
/// steadier RSS (bounded by the caches and buffers anyway) and saves a
/// tenth of the CPU of a cold read.
fn keep_freed_memory() {
    // SAFETY: mallopt only tunes allocator thresholds; called before the
    // runtime's threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
}

/// Fork; the parent returns only once the child's mount is up (or exits
/// with the child's failure).
fn daemonize(mountpoint: &Path, log: Option<&Path>) -> Result<()> {
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

/// A number of requests in flight at once, 1 to 4096.
fn in_flight(flag: &str, n: usize) -> Result<usize> {
    if !(1..=4096).contains(&n) {
        return Err(anyhow!("{flag} {n} is out of range: give 1 to 4096"));
    }
    Ok(n)
}

/// How long the kernel may cache attributes and names.
fn cache_ttls(a: &Args) -> Result<CacheTtls> {
    let ttl = |flag, v| seconds_in(flag, v, 0.0, MAX_FLAG_SECONDS);
    Ok(CacheTtls {
        attr: ttl("--attr-cache", a.attr_cache)?,
        entry: ttl("--entry-cache", a.entry_cache)?,
        dir_entry: ttl("--dir-entry-cache", a.dir_entry_cache)?,
    })
}
