//! Two clients, one engine: two VFS instances (two "mounts") over one
//! metadata engine and one object store, driven at once from threads. They
//! check the promises the README makes across mounts: close-to-open, a
//! create without O_EXCL never failing with EEXIST because the other made
//! the file first, and every O_APPEND write landing whole even while both
//! append to one file and compaction rewrites its chunk.
//!
//! Run on SQLite always, and on Redis when scripts/test.sh provides one.

use std::sync::Arc;

use tessera_chunk::{ChunkConfig, ChunkStore};
use tessera_meta::{Ctx, KvEngine, Meta, MetaConfig, ROOT_INO};
use tessera_object::{open_store, DynStore, StorageOptions};

use crate::{Vfs, VfsConfig};

const BLOCK: usize = 64 << 10;

struct Pair {
    a: Arc<Vfs>,
    b: Arc<Vfs>,
    _rt: tokio::runtime::Runtime,
}

fn pair(engine: impl Fn() -> Arc<dyn KvEngine>) -> Pair {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let first = Arc::new(Meta::new(engine(), MetaConfig::default()));
    let mut format = tessera_meta::conformance::test_format();
    format.block_size = BLOCK as u32;
    first.init(&format).expect("format");
    let store: DynStore = open_store("mem://", &StorageOptions::default()).expect("store");
    let mount = |meta: Arc<Meta>| {
        meta.load().expect("settings");
        let config = ChunkConfig {
            volume: "t".into(),
            uuid: "uuid-two".into(),
            block_size: BLOCK,
            // Compaction comes often, while the other client appends.
            compact_threshold: 8,
            ..Default::default()
        };
        let chunks = ChunkStore::new(
            store.clone(),
            meta.clone(),
            rt.handle().clone(),
            config,
            Arc::new(tessera_metrics::Metrics::new()),
        )
        .expect("chunk store");
        Vfs::new(meta, chunks, VfsConfig::default())
    };
    let a = mount(first);
    let b = mount(Arc::new(Meta::new(engine(), MetaConfig::default())));
    Pair { a, b, _rt: rt }
}

fn ctx(pid: u32) -> Ctx {
    Ctx {
        uid: 0,
        gid: 0,
        pid,
        umask: 0,
    }
}

/// A record that says who wrote it and which it is, so a record split
/// around another one, or lost, shows.
fn record(client: u8, n: u32) -> Vec<u8> {
    let mut r = vec![client; 100 + (n % 37) as usize];
    r[..4].copy_from_slice(&n.to_le_bytes());
    let len = r.len() as u8;
    r[4] = len;
    let last = r.len() - 1;
    r[last] = b'\n';
    r
}

fn run_all(p: &Pair) {
    // Close-to-open: what one client closed, the other opens and reads.
    let (ino, _, fh) =
        p.a.create(&ctx(1), ROOT_INO, b"shared", 0o644, libc::O_RDWR)
            .expect("create");
    p.a.write(ino, fh, 0, b"written by a").expect("write");
    p.a.flush(ino, fh, 0).expect("close");
    p.a.release(ino, fh, None).expect("release");
    let (found, _) = p.b.lookup(ROOT_INO, b"shared").expect("b sees it");
    let (fh, attr) = p.b.open(found, libc::O_RDONLY).expect("open");
    assert_eq!(attr.length, 12);
    assert_eq!(
        &p.b.read(found, fh, 0, 100).expect("read")[..],
        b"written by a"
    );
    p.b.release(found, fh, None).expect("release");

    // Racing creates without O_EXCL: both open the one file.
    for round in 0..100 {
        let name = format!("race{round}");
        let go = |v: Arc<Vfs>, pid: u32, name: String| {
            std::thread::spawn(move || {
                let (ino, _, fh) = v.create(
                    &ctx(pid),
                    ROOT_INO,
                    name.as_bytes(),
                    0o644,
                    libc::O_RDWR | libc::O_CREAT,
                )?;
                v.release(ino, fh, None)?;
                Ok::<_, crate::VfsError>(ino)
            })
        };
        let ta = go(p.a.clone(), 1, name.clone());
        let tb = go(p.b.clone(), 2, name);
        let (ia, ib) = (ta.join().expect("a"), tb.join().expect("b"));
        let (ia, ib) = (ia.expect("a's create"), ib.expect("b's create"));
        assert_eq!(ia, ib, "round {round}: one file");
    }

    // Both append to one log; every record lands whole, none lost.
    let (log, _, fh) =
        p.a.create(
            &ctx(1),
            ROOT_INO,
            b"log",
            0o644,
            libc::O_RDWR | libc::O_APPEND,
        )
        .expect("log");
    p.a.release(log, fh, None).expect("release");
    const EACH: u32 = 400;
    let append = |v: Arc<Vfs>, client: u8| {
        std::thread::spawn(move || {
            let (fh, _) = v
                .open(log, libc::O_WRONLY | libc::O_APPEND)
                .expect("open log");
            for n in 0..EACH {
                v.write(log, fh, 0, &record(client, n)).expect("append");
                if n % 3 == 0 {
                    v.fsync(log).expect("fsync");
                }
            }
            v.flush(log, fh, 0).expect("close");
            v.release(log, fh, None).expect("release");
        })
    };
    let (ta, tb) = (append(p.a.clone(), b'A'), append(p.b.clone(), b'B'));
    ta.join().expect("a appends");
    tb.join().expect("b appends");
    let (fh, attr) = p.b.open(log, libc::O_RDONLY).expect("open");
    let all =
        p.b.read(log, fh, 0, attr.length as usize + 1)
            .expect("read log");
    p.b.release(log, fh, None).expect("release");
    let mut seen = [vec![false; EACH as usize], vec![false; EACH as usize]];
    let mut at = 0;
    while at < all.len() {
        let len = all[at + 4] as usize;
        let rec = &all[at..at + len];
        let n = u32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]);
        let client = rec[5];
        assert!(
            client == b'A' || client == b'B',
            "a record at {at} is not one: {:?}",
            &rec[..8.min(rec.len())]
        );
        assert_eq!(
            rec,
            &record(client, n)[..],
            "record {n} of {} at {at} is whole",
            client as char
        );
        let who = usize::from(client == b'B');
        assert!(!seen[who][n as usize], "record {n} twice");
        seen[who][n as usize] = true;
        at += len;
    }
    assert!(
        seen.iter().all(|s| s.iter().all(|x| *x)),
        "every record landed"
    );
}

#[test]
fn two_clients_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("meta.db");
    let p = pair(|| {
        Arc::new(tessera_meta::engines::SqliteEngine::open(&path).expect("sqlite"))
            as Arc<dyn KvEngine>
    });
    run_all(&p);
}

#[test]
#[ignore = "needs a redis-server; scripts/test.sh runs it"]
fn two_clients_on_redis() {
    let url = std::env::var("TESSERA_TEST_REDIS_URL")
        .expect("TESSERA_TEST_REDIS_URL must name a redis server (scripts/test.sh starts one)");
    let url = format!("{}/14", url.trim_end_matches('/'));
    let first = tessera_meta::open_engine(&url).expect("redis");
    first.reset().expect("flush");
    drop(first);
    let p = pair(|| tessera_meta::open_engine(&url).expect("redis"));
    run_all(&p);
}
