//! Volumes on the server engines (Redis, PostgreSQL, MySQL, etcd) through real mounts: several mount
//! processes on one volume see each other's files and directories, their
//! locks exclude each other, their appends all land, and a mount killed
//! with -9 is cleaned up by a live one. The servers come from
//! scripts/test.sh, which exports their URLs; without them these tests fail
//! (they are #[ignore]d for plain `cargo test`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: it asserts

mod common;

use std::io::Write;
use std::os::fd::AsRawFd;
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

/// A new, empty database `db` on the test PostgreSQL server (tests run in
/// parallel, each on its own database).
fn postgres_url(db: &str) -> String {
    let url = std::env::var("TESSERA_TEST_POSTGRES_URL").expect(
        "TESSERA_TEST_POSTGRES_URL must name a PostgreSQL database (scripts/test.sh starts one)",
    );
    let out = Command::new("psql")
        .arg(&url)
        .args(["-q", "-c", &format!("DROP DATABASE IF EXISTS {db}")])
        .args(["-c", &format!("CREATE DATABASE {db}")])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let base = url.rsplit_once('/').map(|(b, _)| b).unwrap_or(&url);
    format!("{base}/{db}")
}

/// A new, empty database `db` on the test MySQL/MariaDB server.
fn mysql_url(db: &str) -> String {
    let url = std::env::var("TESSERA_TEST_MYSQL_URL")
        .expect("TESSERA_TEST_MYSQL_URL must name a MySQL database (scripts/test.sh starts one)");
    let rest = url.trim_start_matches("mysql://");
    let (auth, addr_db) = rest.split_once('@').expect("user@host in the URL");
    let (user, pass) = auth.split_once(':').expect("user:password in the URL");
    let (addr, _) = addr_db.split_once('/').expect("host:port/db in the URL");
    let (host, port) = addr.split_once(':').expect("host:port in the URL");
    let out = Command::new("mariadb")
        .args(["--no-defaults", "-h", host, "-P", port, "-u", user])
        .arg(format!("-p{pass}"))
        .arg("-e")
        .arg(format!(
            "DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db}"
        ))
        .output()
        .expect("run the mariadb client");
    assert!(out.status.success(), "mariadb: {}", stderr(&out));
    format!("mysql://{auth}@{addr}/{db}")
}

/// A key prefix of its own on the test etcd server.
fn etcd_url(name: &str) -> String {
    let url = std::env::var("TESSERA_TEST_ETCD_URL")
        .expect("TESSERA_TEST_ETCD_URL must name an etcd server (scripts/test.sh starts one)");
    let base = url.rsplit_once('/').map(|(b, _)| b).unwrap_or(&url);
    format!("{base}/{name}-{}", std::process::id())
}

/// A volume formatted on `meta_url`, with its object store and mounts in
/// one temporary directory.
struct Shared {
    dir: tempfile::TempDir,
    meta_url: String,
}

impl Shared {
    fn format(meta_url: &str) -> Shared {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = format!("file://{}/objects", dir.path().display());
        let out = tessera(&["format", meta_url, "shared", "--storage", &storage]);
        assert!(out.status.success(), "format: {}", stderr(&out));
        Shared {
            dir,
            meta_url: meta_url.to_string(),
        }
    }

    fn mount(&self, name: &str, extra: &[&str]) -> Mount {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).expect("mkdir");
        let cache = self.dir.path().join(format!("cache-{name}"));
        let mut args = vec![
            "--cache-dir",
            cache.to_str().expect("utf-8"),
            "--metrics",
            "none",
        ];
        args.extend_from_slice(extra);
        Mount::start(&self.meta_url, &p, &args)
    }

    /// Bytes of every object in the store.
    fn stored_bytes(&self) -> u64 {
        fn walk(p: &std::path::Path) -> u64 {
            std::fs::read_dir(p)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| match e.file_type() {
                            Ok(t) if t.is_dir() => walk(&e.path()),
                            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
                        })
                        .sum()
                })
                .unwrap_or(0)
        }
        walk(&self.dir.path().join("objects"))
    }
}

