//! The conformance suite every metadata engine must pass. Engine tests call
//! [`run_all`] with a factory that returns a fresh, empty engine.
//!
//! Test code, compiled into the library so that the engine tests of other
//! crates can run it: it asserts, so it unwraps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use crate::kv::{run_txn, scan_prefix, KvEngine};
use crate::slice::{SliceKind, SliceRecord};
use crate::{
    Attr, Compression, Ctx, FileType, FlockType, Format, Ino, Meta, MetaConfig, MetaError,
    SessionInfo, ROOT_INO,
};

pub type Factory<'a> = &'a dyn Fn() -> Arc<dyn KvEngine>;

/// Run every check against fresh engines from `factory`.
pub fn run_all(factory: Factory<'_>) {
    kv_basics(factory());
    kv_nested_reads(factory());
    kv_rollback(factory());
    kv_concurrent_increments(factory());
    namespace(factory());
    rename_rules(factory());
    hard_links_and_open_unlink(factory());
    data_records(factory());
    directories_read_whole(factory());
    appends(factory());
    fsck_finds_and_repairs(factory());
    huge_offsets_and_sizes(factory());
    stored_bytes_follow_the_data(factory());
    xattrs(factory());
    posix_acls(factory());
    locks(factory());
    sessions(factory());
    cache_groups(factory());
    trash_clone_and_quotas(factory());
}

pub fn test_format() -> Format {
    Format {
        name: "test".into(),
        uuid: "00000000-0000-0000-0000-000000000000".into(),
        storage: "mem://".into(),
        block_size: 4 << 20,
        compression: Compression::None,
        trash_days: 0,
        acl: false,
        capacity: 0,
        inodes: 0,
        version: Format::VERSION,
        upload_limit_kbps: 0,
        download_limit_kbps: 0,
        encryption: None,
        endpoint: None,
        region: None,
        virtual_host_style: false,
    }
}

fn formatted(engine: Arc<dyn KvEngine>) -> Meta {
    let meta = Meta::new(engine, MetaConfig::default());
    assert!(matches!(meta.load(), Err(MetaError::NotFormatted)));
    assert!(meta.init(&test_format()).expect("format"));
    assert!(!meta
        .init(&test_format())
        .expect("same format again is fine"));
    let mut other = test_format();
    other.block_size = 1 << 20;
    let err = meta
        .init(&other)
        .expect_err("different settings must be refused");
    assert!(err.to_string().contains("refusing to reformat"), "{err}");
    meta
}

/// fsck finds each kind of damage and repair leaves a volume it finds
/// clean: a wrong link count, a lost shared-slice count, an entry to no
/// inode, an inode in no directory, usage counters left short by a crash.
fn fsck_finds_and_repairs(engine: Arc<dyn KvEngine>) {
    let m = formatted(engine.clone());
    let (d, _) = m
        .mknod(&CTX, ROOT_INO, b"d", FileType::Dir, 0o755, 0, None)
        .expect("dir");
    let (f, _) = m
        .mknod(&CTX, d, b"f", FileType::File, 0o644, 0, None)
        .expect("f");
    let (g, _) = m
        .mknod(&CTX, d, b"g", FileType::File, 0o644, 0, None)
        .expect("g");
    let id = m.new_slice_id().expect("id");
    let rec = SliceRecord {
        kind: SliceKind::Internal,
        pos: 0,
        id,
        size: 10_000,
        off: 0,
        len: 10_000,
    };
    m.write_slices(f, &[(0, rec)], 10_000).expect("write");
    m.copy_range(f, 0, g, 0, 10_000).expect("share the slice");
    m.flush_usage().expect("usage");
    let clean = m.fsck(false).expect("fsck");
    assert!(clean.problems.is_empty(), "{:?}", clean.problems);
    assert_eq!(clean.slices.get(&(id, 10_000)), Some(&2));
    assert_eq!((clean.files, clean.dirs), (2, 2));

    run_txn(&*engine, false, |tx| {
        let mut a = crate::fs::get_attr(tx, f)?;
        a.nlink = 5;
        crate::fs::put_attr(tx, f, &a)?;
        tx.delete(&crate::keys::slice_refs(id, 10_000))?;
        let mut ghost = 999_999u64.to_be_bytes().to_vec();
        ghost.push(FileType::File as u8);
        tx.set(&crate::keys::dentry(d, b"ghost"), &ghost)?;
        tx.delete(&crate::keys::dentry(d, b"g"))?;
        tx.set(&crate::keys::counter("usedSpace"), &0i64.to_le_bytes())
    })
    .expect("damage");
    let bad = m.fsck(false).expect("fsck");
    assert_eq!(bad.problems.len(), 5, "{:#?}", bad.problems);
    assert_eq!(bad.repaired, 0);
    let fixed = m.fsck(true).expect("repair");
    assert_eq!(
        fixed.repaired,
        fixed.problems.len(),
        "{:#?}",
        fixed.problems
    );
    let again = m.fsck(false).expect("fsck after repair");
    assert!(again.problems.is_empty(), "{:#?}", again.problems);
    let (lost, _) = m.lookup(ROOT_INO, b"lost+found").expect("lost+found");
    let (found, attr) = m
        .lookup(lost, format!("#{g}").as_bytes())
        .expect("orphan adopted");
    assert_eq!((found, attr.nlink, attr.length), (g, 1, 10_000));
    assert!(matches!(m.lookup(d, b"ghost"), Err(MetaError::NotFound)));
    assert_eq!(m.getattr(f).expect("f").nlink, 1);
}

/// Offsets past the largest file are refused with EFBIG everywhere, and a
/// truncate of a huge sparse file costs what is stored, not its length.
fn huge_offsets_and_sizes(engine: Arc<dyn KvEngine>) {
    let m = formatted(engine);
    let (f, _) = m
        .mknod(&CTX, ROOT_INO, b"huge", FileType::File, 0o644, 0, None)
        .expect("file");
    let max = crate::MAX_FILE_SIZE;
    let efbig = |r: crate::Result<()>| match r {
        Err(e) => assert_eq!(e.errno(), libc::EFBIG, "{e}"),
        Ok(()) => panic!("accepted past the largest file"),
    };
    efbig(m.truncate(f, max + 1).map(drop));
    efbig(m.fallocate(f, 0, max - 10, 11).map(drop));
    efbig(m.fallocate(f, 0, u64::MAX - 5, 10).map(drop));
    let id = m.new_slice_id().expect("id");
    let rec = hundred_bytes(id);
    efbig(m.write_slices(f, &[(0, rec)], max + 1).map(drop));
    // The largest size itself is fine, and so is coming back from it: one
    // transaction each, whatever the logical size.
    m.write_slices(f, &[(0, rec)], 100).expect("write");
    m.truncate(f, max).expect("truncate to the largest size");
    let started = std::time::Instant::now();
    let t = m.truncate(f, 0).expect("truncate back to 0");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "truncate walked the logical size: {:?}",
        started.elapsed()
    );
    assert_eq!(t.attr.length, 0);
    assert_eq!(t.freed, vec![(id, 100)]);
    efbig(m.append_slice(f, id, 1).map(drop).and_then(|_| {
        m.truncate(f, max)?;
        m.append_slice(f, id, 1).map(drop)
    }));
    // A copy into the last bytes the format holds, past them refused.
    let (g, _) = m
        .mknod(&CTX, ROOT_INO, b"src", FileType::File, 0o644, 0, None)
        .expect("src");
    m.write_slices(g, &[(0, rec)], 100).expect("src data");
    efbig(m.copy_range(g, 0, f, max - 50, 100).map(drop));
    m.copy_range(g, 0, f, max - 100, 100)
        .expect("copy at the end");

    // More chunks than one transaction drops: the shrink goes in batches
    // from the top and still frees every slice, the file whole throughout.
    let (h, _) = m
        .mknod(&CTX, ROOT_INO, b"many", FileType::File, 0o644, 0, None)
        .expect("many");
    let mut recs = Vec::new();
    for i in 0..1100u32 {
        let id = m.new_slice_id().expect("id");
        recs.push((i * 3, SliceRecord { id, ..rec }));
    }
    let length = 3 * 1100 * crate::CHUNK_SIZE;
    m.write_slices(h, &recs, length).expect("write 1100 chunks");
    let t = m.truncate(h, 10).expect("shrink in batches");
    assert_eq!(t.attr.length, 10);
    assert_eq!(t.freed.len(), 1099, "every slice past the first chunk");
    assert_eq!(m.chunks_of(h).expect("chunks").len(), 1);
}

