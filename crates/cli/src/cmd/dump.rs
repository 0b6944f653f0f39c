//! `tessera dump` and `tessera load`: a volume's metadata as JSON Lines, to
//! back it up or to move it to another metadata engine.

use std::io::{BufRead, BufReader, BufWriter};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};

use crate::common::{redact, StorageFlags};

#[derive(clap::Args, Debug)]
pub struct DumpArgs {
    /// Metadata engine URL of the volume.
    pub meta_url: String,
    /// File to write, or - for standard output.
    pub file: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// Metadata engine URL to load into; it must hold no volume yet.
    pub meta_url: String,
    /// Dump file to read, or - for standard input (a zstd-compressed dump,
    /// as the mounts' backups are, is read as it is).
    #[arg(
        required_unless_present = "from_bucket",
        conflicts_with = "from_bucket"
    )]
    pub file: Option<PathBuf>,
    /// Read a metadata backup of the volume from its bucket instead: the
    /// storage URL the volume was formatted with (needs --volume).
    #[arg(long, value_name = "STORAGE_URL", requires = "volume")]
    pub from_bucket: Option<String>,
    /// The volume whose backups to read, by name.
    #[arg(long, requires = "from_bucket")]
    pub volume: Option<String>,
    /// Which backup: its time stamp (20261130-235959) or object name;
    /// the newest when not given.
    #[arg(long, requires = "from_bucket")]
    pub backup: Option<String>,
    /// The RSA key of an encrypted volume, if its settings keep none (a
    /// kept key opens with TESSERA_KEY_PASSPHRASE).
    #[arg(long, value_name = "FILE", requires = "from_bucket")]
    pub encrypt_key: Option<PathBuf>,
    #[command(flatten)]
    pub storage_flags: StorageFlags,
}

/// The engine of a URL; `create` for `load`, which may start a new SQLite
/// database.
fn engine(url: &str, create: bool) -> Result<std::sync::Arc<dyn tessera_meta::KvEngine>> {
    let opened = if create {
        tessera_meta::create_engine(url)
    } else {
        tessera_meta::open_engine(url)
    };
    opened.map_err(|e| match e {
        tessera_meta::MetaError::NotFormatted => {
            anyhow!("no volume is formatted at {}", redact(url))
        }
        e => anyhow!("cannot reach the metadata engine: {e}"),
    })
}

fn report(done: &str, stats: &tessera_meta::dump::DumpStats, start: Instant) {
    eprintln!(
        "{done} {} inodes, {} entries, {} chunks ({} keys) in {:.1}s",
        stats.inodes,
        stats.entries,
        stats.chunks,
        stats.keys,
        start.elapsed().as_secs_f64()
    );
}

pub fn dump(a: DumpArgs) -> Result<()> {
    let engine = engine(&a.meta_url, false)?;
    let start = Instant::now();
    let stats = if a.file.as_os_str() == "-" {
        let stdout = std::io::stdout();
        tessera_meta::dump::dump(engine.as_ref(), &mut BufWriter::new(stdout.lock()))
    } else {
        let file = std::fs::File::create(&a.file)
            .with_context(|| format!("cannot create {}", a.file.display()))?;
        tessera_meta::dump::dump(engine.as_ref(), &mut BufWriter::new(file))
    }
    .map_err(|e| match e {
        tessera_meta::MetaError::NotFormatted => {
            anyhow!("no volume is formatted at {}", redact(&a.meta_url))
        }
        e => anyhow!("dump of {} failed: {e}", redact(&a.meta_url)),
    })?;
    report("dumped", &stats, start);
    Ok(())
}

/// zstd frames start with these bytes.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// A dump as lines, decompressed when it is zstd.
fn dump_reader<'a>(mut input: Box<dyn BufRead + 'a>) -> Result<Box<dyn BufRead + 'a>> {
    let compressed = input.fill_buf()?.starts_with(&ZSTD_MAGIC);
    if compressed {
        let decoder = zstd::stream::read::Decoder::with_buffer(input)
            .context("cannot start decompressing the dump")?;
        Ok(Box::new(BufReader::new(decoder)))
    } else {
        Ok(input)
    }
}