fn two_mounts_share_one_volume(meta_url: &str) {
    let vol = Shared::format(meta_url);
    let (a, b) = (vol.mount("a", &[]), vol.mount("b", &[]));

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

    // A quota set from the CLI holds in both mounts, and what one mount
    // writes counts in the other's checks within a second or two.
    let out = tessera(&["quota", "set", meta_url, "/runs", "--capacity", "3M"]);
    assert!(out.status.success(), "quota set: {}", stderr(&out));
    for m in [&a, &b] {
        wait_for("the quota in df", || df_size(&m.join("runs")) == 3 << 20);
    }
    std::fs::write(a.join("runs/two-mib"), vec![5u8; 2 << 20]).expect("write in a");
    wait_for("a's usage in b's df", || {
        df_field(&b.join("runs"), "avail") <= 1 << 20
    });
    let (written, errno) = write_until_refused(&b.join("runs/more"), 4 << 20);
    assert_eq!((written, errno), (0, libc::EDQUOT), "b passed the quota");
    a.unmount();
    b.unmount();
    let out = tessera(&["quota", "check", meta_url]);
    assert!(
        out.status.success(),
        "quota check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
}

fn lock(fd: &std::fs::File, op: libc::c_int) -> Result<(), i32> {
    // SAFETY: flock on a descriptor this function borrows.
    match unsafe { libc::flock(fd.as_raw_fd(), op) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)),
    }
}

/// F_SETLK of `typ` over `[start, start + len)`.
fn record_lock(fd: &std::fs::File, typ: libc::c_int, start: i64, len: i64) -> Result<(), i32> {
    // SAFETY: a zeroed flock struct is valid; fcntl on a borrowed descriptor.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = len;
    // SAFETY: fcntl on an open descriptor with a filled-in flock.
    match unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETLK, &fl) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)),
    }
}

fn locks_and_appends_across_mounts(meta_url: &str) {
    let vol = Shared::format(meta_url);
    let (a, b) = (vol.mount("a", &[]), vol.mount("b", &[]));
    std::fs::write(a.join("lockfile"), b"x").expect("create");
    let open = |m: &Mount| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.join("lockfile"))
            .expect("open lockfile")
    };
    let (fa, fb) = (open(&a), open(&b));

    // flock: one holder across all mounts.
    lock(&fa, libc::LOCK_EX | libc::LOCK_NB).expect("flock in a");
    assert_eq!(
        lock(&fb, libc::LOCK_EX | libc::LOCK_NB),
        Err(libc::EWOULDBLOCK)
    );
    assert_eq!(
        lock(&fb, libc::LOCK_SH | libc::LOCK_NB),
        Err(libc::EWOULDBLOCK)
    );
    lock(&fa, libc::LOCK_UN).expect("unlock in a");
    lock(&fb, libc::LOCK_EX | libc::LOCK_NB).expect("flock in b once a let go");
    lock(&fb, libc::LOCK_UN).expect("unlock in b");

    // POSIX record locks: overlapping ranges exclude, disjoint ones do not.
    record_lock(&fa, libc::F_WRLCK, 0, 100).expect("lock 0..100 in a");
    assert_eq!(record_lock(&fb, libc::F_WRLCK, 50, 10), Err(libc::EAGAIN));
    assert_eq!(record_lock(&fb, libc::F_RDLCK, 99, 1), Err(libc::EAGAIN));
    record_lock(&fb, libc::F_WRLCK, 100, 50).expect("disjoint lock in b");
    record_lock(&fa, libc::F_UNLCK, 0, 100).expect("unlock in a");
    record_lock(&fb, libc::F_WRLCK, 0, 100).expect("lock 0..100 in b once a let go");
    drop((fa, fb));

    // O_APPEND from both mounts at once: every line lands whole, once.
    const LINES: usize = 300;
    const LINE: usize = 64;
    std::fs::write(a.join("log"), b"").expect("create log");
    let writer = |m: &Mount, tag: char| {
        let path = m.join("log");
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .expect("open log for append");
            for i in 0..LINES {
                let mut line = format!("{tag}{i:05}").into_bytes();
                line.resize(LINE - 1, b'.');
                line.push(b'\n');
                f.write_all(&line).expect("append");
                if i % 10 == 9 {
                    f.sync_data().expect("fsync");
                }
            }
        })
    };
    let (ta, tb) = (writer(&a, 'a'), writer(&b, 'b'));
    ta.join().expect("writer a");
    tb.join().expect("writer b");
    for m in [&a, &b] {
        let log = std::fs::read(m.join("log")).expect("read log");
        assert_eq!(log.len(), 2 * LINES * LINE, "no append lost or overwritten");
        let mut seen: Vec<&[u8]> = log.chunks(LINE).map(|l| &l[..6]).collect();
        assert!(
            log.chunks(LINE).all(|l| l[LINE - 1] == b'\n'),
            "lines stay whole"
        );
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 2 * LINES, "every line exactly once");
    }
    a.unmount();
    b.unmount();
}

