//! The on-disk form of a cached block: the bytes, then a CRC32C of every
//! 32 KiB piece, then the data length and a magic tag.
//!
//! ```text
//! [data][crc32c u32 LE × ceil(len / 32 KiB)][len u32 LE]["TSB1"]
//! ```
//!
//! A trailer rather than a header keeps the data at offset 0, so a range of
//! a block can be read and checked piece by piece without reading the rest.

use bytes::Bytes;

pub const PIECE: usize = 32 << 10;
const MAGIC: &[u8; 4] = b"TSB1";
const TAIL: usize = 8;

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

/// The CRC32C of each `PIECE` of `data`: what the trailer stores, and
/// what a cache-group member sends with a block (from the trailer when the
/// block is on disk), so both use this one piece size.
pub fn piece_sums(data: &[u8]) -> Vec<u32> {
    data.chunks(PIECE).map(crc32c).collect()
}

/// The trailer that follows a block's data on disk.
pub fn trailer(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(stored_len(data.len()) - data.len());
    for sum in piece_sums(data) {
        out.extend_from_slice(&sum.to_le_bytes());
    }
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(MAGIC);
    out
}

/// Encode a block with its checksums.
pub fn seal(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(stored_len(data.len()));
    out.extend_from_slice(data);
    out.extend_from_slice(&trailer(data));
    out
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
    if &tail[4..] != MAGIC {
        return Err(Damage::BadTrailer);
    }
    let len = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]) as usize;
    if stored_len(len) != size {
        return Err(Damage::BadTrailer);
    }
    let mut raw = vec![0u8; 4 * pieces(len)];
    file.read_exact_at(&mut raw, len as u64)
        .map_err(|_| Damage::BadTrailer)?;
    let sums = raw
        .chunks(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((len, sums))
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
    if stored.len() < TAIL || &stored[stored.len() - 4..] != MAGIC {
        return Err(Damage::BadTrailer);
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(&stored[stored.len() - TAIL..stored.len() - 4]);
    let len = u32::from_le_bytes(len) as usize;
    if stored_len(len) != stored.len() {
        return Err(Damage::BadTrailer);
    }
    Ok(len)
}

/// Check a stored block and return its data (no copy: the buffer is cut).
pub fn open(stored: Vec<u8>) -> Result<Bytes, Damage> {
    open_bytes(Bytes::from(stored))
}

/// [`open`] for a buffer already shared.
pub fn open_bytes(stored: Bytes) -> Result<Bytes, Damage> {
    let len = data_len(&stored)?;
    let (data, sums) = stored.split_at(len);
    for (i, piece) in data.chunks(PIECE).enumerate() {
        let mut want = [0u8; 4];
        want.copy_from_slice(&sums[4 * i..4 * i + 4]);
        if crc32c(piece) != u32::from_le_bytes(want) {
            return Err(Damage::BadChecksum { piece: i });
        }
    }
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
            let stored = seal(&data);
            assert_eq!(stored.len(), stored_len(len));
            assert_eq!(open(stored.clone()).as_deref(), Ok(&data[..]));
            if len > PIECE {
                let mut bad = stored.clone();
                bad[PIECE] ^= 0x10;
                assert_eq!(open(bad), Err(Damage::BadChecksum { piece: 1 }));
            }
            let mut cut = stored;
            cut.truncate(cut.len() - 1);
            assert_eq!(open(cut), Err(Damage::BadTrailer));
        }
    }
}
