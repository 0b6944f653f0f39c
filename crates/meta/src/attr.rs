//! Inode attributes and their fixed binary encoding.

use crate::{Ino, MetaError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FileType {
    File = 1,
    Dir = 2,
    Symlink = 3,
    Fifo = 4,
    BlockDev = 5,
    CharDev = 6,
    Socket = 7,
}

impl FileType {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => FileType::File,
            2 => FileType::Dir,
            3 => FileType::Symlink,
            4 => FileType::Fifo,
            5 => FileType::BlockDev,
            6 => FileType::CharDev,
            7 => FileType::Socket,
            _ => return None,
        })
    }

    /// From the `S_IFMT` bits of a mode.
    pub fn from_mode(mode: u32) -> Option<Self> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => FileType::File,
            libc::S_IFDIR => FileType::Dir,
            libc::S_IFLNK => FileType::Symlink,
            libc::S_IFIFO => FileType::Fifo,
            libc::S_IFBLK => FileType::BlockDev,
            libc::S_IFCHR => FileType::CharDev,
            libc::S_IFSOCK => FileType::Socket,
            _ => return None,
        })
    }

    pub fn mode_bits(self) -> u32 {
        match self {
            FileType::File => libc::S_IFREG,
            FileType::Dir => libc::S_IFDIR,
            FileType::Symlink => libc::S_IFLNK,
            FileType::Fifo => libc::S_IFIFO,
            FileType::BlockDev => libc::S_IFBLK,
            FileType::CharDev => libc::S_IFCHR,
            FileType::Socket => libc::S_IFSOCK,
        }
    }
}

/// Attributes of one inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub typ: FileType,
    /// Permission bits including setuid, setgid and sticky (07777).
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub atime: i64,
    pub atime_ns: u32,
    pub mtime: i64,
    pub mtime_ns: u32,
    pub ctime: i64,
    pub ctime_ns: u32,
    pub nlink: u32,
    pub length: u64,
    pub rdev: u32,
    /// Parent directory; for files with several links, the first one.
    pub parent: Ino,
    /// Reserved flag bits (immutable, append-only, ACL present, ...).
    pub flags: u8,
    /// Bytes of a regular file that slices hold (holes not counted): what
    /// `st_blocks` and the volume's usage show, so a sparse file counts
    /// what is stored, not its length. 0 for other types.
    pub stored: u64,
}

/// `Attr::flags`: the inode has (or had) extended attributes, so removing
/// it must look for them.
pub const FLAG_XATTRS: u8 = 1;
/// `Attr::flags`: the inode has (or had) hard links, so `P` keys may exist.
pub const FLAG_LINKED: u8 = 2;
/// `Attr::flags`: the node has an access ACL beyond its mode bits
/// (`acl::ACCESS`), so chmod must rewrite it.
pub const FLAG_ACL_ACCESS: u8 = 4;
/// `Attr::flags`: the directory has a default ACL (`acl::DEFAULT`) that
/// new nodes in it inherit.
pub const FLAG_ACL_DEFAULT: u8 = 8;

/// Attributes written before `stored` existed are this long.
const ENCODED_LEN_V1: usize = 76;
const ENCODED_LEN: usize = 84;
const VERSION: u8 = 1;

impl Attr {
    pub fn new(typ: FileType, mode: u16, uid: u32, gid: u32, now: (i64, u32)) -> Self {
        Attr {
            typ,
            mode: mode & 0o7777,
            uid,
            gid,
            atime: now.0,
            atime_ns: now.1,
            mtime: now.0,
            mtime_ns: now.1,
            ctime: now.0,
            ctime_ns: now.1,
            nlink: 1,
            length: 0,
            rdev: 0,
            parent: 0,
            flags: 0,
            stored: 0,
        }
    }

    pub fn full_mode(&self) -> u32 {
        self.typ.mode_bits() | u32::from(self.mode)
    }

    pub fn touch_mtime(&mut self, now: (i64, u32)) {
        (self.mtime, self.mtime_ns) = now;
        (self.ctime, self.ctime_ns) = now;
    }

    pub fn touch_ctime(&mut self, now: (i64, u32)) {
        (self.ctime, self.ctime_ns) = now;
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(ENCODED_LEN);
        b.push(VERSION);
        b.push(self.typ as u8);
        b.push(self.flags);
        b.push(0);
        b.extend_from_slice(&self.mode.to_le_bytes());
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&self.uid.to_le_bytes());
        b.extend_from_slice(&self.gid.to_le_bytes());
        b.extend_from_slice(&self.atime.to_le_bytes());
        b.extend_from_slice(&self.mtime.to_le_bytes());
        b.extend_from_slice(&self.ctime.to_le_bytes());
        b.extend_from_slice(&self.atime_ns.to_le_bytes());
        b.extend_from_slice(&self.mtime_ns.to_le_bytes());
        b.extend_from_slice(&self.ctime_ns.to_le_bytes());
        b.extend_from_slice(&self.nlink.to_le_bytes());
        b.extend_from_slice(&self.length.to_le_bytes());
        b.extend_from_slice(&self.rdev.to_le_bytes());
        b.extend_from_slice(&self.parent.to_le_bytes());
        b.extend_from_slice(&self.stored.to_le_bytes());
        debug_assert_eq!(b.len(), ENCODED_LEN);
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self> {
        if b.len() < ENCODED_LEN_V1 || b[0] != VERSION {
            return Err(MetaError::Corrupt(format!(
                "inode attributes of {} bytes, version {:?}",
                b.len(),
                b.first()
            )));
        }
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let typ = FileType::from_u8(b[1])
            .ok_or_else(|| MetaError::Corrupt(format!("unknown file type {}", b[1])))?;
        Ok(Attr {
            typ,
            flags: b[2],
            mode: u16_at(4),
            uid: u32_at(8),
            gid: u32_at(12),
            atime: u64_at(16) as i64,
            mtime: u64_at(24) as i64,
            ctime: u64_at(32) as i64,
            atime_ns: u32_at(40),
            mtime_ns: u32_at(44),
            ctime_ns: u32_at(48),
            nlink: u32_at(52),
            length: u64_at(56),
            rdev: u32_at(64),
            parent: u64_at(68),
            // Older attributes did not say: take the whole length as stored.
            stored: if b.len() >= ENCODED_LEN {
                u64_at(76)
            } else {
                u64_at(56)
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_round_trip() {
        let mut a = Attr::new(FileType::Fifo, 0o4755, 1000, 100, (1_700_000_000, 123));
        a.length = 1 << 40;
        a.nlink = 3;
        a.rdev = 77;
        a.parent = 42;
        a.atime = -5;
        a.stored = 12345;
        assert_eq!(Attr::decode(&a.encode()).expect("decode"), a);
        assert!(Attr::decode(&[1, 2, 3]).is_err());
    }
}