fn dead_mount_is_cleaned_up(meta_url: &str) {
    let vol = Shared::format(meta_url);
    let fast = ["--heartbeat", "0.5", "--session-timeout", "3"];
    let (a, mut b) = (vol.mount("a", &fast), vol.mount("b", &fast));
    std::fs::write(a.join("lockfile"), b"x").expect("create");
    let base = vol.stored_bytes();

    // b holds a lock and a file it unlinked while open, then dies.
    let held = b.join("held");
    std::fs::write(&held, pseudo_random(3 << 20, 5)).expect("write held");
    let held_fd = std::fs::File::open(&held).expect("open held");
    std::fs::remove_file(&held).expect("unlink held while open");
    let lock_b = std::fs::File::open(b.join("lockfile")).expect("open in b");
    lock(&lock_b, libc::LOCK_EX | libc::LOCK_NB).expect("flock in b");
    assert!(vol.stored_bytes() >= base + (3 << 20), "held data stored");
    let lock_a = std::fs::File::open(a.join("lockfile")).expect("open in a");
    assert_eq!(
        lock(&lock_a, libc::LOCK_EX | libc::LOCK_NB),
        Err(libc::EWOULDBLOCK)
    );

    b.kill9();
    let start = Instant::now();
    loop {
        let status = tessera(&["status", &vol.meta_url]);
        let text = String::from_utf8_lossy(&status.stdout).into_owned();
        let sessions = text.matches(" pid ").count();
        let freed = vol.stored_bytes() < base + (1 << 20);
        let unlocked = lock(&lock_a, libc::LOCK_EX | libc::LOCK_NB).is_ok();
        if sessions == 1 && freed && unlocked {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "dead session not cleaned up: sessions listed {sessions}, held data freed {freed}, lock released {unlocked}\n{text}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    drop((held_fd, lock_b));
    a.unmount();
}

/// A redis-server of this test's own, persisting every write, so it can be
/// stopped and started again under a mount without losing the volume.
struct OwnRedis {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    fn start(dir: &std::path::Path) -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut r = OwnRedis {
            port,
            dir: dir.to_path_buf(),
            child: None,
        };
        r.restart();
        r
    }

    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--dir")
            .arg(&self.dir)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server (scripts/test.sh installs it)");
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM (redis flushes its append-only file and exits) and reap.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling the child this test started.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
#[ignore = "needs redis-server installed; scripts/test.sh installs it"]
fn redis_outage_gives_eio_and_the_mount_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("redis")).expect("mkdir");
    let mut redis = OwnRedis::start(&dir.path().join("redis"));
    let storage = format!("file://{}/objects", dir.path().display());
    let out = tessera(&["format", &redis.url(), "outage", "--storage", &storage]);
    assert!(out.status.success(), "format: {}", stderr(&out));
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let log = dir.path().join("mount.log");
    let cache = dir.path().join("cache");
    let m = Mount::start_logged(
        &redis.url(),
        &mnt,
        &[
            "--cache-dir",
            cache.to_str().expect("utf-8"),
            "--metrics",
            "none",
        ],
        &log,
    );
    let data = pseudo_random(2 << 20, 3);
    std::fs::write(m.join("before"), &data).expect("write before the outage");

    // A server that hangs: requests time out into EIO, then work again.
    let pid = redis
        .child
        .as_ref()
        .map(|c| c.id() as i32)
        .expect("running");
    // SAFETY: pausing the child this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let start = Instant::now();
    let err = std::fs::write(m.join("hung"), b"x").expect_err("hung engine, no create");
    let waited = start.elapsed();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(waited < Duration::from_secs(30), "gave up after {waited:?}");
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    std::fs::write(m.join("resumed"), b"y").expect("works once the server answers");

    // A server that is gone: refused at once, EIO.
    redis.stop();
    let start = Instant::now();
    let err = std::fs::write(m.join("during"), b"x").expect_err("no engine, no create");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let err = std::fs::read_dir(&m.path).and_then(|d| d.collect::<Result<Vec<_>, _>>());
    assert_eq!(err.err().and_then(|e| e.raw_os_error()), Some(libc::EIO));
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "fails within the engine timeout"
    );

    redis.restart();
    let start = Instant::now();
    while let Err(e) = std::fs::write(m.join("after"), b"back") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "mount did not recover once redis was back: {e}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        digest(&std::fs::read(m.join("before")).expect("read")),
        digest(&data)
    );
    assert_eq!(std::fs::read(m.join("after")).expect("read"), b"back");
    m.unmount();
    let text = std::fs::read_to_string(&log).expect("mount log");
    assert!(
        text.contains("metadata operation failed")
            && text.contains("redis did not answer within 5s")
            && text.contains("lost the connection to redis"),
        "the log says what failed:\n{text}"
    );
}

