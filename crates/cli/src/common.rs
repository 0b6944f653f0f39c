//! Helpers shared by subcommands: logging, storage flags, opening a volume,
//! size parsing and mount-table lookups.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use tessera_meta::{Format, Meta, MetaConfig, MetaError};
use tessera_object::StorageOptions;

pub fn init_logging(debug: bool) {
    let filter = std::env::var("TESSERA_LOG").unwrap_or_else(|_| {
        if debug {
            "debug,fuser=info"
        } else {
            "info,fuser=warn,opendal=warn"
        }
        .to_string()
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Storage connection flags; unset ones fall back to the AWS environment.
#[derive(clap::Args, Debug, Clone)]
pub struct StorageFlags {
    /// Object store endpoint, e.g. http://127.0.0.1:9000 [env: AWS_ENDPOINT_URL]
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Region [env: AWS_REGION]
    #[arg(long)]
    pub region: Option<String>,
    /// Access key [env: AWS_ACCESS_KEY_ID]
    #[arg(long)]
    pub access_key: Option<String>,
    /// Secret key [env: AWS_SECRET_ACCESS_KEY]
    #[arg(long)]
    pub secret_key: Option<String>,
    /// Use virtual-host style bucket addressing instead of path style.
    #[arg(long)]
    pub virtual_host_style: bool,
    /// Seconds one attempt of an object request may go without progress
    /// before it is cut and retried; a whole request (retries included)
    /// fails after six times this plus a second per MiB.
    #[arg(long, value_parser = crate::common::parse_seconds, default_value_t = 10.0)]
    pub io_timeout: f64,
}

impl StorageFlags {
    /// The connection options, the flags' numbers checked.
    pub fn options(&self) -> Result<StorageOptions> {
        Ok(StorageOptions {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            access_key: self.access_key.clone(),
            secret_key: self.secret_key.clone(),
            virtual_host_style: self.virtual_host_style,
            timeout: Some(seconds_in("--io-timeout", self.io_timeout, 0.1, 3600.0)?),
        }
        .or(StorageOptions::from_env()))
    }

    /// The connection options for a volume's own store: flags, then the
    /// environment, then the endpoint and region it was formatted with.
    pub fn options_for(&self, format: &Format) -> Result<StorageOptions> {
        Ok(self.options()?.or(StorageOptions {
            endpoint: format.endpoint.clone(),
            region: format.region.clone(),
            access_key: None,
            secret_key: None,
            virtual_host_style: format.virtual_host_style,
            timeout: None,
        }))
    }
}

/// Open the metadata engine of a URL and load the volume settings, with
/// messages that say what to do.
pub fn open_volume(meta_url: &str, config: MetaConfig) -> Result<(Arc<Meta>, Format)> {
    let not_formatted = || {
        anyhow!(
            "no volume is formatted at {}: run `tessera format {} NAME --storage URL` first",
            redact(meta_url),
            meta_url
        )
    };
    let engine = match tessera_meta::open_engine(meta_url) {
        Ok(e) => e,
        Err(MetaError::NotFormatted) => return Err(not_formatted()),
        Err(e) => return Err(anyhow!("cannot reach the metadata engine: {e}")),
    };
    let meta = Arc::new(Meta::new(engine, config));
    match meta.load() {
        Ok(f) => Ok((meta, f)),
        Err(MetaError::NotFormatted) => Err(not_formatted()),
        Err(e) => Err(anyhow!(
            "cannot load the volume settings from {}: {e}",
            redact(meta_url)
        )),
    }
}

pub use tessera_meta::engines::redact;

/// Parse a size with an optional unit (K, M, G, T, with or without "iB");
/// a bare number is taken in `bare_unit` bytes.
pub fn parse_size(s: &str, bare_unit: u64) -> Result<u64> {
    let t = s.trim();
    let digits = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: f64 = num.parse().map_err(|_| {
        anyhow!("invalid size {s:?}: expected a number with an optional unit, like 512M or 4G")
    })?;
    let mult = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" if unit.trim().is_empty() => bare_unit,
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        "P" => 1 << 50,
        other => {
            return Err(anyhow!(
                "invalid size {s:?}: unknown unit {other:?} (use K, M, G, T)"
            ))
        }
    };
    Ok((n * mult as f64) as u64)
}

/// Print the first 20 failures (and how many more), and turn them into the
/// command's error: `{count} {what}`.
pub fn report_failures(failures: &[String], what: &str) -> Result<()> {
    if failures.is_empty() {
        return Ok(());
    }
    for f in failures.iter().take(20) {
        eprintln!("  failed: {f}");
    }
    if failures.len() > 20 {
        eprintln!("  ... and {} more", failures.len() - 20);
    }
    Err(anyhow!("{} {what}", failures.len()))
}

/// A byte count for people: `512 B`, `3.2 MiB`, `1.00 GiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    let digits = if v < 10.0 { 2 } else { 1 };
    format!("{v:.digits$} {}", UNITS[unit])
}

/// Parse a duration flag, the one parser every duration flag uses: a
/// number of seconds, fractions allowed, optionally with a unit s, m, h or
/// d (`1.5`, `90s`, `30m`, `24h`, `7d`). Range checks are the flag's
/// ([`seconds_in`]).
pub fn parse_seconds(s: &str) -> std::result::Result<f64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 's')) => (&t[..i], 1.0),
        Some((i, 'm')) => (&t[..i], 60.0),
        Some((i, 'h')) => (&t[..i], 3600.0),
        Some((i, 'd')) => (&t[..i], 86_400.0),
        _ => (t, 1.0),
    };
    match num.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 => Ok(n * mult),
        _ => Err(format!(
            "invalid duration {s:?}: give seconds, or a number with s, m, h or d (like 1.5, 90s, 30m, 24h)"
        )),
    }
}

