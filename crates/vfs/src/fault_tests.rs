//! The writer's and the reader's error paths, driven through a store that
//! fails, alters, shortens and stalls requests on purpose
//! ([`tessera_object::faults::Faulty`]). Two "mounts" (VFS instances) share
//! one metadata engine and one store, so a reader starts with empty caches.
//!
//! What must hold, whatever the store does: a read returns the bytes that
//! were written or an error, never other bytes; a failed upload is reported
//! at fsync/close and never committed as a hole; blocks of a write that
//! failed are removed from the store.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tessera_chunk::{ChunkConfig, ChunkStore};
use tessera_meta::engines::MemoryEngine;
use tessera_meta::{Compression, Ctx, Meta, MetaConfig, ROOT_INO};
use tessera_object::faults::{Fault, Faulty, Method};
use tessera_object::{open_store, DynStore, ObjectStore, StorageOptions};

use crate::{Vfs, VfsConfig};

const CTX: Ctx = Ctx {
    uid: 0,
    gid: 0,
    pid: 1,
    umask: 0,
};
const BLOCK: usize = 64 << 10;

struct World {
    meta: Arc<Meta>,
    faulty: Arc<Faulty>,
    compression: Compression,
    rt: tokio::runtime::Runtime,
}

impl World {
    fn new(compression: Compression) -> World {
        let meta = Arc::new(Meta::new(
            Arc::new(MemoryEngine::default()),
            MetaConfig::default(),
        ));
        let mut format = tessera_meta::conformance::test_format();
        format.block_size = BLOCK as u32;
        format.compression = compression;
        meta.init(&format).expect("format");
        World {
            meta,
            faulty: Faulty::wrap(open_store("mem://", &StorageOptions::default()).expect("store")),
            compression,
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime"),
        }
    }

    /// A new mount: its own (empty) memory cache, no disk cache.
    fn mount(&self) -> Arc<Vfs> {
        let config = ChunkConfig {
            volume: "t".into(),
            uuid: "uuid-faults".into(),
            block_size: BLOCK,
            compression: self.compression,
            buffer_size: 16 << 20,
            prefetch: false,
            ..Default::default()
        };
        let store: DynStore = self.faulty.clone();
        let chunks = ChunkStore::new(
            store,
            self.meta.clone(),
            self.rt.handle().clone(),
            config,
            Arc::new(tessera_metrics::Metrics::new()),
        )
        .expect("chunk store");
        Vfs::new(self.meta.clone(), chunks, VfsConfig::default())
    }

    /// The volume's blocks once they are `want` again (background
    /// deletions done), or as they are after 10 s.
    fn blocks_once_back_to(&self, want: &[String]) -> Vec<String> {
        self.blocks_once(|left| left == want)
    }

    /// The volume's blocks once all are among `allowed`, or after 10 s.
    fn blocks_once_within(&self, allowed: &[String]) -> Vec<String> {
        self.blocks_once(|left| left.iter().all(|k| allowed.contains(k)))
    }

    fn blocks_once(&self, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        let mut left = self.blocks();
        for _ in 0..500 {
            if done(&left) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            left = self.blocks();
        }
        left
    }

