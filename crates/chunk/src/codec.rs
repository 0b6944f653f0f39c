//! Block body encoding: raw, lz4 or zstd, as the volume settings say.

use bytes::Bytes;
use tessera_meta::Compression;

pub fn encode(c: Compression, data: &Bytes) -> Result<Bytes, String> {
    match c {
        Compression::None => Ok(data.clone()),
        Compression::Lz4 => Ok(Bytes::from(lz4_flex::block::compress(data))),
        Compression::Zstd => zstd::bulk::compress(data, 1)
            .map(Bytes::from)
            .map_err(|e| format!("zstd: {e}")),
    }
}

pub fn decode(c: Compression, raw: Bytes, len: usize) -> Result<Bytes, String> {
    match c {
        Compression::None => Ok(raw),
        Compression::Lz4 => lz4_flex::block::decompress(&raw, len)
            .map(Bytes::from)
            .map_err(|e| format!("lz4: {e}")),
        Compression::Zstd => zstd::bulk::decompress(&raw, len)
            .map(Bytes::from)
            .map_err(|e| format!("zstd: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_round_trips() {
        let data = Bytes::from((0..100_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        for c in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let enc = encode(c, &data).expect("encode");
            if c != Compression::None {
                assert!(
                    enc.len() < data.len(),
                    "{c:?} compresses a repetitive block"
                );
            }
            assert_eq!(decode(c, enc, data.len()).expect("decode"), data);
        }
        assert!(decode(Compression::Lz4, Bytes::from_static(b"junk"), 10).is_err());
    }
}