/// A duration flag given as text (see [`parse_seconds`]).
pub fn parse_duration(s: &str) -> Result<std::time::Duration> {
    let secs = parse_seconds(s).map_err(|e| anyhow!(e))?;
    std::time::Duration::try_from_secs_f64(secs).map_err(|e| anyhow!("duration {s:?}: {e}"))
}

/// The seconds a flag was given, checked: NaN, infinities and values
/// outside `min..=max` are refused with the flag named (a huge value would
/// overflow a `Duration`; a negative one is no time at all).
pub fn seconds_in(flag: &str, v: f64, min: f64, max: f64) -> Result<std::time::Duration> {
    if !v.is_finite() || v < min || v > max {
        return Err(anyhow!(
            "{flag} {} is out of range: give a number of seconds from {min} to {max}",
            shown(v)
        ));
    }
    Ok(std::time::Duration::from_secs_f64(v))
}

/// A number as a message shows it: plainly, or in exponent form when it
/// is huge or tiny (`1e-300`, not three hundred zeros).
pub fn shown(v: f64) -> String {
    if v != 0.0 && v.is_finite() && !(1e-4..1e12).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// Longest time a cache or period flag takes: 30 days.
pub const MAX_FLAG_SECONDS: f64 = 30.0 * 86_400.0;

/// One line of /proc/self/mountinfo that matters here.
#[derive(Debug, Clone)]
pub struct MountEntry {
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

pub fn mounts() -> Vec<MountEntry> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mountpoint = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?;
            let source = r.next().unwrap_or("");
            Some(MountEntry {
                mountpoint: PathBuf::from(unescape(mountpoint)),
                fstype: fstype.to_string(),
                source: unescape(source),
            })
        })
        .collect()
}

pub fn is_mounted(path: &Path) -> bool {
    let Ok(canon) = path.canonicalize() else {
        return false;
    };
    mounts().iter().any(|m| m.mountpoint == canon)
}

/// Whether a mount-table line is a Tessera volume: a FUSE mount (typed
/// `fuse.tessera`, or plain `fuse` when mounted without the helper) whose
/// source is a metadata URL.
pub fn is_tessera_mount(m: &MountEntry) -> bool {
    (m.fstype == "fuse" || m.fstype == "fuse.tessera") && m.source.contains("://")
}

/// The Tessera mount that holds `path` (already canonical), if any.
pub fn tessera_mount_of(path: &Path) -> Option<MountEntry> {
    mounts()
        .into_iter()
        .filter(|m| is_tessera_mount(m) && path.starts_with(&m.mountpoint))
        .max_by_key(|m| m.mountpoint.as_os_str().len())
}

/// The metrics of a mount, read from its `.stats` file.
pub fn read_stats(mountpoint: &Path) -> Result<std::collections::HashMap<String, f64>> {
    let text = std::fs::read_to_string(mountpoint.join(".stats"))
        .with_context(|| format!("cannot read {}/.stats", mountpoint.display()))?;
    Ok(tessera_metrics::parse(&text).into_iter().collect())
}

/// A random UUID (version 4) from the kernel's random source.
pub fn new_uuid() -> Result<String> {
    let mut b = [0u8; 16];
    let mut f = std::fs::File::open("/dev/urandom").context("open /dev/urandom")?;
    std::io::Read::read_exact(&mut f, &mut b).context("read /dev/urandom")?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_units_and_bare_numbers() {
        assert_eq!(parse_size("512M", 1 << 20).expect("M"), 512 << 20);
        assert_eq!(parse_size("4GiB", 1 << 20).expect("GiB"), 4 << 30);
        assert_eq!(parse_size("100", 1 << 20).expect("bare"), 100 << 20);
        assert_eq!(parse_size("4096", 1 << 10).expect("bare KiB"), 4 << 20);
        assert!(parse_size("12X", 1)
            .expect_err("unit")
            .to_string()
            .contains("unknown unit"));
        assert!(parse_size("abc", 1).is_err());
    }

    #[test]
    fn out_of_range_numbers_are_shown_short() {
        assert_eq!(shown(1e-300), "1e-300");
        assert_eq!(shown(1e20), "1e20");
        assert_eq!(shown(2.5), "2.5");
        assert_eq!(shown(0.0), "0");
        let e = seconds_in("--heartbeat", 1e20, 0.1, 3600.0).expect_err("huge");
        assert_eq!(
            e.to_string(),
            "--heartbeat 1e20 is out of range: give a number of seconds from 0.1 to 3600"
        );
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("90").expect("bare").as_secs(), 90);
        assert_eq!(parse_duration("30m").expect("m").as_secs(), 1800);
        assert_eq!(parse_duration("7d").expect("d").as_secs(), 604_800);
        assert!(parse_duration("soon")
            .expect_err("word")
            .to_string()
            .contains("invalid duration \"soon\""));
        // Every duration flag takes the same forms.
        assert_eq!(parse_seconds("1.5"), Ok(1.5));
        assert_eq!(parse_seconds("0.5s"), Ok(0.5));
        assert_eq!(parse_seconds("2m"), Ok(120.0));
        assert_eq!(parse_duration("1.5h").expect("fraction").as_secs(), 5400);
        for bad in ["-1", "NaN", "inf", "1e400", "", "m"] {
            assert!(parse_seconds(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("redis://u:secret@h:6379/1"),
            "redis://u:****@h:6379/1"
        );
        assert_eq!(redact("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
    }
}
