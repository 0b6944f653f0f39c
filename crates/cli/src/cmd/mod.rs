//! Subcommands.

pub mod format;
pub mod info;
pub mod mount;
pub mod status;
pub mod umount;
