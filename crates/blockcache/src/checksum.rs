//! The sealed form of a block, on a cache disk and in object storage alike:
//! the bytes, then a CRC32C of every 32 KiB piece, then the data length and
//! a magic tag.
//!
//! ```text
//! [data][sum u32 LE × ceil(len / 32 KiB)][len u32 LE]["TSB2"]
//! ```
//!
//! A trailer rather than a header keeps the data at offset 0, so a range of
//! a block can be read and checked piece by piece without reading the rest.
//!
//! Each stored sum is the piece's CRC32C mixed with a *tag* of the block's
//! identity (the volume's UUID and the block key, see [`key_tag`]) and the
//! piece's index. So the sums bind the bytes to the block they belong to:
//! two cache files swapped on disk, a block of another volume under the
//! same key, or pieces moved inside a block all fail the check as surely
//! as a flipped bit does.

use bytes::Bytes;

pub const PIECE: usize = 32 << 10;
const MAGIC: &[u8; 4] = b"TSB2";
/// The trailer's tail: the data length and the magic tag.
pub const TAIL: usize = 8;

fn pieces(len: usize) -> usize {
    len.div_ceil(PIECE)
}

/// Bytes a block of `len` data bytes takes on disk.
pub fn stored_len(len: usize) -> usize {
    len + 4 * pieces(len) + TAIL
}

/// CRC32C (Castagnoli), the checksum of every cached piece and of the
/// blocks peers send. Each read of a cached or received block checks all
/// of its bytes, so this runs at memory speed on every hit: the folding
/// implementation (carry-less multiply, 512-bit where the CPU has it)
/// does a 32 KiB piece about four times faster than the CRC32 instruction
/// alone.
pub fn crc32c(data: &[u8]) -> u32 {
    crc_fast::crc32_iscsi(data)
}

/// The identity a block's sums are bound to: `scope` is the volume's UUID
/// (so two volumes, or a volume formatted again under the same name, never
/// vouch for each other's blocks) and `key` the block's key.
pub fn key_tag(scope: &str, key: &str) -> u32 {
    let mut named = Vec::with_capacity(scope.len() + 1 + key.len());
    named.extend_from_slice(scope.as_bytes());
    named.push(0);
    named.extend_from_slice(key.as_bytes());
    crc32c(&named)
}

/// What the sum of piece `i` of a block tagged `tag` is mixed with.
fn piece_mix(tag: u32, i: usize) -> u32 {
    tag ^ (i as u32).wrapping_add(1).wrapping_mul(0x9e37_79b9)
}

/// The stored sum of piece `i` (`piece`) of the block tagged `tag`.
pub fn piece_sum(piece: &[u8], tag: u32, i: usize) -> u32 {
    crc32c(piece) ^ piece_mix(tag, i)
}

/// The sum of each `PIECE` of `data`: what the trailer stores, and what a
/// cache-group member sends with a block (from the trailer when the block
/// is on disk), so both use this one piece size.
pub fn piece_sums(data: &[u8], tag: u32) -> Vec<u32> {
    data.chunks(PIECE)
        .enumerate()
        .map(|(i, p)| piece_sum(p, tag, i))
        .collect()
}

/// Check `data`, which starts at piece `first` of the block tagged `tag`,
/// against the sums of its pieces (`sums[0]` is piece `first`'s). The last
/// piece may be short only where the block ends.
pub fn check_pieces(data: &[u8], first: usize, sums: &[u32], tag: u32) -> Result<(), Damage> {
    if data.len().div_ceil(PIECE) > sums.len() {
        return Err(Damage::BadTrailer);
    }
    for (k, piece) in data.chunks(PIECE).enumerate() {
        if piece_sum(piece, tag, first + k) != sums[k] {
            return Err(Damage::BadChecksum { piece: first + k });
        }
    }
    Ok(())
}

/// The trailer that follows a block's data.
pub fn trailer(data: &[u8], tag: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(stored_len(data.len()) - data.len());
    for sum in piece_sums(data, tag) {
        out.extend_from_slice(&sum.to_le_bytes());
    }
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(MAGIC);
    out
}

/// Encode a block with its sums.
pub fn seal(data: &[u8], tag: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(stored_len(data.len()));
    out.extend_from_slice(data);
    out.extend_from_slice(&trailer(data, tag));
    out
}

/// Where, in a sealed block of `len` data bytes, the sums of pieces
/// `first..first + count` are stored (for reading a range of a sealed
/// object: its pieces and their sums).
pub fn sums_range(len: usize, first: usize, count: usize) -> std::ops::Range<u64> {
    let start = (len + 4 * first) as u64;
    start..start + 4 * count as u64
}

/// Sums stored as little-endian u32s.
pub fn decode_sums(raw: &[u8]) -> Vec<u32> {
    raw.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The data length and the piece CRCs of a stored block file, read from
/// its trailer alone (the data is not read: it may be sent as it is, with
/// these CRCs, for the receiver to check).
pub fn read_trailer(file: &std::fs::File) -> Result<(usize, Vec<u32>), Damage> {
    use std::os::unix::fs::FileExt;
    let size = file.metadata().map_err(|_| Damage::BadTrailer)?.len() as usize;
    if size < TAIL {
        return Err(Damage::BadTrailer);
    }
    let mut tail = [0u8; TAIL];
    file.read_exact_at(&mut tail, (size - TAIL) as u64)
        .map_err(|_| Damage::BadTrailer)?;
    let len = tail_len(&tail).ok_or(Damage::BadTrailer)?;
    if stored_len(len) != size {
        return Err(Damage::BadTrailer);
    }
    let mut raw = vec![0u8; 4 * pieces(len)];
    file.read_exact_at(&mut raw, len as u64)
        .map_err(|_| Damage::BadTrailer)?;
    Ok((len, decode_sums(&raw)))
}

/// Why a stored block was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Damage {
    BadTrailer,
    BadChecksum { piece: usize },
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::BadTrailer => write!(f, "missing or malformed trailer"),
            Damage::BadChecksum { piece } => {
                write!(f, "CRC32C mismatch in 32 KiB piece {piece}")
            }
        }
    }
}

