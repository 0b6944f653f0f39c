//! `tessera quota set|get|list|delete|check META_URL [PATH]`: directory
//! quotas (the engine's side is `tessera_meta::Meta::set_quota` and
//! friends). PATH is a directory of the volume, from its root. Mounts pick
//! a change up within a second.

use anyhow::{anyhow, bail, Context, Result};
use tessera_meta::{Ino, Meta, MetaConfig, MetaError, Quota};

use crate::common::{human, open_volume, parse_size};

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Set or change a directory's limits (a new quota counts what the
    /// directory holds now).
    Set(SetArgs),
    /// Show one directory's quota.
    Get(PathArgs),
    /// Show every quota of the volume.
    List(ListArgs),
    /// Remove a directory's quota.
    Delete(PathArgs),
    /// Recount the usage of every quota (or PATH's); --repair stores the
    /// counts that differ.
    Check(CheckArgs),
}

#[derive(clap::Args, Debug)]
pub struct SetArgs {
    /// Metadata engine URL of the volume.
    pub meta_url: String,
    /// A directory of the volume, from its root (`/team-a`).
    pub path: String,
    /// Most bytes under the directory; a bare number is GiB (0: no limit).
    #[arg(long, allow_hyphen_values = true)]
    pub capacity: Option<String>,
    /// Most files and directories under it (0: no limit).
    #[arg(long, allow_hyphen_values = true)]
    pub inodes: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct PathArgs {
    /// Metadata engine URL of the volume.
    pub meta_url: String,
    /// A directory of the volume, from its root.
    pub path: String,
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// Metadata engine URL of the volume.
    pub meta_url: String,
}

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Metadata engine URL of the volume.
    pub meta_url: String,
    /// Only this directory's quota.
    pub path: Option<String>,
    /// Store the recounted usage where it differs.
    #[arg(long)]
    pub repair: bool,
}

pub fn run(c: Command) -> Result<()> {
    match c {
        Command::Set(a) => set(a),
        Command::Get(a) => {
            let (meta, ino) = open_dir(&a.meta_url, &a.path)?;
            let q = meta
                .get_quota(ino)?
                .ok_or_else(|| anyhow!("{} has no quota", a.path))?;
            print_table(&[(a.path, q)]);
            Ok(())
        }
        Command::List(a) => {
            let (meta, _) = open_volume(&a.meta_url, MetaConfig::default())?;
            let quotas = meta.list_quotas()?;
            if quotas.is_empty() {
                println!("no quotas");
                return Ok(());
            }
            let rows: Vec<(String, Quota)> = quotas
                .into_iter()
                .map(|(ino, q)| (shown_path(&meta, ino), q))
                .collect();
            print_table(&rows);
            Ok(())
        }
        Command::Delete(a) => {
            let (meta, ino) = open_dir(&a.meta_url, &a.path)?;
            if !meta.delete_quota(ino)? {
                bail!("{} has no quota", a.path);
            }
            println!("removed the quota of {}", a.path);
            Ok(())
        }
        Command::Check(a) => check(a),
    }
}

fn set(a: SetArgs) -> Result<()> {
    if a.capacity.is_none() && a.inodes.is_none() {
        bail!("give --capacity or --inodes (or both)");
    }
    let capacity = a
        .capacity
        .as_deref()
        .map(|s| {
            if s.trim_start().starts_with('-') {
                bail!("--capacity {s}: a size cannot be negative");
            }
            parse_size(s, 1 << 30).with_context(|| format!("--capacity {s}"))
        })
        .transpose()?;
    let inodes = a
        .inodes
        .as_deref()
        .map(|s| {
            s.trim()
                .parse::<u64>()
                .map_err(|_| anyhow!("--inodes {s}: expected a whole number, 0 or more"))
        })
        .transpose()?;
    let (meta, ino) = open_dir(&a.meta_url, &a.path)?;
    let q = meta.set_quota(ino, capacity, inodes)?;
    print_table(&[(a.path, q)]);
    Ok(())
}

fn check(a: CheckArgs) -> Result<()> {
    let (meta, only) = match &a.path {
        Some(p) => {
            let (meta, ino) = open_dir(&a.meta_url, p)?;
            (meta, Some(ino))
        }
        None => (open_volume(&a.meta_url, MetaConfig::default())?.0, None),
    };
    let checks = meta.check_quotas(only, a.repair)?;
    let mut wrong = 0;
    for c in &checks {
        let path = shown_path(&meta, c.ino);
        if c.consistent() {
            println!(
                "{path}: ok ({} in {} inodes)",
                human(c.counted.0.max(0) as u64),
                c.counted.1
            );
            continue;
        }
        wrong += 1;
        println!(
            "{path}: recorded {} bytes in {} inodes, counted {} bytes in {} inodes{}",
            c.stored.used_space,
            c.stored.used_inodes,
            c.counted.0,
            c.counted.1,
            if c.repaired { " (repaired)" } else { "" }
        );
    }
    if checks.is_empty() {
        println!("no quotas");
    }
    if wrong > 0 && !a.repair {
        bail!("{wrong} quota(s) have a wrong usage; run with --repair to fix");
    }
    Ok(())
}

/// Open the volume and resolve PATH to a directory.
fn open_dir(meta_url: &str, path: &str) -> Result<(std::sync::Arc<Meta>, Ino)> {
    let (meta, _) = open_volume(meta_url, MetaConfig::default())?;
    let (ino, attr) = meta.resolve(path).map_err(|e| match e {
        MetaError::NotFound => anyhow!("{path}: no such directory in the volume"),
        MetaError::NotDir => anyhow!("{path}: a part of the path is not a directory"),
        e => anyhow!("{path}: {e}"),
    })?;
    if attr.typ != tessera_meta::FileType::Dir {
        bail!("{path} is not a directory: quotas apply to directories");
    }
    Ok((meta, ino))
}

fn shown_path(meta: &Meta, ino: Ino) -> String {
    meta.path_of(ino)
        .unwrap_or_else(|_| format!("(inode {ino}, no longer in the tree)"))
}

fn print_table(rows: &[(String, Quota)]) {
    println!(
        "{:<30} {:>10} {:>10} {:>5} {:>10} {:>10} {:>5}",
        "PATH", "CAPACITY", "USED", "USE%", "INODES", "IUSED", "IUSE%"
    );
    let pct = |used: i64, limit: u64| {
        if limit == 0 {
            "-".to_string()
        } else {
            format!("{}%", (used.max(0) as u128 * 100 / limit as u128))
        }
    };
    for (path, q) in rows {
        let cap = if q.capacity == 0 {
            "unlimited".into()
        } else {
            human(q.capacity)
        };
        let inodes = if q.inodes == 0 {
            "unlimited".into()
        } else {
            q.inodes.to_string()
        };
        println!(
            "{:<30} {:>10} {:>10} {:>5} {:>10} {:>10} {:>5}",
            path,
            cap,
            human(q.used_space.max(0) as u64),
            pct(q.used_space, q.capacity),
            inodes,
            q.used_inodes,
            pct(q.used_inodes, q.inodes)
        );
    }
}
