//! Tests of the disk tier: quotas, eviction, pins, staging, damage.

use super::*;

fn config(dirs: Vec<PathBuf>, capacity: u64) -> DiskCacheConfig {
    DiskCacheConfig {
        dirs,
        capacity,
        free_space_ratio: 0.0,
        expire: None,
        eviction: Eviction::TwoRandom,
    }
}

fn block(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
}

#[test]
fn local_copies_count_against_the_quota_and_survive_a_restart() {
    let d = tempfile::tempdir().unwrap();
    let m = Arc::new(Metrics::new());
    let stored = checksum::stored_len(1000) as u64;
    let cap = 10 * stored;
    let c = DiskCache::open(config(vec![d.path().to_path_buf()], cap), "vol", m.clone()).unwrap();
    for i in 0..10u8 {
        c.insert(&format!("vol/chunks/0/0/{i}_0_1000"), &block(i, 1000))
            .unwrap();
    }
    assert_eq!(c.len(), 10);
    // A copy the size of four blocks: four blocks give way to it.
    let copy = 4 * stored;
    c.copy_fits(copy).unwrap();
    let dir = c.copies_root().join("7");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("0badc0de-4"), vec![0u8; copy as usize]).unwrap();
    c.add_copy(copy);
    assert_eq!((c.len(), c.copies()), (6, copy));
    assert!(c.used() + c.copies() <= cap);
    // One larger than what the copies may still take is refused.
    let e = c.copy_fits(cap - copy + 1).unwrap_err();
    assert!(e.to_string().contains("--cache-size"), "{e}");
    // A restart finds the copy again (a temporary file is not counted).
    std::fs::write(dir.join(".0badc0de-4.tmp.1"), vec![0u8; 100]).unwrap();
    drop(c);
    let c = DiskCache::open(config(vec![d.path().to_path_buf()], cap), "vol", m).unwrap();
    assert_eq!((c.len(), c.copies()), (6, copy));
    c.release_copy(copy);
    assert_eq!(c.copies(), 0);
}

#[test]
fn below_the_free_space_floor_blocks_are_not_cached_and_nothing_breaks() {
    let d = tempfile::tempdir().unwrap();
    let m = Arc::new(Metrics::new());
    let mut cfg = config(vec![d.path().to_path_buf()], 1 << 30);
    // No disk has every block free: the floor can never be met.
    cfg.free_space_ratio = 1.0;
    let c = DiskCache::open(cfg, "vol", m.clone()).unwrap();
    c.insert("vol/chunks/0/0/1_0_1000", &block(1, 1000))
        .unwrap();
    c.insert("vol/chunks/0/0/2_0_1000", &block(2, 1000))
        .unwrap();
    assert!(!c.contains("vol/chunks/0/0/1_0_1000"));
    assert_eq!(c.len(), 0);
    // The same directory with no floor caches as usual.
    let c = DiskCache::open(config(vec![d.path().to_path_buf()], 1 << 30), "vol", m).unwrap();
    c.insert("vol/chunks/0/0/1_0_1000", &block(1, 1000))
        .unwrap();
    assert!(c.contains("vol/chunks/0/0/1_0_1000"));
}

#[test]
fn survives_restart_and_spreads_over_dirs() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let dirs = vec![a.path().to_path_buf(), b.path().to_path_buf()];
    let m = Arc::new(Metrics::new());
    let c = DiskCache::open(config(dirs.clone(), 1 << 30), "vol", m.clone()).unwrap();
    for i in 0..20u8 {
        c.insert(&format!("vol/chunks/0/0/{i}_0_1000"), &block(i, 1000))
            .unwrap();
    }
    let per_dir: Vec<usize> = dirs
        .iter()
        .map(|d| {
            let mut n = 0;
            walk(&d.join("vol/raw"), &mut |_, _| n += 1);
            n
        })
        .collect();
    assert!(per_dir.iter().all(|&n| n > 0), "blocks spread: {per_dir:?}");
    drop(c);
    let c = DiskCache::open(config(dirs, 1 << 30), "vol", m).unwrap();
    assert_eq!(c.len(), 20);
    assert_eq!(
        c.get("vol/chunks/0/0/7_0_1000").as_deref(),
        Some(&block(7, 1000)[..])
    );
}

