//! `tessera cache-group status META_URL NAME`: the members of a cache
//! group as the metadata engine knows them — address, kind, weight, cache
//! usage, hit ratio, bytes served and health.

use anyhow::Result;
use tessera_meta::MetaConfig;

use crate::common::{human, open_volume};

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// List a group's members with their usage, hit ratio and health.
    Status(StatusArgs),
    /// Fetch every block of a file from its owner, then from object
    /// storage, and compare throughput and CPU (no FUSE, no caching here).
    Bench(Box<BenchArgs>),
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Metadata engine URL of the volume.
    pub meta_url: String,
    /// The cache group.
    pub name: String,
    /// A file in the volume (path from the volume root).
    pub path: String,
    /// Blocks in flight at once.
    #[arg(long, default_value_t = 16)]
    pub threads: usize,
    /// Skip the object storage pass.
    #[arg(long)]
    pub group_only: bool,
    #[command(flatten)]
    pub tls: crate::cmd::group::GroupTlsArgs,
    #[command(flatten)]
    pub storage_flags: crate::common::StorageFlags,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Metadata engine URL of the volume.
    pub meta_url: String,
    /// The cache group.
    pub name: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// A member whose record is older than this is shown as gone.
const LIVE_MS: i64 = 5_000;

pub fn run(c: Command) -> Result<()> {
    match c {
        Command::Status(a) => status(a),
        Command::Bench(a) => bench(*a),
    }
}

/// CPU seconds this process has used (user + system).
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the zeroed struct.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn bench(a: BenchArgs) -> Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    crate::cmd::group::check_group_name(&a.name)?;
    let (meta, format) = open_volume(&a.meta_url, MetaConfig { read_only: true })?;
    let (ino, attr) = meta
        .resolve(&a.path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.path))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()?;
    let metrics = Arc::new(tessera_metrics::Metrics::new());
    let store =
        tessera_object::open_store(&format.storage, &a.storage_flags.options_for(&format)?)?;
    let config = tessera_chunk::ChunkConfig {
        volume: format.name.clone(),
        uuid: format.uuid.clone(),
        sealed_objects: format.sealed_blocks(),
        block_size: format.block_size as usize,
        compression: format.compression,
        mem_cache_size: 0,
        cipher: crate::encryption::volume_cipher(&format, None)?,
        ..Default::default()
    };
    let chunks = tessera_chunk::ChunkStore::new(
        store,
        meta.clone(),
        rt.handle().clone(),
        config,
        metrics.clone(),
    )?;
    let group = tessera_cachegroup::Group::join(
        meta.clone(),
        tessera_cachegroup::GroupConfig {
            name: a.name.clone(),
            volume_uuid: format.uuid.clone(),
            member: None,
            heartbeat: std::time::Duration::from_secs(1),
            member_timeout: std::time::Duration::from_secs(5),
            backup_period: std::time::Duration::ZERO,
            timeouts: Default::default(),
            tls: a.tls.load(false)?,
        },
        Box::new(|| (0, 0)),
        metrics,
    )?;
    let blocks = chunks.file_blocks(ino, attr.length)?;
    let total: u64 = blocks.iter().map(|b| b.1).sum();
    let pass = |from_group: bool| -> Result<(f64, f64)> {
        let done = AtomicU64::new(0);
        let failed = AtomicU64::new(0);
        let (t0, c0) = (std::time::Instant::now(), cpu_seconds());
        tessera_chunk::par::par_for_each(&blocks, a.threads, |(key, len)| {
            let got = if from_group {
                group.owner(key).and_then(|o| {
                    match group
                        .peers
                        .request(&o.addr, tessera_cachegroup::Op::Get, key, *len)
                    {
                        Ok(tessera_cachegroup::Answer::Data(b)) => Some(b.len() as u64),
                        _ => None,
                    }
                })
            } else {
                rt.block_on(chunks.fetch_uncached(key, *len))
                    .ok()
                    .map(|b| b.len() as u64)
            };
            match got {
                Some(n) => done.fetch_add(n, Ordering::Relaxed),
                None => failed.fetch_add(1, Ordering::Relaxed),
            };
        });
        let (secs, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - c0);
        let failed = failed.load(Ordering::Relaxed);
        if failed > 0 {
            anyhow::bail!("{failed} blocks could not be fetched");
        }
        let gb = done.load(Ordering::Relaxed) as f64 / 1e9;
        Ok((gb / secs, cpu / gb))
    };
    let members = group.members().len();
    let (group_rate, group_cpu) = pass(true)?;
    println!(
        "group {}: {} blocks ({}) from {members} members: {group_rate:.2} GB/s, client CPU {group_cpu:.3} s per GB",
        a.name,
        blocks.len(),
        human(total)
    );
    if !a.group_only {
        let (object_rate, object_cpu) = pass(false)?;
        println!(
            "object storage: {object_rate:.2} GB/s, client CPU {object_cpu:.3} s per GB; group / object = {:.2}",
            group_rate / object_rate
        );
    }
    group.leave();
    Ok(())
}

fn status(a: StatusArgs) -> Result<()> {
    crate::cmd::group::check_group_name(&a.name)?;
    let (meta, _) = open_volume(&a.meta_url, MetaConfig { read_only: true })?;
    let members = meta.group_members(&a.name)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let state = |m: &tessera_meta::MemberRecord| {
        if now - m.heartbeat_ms > LIVE_MS {
            "gone"
        } else if m.weight == 0 && m.cache_bytes == 0 {
            "drained"
        } else if m.weight == 0 {
            "draining"
        } else {
            "live"
        }
    };
    if a.json {
        let rows: Vec<serde_json::Value> = members
            .iter()
            .map(|m| {
                let mut v = serde_json::to_value(m).unwrap_or_default();
                v["state"] = state(m).into();
                v["heartbeat_age_ms"] = (now - m.heartbeat_ms).into();
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if members.is_empty() {
        println!("cache group {}: no members", a.name);
        return Ok(());
    }
    println!(
        "{:<22} {:<12} {:>6} {:>22} {:>6} {:>10} {:>10} {:>9} STATE",
        "MEMBER", "KIND", "WEIGHT", "CACHE", "HIT%", "HITS", "MISSES", "SERVED"
    );
    for m in &members {
        let asked = m.hits + m.misses;
        let ratio = if asked == 0 {
            "-".to_string()
        } else {
            format!("{:.1}", m.hits as f64 * 100.0 / asked as f64)
        };
        println!(
            "{:<22} {:<12} {:>6} {:>22} {:>6} {:>10} {:>10} {:>9} {} ({:.1}s ago)",
            m.addr,
            m.kind,
            m.weight,
            format!("{} / {}", human(m.cache_bytes), human(m.cache_capacity)),
            ratio,
            m.hits,
            m.misses,
            human(m.bytes_served),
            state(m),
            (now - m.heartbeat_ms) as f64 / 1000.0
        );
    }
    Ok(())
}
