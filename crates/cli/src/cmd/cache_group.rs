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
    }
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
