//! The `tessera` command: one module per subcommand under `cmd/`.

mod cmd;
mod common;
mod encryption;
mod filter;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "A distributed POSIX file system for AI data and models"
)]
struct Cli {
    /// Log more (debug level); TESSERA_LOG=filter overrides.
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a volume (or confirm an existing one has these settings).
    Format(Box<cmd::format::Args>),
    /// Mount a volume with FUSE.
    Mount(Box<cmd::mount::Args>),
    /// Unmount a mounted volume.
    Umount(cmd::umount::Args),
    /// Show a volume's settings, live sessions and usage.
    Status(cmd::status::Args),
    /// Show how a file is stored: inode, chunks, slices, object keys.
    Info(cmd::info::Args),
    /// Live throughput, cache hit ratio and object requests of a mount.
    Stats(cmd::stats::Args),
    /// Benchmark a directory: big files, small files, stat.
    Bench(cmd::bench::Args),
    /// Benchmark an object store: put, get, range get, list, delete.
    Objbench(cmd::objbench::Args),
    /// A TCP relay that plays a far link (delay, rate) for benches.
    #[command(hide = true)]
    Link(cmd::link::Args),
    /// Make the objects under a storage URL files of the volume, in place.
    Import(Box<cmd::import::Args>),
    /// Fill a mount's cache with files' blocks; --check, --evict, --pin.
    Warmup(Box<cmd::warmup::Args>),
    /// Copy files between a directory (a mount's path) and a storage URL.
    Sync(Box<cmd::sync::Args>),
    /// Serve a cache group as a dedicated member (no mount).
    CacheServer(Box<cmd::cache_server::Args>),
    /// Cache groups: `status`.
    #[command(subcommand)]
    CacheGroup(cmd::cache_group::Command),
    /// Local cache directories: `gc`.
    #[command(subcommand)]
    Cache(cmd::cache::Command),
    /// Copy a file or directory tree on a mount as metadata only (the
    /// copies share their blocks).
    Clone(cmd::clone::Args),
    /// Remove a volume for good: its objects, then its metadata (the UUID
    /// confirms which volume).
    Destroy(cmd::destroy::Args),
    /// Put files from a mount's trash back where they were.
    Restore(cmd::restore::Args),
    /// Remove files and directory trees on a mount in the engine (no
    /// kernel round trip per file).
    Rmr(cmd::rmr::Args),
    /// Show or change the settings that may change after format
    /// (capacity, inodes, storage URL, ACLs).
    Config(cmd::config::Args),
    /// The Kubernetes CSI node plugin (Identity and Node services).
    Csi(cmd::csi::Args),
    /// Directory quotas: `set`, `get`, `list`, `delete`, `check`.
    #[command(subcommand)]
    Quota(cmd::quota::Command),
    /// Write a volume's metadata as JSON Lines (FILE, or - for stdout).
    Dump(cmd::dump::DumpArgs),
    /// Load a dump into an empty metadata engine (FILE, or - for stdin).
    Load(cmd::dump::LoadArgs),
    /// Check a volume's metadata (and with --check-objects its blocks);
    /// --repair fixes what it finds.
    Fsck(Box<cmd::fsck::Args>),
    /// Find (and with --delete remove) block objects nothing refers to.
    Gc(Box<cmd::gc::Args>),
}

fn main() {
    let cli = Cli::parse();
    common::init_logging(cli.debug);
    let result = match cli.command {
        Command::Format(a) => cmd::format::run(*a),
        Command::Mount(a) => cmd::mount::run(*a),
        Command::Umount(a) => cmd::umount::run(a),
        Command::Status(a) => cmd::status::run(a),
        Command::Info(a) => cmd::info::run(a),
        Command::Stats(a) => cmd::stats::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Objbench(a) => cmd::objbench::run(a),
        Command::Link(a) => cmd::link::run(a),
        Command::Import(a) => cmd::import::run(*a),
        Command::Warmup(a) => cmd::warmup::run(*a),
        Command::Sync(a) => cmd::sync::run(*a),
        Command::CacheServer(a) => cmd::cache_server::run(*a),
        Command::CacheGroup(c) => cmd::cache_group::run(c),
        Command::Cache(c) => cmd::cache::run(c),
        Command::Clone(a) => cmd::clone::run(a),
        Command::Config(a) => cmd::config::run(a),
        Command::Rmr(a) => cmd::rmr::run(a),
        Command::Quota(c) => cmd::quota::run(c),
        Command::Csi(a) => cmd::csi::run(a),
        Command::Restore(a) => cmd::restore::run(a),
        Command::Destroy(a) => cmd::destroy::run(a),
        Command::Dump(a) => cmd::dump::dump(a),
        Command::Load(a) => cmd::dump::load(a),
        Command::Fsck(a) => cmd::fsck::run(*a),
        Command::Gc(a) => cmd::gc::run(*a),
    };
    if let Err(e) = result {
        eprintln!("tessera: {e:#}");
        std::process::exit(1);
    }
}
