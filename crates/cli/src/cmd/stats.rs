//! `tessera stats MOUNTPOINT`: a live view of a mount, one line a second,
//! computed from the differences between successive reads of `.stats`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use crate::common::{read_stats, tessera_mount_of};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The mountpoint (or any path inside the mount).
    pub mountpoint: PathBuf,
    /// Seconds between lines.
    #[arg(long, value_parser = crate::common::parse_seconds, default_value_t = 1.0)]
    pub interval: f64,
    /// Stop after this many lines (0: run until interrupted).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
}

type Sample = HashMap<String, f64>;

fn get(s: &Sample, k: &str) -> f64 {
    s.get(k).copied().unwrap_or(0.0)
}

/// Sum of every series of a metric (all label values).
fn total(s: &Sample, prefix: &str) -> f64 {
    s.iter()
        .filter(|(k, _)| *k == prefix || k.starts_with(&format!("{prefix}{{")))
        .map(|(_, v)| v)
        .sum()
}

fn tier_bytes(s: &Sample, tier: &str) -> f64 {
    get(
        s,
        &format!("tessera_tier_read_bytes_total{{tier=\"{tier}\"}}"),
    )
}

const HEADER: &str = "  time  | read MiB/s write MiB/s |  mem MiB/s disk MiB/s  obj MiB/s  hit% |   ops/s | get/s  put/s  get ms | upq  stage  buf MiB";

/// One line of the view from two samples `secs` apart.
fn line(prev: &Sample, cur: &Sample, secs: f64) -> String {
    let rate = |f: &dyn Fn(&Sample) -> f64| (f(cur) - f(prev)).max(0.0) / secs;
    let mib = 1048576.0;
    let mem = rate(&|s| tier_bytes(s, "memory"));
    let disk = rate(&|s| tier_bytes(s, "disk"));
    let obj = rate(&|s| tier_bytes(s, "object"));
    let served = mem + disk + obj;
    let hit = if served > 0.0 {
        format!("{:5.1}", 100.0 * (mem + disk) / served)
    } else {
        "    -".into()
    };
    let gets_key = "tessera_object_request_seconds_count{method=\"get\"}";
    let get_sum_key = "tessera_object_request_seconds_sum{method=\"get\"}";
    let gets = get(cur, gets_key) - get(prev, gets_key);
    let get_ms = if gets > 0.0 {
        format!(
            "{:6.1}",
            1000.0 * (get(cur, get_sum_key) - get(prev, get_sum_key)) / gets
        )
    } else {
        "     -".into()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() % 86400)
        .unwrap_or(0);
    format!(
        "{:02}:{:02}:{:02} | {:10.1} {:11.1} | {:10.1} {:9.1} {:10.1} {hit} | {:7.0} | {:5.0} {:6.0} {get_ms} | {:3.0} {:6.0} {:8.1}",
        now / 3600,
        now / 60 % 60,
        now % 60,
        rate(&|s| get(s, "tessera_fuse_read_bytes_total")) / mib,
        rate(&|s| get(s, "tessera_fuse_write_bytes_total")) / mib,
        mem / mib,
        disk / mib,
        obj / mib,
        rate(&|s| total(s, "tessera_ops_total")),
        gets / secs,
        rate(&|s| get(s, "tessera_object_request_seconds_count{method=\"put\"}")),
        get(cur, "tessera_upload_queue"),
        get(cur, "tessera_staging_blocks"),
        get(cur, "tessera_buffer_bytes") / mib,
    )
}

pub fn run(a: Args) -> Result<()> {
    let path = a
        .mountpoint
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", a.mountpoint.display()))?;
    let mount = tessera_mount_of(&path)
        .ok_or_else(|| anyhow!("{} is not inside a mounted Tessera volume", path.display()))?;
    if !(0.01..=86_400.0).contains(&a.interval) {
        return Err(anyhow!(
            "--interval {} is out of range: give seconds from 0.01 to 86400",
            a.interval
        ));
    }
    let mut prev = read_stats(&mount.mountpoint)?;
    let mut at = Instant::now();
    let mut printed = 0u64;
    loop {
        std::thread::sleep(Duration::from_secs_f64(a.interval));
        let cur = read_stats(&mount.mountpoint)?;
        let secs = at.elapsed().as_secs_f64();
        at = Instant::now();
        if printed % 20 == 0 {
            println!("{HEADER}");
        }
        println!("{}", line(&prev, &cur, secs));
        printed += 1;
        if a.count > 0 && printed >= a.count {
            return Ok(());
        }
        prev = cur;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_hit_ratio_come_from_differences() {
        let prev: Sample = [
            (
                "tessera_tier_read_bytes_total{tier=\"memory\"}".to_string(),
                0.0,
            ),
            (
                "tessera_tier_read_bytes_total{tier=\"object\"}".to_string(),
                0.0,
            ),
        ]
        .into();
        let cur: Sample = [
            (
                "tessera_tier_read_bytes_total{tier=\"memory\"}".to_string(),
                3.0 * 1048576.0,
            ),
            (
                "tessera_tier_read_bytes_total{tier=\"object\"}".to_string(),
                1048576.0,
            ),
            ("tessera_ops_total{op=\"read\"}".to_string(), 40.0),
        ]
        .into();
        let l = line(&prev, &cur, 2.0);
        assert!(l.contains(" 75.0 "), "hit ratio 75%: {l}");
        assert!(l.contains("      1.5 "), "memory 1.5 MiB/s: {l}");
        assert!(l.contains("     20 "), "20 ops/s: {l}");
    }
}
