//! In-process tests of the file system: no kernel, a memory engine and a
//! memory object store.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tessera_chunk::{ChunkConfig, ChunkStore};
use tessera_meta::engines::MemoryEngine;
use tessera_meta::{Ctx, Meta, MetaConfig, ROOT_INO};
use tessera_object::{open_store, StorageOptions};

use crate::{Vfs, VfsConfig};

const CTX: Ctx = Ctx {
    uid: 0,
    gid: 0,
    pid: 1,
    umask: 0,
};

pub(crate) struct Fixture {
    pub(crate) vfs: Arc<Vfs>,
    _rt: tokio::runtime::Runtime,
}

pub(crate) fn fixture(block_size: usize) -> Fixture {
    fixture_with(block_size, None)
}

/// A fixture whose mount has a disk cache in `cache_dir`.
fn fixture_with(block_size: usize, cache_dir: Option<&std::path::Path>) -> Fixture {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let meta = Arc::new(Meta::new(
        Arc::new(MemoryEngine::default()),
        MetaConfig::default(),
    ));
    let mut format = tessera_meta::conformance::test_format();
    format.block_size = block_size as u32;
    meta.init(&format).expect("format");
    let store = open_store("mem://", &StorageOptions::default()).expect("store");
    let config = ChunkConfig {
        volume: "t".into(),
        block_size,
        compact_threshold: 8,
        buffer_size: 1 << 20,
        disk_cache: cache_dir.map(|d| tessera_blockcache::DiskCacheConfig {
            dirs: vec![d.to_path_buf()],
            capacity: 1 << 30,
            free_space_ratio: 0.0,
            expire: None,
            eviction: Default::default(),
        }),
        ..Default::default()
    };
    let chunks = ChunkStore::new(
        store,
        meta.clone(),
        rt.handle().clone(),
        config,
        Arc::new(tessera_metrics::Metrics::new()),
    )
    .expect("chunk store");
    let vfs = Vfs::new(meta, chunks, VfsConfig::default());
    Fixture { vfs, _rt: rt }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn write_read_overwrite_and_reopen() {
    let f = fixture(64 << 10);
    let v = &f.vfs;
    let (ino, _, fh) = v
        .create(&CTX, ROOT_INO, b"f", 0o644, libc::O_RDWR)
        .expect("create");
    let data = pattern(300_000, 1);
    v.write(ino, fh, 0, &data).expect("write");
    assert_eq!(
        v.getattr(ino).expect("attr").length,
        300_000,
        "buffered length is visible"
    );
    assert_eq!(
        v.read(ino, fh, 1000, 5000).expect("read dirty"),
        data[1000..6000]
    );
    v.flush(ino, fh, 0).expect("flush");
    v.write(ino, fh, 100_000, &[7u8; 10]).expect("overwrite");
    let mut expect = data.clone();
    expect[100_000..100_010].fill(7);
    assert_eq!(
        v.read(ino, fh, 99_990, 30).expect("read mixed"),
        expect[99_990..100_020]
    );
    v.release(ino, fh, None).expect("release");
    let (fh, attr) = v.open(ino, libc::O_RDONLY).expect("reopen");
    assert_eq!(attr.length, 300_000);
    assert_eq!(v.read(ino, fh, 0, 400_000).expect("read all"), expect);
    v.release(ino, fh, None).expect("release");
    let (fh, attr) = v
        .open(ino, libc::O_WRONLY | libc::O_TRUNC)
        .expect("open O_TRUNC");
    assert_eq!(attr.length, 0, "O_TRUNC empties the file");
    v.release(ino, fh, None).expect("release");
}

#[test]
fn holes_truncate_and_append() {
    let f = fixture(64 << 10);
    let v = &f.vfs;
    let (ino, _, fh) = v
        .create(&CTX, ROOT_INO, b"f", 0o644, libc::O_RDWR)
        .expect("create");
    v.write(ino, fh, 1 << 20, b"tail")
        .expect("write past a hole");
    v.fsync(ino).expect("fsync");
    let got = v.read(ino, fh, (1 << 20) - 2, 10).expect("read");
    assert_eq!(&got[..], b"\0\0tail");
    v.truncate(ino, (1 << 20) + 2).expect("shrink");
    v.write(ino, fh, 10, b"x").expect("write after shrink");
    assert_eq!(
        v.getattr(ino).expect("attr").length,
        (1 << 20) + 2,
        "a shrink is not undone by later writes"
    );
    v.truncate(ino, (1 << 20) + 6).expect("grow");
    assert_eq!(
        &v.read(ino, fh, 1 << 20, 10).expect("read")[..],
        b"ta\0\0\0\0"
    );
    v.release(ino, fh, None).expect("release");
    let (fh, _) = v
        .open(ino, libc::O_WRONLY | libc::O_APPEND)
        .expect("append open");
    v.write(ino, fh, 0, b"XY").expect("append");
    v.release(ino, fh, None).expect("release");
    let (fh, attr) = v.open(ino, libc::O_RDONLY).expect("open");
    assert_eq!(attr.length, (1 << 20) + 8);
    assert_eq!(
        &v.read(ino, fh, (1 << 20) + 4, 10).expect("read")[..],
        b"\0\0XY"
    );
    v.release(ino, fh, None).expect("release");
}

#[test]
fn deleted_and_compacted_data_leaves_the_store() {
    let f = fixture(4096);
    let v = &f.vfs;
    let store = v.chunks.store().clone();
    let (ino, _, fh) = v
        .create(&CTX, ROOT_INO, b"f", 0o644, libc::O_RDWR)
        .expect("create");
    // Many small non-contiguous writes, each flushed: the chunk fragments.
    for i in 0..20u64 {
        v.write(ino, fh, (19 - i) * 1000, &pattern(1000, i as u8))
            .expect("write");
        v.fsync(ino).expect("fsync");
    }
    let before = v.read(ino, fh, 0, 20_000).expect("read");
    let freed = v
        .chunks
        .compact(ino, 0)
        .expect("compact")
        .expect("a fragmented chunk is compacted");
    v.chunks.delete_slices(&freed);
    assert_eq!(v.meta.read_chunk(ino, 0).expect("records").len(), 1);
    v.release(ino, fh, None).expect("release");
    let (fh, _) = v.open(ino, libc::O_RDONLY).expect("open");
    assert_eq!(
        v.read(ino, fh, 0, 20_000).expect("read"),
        before,
        "compaction keeps the bytes"
    );
    v.release(ino, fh, None).expect("release");
    let objects = |s: &tessera_object::DynStore| f._rt.block_on(s.list("t/")).expect("list").len();
    assert_eq!(
        objects(&store),
        5,
        "only the compacted slice's blocks remain"
    );
    v.unlink(ROOT_INO, b"f").expect("unlink");
    v.chunks.clean_deleted_files().expect("clean");
    assert_eq!(objects(&store), 0, "a deleted file's objects are deleted");
    assert!(store.counters().deletes.load(Ordering::Relaxed) >= 20);
}

#[test]
fn copy_file_range_shares_slices() {
    let f = fixture(64 << 10);
    let v = &f.vfs;
    let (a, _, fa) = v
        .create(&CTX, ROOT_INO, b"a", 0o644, libc::O_RDWR)
        .expect("a");
    let (b, _, fb) = v
        .create(&CTX, ROOT_INO, b"b", 0o644, libc::O_RDWR)
        .expect("b");
    let data = pattern(200_000, 3);
    v.write(a, fa, 0, &data).expect("write");
    v.fsync(a).expect("fsync");
    let puts = v.chunks.store().counters().puts.load(Ordering::Relaxed);
    assert_eq!(
        v.copy_file_range(a, 1000, b, 10, 150_000).expect("copy"),
        150_000
    );
    assert_eq!(
        v.chunks.store().counters().puts.load(Ordering::Relaxed),
        puts,
        "copying uploads nothing"
    );
    assert_eq!(
        v.read(b, fb, 0, 200_000).expect("read")[10..],
        data[1000..151_000]
    );
    v.release(a, fa, None).expect("release");
    v.release(b, fb, None).expect("release");
}

#[test]
fn unlinked_open_file_stays_readable() {
    let f = fixture(64 << 10);
    let v = &f.vfs;
    v.start("/test").expect("session");
    let (ino, _, fh) = v
        .create(&CTX, ROOT_INO, b"f", 0o644, libc::O_RDWR)
        .expect("create");
    v.write(ino, fh, 0, b"still here").expect("write");
    v.flush(ino, fh, 0).expect("flush");
    v.unlink(ROOT_INO, b"f").expect("unlink");
    assert_eq!(&v.read(ino, fh, 0, 100).expect("read")[..], b"still here");
    v.release(ino, fh, None).expect("release");
    assert!(v.getattr(ino).is_err(), "gone after the last close");
    v.shutdown();
}

/// An imported file: its slice points at an object in another bucket (here
/// a local directory). Reads come from that object; a write lands on top
/// without touching it; an object that changed under Tessera gives ESTALE
/// (its file's bytes are no longer there, as mountpoint-s3 says it).
#[test]
fn imported_files_read_from_the_source_object() {
    use tessera_meta::{ExternalObject, FileType, SliceKind, SliceRecord};
    let f = fixture(64 << 10);
    let v = &f.vfs;
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(src.path().join("models")).expect("mkdir");
    let data = pattern(300_000, 9);
    std::fs::write(src.path().join("models/a.bin"), &data).expect("object");
    std::fs::write(src.path().join("models/b.bin"), &data).expect("object");
    let source = format!("file://{}", src.path().display());
    let import = |name: &[u8], key: &str| {
        let id = v
            .meta
            .put_external(&ExternalObject {
                source: source.clone(),
                key: key.into(),
                size: data.len() as u64,
                etag: None,
                ..Default::default()
            })
            .expect("external");
        let (ino, _) = v
            .meta
            .mknod(&CTX, ROOT_INO, name, FileType::File, 0o644, 0, None)
            .expect("mknod");
        let rec = SliceRecord {
            kind: SliceKind::External,
            pos: 0,
            id,
            size: data.len() as u64,
            off: 0,
            len: data.len() as u32,
        };
        v.meta
            .write_slices(ino, &[(0, rec)], data.len() as u64)
            .expect("records");
        ino
    };
    let a = import(b"a.bin", "models/a.bin");
    let fh = v.open(a, libc::O_RDWR).expect("open");
    let got = v.read(a, fh.0, 0, 400_000).expect("read");
    assert!(got[..] == data[..], "bytes of the source object");
    v.write(a, fh.0, 70_000, b"LOCAL").expect("write on top");
    v.flush(a, fh.0, 0).expect("flush");
    let got = v.read(a, fh.0, 69_998, 9).expect("read");
    assert_eq!(
        &got[..],
        &[
            data[69_998],
            data[69_999],
            b'L',
            b'O',
            b'C',
            b'A',
            b'L',
            data[70_005],
            data[70_006]
        ]
    );
    v.release(a, fh.0, None).expect("release");
    assert_eq!(
        std::fs::read(src.path().join("models/a.bin")).expect("source"),
        data,
        "source untouched"
    );

    let b = import(b"b.bin", "models/b.bin");
    std::fs::write(src.path().join("models/b.bin"), b"replaced").expect("replace behind our back");
    let fh = v.open(b, libc::O_RDONLY).expect("open");
    let err = v
        .read(b, fh.0, 0, 4096)
        .expect_err("a changed object is not read");
    assert_eq!(err.errno, libc::ESTALE, "{err}");
    assert!(err.to_string().contains("models/b.bin"), "{err}");
    v.release(b, fh.0, None).expect("release");
}

/// `tessera warmup`'s operations on a file: after a warm-up every block is
/// on disk (and pinned when asked), a read makes no GET, an eviction
/// empties the cache, and holes count as no data.
#[test]
fn warm_check_evict_and_pin_a_file() {
    use tessera_chunk::CacheAction;
    let cache = tempfile::tempdir().expect("tempdir");
    let f = fixture_with(64 << 10, Some(cache.path()));
    let v = &f.vfs;
    let (ino, _, fh) = v
        .create(&CTX, ROOT_INO, b"model.bin", 0o644, libc::O_RDWR)
        .expect("create");
    let data = pattern(1_000_000, 4);
    v.write(ino, fh, 0, &data).expect("write");
    // A hole of 200,000 bytes, then 1,000 more bytes of data.
    v.write(ino, fh, 1_200_000, &data[..1000]).expect("write");
    v.release(ino, fh, None).expect("close");
    let whole = u64::MAX;
    // The two partial blocks (16,960 and 1,000 bytes) go to the disk cache
    // after their upload, in the background: wait for them, or the evict
    // could run first and they would land after it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while v
        .cache_range(ino, 0, whole, CacheAction::Check)
        .expect("check")
        .disk
        < 17_960
    {
        assert!(
            std::time::Instant::now() < deadline,
            "partial blocks never reached the disk cache"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let r = v
        .cache_range(ino, 0, whole, CacheAction::Evict)
        .expect("evict");
    assert_eq!((r.bytes, r.memory, r.disk), (1_001_000, 0, 0));
    let gets = || v.chunks.store().counters().gets.load(Ordering::Relaxed);
    let before = gets();
    let warm = CacheAction::Warm {
        pin: Some(std::time::Duration::from_secs(600)),
    };
    let r = v.cache_range(ino, 0, whole, warm).expect("warm");
    assert_eq!(r.failed_blocks, 0, "{:?}", r.error);
    assert_eq!(
        (r.bytes, r.cached, r.disk, r.pinned),
        (1_001_000, 1_001_000, 1_001_000, 1_001_000)
    );
    assert_eq!(r.memory, 0, "a warm-up leaves the memory tier alone");
    assert!(r.fetched >= 1_001_000, "fetched {}", r.fetched);
    let fetched = gets() - before;
    assert!(fetched >= 16, "one GET per block: {fetched}");
    // Warm again: nothing left to fetch.
    let r = v.cache_range(ino, 0, whole, warm).expect("warm again");
    assert_eq!(r.fetched, 0);
    let after_warm = gets();
    let fh = v.open(ino, libc::O_RDONLY).expect("open").0;
    let back = v.read(ino, fh, 0, 1_300_000).expect("read");
    assert_eq!(&back[..1_000_000], &data[..]);
    assert!(back[1_000_000..1_200_000].iter().all(|&b| b == 0));
    assert_eq!(&back[1_200_000..], &data[..1000]);
    v.release(ino, fh, None).expect("close");
    assert_eq!(gets(), after_warm, "a warmed file is read without a GET");
    let r = v
        .cache_range(ino, 0, whole, CacheAction::Unpin)
        .expect("unpin");
    assert_eq!((r.disk, r.pinned), (1_001_000, 0));
    let r = v
        .cache_range(ino, 0, whole, CacheAction::Evict)
        .expect("evict");
    assert_eq!((r.cached, r.memory, r.disk), (0, 0, 0));
    // A range past the end is empty; a directory has no blocks.
    let r = v
        .cache_range(ino, 5_000_000, 10, CacheAction::Check)
        .expect("past end");
    assert_eq!(r, Default::default());
    assert_eq!(
        v.cache_range(ROOT_INO, 0, whole, CacheAction::Check)
            .expect_err("directory")
            .errno,
        libc::EISDIR
    );
}

/// The cache-control requests of `tessera warmup` as the mount takes
/// them: a local copy is written and then dropped by an eviction, a request
/// for a cache group this mount is not in is refused with a message, and a
/// background warm-up answers at once and is done by the mount's workers.
#[test]
fn cache_control_requests_from_the_adapter() {
    use crate::control::{CacheControl, ControlOp};
    let cache = tempfile::tempdir().expect("tempdir");
    let f = fixture_with(64 << 10, Some(cache.path()));
    let v = &f.vfs;
    let (ino, _, fh) = v
        .create(&CTX, ROOT_INO, b"adapter.bin", 0o644, libc::O_RDWR)
        .expect("create");
    let data = pattern(500_000, 9);
    v.write(ino, fh, 0, &data).expect("write");
    v.release(ino, fh, None).expect("close");
    let req = |op, group: Option<&str>, background| CacheControl {
        op,
        offset: 0,
        length: u64::MAX,
        group: group.map(str::to_string),
        background,
    };
    let r = v
        .cache_control(ino, &req(ControlOp::LocalCopy, None, false))
        .expect("local copy");
    assert_eq!((r.bytes, r.cached), (500_000, 500_000));
    let copy = v.local_copy(ino).expect("a copy matching the file");
    assert_eq!(std::fs::read(&copy).expect("copy"), data);
    v.cache_control(ino, &req(ControlOp::Evict, None, false))
        .expect("evict");
    assert!(v.local_copy(ino).is_none(), "evict drops the local copy");

    let r = v
        .cache_control(ino, &req(ControlOp::Warm { pin: None }, Some("gpu"), false))
        .expect("group");
    assert_eq!(r.failed_blocks, 1);
    let message = r.error.expect("a message");
    assert!(
        message.contains("not in cache group \"gpu\"") && message.contains("--cache-group"),
        "{message}"
    );

    let (tx, rx) = std::sync::mpsc::channel();
    v.submit_cache_control(
        ino,
        req(ControlOp::Warm { pin: None }, None, true),
        move |r| tx.send(r.map(|r| r.bytes)).expect("send"),
    );
    let answered = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("answered");
    assert_eq!(
        answered.expect("queued"),
        0,
        "a background request answers at once"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = v
            .cache_control(ino, &req(ControlOp::Check, None, false))
            .expect("check");
        if r.disk == 500_000 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not warmed: {r:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    let (tx, rx) = std::sync::mpsc::channel();
    v.submit_cache_control(ino, req(ControlOp::Check, None, false), move |r| {
        tx.send(r.map(|r| r.cached)).expect("send")
    });
    let cached = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("answered");
    assert_eq!(cached.expect("check"), 500_000);
}

#[test]
fn times_set_on_an_open_file_with_buffered_writes_survive_its_close() {
    let f = fixture(64 << 10);
    let v = &f.vfs;
    for size in [10usize, 200_000] {
        let name = format!("f{size}");
        let (ino, _, fh) = v
            .create(&CTX, ROOT_INO, name.as_bytes(), 0o644, libc::O_RDWR)
            .expect("create");
        v.write(ino, fh, 0, &pattern(size, 1)).expect("write");
        let when = Some(Some((1_000_000_000, 5)));
        let set = tessera_meta::SetAttr {
            atime: when,
            mtime: when,
            ..Default::default()
        };
        v.setattr(ino, &set, None).expect("futimens");
        v.flush(ino, fh, 0).expect("close");
        v.release(ino, fh, None).expect("release");
        let a = v.getattr(ino).expect("attr");
        assert_eq!((a.mtime, a.mtime_ns), (1_000_000_000, 5), "size {size}");
        assert_eq!(a.length, size as u64);
    }
}

#[test]
fn create_without_o_excl_opens_a_file_another_mount_just_made() {
    let f = fixture(64 << 10);
    let v = &f.vfs;
    // "Another mount" made it through the metadata behind this one's back.
    let (made, _) = v
        .meta
        .mknod(
            &CTX,
            ROOT_INO,
            b"log",
            tessera_meta::FileType::File,
            0o644,
            0,
            None,
        )
        .expect("made elsewhere");
    let (ino, _, fh) = v
        .create(&CTX, ROOT_INO, b"log", 0o644, libc::O_RDWR | libc::O_CREAT)
        .expect("O_CREAT opens the existing file");
    assert_eq!(ino, made);
    v.release(ino, fh, None).expect("release");
    let err = v
        .create(
            &CTX,
            ROOT_INO,
            b"log",
            0o644,
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
        )
        .expect_err("O_EXCL still refuses");
    assert_eq!(err.errno, libc::EEXIST);
    let user = Ctx {
        uid: 1000,
        gid: 1000,
        pid: 2,
        umask: 0,
    };
    let err = v
        .create(
            &user,
            ROOT_INO,
            b"log",
            0o644,
            libc::O_WRONLY | libc::O_CREAT,
        )
        .expect_err("a user without write permission");
    assert_eq!(err.errno, libc::EACCES);
}

#[test]
fn fallocate_by_a_user_takes_setuid_and_setgid_off() {
    let f = fixture(64 << 10);
    let v = &f.vfs;
    let user = Ctx {
        uid: 1000,
        gid: 1000,
        pid: 2,
        umask: 0,
    };
    // A user in the file's group (the files are root's, group 0).
    let member = Ctx { gid: 0, ..user };
    for (mode, by, after) in [
        (0o4755, &user, 0o755),
        (0o2755, &user, 0o755),
        // setgid without group execute: dropped for a caller outside the
        // file's group only (xfstests generic/683).
        (0o2745, &user, 0o745),
        (0o2745, &member, 0o2745),
        (0o6666, &user, 0o666),
        (0o6755, &CTX, 0o6755),
    ] {
        let (ino, _, fh) = v
            .create(
                &CTX,
                ROOT_INO,
                format!("f{mode:o}-{}-{}", by.uid, by.gid).as_bytes(),
                0o644,
                libc::O_RDWR,
            )
            .expect("create");
        let set = tessera_meta::SetAttr {
            mode: Some(mode),
            ..Default::default()
        };
        v.setattr(ino, &set, None).expect("chmod");
        v.fallocate(
            by,
            ino,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            10,
        )
        .expect("fallocate");
        assert_eq!(
            v.getattr(ino).expect("attr").mode,
            after,
            "{mode:o} after fallocate by uid {}",
            by.uid
        );
        v.release(ino, fh, None).expect("release");
    }
}

#[test]
fn rewinddir_shows_new_names_and_a_replaced_open_directory_still_stats() {
    let f = fixture(64 << 10);
    let v = &f.vfs;
    let (d, _) = v.mkdir(&CTX, ROOT_INO, b"d", 0o755).expect("mkdir");
    let fh = v.opendir(d).expect("opendir");
    let names = |entries: &[tessera_meta::Entry]| -> Vec<Vec<u8>> {
        entries.iter().map(|e| e.name.clone()).collect()
    };
    assert_eq!(
        names(&v.readdir(fh, 0).expect("first read")),
        vec![b".".to_vec(), b"..".to_vec()]
    );
    v.mkdir(&CTX, d, b"new", 0o755).expect("add a name");
    // Reading on from where it was keeps the listing taken at opendir...
    assert_eq!(v.readdir(fh, 2).expect("read on").len(), 2);
    // ...and a rewind takes it again.
    assert!(names(&v.readdir(fh, 0).expect("rewound")).contains(&b"new".to_vec()));
    v.releasedir(fh);

    // Names made between opendir and the first read (which a rewinddir
    // right after opendir does not distinguish) are listed too.
    let fh = v.opendir(d).expect("opendir");
    v.mkdir(&CTX, d, b"newer", 0o755).expect("add a name");
    assert!(names(&v.readdir(fh, 0).expect("first read")).contains(&b"newer".to_vec()));
    v.releasedir(fh);

    // A directory removed while open lists as `.` and `..`.
    let (gone, _) = v.mkdir(&CTX, d, b"gone", 0o755).expect("mkdir");
    let fh = v.opendir(gone).expect("opendir");
    v.rmdir(d, b"gone").expect("rmdir");
    assert_eq!(
        v.readdir(fh, 0).expect("read the removed directory").len(),
        2
    );
    v.releasedir(fh);

    // An empty directory renamed over while open: its handle still stats.
    let (a, _) = v.mkdir(&CTX, ROOT_INO, b"a", 0o755).expect("a");
    let (b, _) = v.mkdir(&CTX, ROOT_INO, b"b", 0o755).expect("b");
    let fh = v.opendir(b).expect("opendir b");
    v.rename(ROOT_INO, b"a", ROOT_INO, b"b", 0)
        .expect("rename a over b");
    let gone = v.getattr(b).expect("fstat of the open, replaced directory");
    assert_eq!((gone.nlink, gone.typ), (0, tessera_meta::FileType::Dir));
    assert_eq!(v.lookup(ROOT_INO, b"b").expect("b is a now").0, a);
    v.releasedir(fh);
    assert_eq!(v.getattr(b).expect_err("closed").errno, libc::ENOENT);
}

fn lock(ino: u64, owner: u64, pid: u32, typ: i32, block: bool) -> crate::LockRequest {
    crate::LockRequest {
        ino,
        fh: None,
        owner,
        pid,
        typ,
        start: 0,
        end: u64::MAX,
        block,
    }
}

#[test]
fn a_blocking_lock_waits_off_the_callers_thread_and_gives_up_when_its_process_dies() {
    let f = fixture(64 << 10);
    let v = &f.vfs;
    let (ino, _, fh) = v
        .create(&CTX, ROOT_INO, b"locked", 0o644, libc::O_RDWR)
        .expect("create");
    let me = std::process::id();
    let (tx, rx) = std::sync::mpsc::channel();
    let answer = |tx: std::sync::mpsc::Sender<crate::Result<()>>| {
        Box::new(move |r| {
            let _ = tx.send(r);
        }) as Box<dyn FnOnce(crate::Result<()>) + Send>
    };
    v.setlk(lock(ino, 1, me, libc::F_WRLCK, false), answer(tx.clone()));
    assert!(rx.recv().expect("answered").is_ok(), "owner 1 locks");
    // Owner 2 waits, and the call returns at once: the wait is elsewhere.
    let started = std::time::Instant::now();
    v.setlk(lock(ino, 2, me, libc::F_WRLCK, true), answer(tx.clone()));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "the call waited"
    );
    assert!(
        rx.recv_timeout(std::time::Duration::from_millis(300))
            .is_err(),
        "still waiting"
    );
    // Meanwhile the mount answers other lock calls (the unlock included).
    v.setlk(lock(ino, 1, me, libc::F_UNLCK, false), answer(tx.clone()));
    let first = rx.recv().expect("answered");
    let second = rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("the waiter got the lock");
    assert!(first.is_ok() && second.is_ok(), "{first:?} {second:?}");
    // A waiter whose process is gone gives up instead of taking the lock.
    let mut child = std::process::Command::new("true").spawn().expect("spawn");
    let dead = child.id();
    child.wait().expect("reap");
    v.setlk(lock(ino, 3, dead, libc::F_WRLCK, true), answer(tx.clone()));
    let gave_up = rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("answered");
    assert_eq!(gave_up.expect_err("gave up").errno, libc::EINTR);
    // So does one whose process has a signal to take (a stopped process
    // sent SIGTERM keeps it pending).
    let mut stopped = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawn");
    let pid = stopped.id();
    // SAFETY: signals to a child this test spawned and still owns.
    unsafe {
        libc::kill(pid as i32, libc::SIGSTOP);
        libc::kill(pid as i32, libc::SIGTERM);
    }
    v.setlk(lock(ino, 4, pid, libc::F_WRLCK, true), answer(tx.clone()));
    let interrupted = rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("answered");
    assert_eq!(interrupted.expect_err("interrupted").errno, libc::EINTR);
    let _ = stopped.kill();
    let _ = stopped.wait();
    v.setlk(lock(ino, 2, me, libc::F_UNLCK, false), answer(tx));
    v.release(ino, fh, None).expect("release");
}

/// Locks taken through a handle end when it is released: an open file
/// description lock belongs to the description, and the kernel sends no
/// unlock for it at close.
#[test]
fn releasing_a_handle_ends_the_locks_taken_through_it() {
    let f = fixture(64 << 10);
    let v = &f.vfs;
    let (ino, _, fh) = v
        .create(&CTX, ROOT_INO, b"ofd", 0o644, libc::O_RDWR)
        .expect("create");
    let (other, _) = v.open(ino, libc::O_RDWR).expect("open");
    let (tx, rx) = std::sync::mpsc::channel();
    let ask = |fh: u64, owner: u64| {
        let tx = tx.clone();
        let mut l = lock(ino, owner, 0, libc::F_WRLCK, false);
        l.fh = Some(fh);
        v.setlk(
            l,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().expect("answered")
    };
    assert!(ask(fh, 0xd1).is_ok());
    assert_eq!(ask(other, 0xd2).expect_err("held").errno, libc::EAGAIN);
    v.release(ino, fh, None).expect("release");
    assert!(
        ask(other, 0xd2).is_ok(),
        "the released handle's lock is gone"
    );
    v.release(ino, other, None).expect("release");

    // The kernel sends the release after close() has returned: a trylock
    // right behind it sees the lock gone, not a conflict with a release
    // still in flight.
    let (first, _) = v.open(ino, libc::O_RDWR).expect("open");
    let (second, _) = v.open(ino, libc::O_RDWR).expect("open");
    assert!(ask(first, 0xe1).is_ok());
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            v.release(ino, first, None).expect("release");
        });
        assert!(
            ask(second, 0xe2).is_ok(),
            "the lock of a handle released just now"
        );
    });
    v.release(ino, second, None).expect("release");

    // A process's POSIX lock taken again through a new handle survives
    // the late release of the handle it first locked through.
    let (old, _) = v.open(ino, libc::O_RDWR).expect("open");
    assert!(ask(old, 0xf1).is_ok());
    v.flush(ino, old, 0xf1)
        .expect("close: the flush drops its locks");
    let (new, _) = v.open(ino, libc::O_RDWR).expect("open again");
    assert!(
        ask(new, 0xf1).is_ok(),
        "locked again through the new handle"
    );
    v.release(ino, old, None)
        .expect("the old handle's release arrives late");
    let (other, _) = v.open(ino, libc::O_RDWR).expect("open");
    assert_eq!(
        ask(other, 0xf2)
            .expect_err("the process still holds it")
            .errno,
        libc::EAGAIN
    );
    v.release(ino, other, None).expect("release");
    v.release(ino, new, None).expect("release");
}

#[test]
fn fallocate_beyond_the_free_space_is_enospc() {
    let f = fixture(64 << 10);
    let v = &f.vfs;
    let (ino, _, fh) = v
        .create(&CTX, ROOT_INO, b"big", 0o644, libc::O_RDWR)
        .expect("create");
    let free = v.statfs(ROOT_INO).expect("statfs").avail_space;
    let err = v
        .fallocate(&CTX, ino, 0, 0, free + 1)
        .expect_err("more than is free");
    assert_eq!(err.errno, libc::ENOSPC);
    assert_eq!(v.getattr(ino).expect("attr").length, 0, "nothing allocated");
    v.fallocate(&CTX, ino, 0, 0, 1 << 20)
        .expect("a reasonable allocation");
    v.fallocate(
        &CTX,
        ino,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        0,
        free + 1,
    )
    .expect("punching frees, whatever its length");
    v.release(ino, fh, None).expect("release");
}

/// `--open-cache` remembers read-only opens, each with the file's slice
/// records: the map stays bounded however many files are opened.
#[test]
fn the_open_cache_stays_bounded() {
    let f = fixture(64 << 10);
    let v = Vfs::new(
        f.vfs.meta.clone(),
        f.vfs.chunks.clone(),
        VfsConfig {
            open_cache: std::time::Duration::from_secs(600),
            ..VfsConfig::default()
        },
    );
    for i in 0..crate::MAX_CACHED_OPENS + 10 {
        let (ino, _, fh) = v
            .create(
                &CTX,
                ROOT_INO,
                format!("f{i}").as_bytes(),
                0o644,
                libc::O_RDWR,
            )
            .expect("create");
        v.release(ino, fh, None).expect("release");
        let (fh, _) = v.open(ino, libc::O_RDONLY).expect("open");
        v.release(ino, fh, None).expect("release");
        let cached = v.open_cache.lock().len();
        assert!(
            cached <= crate::MAX_CACHED_OPENS,
            "{cached} remembered opens"
        );
    }
}

/// Reads set the access time by the mount's rule: relatime updates it when
/// it is not after the last change (once, not at every read), noatime
/// never, strictatime at every open that reads.
#[test]
fn reads_keep_the_access_time_by_the_mounts_rule() {
    let f = fixture(64 << 10);
    let mount = |atime| {
        Vfs::new(
            f.vfs.meta.clone(),
            f.vfs.chunks.clone(),
            VfsConfig {
                atime,
                ..VfsConfig::default()
            },
        )
    };
    let read_once = |v: &Vfs, ino| {
        let (fh, _) = v.open(ino, libc::O_RDONLY).expect("open");
        v.read(ino, fh, 0, 10).expect("read");
        v.release(ino, fh, None).expect("release");
        let a = v.getattr(ino).expect("attr");
        ((a.atime, a.atime_ns), (a.ctime, a.ctime_ns))
    };
    for (mode, first, again) in [
        (crate::AtimeMode::NoAtime, false, false),
        (crate::AtimeMode::RelAtime, true, false),
        (crate::AtimeMode::StrictAtime, true, true),
    ] {
        let v = mount(mode);
        let name = format!("{mode:?}");
        let (ino, _, fh) = v
            .create(&CTX, ROOT_INO, name.as_bytes(), 0o644, libc::O_RDWR)
            .expect("create");
        v.write(ino, fh, 0, b"some bytes").expect("write");
        v.release(ino, fh, None).expect("release");
        let a = v.getattr(ino).expect("attr");
        let before = ((a.atime, a.atime_ns), (a.ctime, a.ctime_ns));
        std::thread::sleep(std::time::Duration::from_millis(20));
        let after_first = read_once(&v, ino);
        assert_eq!(after_first.0 > before.0, first, "{mode:?}: first read");
        assert_eq!(after_first.1, before.1, "{mode:?}: a read changes no ctime");
        std::thread::sleep(std::time::Duration::from_millis(20));
        let after_second = read_once(&v, ino);
        assert_eq!(
            after_second.0 > after_first.0,
            again,
            "{mode:?}: second read"
        );
    }
}

/// The kernel asks for `security.capability` before every write(2): for a
/// file open here that had no xattrs at its open, it is answered without
/// asking the engine (shown by a value set behind the mount's back, as
/// another mount would, which this open does not see); a set through this
/// mount, or the next open, asks the engine again.
#[test]
fn the_capability_check_of_each_write_costs_no_round_trip() {
    let f = fixture(64 << 10);
    let v = &f.vfs;
    let (ino, _, fh) = v
        .create(&CTX, ROOT_INO, b"plain", 0o644, libc::O_RDWR)
        .expect("create");
    v.meta
        .setxattr(ino, b"security.capability", b"elsewhere", 0)
        .expect("set by another mount");
    let e = v
        .getxattr(ino, b"security.capability")
        .expect_err("from the open");
    assert_eq!(e.errno, libc::ENODATA);
    v.release(ino, fh, None).expect("release");
    let (fh, _) = v.open(ino, libc::O_RDWR).expect("open again");
    assert_eq!(
        v.getxattr(ino, b"security.capability")
            .expect("seen at the next open"),
        b"elsewhere"
    );
    v.release(ino, fh, None).expect("release");

    let (ino, _, fh) = v
        .create(&CTX, ROOT_INO, b"capable", 0o644, libc::O_RDWR)
        .expect("create");
    v.setxattr(&CTX, ino, b"security.capability", b"caps", 0)
        .expect("set here");
    assert_eq!(
        v.getxattr(ino, b"security.capability")
            .expect("set here is seen"),
        b"caps"
    );
    v.release(ino, fh, None).expect("release");
}

/// F_SETLKW that would close a cycle of waiters fails with EDEADLK (LTP
/// fcntl17): A holds [0,9] and waits for [20,29], which B holds; B then
/// asking for [0,9] would wait forever. Owners of one process are told
/// apart by owner, not pid (two threads' OFD locks).
#[test]
fn a_lock_wait_that_closes_a_cycle_is_refused_with_edeadlk() {
    let f = fixture(64 << 10);
    let v = &f.vfs;
    let (ino, _, fh) = v
        .create(&CTX, ROOT_INO, b"cycle", 0o644, libc::O_RDWR)
        .expect("create");
    let me = std::process::id();
    let (tx, rx) = std::sync::mpsc::channel();
    let answer = |tx: &std::sync::mpsc::Sender<(u64, crate::Result<()>)>, who: u64| {
        let tx = tx.clone();
        Box::new(move |r| {
            let _ = tx.send((who, r));
        }) as Box<dyn FnOnce(crate::Result<()>) + Send>
    };
    let range = |owner, typ, start, end, block| crate::LockRequest {
        ino,
        fh: None,
        owner,
        pid: me,
        typ,
        start,
        end,
        block,
    };
    let (a, b) = (11, 22);
    v.setlk(range(a, libc::F_WRLCK, 0, 9, false), answer(&tx, a));
    v.setlk(range(b, libc::F_WRLCK, 20, 29, false), answer(&tx, b));
    for _ in 0..2 {
        assert!(rx.recv().expect("answered").1.is_ok());
    }
    v.setlk(range(a, libc::F_WRLCK, 20, 29, true), answer(&tx, a));
    assert!(
        rx.recv_timeout(std::time::Duration::from_millis(300))
            .is_err(),
        "a waits for b"
    );
    v.setlk(range(b, libc::F_WRLCK, 0, 9, true), answer(&tx, b));
    let (who, r) = rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("answered at once");
    assert_eq!(who, b);
    assert_eq!(r.expect_err("deadlock").errno, libc::EDEADLK);
    // A wait that closes no cycle still waits, and gets the lock in time.
    v.setlk(range(b, libc::F_UNLCK, 20, 29, false), answer(&tx, b));
    let mut got = Vec::new();
    for _ in 0..2 {
        let (who, r) = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("answered");
        assert!(r.is_ok(), "{who}: {r:?}");
        got.push(who);
    }
    got.sort();
    assert_eq!(got, vec![a, b], "b's unlock, then a's lock");
    v.setlk(range(a, libc::F_UNLCK, 0, u64::MAX, false), answer(&tx, a));
    let _ = rx.recv();
    v.release(ino, fh, None).expect("release");
}

/// A process closes a file (flush, then a release the kernel sends late)
/// and meanwhile locks it again: the late release of the closed handle must
/// not drop the new lock (LTP fcntl14 saw a conflicting lock granted, 2 in
/// 10,000 rounds, when the new lock was not yet on record on its handle).
#[test]
fn a_late_release_keeps_a_lock_the_process_took_again_after_its_close() {
    let f = fixture(64 << 10);
    let v = &f.vfs;
    let (ino, _, fh1) = v
        .create(&CTX, ROOT_INO, b"relocked", 0o644, libc::O_RDWR)
        .expect("create");
    let me = std::process::id();
    let (tx, rx) = std::sync::mpsc::channel();
    let answer = |tx: &std::sync::mpsc::Sender<crate::Result<()>>| {
        let tx = tx.clone();
        Box::new(move |r| {
            let _ = tx.send(r);
        }) as Box<dyn FnOnce(crate::Result<()>) + Send>
    };
    let (p, q) = (101, 202);
    let with = |owner, fh, typ| crate::LockRequest {
        fh,
        ..lock(ino, owner, me, typ, false)
    };
    v.setlk(with(p, Some(fh1), libc::F_WRLCK), answer(&tx));
    assert!(rx.recv().expect("answered").is_ok());
    // close(): the flush drops the process's locks; the release is late.
    v.flush(ino, fh1, p).expect("flush");
    // The process locks again before that release arrives.
    v.setlk(with(p, None, libc::F_WRLCK), answer(&tx));
    assert!(rx.recv().expect("answered").is_ok());
    v.release(ino, fh1, None).expect("late release");
    // Another process is still refused: the lock held.
    let (_, _) = v.open(ino, libc::O_RDWR).expect("open");
    v.setlk(with(q, None, libc::F_WRLCK), answer(&tx));
    assert_eq!(
        rx.recv().expect("answered").expect_err("held").errno,
        libc::EAGAIN
    );
}

/// With `--open-cache`, the first lookup in a directory reads it whole —
/// names, attributes, every file's records — and lookups and opens of its
/// files are then answered from that for the open-cache time: another
/// mount's changes do not show within it (what the user asked for), this
/// mount's own changes retire it at once, and a directory too large to read
/// whole is looked up name by name.
#[test]
fn a_trusted_listing_answers_lookups_and_opens_of_its_directory() {
    let f = fixture(64 << 10);
    let other = &f.vfs;
    let (dir, _) = other.mkdir(&CTX, ROOT_INO, b"repo", 0o755).expect("mkdir");
    let write = |name: &[u8], data: &[u8]| {
        let (ino, fh) = match other.lookup(dir, name) {
            Ok((ino, _)) => (
                ino,
                other
                    .open(ino, libc::O_RDWR | libc::O_TRUNC)
                    .expect("open")
                    .0,
            ),
            Err(_) => {
                let (ino, _, fh) = other
                    .create(&CTX, dir, name, 0o644, libc::O_RDWR)
                    .expect("create");
                (ino, fh)
            }
        };
        other.write(ino, fh, 0, data).expect("write");
        other.release(ino, fh, None).expect("release");
        ino
    };
    let a = write(b"a", b"first bytes");
    write(b"b", &vec![7u8; 200 << 10]);
    let ttl = std::time::Duration::from_millis(1500);
    let trusting = Vfs::new(
        other.meta.clone(),
        other.chunks.clone(),
        VfsConfig {
            open_cache: ttl,
            ..VfsConfig::default()
        },
    );
    let read_all = |v: &Vfs, ino| {
        let (fh, attr) = v.open(ino, libc::O_RDONLY).expect("open");
        let got = v.read(ino, fh, 0, attr.length as usize + 10).expect("read");
        v.release(ino, fh, None).expect("release");
        got
    };
    let (found, attr) = trusting.lookup(dir, b"a").expect("lookup");
    assert_eq!((found, attr.length), (a, 11));
    assert!(trusting.dir_cache.get(dir, ttl).is_some(), "listing kept");
    assert!(
        trusting.cached_open(a).is_some(),
        "open primed by the listing"
    );
    assert_eq!(&read_all(&trusting, a)[..], b"first bytes");

    // Another mount's changes: not seen within the time.
    write(b"a", b"second");
    other.unlink(dir, b"b").expect("unlink");
    other
        .create(&CTX, dir, b"c", 0o644, libc::O_RDWR)
        .map(|(ino, _, fh)| other.release(ino, fh, None))
        .expect("create c")
        .expect("release");
    assert!(trusting.lookup(dir, b"b").is_ok(), "b still listed");
    let absent = trusting.lookup(dir, b"c").expect_err("c not listed yet");
    assert_eq!(absent.errno, libc::ENOENT);
    // The old bytes while they are stored, else the new ones whole (their
    // blocks gone, the records and the length are read again): never the
    // new bytes cut or padded to the old length.
    let got = read_all(&trusting, a);
    assert!(
        &got[..] == b"first bytes" || &got[..] == b"second",
        "{got:?}"
    );

    // Past the time, the directory is read again.
    std::thread::sleep(ttl + std::time::Duration::from_millis(100));
    assert!(trusting.lookup(dir, b"b").is_err(), "b gone");
    assert!(trusting.lookup(dir, b"c").is_ok(), "c there");
    assert_eq!(&read_all(&trusting, a)[..], b"second");

    // This mount's own change retires the listing at once.
    trusting
        .create(&CTX, dir, b"d", 0o644, libc::O_RDWR)
        .map(|(ino, _, fh)| trusting.release(ino, fh, None))
        .expect("create d")
        .expect("release");
    other.unlink(dir, b"c").expect("unlink c");
    assert!(trusting.lookup(dir, b"c").is_err(), "asked again");
    assert!(trusting.lookup(dir, b"d").is_ok());
    // A mount that is changing things looks names up one by one (a
    // directory being filled is not read whole at every lookup); once it
    // has been quiet for a second, a lookup reads the directory whole.
    assert!(trusting.dir_cache.get(dir, ttl).is_none(), "not read whole");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(trusting.lookup(dir, b"d").is_ok());
    assert!(trusting.dir_cache.get(dir, ttl).is_some(), "read whole");

    // A directory larger than a listing is read whole is looked up by name.
    let (big, _) = other.mkdir(&CTX, ROOT_INO, b"big", 0o755).expect("mkdir");
    for i in 0..=crate::listing::MAX_TRUSTED_ENTRIES {
        other
            .mknod(
                &CTX,
                big,
                format!("f{i}").as_bytes(),
                libc::S_IFREG | 0o644,
                0,
            )
            .expect("mknod");
    }
    assert!(trusting.lookup(big, b"f7").is_ok());
    assert!(trusting.listing_too_large(big));
    assert!(trusting.dir_cache.get(big, ttl).is_none());
    other
        .mknod(&CTX, big, b"late", libc::S_IFREG | 0o644, 0)
        .expect("mknod");
    assert!(trusting.lookup(big, b"late").is_ok(), "asked by name");
}
