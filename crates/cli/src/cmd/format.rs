//! `tessera format`: create a volume after checking its object storage.

use anyhow::{anyhow, Context, Result};
use tessera_meta::{Compression, Format, Meta, MetaConfig};

use crate::common::{new_uuid, parse_size, StorageFlags};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Metadata engine URL, e.g. sqlite:///var/lib/tessera/meta.db
    pub meta_url: String,
    /// Volume name (letters, digits, '-' and '_'; 3 to 63 characters).
    pub name: String,
    /// Object storage URL: file:///dir, s3://bucket[/prefix], oss://, gs://, azblob://
    #[arg(long)]
    pub storage: Option<String>,
    /// Block size; a bare number is KiB (default 4M).
    #[arg(long, default_value = "4M")]
    pub block_size: String,
    /// Block compression.
    #[arg(long, default_value = "none",
          value_parser = clap::builder::TypedValueParser::try_map(
              clap::builder::PossibleValuesParser::new(["none", "lz4", "zstd"]),
              |s| s.parse::<Compression>()))]
    pub compress: Compression,
    /// Days deleted files stay in the volume's trash (`MNT/.trash`,
    /// `tessera restore`); 0: deleted files' data is removed at once.
    #[arg(long, default_value_t = 0)]
    pub trash_days: u32,
    /// Capacity reported to df; a bare number is GiB (0 = unlimited).
    #[arg(long, default_value = "0")]
    pub capacity: String,
    /// Inode limit reported to df (0 = unlimited).
    #[arg(long, default_value_t = 0)]
    pub inodes: u64,
    /// Block layout version (2: sealed blocks with checksums). 1 only to
    /// compare against, or to test volumes made by older versions.
    #[arg(long, default_value_t = Format::VERSION, hide = true,
          value_parser = clap::value_parser!(u32).range(1..=Format::VERSION as i64))]
    pub layout_version: u32,
    /// Keep and enforce POSIX ACLs (setfacl/getfacl, default ACLs
    /// inherited by new files). Also turns them on for an existing volume
    /// (mounts take it when next mounted); it cannot be turned off.
    #[arg(long)]
    pub enable_acl: bool,
    /// Encrypt every block (AES-256-GCM, a data key per block) under the
    /// RSA private key in FILE (PEM; 2048 bits or more). With
    /// TESSERA_KEY_PASSPHRASE set (required for a protected key) the
    /// settings keep the key protected by it, and mounts need only the
    /// passphrase; otherwise mounts need --encrypt-key FILE. Fixed at
    /// format: keep the key, nothing reads the volume without it.
    #[arg(long, value_name = "FILE")]
    pub encrypt_key: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub storage_flags: StorageFlags,
}

/// Write, read back and delete a probe object, so that a bad bucket or
/// credentials fail before anything is written.
pub(crate) fn probe_storage(
    rt: &tokio::runtime::Runtime,
    store: &tessera_object::DynStore,
    name: &str,
) -> Result<()> {
    let key = format!("{name}/.tessera-probe");
    let body = bytes::Bytes::from_static(b"tessera storage probe");
    rt.block_on(async {
        store.put(&key, body.clone().into()).await?;
        let back = store.get(&key, None).await?;
        if back != body {
            return Err(anyhow!("object storage returned different bytes for {key}"));
        }
        store.delete(&key).await?;
        Ok(())
    })
    .map_err(|e: anyhow::Error| anyhow!("object storage {} is not usable: {e:#}", store.describe()))
}

