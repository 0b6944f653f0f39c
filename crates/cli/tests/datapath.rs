//! The data path through real mounts: the disk cache (checksums, restart,
//! quota), write-back across a crash, rate limits and the `.stats` file.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: it asserts

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const DISK_BLOCKS: &str = "tessera_cache_blocks{tier=\"disk\"}";
const OBJECT_BYTES: &str = "tessera_tier_read_bytes_total{tier=\"object\"}";
const DISK_BYTES: &str = "tessera_tier_read_bytes_total{tier=\"disk\"}";

/// Small random reads of blocks on the disk cache read only the 32 KiB
/// pieces that hold them (a 4 KiB read must not move 4 MiB off the disk),
/// the blocks stay out of memory, and a damaged piece is never served: its
/// block is dropped and fetched again from the store.
#[test]
fn small_random_reads_of_cached_blocks_read_only_their_pieces() {
    use std::os::unix::fs::FileExt;
    const RANGE_READS: &str = "tessera_disk_range_reads_total";
    const MEMORY_BLOCKS: &str = "tessera_cache_blocks{tier=\"memory\"}";
    let vol = Volume::new("rangevol");
    let data = pseudo_random(10 << 20, 11);
    {
        let m = vol.mount("mnt");
        std::fs::write(m.join("f"), &data).expect("write");
        m.unmount();
    }
    let blocks = files_under(&vol.dir.path().join("objects"))
        .iter()
        .filter(|p| p.to_string_lossy().contains("/chunks/"))
        .count();
    {
        let m = vol.mount("mnt");
        assert_eq!(
            digest(&std::fs::read(m.join("f")).expect("read")),
            digest(&data)
        );
        wait_for("every block cached", || {
            stat(&m.path, DISK_BLOCKS) == blocks as f64
        });
        m.unmount();
    }
    // Far apart and out of order, so the mount sees a reader that jumps.
    let offsets = [
        7_340_000usize,
        1_234_567,
        9_000_001,
        3_000_000,
        5_555_555,
        222_222,
    ];
    let sample = |m: &Mount| {
        let f = std::fs::File::open(m.join("f")).expect("open");
        for &off in &offsets {
            let mut buf = vec![0u8; 4096];
            f.read_exact_at(&mut buf, off as u64).expect("pread");
            assert!(buf == data[off..off + 4096], "4 KiB at {off}");
        }
    };
    {
        let m = vol.mount("mnt");
        sample(&m);
        assert!(stat(&m.path, RANGE_READS) >= offsets.len() as f64);
        assert_eq!(stat(&m.path, MEMORY_BLOCKS), 0.0, "no block read whole");
        assert_eq!(stat(&m.path, OBJECT_BYTES), 0.0);
        m.unmount();
    }
    // A flipped bit in every piece of every cached block.
    for path in files_under(&vol.cache_dir("mnt")) {
        if !path.to_string_lossy().contains("/raw/") {
            continue;
        }
        let len = block_len_of(&path) as usize;
        let mut raw = std::fs::read(&path).expect("read cached block");
        for at in (100..len).step_by(32 << 10) {
            raw[at] ^= 0x04;
        }
        std::fs::write(&path, raw).expect("damage cached block");
    }
    {
        let m = vol.mount("mnt");
        sample(&m);
        assert_eq!(stat(&m.path, RANGE_READS), 0.0, "no damaged piece served");
        assert!(stat(&m.path, "tessera_corrupt_blocks_total") >= 1.0);
        assert!(stat(&m.path, OBJECT_BYTES) > 0.0);
        assert_eq!(
            digest(&std::fs::read(m.join("f")).expect("read")),
            digest(&data)
        );
        assert_eq!(
            stat(&m.path, "tessera_corrupt_blocks_total"),
            blocks as f64,
            "each damaged block dropped once"
        );
        m.unmount();
    }
}

