//! Binary key layout. Short prefixes keep keys small and group what is
//! scanned together:
//!
//! | key | value |
//! |---|---|
//! | `setting` | volume [`Format`](crate::Format) as JSON |
//! | `C` name | counter, i64 LE |
//! | `A` ino `I` | inode attributes ([`Attr`](crate::Attr)) |
//! | `A` ino `D` name | directory entry: child ino + type |
//! | `A` ino `C` chunk-index(u32 BE) | slice records, appended |
//! | `A` ino `X` name | extended attribute value |
//! | `A` ino `S` | symlink target |
//! | `A` ino `P` parent | hard-link parent count (only once a file has links) |
//! | `D` ino length | file deleted, data awaiting cleanup |
//! | `K` slice-id size | extra references of a shared slice |
//! | `LF` ino / `LP` ino | flock / POSIX lock tables |
//! | `SE` sid | session info JSON; `SH` sid heartbeat; `SS` sid ino open-unlinked |
//! | `E` id | external object a slice points at (import) |
//! | `I` ino | lazy import: the bucket a directory is listed from ([`LazyImport`](crate::LazyImport)) |
//! | `G` group `\0` member | cache-group member record JSON (live state) |
//! | `Q` ino `L` / `Q` ino `U` | directory quota: limits / usage (`fs::quota`) |
//! | `T` hour id size | slice kept by the trash (`fs::trash`) |
//!
//! Integers in keys are big-endian so that scans come out in numeric order.

use crate::Ino;

pub const SETTING: &[u8] = b"setting";

pub fn counter(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(b'C');
    k.extend_from_slice(name.as_bytes());
    k
}

fn inode_key(ino: Ino, kind: u8, extra: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(10 + extra.len());
    k.push(b'A');
    k.extend_from_slice(&ino.to_be_bytes());
    k.push(kind);
    k.extend_from_slice(extra);
    k
}

pub fn attr(ino: Ino) -> Vec<u8> {
    inode_key(ino, b'I', &[])
}

/// Where a directory entry's value holds the child's type (after its
/// inode number); the value is that long plus the type byte.
pub const DENTRY_TYPE_AT: usize = 8;

/// A directory entry's value starts with the child's inode number: the
/// child's attribute key is `A` + those 8 bytes + `I`.
pub const DENTRY_TO_ATTR: crate::kv::Pointer<'static> = crate::kv::Pointer {
    prefix: b"A",
    at: 0,
    len: 8,
    suffix: b"I",
};
/// The prefix of the chunk keys of the file a directory entry names: `A`
/// + the inode number the entry holds + `C`.
pub const DENTRY_TO_CHUNKS: crate::kv::Pointer<'static> = crate::kv::Pointer {
    prefix: b"A",
    at: 0,
    len: 8,
    suffix: b"C",
};
pub fn dentry(parent: Ino, name: &[u8]) -> Vec<u8> {
    inode_key(parent, b'D', name)
}
pub fn dentry_prefix(parent: Ino) -> Vec<u8> {
    inode_key(parent, b'D', &[])
}
pub fn chunk(ino: Ino, index: u32) -> Vec<u8> {
    inode_key(ino, b'C', &index.to_be_bytes())
}
pub fn chunk_prefix(ino: Ino) -> Vec<u8> {
    inode_key(ino, b'C', &[])
}
pub fn xattr(ino: Ino, name: &[u8]) -> Vec<u8> {
    inode_key(ino, b'X', name)
}
pub fn xattr_prefix(ino: Ino) -> Vec<u8> {
    inode_key(ino, b'X', &[])
}
pub fn symlink(ino: Ino) -> Vec<u8> {
    inode_key(ino, b'S', &[])
}
pub fn parent(ino: Ino, parent: Ino) -> Vec<u8> {
    inode_key(ino, b'P', &parent.to_be_bytes())
}
pub fn parent_prefix(ino: Ino) -> Vec<u8> {
    inode_key(ino, b'P', &[])
}
/// Every key of one inode, for removal.
pub fn inode_prefix(ino: Ino) -> Vec<u8> {
    let mut k = vec![b'A'];
    k.extend_from_slice(&ino.to_be_bytes());
    k
}

pub fn deleted(ino: Ino, length: u64) -> Vec<u8> {
    let mut k = vec![b'D'];
    k.extend_from_slice(&ino.to_be_bytes());
    k.extend_from_slice(&length.to_be_bytes());
    k
}
pub const DELETED_PREFIX: &[u8] = b"D";

pub fn slice_refs(id: u64, size: u64) -> Vec<u8> {
    let mut k = vec![b'K'];
    k.extend_from_slice(&id.to_be_bytes());
    k.extend_from_slice(&size.to_be_bytes());
    k
}

pub fn flock(ino: Ino) -> Vec<u8> {
    let mut k = b"LF".to_vec();
    k.extend_from_slice(&ino.to_be_bytes());
    k
}
pub fn plock(ino: Ino) -> Vec<u8> {
    let mut k = b"LP".to_vec();
    k.extend_from_slice(&ino.to_be_bytes());
    k
}
pub const FLOCK_PREFIX: &[u8] = b"LF";
pub const PLOCK_PREFIX: &[u8] = b"LP";

pub fn session(sid: u64) -> Vec<u8> {
    let mut k = b"SE".to_vec();
    k.extend_from_slice(&sid.to_be_bytes());
    k
}
pub fn heartbeat(sid: u64) -> Vec<u8> {
    let mut k = b"SH".to_vec();
    k.extend_from_slice(&sid.to_be_bytes());
    k
}
pub fn sustained(sid: u64, ino: Ino) -> Vec<u8> {
    let mut k = b"SS".to_vec();
    k.extend_from_slice(&sid.to_be_bytes());
    k.extend_from_slice(&ino.to_be_bytes());
    k
}
pub fn sustained_prefix(sid: u64) -> Vec<u8> {
    let mut k = b"SS".to_vec();
    k.extend_from_slice(&sid.to_be_bytes());
    k
}
pub const SESSION_PREFIX: &[u8] = b"SE";
pub const HEARTBEAT_PREFIX: &[u8] = b"SH";

pub fn external(id: u64) -> Vec<u8> {
    let mut k = vec![b'E'];
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// Read a big-endian u64 from `key[at..at + 8]`.
pub fn lazy_import(ino: Ino) -> Vec<u8> {
    let mut k = vec![b'I'];
    k.extend_from_slice(&ino.to_be_bytes());
    k
}

pub const LAZY_IMPORT_PREFIX: &[u8] = b"I";

pub fn be_u64(key: &[u8], at: usize) -> Option<u64> {
    key.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
}

/// The record of one member of a cache group.
pub fn group_member(group: &str, member: &str) -> Vec<u8> {
    let mut k = group_prefix(group);
    k.extend_from_slice(member.as_bytes());
    k
}

/// Every member record of a cache group.
pub fn group_prefix(group: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + group.len());
    k.push(b'G');
    k.extend_from_slice(group.as_bytes());
    k.push(0);
    k
}
