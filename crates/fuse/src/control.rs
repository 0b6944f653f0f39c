//! The cache-control ioctls that `tessera warmup` sends to a mount.
//!
//! Only the mount knows its cache, so the command opens each file on the
//! mount (the kernel checks read permission as for any open) and asks the
//! mount, per byte range, to warm, check, evict or unpin its blocks. An
//! ioctl carries typed arguments and a reply with no shared file between
//! callers (as a `.control` file would need), and one call per range lets
//! the command show progress and choose its own parallelism.
//!
//! Every command is `_IOWR(0xB7, nr, [u8; 4096])`. Request: offset, length,
//! pin seconds (0: no pin), flags, as little-endian u64s; at byte 64 the
//! cache group name for `FLAG_GROUP` (NUL padded). Reply: eight
//! little-endian u64s (data bytes, in memory, on disk, pinned, fetched,
//! failed blocks, cached in either, 0), the first error message at byte 64
//! (NUL padded, 1 KiB), and at byte 1088 the number of members followed by
//! one entry per member (address, 48 bytes NUL padded; cached bytes, u64).
//!
//! `tessera clone` sends [`CloneRequest`] on the destination's directory:
//! source inode, flags (1: preserve), umask, as little-endian u64s, and the
//! new name at byte 64 (NUL padded, at most 255 bytes). Reply: inodes made
//! and bytes shared, two little-endian u64s. `tessera rmr` and `tessera
//! restore` send an [`EntryRequest`] on the entry's directory: the name at
//! byte 64; reply: two counts (files and directories removed; files put
//! back).

use tessera_vfs::{CacheControl, CacheReport, ControlOp};

/// Bytes of a request and of a reply.
pub const SIZE: usize = 4096;
const MAGIC: u32 = 0xB7;
const NR_CHECK: u32 = 1;
const NR_WARM: u32 = 2;
const NR_EVICT: u32 = 3;
const NR_UNPIN: u32 = 4;
const NR_LOCAL_COPY: u32 = 5;
const NR_CLONE: u32 = 6;
const NR_REMOVE_TREE: u32 = 7;
const NR_RESTORE: u32 = 8;
/// Queue the work in the mount and answer at once.
pub const FLAG_BACKGROUND: u64 = 1;
/// Act through the cache group: each block's owner does the work.
pub const FLAG_GROUP: u64 = 2;
const MESSAGE_AT: usize = 64;
const MESSAGE_END: usize = 1088;
const GROUP_AT: usize = 64;
const GROUP_LEN: usize = 64;
const MEMBER_ADDR: usize = 48;
const MEMBER_ENTRY: usize = MEMBER_ADDR + 8;
const MAX_MEMBERS: usize = (SIZE - MESSAGE_END - 4) / MEMBER_ENTRY;

/// What a `tessera warmup` invocation asks of each range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Check,
    Warm,
    Evict,
    Unpin,
    /// Write the whole file's local copy, for kernel passthrough reads.
    LocalCopy,
}

/// `_IOWR(MAGIC, nr, [u8; SIZE])` as Linux encodes it.
const fn iowr(nr: u32) -> u32 {
    const READ_WRITE: u32 = 3;
    (READ_WRITE << 30) | ((SIZE as u32) << 16) | (MAGIC << 8) | nr
}

impl Op {
    pub fn command(self) -> u32 {
        iowr(match self {
            Op::Check => NR_CHECK,
            Op::Warm => NR_WARM,
            Op::Evict => NR_EVICT,
            Op::Unpin => NR_UNPIN,
            Op::LocalCopy => NR_LOCAL_COPY,
        })
    }

    fn from_command(cmd: u32) -> Option<Op> {
        [Op::Check, Op::Warm, Op::Evict, Op::Unpin, Op::LocalCopy]
            .into_iter()
            .find(|op| op.command() == cmd)
    }
}

/// One range request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub op: Op,
    pub offset: u64,
    pub length: u64,
    pub pin_secs: u64,
    pub flags: u64,
    /// The cache group named with `FLAG_GROUP`.
    pub group: String,
}

