//! Subcommands.

pub mod bench;
pub mod cache;
pub mod cache_group;
pub mod cache_server;
pub mod clone;
pub mod config;
pub mod csi;
mod daemon;
pub mod data_path;
pub mod destroy;
pub mod dump;
pub mod format;
pub mod fsck;
pub mod gc;
pub mod group;
pub mod import;
pub mod info;
pub mod mount;
pub mod objbench;
pub mod quota;
pub mod restore;
pub mod rmr;
pub mod stats;
pub mod status;
pub mod sync;
pub mod umount;
pub mod warmup;
