//! `tessera status`: volume settings, live sessions and usage.

use anyhow::Result;
use tessera_meta::MetaConfig;

#[derive(clap::Args, Debug)]
pub struct Args {
    pub meta_url: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let (meta, format) = crate::common::open_volume(&a.meta_url, MetaConfig::default())?;
    let sessions = meta.list_sessions()?;
    let usage = meta.statfs()?;
    let used = usage.total_space - usage.avail_space;
    if a.json {
        let mut shown = format.clone();
        if let Some(pem) = shown.encryption.as_mut().and_then(|e| e.key_pem.as_mut()) {
            *pem = "(kept, protected by its passphrase)".into();
        }
        let v = serde_json::json!({
            "setting": shown,
            "backup": meta.backup_state()?,
            "sessions": sessions,
            "usage": { "used_bytes": used, "inodes": usage.used_inodes },
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("volume      {}", format.name);
    println!("uuid        {}", format.uuid);
    println!("storage     {}", format.storage);
    if let Some(e) = &format.endpoint {
        println!("endpoint    {e}");
    }
    println!("block size  {} KiB", format.block_size >> 10);
    println!("compression {:?}", format.compression);
    match &format.encryption {
        Some(e) => println!(
            "encryption  {} with RSA key {} ({})",
            e.algorithm,
            e.key_fingerprint,
            if e.key_pem.is_some() {
                "kept in the settings, protected by its passphrase"
            } else {
                "mounts need --encrypt-key"
            }
        ),
        None => println!("encryption  none"),
    }
    println!(
        "acl         {}",
        if format.acl { "enabled" } else { "disabled" }
    );
    if format.trash_days > 0 {
        println!(
            "trash       {} days (MNT/.trash; tessera restore)",
            format.trash_days
        );
    } else {
        println!("trash       none (deleted files' data is removed at once)");
    }
    println!("used        {} bytes in {} inodes", used, usage.used_inodes);
    let backup = meta.backup_state()?;
    let now = tessera_meta::now().0;
    if backup.last_at > 0 {
        println!(
            "meta backup {} ({} bytes, {} keys, {}s ago)",
            backup.object,
            backup.bytes,
            backup.keys,
            now - backup.last_at
        );
    } else {
        println!("meta backup none yet (mounts write one every --backup-meta, 1h by default)");
    }
    println!("sessions    {}", sessions.len());
    for s in sessions {
        println!(
            "  #{} {}:{} pid {} version {} (heartbeat {}s ago)",
            s.sid,
            s.host,
            s.mountpoint,
            s.pid,
            s.version,
            now - s.heartbeat
        );
    }
    Ok(())
}
