//! `tessera cache-server META_URL --cache-group NAME --group-listen ADDR:PORT`: a
//! dedicated member of a cache group. It mounts nothing; it serves the
//! blocks it owns from its disk and memory caches, fetching each from
//! object storage the first time a peer asks.

use anyhow::{Context, Result};
use tessera_meta::MetaConfig;
use tracing::info;

use tessera_chunk::membership::{join, JoinSpec};
use tessera_chunk::DataPath;

use crate::cmd::data_path::DataPathArgs;
use crate::common::{open_volume, StorageFlags};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Metadata engine URL of the volume whose blocks are served.
    pub meta_url: String,
    /// The cache group to serve (spelled as on `mount`; `--group` also
    /// works).
    #[arg(long = "cache-group", alias = "group")]
    pub group: String,
    /// Address to listen on and to be reached at, IP:PORT (`--listen` also
    /// works).
    #[arg(long = "group-listen", alias = "listen")]
    pub listen: String,
    /// Share of the blocks relative to the other members (0 drains this
    /// member: it hands its blocks to their new owners; `--weight` also
    /// works).
    #[arg(long = "group-weight", alias = "weight", default_value_t = 1)]
    pub weight: u32,
    /// Seconds after a membership change during which a new owner asks a
    /// block's previous owner before object storage.
    #[arg(long, value_parser = crate::common::parse_seconds, default_value_t = 600.0)]
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
    let data = DataPath::open(&meta, &format, a.data.options(&a.storage_flags, &format)?)?;
    let membership = join(
        &meta,
        &format,
        &data.chunks,
        &data.metrics,
        JoinSpec {
            name: &a.group,
            share: Some((&a.listen, a.weight)),
            backup_period: crate::common::seconds_in(
                "--backup-period",
                a.backup_period,
                0.0,
                crate::common::MAX_FLAG_SECONDS,
            )?,
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
    data.runtime.block_on(async {
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