/// A file's `stored` bytes (st_blocks, usage) count data, not holes: a
/// truncate up adds nothing, a punched hole and a shrink give back, a
/// copy of records counts for the copy.
fn stored_bytes_follow_the_data(engine: Arc<dyn KvEngine>) {
    let m = formatted(engine);
    let (f, _) = m
        .mknod(&CTX, ROOT_INO, b"sparse", FileType::File, 0o644, 0, None)
        .expect("file");
    // Each write is a slice of its own, as the writer makes them.
    let rec = |pos: u32, len: u32| SliceRecord {
        kind: SliceKind::Internal,
        pos,
        id: m.new_slice_id().expect("id"),
        size: u64::from(len),
        off: 0,
        len,
    };
    m.write_slices(f, &[(0, rec(0, 100_000))], 100_000)
        .expect("write");
    assert_eq!(m.getattr(f).expect("attr").stored, 100_000);
    // Overwriting what is there stores nothing more.
    m.write_slices(f, &[(0, rec(50_000, 50_000))], 100_000)
        .expect("overwrite");
    assert_eq!(m.getattr(f).expect("attr").stored, 100_000);
    let grown = m.truncate(f, 10 << 30).expect("truncate up").attr;
    assert_eq!((grown.length, grown.stored), (10 << 30, 100_000));
    m.write_slices(f, &[(80, rec(1000, 4096))], 10 << 30)
        .expect("far write");
    assert_eq!(m.getattr(f).expect("attr").stored, 104_096);
    m.fallocate(
        f,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        10_000,
        20_000,
    )
    .expect("punch");
    assert_eq!(m.getattr(f).expect("attr").stored, 84_096);
    let (g, _) = m
        .mknod(&CTX, ROOT_INO, b"copy", FileType::File, 0o644, 0, None)
        .expect("copy");
    m.copy_range(f, 0, g, 0, 100_000).expect("copy");
    assert_eq!(m.getattr(g).expect("attr").stored, 80_000);
    // [0, 10,000) and [30,000, 40,000) are left.
    m.truncate(f, 40_000).expect("shrink");
    assert_eq!(m.getattr(f).expect("attr").stored, 20_000);
    m.flush_usage().expect("usage");
    let report = m.fsck(false).expect("fsck");
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    assert_eq!(report.space, 20_480 + 81_920, "usage is what is stored");

    // fallocate reserves the holes of its range: they count as stored,
    // and writing into them adds nothing (xfstests generic/568).
    let (h, _) = m
        .mknod(&CTX, ROOT_INO, b"prealloc", FileType::File, 0o644, 0, None)
        .expect("file");
    m.write_slices(h, &[(0, rec(1000, 1000))], 2000)
        .expect("write");
    let a = m.fallocate(h, 0, 0, 10_000).expect("allocate").attr;
    assert_eq!(
        (a.length, a.stored),
        (10_000, 10_000),
        "holes reserved, data kept"
    );
    m.write_slices(h, &[(0, rec(4095, 2))], 10_000)
        .expect("write into the reserved range");
    assert_eq!(m.getattr(h).expect("attr").stored, 10_000);
    let kept = m
        .fallocate(h, libc::FALLOC_FL_KEEP_SIZE, 10_000, 6_000)
        .expect("allocate past the end")
        .attr;
    assert_eq!((kept.length, kept.stored), (10_000, 16_000));
    m.fallocate(
        h,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        0,
        4_000,
    )
    .expect("punch");
    assert_eq!(m.getattr(h).expect("attr").stored, 12_000);
    m.fallocate(
        h,
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        4_000,
        2_000,
    )
    .expect("zero range keeps the space");
    assert_eq!(m.getattr(h).expect("attr").stored, 12_000);
    let records = m.read_chunk(h, 0).expect("records");
    let visible = crate::slice::visible_segments(&records);
    assert!(
        visible.iter().all(|s| s.record.id == 0 || s.pos >= 4095),
        "reserved ranges read as zeros: {visible:?}"
    );
    let report = m.fsck(false).expect("fsck");
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
}

/// O_APPEND commits land at the end as it stands in the commit, split over
/// a chunk boundary as one slice referred to twice.
fn appends(engine: Arc<dyn KvEngine>) {
    let m = formatted(engine);
    let (f, _) = m
        .mknod(&CTX, ROOT_INO, b"log", FileType::File, 0o644, 0, None)
        .expect("log");
    let first = m.new_slice_id().expect("id");
    let head = m
        .append_slice(f, first, crate::CHUNK_SIZE - 10)
        .expect("append");
    assert_eq!((head.at, head.attr.length), (0, crate::CHUNK_SIZE - 10));
    let second = m.new_slice_id().expect("id");
    let tail = m
        .append_slice(f, second, 30)
        .expect("append over the boundary");
    assert_eq!(tail.at, crate::CHUNK_SIZE - 10);
    assert_eq!(tail.attr.length, crate::CHUNK_SIZE + 20);
    assert_eq!(tail.touched, vec![(0, 2), (1, 1)]);
    let piece = |pos: u32, off: u64, len: u32| SliceRecord {
        kind: SliceKind::Internal,
        pos,
        id: second,
        size: 30,
        off,
        len,
    };
    assert_eq!(
        m.read_chunk(f, 0).expect("chunk 0")[1],
        piece((crate::CHUNK_SIZE - 10) as u32, 0, 10)
    );
    assert_eq!(m.read_chunk(f, 1).expect("chunk 1"), vec![piece(0, 10, 20)]);
    m.unlink(ROOT_INO, b"log").expect("unlink");
    let (ino, len) = m.pending_deletes(1).expect("pending")[0];
    let mut freed = m.cleanup_deleted(ino, len).expect("cleanup");
    freed.sort_unstable();
    assert_eq!(
        freed,
        vec![(first, crate::CHUNK_SIZE - 10), (second, 30)],
        "each slice freed once"
    );
}

fn test_session() -> SessionInfo {
    SessionInfo {
        sid: 0,
        host: "h".into(),
        pid: 1,
        mountpoint: "/m".into(),
        version: "t".into(),
        heartbeat: 0,
    }
}

const CTX: Ctx = Ctx {
    uid: 1000,
    gid: 1000,
    pid: 1,
    umask: 0,
};

