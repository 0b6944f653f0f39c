//! `tessera mount`: serve a volume through FUSE, in the foreground or as a
//! daemon (`-d`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tessera_chunk::DataPath;
use tessera_fuse::{CacheTtls, MountConfig};
use tessera_meta::MetaConfig;
use tessera_vfs::{Vfs, VfsConfig};
use tracing::info;

use crate::cmd::daemon::{daemonize, keep_freed_memory};
use crate::cmd::data_path::DataPathArgs;
use crate::common::{is_mounted, open_volume, redact, seconds_in, StorageFlags, MAX_FLAG_SECONDS};

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
    /// Seconds the kernel remembers that a name does not exist (0: asks
    /// every time). Saves a metadata round trip per repeated miss (loaders
    /// and imports probe for files that are not there); a name another
    /// mount creates meanwhile stays unseen here for that long. This
    /// mount's own creates show at once.
    #[arg(long, value_parser = crate::common::parse_seconds, default_value_t = 0.0)]
    pub negative_entry_cache: f64,
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
    /// Back the volume's metadata up into its bucket this often
    /// (`{volume}/meta/dump-*.json.zst`; one mount of the volume writes each
    /// one; old ones thinned); 0 turns it off. `tessera load --from-bucket`
    /// rebuilds a lost metadata engine from them.
    #[arg(long, value_parser = crate::common::parse_seconds, default_value = "1h")]
    pub backup_meta: f64,
    /// Keep trashed files this long instead of the volume's trash days
    /// (for tests).
    #[arg(long, value_parser = crate::common::parse_seconds, hide = true)]
    pub trash_keep: Option<f64>,
    /// Read a file whole into the cache, in the background, when it is
    /// opened for reading and its name matches this pattern (`*` and `?`;
    /// repeatable): `--prefetch-on-open '*.safetensors'` for model files a
    /// loader mmaps and touches in its own order.
    #[arg(long, value_name = "GLOB", help_heading = "Data path")]
    pub prefetch_on_open: Vec<String>,
    /// How often a mount looks for trash hours to purge.
    #[arg(long, value_parser = crate::common::parse_seconds, default_value = "1h", hide = true)]
    pub trash_purge_every: f64,
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
    // An encrypted volume's key too (the passphrase and the fingerprint),
    // so that a wrong one is said here, not in the daemon's log.
    crate::encryption::volume_cipher(&format, a.data.encrypt_key.as_deref())?;
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
    backup_interval(a.backup_meta)?;
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
    let store = tessera_object::open_store(&format.storage, &flags.options_for(format)?)?;
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

/// The backup interval, None when off.
fn backup_interval(v: f64) -> Result<Option<Duration>> {
    if v == 0.0 {
        return Ok(None);
    }
    seconds_in("--backup-meta", v, 1.0, MAX_FLAG_SECONDS).map(Some)
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
    } = DataPath::open(&meta, &format, a.data.options(&a.storage_flags, &format)?)?;
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
            backup_meta: backup_interval(a.backup_meta)?,
            trash_keep: a
                .trash_keep
                .map(|s| seconds_in("--trash-keep", s, 0.0, MAX_FLAG_SECONDS))
                .transpose()?,
            trash_purge_every: seconds_in(
                "--trash-purge-every",
                a.trash_purge_every,
                0.1,
                MAX_FLAG_SECONDS,
            )?,
            acl: format.acl,
            atime: atime_mode(&a.options),
            prefetch_on_open: a.prefetch_on_open.clone(),
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

/// How long the kernel may cache attributes and names.
fn cache_ttls(a: &Args) -> Result<CacheTtls> {
    let ttl = |flag, v| seconds_in(flag, v, 0.0, MAX_FLAG_SECONDS);
    Ok(CacheTtls {
        attr: ttl("--attr-cache", a.attr_cache)?,
        entry: ttl("--entry-cache", a.entry_cache)?,
        dir_entry: ttl("--dir-entry-cache", a.dir_entry_cache)?,
        negative: ttl("--negative-entry-cache", a.negative_entry_cache)?,
    })
}
