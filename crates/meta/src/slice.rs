//! Slice records: what a chunk is made of.
//!
//! A chunk value is the concatenation of fixed-size records, oldest first. A
//! later record wins where records overlap; bytes no record covers are a hole
//! and read as zeros. An overwrite appends; nothing is rewritten in place
//! except by compaction.

use crate::{MetaError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SliceKind {
    /// Data Tessera wrote, stored as blocks; id 0 is an explicit hole.
    Internal = 0,
    /// A range of an object that already existed in a bucket (import).
    External = 1,
    /// Zeros that fallocate reserved: read as a hole (no object behind
    /// them), but counted as stored, so writing into the range does not
    /// grow the file's allocation.
    Allocated = 2,
}

/// One record: bytes `[off, off + len)` of slice `id` (of total `size`)
/// appear at `pos` inside the chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceRecord {
    pub kind: SliceKind,
    pub pos: u32,
    pub id: u64,
    pub size: u64,
    pub off: u64,
    pub len: u32,
}

pub const RECORD_LEN: usize = 33;

impl SliceRecord {
    pub fn hole(pos: u32, len: u32) -> Self {
        SliceRecord {
            kind: SliceKind::Internal,
            pos,
            id: 0,
            size: u64::from(len),
            off: 0,
            len,
        }
    }

    /// Zeros fallocate reserved over `[pos, pos + len)`.
    pub fn allocated(pos: u32, len: u32) -> Self {
        SliceRecord {
            kind: SliceKind::Allocated,
            ..Self::hole(pos, len)
        }
    }

    /// Reads as zeros, with no object behind it (an explicit hole or an
    /// allocated range).
    pub fn is_hole(&self) -> bool {
        (self.kind == SliceKind::Internal && self.id == 0) || self.kind == SliceKind::Allocated
    }

    /// Counts towards the file's stored bytes (`st_blocks`): data, and
    /// the zeros fallocate reserved.
    pub fn holds_space(&self) -> bool {
        !self.is_hole() || self.kind == SliceKind::Allocated
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(self.kind as u8);
        out.extend_from_slice(&self.pos.to_be_bytes());
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&self.off.to_be_bytes());
        out.extend_from_slice(&self.len.to_be_bytes());
    }

    pub fn decode_all(b: &[u8]) -> Result<Vec<SliceRecord>> {
        if b.len() % RECORD_LEN != 0 {
            return Err(MetaError::Corrupt(format!(
                "chunk value of {} bytes is not a whole number of slice records",
                b.len()
            )));
        }
        b.chunks_exact(RECORD_LEN)
            .map(|r| {
                let kind = match r[0] {
                    0 => SliceKind::Internal,
                    1 => SliceKind::External,
                    2 => SliceKind::Allocated,
                    k => return Err(MetaError::Corrupt(format!("unknown slice kind {k}"))),
                };
                let u32_at = |i: usize| u32::from_be_bytes([r[i], r[i + 1], r[i + 2], r[i + 3]]);
                let u64_at = |i: usize| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(&r[i..i + 8]);
                    u64::from_be_bytes(a)
                };
                Ok(SliceRecord {
                    kind,
                    pos: u32_at(1),
                    id: u64_at(5),
                    size: u64_at(13),
                    off: u64_at(21),
                    len: u32_at(29),
                })
            })
            .collect()
    }

    pub fn encode_all(records: &[SliceRecord]) -> Vec<u8> {
        let mut out = Vec::with_capacity(records.len() * RECORD_LEN);
        for r in records {
            r.encode_into(&mut out);
        }
        out
    }
}

/// A piece of the chunk's visible bytes: `[pos, pos + len)` of the chunk come
/// from bytes starting at `off` of slice `record.id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VisibleSegment {
    pub pos: u32,
    pub len: u32,
    /// Offset inside the slice.
    pub off: u64,
    pub record: SliceRecord,
}

impl VisibleSegment {
    pub fn end(&self) -> u32 {
        self.pos + self.len
    }
}

/// Resolve overlapping records into non-overlapping segments, sorted by
/// position. Gaps between segments are holes.
/// Bytes of `[a, b)` of a chunk that its records (oldest first) hold data
/// for: the newest record covering a byte decides, holes and bytes no
/// record covers hold none (see [`visible_segments_in`]).
pub fn data_bytes(records: &[SliceRecord], a: u32, b: u32) -> u64 {
    visible_segments_in(records, a, b)
        .iter()
        .filter(|s| s.record.holds_space())
        .map(|s| u64::from(s.len))
        .sum()
}