fn kv_basics(e: Arc<dyn KvEngine>) {
    run_txn(&*e, false, |tx| {
        tx.set(b"a1", b"x")?;
        tx.set(b"a2", b"y")?;
        tx.set(b"a\xff", b"z")?;
        tx.set(b"b", b"w")?;
        assert_eq!(tx.get(b"a1")?.as_deref(), Some(&b"x"[..]), "read own write");
        Ok(())
    })
    .expect("write");
    let rows = run_txn(&*e, true, |tx| scan_prefix(tx, b"a")).expect("scan");
    let keys: Vec<_> = rows.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(
        keys,
        vec![b"a1".to_vec(), b"a2".to_vec(), b"a\xff".to_vec()]
    );
    let limited = run_txn(&*e, true, |tx| tx.scan(b"a", b"c", 2)).expect("limit");
    assert_eq!(limited.len(), 2);
    run_txn(&*e, false, |tx| tx.delete(b"a2")).expect("delete");
    assert_eq!(run_txn(&*e, true, |tx| tx.get(b"a2")).expect("get"), None);

    // get_follow: a value naming another key, followed in one call.
    let ptr = crate::kv::Pointer {
        prefix: b"p",
        at: 1,
        len: 2,
        suffix: b"!",
    };
    run_txn(&*e, false, |tx| {
        tx.set(b"to-x", b"#xy tail")?;
        tx.set(b"to-none", b"#zz")?;
        tx.set(b"short", b"#")?;
        tx.set(b"pxy!", b"target")
    })
    .expect("write pointers");
    for read_only in [true, false] {
        let got = run_txn(&*e, read_only, |tx| {
            Ok((
                tx.get_follow(b"to-x", ptr)?,
                tx.get_follow(b"to-none", ptr)?,
                tx.get_follow(b"short", ptr)?,
                tx.get_follow(b"missing", ptr)?,
            ))
        })
        .expect("follow");
        assert_eq!(
            got,
            (
                Some((b"#xy tail".to_vec(), Some(b"target".to_vec()))),
                Some((b"#zz".to_vec(), None)),
                Some((b"#".to_vec(), None)),
                None
            ),
            "read_only {read_only}"
        );
    }
    let own = run_txn(&*e, false, |tx| {
        tx.set(b"to-x", b"#zz")?;
        tx.set(b"pzz!", b"new")?;
        tx.get_follow(b"to-x", ptr)
    })
    .expect("follow own writes");
    assert_eq!(own, Some((b"#zz".to_vec(), Some(b"new".to_vec()))));
    // get_many: independent keys at once, own writes and deletes included.
    for read_only in [true, false] {
        let got = run_txn(&*e, read_only, |tx| {
            let before = tx.get_many(&[b"pxy!", b"nope", b"short"])?;
            if !read_only {
                tx.set(b"nope", b"now")?;
                tx.delete(b"short")?;
            }
            Ok((before, tx.get_many(&[b"short", b"nope", b"pxy!"])?))
        })
        .expect("get_many");
        let before = vec![Some(b"target".to_vec()), None, Some(b"#".to_vec())];
        let after = if read_only {
            vec![Some(b"#".to_vec()), None, Some(b"target".to_vec())]
        } else {
            vec![None, Some(b"now".to_vec()), Some(b"target".to_vec())]
        };
        assert_eq!(got, (before, after), "read_only {read_only}");
    }
    e.reset().expect("reset");
    assert_eq!(run_txn(&*e, true, |tx| tx.get(b"b")).expect("get"), None);
}

/// `read_nested`, where the engine has it: rows, the keys they point at,
/// the rows under the prefixes they point at (tagged rows only, within
/// the budget, a row's set whole or not at all), and `more` past the
/// limit. Engines without it answer None.
fn kv_nested_reads(e: Arc<dyn KvEngine>) {
    use crate::kv::{Nested, NestedRow, Pointer};
    run_txn(&*e, false, |tx| {
        tx.set(b"head", b"H")?;
        tx.set(b"r/1", b"x1\x01")?;
        tx.set(b"r/2", b"x2\x02")?;
        tx.set(b"r/3", b"x3\x01")?;
        tx.set(b"r0", b"outside")?;
        tx.set(b"fx1!", b"one")?;
        tx.set(b"fx3!", b"three")?;
        tx.set(b"ux1.a", b"1a")?;
        tx.set(b"ux1.b", b"1b")?;
        tx.set(b"ux2.a", b"2a")?;
        tx.set(b"ux3.a", b"3a")?;
        tx.set(b"ux3/", b"past the prefix")
    })
    .expect("write");
    let request = |limit, under_limit| Nested {
        head: b"head",
        begin: b"r/",
        end: b"r0",
        limit,
        follow: Pointer {
            prefix: b"f",
            at: 0,
            len: 2,
            suffix: b"!",
        },
        under: Pointer {
            prefix: b"u",
            at: 0,
            len: 2,
            suffix: b".",
        },
        tag_at: 2,
        tag: 1,
        under_limit,
    };
    let read = |limit, under_limit| {
        run_txn(&*e, true, |tx| tx.read_nested(&request(limit, under_limit))).expect("nested")
    };
    let Some(whole) = read(10, 10) else {
        return;
    };
    let row = |key: &[u8],
               value: &[u8],
               followed: Option<&[u8]>,
               under: Option<&[(&[u8], &[u8])]>| NestedRow {
        key: key.to_vec(),
        value: value.to_vec(),
        followed: followed.map(<[u8]>::to_vec),
        under: under.map(|u| u.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()),
    };
    assert_eq!(whole.head.as_deref(), Some(&b"H"[..]));
    assert!(!whole.more);
    assert_eq!(
        whole.rows,
        [
            row(
                b"r/1",
                b"x1\x01",
                Some(b"one"),
                Some(&[(b"ux1.a", b"1a"), (b"ux1.b", b"1b")])
            ),
            row(b"r/2", b"x2\x02", None, None),
            row(
                b"r/3",
                b"x3\x01",
                Some(b"three"),
                Some(&[(b"ux3.a", b"3a")])
            ),
        ]
    );
    // A budget of one row under: r/1's two do not fit, r/3's one does.
    let tight = read(10, 1).expect("tight");
    let under: Vec<Option<usize>> = tight
        .rows
        .iter()
        .map(|r| r.under.as_ref().map(Vec::len))
        .collect();
    assert_eq!(under, [None, None, Some(1)]);
    let over = read(2, 10).expect("over");
    assert!(over.more && over.rows.is_empty());
    assert_eq!(over.head.as_deref(), Some(&b"H"[..]));
    e.reset().expect("reset");
}

/// For engines that must read nested in one step (the conformance suite
/// accepts engines that cannot): a read-only transaction gets an answer,
/// or listings over a far link cost three round trips again.
pub fn nested_reads_in_one_step(e: &dyn KvEngine) -> crate::kv::Nested<'static> {
    let pointer = crate::kv::Pointer {
        prefix: b"a",
        at: 0,
        len: 1,
        suffix: b"!",
    };
    let request = crate::kv::Nested {
        head: b"h",
        begin: b"d/",
        end: b"d0",
        limit: 10,
        follow: pointer,
        under: crate::kv::Pointer {
            suffix: b"/",
            ..pointer
        },
        tag_at: 0,
        tag: b'x',
        under_limit: 10,
    };
    run_txn(e, false, |tx| {
        tx.set(b"d/x", b"x")?;
        tx.set(b"ax!", b"followed")?;
        tx.set(b"ax/1", b"under")
    })
    .expect("write");
    let read = run_txn(e, true, |tx| tx.read_nested(&request))
        .expect("read")
        .expect("a read-only transaction reads nested in one step");
    assert_eq!(read.rows.len(), 1);
    assert_eq!(read.rows[0].followed.as_deref(), Some(&b"followed"[..]));
    assert_eq!(
        read.rows[0].under,
        Some(vec![(b"ax/1".to_vec(), b"under".to_vec())])
    );
    request
}