#[test]
fn corrupt_block_is_dropped_and_counted() {
    let d = tempfile::tempdir().unwrap();
    let m = Arc::new(Metrics::new());
    let c = DiskCache::open(config(vec![d.path().into()], 1 << 30), "v", m.clone()).unwrap();
    c.insert("k/1", &block(1, 100_000)).unwrap();
    let path = c.path_of("k/1").unwrap();
    let mut raw = std::fs::read(&path).unwrap();
    raw[50_000] ^= 1;
    std::fs::write(&path, raw).unwrap();
    assert!(c.get("k/1").is_none());
    assert_eq!(m.corrupt_blocks.get(), 1);
    assert!(!path.exists() && c.is_empty());
}

#[test]
fn page_aligned_blocks_round_trip_and_are_checked() {
    // Aligned blocks take the O_DIRECT write path where the file system
    // has it; the trailer, the CRCs and the corruption check are the same.
    let d = tempfile::tempdir().unwrap();
    let m = Arc::new(Metrics::new());
    let c = DiskCache::open(config(vec![d.path().into()], 1 << 30), "v", m.clone()).unwrap();
    for (i, len) in [4096usize, 1 << 20, (1 << 20) + 1234]
        .into_iter()
        .enumerate()
    {
        let data = tessera_buf::AlignedBuf::copy_of(&block(i as u8, len)[..])
            .unwrap()
            .freeze();
        assert!(tessera_buf::is_aligned(&data));
        let key = format!("k/{len}");
        c.insert(&key, &data).unwrap();
        let path = c.path_of(&key).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len() as usize,
            checksum::stored_len(len)
        );
        assert_eq!(c.get(&key).as_deref(), Some(&data[..]));
    }
    let path = c.path_of("k/1048576").unwrap();
    let mut raw = std::fs::read(&path).unwrap();
    raw[700_000] ^= 1;
    std::fs::write(&path, raw).unwrap();
    assert!(c.get("k/1048576").is_none());
    assert_eq!(m.corrupt_blocks.get(), 1);
}