/// The bytes of a metadata backup in a volume's bucket: the one named, or
/// the newest.
fn backup_from_bucket(a: &LoadArgs, storage: &str, volume: &str) -> Result<bytes::Bytes> {
    use tessera_meta::backup::{backup_object, backup_time, parse_utc_stamp, BACKUP_DIR};
    let store = tessera_object::open_store(storage, &a.storage_flags.options()?)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let key = match a.backup.as_deref() {
        Some(named) => {
            let stamp = named
                .rsplit('/')
                .next()
                .unwrap_or(named)
                .trim_start_matches("dump-")
                .trim_end_matches(".json.zst");
            let at = parse_utc_stamp(stamp).ok_or_else(|| {
                anyhow!(
                    "--backup {named:?} is not a backup name or time stamp (like 20261130-235959)"
                )
            })?;
            backup_object(volume, at)
        }
        None => {
            let prefix = format!("{volume}/{BACKUP_DIR}/");
            let listed = rt
                .block_on(store.list(&prefix))
                .with_context(|| format!("cannot list {prefix} in {}", store.describe()))?;
            let newest = listed
                .iter()
                .filter_map(|o| backup_time(&o.key))
                .max()
                .ok_or_else(|| {
                    anyhow!(
                        "no metadata backup of volume {volume:?} in {} (looked under {prefix})",
                        store.describe()
                    )
                })?;
            backup_object(volume, newest)
        }
    };
    eprintln!("reading {key} from {}", store.describe());
    let raw = rt
        .block_on(store.get(&key, None))
        .with_context(|| format!("cannot read {key} from {}", store.describe()))?;
    if !tessera_crypt::looks_sealed(&raw) {
        return Ok(raw);
    }
    // An encrypted volume's backup: its key comes as a mount's does, by
    // the settings the volume mirrors into the bucket.
    let settings_key = format!("{volume}/tessera.json");
    let settings = rt
        .block_on(store.get(&settings_key, None))
        .with_context(|| format!("the backup is encrypted; cannot read {settings_key}"))?;
    let format: tessera_meta::Format = serde_json::from_slice(&settings)
        .with_context(|| format!("{settings_key} is not a volume's settings"))?;
    let cipher = crate::encryption::volume_cipher(&format, a.encrypt_key.as_deref())?
        .ok_or_else(|| anyhow!("{key} is encrypted, but {settings_key} says the volume is not"))?;
    let plain = cipher
        .open(key.as_bytes(), &raw)
        .with_context(|| format!("cannot decrypt {key}"))?;
    Ok(bytes::Bytes::from(plain))
}

pub fn load(a: LoadArgs) -> Result<()> {
    // The source first: a missing file or backup leaves no new database.
    let fetched;
    let input: Box<dyn BufRead> = match (&a.from_bucket, &a.volume, &a.file) {
        (Some(storage), Some(volume), _) => {
            fetched = backup_from_bucket(&a, storage, volume)?;
            Box::new(&fetched[..])
        }
        (_, _, Some(file)) if file.as_os_str() == "-" => {
            Box::new(BufReader::new(std::io::stdin().lock()))
        }
        (_, _, Some(file)) => Box::new(BufReader::new(
            std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?,
        )),
        _ => return Err(anyhow!("give a dump file, or --from-bucket with --volume")),
    };
    let mut input = dump_reader(input)?;
    let engine = engine(&a.meta_url, true)?;
    let start = Instant::now();
    let stats = tessera_meta::dump::load(engine.as_ref(), &mut input)
        .map_err(|e| anyhow!("load into {} failed: {e}", redact(&a.meta_url)))?;
    report("loaded", &stats, start);
    Ok(())
}