/// Open, fstat, read whole and close `path` `times` times; returns the
/// metadata transactions the mount ran for them (its background work,
/// heartbeats and syncs, left out).
fn reread(m: &Mount, rel: &str, times: usize, expect: &[u8]) -> f64 {
    use std::io::Read;
    let requests =
        || stat(&m.path, "tessera_meta_txns") - stat(&m.path, "tessera_meta_background_txns");
    let before = requests();
    for _ in 0..times {
        let mut f = std::fs::File::open(m.join(rel)).expect("open");
        assert_eq!(f.metadata().expect("fstat").len(), expect.len() as u64);
        let mut got = Vec::new();
        f.read_to_end(&mut got).expect("read");
        assert!(got == expect, "same bytes");
    }
    requests() - before
}

/// A model load over a far link: the test's Redis behind `tessera link`
/// (20 ms each way, so every metadata round trip costs 40 ms). A first
/// load (mmap loader, ten safetensors files) is counted — the docs state
/// the round trips per file it takes; a first load in a mount with
/// `--open-cache` and kernel caches as long reads each directory whole
/// and takes fewer transactions than files; and a second load there, its
/// files' pages evicted so the reads reach the mount, asks the metadata
/// engine and object storage nothing: 0 round trips over the link.
#[test]
#[ignore = "needs a redis-server; scripts/test.sh runs it"]
fn a_model_load_over_a_far_link_takes_the_round_trips_counted() {
    let Some(py) = loader_python() else {
        eprintln!("no python with safetensors and numpy; skipped (scripts/test.sh provides one)");
        return;
    };
    let near = redis_url(10);
    let vol = Shared::format(&near);
    let w = vol.mount("w", &[]);
    output_of(
        Command::new(&py)
            .args([LOADER_SCRIPT, "write"])
            .arg(&w.path)
            .args(["7", "16", "8"]),
    );
    w.unmount();

    let relay_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let server = near
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .expect("host:port")
        .to_string();
    let mut relay = Command::new(bin())
        .args(["link", "--delay-ms", "20", "--rate-mbit", "0", "--pair"])
        .arg(format!("127.0.0.1:{relay_port}={server}"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the relay");
    wait_for("the relay to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", relay_port)).is_ok()
    });
    let far = Shared {
        dir: tempfile::tempdir().expect("tempdir"),
        meta_url: format!("redis://127.0.0.1:{relay_port}/10"),
    };
    let requests = |m: &Mount| {
        stat(&m.path, "tessera_meta_txns") - stat(&m.path, "tessera_meta_background_txns")
    };
    let gets = |m: &Mount| {
        stat(
            &m.path,
            "tessera_object_request_seconds_count{method=\"get\"}",
        )
    };
    let load = |m: &Mount| {
        let started = Instant::now();
        let said = output_of(
            Command::new(&py)
                .args([LOADER_SCRIPT, "load"])
                .arg(&m.path)
                .arg("7"),
        );
        assert!(said.contains("loaded 10 files"), "{said}");
        started.elapsed().as_secs_f64()
    };

    let plain = far.mount("plain", &[]);
    let before = requests(&plain);
    let first_secs = load(&plain);
    let first = requests(&plain) - before;
    eprintln!(
        "first load over a 40 ms round trip: {first} metadata transactions for 10 files ({:.1} per file), {first_secs:.2} s",
        first / 10.0
    );
    assert!(first >= 10.0, "every file costs at least a lookup: {first}");
    assert!(
        first_secs >= 0.4,
        "ten files' lookups alone take 10 round trips of 40 ms: {first_secs:.2} s"
    );
    plain.unmount();

    let long = "600";
    let trusting = far.mount(
        "trusting",
        &[
            "--open-cache",
            long,
            "--attr-cache",
            long,
            "--entry-cache",
            long,
            "--dir-entry-cache",
            long,
        ],
    );
    // Its first load walks the repository: each directory is read whole
    // (names, attributes, records) once, at its opendir, and the readdir,
    // the files' lookups and opens are answered from that.
    let before = requests(&trusting);
    let fresh_secs = load(&trusting);
    let fresh = requests(&trusting) - before;
    eprintln!(
        "first load with --open-cache: {fresh} metadata transactions for 10 files in 2 directories, {fresh_secs:.2} s"
    );
    assert!(
        fresh <= 2.0,
        "one transaction per directory (its opendir reads it whole; its files' lookups and opens are answered from that): {fresh}"
    );
    let said = output_of(
        Command::new(&py)
            .args([LOADER_SCRIPT, "check"])
            .arg(&trusting.path)
            .args(["7", "16", "8"]),
    );
    assert!(said.contains("checked 10 files"), "{said}");
    // Evict the files' pages, so the second load's reads reach the mount.
    output_of(Command::new(&py).arg("-c").arg(
        "import os,sys\nfor d,_,fs in os.walk(sys.argv[1]):\n for f in fs:\n  fd=os.open(os.path.join(d,f),os.O_RDONLY); os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED); os.close(fd)",
    ).arg(&trusting.path));
    let (before, gets_before) = (requests(&trusting), gets(&trusting));
    let reads_before = stat(&trusting.path, "tessera_ops_total{op=\"read\"}");
    let second_secs = load(&trusting);
    let (again, new_gets) = (requests(&trusting) - before, gets(&trusting) - gets_before);
    let reads = stat(&trusting.path, "tessera_ops_total{op=\"read\"}") - reads_before;
    eprintln!(
        "second load with --open-cache: {again} metadata transactions, {new_gets} GETs, {reads} reads served by the mount, {second_secs:.2} s"
    );
    assert!(reads > 0.0, "the second load's reads reached the mount");
    assert_eq!((again, new_gets), (0.0, 0.0));
    trusting.unmount();
    let _ = relay.kill();
    let _ = relay.wait();
}

