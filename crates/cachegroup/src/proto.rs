//! The wire protocol between members of a cache group, over TCP.
//!
//! **Handshake** (mutual, per connection): the client sends `TCG1`, the
//! group name and a 16-byte nonce; the server answers with its own nonce;
//! the client proves it holds the group secret with
//! HMAC-SHA256(secret, "client" | client nonce | server nonce); the server
//! answers 1 and its own proof (HMAC over "server" | server nonce | client
//! nonce), or 0 and closes. The secret is derived from the volume's UUID and
//! the group name ([`Secret::derive`]), so a member of another group, or of
//! another volume, or a stranger, learns nothing and is refused.
//!
//! **Requests**: op (u8), block length (u64), key length (u16), key.
//! **Replies**: status (u8); for data, the length (u32), a CRC32C per
//! 32 KiB piece (u32 each), then the bytes. The CRCs are the ones stored
//! with the block in the disk cache, so the reader checks the bytes against
//! what was written, end to end; a file can go out with sendfile.
//! Integers are little-endian.

use std::io::{self, Read, Write};

use bytes::Bytes;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use tessera_blockcache::checksum::{check_pieces, Damage};

const MAGIC: &[u8; 4] = b"TCG1";
const NONCE: usize = 16;
const TAG: usize = 32;
/// Checksummed piece: the disk cache's, since a member sends the CRCs of a
/// block file's trailer as they are.
pub use tessera_blockcache::checksum::PIECE;
/// Longest key and largest block a peer may ask for.
pub const MAX_KEY: usize = 1024;
pub const MAX_BLOCK: u64 = 64 << 20;
const MAX_GROUP: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("the peer does not hold this group's secret")]
    Auth,
    #[error("the peer failed the request: {0}")]
    Remote(String),
    #[error("data from the peer failed its checksum (piece {0})")]
    Checksum(usize),
}

pub type Result<T> = std::result::Result<T, ProtoError>;

fn bad(what: impl Into<String>) -> ProtoError {
    ProtoError::Protocol(what.into())
}

/// The shared secret of one group of one volume, and the volume's UUID
/// that every block sum sent in the group is bound to.
#[derive(Clone)]
pub struct Secret(hmac::Key, std::sync::Arc<str>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// HMAC-SHA256 keyed by the volume's UUID over the group name.
    pub fn derive(volume_uuid: &str, group: &str) -> Secret {
        let base = hmac::Key::new(hmac::HMAC_SHA256, volume_uuid.as_bytes());
        let mut msg = b"tessera cache group\0".to_vec();
        msg.extend_from_slice(group.as_bytes());
        let derived = hmac::sign(&base, &msg);
        Secret(
            hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
            volume_uuid.into(),
        )
    }

    /// The tag the sums of block `key` carry in this volume (the same as on
    /// the members' cache disks, so a member sends its trailer's sums as
    /// they are).
    pub fn tag(&self, key: &str) -> u32 {
        tessera_blockcache::checksum::key_tag(&self.1, key)
    }

    fn sign(&self, role: &[u8], a: &[u8], b: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(role);
        ctx.update(a);
        ctx.update(b);
        ctx.sign()
    }

    fn verify(&self, role: &[u8], a: &[u8], b: &[u8], tag: &[u8]) -> bool {
        let mut msg = role.to_vec();
        msg.extend_from_slice(a);
        msg.extend_from_slice(b);
        hmac::verify(&self.0, &msg, tag).is_ok()
    }
}

fn nonce() -> Result<[u8; NONCE]> {
    let mut n = [0u8; NONCE];
    SystemRandom::new()
        .fill(&mut n)
        .map_err(|_| bad("no randomness for a nonce"))?;
    Ok(n)
}

fn read_array<const N: usize>(r: &mut impl Read) -> Result<[u8; N]> {
    let mut b = [0u8; N];
    r.read_exact(&mut b)?;
    Ok(b)
}

