//! `tessera mount`: serve a volume through FUSE, in the foreground or as a
//! daemon (`-d`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tessera_chunk::{ChunkConfig, ChunkStore};
use tessera_fuse::{CacheTtls, MountConfig};
use tessera_meta::MetaConfig;
use tessera_vfs::{Vfs, VfsConfig};
use tracing::info;

use crate::common::{is_mounted, open_volume, parse_size, redact, StorageFlags};

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
    #[arg(long, default_value_t = 1.0)]
    pub attr_cache: f64,
    /// Seconds the kernel caches file name lookups.
    #[arg(long, default_value_t = 1.0)]
    pub entry_cache: f64,
    /// Seconds the kernel caches directory name lookups.
    #[arg(long, default_value_t = 1.0)]
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
    /// Memory for cached blocks; a bare number is MiB.
    #[arg(long, default_value = "512M")]
    pub mem_cache_size: String,
    /// Write buffer per open file; a bare number is MiB.
    #[arg(long, default_value = "256M")]
    pub buffer_size: String,
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
    Ok(())
}

pub fn run(a: Args) -> Result<()> {
    check_mountpoint(&a.mountpoint)?;
    let mountpoint = a.mountpoint.canonicalize()?;
    // Check the engine and the volume before anything forks or mounts.
    drop(open_volume(&a.meta_url, MetaConfig::default())?);
    let mem_cache = parse_size(&a.mem_cache_size, 1 << 20)? as usize;
    let buffer = parse_size(&a.buffer_size, 1 << 20)? as usize;
    if a.background {
        daemonize(&mountpoint, a.log.as_deref())?;
    }
    serve(&a, &mountpoint, mem_cache, buffer)
}

fn serve(a: &Args, mountpoint: &Path, mem_cache: usize, buffer: usize) -> Result<()> {
    let (meta, format) = open_volume(
        &a.meta_url,
        MetaConfig {
            read_only: a.read_only,
        },
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_name("tessera-io")
        .enable_all()
        .build()?;
    let store = tessera_object::open_store(&format.storage, &a.storage_flags.options())?;
    let chunk_config = ChunkConfig {
        volume: format.name.clone(),
        block_size: format.block_size as usize,
        compression: format.compression,
        mem_cache_size: mem_cache,
        buffer_size: buffer,
        ..Default::default()
    };
    let chunks = ChunkStore::new(store, meta.clone(), rt.handle().clone(), chunk_config);
    let vfs = Vfs::new(
        meta.clone(),
        chunks,
        VfsConfig {
            read_only: a.read_only,
            ..Default::default()
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
    let secs = |s: f64| Duration::from_secs_f64(s.max(0.0));
    let config = MountConfig {
        fs_name: redact(&a.meta_url),
        read_only: a.read_only,
        threads: a.threads,
        ttls: CacheTtls {
            attr: secs(a.attr_cache),
            entry: secs(a.entry_cache),
            dir_entry: secs(a.dir_entry_cache),
        },
        options: a.options.clone(),
        root,
    };
    info!(volume = %format.name, mountpoint = %mountpoint.display(), "mounting");
    let served = tessera_fuse::mount(vfs.clone(), mountpoint, &config)
        .with_context(|| format!("cannot mount on {}", mountpoint.display()));
    vfs.shutdown();
    info!("unmounted");
    served
}

/// Fork; the parent returns only once the child's mount is up (or exits
/// with the child's failure).
fn daemonize(mountpoint: &Path, log: Option<&Path>) -> Result<()> {
    let log = log.map(Path::to_path_buf).unwrap_or_else(|| {
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