    /// Object keys of the volume's blocks now in the store.
    fn blocks(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .rt
            .block_on(self.faulty.list("t/chunks/"))
            .expect("list")
            .into_iter()
            .map(|o| o.key)
            .collect();
        keys.sort();
        keys
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

/// Write `data` as file `name` and close it.
fn write_file(v: &Vfs, name: &[u8], data: &[u8]) -> u64 {
    let (ino, _, fh) = v
        .create(&CTX, ROOT_INO, name, 0o644, libc::O_RDWR)
        .expect("create");
    v.write(ino, fh, 0, data).expect("write");
    v.flush(ino, fh, 0).expect("flush");
    v.release(ino, fh, None).expect("release");
    ino
}

/// Read `len` bytes at `off` through a fresh open.
fn read_at(v: &Vfs, ino: u64, off: u64, len: usize) -> crate::Result<Vec<u8>> {
    let (fh, _) = v.open(ino, libc::O_RDONLY)?;
    let got = v.read(ino, fh, off, len).map(|b| b.to_vec());
    v.release(ino, fh, None)?;
    got
}

#[test]
fn altered_or_short_bodies_are_retried_once_then_refused_never_served() {
    for compression in [Compression::None, Compression::Lz4, Compression::Zstd] {
        let w = World::new(compression);
        let data = pattern(5 * BLOCK + 1000, 3);
        let ino = write_file(&w.mount(), b"f", &data);

        // One altered body: the retry reads it right.
        let r = w.mount();
        w.faulty.inject(
            Method::Get,
            w.faulty.calls(Method::Get) + 1,
            1,
            None,
            Fault::Flip,
        );
        assert_eq!(
            read_at(&r, ino, 0, data.len()).expect("read"),
            data,
            "{compression:?}"
        );
        assert_eq!(r.metrics().corrupt_objects.get(), 1, "{compression:?}");

        // Every body altered, or cut short: an error, never the bytes.
        for fault in [Fault::Flip, Fault::Short] {
            let r = w.mount();
            w.faulty.always(Method::Get, None, fault.clone());
            let err = read_at(&r, ino, 0, data.len()).expect_err("altered data is refused");
            assert_eq!(err.errno, libc::EIO, "{compression:?} {fault:?}: {err:?}");
            assert!(
                err.reason.contains("t/chunks/"),
                "the error names the object: {}",
                err.reason
            );
            assert!(
                r.metrics().corrupt_objects.get() >= 2,
                "{compression:?} {fault:?}"
            );
            w.faulty.heal();
        }
        let r = w.mount();
        assert_eq!(read_at(&r, ino, 0, data.len()).expect("healed"), data);
    }
}

#[test]
fn small_random_reads_check_their_pieces_too() {
    let w = World::new(Compression::None);
    let data = pattern(4 * BLOCK, 9);
    let ino = write_file(&w.mount(), b"f", &data);
    let r = w.mount();
    // Far from the previous read: a random access, served by range GETs.
    assert_eq!(
        read_at(&r, ino, 3 * BLOCK as u64 + 100, 50).expect("range"),
        data[3 * BLOCK + 100..3 * BLOCK + 150]
    );
    w.faulty.always(Method::Get, None, Fault::Flip);
    let r = w.mount();
    let got = read_at(&r, ino, BLOCK as u64 + 7000, 100);
    assert!(got.is_err(), "an altered range is refused: {got:?}");
    w.faulty.heal();
    let r = w.mount();
    assert_eq!(
        read_at(&r, ino, BLOCK as u64 + 7000, 100).expect("healed"),
        data[BLOCK + 7000..BLOCK + 7100]
    );
}

#[test]
fn failed_gets_are_errors_and_a_hung_get_is_only_waited_for() {
    let w = World::new(Compression::None);
    let data = pattern(2 * BLOCK, 1);
    let ino = write_file(&w.mount(), b"f", &data);
    w.faulty.always(Method::Get, None, Fault::Fail);
    let err = read_at(&w.mount(), ino, 0, data.len()).expect_err("failed GET");
    assert_eq!(err.errno, libc::EIO);
    w.faulty.heal();
    // A slow store delays the reader; the bytes are still right.
    w.faulty
        .always(Method::Get, None, Fault::Delay(Duration::from_millis(200)));
    assert_eq!(read_at(&w.mount(), ino, 0, data.len()).expect("slow"), data);
}

#[test]
fn a_failed_upload_is_reported_never_committed_and_its_blocks_removed() {
    let w = World::new(Compression::None);
    let v = w.mount();
    let (ino, _, fh) = v
        .create(&CTX, ROOT_INO, b"f", 0o644, libc::O_RDWR)
        .expect("create");
    let old = pattern(BLOCK, 1);
    v.write(ino, fh, 0, &old).expect("write");
    v.fsync(ino).expect("first fsync");
    let before = w.blocks();
    // The 3rd PUT from now fails: some blocks of the write are stored,
    // one is not.
    w.faulty.inject(
        Method::Put,
        w.faulty.calls(Method::Put) + 3,
        1,
        None,
        Fault::Fail,
    );
    let new = pattern(6 * BLOCK, 2);
    v.write(ino, fh, BLOCK as u64, &new).expect("buffered");
    let err = v.fsync(ino).expect_err("fsync reports the failed upload");
    assert_eq!(err.errno, libc::EIO);
    let _ = v.release(ino, fh, None);
    // Nothing of the failed write is committed: the file is as it was.
    let r = w.mount();
    assert_eq!(r.getattr(ino).expect("attr").length, BLOCK as u64);
    assert_eq!(read_at(&r, ino, 0, 10 * BLOCK).expect("read"), old);
    // The blocks it did store are removed (in the background).
    assert_eq!(
        w.blocks_once_back_to(&before),
        before,
        "blocks of the failed write are gone"
    );
    assert!(w.faulty.injected.load(Ordering::Relaxed) >= 1);
}

#[test]
fn a_failed_append_is_reported_and_leaves_nothing_behind() {
    let w = World::new(Compression::None);
    let v = w.mount();
    let (ino, _, fh) = v
        .create(&CTX, ROOT_INO, b"log", 0o644, libc::O_RDWR | libc::O_APPEND)
        .expect("create");
    w.faulty.always(Method::Put, None, Fault::Fail);
    // A block's worth of appends is flushed by the write itself, so the
    // error comes back from the write or, at the latest, the fsync.
    let failed = v
        .write(ino, fh, 0, &pattern(3 * BLOCK, 5))
        .and_then(|_| v.fsync(ino));
    assert_eq!(
        failed.expect_err("the append's upload failed").errno,
        libc::EIO
    );
    w.faulty.heal();
    let _ = v.release(ino, fh, None);
    assert_eq!(w.mount().getattr(ino).expect("attr").length, 0);
    for _ in 0..500 {
        if w.blocks().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(w.blocks().is_empty(), "{:?}", w.blocks());
}

#[test]
fn a_full_store_is_enospc_to_the_writer() {
    let w = World::new(Compression::None);
    let v = w.mount();
    let (ino, _, fh) = v
        .create(&CTX, ROOT_INO, b"f", 0o644, libc::O_RDWR)
        .expect("create");
    w.faulty.always(Method::Put, None, Fault::NoSpace);
    v.write(ino, fh, 0, &pattern(BLOCK / 2, 1))
        .expect("buffered");
    let err = v.fsync(ino).expect_err("the store is full");
    assert_eq!(err.errno, libc::ENOSPC, "{err:?}");
    w.faulty.heal();
    let _ = v.release(ino, fh, None);
    assert_eq!(w.mount().getattr(ino).expect("attr").length, 0);
}

/// Truncating a large file hands its freed blocks to background deletion:
/// the call returns while every DELETE hangs, and with slow DELETEs the
/// blocks still go many at a time (one after another, 64 blocks at 300 ms
/// would take 19 s).
#[test]
fn truncate_returns_before_its_deletes_and_they_run_side_by_side() {
    let w = World::new(Compression::None);
    let v = w.mount();
    let ino = write_file(&v, b"hung", &pattern(8 * BLOCK, 3));
    w.faulty.always(Method::Delete, None, Fault::Hang);
    v.truncate(ino, 0)
        .expect("truncate returns though DELETEs hang");
    assert_eq!(v.getattr(ino).expect("attr").length, 0);
    // (The hung DELETEs are retried once their deadline passes, so the
    // first file's blocks may or may not be gone below.)
    w.faulty.heal();

    let before = w.blocks();
    let ino = write_file(&v, b"slow", &pattern(64 * BLOCK, 4));
    w.faulty.always(
        Method::Delete,
        None,
        Fault::Delay(Duration::from_millis(300)),
    );
    v.truncate(ino, 0).expect("truncate");
    let left = w.blocks_once_within(&before);
    assert!(
        left.iter().all(|k| before.contains(k)),
        "the freed blocks are deleted within 10 s: {left:?}"
    );
}