#[test]
fn disk_cache_survives_restart_and_drops_corrupt_blocks() {
    let vol = Volume::new("cachevol");
    let data = pseudo_random(10 << 20, 7); // blocks of 4, 4 and 2 MiB
    {
        let m = vol.mount("mnt");
        std::fs::write(m.join("f"), &data).expect("write");
        m.unmount();
    }
    // Usually blocks of 4, 4 and 2 MiB; a busy machine's writer may cut
    // the write into more slices (its buffer budget), so the layout is
    // read from the store: keys end in `_{length}`, and blocks shorter
    // than 4 MiB were cached on disk when they were written.
    let blocks: Vec<u64> = files_under(&vol.dir.path().join("objects"))
        .iter()
        .filter(|p| p.to_string_lossy().contains("/chunks/"))
        .map(|p| block_len_of(p))
        .collect();
    let full: u64 = blocks.iter().filter(|&&len| len == 4 << 20).sum();
    {
        // A fresh mount has nothing in memory: the full blocks come from
        // the store and fill the disk cache behind the reader.
        let m = vol.mount("mnt");
        assert_eq!(
            digest(&std::fs::read(m.join("f")).expect("read")),
            digest(&data)
        );
        assert_eq!(stat(&m.path, OBJECT_BYTES), full as f64);
        assert_eq!(stat(&m.path, DISK_BYTES), (data.len() as u64 - full) as f64);
        wait_for("every block cached", || {
            stat(&m.path, DISK_BLOCKS) == blocks.len() as f64
        });
        m.unmount();
    }
    {
        // Restarted: every byte comes from the disk cache, no object GET.
        let m = vol.mount("mnt");
        assert_eq!(
            stat(&m.path, DISK_BLOCKS),
            blocks.len() as f64,
            "index rebuilt at start"
        );
        assert_eq!(
            digest(&std::fs::read(m.join("f")).expect("read")),
            digest(&data)
        );
        assert_eq!(
            stat(&m.path, OBJECT_BYTES),
            0.0,
            "no object reads after restart"
        );
        assert_eq!(stat(&m.path, DISK_BYTES), data.len() as f64);
        m.unmount();
    }
    // Flip one bit in the middle of one cached block's file (its length is
    // the last part of its key).
    let cached = files_under(&vol.cache_dir("mnt"));
    let victim = cached
        .iter()
        .find(|p| p.to_string_lossy().contains("/raw/"))
        .unwrap_or_else(|| panic!("a cached block among {cached:?}"));
    let victim_len = block_len_of(victim);
    let mut raw = std::fs::read(victim).expect("read cached block");
    raw[victim_len as usize / 2] ^= 0x40;
    std::fs::write(victim, raw).expect("corrupt cached block");
    {
        let m = vol.mount("mnt");
        assert_eq!(
            digest(&std::fs::read(m.join("f")).expect("read")),
            digest(&data),
            "correct bytes despite the corrupt cached block"
        );
        assert_eq!(stat(&m.path, "tessera_corrupt_blocks_total"), 1.0);
        assert_eq!(
            stat(&m.path, OBJECT_BYTES),
            victim_len as f64,
            "only the corrupt block is fetched again"
        );
        m.unmount();
    }
}

#[test]
fn disk_cache_stays_under_its_quota() {
    let vol = Volume::new("quotavol");
    let data = pseudo_random(40 << 20, 9);
    {
        let m = vol.mount("w");
        std::fs::write(m.join("big"), &data).expect("write");
        m.unmount();
    }
    let m = vol.mount_with("r", &["--cache-size", "12M", "--mem-cache-size", "4M"]);
    assert_eq!(
        digest(&std::fs::read(m.join("big")).expect("read")),
        digest(&data)
    );
    wait_for("cache writes to settle", || {
        stat(&m.path, "tessera_cache_evictions_total{tier=\"disk\"}") > 0.0
    });
    std::thread::sleep(Duration::from_millis(500));
    let on_disk: u64 = files_under(&vol.cache_dir("r"))
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    assert!(on_disk > 0, "something was cached");
    assert!(
        on_disk <= 12 << 20,
        "{on_disk} bytes cached over a 12 MiB quota"
    );
    assert!(stat(&m.path, "tessera_cache_bytes{tier=\"disk\"}") <= (12 << 20) as f64);
    m.unmount();
}