fn word(buf: &[u8], i: usize) -> u64 {
    buf.get(i * 8..i * 8 + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

impl Request {
    pub fn encode(&self) -> [u8; SIZE] {
        let mut buf = [0u8; SIZE];
        for (i, v) in [self.offset, self.length, self.pin_secs, self.flags]
            .into_iter()
            .enumerate()
        {
            buf[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        let g = &self.group.as_bytes()[..self.group.len().min(GROUP_LEN - 1)];
        buf[GROUP_AT..GROUP_AT + g.len()].copy_from_slice(g);
        buf
    }

    /// A request from an ioctl, or None if it is not one of ours.
    pub fn decode(cmd: u32, data: &[u8]) -> Option<Request> {
        let op = Op::from_command(cmd)?;
        let group = data.get(GROUP_AT..GROUP_AT + GROUP_LEN).unwrap_or_default();
        let end = group.iter().position(|&b| b == 0).unwrap_or(group.len());
        (data.len() >= 32).then(|| Request {
            op,
            offset: word(data, 0),
            length: word(data, 1),
            pin_secs: word(data, 2),
            flags: word(data, 3),
            group: String::from_utf8_lossy(&group[..end]).into_owned(),
        })
    }

    /// The request as the mount acts on it.
    pub fn to_control(&self) -> CacheControl {
        CacheControl {
            op: match self.op {
                Op::Check => ControlOp::Check,
                Op::Warm => ControlOp::Warm {
                    pin: (self.pin_secs > 0).then(|| std::time::Duration::from_secs(self.pin_secs)),
                },
                Op::Evict => ControlOp::Evict,
                Op::Unpin => ControlOp::Unpin,
                Op::LocalCopy => ControlOp::LocalCopy,
            },
            offset: self.offset,
            length: self.length,
            group: (self.flags & FLAG_GROUP != 0).then(|| self.group.clone()),
            background: self.flags & FLAG_BACKGROUND != 0,
        }
    }
}

/// A clone request, sent on the destination directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneRequest {
    /// The source's inode number (`st_ino` of the source on the mount).
    pub src: u64,
    /// Keep owner, mode and times.
    pub preserve: bool,
    pub umask: u32,
    /// The new entry's name in the directory the request is sent on.
    pub name: Vec<u8>,
}

const CLONE_PRESERVE: u64 = 1;
const NAME_AT: usize = 64;
const NAME_MAX: usize = 255;

impl CloneRequest {
    pub fn command() -> u32 {
        iowr(NR_CLONE)
    }

    /// The request's bytes; None when the name is empty or too long.
    pub fn encode(&self) -> Option<[u8; SIZE]> {
        if self.name.is_empty() || self.name.len() > NAME_MAX || self.name.contains(&0) {
            return None;
        }
        let mut buf = [0u8; SIZE];
        let flags = if self.preserve { CLONE_PRESERVE } else { 0 };
        for (i, v) in [self.src, flags, u64::from(self.umask)]
            .into_iter()
            .enumerate()
        {
            buf[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        buf[NAME_AT..NAME_AT + self.name.len()].copy_from_slice(&self.name);
        Some(buf)
    }

    pub fn decode(cmd: u32, data: &[u8]) -> Option<CloneRequest> {
        if cmd != Self::command() || data.len() < NAME_AT + 1 {
            return None;
        }
        let field = data.get(NAME_AT..(NAME_AT + NAME_MAX + 1).min(data.len()))?;
        let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
        (end > 0 && end <= NAME_MAX).then(|| CloneRequest {
            src: word(data, 0),
            preserve: word(data, 1) & CLONE_PRESERVE != 0,
            umask: (word(data, 2) & 0o777) as u32,
            name: field[..end].to_vec(),
        })
    }
}

/// What an [`EntryRequest`] asks of the entry it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryOp {
    /// Remove it with everything under it (`tessera rmr`).
    RemoveTree,
    /// Put a trashed file back where it was (`tessera restore`).
    Restore,
}

/// A request about one entry, sent on its directory: the name at byte 64.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRequest {
    pub op: EntryOp,
    pub name: Vec<u8>,
}

impl EntryRequest {
    pub fn command(&self) -> u32 {
        iowr(match self.op {
            EntryOp::RemoveTree => NR_REMOVE_TREE,
            EntryOp::Restore => NR_RESTORE,
        })
    }

    pub fn encode(&self) -> Option<[u8; SIZE]> {
        let req = CloneRequest {
            src: 0,
            preserve: false,
            umask: 0,
            name: self.name.clone(),
        };
        req.encode()
    }

    pub fn decode(cmd: u32, data: &[u8]) -> Option<EntryRequest> {
        let op = if cmd == iowr(NR_REMOVE_TREE) {
            EntryOp::RemoveTree
        } else if cmd == iowr(NR_RESTORE) {
            EntryOp::Restore
        } else {
            return None;
        };
        CloneRequest::decode(CloneRequest::command(), data)
            .map(|c| EntryRequest { op, name: c.name })
    }
}

/// The reply of a clone (inodes made, bytes shared) or of a tree removal
/// (files, directories removed): two counts.
pub fn encode_counts(first: u64, second: u64) -> [u8; 16] {
    let mut buf = [0u8; 16];
    buf[..8].copy_from_slice(&first.to_le_bytes());
    buf[8..].copy_from_slice(&second.to_le_bytes());
    buf
}

pub fn decode_counts(buf: &[u8]) -> (u64, u64) {
    (word(buf, 0), word(buf, 1))
}

pub fn encode_report(r: &CacheReport) -> [u8; SIZE] {
    let mut buf = [0u8; SIZE];
    let words = [
        r.bytes,
        r.memory,
        r.disk,
        r.pinned,
        r.fetched,
        r.failed_blocks,
        r.cached,
    ];
    for (i, v) in words.into_iter().enumerate() {
        buf[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
    }
    if let Some(e) = &r.error {
        // Cut at a character boundary that fits, leaving a NUL at the end.
        let mut n = e.len().min(MESSAGE_END - MESSAGE_AT - 1);
        while !e.is_char_boundary(n) {
            n -= 1;
        }
        buf[MESSAGE_AT..MESSAGE_AT + n].copy_from_slice(&e.as_bytes()[..n]);
    }
    let members = &r.members[..r.members.len().min(MAX_MEMBERS)];
    buf[MESSAGE_END..MESSAGE_END + 4].copy_from_slice(&(members.len() as u32).to_le_bytes());
    for (i, (addr, bytes)) in members.iter().enumerate() {
        let at = MESSAGE_END + 4 + i * MEMBER_ENTRY;
        let a = &addr.as_bytes()[..addr.len().min(MEMBER_ADDR - 1)];
        buf[at..at + a.len()].copy_from_slice(a);
        buf[at + MEMBER_ADDR..at + MEMBER_ENTRY].copy_from_slice(&bytes.to_le_bytes());
    }
    buf
}

pub fn decode_report(buf: &[u8]) -> CacheReport {
    let message = buf.get(MESSAGE_AT..MESSAGE_END).unwrap_or_default();
    let count = buf
        .get(MESSAGE_END..MESSAGE_END + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .unwrap_or(0)
        .min(MAX_MEMBERS);
    let members = (0..count)
        .filter_map(|i| {
            let at = MESSAGE_END + 4 + i * MEMBER_ENTRY;
            let entry = buf.get(at..at + MEMBER_ENTRY)?;
            let addr = &entry[..MEMBER_ADDR];
            let end = addr.iter().position(|&b| b == 0).unwrap_or(MEMBER_ADDR);
            let bytes = u64::from_le_bytes(entry[MEMBER_ADDR..].try_into().ok()?);
            Some((String::from_utf8_lossy(&addr[..end]).into_owned(), bytes))
        })
        .collect();
    let end = message
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(message.len());
    CacheReport {
        bytes: word(buf, 0),
        memory: word(buf, 1),
        disk: word(buf, 2),
        pinned: word(buf, 3),
        fetched: word(buf, 4),
        failed_blocks: word(buf, 5),
        cached: word(buf, 6),
        error: (end > 0).then(|| String::from_utf8_lossy(&message[..end]).into_owned()),
        members,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_reports_round_trip() {
        let req = Request {
            op: Op::Warm,
            offset: 64 << 20,
            length: 64 << 20,
            pin_secs: 3600,
            flags: FLAG_BACKGROUND | FLAG_GROUP,
            group: "gpu-a".into(),
        };
        assert_eq!(
            Request::decode(Op::Warm.command(), &req.encode()),
            Some(req.clone())
        );
        assert_eq!(
            Request::decode(0x5401, &req.encode()),
            None,
            "TCGETS is not ours"
        );
        assert_eq!(Op::Check.command(), 0xD000_B701);
        assert_eq!(
            req.to_control(),
            CacheControl {
                op: ControlOp::Warm {
                    pin: Some(std::time::Duration::from_secs(3600))
                },
                offset: 64 << 20,
                length: 64 << 20,
                group: Some("gpu-a".into()),
                background: true,
            }
        );
        let report = CacheReport {
            bytes: 10,
            memory: 1,
            disk: 9,
            pinned: 9,
            fetched: 8,
            failed_blocks: 2,
            cached: 9,
            error: Some("é".repeat(2000)),
            members: vec![("127.0.0.2:9800".into(), 4), ("127.0.0.3:9800".into(), 5)],
        };
        let back = decode_report(&encode_report(&report));
        assert_eq!(back.bytes, 10);
        assert_eq!((back.failed_blocks, back.cached), (2, 9));
        let msg = back.error.expect("message");
        assert!(msg.len() < MESSAGE_END - MESSAGE_AT && msg.chars().all(|c| c == 'é'));
        assert_eq!(back.members, report.members);
    }

    #[test]
    fn clone_requests_round_trip() {
        let req = CloneRequest {
            src: 42,
            preserve: true,
            umask: 0o022,
            name: b"llama-copy".to_vec(),
        };
        let buf = req.encode().expect("encodes");
        assert_eq!(
            CloneRequest::decode(CloneRequest::command(), &buf),
            Some(req)
        );
        assert_eq!(CloneRequest::decode(Op::Warm.command(), &buf), None);
        let long = CloneRequest {
            name: vec![b'x'; 256],
            ..CloneRequest::decode(CloneRequest::command(), &buf).expect("decodes")
        };
        assert!(long.encode().is_none(), "names past 255 bytes are refused");
        assert_eq!(decode_counts(&encode_counts(7, 1 << 40)), (7, 1 << 40));
    }
}