fn kv_rollback(e: Arc<dyn KvEngine>) {
    run_txn(&*e, false, |tx| tx.set(b"k", b"old")).expect("write");
    let res: crate::Result<()> = run_txn(&*e, false, |tx| {
        tx.set(b"k", b"new")?;
        tx.set(b"other", b"1")?;
        Err(MetaError::Exists)
    });
    assert!(matches!(res, Err(MetaError::Exists)));
    let (k, other) = run_txn(&*e, true, |tx| Ok((tx.get(b"k")?, tx.get(b"other")?))).expect("read");
    assert_eq!(
        k.as_deref(),
        Some(&b"old"[..]),
        "a failed transaction leaves nothing behind"
    );
    assert_eq!(other, None);
}

fn kv_concurrent_increments(e: Arc<dyn KvEngine>) {
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let e = e.clone();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    run_txn(&*e, false, |tx| crate::fs::incr(tx, "n", 1)).expect("incr");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let v = run_txn(&*e, true, |tx| crate::fs::get_counter(tx, "n")).expect("read");
    assert_eq!(v, 200, "no increment may be lost");
}

fn namespace(e: Arc<dyn KvEngine>) {
    let e2 = e.clone();
    let m = formatted(e);
    let (d, da) = m
        .mknod(&CTX, ROOT_INO, b"dir", FileType::Dir, 0o755, 0, None)
        .expect("mkdir");
    assert_eq!((da.nlink, da.uid, da.mode), (2, 1000, 0o755));
    assert_eq!(m.getattr(ROOT_INO).expect("root").nlink, 3);
    let (f, _) = m
        .mknod(&CTX, d, b"file", FileType::File, 0o644, 0, None)
        .expect("create");
    assert!(matches!(
        m.mknod(&CTX, d, b"file", FileType::File, 0o644, 0, None),
        Err(MetaError::Exists)
    ));
    assert!(matches!(
        m.mknod(&CTX, f, b"x", FileType::File, 0o644, 0, None),
        Err(MetaError::NotDir)
    ));
    let long = vec![b'x'; 256];
    assert!(matches!(
        m.mknod(&CTX, d, &long, FileType::File, 0o644, 0, None),
        Err(MetaError::NameTooLong)
    ));
    m.mknod(&CTX, d, &long[..255], FileType::File, 0o644, 0, None)
        .expect("255 bytes is fine");
    let (s, sa) = m
        .mknod(&CTX, d, b"sym", FileType::Symlink, 0o777, 0, Some(b"file"))
        .expect("symlink");
    assert_eq!(sa.length, 4);
    assert_eq!(m.readlink(s).expect("readlink"), b"file");
    assert_eq!(m.lookup(d, b"file").expect("lookup").0, f);
    assert_eq!(m.lookup(d, b"..").expect("dotdot").0, ROOT_INO);
    assert!(matches!(m.lookup(d, b"nope"), Err(MetaError::NotFound)));
    let names: Vec<_> = m
        .readdir(d, true)
        .expect("readdir")
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names.len(), 3);
    assert!(matches!(
        m.rmdir(ROOT_INO, b"dir"),
        Err(MetaError::NotEmpty)
    ));
    assert!(matches!(m.unlink(ROOT_INO, b"dir"), Err(MetaError::IsDir)));
    assert!(matches!(m.rmdir(d, b"file"), Err(MetaError::NotDir)));
    m.unlink(d, b"file").expect("unlink");
    m.unlink(d, b"sym").expect("unlink symlink");
    m.unlink(d, &long[..255]).expect("unlink long");
    m.rmdir(ROOT_INO, b"dir").expect("rmdir");
    assert_eq!(m.getattr(ROOT_INO).expect("root").nlink, 2);
    assert_eq!(m.statfs().expect("statfs").used_inodes, 0);
    // Usage is summed per process and reaches the volume's counters on
    // flush_usage: another client sees it then, not before.
    let other = Meta::new(e2.clone(), MetaConfig::default());
    other.load().expect("load the volume");
    let (u, _) = m
        .mknod(&CTX, ROOT_INO, b"usage", FileType::File, 0o644, 0, None)
        .expect("create");
    let id = m.new_slice_id().expect("id");
    let data = SliceRecord {
        kind: SliceKind::Internal,
        pos: 0,
        id,
        size: 10_000,
        off: 0,
        len: 10_000,
    };
    m.write_slices(u, &[(0, data)], 10_000).expect("write");
    assert_eq!(m.statfs().expect("own view").used_inodes, 1);
    assert_eq!(other.statfs().expect("other's view").used_inodes, 0);
    m.flush_usage().expect("flush usage");
    let seen = other.statfs().expect("other's view");
    assert_eq!(
        (seen.used_inodes, seen.total_space - seen.avail_space),
        (1, 12_288)
    );
    m.unlink(ROOT_INO, b"usage").expect("unlink");
    m.flush_usage().expect("flush usage");
    assert_eq!(other.statfs().expect("other's view").used_inodes, 0);
    // A commit that leaves 64 MiB or more unsaved saves it at once: a
    // process killed in the second after closing a large file would leave
    // the counters behind by all of it.
    let (large, _) = m
        .mknod(&CTX, ROOT_INO, b"large", FileType::File, 0o644, 0, None)
        .expect("create");
    let whole_chunk = SliceRecord {
        id: m.new_slice_id().expect("id"),
        size: crate::CHUNK_SIZE,
        len: crate::CHUNK_SIZE as u32,
        ..data
    };
    m.write_slices(large, &[(0, whole_chunk)], crate::CHUNK_SIZE)
        .expect("write");
    let seen = other.statfs().expect("other's view");
    assert_eq!(
        (seen.used_inodes, seen.total_space - seen.avail_space),
        (1, crate::CHUNK_SIZE),
        "saved without waiting for the next flush"
    );
    m.unlink(ROOT_INO, b"large").expect("unlink");
    let seen = other.statfs().expect("other's view");
    assert_eq!(seen.total_space - seen.avail_space, 0, "its removal too");
    m.flush_usage().expect("flush usage");
    // setgid directories pass their group and the bit on.
    let (g, _) = m
        .mknod(
            &Ctx::ROOT,
            ROOT_INO,
            b"sgid",
            FileType::Dir,
            0o2775,
            0,
            None,
        )
        .expect("sgid dir");
    m.setattr(
        g,
        &crate::SetAttr {
            gid: Some(50),
            ..Default::default()
        },
    )
    .expect("chgrp");
    let (_, sub) = m
        .mknod(&CTX, g, b"sub", FileType::Dir, 0o755, 0, None)
        .expect("sub");
    assert_eq!((sub.gid, sub.mode & 0o2000), (50, 0o2000));
}