#[test]
fn writeback_keeps_fsynced_data_across_kill_9() {
    let vol = Volume::new("wbvol");
    let data = pseudo_random(9 << 20, 3);
    let cache = vol.cache_dir("mnt");
    {
        // Uploads crawl at 1 MB/s, so at kill time most blocks are staged only.
        let m = vol.mount_with("mnt", &["--writeback", "--upload-limit", "8"]);
        let mut f = std::fs::File::create(m.join("ckpt")).expect("create");
        std::io::Write::write_all(&mut f, &data).expect("write");
        f.sync_all().expect("fsync");
        assert!(
            stat(&m.path, "tessera_staging_blocks") >= 1.0,
            "blocks are staged, not yet uploaded"
        );
        let pid = m.pid();
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .expect("kill -9");
        std::thread::sleep(Duration::from_millis(300));
        let _ = Command::new("fusermount3").arg("-uz").arg(&m.path).status();
        std::mem::forget(m);
    }
    let staged = files_under(&cache.join(vol.uuid()).join("staging"));
    assert!(!staged.is_empty(), "staged blocks survived the crash");
    let m = vol.mount_with("mnt", &["--writeback"]);
    assert_eq!(
        digest(&std::fs::read(m.join("ckpt")).expect("read")),
        digest(&data),
        "every fsynced byte is there after restart"
    );
    wait_for("staged blocks to upload", || {
        files_under(&cache.join(vol.uuid()).join("staging")).is_empty()
    });
    m.unmount();
    // Without the cache the data comes back from object storage alone.
    std::fs::remove_dir_all(&cache).expect("drop cache");
    let m = vol.mount("mnt");
    assert_eq!(
        digest(&std::fs::read(m.join("ckpt")).expect("read")),
        digest(&data)
    );
    m.unmount();
}

#[test]
fn download_limit_holds_over_ten_seconds() {
    let vol = Volume::new("ratevol");
    let data = pseudo_random(20_000_000, 5);
    {
        let m = vol.mount("w");
        std::fs::write(m.join("f"), &data).expect("write");
        m.unmount();
    }
    // 16 Mbit/s = 2 MB/s: 20 MB should take 10 s.
    let m = vol.mount_with("r", &["--download-limit", "16", "--cache-dir", "memory"]);
    let start = Instant::now();
    let back = std::fs::read(m.join("f")).expect("read");
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(digest(&back), digest(&data));
    let rate = data.len() as f64 / secs;
    assert!(
        (1_800_000.0..=2_200_000.0).contains(&rate),
        "read 20 MB in {secs:.2} s = {rate:.0} B/s under a 2,000,000 B/s limit"
    );
    m.unmount();
}

#[test]
fn stats_file_is_read_only_and_unlisted() {
    let vol = Volume::new("statsvol");
    let m = vol.mount("mnt");
    std::fs::write(m.join("a"), b"hello").expect("write");
    assert_eq!(std::fs::read(m.join("a")).expect("read"), b"hello");
    let text = std::fs::read_to_string(m.join(".stats")).expect(".stats");
    assert!(text.contains("tessera_ops_total{op=\"write\"}"), "{text}");
    let names: Vec<_> = std::fs::read_dir(&m.path)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("a")]);
    let err = std::fs::OpenOptions::new()
        .write(true)
        .open(m.join(".stats"))
        .expect_err("write open of .stats");
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
    let err = std::fs::create_dir(m.join(".stats")).expect_err("mkdir .stats");
    assert_eq!(err.raw_os_error(), Some(libc::EEXIST), "{err}");
    // `ls -l` reads the file's security attributes after its stat; it
    // said the file did not exist when those asked the engine.
    let ls = std::process::Command::new("ls")
        .arg("-l")
        .arg(m.join(".stats"))
        .output()
        .expect("ls");
    assert!(
        ls.status.success(),
        "{}",
        String::from_utf8_lossy(&ls.stderr)
    );
    assert!(String::from_utf8_lossy(&ls.stdout).contains(".stats"));
    m.unmount();
}

