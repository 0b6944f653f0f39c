//! Assembling the data path of a volume, as a mount and a cache server
//! both need it: the I/O runtime, the metrics, the object store (counted,
//! and rate-limited when asked) and the [`ChunkStore`] over them.

use std::sync::Arc;

use tessera_meta::{Format, Meta};
use tessera_metrics::Metrics;
use tessera_object::{Instrumented, RateLimiter, StorageOptions};

use crate::{ChunkConfig, ChunkError, ChunkStore};

/// Threads of the I/O runtime: object requests are async, so a few carry
/// hundreds of transfers.
const IO_THREADS: usize = 4;

/// Settings of a data path beyond the volume's own.
#[derive(Debug, Clone, Default)]
pub struct DataPathOptions {
    /// Credentials and endpoint settings of the object store.
    pub storage: StorageOptions,
    /// Bandwidth limits of this node in Mbit/s (0: none); None takes the
    /// volume's default (`tessera config --upload-limit`).
    pub upload_mbps: Option<f64>,
    pub download_mbps: Option<f64>,
    /// Caches, buffers and transfers. The volume's name, UUID, layout,
    /// block size and compression are taken from its format.
    pub chunks: ChunkConfig,
    /// Serve Prometheus metrics here (or on one of the next ten ports).
    pub metrics_addr: Option<String>,
    /// Delay every GET and HEAD by this much (benches: a far-away store
    /// on this machine, where the kernel has no netem).
    pub injected_latency: Option<std::time::Duration>,
}

/// A volume's data path, ready for a file system or a cache server.
pub struct DataPath {
    /// Runs every object request; dropping it ends them.
    pub runtime: tokio::runtime::Runtime,
    pub metrics: Arc<Metrics>,
    pub chunks: Arc<ChunkStore>,
}

/// Why a data path could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum DataPathError {
    #[error("cannot start the I/O runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot open the object store: {0}")]
    Store(#[from] tessera_object::ObjectError),
    #[error(transparent)]
    Chunks(#[from] ChunkError),
    #[error("volume {0:?} is encrypted: its data path needs the volume's key")]
    KeyNeeded(String),
}

impl DataPath {
    pub fn open(
        meta: &Arc<Meta>,
        format: &Format,
        options: DataPathOptions,
    ) -> Result<DataPath, DataPathError> {
        if format.encryption.is_some() && options.chunks.cipher.is_none() {
            return Err(DataPathError::KeyNeeded(format.name.clone()));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(IO_THREADS)
            .thread_name("tessera-io")
            .enable_all()
            .build()
            .map_err(DataPathError::Runtime)?;
        let metrics = Arc::new(Metrics::new());
        let (upload, download) = limits(&options, format);
        let mut raw = tessera_object::open_store(&format.storage, &options.storage)?;
        if let Some(delay) = options.injected_latency {
            use tessera_object::faults::{Fault, Faulty, Method};
            let far = Faulty::wrap(raw);
            far.always(Method::Get, None, Fault::Delay(delay));
            far.always(Method::Head, None, Fault::Delay(delay));
            raw = far;
        }
        let store = Instrumented::wrap(
            raw,
            metrics.clone(),
            RateLimiter::from_mbps(upload),
            RateLimiter::from_mbps(download),
        );
        let config = ChunkConfig {
            volume: format.name.clone(),
            uuid: format.uuid.clone(),
            sealed_objects: format.sealed_blocks(),
            block_size: format.block_size as usize,
            compression: format.compression,
            ..options.chunks
        };
        let chunks = ChunkStore::new(
            store,
            meta.clone(),
            runtime.handle().clone(),
            config,
            metrics.clone(),
        )?;
        if let Some(addr) = &options.metrics_addr {
            metrics.serve_near(addr);
        }
        Ok(DataPath {
            runtime,
            metrics,
            chunks,
        })
    }
}

/// The upload and download limits in Mbit/s: the node's own, else the
/// volume's defaults.
fn limits(options: &DataPathOptions, format: &Format) -> (f64, f64) {
    let default = |kbps: u64| kbps as f64 / 1000.0;
    (
        options
            .upload_mbps
            .unwrap_or_else(|| default(format.upload_limit_kbps)),
        options
            .download_mbps
            .unwrap_or_else(|| default(format.download_limit_kbps)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_limit_overrides_the_volume_default() {
        let mut format = tessera_meta::conformance::test_format();
        format.upload_limit_kbps = 80_000;
        format.download_limit_kbps = 1_500;
        let mut options = DataPathOptions::default();
        assert_eq!(limits(&options, &format), (80.0, 1.5));
        options.upload_mbps = Some(0.0);
        options.download_mbps = Some(200.0);
        assert_eq!(limits(&options, &format), (0.0, 200.0));
    }
}
