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
    /// Bandwidth limits of this node in Mbit/s (0: none).
    pub upload_mbps: f64,
    pub download_mbps: f64,
    /// Caches, buffers and transfers. The volume's name, UUID, layout,
    /// block size and compression are taken from its format.
    pub chunks: ChunkConfig,
    /// Serve Prometheus metrics here (or on one of the next ten ports).
    pub metrics_addr: Option<String>,
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
}

impl DataPath {
    pub fn open(
        meta: &Arc<Meta>,
        format: &Format,
        options: DataPathOptions,
    ) -> Result<DataPath, DataPathError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(IO_THREADS)
            .thread_name("tessera-io")
            .enable_all()
            .build()
            .map_err(DataPathError::Runtime)?;
        let metrics = Arc::new(Metrics::new());
        let store = Instrumented::wrap(
            tessera_object::open_store(&format.storage, &options.storage)?,
            metrics.clone(),
            RateLimiter::from_mbps(options.upload_mbps),
            RateLimiter::from_mbps(options.download_mbps),
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
