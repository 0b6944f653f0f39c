//! Never a wrong byte, through real mounts: offsets past what the format
//! holds, volumes that share a name and a cache directory, objects damaged
//! in the bucket, crashes in the middle of fsynced writes (then `fsck` and
//! `gc`), corruption of objects and cache files at random, and the
//! foot-guns around them (a metadata database removed under a mount,
//! `umount` of a mount that is not ours, `import` of a source that is gone).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: it asserts

mod common;

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// The block objects of a volume whose store is `{dir}/objects`.
fn block_objects(vol: &Volume) -> Vec<PathBuf> {
    files_under(&vol.dir.path().join("objects"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("/chunks/"))
        .collect()
}

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A small xorshift generator, seeded, so a failing round can be rerun.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[test]
fn offsets_past_the_largest_file_fail_with_efbig_and_huge_truncates_are_quick() {
    let vol = Volume::new("bigoffsets");
    let m = vol.mount("mnt");
    let path = m.join("f");
    std::fs::write(&path, b"the first bytes").expect("write");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open");
    // 2^58 is one past the last byte the format holds (2^32 chunks of 64 MiB).
    let err = f.write_at(b"far", 1 << 58).expect_err("write at 2^58");
    assert_eq!(errno_of(&err), libc::EFBIG, "{err}");
    let err = f.set_len(1 << 62).expect_err("truncate to 4 EiB");
    assert_eq!(errno_of(&err), libc::EFBIG, "{err}");
    // The last bytes the format holds can be written, and read back.
    f.write_at(b"end", (1 << 58) - 3)
        .expect("write at the very end");
    let mut back = [0u8; 3];
    f.read_exact_at(&mut back, (1 << 58) - 3)
        .expect("read the end");
    assert_eq!(&back, b"end");
    let mut start = [0u8; 15];
    f.read_exact_at(&mut start, 0).expect("read the start");
    assert_eq!(&start, b"the first bytes", "nothing landed at the start");
    // Back to nothing from 256 PiB: work follows what is stored.
    let started = Instant::now();
    f.set_len(0).expect("truncate to 0");
    f.set_len(1 << 58).expect("truncate to the largest size");
    f.set_len(10).expect("and back");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "truncates took {:?}",
        started.elapsed()
    );
    let mut all = Vec::new();
    std::fs::File::open(&path)
        .expect("open")
        .read_to_end(&mut all)
        .expect("read");
    assert_eq!(all, vec![0u8; 10]);
    // fallocate and copy_file_range are bounded the same way.
    // SAFETY: fallocate on a descriptor this test owns.
    let r = unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&f), 0, (1 << 58) - 1, 2) };
    assert_eq!(r, -1);
    assert_eq!(errno_of(&std::io::Error::last_os_error()), libc::EFBIG);
    // Another volume's mount keeps working: nothing was held for long.
    std::fs::write(m.join("g"), b"ok").expect("create after the truncates");
}