#[test]
#[ignore = "needs a redis-server; scripts/test.sh runs it"]
fn open_cache_saves_round_trips() {
    let vol = Shared::format(&redis_url(9));
    let writer = vol.mount("w", &[]);
    let old = pseudo_random(3 << 20, 1);
    std::fs::write(writer.join("adapter.bin"), &old).expect("write");
    let plain = vol.mount("plain", &[]);
    let cached = vol.mount("cached", &["--open-cache", "3"]);
    // Warm the kernel's entry caches and the data caches alike.
    reread(&plain, "adapter.bin", 1, &old);
    reread(&cached, "adapter.bin", 1, &old);
    let strict = reread(&plain, "adapter.bin", 20, &old);
    let trusted = reread(&cached, "adapter.bin", 20, &old);
    eprintln!("20 open/fstat/read/close: {strict} metadata transactions without --open-cache, {trusted} with");
    assert!(strict >= 40.0, "close-to-open asks at every open: {strict}");
    assert!(
        trusted * 10.0 <= strict,
        "--open-cache saves the round trips: {trusted} vs {strict}"
    );

    // Another mount's change shows at once without the cache, and once the
    // cache time has passed with it.
    let new = pseudo_random(1 << 20, 2);
    std::fs::write(writer.join("adapter.bin"), &new).expect("rewrite");
    reread(&plain, "adapter.bin", 1, &new);
    std::thread::sleep(Duration::from_millis(3200));
    reread(&cached, "adapter.bin", 1, &new);
    writer.unmount();
    plain.unmount();
    cached.unmount();
}