/// A new volume must not share its bucket prefix with a volume already
/// there: block keys restart at slice 1 in every volume, so the new one
/// would write over the old one's objects.
fn refuse_another_volume_there(
    rt: &tokio::runtime::Runtime,
    store: &tessera_object::DynStore,
    name: &str,
) -> Result<()> {
    let key = format!("{name}/tessera.json");
    match rt.block_on(store.get(&key, None)) {
        Err(tessera_object::ObjectError::NotFound(_)) => Ok(()),
        Err(e) => Err(anyhow!("cannot check {key} in {}: {e}", store.describe())),
        Ok(raw) => {
            let uuid = serde_json::from_slice::<Format>(&raw)
                .map(|f| f.uuid)
                .unwrap_or_else(|_| "unknown".into());
            Err(anyhow!(
                "{} already holds a volume named {name:?} (uuid {uuid}, settings in {key}); a new volume there would overwrite its data: format under another name or in another storage, or remove that volume's objects first",
                store.describe()
            ))
        }
    }
}

fn valid_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

pub fn run(a: Args) -> Result<()> {
    if !valid_name(&a.name) {
        return Err(anyhow!(
            "invalid volume name {:?}: use 3 to 63 letters, digits, '-' or '_'",
            a.name
        ));
    }
    let compression = a.compress;
    if a.trash_days > 3650 {
        return Err(anyhow!(
            "--trash-days {} is out of range: give 0 (no trash) to 3650",
            a.trash_days
        ));
    }
    let block_size = crate::common::parse_size(&a.block_size, 1 << 10)?;
    if !(64 << 10..=16 << 20).contains(&block_size) || !block_size.is_power_of_two() {
        return Err(anyhow!(
            "invalid block size {}: use a power of two between 64K and 16M",
            a.block_size
        ));
    }
    let storage = match a.storage {
        Some(s) => s,
        None => {
            let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
            format!("file://{home}/.tessera/local")
        }
    };
    let options = a.storage_flags.options()?;
    let capacity = parse_size(&a.capacity, 1 << 30)?;
    let key = a
        .encrypt_key
        .as_deref()
        .map(crate::encryption::read_volume_key)
        .transpose()?;
    // The engine first: a refused format leaves no storage directory behind.
    let engine = tessera_meta::create_engine(&a.meta_url)
        .map_err(|e| anyhow!("cannot reach the metadata engine: {e}"))?;
    let meta = Meta::new(engine, MetaConfig::default());
    let existing = meta.load().ok();
    if let Some(dir) = storage.strip_prefix("file://") {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the storage directory {dir}"))?;
    }
    let store = tessera_object::open_store(&storage, &options)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    probe_storage(&rt, &store, &a.name)?;
    let uuid = match &existing {
        Some(f) => f.uuid.clone(),
        None => {
            refuse_another_volume_there(&rt, &store, &a.name)?;
            new_uuid()?
        }
    };
    let format = Format {
        name: a.name.clone(),
        uuid,
        storage: storage.clone(),
        block_size: block_size as u32,
        compression,
        trash_days: a.trash_days,
        capacity,
        inodes: a.inodes,
        version: a.layout_version,
        acl: a.enable_acl,
        upload_limit_kbps: 0,
        download_limit_kbps: 0,
        encryption: key
            .as_ref()
            .map(|k| crate::encryption::new_encryption(k, existing.as_ref()))
            .transpose()?,
        endpoint: options
            .endpoint
            .clone()
            .filter(|_| !storage.starts_with("file://")),
        region: options
            .region
            .clone()
            .filter(|_| !storage.starts_with("file://")),
        virtual_host_style: options.virtual_host_style,
    };
    let created = meta.init(&format)?;
    let settings = meta.format()?;
    let mirror = serde_json::to_vec_pretty(&settings)?;
    rt.block_on(store.put(
        &format!("{}/tessera.json", a.name),
        bytes::Bytes::from(mirror).into(),
    ))
    .map_err(|e| anyhow!("volume created, but mirroring its settings to the bucket failed: {e}"))?;
    if created {
        println!(
            "formatted volume {:?} (uuid {}) on {} with metadata in {}",
            settings.name,
            settings.uuid,
            store.describe(),
            crate::common::redact(&a.meta_url)
        );
    } else {
        println!(
            "volume {:?} already exists with these settings; nothing changed",
            settings.name
        );
    }
    Ok(())
}
