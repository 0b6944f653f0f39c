//! `tessera dump` and `tessera load`: a volume's metadata as JSON Lines, to
//! back it up or to move it to another metadata engine.

use std::io::{BufReader, BufWriter};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};

use crate::common::redact;

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
    /// Dump file to read, or - for standard input.
    pub file: PathBuf,
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

pub fn load(a: LoadArgs) -> Result<()> {
    let engine = engine(&a.meta_url, true)?;
    let start = Instant::now();
    let stats = if a.file.as_os_str() == "-" {
        let stdin = std::io::stdin();
        tessera_meta::dump::load(engine.as_ref(), &mut stdin.lock())
    } else {
        let file = std::fs::File::open(&a.file)
            .with_context(|| format!("cannot open {}", a.file.display()))?;
        tessera_meta::dump::load(engine.as_ref(), &mut BufReader::new(file))
    }
    .map_err(|e| anyhow!("load into {} failed: {e}", redact(&a.meta_url)))?;
    report("loaded", &stats, start);
    Ok(())
}