#[test]
#[ignore = "needs a redis-server; scripts/test.sh runs it"]
fn two_mounts_on_redis() {
    two_mounts_share_one_volume(&redis_url(14));
}

#[test]
#[ignore = "needs a PostgreSQL server; scripts/test.sh runs it"]
fn two_mounts_on_postgres() {
    two_mounts_share_one_volume(&postgres_url("two_mounts"));
}

#[test]
#[ignore = "needs a redis-server; scripts/test.sh runs it"]
fn locks_and_appends_on_redis() {
    locks_and_appends_across_mounts(&redis_url(13));
}

#[test]
#[ignore = "needs a PostgreSQL server; scripts/test.sh runs it"]
fn locks_and_appends_on_postgres() {
    locks_and_appends_across_mounts(&postgres_url("locks_appends"));
}

#[test]
#[ignore = "needs a redis-server; scripts/test.sh runs it"]
fn dead_mount_cleaned_up_on_redis() {
    dead_mount_is_cleaned_up(&redis_url(12));
}

#[test]
#[ignore = "needs a PostgreSQL server; scripts/test.sh runs it"]
fn dead_mount_cleaned_up_on_postgres() {
    dead_mount_is_cleaned_up(&postgres_url("dead_mount"));
}

#[test]
#[ignore = "needs a MySQL/MariaDB server; scripts/test.sh runs it"]
fn two_mounts_on_mysql() {
    two_mounts_share_one_volume(&mysql_url("two_mounts"));
}

#[test]
#[ignore = "needs a MySQL/MariaDB server; scripts/test.sh runs it"]
fn locks_and_appends_on_mysql() {
    locks_and_appends_across_mounts(&mysql_url("locks_appends"));
}

#[test]
#[ignore = "needs a MySQL/MariaDB server; scripts/test.sh runs it"]
fn dead_mount_cleaned_up_on_mysql() {
    dead_mount_is_cleaned_up(&mysql_url("dead_mount"));
}

#[test]
#[ignore = "needs an etcd server; scripts/test.sh runs it"]
fn two_mounts_on_etcd() {
    two_mounts_share_one_volume(&etcd_url("two_mounts"));
}

#[test]
#[ignore = "needs an etcd server; scripts/test.sh runs it"]
fn locks_and_appends_on_etcd() {
    locks_and_appends_across_mounts(&etcd_url("locks_appends"));
}

#[test]
#[ignore = "needs an etcd server; scripts/test.sh runs it"]
fn dead_mount_cleaned_up_on_etcd() {
    dead_mount_is_cleaned_up(&etcd_url("dead_mount"));
}