#[test]
fn volumes_of_one_name_never_serve_each_others_cached_blocks() {
    let shared_cache = tempfile::tempdir().expect("cache dir");
    let cache = shared_cache.path().to_str().expect("utf-8").to_string();
    let a_data = pseudo_random(9 << 20, 1);
    let b_data = pseudo_random(9 << 20, 2);
    let a = Volume::new("vol");
    let b = Volume::new("vol");
    for (vol, data) in [(&a, &a_data), (&b, &b_data)] {
        let m = vol.mount_with("mnt", &["--cache-dir", &cache]);
        std::fs::write(m.join("model.bin"), data).expect("write");
        // Read it back so every block sits in the shared disk cache.
        assert_eq!(
            digest(&std::fs::read(m.join("model.bin")).expect("read")),
            digest(data)
        );
        m.unmount();
    }
    for (vol, data) in [(&a, &a_data), (&b, &b_data)] {
        let m = vol.mount_with("mnt", &["--cache-dir", &cache]);
        assert_eq!(
            digest(&std::fs::read(m.join("model.bin")).expect("read")),
            digest(data),
            "each volume reads its own bytes through one cache directory"
        );
        m.unmount();
    }
    // A volume formatted afresh under the same name, on the same host, in
    // the place of one that is gone: its file reads as its own.
    drop(a);
    let c = Volume::new("vol");
    let c_data = pseudo_random(9 << 20, 3);
    {
        let m = c.mount_with("mnt", &["--cache-dir", &cache]);
        std::fs::write(m.join("model.bin"), &c_data).expect("write");
        m.unmount();
    }
    let m = c.mount_with("mnt", &["--cache-dir", &cache]);
    assert_eq!(
        digest(&std::fs::read(m.join("model.bin")).expect("read")),
        digest(&c_data)
    );
    m.unmount();
    // Formatting a second volume of that name into the first one's bucket
    // prefix is refused: it would write over the first one's objects.
    let other_meta = format!("sqlite://{}/other.db", b.dir.path().display());
    let out = tessera(&["format", &other_meta, "vol", "--storage", &b.storage]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("already holds a volume named"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_damaged_object_is_an_error_naming_it_never_data() {
    for compress in ["none", "lz4", "zstd"] {
        let vol = Volume::with_storage("damaged", None, &["--compress", compress]);
        let data = pseudo_random(6 << 20, 5);
        {
            let m = vol.mount("w");
            std::fs::write(m.join("f"), &data).expect("write");
            m.unmount();
        }
        let objects = block_objects(&vol);
        assert!(!objects.is_empty());
        let victim = &objects[0];
        let mut raw = std::fs::read(victim).expect("read object");
        let at = raw.len() / 3;
        raw[at] ^= 0x01;
        std::fs::write(victim, &raw).expect("damage the object");
        let log = vol.dir.path().join(format!("mount-{compress}.log"));
        let m = Mount::start_logged(
            &vol.meta_url,
            &{
                let p = vol.dir.path().join(format!("r-{compress}"));
                std::fs::create_dir_all(&p).expect("mkdir");
                p
            },
            &["--cache-dir", "memory", "--metrics", "none"],
            &log,
        );
        let err = std::fs::read(m.join("f")).expect_err("a damaged block is refused");
        assert_eq!(errno_of(&err), libc::EIO, "{compress}: {err}");
        assert!(
            stat(&m.path, "tessera_corrupt_objects_total") >= 2.0,
            "{compress}: checked, read once more, counted"
        );
        m.unmount();
        let key = victim
            .strip_prefix(vol.dir.path().join("objects"))
            .expect("key")
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&log).expect("log");
        assert!(
            text.contains(&key),
            "{compress}: the log names {key}:\n{text}"
        );
    }
}

/// One crash round: writers append numbered, fsynced records; the mount is
/// killed at a random moment; the acknowledged records must all be there.
fn crash_round(vol: &Volume, round: u64, rng: &mut Rng, writeback: bool) {
    let extra: &[&str] = if writeback { &["--writeback"] } else { &[] };
    let mut m = vol.mount_with("mnt", extra);
    let path = m.join(&format!("log-{round}"));
    let acked = Arc::new(AtomicU64::new(0));
    let writer = {
        let (path, acked) = (path.clone(), acked.clone());
        std::thread::spawn(move || {
            let Ok(mut f) = OpenOptions::new().create(true).append(true).open(&path) else {
                return;
            };
            for n in 1u64.. {
                let record = record(round, n);
                if f.write_all(&record).is_err() || f.sync_data().is_err() {
                    return;
                }
                acked.store(n, Ordering::SeqCst);
            }
        })
    };
    std::thread::sleep(Duration::from_millis(150 + rng.below(600)));
    m.kill9();
    let _ = writer.join();
    let acked = acked.load(Ordering::SeqCst);
    let m = vol.mount_with("mnt", extra);
    let back = std::fs::read(m.join(&format!("log-{round}"))).unwrap_or_default();
    let whole = back.len() as u64 / RECORD;
    assert!(
        whole >= acked,
        "round {round}: {acked} records acknowledged, {whole} found"
    );
    for n in 1..=whole {
        let at = ((n - 1) * RECORD) as usize;
        assert_eq!(
            &back[at..at + RECORD as usize],
            &record(round, n)[..],
            "round {round}: record {n} is intact"
        );
    }
    if writeback {
        wait_for("staged blocks uploaded", || {
            stat(&m.path, "tessera_staging_blocks") == 0.0
        });
    }
    m.unmount();
}

const RECORD: u64 = 4096;

fn record(round: u64, n: u64) -> Vec<u8> {
    let mut r = pseudo_random(RECORD as usize, round * 1_000_003 + n);
    r[..16].copy_from_slice(&[round.to_le_bytes(), n.to_le_bytes()].concat());
    r
}

#[test]
fn kill_9_rounds_lose_no_fsynced_record_and_fsck_and_gc_leave_no_debris() {
    let seed = std::env::var("TESSERA_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_u64);
    let rounds: u64 = std::env::var("TESSERA_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    eprintln!("crash rounds: {rounds}, seed {seed} (TESSERA_CRASH_SEED / TESSERA_CRASH_ROUNDS)");
    let vol = Volume::new("crashvol");
    let mut rng = Rng(seed | 1);
    for round in 0..rounds {
        crash_round(&vol, round, &mut rng, round % 2 == 1);
    }
    // fsck: whatever the crashes left (usage not yet added, at most) is
    // repaired; a second pass finds nothing and every block is there.
    let out = tessera(&["fsck", &vol.meta_url, "--repair"]);
    eprintln!("fsck --repair after the crashes:\n{}", stdout(&out));
    assert!(
        out.status.success(),
        "fsck --repair: {}{}",
        stdout(&out),
        stderr(&out)
    );
    let out = tessera(&["fsck", &vol.meta_url, "--check-objects"]);
    assert!(
        out.status.success(),
        "fsck after repair: {}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("the volume is consistent"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains(" 0 missing"), "{}", stdout(&out));
    // Usage is exact: what status shows is what the files hold (in 4 KiB
    // units, as the counters keep it).
    let mut expected = 0u64;
    let m = vol.mount("mnt");
    for e in std::fs::read_dir(&m.path).expect("ls").flatten() {
        let len = e.metadata().expect("stat").len();
        expected += len.div_ceil(4096) * 4096;
    }
    m.unmount();
    let status = tessera(&["status", &vol.meta_url]);
    assert!(
        stdout(&status).contains(&format!("used        {expected} bytes")),
        "usage after fsck: expected {expected} bytes:\n{}",
        stdout(&status)
    );
    // gc: uploads of writes the crashes cut off are found and removed;
    // then nothing unreferenced is left and every file still reads.
    let out = tessera(&["gc", &vol.meta_url, "--age", "0s", "--delete"]);
    eprintln!("gc --delete after the crashes:\n{}", stdout(&out));
    assert!(out.status.success(), "gc: {}{}", stdout(&out), stderr(&out));
    let out = tessera(&["gc", &vol.meta_url, "--age", "0s"]);
    assert!(
        stdout(&out).contains(" 0 unreferenced (0 B)"),
        "after gc --delete: {}",
        stdout(&out)
    );
    let out = tessera(&["fsck", &vol.meta_url, "--check-objects"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let m = vol.mount_with("mnt", &["--cache-dir", "memory"]);
    for round in 0..rounds {
        let back = std::fs::read(m.join(&format!("log-{round}"))).unwrap_or_default();
        for n in 1..=back.len() as u64 / RECORD {
            let at = ((n - 1) * RECORD) as usize;
            assert_eq!(&back[at..at + RECORD as usize], &record(round, n)[..]);
        }
    }
}

#[test]
fn corruption_rounds_give_the_right_bytes_or_eio_never_other_bytes() {
    let seed = std::env::var("TESSERA_CORRUPT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xbad_u64);
    eprintln!("corruption seed {seed} (TESSERA_CORRUPT_SEED)");
    let mut rng = Rng(seed | 1);
    let vol = Volume::with_storage("corruptvol", None, &["--block-size", "256K"]);
    let files: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| {
            (
                format!("f{i}"),
                pseudo_random(300_000 + i * 97_000, 40 + i as u64),
            )
        })
        .collect();
    {
        let m = vol.mount("w");
        for (name, data) in &files {
            std::fs::write(m.join(name), data).expect("write");
        }
        m.unmount();
    }
    for round in 0..8 {
        // Warm a disk cache, then damage objects and cache files alike.
        let cache_dir = vol.cache_dir("r");
        {
            let m = vol.mount("r");
            for (name, _) in &files {
                let _ = std::fs::read(m.join(name));
            }
            m.unmount();
        }
        let mut targets = block_objects(&vol);
        targets.extend(
            files_under(&cache_dir)
                .into_iter()
                .filter(|p| p.to_string_lossy().contains("/raw/")),
        );
        for _ in 0..3 {
            let i = rng.below(targets.len() as u64) as usize;
            let victim = targets[i].clone();
            let Ok(mut raw) = std::fs::read(&victim) else {
                continue;
            };
            match rng.below(4) {
                0 if !raw.is_empty() => {
                    let at = rng.below(raw.len() as u64) as usize;
                    raw[at] ^= 1 << rng.below(8);
                    std::fs::write(&victim, &raw).expect("flip");
                }
                1 => {
                    raw.truncate(rng.below(raw.len() as u64) as usize);
                    std::fs::write(&victim, &raw).expect("truncate");
                }
                2 => {
                    // Swap with another file of the same size where there is one.
                    let peer = targets
                        .iter()
                        .find(|p| {
                            *p != &victim
                                && std::fs::metadata(p).map(|m| m.len()).ok()
                                    == Some(raw.len() as u64)
                        })
                        .cloned();
                    if let Some(peer) = peer {
                        let other = std::fs::read(&peer).expect("peer");
                        std::fs::write(&peer, &raw).expect("swap");
                        std::fs::write(&victim, &other).expect("swap");
                    }
                }
                _ => {
                    let _ = std::fs::remove_file(&victim);
                }
            }
        }
        let m = vol.mount("r");
        for (name, data) in &files {
            match std::fs::read(m.join(name)) {
                Ok(back) => assert!(
                    back == *data,
                    "round {round}: {name} read back other bytes (seed {seed})"
                ),
                Err(e) => assert_eq!(errno_of(&e), libc::EIO, "round {round}: {name}: {e}"),
            }
        }
        m.unmount();
        // Heal the store for the next round: rewrite the damaged files.
        let m = vol.mount_with("w", &["--cache-dir", "memory"]);
        for (name, data) in &files {
            if std::fs::read(m.join(name)).ok().as_ref() != Some(data) {
                std::fs::write(m.join(name), data).expect("rewrite");
            }
        }
        m.unmount();
        let _ = std::fs::remove_dir_all(&cache_dir);
    }
}

#[test]
fn a_metadata_database_removed_under_a_mount_fails_writes() {
    let vol = Volume::new("rmdb");
    let mut m = vol.mount("mnt");
    std::fs::write(m.join("before"), b"kept").expect("write");
    let db = vol.dir.path().join("meta.db");
    std::fs::remove_file(&db).expect("rm meta.db");
    let wrote = std::fs::write(m.join("after"), b"lost?");
    let err = wrote.expect_err("a write after the database is gone fails");
    assert_eq!(errno_of(&err), libc::EIO, "{err}");
    // Its session cannot even be closed: the mount is stopped the hard way.
    m.kill9();
}

#[test]
fn umount_refuses_what_is_not_a_tessera_volume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("tmpfs");
    std::fs::create_dir(&target).expect("mkdir");
    let mounted = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "tessera-test",
            target.to_str().expect("utf-8"),
        ])
        .status()
        .expect("mount tmpfs");
    assert!(mounted.success());
    let out = tessera(&["umount", target.to_str().expect("utf-8")]);
    let still = is_mounted(&target);
    let _ = Command::new("umount").arg(&target).status();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not a Tessera volume"),
        "{}",
        stderr(&out)
    );
    assert!(still, "the tmpfs stayed mounted");
}

#[test]
fn import_never_takes_a_missing_or_empty_source_for_deleted_objects() {
    let vol = Volume::new("impguard");
    let src = vol.dir.path().join("bucket");
    std::fs::create_dir_all(src.join("models")).expect("mkdir");
    std::fs::write(src.join("models/a.bin"), b"weights").expect("object");
    let url = format!("file://{}", src.display());
    let out = tessera(&["import", &url, &vol.meta_url, "/imported"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The source goes missing: refused, nothing removed.
    let moved = vol.dir.path().join("bucket.moved");
    std::fs::rename(&src, &moved).expect("move the source away");
    let out = tessera(&["import", &url, &vol.meta_url, "/imported"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    // An empty source: refused unless --allow-empty.
    std::fs::create_dir_all(&src).expect("empty source");
    let out = tessera(&["import", &url, &vol.meta_url, "/imported"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--allow-empty"), "{}", stderr(&out));
    let m = vol.mount("mnt");
    assert_eq!(
        std::fs::metadata(m.join("imported/models/a.bin"))
            .expect("the imported file is still there")
            .len(),
        7
    );
    m.unmount();
    let out = tessera(&["import", &url, &vol.meta_url, "/imported", "--allow-empty"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let m = vol.mount("mnt");
    assert!(
        !m.join("imported/models/a.bin").exists(),
        "--allow-empty removes it"
    );
    m.unmount();
}

#[test]
fn volumes_of_layout_version_1_keep_bare_blocks_and_version_2_seals_them() {
    let data = pseudo_random(5 << 20, 77);
    for (version, sealed) in [("1", false), ("2", true)] {
        let vol = Volume::with_storage("layouts", None, &["--layout-version", version]);
        {
            let m = vol.mount("w");
            std::fs::write(m.join("f"), &data).expect("write");
            m.unmount();
        }
        for object in block_objects(&vol) {
            let len = block_len_of(&object);
            let stored = std::fs::metadata(&object).expect("object").len();
            assert_eq!(
                stored > len,
                sealed,
                "version {version}: {object:?} {stored} bytes"
            );
        }
        let m = vol.mount_with("r", &["--cache-dir", "memory"]);
        assert_eq!(
            digest(&std::fs::read(m.join("f")).expect("read")),
            digest(&data)
        );
        m.unmount();
    }
}
