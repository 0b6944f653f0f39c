//! The cache-control ioctls that `tessera warmup` sends to a mount.
//!
//! Only the mount knows its cache, so the command opens each file on the
//! mount (the kernel checks read permission as for any open) and asks the
//! mount, per byte range, to warm, check, evict or unpin its blocks. An
//! ioctl carries typed arguments and a reply with no shared file between
//! callers (as a `.control` file would need), and one call per range lets
//! the command show progress and choose its own parallelism.
//!
//! Every command is `_IOWR(0xB7, nr, [u8; 256])`. Request: offset, length,
//! pin seconds (0: no pin), flags, as little-endian u64s. Reply: eight
//! little-endian u64s (data bytes, in memory, on disk, pinned, fetched,
//! failed blocks, cached in either, 0), then the first error message, NUL padded.

use tessera_vfs::{CacheAction, CacheReport};

/// Bytes of a request and of a reply.
pub const SIZE: usize = 256;
const MAGIC: u32 = 0xB7;
const NR_CHECK: u32 = 1;
const NR_WARM: u32 = 2;
const NR_EVICT: u32 = 3;
const NR_UNPIN: u32 = 4;
/// Queue the work in the mount and answer at once.
pub const FLAG_BACKGROUND: u64 = 1;
const MESSAGE_AT: usize = 64;

/// What a `tessera warmup` invocation asks of each range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Check,
    Warm,
    Evict,
    Unpin,
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
        })
    }

    fn from_command(cmd: u32) -> Option<Op> {
        [Op::Check, Op::Warm, Op::Evict, Op::Unpin]
            .into_iter()
            .find(|op| op.command() == cmd)
    }
}

/// One range request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub op: Op,
    pub offset: u64,
    pub length: u64,
    pub pin_secs: u64,
    pub flags: u64,
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
        buf
    }

    /// A request from an ioctl, or None if it is not one of ours.
    pub fn decode(cmd: u32, data: &[u8]) -> Option<Request> {
        let op = Op::from_command(cmd)?;
        (data.len() >= 32).then(|| Request {
            op,
            offset: word(data, 0),
            length: word(data, 1),
            pin_secs: word(data, 2),
            flags: word(data, 3),
        })
    }

    pub fn action(&self) -> CacheAction {
        match self.op {
            Op::Check => CacheAction::Check,
            Op::Evict => CacheAction::Evict,
            Op::Unpin => CacheAction::Unpin,
            Op::Warm => CacheAction::Warm {
                pin: (self.pin_secs > 0).then(|| std::time::Duration::from_secs(self.pin_secs)),
            },
        }
    }
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
        let mut n = e.len().min(SIZE - MESSAGE_AT - 1);
        while !e.is_char_boundary(n) {
            n -= 1;
        }
        buf[MESSAGE_AT..MESSAGE_AT + n].copy_from_slice(&e.as_bytes()[..n]);
    }
    buf
}

pub fn decode_report(buf: &[u8]) -> CacheReport {
    let message = buf.get(MESSAGE_AT..).unwrap_or_default();
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
            flags: FLAG_BACKGROUND,
        };
        assert_eq!(
            Request::decode(Op::Warm.command(), &req.encode()),
            Some(req)
        );
        assert_eq!(
            Request::decode(0x5401, &req.encode()),
            None,
            "TCGETS is not ours"
        );
        assert_eq!(Op::Check.command(), 0xC100_B701);
        let report = CacheReport {
            bytes: 10,
            memory: 1,
            disk: 9,
            pinned: 9,
            fetched: 8,
            failed_blocks: 2,
            cached: 9,
            error: Some("é".repeat(200)),
        };
        let back = decode_report(&encode_report(&report));
        assert_eq!(back.bytes, 10);
        assert_eq!((back.failed_blocks, back.cached), (2, 9));
        let msg = back.error.expect("message");
        assert!(msg.len() < SIZE - MESSAGE_AT && msg.chars().all(|c| c == 'é'));
    }
}