#[test]
fn bench_stats_and_objbench_commands_report() {
    let vol = Volume::new("benchvol");
    let m = vol.mount("mnt");
    let mnt = m.path.to_string_lossy().into_owned();
    let out = tessera(&[
        "bench",
        &mnt,
        "--big-file-size",
        "8M",
        "--small-file-count",
        "20",
        "-p",
        "2",
    ]);
    assert!(out.status.success(), "bench: {}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for phase in [
        "write big file",
        "read big file",
        "write small files",
        "read small files",
        "stat small files",
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(phase))
            .unwrap_or_else(|| panic!("{phase} missing:\n{text}"));
        let rate: f64 = line[phase.len()..]
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no rate in {line:?}"));
        assert!(rate > 0.0, "{line}");
    }
    assert!(
        text.contains("hit "),
        "cache figures shown for a mount:\n{text}"
    );
    assert_eq!(
        std::fs::read_dir(&m.path).expect("readdir").count(),
        0,
        "bench removes its files"
    );

    let out = tessera(&["stats", &mnt, "--interval", "0.2", "--count", "2"]);
    assert!(out.status.success(), "stats: {}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("hit%") && text.lines().count() == 3, "{text}");

    let store = format!("file://{}/objbench", vol.dir.path().display());
    let out = tessera(&[
        "objbench", &store, "-p", "2", "--count", "8", "--sizes", "64K,1M",
    ]);
    assert!(out.status.success(), "objbench: {}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for op in [
        "put 64K",
        "get 1M",
        "range get 1M",
        "list (16 objects)",
        "delete",
    ] {
        assert!(text.contains(op), "{op} missing:\n{text}");
    }
    let left = files_under(&vol.dir.path().join("objbench"));
    assert!(left.is_empty(), "objbench leaves nothing behind: {left:?}");
    m.unmount();
}

