//! The cache group with real processes: `tessera cache-server` members on
//! 127.0.0.x addresses, mounts that read through them, a member killed
//! mid-read, a member joining, a stranger refused, and `cache gc`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: it asserts

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const GETS: &str = "tessera_object_request_seconds_count{method=\"get\"}";
const PEER_BYTES: &str = "tessera_tier_read_bytes_total{tier=\"peer\"}";
const FALLBACKS: &str = "tessera_group_fallbacks_total";
const MEMBERS: &str = "tessera_group_members";

/// A free port on `ip` (bound, then released for the member to take).
fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A `tessera cache-server` child, killed on drop.
struct Member {
    addr: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Member {
    fn start(vol: &Volume, group: &str, ip: &str, extra: &[&str]) -> Member {
        let addr = format!("{ip}:{}", free_port(ip));
        Self::start_at(vol, group, &addr, extra)
    }

    /// A member at a given address (a restart keeps its cache directory).
    fn start_at(vol: &Volume, group: &str, addr: &str, extra: &[&str]) -> Member {
        let addr = addr.to_string();
        // No ':' in the path: --cache-dir takes a colon-separated list.
        let cache = vol
            .dir
            .path()
            .join(format!("member-{}", addr.replace(':', "_")));
        let log = vol.dir.path().join(format!("member-{addr}.log"));
        let child = Command::new(bin())
            .args([
                "cache-server",
                &vol.meta_url,
                "--cache-group",
                group,
                "--group-listen",
                &addr,
            ])
            .args(["--cache-dir", cache.to_str().expect("utf-8")])
            .args(["--free-space-ratio", "0.01"])
            .args(extra)
            .args(if extra.contains(&"--metrics") {
                &[][..]
            } else {
                &["--metrics", "none"][..]
            })
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start cache-server");
        Member {
            addr,
            log,
            child: Some(child),
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn live_members(vol: &Volume, group: &str) -> usize {
    let out = tessera(&["cache-group", "status", &vol.meta_url, group, "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    rows.as_array()
        .map(|r| r.iter().filter(|m| m["state"] == "live").count())
        .unwrap_or(0)
}

fn run(args: &[&str]) -> String {
    let out = tessera(args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Bytes per member from `warmup --cache-group --check` output lines
/// `  ADDR: SIZE`, in bytes of whole MiB (the test's blocks are 4 MiB).
fn per_member(check: &str) -> Vec<(String, f64)> {
    check
        .lines()
        .filter_map(|l| {
            let (addr, size) = l.strip_prefix("  ")?.split_once(": ")?;
            let (n, unit) = size.split_once(' ')?;
            let n: f64 = n.parse().ok()?;
            let mib = match unit {
                "B" => n / 1048576.0,
                "KiB" => n / 1024.0,
                "MiB" => n,
                "GiB" => n * 1024.0,
                _ => return None,
            };
            Some((addr.to_string(), mib))
        })
        .collect()
}

/// `warmup --cache-group --check` of `file` as the consumer mounted at
/// `mnt` sees it with `members` members. A member whose heartbeat is late
/// on a loaded machine drops out of the view for a moment, and its blocks
/// then count as missing at whichever member owns them meanwhile: a check
/// is taken again until every member is listed, with the view the same
/// before and after.
fn stable_check(mnt: &Path, file: &str, members: usize) -> String {
    let mut last = String::new();
    for _ in 0..10 {
        let before = stat(mnt, MEMBERS);
        last = run(&["warmup", "--cache-group", "rack", "--check", file]);
        let listed = per_member(&last).len();
        if before == members as f64 && stat(mnt, MEMBERS) == members as f64 && listed == members {
            return last;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("no check with {members} members in a stable view: {last}");
}

/// A volume with one file written through a plain mount.
fn volume_with_file(size: usize, seed: u64) -> (Volume, Vec<u8>) {
    let vol = Volume::new("groupvol");
    let data = pseudo_random(size, seed);
    let m = vol.mount("writer");
    std::fs::write(m.join("model.bin"), &data).expect("write");
    m.unmount();
    (vol, data)
}

#[test]
fn members_serve_a_consumer_survive_a_kill_and_refuse_strangers() {
    let (vol, data) = volume_with_file(96 << 20, 5);
    let mut members: Vec<Member> = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
        .iter()
        .map(|ip| Member::start(&vol, "gpu", ip, &[]))
        .collect();
    wait_for("three live members", || live_members(&vol, "gpu") == 3);
    let consumer_args = [
        "--cache-group",
        "gpu",
        "--no-sharing",
        "--cache-dir",
        "memory",
        "--max-readahead",
        "4M",
    ];
    let c = vol.mount_with("consumer", &consumer_args);
    wait_for("the consumer's view", || stat(&c.path, MEMBERS) == 3.0);
    let file = c.join("model.bin");
    let file = file.to_str().expect("utf-8");
    assert!(run(&["warmup", "--cache-group", "gpu", "--check", file]).contains("(0.0%)"));
    let warmed = run(&["warmup", "--cache-group", "gpu", file]);
    assert!(warmed.contains("(100.0%)"), "{warmed}");
    let check = run(&["warmup", "--cache-group", "gpu", "--check", file]);
    assert!(check.contains("(100.0%)"), "{check}");
    let shares = per_member(&check);
    assert_eq!(shares.len(), 3, "{check}");
    assert_eq!(shares.iter().map(|s| s.1).sum::<f64>(), 96.0, "{check}");

    // Read through the consumer: every byte from the members, no GET.
    let back = std::fs::read(c.join("model.bin")).expect("read");
    assert_eq!(digest(&back), digest(&data));
    assert_eq!(stat(&c.path, GETS), 0.0, "the consumer made no object GET");
    assert_eq!(stat(&c.path, PEER_BYTES), data.len() as f64);
    c.unmount();

    // A member killed mid-read: the read still returns the right bytes.
    let c = vol.mount_with("consumer", &consumer_args);
    wait_for("the consumer's view", || stat(&c.path, MEMBERS) == 3.0);
    let mut f = std::fs::File::open(c.join("model.bin")).expect("open");
    let mut got = vec![0u8; 8 << 20];
    f.read_exact(&mut got).expect("first 8 MiB");
    members[1].kill9();
    f.read_to_end(&mut got).expect("the rest");
    assert_eq!(
        digest(&got),
        digest(&data),
        "identical bytes despite the kill"
    );
    assert!(
        stat(&c.path, FALLBACKS) >= 1.0,
        "the dead member's blocks came from object storage"
    );
    assert!(stat(&c.path, GETS) >= 1.0);
    drop(f);
    wait_for("the dead member to leave the view", || {
        stat(&c.path, MEMBERS) == 2.0
    });

    // Strangers: another volume's secret, another group's secret.
    use tessera_cachegroup::{Op, PeerTimeouts, Peers, Secret};
    let live = &members[0].addr;
    for (group, secret) in [
        ("gpu", Secret::derive("not-this-volume", "gpu")),
        ("other", Secret::derive("not-this-volume", "other")),
    ] {
        let peers = Peers::new(group, secret, PeerTimeouts::default(), None);
        let refused = peers.request(live, Op::Get, "groupvol/chunks/0/0/1_0_4194304", 4 << 20);
        assert!(refused.is_err(), "a wrong secret gets nothing");
    }
    wait_for("the refusals in the member's log", || {
        members[0]
            .log()
            .matches("cache group connection refused")
            .count()
            >= 2
    });
}

#[test]
fn a_join_moves_only_the_newcomers_share_and_gc_waits_for_the_lock() {
    let (vol, data) = volume_with_file(128 << 20, 9);
    let _members: Vec<Member> = ["127.0.0.5", "127.0.0.6", "127.0.0.7"]
        .iter()
        .map(|ip| Member::start(&vol, "rack", ip, &[]))
        .collect();
    wait_for("three live members", || live_members(&vol, "rack") == 3);
    let c = vol.mount_with(
        "consumer",
        &[
            "--cache-group",
            "rack",
            "--no-sharing",
            "--cache-dir",
            "memory",
        ],
    );
    wait_for("the consumer's view", || stat(&c.path, MEMBERS) == 3.0);
    let file = c.join("model.bin");
    let file = file.to_str().expect("utf-8");
    run(&["warmup", "--cache-group", "rack", file]);
    let before = per_member(&stable_check(&c.path, file, 3));
    assert_eq!(before.iter().map(|s| s.1).sum::<f64>(), 128.0);

    let newcomer = Member::start(&vol, "rack", "127.0.0.8", &[]);
    wait_for("the consumer to see the newcomer", || {
        stat(&c.path, MEMBERS) == 4.0
    });
    let check = stable_check(&c.path, file, 4);
    let after = per_member(&check);
    // Blocks whose owner did not change are still where they were; only
    // the newcomer's share is not cached yet.
    for (addr, mib) in &after {
        if addr == &newcomer.addr {
            assert_eq!(*mib, 0.0, "{check}");
        } else {
            let was = before
                .iter()
                .find(|b| &b.0 == addr)
                .map(|b| b.1)
                .unwrap_or(0.0);
            assert!(*mib <= was, "{addr} gained blocks: {check}");
        }
    }
    let moved = 128.0 - after.iter().map(|s| s.1).sum::<f64>();
    assert!(
        moved > 0.0 && moved <= 64.0,
        "{moved} MiB moved to the newcomer: {check}"
    );
    // Warm again: the newcomer takes exactly the blocks that moved.
    run(&["warmup", "--cache-group", "rack", file]);
    let check = stable_check(&c.path, file, 4);
    let now = per_member(&check);
    let newcomer_share = now.iter().find(|s| s.0 == newcomer.addr).map(|s| s.1);
    assert_eq!(newcomer_share, Some(moved), "{check}");
    assert!(check.contains("(100.0%)"), "{check}");
    let back = std::fs::read(c.join("model.bin")).expect("read");
    assert_eq!(digest(&back), digest(&data));
    c.unmount();

    // cache gc: another GC holding the lock makes it wait.
    let dir = vol
        .dir
        .path()
        .join(format!("member-{}", newcomer.addr.replace(':', "_")));
    let size = |d: &Path| -> u64 {
        let mut total = 0;
        let mut stack = vec![d.to_path_buf()];
        while let Some(p) = stack.pop() {
            for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                let m = e.metadata().expect("metadata");
                if m.is_dir() {
                    stack.push(e.path());
                } else if e.path().to_string_lossy().contains("/raw/") {
                    total += m.len();
                }
            }
        }
        total
    };
    assert!(size(&dir) > 4 << 20, "the newcomer cached something");
    let holder = Command::new("flock")
        .arg(dir.join(".gc.lock"))
        .args(["sleep", "2"])
        .spawn()
        .expect("flock");
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let out = tessera(&[
        "cache",
        "gc",
        "--dir",
        dir.to_str().expect("utf-8"),
        "--target-size",
        "4M",
    ]);
    let waited = started.elapsed();
    let _ = { holder }.wait();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("waiting for another cache gc"),
        "{}",
        stderr(&out)
    );
    assert!(
        waited >= Duration::from_millis(1500),
        "gc ran while the lock was held ({waited:?})"
    );
    assert!(size(&dir) <= 4 << 20, "{} bytes left", size(&dir));
    let out = tessera(&[
        "cache",
        "gc",
        "--dir",
        "/nonexistent/cache",
        "--target-size",
        "1G",
    ]);
    assert!(!out.status.success() && stderr(&out).contains("/nonexistent/cache"));
}

/// One metric of a member, from its `--metrics` endpoint.
fn member_metric(endpoint: &str, name: &str) -> f64 {
    use std::io::Write;
    let Ok(mut s) = std::net::TcpStream::connect(endpoint) else {
        return -1.0;
    };
    let _ = write!(s, "GET /metrics HTTP/1.0\r\nHost: {endpoint}\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    metric(&text, name)
}

/// Weight 0 drains a member: restarted with weight 0 it hands its blocks to
/// their new owner, which takes them from it (the backup period) rather
/// than from object storage, and status shows it drained.
#[test]
fn weight_zero_drains_a_member_through_the_backup_period() {
    let (vol, data) = volume_with_file(64 << 20, 13);
    let a_metrics = format!("127.0.0.9:{}", free_port("127.0.0.9"));
    let a = Member::start(&vol, "drain", "127.0.0.9", &["--metrics", &a_metrics]);
    let b_addr = format!("127.0.0.10:{}", free_port("127.0.0.10"));
    let mut b = Member::start_at(&vol, "drain", &b_addr, &[]);
    let started = Instant::now();
    while live_members(&vol, "drain") != 2 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "two live members: {} / {}",
            a.log(),
            b.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // b must be in a's view before it changes, or a has no previous owner
    // to ask.
    wait_for("a to see b", || member_metric(&a_metrics, MEMBERS) == 2.0);
    let c = vol.mount_with(
        "consumer",
        &[
            "--cache-group",
            "drain",
            "--no-sharing",
            "--cache-dir",
            "memory",
        ],
    );
    wait_for("the consumer's view", || stat(&c.path, MEMBERS) == 2.0);
    let file = c.join("model.bin");
    let file = file.to_str().expect("utf-8");
    run(&["warmup", "--cache-group", "drain", file]);
    let shares = per_member(&run(&["warmup", "--cache-group", "drain", "--check", file]));
    let b_share = shares
        .iter()
        .find(|s| s.0 == b_addr)
        .map(|s| s.1)
        .unwrap_or(0.0);
    assert!(b_share > 0.0, "b owns part of the file: {shares:?}");
    let a_gets = member_metric(&a_metrics, GETS);
    assert!(a_gets > 0.0, "a fetched its own share");

    // b comes back at the same address with weight 0, its cache intact.
    b.kill9();
    let b = Member::start_at(&vol, "drain", &b_addr, &["--weight", "0"]);
    wait_for("b to drain", || {
        let out = tessera(&["cache-group", "status", &vol.meta_url, "drain", "--json"]);
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        rows.as_array().is_some_and(|r| {
            r.iter()
                .any(|m| m["addr"] == b_addr.as_str() && m["state"] == "drained")
        })
    });
    assert_eq!(
        member_metric(&a_metrics, GETS),
        a_gets,
        "a took b's blocks from b, not from object storage: {}\n----\n{}",
        a.log(),
        b.log()
    );
    let check = run(&["warmup", "--cache-group", "drain", "--check", file]);
    assert!(check.contains("(100.0%)"), "{check}");
    assert_eq!(
        per_member(&check)
            .iter()
            .find(|s| s.0 == a.addr)
            .map(|s| s.1),
        Some(64.0)
    );
    let back = std::fs::read(c.join("model.bin")).expect("read");
    assert_eq!(digest(&back), digest(&data));
    drop(b);
}

/// A throwaway CA and a certificate for `ip`, made with the openssl tool.
fn make_certs(dir: &Path, ip: &str) {
    let sh = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    sh(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "1",
            "-subj",
            "/CN=tessera test CA",
        ],
    ]
    .concat());
    sh(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "member.key",
            "-out",
            "member.csr",
            "-subj",
            "/CN=member",
        ],
    ]
    .concat());
    std::fs::write(dir.join("ext.cnf"), format!("subjectAltName=IP:{ip}\n")).expect("ext");
    sh(&[
        "x509",
        "-req",
        "-in",
        "member.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "member.crt",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ]);
}

/// TLS between members: a consumer with the CA reads everything from the
/// member; one without TLS is refused by it and reads object storage; a
/// serving member without a certificate is refused by name.
#[test]
fn members_can_talk_tls() {
    let (vol, data) = volume_with_file(32 << 20, 21);
    let pki = vol.dir.path().join("pki");
    std::fs::create_dir_all(&pki).expect("mkdir");
    make_certs(&pki, "127.0.0.11");
    let path = |f: &str| pki.join(f).to_str().expect("utf-8").to_string();
    let (ca, cert, key) = (path("ca.crt"), path("member.crt"), path("member.key"));
    let member = Member::start(
        &vol,
        "secure",
        "127.0.0.11",
        &[
            "--group-tls-ca",
            &ca,
            "--group-tls-cert",
            &cert,
            "--group-tls-key",
            &key,
        ],
    );
    wait_for("a live member", || live_members(&vol, "secure") == 1);

    let c = vol.mount_with(
        "tls-consumer",
        &[
            "--cache-group",
            "secure",
            "--no-sharing",
            "--cache-dir",
            "memory",
            "--group-tls-ca",
            &ca,
        ],
    );
    wait_for("the consumer's view", || stat(&c.path, MEMBERS) == 1.0);
    let back = std::fs::read(c.join("model.bin")).expect("read over TLS");
    assert_eq!(digest(&back), digest(&data));
    assert_eq!(stat(&c.path, GETS), 0.0, "every block came from the member");
    assert_eq!(stat(&c.path, PEER_BYTES), data.len() as f64);
    c.unmount();

    let plain = vol.mount_with(
        "plain-consumer",
        &[
            "--cache-group",
            "secure",
            "--no-sharing",
            "--cache-dir",
            "memory",
        ],
    );
    wait_for("the consumer's view", || stat(&plain.path, MEMBERS) == 1.0);
    let back = std::fs::read(plain.join("model.bin")).expect("read without TLS");
    assert_eq!(
        digest(&back),
        digest(&data),
        "right bytes from object storage"
    );
    assert!(stat(&plain.path, FALLBACKS) >= 1.0);
    assert_eq!(stat(&plain.path, PEER_BYTES), 0.0);
    wait_for("the refusal in the member's log", || {
        member.log().contains("cache group connection refused")
    });
    plain.unmount();

    let out = tessera(&[
        "cache-server",
        &vol.meta_url,
        "--cache-group",
        "secure",
        "--group-listen",
        "127.0.0.11:0",
        "--group-tls-ca",
        &ca,
    ]);
    assert!(
        !out.status.success() && stderr(&out).contains("--group-tls-cert"),
        "{}",
        stderr(&out)
    );
}