/// Everything a user can see of a tree, path by path.
fn walk(root: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .expect("readdir")
            .map(|e| e.expect("entry").path())
            .collect();
        names.sort();
        for p in names {
            let m = std::fs::symlink_metadata(&p).expect("lstat");
            let rel = p
                .strip_prefix(root)
                .expect("under root")
                .display()
                .to_string();
            let mut line = format!(
                "{rel} mode={:o} uid={} gid={} nlink={} size={} mtime={}.{}",
                m.mode(),
                m.uid(),
                m.gid(),
                m.nlink(),
                m.size(),
                m.mtime(),
                m.mtime_nsec()
            );
            if m.file_type().is_symlink() {
                line += &format!(
                    " -> {}",
                    std::fs::read_link(&p).expect("readlink").display()
                );
            } else if m.is_file() {
                line += &format!(" data={:x}", digest(&std::fs::read(&p).expect("read")));
            } else if m.is_dir() {
                stack.push(p.clone());
            }
            if !m.file_type().is_symlink() {
                let c = std::ffi::CString::new(p.to_str().expect("utf-8")).expect("path");
                let mut buf = vec![0u8; 4096];
                // SAFETY: valid C string and buffer of the given length.
                let n = unsafe { libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
                assert!(n >= 0, "listxattr {rel}");
                for name in buf[..n as usize]
                    .split(|b| *b == 0)
                    .filter(|n| !n.is_empty())
                {
                    let cname = std::ffi::CString::new(name).expect("name");
                    let mut val = vec![0u8; 4096];
                    // SAFETY: as above.
                    let len = unsafe {
                        libc::getxattr(
                            c.as_ptr(),
                            cname.as_ptr(),
                            val.as_mut_ptr().cast(),
                            val.len(),
                        )
                    };
                    assert!(len >= 0, "getxattr {rel}");
                    line += &format!(
                        " {}={:?}",
                        String::from_utf8_lossy(name),
                        &val[..len as usize]
                    );
                }
            }
            out.push(line);
        }
    }
    out.sort();
    out
}

fn dump_of(url: &str, path: &std::path::Path) -> String {
    let out = tessera(&["dump", url, path.to_str().expect("utf-8")]);
    assert!(out.status.success(), "dump {url}: {}", stderr(&out));
    std::fs::read_to_string(path).expect("read dump")
}

fn load_into(url: &str, path: &std::path::Path) {
    let out = tessera(&["load", url, path.to_str().expect("utf-8")]);
    assert!(out.status.success(), "load into {url}: {}", stderr(&out));
}