/// Length of the data in a stored block, from its trailer.
pub fn data_len(stored: &[u8]) -> Result<usize, Damage> {
    let len = tail_len(stored).ok_or(Damage::BadTrailer)?;
    if stored_len(len) != stored.len() {
        return Err(Damage::BadTrailer);
    }
    Ok(len)
}

/// The data length that the last bytes of `stored` (a stored block, or
/// its end) give, if they are a trailer's: the length, then the magic tag.
pub fn tail_len(stored: &[u8]) -> Option<usize> {
    let tail = stored.get(stored.len().checked_sub(TAIL)?..)?;
    if &tail[4..] != MAGIC {
        return None;
    }
    Some(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]) as usize)
}

/// Check a sealed block of the identity `tag` and return its data (no
/// copy: the buffer is cut).
pub fn open(stored: Vec<u8>, tag: u32) -> Result<Bytes, Damage> {
    open_bytes(Bytes::from(stored), tag)
}

/// [`open`] for a buffer already shared.
pub fn open_bytes(stored: Bytes, tag: u32) -> Result<Bytes, Damage> {
    let len = data_len(&stored)?;
    let (data, sums) = stored.split_at(len);
    check_pieces(data, 0, &decode_sums(sums), tag)?;
    Ok(stored.slice(..len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_is_castagnoli_and_stable_across_piece_boundaries() {
        // The catalogue's check value: trailers written by any version
        // (and peers running one) must agree on every sum.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(b""), 0);
        // Long inputs take the folding path; a bitwise reference agrees.
        let data: Vec<u8> = (0..100_003u32).map(|i| (i * 31 + i / 7) as u8).collect();
        let mut reference = !0u32;
        for &b in &data {
            reference ^= u32::from(b);
            for _ in 0..8 {
                reference = if reference & 1 == 1 {
                    (reference >> 1) ^ 0x82f6_3b78
                } else {
                    reference >> 1
                };
            }
        }
        assert_eq!(crc32c(&data), !reference);
    }

    #[test]
    fn round_trips_and_catches_flipped_bits() {
        for len in [0, 1, PIECE - 1, PIECE, PIECE + 1, 3 * PIECE + 17] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let stored = seal(&data, 7);
            assert_eq!(stored.len(), stored_len(len));
            assert_eq!(open(stored.clone(), 7).as_deref(), Ok(&data[..]));
            if len > PIECE {
                let mut bad = stored.clone();
                bad[PIECE] ^= 0x10;
                assert_eq!(open(bad, 7), Err(Damage::BadChecksum { piece: 1 }));
            }
            let mut cut = stored;
            cut.truncate(cut.len() - 1);
            assert_eq!(open(cut, 7), Err(Damage::BadTrailer));
        }
    }

    #[test]
    fn sums_bind_the_bytes_to_their_block() {
        let data: Vec<u8> = (0..3 * PIECE).map(|i| (i % 251) as u8).collect();
        let a = key_tag("uuid-a", "vol/chunks/0/0/1_0_98304");
        let b = key_tag("uuid-a", "vol/chunks/0/0/2_0_98304");
        let other_volume = key_tag("uuid-b", "vol/chunks/0/0/1_0_98304");
        assert!(a != b && a != other_volume);
        let stored = seal(&data, a);
        assert!(open(stored.clone(), a).is_ok());
        // The same bytes under another key, or of another volume, are refused.
        assert_eq!(
            open(stored.clone(), b),
            Err(Damage::BadChecksum { piece: 0 })
        );
        assert!(open(stored, other_volume).is_err());
        // Pieces swapped inside a block are refused too, even though each
        // piece's own CRC is intact.
        let same: Vec<u8> = [vec![1u8; PIECE], vec![2u8; PIECE]].concat();
        let mut swapped = seal(&same, a);
        swapped[..PIECE].fill(2);
        swapped[PIECE..2 * PIECE].fill(1);
        assert!(open(swapped, a).is_err());
    }

    #[test]
    fn a_range_of_pieces_is_checked_with_its_stored_sums() {
        let data: Vec<u8> = (0..3 * PIECE + 100).map(|i| (i * 7 % 253) as u8).collect();
        let tag = key_tag("u", "k");
        let stored = seal(&data, tag);
        let r = sums_range(data.len(), 1, 3);
        let sums = decode_sums(&stored[r.start as usize..r.end as usize]);
        assert_eq!(check_pieces(&data[PIECE..], 1, &sums, tag), Ok(()));
        let mut bad = data[PIECE..].to_vec();
        bad[2 * PIECE + 5] ^= 1;
        assert_eq!(
            check_pieces(&bad, 1, &sums, tag),
            Err(Damage::BadChecksum { piece: 3 })
        );
        assert_eq!(
            check_pieces(&data[PIECE..], 1, &sums[..2], tag),
            Err(Damage::BadTrailer),
            "fewer sums than pieces"
        );
    }
}