fn rename_rules(e: Arc<dyn KvEngine>) {
    let m = formatted(e);
    // RENAME_WHITEOUT (overlayfs) is not supported: EINVAL, nothing moved.
    let (w, _) = m
        .mknod(
            &CTX,
            ROOT_INO,
            b"whiteout-src",
            FileType::File,
            0o644,
            0,
            None,
        )
        .expect("file");
    let refused = m.rename(
        ROOT_INO,
        b"whiteout-src",
        ROOT_INO,
        b"whiteout-dst",
        libc::RENAME_WHITEOUT,
    );
    assert!(matches!(refused, Err(MetaError::Invalid(_))), "{refused:?}");
    assert_eq!(
        m.lookup(ROOT_INO, b"whiteout-src").expect("still there").0,
        w
    );
    let (a, _) = m
        .mknod(&CTX, ROOT_INO, b"a", FileType::Dir, 0o755, 0, None)
        .expect("a");
    let (b, _) = m
        .mknod(&CTX, ROOT_INO, b"b", FileType::Dir, 0o755, 0, None)
        .expect("b");
    let (f, _) = m
        .mknod(&CTX, a, b"f", FileType::File, 0o644, 0, None)
        .expect("f");
    let (g, _) = m
        .mknod(&CTX, b, b"g", FileType::File, 0o644, 0, None)
        .expect("g");
    assert!(
        matches!(
            m.rename(ROOT_INO, b"a", a, b"x", 0),
            Err(MetaError::Invalid(_))
        ),
        "dir into itself"
    );
    assert!(matches!(
        m.rename(a, b"f", ROOT_INO, b"b", 0),
        Err(MetaError::IsDir)
    ));
    assert!(matches!(
        m.rename(ROOT_INO, b"a", b, b"g", 0),
        Err(MetaError::NotDir)
    ));
    assert!(matches!(
        m.rename(a, b"f", b, b"g", libc::RENAME_NOREPLACE),
        Err(MetaError::Exists)
    ));
    m.rename(a, b"f", b, b"g", libc::RENAME_EXCHANGE)
        .expect("exchange");
    assert_eq!(m.lookup(b, b"g").expect("g").0, f);
    assert_eq!(m.lookup(a, b"f").expect("f").0, g);
    let replaced = m
        .rename(a, b"f", b, b"g", 0)
        .expect("replace")
        .expect("a target was replaced");
    assert_eq!(replaced.ino, f);
    assert!(replaced.data_freed);
    assert!(matches!(m.getattr(f), Err(MetaError::NotFound)));
    m.rename(ROOT_INO, b"a", b, b"a2", 0).expect("move dir");
    assert_eq!(m.getattr(ROOT_INO).expect("root").nlink, 3);
    assert_eq!(m.getattr(b).expect("b").nlink, 3);
    assert_eq!(m.lookup(a, b"..").expect("dotdot").0, b);
    assert_eq!(m.pending_deletes(10).expect("pending").len(), 1);
    // A hint is only a guess: right or wrong, the entry decides.
    let g_ino = m.lookup(b, b"g").expect("g").0;
    m.rename_hinted(b, b"g", b, b"h", 0, Some(g_ino))
        .expect("right hint");
    m.rename_hinted(b, b"h", b, b"g", 0, Some(a))
        .expect("wrong hint");
    let (ino, attr) = m.lookup(b, b"g").expect("g again");
    assert_eq!((ino, attr.typ), (g_ino, FileType::File));
    assert!(attr.ctime >= m.getattr(a).expect("a").ctime - 1);
}

fn hard_links_and_open_unlink(e: Arc<dyn KvEngine>) {
    let m = formatted(e);
    m.new_session(test_session()).expect("session");
    let (d, _) = m
        .mknod(&CTX, ROOT_INO, b"d", FileType::Dir, 0o755, 0, None)
        .expect("d");
    let (f, _) = m
        .mknod(&CTX, ROOT_INO, b"f", FileType::File, 0o644, 0, None)
        .expect("f");
    assert!(matches!(m.link(d, ROOT_INO, b"dl"), Err(MetaError::Perm)));
    assert_eq!(m.link(f, d, b"l").expect("link").nlink, 2);
    m.unlink(ROOT_INO, b"f").expect("unlink first name");
    let a = m.getattr(f).expect("still there");
    assert_eq!((a.nlink, a.parent), (1, d));
    m.open_inode(f);
    let r = m.unlink(d, b"l").expect("unlink last name");
    assert!(!r.data_freed, "open files keep their data");
    assert_eq!(m.getattr(f).expect("open and unlinked").nlink, 0);
    assert!(m.close_inode(f).expect("close"));
    assert!(matches!(m.getattr(f), Err(MetaError::NotFound)));
    assert_eq!(m.pending_deletes(10).expect("pending"), vec![(f, 0)]);
}

/// The record of a 100-byte slice at the start of a chunk.
fn hundred_bytes(id: u64) -> SliceRecord {
    SliceRecord {
        kind: SliceKind::Internal,
        pos: 0,
        id,
        size: 100,
        off: 0,
        len: 100,
    }
}

/// `readdir_with_records`: every entry with its attributes, every chunk
/// record of the files asked for, in the engine's key order; a directory
/// past the limit comes back not complete.
fn directories_read_whole(e: Arc<dyn KvEngine>) {
    let m = formatted(e);
    let (dir, _) = m
        .mknod(&CTX, ROOT_INO, b"repo", FileType::Dir, 0o755, 0, None)
        .expect("dir");
    let rec = hundred_bytes;
    let mut made = Vec::new();
    for (name, chunks) in [(&b"a"[..], 1u64), (b"b", 3), (b"c", 0), (b"skip", 1)] {
        let (f, _) = m
            .mknod(&CTX, dir, name, FileType::File, 0o644, 0, None)
            .expect("file");
        let slices: Vec<(u32, SliceRecord)> = (0..chunks)
            .map(|i| (i as u32, rec(m.new_slice_id().expect("id"))))
            .collect();
        if chunks > 0 {
            m.write_slices(f, &slices, (chunks - 1) * crate::CHUNK_SIZE + 100)
                .expect("write");
        }
        made.push((f, slices));
    }
    let (sub, _) = m
        .mknod(&CTX, dir, b"sub", FileType::Dir, 0o755, 0, None)
        .expect("sub");
    let empty = m
        .readdir_with_records(sub, 10, 100, &|_, _| true)
        .expect("empty directory");
    assert!(empty.complete && empty.entries.is_empty() && empty.records.is_empty());
    let wanted = |name: &[u8], _: &Attr| name != b"skip";
    let whole = m
        .readdir_with_records(dir, 10, 100, &wanted)
        .expect("read whole");
    assert!(whole.complete);
    assert_eq!(whole.attr.typ, FileType::Dir);
    let names: Vec<&[u8]> = whole.entries.iter().map(|e| e.name.as_slice()).collect();
    assert_eq!(names, [&b"a"[..], b"b", b"c", b"skip", b"sub"]);
    assert!(whole.entries.iter().all(|e| e.attr.is_some()));
    assert_eq!(
        whole.entries[1].attr.expect("b").length,
        2 * crate::CHUNK_SIZE + 100
    );
    let by_ino: std::collections::HashMap<Ino, Vec<Vec<SliceRecord>>> = whole
        .records
        .into_iter()
        .map(|(at, records)| (whole.entries[at].ino, records))
        .collect();
    assert_eq!(by_ino.len(), 3, "a, b and c; not skip, not the directory");
    for (f, slices) in &made[..3] {
        let want: Vec<Vec<SliceRecord>> = slices.iter().map(|(_, r)| vec![*r]).collect();
        assert_eq!(by_ino[f], want);
    }
    // A budget of two chunk records: a's, then b's three do not fit.
    let tight = m.readdir_with_records(dir, 10, 2, &wanted).expect("tight");
    let got: Vec<Ino> = tight
        .records
        .iter()
        .map(|(at, _)| tight.entries[*at].ino)
        .collect();
    assert_eq!(got, [made[0].0, made[2].0]);
    let large = m.readdir_with_records(dir, 4, 100, &wanted).expect("large");
    assert!(!large.complete && large.entries.is_empty());
    assert!(matches!(
        m.readdir_with_records(made[0].0, 10, 100, &wanted),
        Err(MetaError::NotDir)
    ));
}