#[test]
fn sealed_files_give_their_length_and_crcs() {
    let d = tempfile::tempdir().unwrap();
    let c = DiskCache::open(
        config(vec![d.path().into()], 1 << 30),
        "v",
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let data = block(3, 100_000);
    c.insert("k/1", &data).unwrap();
    let (file, len, sums) = c.open_sealed("k/1").expect("cached");
    assert_eq!(len, 100_000);
    assert_eq!(
        sums,
        checksum::piece_sums(&data, checksum::key_tag("v", "k/1"))
    );
    drop(file);
    let path = c.path_of("k/1").unwrap();
    std::fs::write(&path, b"short").unwrap();
    assert!(c.open_sealed("k/1").is_none(), "a bad trailer is refused");
    assert!(c.is_empty());
    assert!(c.open_sealed("never/cached").is_none());
}

#[test]
fn files_swapped_on_disk_are_refused_not_served() {
    let d = tempfile::tempdir().unwrap();
    let m = Arc::new(Metrics::new());
    let c = DiskCache::open(config(vec![d.path().into()], 1 << 30), "v", m.clone()).unwrap();
    let (a, b) = (block(1, 70_000), block(2, 70_000));
    c.insert("vol/chunks/0/0/1_0_70000", &a).unwrap();
    c.insert("vol/chunks/0/0/2_0_70000", &b).unwrap();
    let pa = c.path_of("vol/chunks/0/0/1_0_70000").unwrap();
    let pb = c.path_of("vol/chunks/0/0/2_0_70000").unwrap();
    let tmp = pa.with_extension("swap");
    std::fs::rename(&pa, &tmp).unwrap();
    std::fs::rename(&pb, &pa).unwrap();
    std::fs::rename(&tmp, &pb).unwrap();
    assert!(c.get("vol/chunks/0/0/1_0_70000").is_none());
    assert!(c.get("vol/chunks/0/0/2_0_70000").is_none());
    assert_eq!(m.corrupt_blocks.get(), 2);
    // A cache directory of another volume holding the same keys is
    // never read: the directory is the UUID's.
    let other = DiskCache::open(config(vec![d.path().into()], 1 << 30), "w", m).unwrap();
    other.insert("vol/chunks/0/0/1_0_70000", &b).unwrap();
    assert!(c.get("vol/chunks/0/0/1_0_70000").is_none());
    c.insert("vol/chunks/0/0/1_0_70000", &a).unwrap();
    assert_eq!(c.get("vol/chunks/0/0/1_0_70000").as_deref(), Some(&a[..]));
    assert_eq!(
        other.get("vol/chunks/0/0/1_0_70000").as_deref(),
        Some(&b[..])
    );
}

#[test]
fn stays_under_quota() {
    let d = tempfile::tempdir().unwrap();
    let cap = 10 * checksum::stored_len(4096) as u64;
    let c = DiskCache::open(
        config(vec![d.path().into()], cap),
        "v",
        Arc::new(Metrics::new()),
    )
    .unwrap();
    for i in 0..100u8 {
        c.insert(&format!("k/{i}"), &block(i, 4096)).unwrap();
        assert!(c.used() <= cap);
    }
    assert_eq!(c.len(), 10);
    let mut on_disk = 0u64;
    walk(&d.path().join("v/raw"), &mut |_, m| on_disk += m.len());
    assert!(on_disk <= cap, "{on_disk} bytes on disk over quota {cap}");
}

#[test]
fn pinned_blocks_outlast_a_scan_and_a_restart_until_unpinned() {
    let d = tempfile::tempdir().unwrap();
    let cap = 10 * checksum::stored_len(4096) as u64;
    let cfg = DiskCacheConfig {
        eviction: Eviction::Lru, // deterministic victims after the unpin
        ..config(vec![d.path().into()], cap)
    };
    let c = DiskCache::open(cfg.clone(), "v", Arc::new(Metrics::new())).unwrap();
    let model: Vec<String> = (0..4).map(|i| format!("model/{i}")).collect();
    for (i, k) in model.iter().enumerate() {
        c.insert(k, &block(i as u8, 4096)).unwrap();
    }
    assert_eq!(c.pin(&model, Duration::from_secs(3600)), 4);
    assert_eq!(
        c.pin(&["not/cached".to_string()], Duration::from_secs(60)),
        0
    );
    // A scan of 100 other blocks through a 10-block cache.
    for i in 0..100u8 {
        c.insert(&format!("scan/{i}"), &block(i, 4096)).unwrap();
        assert!(c.used() <= cap);
    }
    assert!(model.iter().all(|k| c.contains(k) && c.is_pinned(k)));
    drop(c);
    let c = DiskCache::open(cfg.clone(), "v", Arc::new(Metrics::new())).unwrap();
    assert!(
        model.iter().all(|k| c.is_pinned(k)),
        "pins survive a restart"
    );
    assert_eq!(c.unpin(&model[..2]), 2);
    for i in 100..200u8 {
        c.insert(&format!("scan/{i}"), &block(i, 4096)).unwrap();
    }
    assert!(!c.contains(&model[0]) && !c.contains(&model[1]));
    assert!(c.contains(&model[2]) && c.contains(&model[3]));
}

#[test]
fn staged_blocks_outlive_restart_and_move_into_the_cache() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(vec![d.path().into()], 1 << 30);
    let c = DiskCache::open(cfg.clone(), "v", Arc::new(Metrics::new())).unwrap();
    c.stage("v/chunks/0/0/5_0_10", b"0123456789").unwrap();
    drop(c);
    let c = DiskCache::open(cfg, "v", Arc::new(Metrics::new())).unwrap();
    assert_eq!(c.staged(), vec!["v/chunks/0/0/5_0_10".to_string()]);
    assert_eq!(
        c.read_staged("v/chunks/0/0/5_0_10").as_deref(),
        Some(&b"0123456789"[..])
    );
    assert!(c.is_empty(), "staged blocks are not evictable cache");
    c.commit_staged("v/chunks/0/0/5_0_10");
    assert!(c.staged().is_empty());
    assert_eq!(
        c.get("v/chunks/0/0/5_0_10").as_deref(),
        Some(&b"0123456789"[..])
    );
}

