//! `tessera cache-server META_URL --group NAME --listen ADDR:PORT`: a
//! dedicated member of a cache group. It mounts nothing; it serves the
//! blocks it owns from its disk and memory caches, fetching each from
//! object storage the first time a peer asks.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tessera_chunk::ChunkStore;
use tessera_meta::MetaConfig;
use tessera_metrics::Metrics;
use tessera_object::{Instrumented, RateLimiter};
use tracing::info;

use crate::cmd::group::{join, JoinSpec};
use crate::cmd::mount::{serve_metrics, DataPathArgs};
use crate::common::{open_volume, StorageFlags};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Metadata engine URL of the volume whose blocks are served.
    pub meta_url: String,
    /// The cache group to serve.
    #[arg(long)]
    pub group: String,
    /// Address to listen on and to be reached at, IP:PORT.
    #[arg(long)]
    pub listen: String,
    /// Share of the blocks relative to the other members (0 drains this
    /// member: it hands its blocks to their new owners).
    #[arg(long, default_value_t = 1)]
    pub weight: u32,
    /// Seconds after a membership change during which a new owner asks a
    /// block's previous owner before object storage.
    #[arg(long, default_value_t = 600.0)]
    pub backup_period: f64,
    #[command(flatten)]
    pub tls: crate::cmd::group::GroupTlsArgs,
    #[command(flatten)]
    pub data: DataPathArgs,
    #[command(flatten)]
    pub storage_flags: StorageFlags,
}

pub fn run(a: Args) -> Result<()> {
    crate::cmd::group::check_group_name(&a.group)?;
    let tls = a.tls.load(true)?;
    let (meta, format) = open_volume(&a.meta_url, MetaConfig { read_only: true })?;
    let chunk_config = a.data.chunk_config(&format)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_name("tessera-io")
        .enable_all()
        .build()?;
    let metrics = Arc::new(Metrics::new());
    let store = Instrumented::wrap(
        tessera_object::open_store(&format.storage, &a.storage_flags.options())?,
        metrics.clone(),
        RateLimiter::from_mbps(a.data.upload_limit),
        RateLimiter::from_mbps(a.data.download_limit),
    );
    let chunks = ChunkStore::new(
        store,
        meta.clone(),
        rt.handle().clone(),
        chunk_config,
        metrics.clone(),
    )?;
    serve_metrics(&metrics, &a.data.metrics);
    let membership = join(
        &meta,
        &format,
        &chunks,
        &metrics,
        JoinSpec {
            name: &a.group,
            share: Some((&a.listen, a.weight)),
            backup_period: Duration::from_secs_f64(a.backup_period.max(0.0)),
            kind: "cache-server",
            tls,
        },
    )?;
    let addr = membership
        .server
        .as_ref()
        .map(|s| s.addr().to_string())
        .unwrap_or_default();
    println!(
        "cache server of group {} for volume {} listening on {addr}",
        a.group, format.name
    );
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot watch for SIGTERM")?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        Ok::<(), anyhow::Error>(())
    })?;
    info!("signal received, leaving the cache group");
    membership.leave();
    Ok(())
}