fn data_records(e: Arc<dyn KvEngine>) {
    let m = formatted(e);
    let (f, _) = m
        .mknod(&CTX, ROOT_INO, b"f", FileType::File, 0o644, 0, None)
        .expect("f");
    let id = m.new_slice_id().expect("slice id");
    assert!(m.new_slice_id().expect("next") > id);
    let rec = hundred_bytes(id);
    let far = SliceRecord {
        pos: 10,
        id: m.new_slice_id().expect("id"),
        ..rec
    };
    let (a, most) = m
        .write_slices(f, &[(0, rec), (2, far)], 2 * crate::CHUNK_SIZE + 110)
        .expect("write");
    assert_eq!((a.length, most), (2 * crate::CHUNK_SIZE + 110, 1));
    assert_eq!(m.read_chunk(f, 0).expect("read"), vec![rec]);
    let t = m.truncate(f, 50).expect("shrink");
    assert_eq!(t.attr.length, 50);
    assert_eq!(
        t.freed,
        vec![(far.id, 100)],
        "only the dropped chunk's slice is freed"
    );
    assert_eq!(m.read_chunk(f, 2).expect("dropped"), vec![]);
    assert_eq!(
        m.read_chunk(f, 0).expect("hole")[1],
        SliceRecord::hole(50, (crate::CHUNK_SIZE - 50) as u32)
    );
    // copy shares the slice; deleting the source frees nothing until the copy goes.
    let (g, _) = m
        .mknod(&CTX, ROOT_INO, b"g", FileType::File, 0o644, 0, None)
        .expect("g");
    let (ga, n) = m.copy_range(f, 0, g, 0, 1000).expect("copy");
    assert_eq!((ga.length, n), (50, 50));
    m.unlink(ROOT_INO, b"f").expect("unlink f");
    let (ino, len) = m.pending_deletes(1).expect("pending")[0];
    assert!(m.cleanup_deleted(ino, len).expect("cleanup").is_empty());
    m.unlink(ROOT_INO, b"g").expect("unlink g");
    let (ino, len) = m.pending_deletes(1).expect("pending")[0];
    assert_eq!(
        m.cleanup_deleted(ino, len).expect("cleanup"),
        vec![(id, 100)]
    );
    assert!(m.pending_deletes(10).expect("none").is_empty());
    // compaction swaps a prefix atomically and keeps later records.
    let (h, _) = m
        .mknod(&CTX, ROOT_INO, b"h", FileType::File, 0o644, 0, None)
        .expect("h");
    let r1 = SliceRecord { id: 7, ..rec };
    let r2 = SliceRecord { id: 8, ..rec };
    m.write_slices(h, &[(0, r1), (0, r2)], 100)
        .expect("two writes");
    let raw = m.read_chunk_raw(h, 0).expect("raw");
    let r3 = SliceRecord { id: 9, ..rec };
    m.write_slices(h, &[(0, r3)], 100).expect("third");
    let freed = m
        .replace_chunk_prefix(h, 0, &raw, &[SliceRecord { id: 10, ..rec }])
        .expect("swap")
        .expect("applied");
    assert_eq!(freed, vec![(7, 100), (8, 100)]);
    let ids: Vec<_> = m
        .read_chunk(h, 0)
        .expect("read")
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, vec![10, 9]);
    assert!(m
        .replace_chunk_prefix(h, 0, &raw, &[])
        .expect("stale")
        .is_none());
    let ext = crate::ExternalObject {
        source: "s3://b".into(),
        key: "a/model.bin".into(),
        size: 1 << 30,
        etag: Some("\"e1\"".into()),
        ..Default::default()
    };
    let ext_id = m.put_external(&ext).expect("external");
    assert_eq!(m.get_external(ext_id).expect("read external"), ext);
    assert!(matches!(
        m.get_external(ext_id + 1000),
        Err(MetaError::NotFound)
    ));
    // Imported files read in one batch, mixed with a plain file and an
    // empty one: each gets its own answer, in order.
    let mut inos = Vec::new();
    for i in 0..3 {
        let obj = crate::ExternalObject {
            key: format!("a/shard-{i}.bin"),
            size: 100 + i,
            ..ext.clone()
        };
        inos.push(
            m.import_file(
                &CTX,
                ROOT_INO,
                format!("shard-{i}").as_bytes(),
                &obj,
                0o644,
                None,
            )
            .expect("import"),
        );
    }
    inos.insert(1, h);
    let (empty, _) = m
        .mknod(&CTX, ROOT_INO, b"empty", FileType::File, 0o644, 0, None)
        .expect("empty");
    inos.push(empty);
    let found = m.imported_objects(&inos).expect("batch");
    let keys: Vec<Option<String>> = found
        .iter()
        .map(|f| f.as_ref().map(|(_, o)| o.key.clone()))
        .collect();
    assert_eq!(
        keys,
        vec![
            Some("a/shard-0.bin".into()),
            None,
            Some("a/shard-1.bin".into()),
            Some("a/shard-2.bin".into()),
            None
        ]
    );
    assert_eq!(
        m.imported_object(inos[3])
            .expect("one")
            .map(|(_, o)| o.size),
        Some(102)
    );
    let fa = m.fallocate(h, 0, 0, 5000).expect("fallocate grows");
    assert_eq!(fa.attr.length, 5000);
}

fn xattrs(e: Arc<dyn KvEngine>) {
    let m = formatted(e);
    let (f, _) = m
        .mknod(&CTX, ROOT_INO, b"f", FileType::File, 0o644, 0, None)
        .expect("f");
    assert!(matches!(m.getxattr(f, b"user.a"), Err(MetaError::NoData)));
    assert!(matches!(
        m.setxattr(f, b"user.a", b"1", libc::XATTR_REPLACE),
        Err(MetaError::NoData)
    ));
    m.setxattr(f, b"user.a", b"1", libc::XATTR_CREATE)
        .expect("create");
    assert!(matches!(
        m.setxattr(f, b"user.a", b"2", libc::XATTR_CREATE),
        Err(MetaError::Exists)
    ));
    m.setxattr(f, b"user.a", b"2", 0).expect("overwrite");
    m.setxattr(f, b"user.b", b"", 0).expect("empty value");
    assert_eq!(m.getxattr(f, b"user.a").expect("get"), b"2");
    assert_eq!(
        m.listxattr(f).expect("list"),
        vec![b"user.a".to_vec(), b"user.b".to_vec()]
    );
    m.removexattr(f, b"user.a").expect("remove");
    assert!(matches!(
        m.removexattr(f, b"user.a"),
        Err(MetaError::NoData)
    ));
}