/// Bytes that do not repeat with any short period, so a range read at the
/// wrong offset cannot match by chance.
fn varied(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn ranges_are_read_with_only_their_pieces_and_checked() {
    use checksum::PIECE;
    let d = tempfile::tempdir().unwrap();
    let m = Arc::new(Metrics::new());
    let c = DiskCache::open(config(vec![d.path().into()], 1 << 30), "v", m.clone()).unwrap();
    // An unaligned length through the buffered write path, a page-aligned
    // one through O_DIRECT (where the file system has it).
    let odd = varied(1, 10 * PIECE + 1234);
    c.insert("k/odd", &odd).unwrap();
    let aligned = tessera_buf::AlignedBuf::copy_of(&varied(2, 1 << 20)[..])
        .unwrap()
        .freeze();
    c.insert("k/aligned", &aligned).unwrap();
    let mut reads = 0;
    for (key, data) in [("k/odd", &odd[..]), ("k/aligned", &aligned[..])] {
        let len = data.len();
        for (start, n) in [
            (0, 1),
            (0, 4096),
            (PIECE - 1, 2),             // across a piece boundary
            (3 * PIECE + 5, 2 * PIECE), // three pieces
            (len - 10, 10),             // the last, maybe short, piece
            (len / 2, len / 2),         // to the end
            (0, len),                   // all of it
        ] {
            let got = c.get_range(key, len, start, n);
            assert_eq!(
                got.as_deref(),
                Some(&data[start..start + n]),
                "{key} {start}+{n}"
            );
            reads += 1;
        }
        // Past the end, or nothing: refused, and the block is kept.
        assert!(c.get_range(key, len, len - 1, 2).is_none());
        assert!(c.get_range(key, len, 0, 0).is_none());
        assert!(c.contains(key));
    }
    assert_eq!(m.disk_range_reads.get(), reads);
    assert_eq!(m.corrupt_blocks.get(), 0);

    // One flipped bit: ranges of other pieces are still served (each piece
    // is checked on its own); a range over it is refused and the block
    // dropped and counted.
    let path = c.path_of("k/odd").unwrap();
    let mut raw = std::fs::read(&path).unwrap();
    raw[5 * PIECE + 77] ^= 0x10;
    std::fs::write(&path, raw).unwrap();
    assert_eq!(
        c.get_range("k/odd", odd.len(), PIECE, 100).as_deref(),
        Some(&odd[PIECE..PIECE + 100])
    );
    assert!(c.get_range("k/odd", odd.len(), 5 * PIECE, 100).is_none());
    assert_eq!(m.corrupt_blocks.get(), 1);
    assert!(!c.contains("k/odd") && !path.exists());

    // Another block's file under this key (same length: only the sums'
    // binding to the key tells them apart), then a truncated file.
    c.insert("k/a", &varied(3, 3 * PIECE)).unwrap();
    c.insert("k/b", &varied(4, 3 * PIECE)).unwrap();
    std::fs::copy(c.path_of("k/b").unwrap(), c.path_of("k/a").unwrap()).unwrap();
    assert!(c.get_range("k/a", 3 * PIECE, 10, 10).is_none());
    assert_eq!(m.corrupt_blocks.get(), 2);
    let path = c.path_of("k/b").unwrap();
    let raw = std::fs::read(&path).unwrap();
    std::fs::write(&path, &raw[..raw.len() - 100]).unwrap();
    assert!(c.get_range("k/b", 3 * PIECE, 10, 10).is_none());
    assert_eq!(m.corrupt_blocks.get(), 3);
    assert!(!c.contains("k/b") && !path.exists());
}

#[test]
fn range_reads_keep_a_blocks_sums_and_still_refuse_damage() {
    use checksum::PIECE;
    let d = tempfile::tempdir().unwrap();
    let m = Arc::new(Metrics::new());
    let c = DiskCache::open(config(vec![d.path().into()], 1 << 30), "v", m.clone()).unwrap();
    let data = varied(5, 8 * PIECE);
    c.insert("k/s", &data).unwrap();
    assert!(c.get_range("k/s", data.len(), 10, 10).is_some());
    // Its sums were read once and kept: the trailer on disk is no longer
    // read (here: zeroed, and a range read is still served, each piece
    // checked against the sums as they were)...
    let path = c.path_of("k/s").unwrap();
    let mut raw = std::fs::read(&path).unwrap();
    for b in &mut raw[data.len()..data.len() + 4 * 8] {
        *b = 0;
    }
    std::fs::write(&path, &raw).unwrap();
    assert_eq!(
        c.get_range("k/s", data.len(), 3 * PIECE, 100).as_deref(),
        Some(&data[3 * PIECE..3 * PIECE + 100])
    );
    // ...and a damaged piece is refused against them all the same.
    raw[6 * PIECE + 1] ^= 1;
    std::fs::write(&path, &raw).unwrap();
    assert!(c.get_range("k/s", data.len(), 6 * PIECE, 100).is_none());
    assert_eq!(m.corrupt_blocks.get(), 1);
    // Gone with its block: the same key cached again is read afresh.
    c.insert("k/s", &data).unwrap();
    assert_eq!(
        c.get_range("k/s", data.len(), 7 * PIECE, 5).as_deref(),
        Some(&data[7 * PIECE..7 * PIECE + 5])
    );
    assert_eq!(m.disk_range_reads.get(), 3);
}