/// Open a connection as a client of `group`.
pub fn client_handshake(s: &mut (impl Read + Write), group: &str, secret: &Secret) -> Result<()> {
    let mine = nonce()?;
    let mut hello = MAGIC.to_vec();
    hello.push(group.len().min(MAX_GROUP) as u8);
    hello.extend_from_slice(&group.as_bytes()[..group.len().min(MAX_GROUP)]);
    hello.extend_from_slice(&mine);
    s.write_all(&hello)?;
    s.flush()?;
    let theirs: [u8; NONCE] = read_array(s)?;
    s.write_all(secret.sign(b"client", &mine, &theirs).as_ref())?;
    s.flush()?;
    let [ok] = read_array::<1>(s)?;
    if ok != 1 {
        return Err(ProtoError::Auth);
    }
    let proof: [u8; TAG] = read_array(s)?;
    if !secret.verify(b"server", &theirs, &mine, &proof) {
        return Err(ProtoError::Auth);
    }
    Ok(())
}

/// Accept a connection for `group`; an error means it was refused (the
/// caller logs and counts it). Returns the group name the client asked for.
pub fn server_handshake(s: &mut (impl Read + Write), secret: &Secret) -> Result<String> {
    let magic: [u8; 4] = read_array(s)?;
    if &magic != MAGIC {
        return Err(bad("not a cache group client"));
    }
    let [n] = read_array::<1>(s)?;
    let mut name = vec![0u8; n as usize];
    s.read_exact(&mut name)?;
    let asked = String::from_utf8_lossy(&name).into_owned();
    let theirs: [u8; NONCE] = read_array(s)?;
    let mine = nonce()?;
    s.write_all(&mine)?;
    s.flush()?;
    let tag: [u8; TAG] = read_array(s)?;
    if !secret.verify(b"client", &theirs, &mine, &tag) {
        let _ = s.write_all(&[0]);
        let _ = s.flush();
        return Err(ProtoError::Protocol(format!(
            "wrong secret (the client asked for group {asked:?})"
        )));
    }
    let mut reply = vec![1u8];
    reply.extend_from_slice(secret.sign(b"server", &mine, &theirs).as_ref());
    s.write_all(&reply)?;
    Ok(asked)
}

/// What a client asks of a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// The block's bytes; the member fetches it from object storage if it
    /// does not have it.
    Get = 1,
    /// The block's bytes only if cached (asking a previous owner).
    Peek = 2,
    /// Make sure the block is cached (fetch it if not); no bytes back.
    Warm = 3,
    /// Whether the block is cached.
    Check = 4,
    /// Drop the block from the member's cache.
    Evict = 5,
}