/// The visible segments of a chunk within `[a, b)`, clipped to it and in
/// position order: what `visible_segments` gives there, found by walking
/// the records newest first over the part of the range not yet decided
/// (about O(n log n), and it stops as soon as the range is decided). Bytes
/// no record covers have no segment. The read path plans every read with
/// it, and every commit counts the stored bytes of its range with it: a
/// chunk fragmented into thousands of records (random writes racing mmap
/// writes) made both quadratic with `visible_segments`.
pub fn visible_segments_in(records: &[SliceRecord], a: u32, b: u32) -> Vec<VisibleSegment> {
    // The common chunk, one record: no interval map on the read path.
    if let [r] = records {
        let (x, y) = (r.pos.max(a), (r.pos + r.len).min(b));
        if x >= y {
            return Vec::new();
        }
        return vec![VisibleSegment {
            pos: x,
            len: y - x,
            off: r.off + u64::from(x - r.pos),
            record: *r,
        }];
    }
    let mut undecided = std::collections::BTreeMap::new();
    if a < b {
        undecided.insert(a, b);
    }
    let mut out = Vec::new();
    for r in records.iter().rev() {
        if undecided.is_empty() {
            break;
        }
        if r.len == 0 {
            continue;
        }
        let (rs, re) = (r.pos, r.pos + r.len);
        let hit: Vec<(u32, u32)> = undecided
            .range(..re)
            .rev()
            .take_while(|(_, &e)| e > rs)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in hit {
            undecided.remove(&s);
            let (x, y) = (s.max(rs), e.min(re));
            out.push(VisibleSegment {
                pos: x,
                len: y - x,
                off: r.off + u64::from(x - r.pos),
                record: *r,
            });
            if s < x {
                undecided.insert(s, x);
            }
            if y < e {
                undecided.insert(y, e);
            }
        }
    }
    out.sort_unstable_by_key(|seg| seg.pos);
    out
}

pub fn visible_segments(records: &[SliceRecord]) -> Vec<VisibleSegment> {
    let mut segs: Vec<VisibleSegment> = Vec::new();
    for r in records {
        if r.len == 0 {
            continue;
        }
        let (start, end) = (r.pos, r.pos + r.len);
        let mut next = Vec::with_capacity(segs.len() + 2);
        for s in segs.drain(..) {
            if s.end() <= start || s.pos >= end {
                next.push(s);
                continue;
            }
            if s.pos < start {
                next.push(VisibleSegment {
                    len: start - s.pos,
                    ..s
                });
            }
            if s.end() > end {
                let cut = end - s.pos;
                next.push(VisibleSegment {
                    pos: end,
                    len: s.end() - end,
                    off: s.off + u64::from(cut),
                    record: s.record,
                });
            }
        }
        next.push(VisibleSegment {
            pos: start,
            len: r.len,
            off: r.off,
            record: *r,
        });
        next.sort_by_key(|s| s.pos);
        segs = next;
    }
    segs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(pos: u32, id: u64, len: u32) -> SliceRecord {
        SliceRecord {
            kind: SliceKind::Internal,
            pos,
            id,
            size: u64::from(len),
            off: 0,
            len,
        }
    }

    #[test]
    fn later_records_win() {
        let segs = visible_segments(&[rec(0, 1, 100), rec(10, 2, 20), rec(90, 3, 20)]);
        let view: Vec<_> = segs
            .iter()
            .map(|s| (s.pos, s.len, s.record.id, s.off))
            .collect();
        assert_eq!(
            view,
            vec![
                (0, 10, 1, 0),
                (10, 20, 2, 0),
                (30, 60, 1, 30),
                (90, 20, 3, 0)
            ]
        );
    }

    #[test]
    fn records_round_trip() {
        let r = vec![rec(5, 77, 9), SliceRecord::hole(3, 4)];
        assert_eq!(
            SliceRecord::decode_all(&SliceRecord::encode_all(&r)).expect("decode"),
            r
        );
        assert!(SliceRecord::decode_all(&[0u8; 5]).is_err());
    }

    /// Random record lists (data and holes, overlapping) and a range in
    /// the chunk, from a seeded xorshift: `cases` of them.
    fn random_chunks(seed: u64, cases: usize) -> Vec<(Vec<SliceRecord>, u32, u32)> {
        let mut x = seed;
        let mut next = move |n: u32| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % u64::from(n)) as u32
        };
        (0..cases)
            .map(|_| {
                let mut records = Vec::new();
                for _ in 0..(1 + next(40)) {
                    let pos = next(10_000);
                    let len = 1 + next(3_000);
                    records.push(if next(4) == 0 {
                        SliceRecord::hole(pos, len)
                    } else {
                        SliceRecord {
                            kind: SliceKind::Internal,
                            pos,
                            id: 1 + u64::from(next(1000)),
                            size: 20_000,
                            off: u64::from(next(5_000)),
                            len,
                        }
                    });
                }
                let (a, b) = (next(13_000), next(13_000));
                (records, a.min(b), a.max(b))
            })
            .collect()
    }

    #[test]
    fn data_bytes_agree_with_the_visible_segments() {
        for (records, a, b) in random_chunks(12345, 300) {
            let want: u64 = visible_segments(&records)
                .iter()
                .filter(|s| !s.record.is_hole())
                .map(|s| u64::from(s.end().min(b).saturating_sub(s.pos.max(a))))
                .sum();
            assert_eq!(data_bytes(&records, a, b), want, "{records:?} [{a}, {b})");
        }
    }

    #[test]
    fn segments_in_a_range_agree_with_the_whole_chunk_clipped() {
        for (records, a, b) in random_chunks(777, 300) {
            // The whole chunk's segments, clipped to [a, b), merged where
            // one record's pieces meet (the range walk may cut a record's
            // visible run where an older record's interval ended).
            let bytes = |segs: &[VisibleSegment]| -> Vec<(u32, u64, u64)> {
                let mut v = Vec::new();
                for s in segs {
                    for p in s.pos.max(a)..s.end().min(b) {
                        v.push((p, s.record.id, s.off + u64::from(p - s.pos)));
                    }
                }
                v
            };
            assert_eq!(
                bytes(&visible_segments_in(&records, a, b)),
                bytes(&visible_segments(&records)),
                "{records:?} [{a}, {b})"
            );
        }
    }
}