/// An ACL's xattr form as `setfacl` sends it.
fn acl_value(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

fn posix_acls(e: Arc<dyn KvEngine>) {
    use crate::acl::{Kind, ACCESS, DEFAULT, GROUP_OBJ, MASK, OTHER, USER, USER_OBJ};
    use crate::attr::{FLAG_ACL_ACCESS, FLAG_ACL_DEFAULT};
    const NONE: u32 = u32::MAX;
    let m = formatted(e.clone());
    let umask = Ctx {
        umask: 0o022,
        ..CTX
    };
    let (f, a) = m
        .mknod(&umask, ROOT_INO, b"f", FileType::File, 0o666, 0, None)
        .expect("f");
    assert_eq!(a.mode, 0o644, "the umask applies without a default ACL");

    // A named entry: stored, and the mode's group bits become the mask.
    let named = acl_value(&[
        (USER_OBJ, 6, NONE),
        (USER, 4, 2000),
        (GROUP_OBJ, 4, NONE),
        (MASK, 4, NONE),
        (OTHER, 0, NONE),
    ]);
    let a = m.set_acl(&CTX, f, Kind::Access, Some(&named)).expect("set");
    assert_eq!(a.mode, 0o640);
    assert_ne!(a.flags & FLAG_ACL_ACCESS, 0);
    assert_eq!(m.getxattr(f, ACCESS).expect("stored"), named);
    assert!(m.listxattr(f).expect("list").contains(&ACCESS.to_vec()));

    // chmod rewrites owner, mask and other in the same transaction.
    let set = crate::SetAttr {
        mode: Some(0o750),
        ..Default::default()
    };
    m.setattr(f, &set).expect("chmod");
    let back = crate::acl::Acl::decode(&m.getxattr(f, ACCESS).expect("acl")).expect("valid");
    assert_eq!(back.mode_bits(), 0o750);
    assert!(back.entries().iter().any(|e| e.tag == USER && e.perm == 4));

    // An ACL that says no more than the mode is not stored; the mode
    // takes its bits.
    let minimal = acl_value(&[(USER_OBJ, 7, NONE), (GROUP_OBJ, 0, NONE), (OTHER, 5, NONE)]);
    let a = m
        .set_acl(&CTX, f, Kind::Access, Some(&minimal))
        .expect("minimal");
    assert_eq!(a.mode, 0o705);
    assert_eq!(a.flags & FLAG_ACL_ACCESS, 0);
    assert!(matches!(m.getxattr(f, ACCESS), Err(MetaError::NoData)));

    // Setting one as a user outside the file's group drops setgid.
    m.setattr(
        f,
        &crate::SetAttr {
            mode: Some(0o2755),
            ..Default::default()
        },
    )
    .expect("setgid");
    let outsider = Ctx { gid: 4242, ..CTX };
    let a = m
        .set_acl(&outsider, f, Kind::Access, Some(&named))
        .expect("set");
    assert_eq!(a.mode, 0o640);

    // Invalid lists and default ACLs on files are refused, nothing changed.
    let no_mask = acl_value(&[
        (USER_OBJ, 6, NONE),
        (USER, 4, 1),
        (GROUP_OBJ, 4, NONE),
        (OTHER, 0, NONE),
    ]);
    assert!(matches!(
        m.set_acl(&CTX, f, Kind::Access, Some(&no_mask)),
        Err(MetaError::Invalid(_))
    ));
    assert!(matches!(
        m.set_acl(&CTX, f, Kind::Default, Some(&named)),
        Err(MetaError::Access)
    ));
    assert_eq!(m.getxattr(f, ACCESS).expect("kept"), named);

    // A default ACL is inherited: the umask gives way to it, files get
    // it narrowed by their mode, directories also as their default.
    let (d, _) = m
        .mknod(&umask, ROOT_INO, b"d", FileType::Dir, 0o777, 0, None)
        .expect("d");
    let default = acl_value(&[
        (USER_OBJ, 7, NONE),
        (USER, 7, 2000),
        (GROUP_OBJ, 5, NONE),
        (MASK, 7, NONE),
        (OTHER, 5, NONE),
    ]);
    let a = m
        .set_acl(&CTX, d, Kind::Default, Some(&default))
        .expect("default");
    assert_ne!(a.flags & FLAG_ACL_DEFAULT, 0);
    let (child, a) = m
        .mknod(&umask, d, b"child", FileType::File, 0o666, 0, None)
        .expect("child");
    assert_eq!(a.mode, 0o664, "mask rw from the mode, not the umask");
    let inherited =
        crate::acl::Acl::decode(&m.getxattr(child, ACCESS).expect("inherited")).expect("valid");
    assert!(inherited
        .entries()
        .iter()
        .any(|e| e.tag == USER && e.id == 2000));
    assert!(matches!(m.getxattr(child, DEFAULT), Err(MetaError::NoData)));
    let (sub, a) = m
        .mknod(&umask, d, b"sub", FileType::Dir, 0o777, 0, None)
        .expect("sub");
    assert_eq!(a.mode, 0o775);
    assert_eq!(
        m.getxattr(sub, DEFAULT).expect("default inherited"),
        default
    );
    let (_, a) = m
        .mknod(
            &umask,
            d,
            b"link",
            FileType::Symlink,
            0o777,
            0,
            Some(b"child"),
        )
        .expect("symlink");
    assert_eq!(a.flags & (FLAG_ACL_ACCESS | FLAG_ACL_DEFAULT), 0);

    // Removing: the flag goes, new nodes get the umask again; removing
    // what is not there succeeds.
    m.set_acl(&CTX, d, Kind::Default, None).expect("remove");
    m.set_acl(&CTX, d, Kind::Default, None).expect("again");
    let (_, a) = m
        .mknod(&umask, d, b"plain", FileType::File, 0o666, 0, None)
        .expect("plain");
    assert_eq!(a.mode, 0o644);

    // A removed node takes its ACLs with it.
    m.unlink(d, b"child").expect("unlink");
    let left = run_txn(&*e, true, |tx| {
        scan_prefix(tx, &crate::keys::xattr_prefix(child))
    })
    .expect("scan");
    assert!(left.is_empty(), "{left:?}");
}

fn locks(e: Arc<dyn KvEngine>) {
    let a = formatted(e.clone());
    let b = Meta::new(e, MetaConfig::default());
    b.load().expect("load");
    let info = test_session();
    a.new_session(info.clone()).expect("a");
    b.new_session(info).expect("b");
    let (f, _) = a
        .mknod(&CTX, ROOT_INO, b"f", FileType::File, 0o644, 0, None)
        .expect("f");
    a.flock(f, 1, FlockType::Read).expect("shared");
    b.flock(f, 1, FlockType::Read).expect("shared too");
    assert!(matches!(
        b.flock(f, 1, FlockType::Write),
        Err(MetaError::WouldBlock)
    ));
    a.flock(f, 1, FlockType::Unlock).expect("unlock");
    b.flock(f, 1, FlockType::Write).expect("upgrade once alone");
    assert!(matches!(
        a.flock(f, 2, FlockType::Read),
        Err(MetaError::WouldBlock)
    ));
    a.setlk(f, 1, 10, libc::F_WRLCK, 0, 99)
        .expect("posix write");
    assert!(matches!(
        b.setlk(f, 1, 20, libc::F_RDLCK, 50, 60),
        Err(MetaError::WouldBlock)
    ));
    b.setlk(f, 1, 20, libc::F_WRLCK, 100, u64::MAX)
        .expect("disjoint");
    let c = b
        .getlk(f, 1, libc::F_RDLCK, 0, 10)
        .expect("getlk")
        .expect("conflict");
    assert_eq!((c.typ, c.start, c.end, c.pid), (libc::F_WRLCK, 0, 99, 10));
    a.setlk(f, 1, 10, libc::F_UNLCK, 40, 69).expect("split");
    b.setlk(f, 1, 20, libc::F_RDLCK, 50, 60)
        .expect("hole in the middle");
    assert!(b
        .getlk(f, 1, libc::F_WRLCK, 40, 69)
        .expect("getlk")
        .is_none());
    // Of several conflicting locks, the one that starts first is reported
    // (a's [0, 39] was taken before its [70, 99], but record order must
    // not decide: set them the other way round).
    a.setlk(f, 1, 10, libc::F_UNLCK, 0, 99).expect("unlock");
    a.setlk(f, 1, 10, libc::F_WRLCK, 70, 99).expect("upper");
    a.setlk(f, 1, 10, libc::F_RDLCK, 10, 19).expect("lower");
    let first = b
        .getlk(f, 1, libc::F_WRLCK, 0, 99)
        .expect("getlk")
        .expect("conflict");
    assert_eq!((first.typ, first.start, first.end), (libc::F_RDLCK, 10, 19));
    // closing a session releases what it held.
    b.close_session(b.session_id()).expect("close");
    a.flock(f, 3, FlockType::Write).expect("b's flock is gone");
}

fn sessions(e: Arc<dyn KvEngine>) {
    let a = formatted(e.clone());
    let b = Meta::new(e, MetaConfig::default());
    b.load().expect("load");
    let info = test_session();
    a.new_session(info.clone()).expect("a");
    let sb = b.new_session(info).expect("b");
    assert_eq!(a.list_sessions().expect("list").len(), 2);
    let (f, _) = b
        .mknod(&CTX, ROOT_INO, b"f", FileType::File, 0o644, 0, None)
        .expect("f");
    b.open_inode(f);
    b.unlink(ROOT_INO, b"f").expect("unlink open");
    b.flock(f, 1, FlockType::Write).expect("lock");
    // b dies without closing; a cleans it up once its heartbeat is old.
    assert_eq!(a.clean_stale_sessions(-10).expect("clean"), vec![sb]);
    assert_eq!(a.list_sessions().expect("list").len(), 1);
    assert!(
        matches!(a.getattr(f), Err(MetaError::NotFound)),
        "the open-unlinked file is reclaimed"
    );
    assert_eq!(a.pending_deletes(10).expect("pending"), vec![(f, 0)]);
    a.heartbeat().expect("heartbeat");
}

/// Member records: written, refreshed, listed per group (groups whose names
/// share a prefix stay apart), removed.
fn cache_groups(e: Arc<dyn KvEngine>) {
    use crate::MemberRecord;
    let m = formatted(e);
    let rec = |id: &str, weight| MemberRecord {
        id: id.into(),
        addr: "127.0.0.2:9000".into(),
        weight,
        heartbeat_ms: 1,
        ..Default::default()
    };
    m.group_register("gpu", &rec("a", 1)).expect("a");
    m.group_register("gpu", &rec("b", 2)).expect("b");
    m.group_register("gpu2", &rec("c", 1)).expect("c");
    let mut refreshed = rec("a", 1);
    refreshed.heartbeat_ms = 2;
    m.group_register("gpu", &refreshed).expect("refresh");
    let gpu = m.group_members("gpu").expect("list");
    assert_eq!(gpu, vec![refreshed, rec("b", 2)]);
    assert_eq!(m.group_members("gpu2").expect("list").len(), 1);
    m.group_leave("gpu", "a").expect("leave");
    assert_eq!(m.group_members("gpu").expect("list"), vec![rec("b", 2)]);
    assert!(m.group_members("none").expect("list").is_empty());
}

/// The day-2 tools on this engine: the trash keeps a deleted file and gives
/// it back, then purges it; a clone shares the slices and outlives its
/// source; a quota counts what two clients write and refuses what passes
/// it, and fsck finds its usage right.
fn trash_clone_and_quotas(e: Arc<dyn KvEngine>) {
    let m = formatted(e.clone());
    m.update_format(|f| {
        f.trash_days = 1;
        Ok(())
    })
    .expect("trash on");
    let (d, _) = m
        .mknod(&CTX, ROOT_INO, b"d", FileType::Dir, 0o755, 0, None)
        .expect("dir");
    let (f, _) = m
        .mknod(&CTX, d, b"f", FileType::File, 0o644, 0, None)
        .expect("f");
    let id = m.new_slice_id().expect("id");
    let rec = SliceRecord {
        kind: SliceKind::Internal,
        pos: 0,
        id,
        size: 10_000,
        off: 0,
        len: 10_000,
    };
    m.write_slices(f, &[(0, rec)], 10_000).expect("write");
    assert!(!m.unlink(d, b"f").expect("unlink").data_freed);
    let hours = m.readdir(crate::TRASH_INO, false).expect("trash");
    assert_eq!(hours.len(), 1);
    let kept = m.readdir(hours[0].ino, false).expect("hour");
    assert_eq!(kept.len(), 1);
    assert!(kept[0].name.ends_with(b"-f"), "{:?}", kept[0].name);
    let (back_in, back_as) = m
        .restore(&CTX, hours[0].ino, &kept[0].name)
        .expect("restore");
    assert_eq!((back_in, back_as.as_slice()), (d, &b"f"[..]));
    let (again, attr) = m.lookup(d, b"f").expect("restored");
    assert_eq!((again, attr.length), (f, 10_000));
    assert_eq!(m.read_chunk(f, 0).expect("chunk"), vec![rec]);
    m.unlink(d, b"f").expect("unlink again");
    let in_two_days = crate::now().0 + 2 * 86_400;
    let (files, purged) = m
        .purge_trash(in_two_days, std::time::Duration::from_secs(86_400))
        .expect("purge");
    assert_eq!((files, purged), (1, 1));
    assert!(m
        .readdir(crate::TRASH_INO, false)
        .expect("trash")
        .is_empty());
    assert_eq!(m.pending_deletes(10).expect("deletes").len(), 1);

    m.update_format(|f| {
        f.trash_days = 0;
        Ok(())
    })
    .expect("trash off");
    let (g, _) = m
        .mknod(&CTX, d, b"g", FileType::File, 0o644, 0, None)
        .expect("g");
    let id = m.new_slice_id().expect("id");
    let rec = SliceRecord { id, ..rec };
    m.write_slices(g, &[(0, rec)], 10_000).expect("write g");
    let report = m
        .clone_tree(&CTX, d, ROOT_INO, b"copy", true)
        .expect("clone");
    assert_eq!((report.inodes, report.bytes), (2, 10_000));
    let (copy, _) = m.lookup(ROOT_INO, b"copy").expect("copy");
    let (g2, _) = m.lookup(copy, b"g").expect("g in the copy");
    assert_eq!(m.read_chunk(g2, 0).expect("chunk"), vec![rec]);
    m.unlink(d, b"g").expect("source goes");
    let (g_ino, len) = m
        .pending_deletes(10)
        .expect("deletes")
        .into_iter()
        .find(|(ino, _)| *ino == g)
        .expect("g awaits cleanup");
    let freed = m.cleanup_deleted(g_ino, len).expect("cleanup");
    assert!(
        freed.is_empty(),
        "the clone still holds the slice: {freed:?}"
    );
    assert_eq!(m.read_chunk(g2, 0).expect("clone intact"), vec![rec]);

    let other = Meta::new(e, MetaConfig::default());
    other.load().expect("second client");
    let q = m.set_quota(copy, Some(64 << 10), Some(10)).expect("quota");
    assert_eq!((q.used_space, q.used_inodes), (12_288, 1));
    other.sync_quotas().expect("other loads it");
    assert!(other.has_quotas());
    let (h, _) = other
        .mknod(&CTX, copy, b"h", FileType::File, 0o644, 0, None)
        .expect("h");
    let id = other.new_slice_id().expect("id");
    let big = SliceRecord {
        id,
        size: 40_000,
        len: 40_000,
        ..rec
    };
    other.write_slices(h, &[(0, big)], 40_000).expect("write h");
    other.sync_quotas().expect("other adds its usage");
    m.sync_quotas().expect("m reloads");
    let q = m.get_quota(copy).expect("get").expect("quota");
    assert_eq!((q.used_space, q.used_inodes), (12_288 + 40_960, 2));
    let err = m
        .check_quota(copy, 16 << 10, 0)
        .expect_err("past the quota");
    assert_eq!(err.errno(), libc::EDQUOT);
    m.check_quota(copy, 8 << 10, 0).expect("within it");
    m.check_quota(d, 1 << 30, 0).expect("no quota on d");
    assert_eq!(m.statfs_in(copy).expect("df").total_space, 64 << 10);
    m.flush_usage().expect("usage");
    other.flush_usage().expect("usage");
    let fsck = m.fsck(false).expect("fsck");
    assert!(fsck.problems.is_empty(), "{:#?}", fsck.problems);
}
