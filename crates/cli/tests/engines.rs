//! Volumes on the server engines (Redis, PostgreSQL) through real mounts:
//! two mount processes on one volume see each other's files and
//! directories. The servers come from scripts/test.sh, which exports their
//! URLs; without them these tests fail (they are #[ignore]d for plain
//! `cargo test`).

mod common;

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Empty database `db` of the test redis server (speaking RESP directly,
/// so the tests need no client library).
fn redis_url(db: u32) -> String {
    let base = std::env::var("TESSERA_TEST_REDIS_URL")
        .expect("TESSERA_TEST_REDIS_URL must name a redis server (scripts/test.sh starts one)");
    let addr = base.trim_start_matches("redis://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(addr).expect("connect to redis");
    let db = db.to_string();
    write!(
        s,
        "*2\r\n$6\r\nSELECT\r\n${}\r\n{db}\r\n*1\r\n$7\r\nFLUSHDB\r\n",
        db.len()
    )
    .expect("flush redis db");
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    while !got.ends_with(b"+OK\r\n+OK\r\n") {
        let n = std::io::Read::read(&mut s, &mut buf).expect("redis reply");
        assert!(n > 0, "redis closed the connection: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    format!("{base}/{db}")
}

/// The test PostgreSQL database, emptied.
fn postgres_url() -> String {
    let url = std::env::var("TESSERA_TEST_POSTGRES_URL").expect(
        "TESSERA_TEST_POSTGRES_URL must name a PostgreSQL database (scripts/test.sh starts one)",
    );
    let out = Command::new("psql")
        .arg(&url)
        .args(["-q", "-c", "DROP TABLE IF EXISTS tessera_kv"])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    url
}

fn two_mounts_share_one_volume(meta_url: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = format!("file://{}/objects", dir.path().display());
    let out = tessera(&["format", meta_url, "shared", "--storage", &storage]);
    assert!(out.status.success(), "format: {}", stderr(&out));
    let mount = |name: &str| {
        let p = dir.path().join(name);
        std::fs::create_dir_all(&p).expect("mkdir");
        let cache = dir.path().join(format!("cache-{name}"));
        Mount::start(
            meta_url,
            &p,
            &[
                "--cache-dir",
                cache.to_str().expect("utf-8"),
                "--metrics",
                "none",
            ],
        )
    };
    let (a, b) = (mount("a"), mount("b"));

    // Close-to-open: written and closed in one mount, identical in the other.
    let data = pseudo_random(9 << 20, 11);
    std::fs::write(a.join("ckpt.bin"), &data).expect("write in a");
    let back = std::fs::read(b.join("ckpt.bin")).expect("read in b");
    assert_eq!(digest(&back), digest(&data), "same bytes through mount b");

    // A directory made in one mount is listed in the other within the
    // entry-cache time (1 s by default).
    std::fs::create_dir(a.join("runs")).expect("mkdir in a");
    std::fs::write(a.join("runs/one"), b"1").expect("file in a");
    let start = Instant::now();
    loop {
        let names: Vec<_> = std::fs::read_dir(&b.path)
            .expect("readdir in b")
            .map(|e| e.expect("entry").file_name())
            .collect();
        if names.iter().any(|n| n == "runs") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "runs not listed in b: {names:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(std::fs::read(b.join("runs/one")).expect("read in b"), b"1");

    // Changes flow back the other way, and a rename is seen at once by lookup.
    std::fs::write(b.join("runs/two"), b"22").expect("write in b");
    std::fs::rename(b.join("runs/two"), b.join("runs/2")).expect("rename in b");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(std::fs::read(a.join("runs/2")).expect("read in a"), b"22");
    a.unmount();
    b.unmount();
}

#[test]
#[ignore = "needs a redis-server; scripts/test.sh runs it"]
fn two_mounts_on_redis() {
    two_mounts_share_one_volume(&redis_url(14));
}

#[test]
#[ignore = "needs a PostgreSQL server; scripts/test.sh runs it"]
fn two_mounts_on_postgres() {
    two_mounts_share_one_volume(&postgres_url());
}
