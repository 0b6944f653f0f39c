//! Files the mount serves itself rather than the volume: `.stats` at the
//! root, the live metrics of this mount in Prometheus text form (what
//! `tessera stats` reads). It is read-only, not listed by readdir, and its
//! content is a snapshot taken at open.

use tessera_meta::{Attr, FileType, Ino, ROOT_INO};

/// Far above any inode the volume hands out.
pub const STATS_INO: Ino = 0x7FFF_FFFF_0000_0001;
pub const STATS_NAME: &[u8] = b".stats";

pub fn is_internal(ino: Ino) -> bool {
    ino == STATS_INO
}

/// The inode an internal name stands for in `parent`, if any.
pub fn lookup(parent: Ino, name: &[u8]) -> Option<Ino> {
    (parent == ROOT_INO && name == STATS_NAME).then_some(STATS_INO)
}

pub fn attr(length: u64) -> Attr {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| (d.as_secs() as i64, d.subsec_nanos()))
        .unwrap_or((0, 0));
    let mut a = Attr::new(FileType::File, 0o444, 0, 0, now);
    a.length = length;
    a.nlink = 1;
    a.parent = ROOT_INO;
    a
}