#[test]
#[ignore = "needs every metadata server; scripts/test.sh runs it"]
fn dump_and_load_between_every_engine() {
    use std::os::unix::fs::PermissionsExt;
    let vol = Volume::new("roundtrip");
    let m = vol.mount("src");
    std::fs::create_dir_all(m.join("models/lora")).expect("mkdir");
    std::fs::write(m.join("models/ckpt.bin"), pseudo_random(5 << 20, 9)).expect("write");
    std::fs::write(m.join("models/lora/a.safetensors"), b"adapter").expect("write");
    std::fs::write(m.join("empty"), b"").expect("write");
    std::os::unix::fs::symlink("models/ckpt.bin", m.join("latest")).expect("symlink");
    std::fs::hard_link(m.join("models/ckpt.bin"), m.join("ckpt.hard")).expect("link");
    std::fs::set_permissions(
        m.join("models/lora"),
        std::fs::Permissions::from_mode(0o750),
    )
    .expect("chmod");
    std::os::unix::fs::chown(m.join("empty"), Some(1234), Some(5678)).expect("chown");
    let when = std::time::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
    std::fs::File::options()
        .write(true)
        .open(m.join("models/lora/a.safetensors"))
        .and_then(|f| f.set_modified(when))
        .expect("utimes");
    let c = std::ffi::CString::new(m.join("models/ckpt.bin").to_str().expect("utf-8")).expect("p");
    // SAFETY: valid C strings and value buffer.
    let rc = unsafe {
        libc::setxattr(
            c.as_ptr(),
            c"user.step".as_ptr(),
            b"1200".as_ptr().cast(),
            4,
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr");
    let original = walk(&m.path);
    m.unmount();

    let files = tempfile::tempdir().expect("tempdir");
    let d0 = dump_of(&vol.meta_url, &files.path().join("d0.jsonl"));
    assert!(d0.contains("\"name\":\"ckpt.bin\""), "{d0}");

    // A fresh, empty place on each engine; `role` keeps source and target apart.
    let sqlite_dir = tempfile::tempdir().expect("tempdir");
    let mut n = 0;
    let mut fresh = |engine: &str, role: &str| -> String {
        n += 1;
        match engine {
            "sqlite" => format!("sqlite://{}/meta-{n}.db", sqlite_dir.path().display()),
            "redis" => redis_url(if role == "src" { 10 } else { 11 }),
            "postgres" => postgres_url(&format!("rt_{role}")),
            "mysql" => mysql_url(&format!("rt_{role}")),
            _ => etcd_url(&format!("rt-{n}")),
        }
    };
    let engines = ["sqlite", "redis", "postgres", "mysql", "etcd"];
    let mut last = String::new();
    for s in engines {
        let src = fresh(s, "src");
        load_into(&src, &files.path().join("d0.jsonl"));
        let ds = files.path().join(format!("{s}.jsonl"));
        assert_eq!(dump_of(&src, &ds), d0, "{s} keeps the dump");
        for t in engines.iter().filter(|t| **t != s) {
            let dst = fresh(t, "dst");
            load_into(&dst, &ds);
            let dt = files.path().join(format!("{s}-{t}.jsonl"));
            assert_eq!(dump_of(&dst, &dt), d0, "{s} -> {t} is identical");
            last = dst;
        }
        last = if last.is_empty() { src } else { last };
    }

    // The last copy (mysql -> etcd... whichever came last) mounts and shows
    // the same tree, bytes included, through the kernel.
    let mnt = files.path().join("copy");
    std::fs::create_dir(&mnt).expect("mkdir");
    let cache = files.path().join("cache");
    let copy = Mount::start(
        &last,
        &mnt,
        &[
            "--cache-dir",
            cache.to_str().expect("utf-8"),
            "--metrics",
            "none",
        ],
    );
    assert_eq!(walk(&copy.path), original);
    copy.unmount();

    let again = tessera(&[
        "load",
        &last,
        files.path().join("d0.jsonl").to_str().expect("utf-8"),
    ]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already holds a volume"),
        "{}",
        stderr(&again)
    );
}

/// A volume reached through Redis Sentinel: format, mount, status and dump
/// all take the redis+sentinel:// form.
#[test]
#[ignore = "needs redis-server and a Sentinel; scripts/test.sh runs them"]
fn sentinel_url_works_in_every_command() {
    redis_url(8); // empties db 8 of the master the Sentinel names
    let base = std::env::var("TESSERA_TEST_REDIS_SENTINEL_URL")
        .expect("TESSERA_TEST_REDIS_SENTINEL_URL (scripts/services.sh sets it)");
    let url = format!(
        "{}/8",
        base.rsplit_once('/').map(|(b, _)| b).unwrap_or(&base)
    );
    let vol = Shared::format(&url);
    let m = vol.mount("s", &[]);
    std::fs::write(m.join("via-sentinel"), b"found the master").expect("write");
    assert_eq!(
        std::fs::read(m.join("via-sentinel")).expect("read"),
        b"found the master"
    );
    let status = tessera(&["status", &url]);
    assert!(status.status.success(), "{}", stderr(&status));
    assert!(String::from_utf8_lossy(&status.stdout).contains("shared"));
    m.unmount();
    let dump = tessera(&["dump", &url, "-"]);
    assert!(dump.status.success(), "{}", stderr(&dump));
    assert!(String::from_utf8_lossy(&dump.stdout).contains("\"name\":\"via-sentinel\""));
}

/// The password may stay out of the URL (and so out of `ps` and shell
/// history): META_PASSWORD supplies it.
#[test]
#[ignore = "needs a MySQL/MariaDB server; scripts/test.sh runs it"]
fn password_from_the_environment() {
    let with_password = mysql_url("env_password");
    let without = with_password.replacen(":tessera-pass@", "@", 1);
    assert_ne!(with_password, without);
    let vol = Shared::format(&with_password);
    let run = |env: Option<&str>| {
        let mut c = Command::new(bin());
        c.args(["status", &without]).env_remove("META_PASSWORD");
        if let Some(p) = env {
            c.env("META_PASSWORD", p);
        }
        c.output().expect("run tessera status")
    };
    let ok = run(Some("tessera-pass"));
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("shared"));
    let refused = run(None);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("Access denied"),
        "{}",
        stderr(&refused)
    );
    let wrong = run(Some("not-it"));
    assert!(!wrong.status.success());
    assert!(
        !stderr(&wrong).contains("not-it"),
        "the password is never printed"
    );
    drop(vol);
}