#[test]
fn import_refuses_bad_sources_and_destinations() {
    let vol = Volume::new("impvol");
    let out = tessera(&["import", "nosuch://bucket", &vol.meta_url, "/m"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot open the source"),
        "{}",
        stderr(&out)
    );
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::write(src.path().join("a.bin"), b"x").expect("object");
    let source = format!("file://{}", src.path().display());
    let ok = tessera(&["import", &source, &vol.meta_url, "/m"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(stderr(&ok).contains("1 new"), "{}", stderr(&ok));
    // The file takes the object's modification time.
    let object_mtime = std::fs::metadata(src.path().join("a.bin"))
        .and_then(|m| m.modified())
        .expect("object mtime");
    let m = vol.mount("mnt");
    let file_mtime = std::fs::metadata(m.join("m/a.bin"))
        .and_then(|m| m.modified())
        .expect("file mtime");
    let secs = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    assert_eq!(secs(file_mtime), secs(object_mtime));
    assert_eq!(std::fs::read(m.join("m/a.bin")).expect("read"), b"x");
    m.unmount();
    // A destination under a file cannot be made.
    let out = tessera(&["import", &source, &vol.meta_url, "/m/a.bin/sub"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not a directory"), "{}", stderr(&out));
}

/// `import --lazy`: a bucket of 10,000 objects in nested prefixes is
/// usable at once (the import lists nothing but its root, to prove the
/// source answers), each directory is listed the first time it is looked
/// up, not again within its relist time, and objects added, changed or
/// removed later show up after it.
#[test]
fn a_lazy_import_lists_each_directory_when_first_looked_up() {
    let vol = Volume::new("lazyvol");
    let src = tempfile::tempdir().expect("tempdir");
    for a in 0..10 {
        for b in 0..10 {
            let dir = src.path().join(format!("d{a}/s{b}"));
            std::fs::create_dir_all(&dir).expect("mkdir");
            for c in 0..100 {
                std::fs::write(dir.join(format!("f{c}")), format!("{a}-{b}-{c}")).expect("object");
            }
        }
    }
    let source = format!("file://{}", src.path().display());
    let out = tessera(&[
        "import",
        "--lazy",
        "--relist",
        "4s",
        &source,
        &vol.meta_url,
        "/repo",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = tessera(&["status", &vol.meta_url]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains(" in 1 inodes"),
        "nothing imported yet: {}",
        String::from_utf8_lossy(&status.stdout)
    );
    let m = vol.mount("mnt");
    let listings = || stat(&m.path, "tessera_lazy_listings_total");
    assert_eq!(listings(), 0.0);
    let s7 = m.join("repo/d3/s7");
    assert_eq!(std::fs::read(s7.join("f42")).expect("read"), b"3-7-42");
    let first_listing = std::time::Instant::now();
    assert_eq!(listings(), 3.0, "the path's three directories, not 111");
    assert_eq!(std::fs::read_dir(&s7).expect("ls").count(), 100);
    std::fs::metadata(s7.join("f43")).expect("stat");
    assert_eq!(listings(), 3.0, "no directory listed twice within its time");

    std::fs::write(src.path().join("d3/s7/new"), "fresh").expect("add");
    std::fs::write(src.path().join("d3/s7/f0"), "changed!").expect("change");
    std::fs::remove_file(src.path().join("d3/s7/f1")).expect("remove");
    let early = std::fs::metadata(s7.join("new")).is_ok();
    if first_listing.elapsed() < std::time::Duration::from_secs(3) {
        assert!(!early, "listed again before its time");
    }
    wait_for("the added object to show up", || {
        std::fs::read(s7.join("new")).is_ok_and(|b| b == b"fresh")
    });
    assert_eq!(std::fs::read(s7.join("f0")).expect("changed"), b"changed!");
    assert!(!s7.join("f1").exists(), "a removed object's file goes");
    let relisted = listings();
    assert!((4.0..10.0).contains(&relisted), "{relisted} listings");

    m.unmount();

    // A read-only mount lists too (the bucket's files are not its user's
    // changes), and every object is there when walked.
    std::fs::write(src.path().join("d9/s9/late"), "late").expect("add");
    let ro = vol.mount_with("ro", &["--read-only"]);
    assert_eq!(
        std::fs::read(ro.join("repo/d9/s9/late")).expect("listed by a read-only mount"),
        b"late"
    );
    assert!(
        std::fs::write(ro.join("repo/d9/s9/mine"), "x").is_err(),
        "still read-only for its users"
    );
    let files = files_under(&ro.join("repo"));
    assert_eq!(files.len(), 10_001);
    ro.unmount();
    assert_fsck_clean(&vol.meta_url, "after a lazy import");
}

#[test]
fn bad_data_path_options_are_refused_by_name() {
    let vol = Volume::new("optvol");
    let mnt = vol.dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    let mnt = mnt.to_string_lossy().into_owned();
    for (args, want) in [
        (vec!["--cache-eviction", "fifo"], "--cache-eviction"),
        (vec!["--cache-size", "12X"], "--cache-size"),
        (vec!["--free-space-ratio", "1.5"], "--free-space-ratio"),
        (vec!["--writeback", "--cache-dir", "memory"], "--writeback"),
        (vec!["--upload-limit=-3"], "--upload-limit"),
        (vec!["--open-cache=-1"], "--open-cache"),
        (vec!["--heartbeat", "0"], "--heartbeat"),
        (
            vec!["--heartbeat", "5", "--session-timeout", "6"],
            "--session-timeout (6s) must be at least twice --heartbeat",
        ),
    ] {
        let mut full = vec!["mount", &vol.meta_url, &mnt];
        full.extend(args.iter().copied());
        let out = tessera(&full);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
}

const GETS: &str = "tessera_object_request_seconds_count{method=\"get\"}";

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `tessera warmup` through a mount: a warmed directory is read with no
/// object GET; `--check` reports 100% and `--evict` 0%; pins are reported
/// and ended; a list file and the background mode work; bad input is
/// refused by name.
#[test]
fn warmup_fills_checks_evicts_and_pins_through_a_mount() {
    let vol = Volume::new("warmvol");
    let ckpt = pseudo_random(20 << 20, 11);
    let adapters: Vec<Vec<u8>> = (0..10)
        .map(|i| pseudo_random(300_000 + i * 1000, i as u64 + 100))
        .collect();
    {
        let m = vol.mount("writer");
        std::fs::create_dir_all(m.join("models/lora")).expect("mkdir");
        std::fs::write(m.join("models/ckpt.bin"), &ckpt).expect("ckpt");
        for (i, a) in adapters.iter().enumerate() {
            std::fs::write(m.join(&format!("models/lora/a{i}.bin")), a).expect("adapter");
        }
        std::os::unix::fs::symlink("ckpt.bin", m.join("models/latest")).expect("symlink");
    }
    // A node with empty caches.
    let m = vol.mount("reader");
    let models = m.join("models");
    let models = models.to_str().expect("utf-8");
    let warmup = |args: &[&str]| {
        let mut all = vec!["warmup"];
        all.extend_from_slice(args);
        let o = tessera(&all);
        assert!(o.status.success(), "warmup {args:?}: {}", stderr(&o));
        stdout(&o)
    };
    assert!(warmup(&["--check", models]).contains("(0.0%)"));
    let gets = stat(&m.path, GETS);
    let out = warmup(&["--threads", "4", models]);
    assert!(
        out.contains("warmed up 11 files") && out.contains("(100.0%)"),
        "{out}"
    );
    assert!(
        stat(&m.path, GETS) >= gets + 15.0,
        "the warm-up fetched the blocks"
    );
    let check = warmup(&["--check", models]);
    assert!(
        check.contains("(100.0%)") && check.contains("11 files"),
        "{check}"
    );
    let gets = stat(&m.path, GETS);
    assert_eq!(
        digest(&std::fs::read(m.join("models/ckpt.bin")).expect("read")),
        digest(&ckpt)
    );
    for (i, a) in adapters.iter().enumerate() {
        let back = std::fs::read(m.join(&format!("models/lora/a{i}.bin"))).expect("read");
        assert_eq!(digest(&back), digest(a));
    }
    assert_eq!(
        stat(&m.path, GETS),
        gets,
        "warmed files are read with no GET"
    );
    let out = warmup(&["--evict", models]);
    assert!(out.contains("(0.0%)"), "{out}");
    assert!(warmup(&["--check", models]).contains("(0.0%)"));

    // Pins, through a list file.
    let list = vol.dir.path().join("list.txt");
    std::fs::write(&list, format!("{}\n\n", m.join("models/lora").display())).expect("list");
    let list = list.to_str().expect("utf-8");
    let out = warmup(&["--pin", "--pin-ttl", "1h", "-f", list]);
    assert!(out.contains("warmed up 10 files"), "{out}");
    let check = warmup(&["--check", "-f", list]);
    assert!(
        check.contains("(100.0%)") && !check.contains("pinned 0 B"),
        "{check}"
    );
    let out = warmup(&["--unpin", "-f", list]);
    assert!(
        out.contains("0 B pinned") && out.contains("(100.0%)"),
        "{out}"
    );

    // In the background: the command returns, the mount fills its cache.
    warmup(&["--evict", models]);
    let out = warmup(&["--background", models]);
    assert!(out.contains("queued 11 files"), "{out}");
    wait_for("a background warm-up", || {
        warmup(&["--check", models]).contains("(100.0%)")
    });

    // Bad input.
    let o = tessera(&["warmup", vol.dir.path().to_str().expect("utf-8")]);
    assert!(
        !o.status.success() && stderr(&o).contains("is not on a Tessera mount"),
        "{}",
        stderr(&o)
    );
    let missing = m.join("models/nothing");
    let o = tessera(&["warmup", missing.to_str().expect("utf-8")]);
    assert!(
        !o.status.success() && stderr(&o).contains("models/nothing"),
        "{}",
        stderr(&o)
    );
    let o = tessera(&["warmup", "--check", "--evict", models]);
    assert!(
        !o.status.success() && stderr(&o).contains("cannot be used with"),
        "{}",
        stderr(&o)
    );
    let o = tessera(&["warmup", "--pin", "--pin-ttl", "soon", models]);
    assert!(
        !o.status.success() && stderr(&o).contains("invalid duration \"soon\""),
        "{}",
        stderr(&o)
    );
    let o = tessera(&["warmup"]);
    assert!(
        !o.status.success() && stderr(&o).contains("no paths"),
        "{}",
        stderr(&o)
    );
}

/// `warmup --local-copy`: reads of the file then bypass the mount (kernel
/// passthrough to the copy: no byte through FUSE), a writer is refused
/// with ETXTBSY while such a reader is open, a change makes the copy
/// stale (reads come through the mount again, with the new bytes), and
/// `--evict` removes the copy.
#[test]
fn local_copies_are_read_by_passthrough_until_the_file_changes() {
    const FUSE_READ: &str = "tessera_fuse_read_bytes_total";
    let vol = Volume::new("copyvol");
    let data = pseudo_random(9 << 20, 31);
    {
        let m = vol.mount("writer");
        std::fs::write(m.join("model.bin"), &data).expect("write");
    }
    let m = vol.mount("reader");
    let file = m.join("model.bin");
    let out = tessera(&["warmup", "--local-copy", file.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("1 local copies"), "{}", stdout(&out));
    let copies = vol.cache_dir("reader").join(vol.uuid()).join("files");
    assert_eq!(files_under(&copies).len(), 1);

    let mut reader = std::fs::File::open(&file).expect("open");
    let mut back = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut back).expect("read");
    assert_eq!(digest(&back), digest(&data));
    assert_eq!(
        stat(&m.path, FUSE_READ),
        0.0,
        "read by passthrough, not through the mount"
    );
    let busy = std::fs::OpenOptions::new().write(true).open(&file);
    assert_eq!(
        busy.expect_err("a writer while a passthrough reader is open")
            .raw_os_error(),
        Some(libc::ETXTBSY)
    );
    drop(reader);

    // The kernel sends a reader's release after close() has returned: a
    // writer right behind it must not be refused (a CI run saw ETXTBSY).
    for round in 0..100 {
        let mut byte = [0u8; 1];
        let mut reader = std::fs::File::open(&file).expect("open");
        std::io::Read::read_exact(&mut reader, &mut byte).expect("read");
        drop(reader);
        let writer = std::fs::OpenOptions::new().write(true).open(&file);
        assert!(writer.is_ok(), "round {round}: {writer:?}");
    }

    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"CHANGED"))
        .expect("write once the readers are gone");
    let back = std::fs::read(&file).expect("read the changed file");
    assert_eq!(&back[..7], b"CHANGED");
    assert_eq!(digest(&back[7..]), digest(&data[7..]));
    assert!(stat(&m.path, FUSE_READ) > 0.0, "a stale copy is not used");

    let out = tessera(&["warmup", "--evict", file.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(files_under(&copies).is_empty(), "evict removes the copy");

    // Copies count against the cache quota: one larger than the whole
    // quota is refused by name, before a byte of it is written.
    let small = vol.mount_with("small", &["--cache-size", "8M"]);
    let file = small.join("model.bin");
    let out = tessera(&["warmup", "--local-copy", file.to_str().expect("utf-8")]);
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        !out.status.success() && said.contains("--cache-size"),
        "{said}"
    );
    assert!(files_under(&vol.cache_dir("small").join(vol.uuid()).join("files")).is_empty());
    drop(small);

    // A quota with room for one copy: refreshing the copy of a changed
    // file works, the stale copy giving way (dropped when an open finds it
    // stale, or discounted by the quota check when no open has yet).
    let tight = vol.mount_with("tight", &["--cache-size", "16M"]);
    let file = tight.join("model.bin");
    let copy = || tessera(&["warmup", "--local-copy", file.to_str().expect("utf-8")]);
    let out = copy();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"AGAIN"))
        .expect("change the file");
    let out = copy();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(
        files_under(&vol.cache_dir("tight").join(vol.uuid()).join("files")).len(),
        1,
        "the fresh copy replaced the stale one"
    );
}

/// `--prefetch-on-open`: opening a file whose name matches reads it whole
/// into the cache in the background, though the reader took one byte; a
/// file whose name does not match is not.
#[test]
fn prefetch_on_open_reads_matching_files_whole() {
    use std::io::Read;
    let vol = Volume::new("prefvol");
    {
        let m = vol.mount("writer");
        std::fs::write(m.join("model.safetensors"), pseudo_random(24 << 20, 3)).expect("model");
        std::fs::write(m.join("data.bin"), pseudo_random(48 << 20, 4)).expect("data");
        m.unmount();
    }
    let m = vol.mount_with("reader", &["--prefetch-on-open", "*.safetensors"]);
    let check = |name: &str| {
        let out = tessera(&["warmup", "--check", m.join(name).to_str().expect("utf-8")]);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    for name in ["model.safetensors", "data.bin"] {
        let mut one = [0u8; 1];
        std::fs::File::open(m.join(name))
            .expect("open")
            .read_exact(&mut one)
            .expect("read");
    }
    wait_for("the model prefetched", || {
        check("model.safetensors").contains("(100.0%)")
    });
    let data = check("data.bin");
    assert!(!data.contains("(100.0%)"), "{data}");
    m.unmount();
}

/// `--prefetch-on-open` and a listing: small files the pattern names (a
/// block or less, adapters) are fetched together when their directory is
/// listed, before any is opened, so a loader walking them pays the link's
/// latency about once, not once per file; files it does not name are not.
#[test]
fn a_listing_prefetches_the_small_files_the_pattern_names() {
    let vol = Volume::new("listpref");
    let adapters: Vec<Vec<u8>> = (0..20).map(|i| pseudo_random(100 << 10, 10 + i)).collect();
    {
        let m = vol.mount("writer");
        std::fs::create_dir(m.join("adapters")).expect("mkdir");
        for (i, data) in adapters.iter().enumerate() {
            std::fs::write(m.join(&format!("adapters/lora-{i}.safetensors")), data).expect("write");
        }
        std::fs::write(m.join("adapters/notes.txt"), b"not an adapter").expect("write");
        m.unmount();
    }
    let m = vol.mount_with("reader", &["--prefetch-on-open", "*.safetensors"]);
    let gets = || {
        stat(
            &m.path,
            "tessera_object_request_seconds_count{method=\"get\"}",
        )
    };
    let before = gets();
    let names = std::fs::read_dir(m.join("adapters")).expect("list").count();
    assert_eq!(names, 21);
    wait_for("the adapters fetched on listing", || {
        gets() - before >= 20.0
    });
    std::thread::sleep(Duration::from_millis(300));
    let listed = gets() - before;
    assert_eq!(listed, 20.0, "the 20 adapters, not the notes");
    for (i, data) in adapters.iter().enumerate() {
        let got = std::fs::read(m.join(&format!("adapters/lora-{i}.safetensors"))).expect("read");
        assert!(&got == data, "adapter {i} intact");
    }
    assert_eq!(
        gets() - before,
        20.0,
        "the loads found every adapter fetched"
    );
    assert_eq!(
        std::fs::read(m.join("adapters/notes.txt")).expect("read"),
        b"not an adapter"
    );
    assert_eq!(gets() - before, 21.0, "the notes fetched when read");
    m.unmount();
}