impl Op {
    fn from_u8(b: u8) -> Option<Op> {
        Some(match b {
            1 => Op::Get,
            2 => Op::Peek,
            3 => Op::Warm,
            4 => Op::Check,
            5 => Op::Evict,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub op: Op,
    pub len: u64,
    pub key: String,
}

pub fn write_request(w: &mut impl Write, req: &Request) -> Result<()> {
    let mut buf = Vec::with_capacity(11 + req.key.len());
    buf.push(req.op as u8);
    buf.extend_from_slice(&req.len.to_le_bytes());
    buf.extend_from_slice(&(req.key.len() as u16).to_le_bytes());
    buf.extend_from_slice(req.key.as_bytes());
    w.write_all(&buf)?;
    Ok(())
}

/// The next request, or None when the client closed the connection.
pub fn read_request(r: &mut impl Read) -> Result<Option<Request>> {
    let mut op = [0u8; 1];
    if r.read(&mut op)? == 0 {
        return Ok(None);
    }
    let op = Op::from_u8(op[0]).ok_or_else(|| bad(format!("unknown op {}", op[0])))?;
    let len = u64::from_le_bytes(read_array(r)?);
    let key_len = u16::from_le_bytes(read_array(r)?) as usize;
    if key_len > MAX_KEY || len > MAX_BLOCK {
        return Err(bad(format!(
            "key of {key_len} bytes or block of {len} bytes"
        )));
    }
    let mut key = vec![0u8; key_len];
    r.read_exact(&mut key)?;
    let key = String::from_utf8(key).map_err(|_| bad("key is not UTF-8"))?;
    Ok(Some(Request { op, len, key }))
}

const DATA: u8 = 0;
const MISSING: u8 = 1;
const DONE: u8 = 2;
const FAILED: u8 = 3;

/// The sum of each piece of `data`, bound to the block's tag.
pub use tessera_blockcache::checksum::piece_sums as sums_of;

/// The header of a data reply; the bytes follow (written by the caller,
/// perhaps with sendfile).
pub fn write_data_header(w: &mut impl Write, len: usize, sums: &[u32]) -> Result<()> {
    let mut buf = Vec::with_capacity(5 + 4 * sums.len());
    buf.push(DATA);
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    for s in sums {
        buf.extend_from_slice(&s.to_le_bytes());
    }
    w.write_all(&buf)?;
    Ok(())
}

pub fn write_missing(w: &mut impl Write) -> Result<()> {
    w.write_all(&[MISSING])?;
    Ok(())
}

pub fn write_done(w: &mut impl Write) -> Result<()> {
    w.write_all(&[DONE])?;
    Ok(())
}

pub fn write_failed(w: &mut impl Write, why: &str) -> Result<()> {
    let why = &why.as_bytes()[..why.len().min(4096)];
    let mut buf = vec![FAILED];
    buf.extend_from_slice(&(why.len() as u16).to_le_bytes());
    buf.extend_from_slice(why);
    w.write_all(&buf)?;
    Ok(())
}

/// Most bytes asked of the socket in one read: at least the client's
/// BufReader capacity (so reads bypass it), small enough that the pieces
/// just received are still in the CPU cache when they are checked.
const READ_STEP: usize = 256 << 10;

/// A reply as the client reads it.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Data(Bytes),
    Missing,
    Done,
}

/// Read a reply; data is checked piece by piece against its sums, which
/// must be bound to `tag` (the block asked for, see [`Secret::tag`]).
/// `deadline_check` is called between reads so a peer that trickles bytes
/// is cut off.
pub fn read_reply(
    r: &mut impl Read,
    expected_len: u64,
    tag: u32,
    mut deadline_check: impl FnMut() -> io::Result<()>,
) -> Result<Reply> {
    let [status] = read_array::<1>(r)?;
    match status {
        DATA => {}
        MISSING => return Ok(Reply::Missing),
        DONE => return Ok(Reply::Done),
        FAILED => {
            let n = u16::from_le_bytes(read_array(r)?) as usize;
            let mut why = vec![0u8; n];
            r.read_exact(&mut why)?;
            return Err(ProtoError::Remote(
                String::from_utf8_lossy(&why).into_owned(),
            ));
        }
        other => return Err(bad(format!("unknown reply status {other}"))),
    }
    let len = u32::from_le_bytes(read_array(r)?) as usize;
    if len as u64 != expected_len {
        return Err(bad(format!(
            "{len} bytes where {expected_len} were asked for"
        )));
    }
    let mut raw = vec![0u8; 4 * len.div_ceil(PIECE)];
    r.read_exact(&mut raw)?;
    let sums: Vec<u32> = raw
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    // Straight into a recycled page-aligned buffer: reads this large skip
    // the connection's BufReader, so the bytes are copied once, from the
    // socket, into memory that is not faulted in afresh for every block.
    // Each read's whole pieces are checked right away, while they are
    // still in the CPU cache (a 4 MiB block is not, once all of it is in).
    let mut buf = tessera_buf::AlignedBuf::with_capacity(len)?;
    let dest = buf.writable(len);
    let mut filled = 0;
    let mut checked = 0;
    while filled < len {
        deadline_check()?;
        let upto = (filled + READ_STEP).min(len);
        match r.read(&mut dest[filled..upto]) {
            Ok(0) => {
                return Err(ProtoError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection mid-block",
                )))
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
        // Whole pieces received so far (the last one may be short).
        let ready = if filled == len {
            len
        } else {
            filled - filled % PIECE
        };
        let first = checked / PIECE;
        if let Err(damage) = check_pieces(&dest[checked..ready], first, &sums[first..], tag) {
            return Err(ProtoError::Checksum(match damage {
                Damage::BadChecksum { piece } => piece,
                Damage::BadTrailer => first,
            }));
        }
        checked = ready;
    }
    buf.set_len(len);
    let data = buf.freeze();
    Ok(Reply::Data(data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn handshake_needs_the_same_secret_on_both_sides() {
        let secret = Secret::derive("uuid-1", "gpu");
        for (client_secret, ok) in [
            (Secret::derive("uuid-1", "gpu"), true),
            (Secret::derive("uuid-1", "other-group"), false),
            (Secret::derive("uuid-2", "gpu"), false),
        ] {
            let (mut a, mut b) = UnixStream::pair().expect("pair");
            let s = secret.clone();
            let server = std::thread::spawn(move || server_handshake(&mut b, &s));
            let client = client_handshake(&mut a, "gpu", &client_secret);
            let server = server.join().expect("server thread");
            assert_eq!(client.is_ok(), ok, "{client:?}");
            assert_eq!(server.is_ok(), ok, "{server:?}");
        }
    }

    #[test]
    fn requests_and_replies_round_trip_and_bad_data_is_caught() {
        let mut buf = Vec::new();
        let req = Request {
            op: Op::Get,
            len: 100_000,
            key: "vol/chunks/0/0/1_0_100000".into(),
        };
        write_request(&mut buf, &req).expect("write");
        assert_eq!(
            read_request(&mut &buf[..]).expect("read"),
            Some(req.clone())
        );
        assert_eq!(read_request(&mut &[][..]).expect("eof"), None);

        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut reply = Vec::new();
        let secret = Secret::derive("uuid-1", "gpu");
        let tag = secret.tag(&req.key);
        write_data_header(&mut reply, data.len(), &sums_of(&data, tag)).expect("header");
        reply.extend_from_slice(&data);
        let ok = || Ok(());
        assert_eq!(
            read_reply(&mut &reply[..], 100_000, tag, ok).expect("reply"),
            Reply::Data(Bytes::from(data.clone()))
        );
        // The same bytes sent for another block, or by a member of another
        // volume, are refused.
        let other_key = secret.tag("vol/chunks/0/0/2_0_100000");
        let other_volume = Secret::derive("uuid-2", "gpu").tag(&req.key);
        for wrong in [other_key, other_volume] {
            assert!(matches!(
                read_reply(&mut &reply[..], 100_000, wrong, ok),
                Err(ProtoError::Checksum(0))
            ));
        }
        let flip = reply.len() - 40_000;
        reply[flip] ^= 1;
        assert!(matches!(
            read_reply(&mut &reply[..], 100_000, tag, ok),
            Err(ProtoError::Checksum(1))
        ));
        // Delivered a few KiB at a time, pieces are checked as they complete,
        // the short last one included.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(self.0.len()).min(7_000);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        reply[flip] ^= 1;
        assert_eq!(
            read_reply(&mut Trickle(&reply), 100_000, tag, ok).expect("reply"),
            Reply::Data(Bytes::from(data.clone()))
        );
        let last = reply.len() - 10;
        reply[last] ^= 1;
        assert!(matches!(
            read_reply(&mut Trickle(&reply), 100_000, tag, ok),
            Err(ProtoError::Checksum(3))
        ));
        let mut failed = Vec::new();
        write_failed(&mut failed, "object storage said no").expect("failed");
        assert!(matches!(
            read_reply(&mut &failed[..], 1, tag, ok),
            Err(ProtoError::Remote(m)) if m == "object storage said no"
        ));
    }
}
