//! The data-path flags of `tessera mount` and `tessera cache-server`
//! (caches, buffers, transfers, metrics), checked and turned into
//! `tessera_chunk::DataPathOptions`.

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use tessera_blockcache::{DiskCacheConfig, Eviction};
use tessera_chunk::{ChunkConfig, DataPathOptions};

use tessera_meta::Format;

use crate::common::{parse_size, seconds_in, StorageFlags};
use crate::encryption::volume_cipher;

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
    /// The RSA key of an encrypted volume (PEM), when its settings keep
    /// none or you would rather not use the one they keep; a protected
    /// key's passphrase comes from TESSERA_KEY_PASSPHRASE.
    #[arg(long, value_name = "FILE", help_heading = "Data path")]
    pub encrypt_key: Option<PathBuf>,
    /// Delay every object GET and HEAD by this many milliseconds (benches:
    /// a far-away store on one machine).
    #[arg(long, value_name = "MS", hide = true)]
    pub inject_store_latency_ms: Option<u64>,
    /// Upload bandwidth limit of this node in Mbit/s (0: none); the
    /// volume's default (`tessera config --upload-limit`) when not given.
    #[arg(long, help_heading = "Data path")]
    pub upload_limit: Option<f64>,
    /// Download bandwidth limit of this node in Mbit/s (0: none); the
    /// volume's default when not given.
    #[arg(long, help_heading = "Data path")]
    pub download_limit: Option<f64>,
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
    pub fn options(&self, storage: &StorageFlags, format: &Format) -> Result<DataPathOptions> {
        Ok(DataPathOptions {
            storage: storage.options_for(format)?,
            upload_mbps: self.upload_limit,
            download_mbps: self.download_limit,
            chunks: ChunkConfig {
                cipher: volume_cipher(format, self.encrypt_key.as_deref())?,
                ..self.chunk_config()?
            },
            metrics_addr: Some(self.metrics.clone()),
            injected_latency: self
                .inject_store_latency_ms
                .map(std::time::Duration::from_millis),
        })
    }

    /// The caching, buffering and transfer settings (the volume's own are
    /// filled in by the data path).
    pub fn chunk_config(&self) -> Result<ChunkConfig> {
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
            if let Some(v) = v {
                check_limit(flag, v)?;
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

/// A number of requests in flight at once, 1 to 4096.
fn in_flight(flag: &str, n: usize) -> Result<usize> {
    if !(1..=4096).contains(&n) {
        return Err(anyhow!("{flag} {n} is out of range: give 1 to 4096"));
    }
    Ok(n)
}

/// A bandwidth limit in Mbit/s: 0 (none), or 0.01 to 10,000,000 (below,
/// a block would wait for days).
pub fn check_limit(flag: &str, v: f64) -> Result<()> {
    if v == 0.0 || (0.01..=10_000_000.0).contains(&v) {
        Ok(())
    } else {
        Err(anyhow!(
            "--{flag} {} is out of range: give Mbit/s from 0.01 to 10000000, or 0 for no limit",
            crate::common::shown(v)
        ))
    }
}
