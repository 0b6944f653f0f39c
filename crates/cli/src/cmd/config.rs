//! `tessera config META_URL [--capacity ..] [--inodes ..] [--storage ..]
//! [--enable-acl]`: change what may change after format, refusing the rest
//! by name. With no change asked, prints the settings. Running mounts take
//! the new settings when next mounted.

use anyhow::{anyhow, Context, Result};
use tessera_meta::{Format, MetaConfig};

use crate::common::{human, open_volume, parse_size, redact, StorageFlags};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Metadata engine URL of the volume.
    pub meta_url: String,
    /// Capacity reported to df; a bare number is GiB (0 = unlimited).
    #[arg(long)]
    pub capacity: Option<String>,
    /// Inode limit (0 = unlimited).
    #[arg(long)]
    pub inodes: Option<u64>,
    /// Move the volume to another storage URL (another endpoint, bucket
    /// address or credentials scheme) that already holds its objects: the
    /// new place must hold the volume's settings object with its UUID.
    #[arg(long, value_name = "URL")]
    pub storage: Option<String>,
    /// With --storage: accept a place that does not hold the volume's
    /// objects (they were not copied there yet). Reads fail until they are.
    #[arg(long, requires = "storage")]
    pub force: bool,
    /// Turn on POSIX ACLs (once on, never off).
    #[arg(long)]
    pub enable_acl: bool,
    /// Upload limit every mount takes unless it gives its own, Mbit/s
    /// (0: none).
    #[arg(long, value_name = "MBPS")]
    pub upload_limit: Option<f64>,
    /// Download limit every mount takes unless it gives its own, Mbit/s
    /// (0: none).
    #[arg(long, value_name = "MBPS")]
    pub download_limit: Option<f64>,
    /// Days deleted files stay in the trash (0: removed at once).
    #[arg(long)]
    pub trash_days: Option<u32>,
    /// Fixed at format; refused with the reason.
    #[arg(long, hide = true)]
    pub block_size: Option<String>,
    /// Fixed at format; refused with the reason.
    #[arg(long, hide = true)]
    pub compress: Option<String>,
    /// Fixed at format; refused with the reason.
    #[arg(long, hide = true)]
    pub name: Option<String>,
    #[command(flatten)]
    pub storage_flags: StorageFlags,
}

fn show(f: &Format) {
    println!("volume      {}", f.name);
    println!("uuid        {}", f.uuid);
    println!("storage     {}", f.storage);
    if let Some(e) = &f.endpoint {
        println!("endpoint    {e}");
    }
    println!("block size  {} KiB", f.block_size >> 10);
    println!("compression {:?}", f.compression);
    let limit = |v: u64, s: String| if v == 0 { "unlimited".into() } else { s };
    println!("capacity    {}", limit(f.capacity, human(f.capacity)));
    println!("inodes      {}", limit(f.inodes, f.inodes.to_string()));
    println!("acl         {}", if f.acl { "enabled" } else { "disabled" });
    println!("trash days  {}", f.trash_days);
    let mbps = |kbps: u64| {
        if kbps == 0 {
            "none".to_string()
        } else {
            format!("{} Mbit/s", kbps as f64 / 1000.0)
        }
    };
    println!(
        "upload      {} (mounts' default limit)",
        mbps(f.upload_limit_kbps)
    );
    println!(
        "download    {} (mounts' default limit)",
        mbps(f.download_limit_kbps)
    );
}

/// What changed between two settings, one `field: old -> new` per line.
fn changes(old: &Format, new: &Format) -> Vec<String> {
    let mut out = Vec::new();
    let mut diff = |field: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{field}: {a} -> {b}"));
        }
    };
    diff(
        "capacity",
        old.capacity.to_string(),
        new.capacity.to_string(),
    );
    diff("inodes", old.inodes.to_string(), new.inodes.to_string());
    diff("storage", old.storage.clone(), new.storage.clone());
    diff(
        "endpoint",
        old.endpoint.clone().unwrap_or_default(),
        new.endpoint.clone().unwrap_or_default(),
    );
    diff("acl", old.acl.to_string(), new.acl.to_string());
    diff(
        "trash days",
        old.trash_days.to_string(),
        new.trash_days.to_string(),
    );
    diff(
        "upload limit kbit/s",
        old.upload_limit_kbps.to_string(),
        new.upload_limit_kbps.to_string(),
    );
    diff(
        "download limit kbit/s",
        old.download_limit_kbps.to_string(),
        new.download_limit_kbps.to_string(),
    );
    out
}

/// The new storage must work, and hold this volume (unless `force`).
fn check_new_storage(a: &Args, current: &Format, url: &str) -> Result<()> {
    let store = tessera_object::open_store(url, &a.storage_flags.options()?)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    crate::cmd::format::probe_storage(&rt, &store, &current.name)?;
    if a.force {
        return Ok(());
    }
    let key = format!("{}/tessera.json", current.name);
    let held = match rt.block_on(store.get(&key, None)) {
        Ok(raw) => serde_json::from_slice::<Format>(&raw).map(|f| f.uuid).ok(),
        Err(tessera_object::ObjectError::NotFound(_)) => None,
        Err(e) => return Err(anyhow!("cannot check {key} in {}: {e}", store.describe())),
    };
    match held {
        Some(uuid) if uuid == current.uuid => Ok(()),
        Some(uuid) => Err(anyhow!(
            "{} holds another volume named {:?} (uuid {uuid}, this one is {}): refusing to point this volume at it",
            store.describe(),
            current.name,
            current.uuid
        )),
        None => Err(anyhow!(
            "{} does not hold volume {:?} ({key} is missing): copy its objects there first, or give --force",
            store.describe(),
            current.name
        )),
    }
}

pub fn run(a: Args) -> Result<()> {
    for (flag, given, why) in [
        (
            "--block-size",
            a.block_size.is_some(),
            "stored blocks have the old size",
        ),
        (
            "--compress",
            a.compress.is_some(),
            "stored blocks are in the old encoding",
        ),
        (
            "--name",
            a.name.is_some(),
            "every block key starts with the name",
        ),
    ] {
        if given {
            return Err(anyhow!("{flag} cannot change after format: {why}"));
        }
    }
    if let Some(days) = a.trash_days.filter(|d| *d > 3650) {
        return Err(anyhow!(
            "--trash-days {days} is out of range: give 0 (no trash) to 3650"
        ));
    }
    for (flag, v) in [
        ("upload-limit", a.upload_limit),
        ("download-limit", a.download_limit),
    ] {
        if let Some(v) = v {
            crate::cmd::data_path::check_limit(flag, v)?;
        }
    }
    let capacity = a
        .capacity
        .as_deref()
        .map(|c| parse_size(c, 1 << 30).context("--capacity"))
        .transpose()?;
    let (meta, current) = open_volume(&a.meta_url, MetaConfig::default())?;
    let asked = capacity.is_some()
        || a.inodes.is_some()
        || a.storage.is_some()
        || a.enable_acl
        || a.trash_days.is_some()
        || a.upload_limit.is_some()
        || a.download_limit.is_some();
    if !asked {
        show(&current);
        return Ok(());
    }
    if let Some(url) = &a.storage {
        if *url != current.storage {
            check_new_storage(&a, &current, url)?;
        }
    }
    // A new place is reached with the endpoint and region it was checked with.
    let moved_to = match &a.storage {
        Some(_) => Some(a.storage_flags.options()?),
        None => None,
    };
    let (old, new) = meta.update_format(|f| {
        if let Some(c) = capacity {
            f.capacity = c;
        }
        if let Some(n) = a.inodes {
            f.inodes = n;
        }
        if let (Some(url), Some(options)) = (&a.storage, &moved_to) {
            let local = url.starts_with("file://");
            f.storage = url.clone();
            f.endpoint = options.endpoint.clone().filter(|_| !local);
            f.region = options.region.clone().filter(|_| !local);
            f.virtual_host_style = options.virtual_host_style;
        }
        if let Some(d) = a.trash_days {
            f.trash_days = d;
        }
        if let Some(v) = a.upload_limit {
            f.upload_limit_kbps = (v * 1000.0).round() as u64;
        }
        if let Some(v) = a.download_limit {
            f.download_limit_kbps = (v * 1000.0).round() as u64;
        }
        f.acl |= a.enable_acl;
        Ok(())
    })?;
    let changed = changes(&old, &new);
    if changed.is_empty() {
        println!("volume {:?}: nothing changed", new.name);
        return Ok(());
    }
    // Keep the settings mirror in the bucket current (disaster recovery
    // reads it); a failure is reported, the metadata already changed.
    let store = tessera_object::open_store(&new.storage, &a.storage_flags.options_for(&new)?)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mirror = serde_json::to_vec_pretty(&new)?;
    let key = format!("{}/tessera.json", new.name);
    if let Err(e) = rt.block_on(store.put(&key, bytes::Bytes::from(mirror).into())) {
        eprintln!(
            "warning: settings changed, but updating {key} in {} failed: {e}",
            store.describe()
        );
    }
    println!(
        "volume {:?} in {}: {} (running mounts take it when next mounted)",
        new.name,
        redact(&a.meta_url),
        changed.join(", ")
    );
    Ok(())
}
