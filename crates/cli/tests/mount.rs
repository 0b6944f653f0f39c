//! Integration tests that mount real volumes through the kernel.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: it asserts

mod common;

use std::ffi::CString;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::{digest, pseudo_random, Volume};

fn cpath(p: &std::path::Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).expect("no NUL in path")
}

#[test]
fn posix_basics_through_the_kernel() {
    let vol = Volume::new("basics");
    let m = vol.mount("mnt");
    let a = m.join("a.txt");
    fs::write(&a, b"hello tessera").expect("write");
    assert_eq!(fs::read(&a).expect("read"), b"hello tessera");

    // append, overwrite in the middle, truncate both ways
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(&a)
        .expect("open append");
    f.write_all(b"!").expect("append");
    drop(f);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(&a)
        .expect("open rw");
    f.seek(SeekFrom::Start(6)).expect("seek");
    f.write_all(b"TESS").expect("overwrite");
    f.set_len(20).expect("grow");
    drop(f);
    let got = fs::read(&a).expect("read");
    assert_eq!(&got[..14], b"hello TESSera!");
    assert_eq!(&got[14..], &[0u8; 6]);
    fs::OpenOptions::new()
        .write(true)
        .open(&a)
        .expect("open")
        .set_len(5)
        .expect("shrink");
    assert_eq!(fs::read(&a).expect("read"), b"hello");

    // rename, hard link, symlink
    fs::create_dir(m.join("dir")).expect("mkdir");
    fs::rename(&a, m.join("dir/b.txt")).expect("rename");
    assert!(!a.exists());
    fs::hard_link(m.join("dir/b.txt"), m.join("link")).expect("link");
    assert_eq!(fs::metadata(m.join("link")).expect("stat").nlink(), 2);
    std::os::unix::fs::symlink("dir/b.txt", m.join("sym")).expect("symlink");
    assert_eq!(
        fs::read_link(m.join("sym")).expect("readlink").to_str(),
        Some("dir/b.txt")
    );
    assert_eq!(fs::read(m.join("sym")).expect("read via symlink"), b"hello");
    fs::set_permissions(m.join("link"), fs::Permissions::from_mode(0o600)).expect("chmod");
    assert_eq!(
        fs::metadata(m.join("dir/b.txt")).expect("stat").mode() & 0o777,
        0o600
    );
    let mut names: Vec<_> = fs::read_dir(m.join("dir"))
        .expect("readdir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    assert_eq!(names, vec!["b.txt"]);
    assert_eq!(
        fs::remove_dir(m.join("dir"))
            .expect_err("not empty")
            .raw_os_error(),
        Some(libc::ENOTEMPTY)
    );

    // extended attributes
    let p = cpath(&m.join("link"));
    let (name, value) = (c"user.model", b"llama");
    // SAFETY: valid C strings and buffers for the duration of each call.
    unsafe {
        assert_eq!(
            libc::setxattr(
                p.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0
            ),
            0
        );
        let mut buf = [0u8; 64];
        let n = libc::getxattr(
            p.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        );
        assert_eq!(&buf[..n as usize], value);
        let n = libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len());
        assert_eq!(&buf[..n as usize], b"user.model\0");
        assert_eq!(libc::removexattr(p.as_ptr(), name.as_ptr()), 0);
        assert_eq!(
            libc::getxattr(
                p.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len()
            ),
            -1
        );
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ENODATA)
        );
    }

    // flock: exclusive between two open files
    let f1 = fs::File::open(m.join("link")).expect("open 1");
    let f2 = fs::File::open(m.join("link")).expect("open 2");
    // SAFETY: flock on valid descriptors.
    unsafe {
        assert_eq!(
            libc::flock(f1.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB),
            0
        );
        assert_eq!(
            libc::flock(f2.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB),
            -1
        );
        assert_eq!(libc::flock(f1.as_raw_fd(), libc::LOCK_UN), 0);
        assert_eq!(
            libc::flock(f2.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB),
            0
        );
    }
    drop((f1, f2));

    // Open file description locks end when the description is closed: the
    // kernel sends no unlock for them, the release of the handle is it.
    let ofd_lock = |f: &fs::File| {
        // SAFETY: an all-zero flock is a valid value; fcntl gets a valid
        // descriptor and a pointer to it.
        unsafe {
            let mut fl: libc::flock = std::mem::zeroed();
            fl.l_type = libc::F_WRLCK as i16;
            fl.l_whence = libc::SEEK_SET as i16;
            libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &fl)
        }
    };
    let holder = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.join("link"))
        .expect("open holder");
    let other = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.join("link"))
        .expect("open other");
    assert_eq!(ofd_lock(&holder), 0);
    assert_eq!(ofd_lock(&other), -1, "held by the other description");
    drop(holder);
    // The release reaches the mount just after close() returns.
    let mut taken = false;
    for _ in 0..100 {
        if ofd_lock(&other) == 0 {
            taken = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(taken, "the closed description's lock is gone");
    drop(other);

    // unlink while open keeps the data readable
    let mut f = fs::File::open(m.join("link")).expect("open");
    fs::remove_file(m.join("link")).expect("unlink");
    fs::remove_file(m.join("dir/b.txt")).expect("unlink");
    let mut s = String::new();
    f.read_to_string(&mut s).expect("read unlinked");
    assert_eq!(s, "hello");
    drop(f);
    fs::remove_dir(m.join("dir")).expect("rmdir");
    let st = nix_statvfs(&m.path);
    assert!(st > 0, "statfs reports capacity");
    m.unmount();
}

fn nix_statvfs(p: &std::path::Path) -> u64 {
    let c = cpath(p);
    // SAFETY: zeroed statvfs is a valid out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-parameter.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_blocks
}

#[test]
fn hundred_mib_survives_remount() {
    let vol = Volume::new("bigfile");
    let data = pseudo_random(100 << 20, 42);
    let want = digest(&data);
    {
        let m = vol.mount("mnt");
        let mut f = fs::File::create(m.join("model.bin")).expect("create");
        for part in data.chunks(1 << 20) {
            f.write_all(part).expect("write");
        }
        f.sync_all().expect("fsync");
        drop(f);
        m.unmount();
    }
    let m = vol.mount("mnt");
    let back = fs::read(m.join("model.bin")).expect("read back");
    assert_eq!(back.len(), data.len());
    assert_eq!(digest(&back), want, "identical bytes after remount");
    let status = common::tessera(&["status", &vol.meta_url]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("sessions    1"));
    let info = common::tessera(&["info", &m.join("model.bin").to_string_lossy()]);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains("size    104857600"), "{text}");
    assert!(text.contains("bigfile/chunks/"), "{text}");
}

#[test]
fn two_mounts_of_one_sqlite_volume() {
    let vol = Volume::new("shared");
    let a = vol.mount_with(
        "a",
        &[
            "--attr-cache",
            "0",
            "--entry-cache",
            "0",
            "--dir-entry-cache",
            "0",
        ],
    );
    let b = vol.mount_with(
        "b",
        &[
            "--attr-cache",
            "0",
            "--entry-cache",
            "0",
            "--dir-entry-cache",
            "0",
        ],
    );
    let data = pseudo_random(5 << 20, 7);
    fs::write(a.join("weights.bin"), &data).expect("write in a");
    assert_eq!(
        digest(&fs::read(b.join("weights.bin")).expect("read in b")),
        digest(&data)
    );
    fs::create_dir(b.join("from-b")).expect("mkdir in b");
    assert!(a.join("from-b").is_dir(), "a sees b's directory");
    let status = common::tessera(&["status", &vol.meta_url]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("sessions    2"));
}

/// `--negative-entry-cache`: a name found absent is not asked for again
/// within the time (the mount's lookups counted; a mount without the flag
/// asks every time), this mount's own create over the kept miss shows at
/// once, and another mount's create shows once the time is up.
#[test]
fn negative_entries_are_kept_for_their_time() {
    let vol = Volume::new("negative");
    // Positive entries long, so reading the counters costs no lookup.
    let a = vol.mount_with("a", &["--negative-entry-cache", "3", "--entry-cache", "60"]);
    let b = vol.mount_with("b", &["--entry-cache", "60"]);
    let lookups = |m: &common::Mount| common::stat(&m.path, "tessera_ops_total{op=\"lookup\"}");
    lookups(&a);
    lookups(&b);
    let missed = |m: &common::Mount, name: &str| {
        let before = lookups(m);
        for _ in 0..5 {
            assert!(!m.join(name).exists(), "{name} is absent");
        }
        lookups(m) - before
    };
    assert_eq!(
        missed(&b, "absent"),
        5.0,
        "without the flag every miss asks"
    );
    assert_eq!(missed(&a, "absent"), 1.0, "with it the first miss is kept");
    // This mount's own create over its kept miss shows at once.
    fs::write(a.join("absent"), b"mine").expect("create over a kept miss");
    assert_eq!(fs::read(a.join("absent")).expect("read"), b"mine");
    // Another mount's create: once the time is up.
    assert!(!a.join("theirs").exists());
    let missed_at = std::time::Instant::now();
    fs::write(b.join("theirs"), b"b's").expect("write in b");
    let unseen = !a.join("theirs").exists();
    if missed_at.elapsed() < std::time::Duration::from_secs(2) {
        assert!(unseen, "kept as absent within the time");
    }
    common::wait_for("a to see b's file once its miss expired", || {
        a.join("theirs").exists()
    });
    assert!(
        missed_at.elapsed() >= std::time::Duration::from_millis(2500),
        "not before the time was up: {:?}",
        missed_at.elapsed()
    );
    assert_eq!(fs::read(a.join("theirs")).expect("read"), b"b's");
}

#[test]
fn subdir_and_read_only_mounts() {
    let vol = Volume::new("subdirs");
    {
        let m = vol.mount("mnt");
        fs::create_dir_all(m.join("models/llama")).expect("mkdir");
        fs::write(m.join("models/llama/config.json"), b"{}").expect("write");
    }
    let ro = vol.mount_with("ro", &["--subdir", "models", "--read-only"]);
    assert_eq!(fs::read(ro.join("llama/config.json")).expect("read"), b"{}");
    let err = fs::write(ro.join("new"), b"x").expect_err("read-only");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
}

/// A file handle (name_to_handle_at, what NFS export and some backup
/// tools keep) opens its file after the kernel has forgotten the inode:
/// here across a remount, so nothing of it is cached. A handle of a
/// removed file is stale.
#[test]
fn file_handles_outlive_the_kernels_inode_cache() {
    const MAX_HANDLE: usize = 128;
    #[repr(C)]
    struct Handle {
        head: libc::file_handle,
        bytes: [u8; MAX_HANDLE],
    }
    let handle_of = |path: &std::path::Path| {
        let mut h = Handle {
            head: libc::file_handle {
                handle_bytes: MAX_HANDLE as u32,
                handle_type: 0,
                f_handle: [],
            },
            bytes: [0; MAX_HANDLE],
        };
        let mut mount_id = 0;
        let p = cpath(path);
        // SAFETY: `h` has room for MAX_HANDLE bytes after its header, as
        // handle_bytes says; the path is a valid C string.
        let r = unsafe {
            libc::name_to_handle_at(libc::AT_FDCWD, p.as_ptr(), &mut h.head, &mut mount_id, 0)
        };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        h
    };
    let open_by = |mount: &std::path::Path, h: &mut Handle| -> std::io::Result<fs::File> {
        let dir = fs::File::open(mount)?;
        // SAFETY: a valid directory descriptor and a handle filled in by
        // name_to_handle_at.
        let fd = unsafe { libc::open_by_handle_at(dir.as_raw_fd(), &mut h.head, libc::O_RDONLY) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a descriptor just opened and owned by nothing else.
        Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
    };
    let vol = Volume::new("handles");
    let (mut kept, mut removed) = {
        let m = vol.mount("mnt");
        fs::create_dir(m.join("d")).expect("mkdir");
        fs::write(m.join("d/kept"), b"still here").expect("write");
        fs::write(m.join("d/removed"), b"gone").expect("write");
        let handles = (
            handle_of(&m.join("d/kept")),
            handle_of(&m.join("d/removed")),
        );
        fs::remove_file(m.join("d/removed")).expect("unlink");
        m.unmount();
        handles
    };
    let m = vol.mount("mnt");
    let mut f = open_by(&m.path, &mut kept).expect("open by handle after remount");
    let mut text = String::new();
    f.read_to_string(&mut text).expect("read");
    assert_eq!(text, "still here");
    let stale = open_by(&m.path, &mut removed).expect_err("a removed file's handle");
    assert_eq!(stale.raw_os_error(), Some(libc::ESTALE));
}

/// Opposite options do not conflict: as with mount(8), the later one wins.
#[test]
fn the_later_of_two_opposite_options_wins() {
    let vol = Volume::new("options");
    let m = vol.mount_with("mnt", &["-o", "suid,dev", "-o", "nosuid"]);
    let mounts = fs::read_to_string("/proc/self/mounts").expect("mounts");
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(m.path.to_str().expect("utf-8")))
        .expect("mounted");
    let flags = line.split(' ').nth(3).expect("options");
    assert!(flags.split(',').any(|f| f == "nosuid"), "{line}");
    assert!(!flags.split(',').any(|f| f == "nodev"), "{line}");
}

/// A plain or lazy umount(2) (what umount(8), systemd and scripts do) and a
/// new mount of the same path right after it: the old process's exit must
/// not take the new mount down (fuser's clean-up unmounted the path again;
/// the lazy rounds, where the old mount ends after the new one is up,
/// failed before the fix).
#[test]
fn a_mount_right_after_a_plain_umount_stays_mounted() {
    let vol = Volume::new("remount");
    let dir = vol.dir.path().join("mnt");
    fs::create_dir(&dir).expect("mkdir");
    let start = |extra: &[&str]| {
        std::process::Command::new(common::bin())
            .args(["mount", &vol.meta_url, dir.to_str().expect("utf-8")])
            .args(["--cache-dir", "memory", "--metrics", "none"])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn mount")
    };
    let wait_mounted = || {
        for _ in 0..500 {
            if common::is_mounted(&dir) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("mount did not come up");
    };
    let mut old = start(&[]);
    wait_mounted();
    fs::write(dir.join("f"), b"kept").expect("write");
    for round in 0..4 {
        let c = cpath(&dir);
        // The old mount ends after the new one is up: detached while a
        // file of it is open (lazy), it lives until that file is closed.
        let open = (round % 2 == 1).then(|| fs::File::open(dir.join("f")).expect("open"));
        let flags = if open.is_some() { libc::MNT_DETACH } else { 0 };
        // SAFETY: umount2(2) of a valid C path.
        let unmounted = unsafe { libc::umount2(c.as_ptr(), flags) };
        assert_eq!(unmounted, 0, "round {round}");
        let new = start(&[]);
        wait_mounted();
        drop(open);
        let status = old.wait().expect("the old mount process ends");
        assert!(status.success(), "round {round}: {status}");
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(
            common::is_mounted(&dir),
            "round {round}: the new mount was taken down"
        );
        assert_eq!(fs::read(dir.join("f")).expect("read"), b"kept");
        old = new;
    }
    let out = common::tessera(&["umount", dir.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let _ = old.wait();
}

/// `--backup-meta`: a mount writes compressed metadata dumps into the
/// volume's bucket, `status` names the last one, and `tessera load
/// --from-bucket` rebuilds a lost metadata engine from the bucket alone:
/// the rebuilt volume mounts with the same tree and bytes.
#[test]
fn metadata_backups_in_the_bucket_rebuild_a_lost_engine() {
    let vol = Volume::new("backed");
    let m = vol.mount_with("m", &["--backup-meta", "1s", "--heartbeat", "0.5"]);
    fs::create_dir_all(m.join("models/lora")).unwrap();
    let data = pseudo_random(3 << 20, 77);
    fs::write(m.join("models/lora/adapter.bin"), &data).unwrap();
    fs::write(m.join("models/README"), b"kept\n").unwrap();
    let backups_dir = vol.dir.path().join("objects/backed/meta");
    let backups = || -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&backups_dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    // A backup taken after the writes: two seconds later, whatever was due.
    let written = std::time::Instant::now();
    common::wait_for("a metadata backup after the writes", || {
        written.elapsed() > std::time::Duration::from_secs(2) && !backups().is_empty()
    });
    let before = backups();
    common::wait_for("another backup", || backups().last() != before.last());
    assert!(backups()
        .iter()
        .all(|n| n.starts_with("dump-") && n.ends_with(".json.zst")));
    let status = common::tessera(&["status", &vol.meta_url]);
    let text = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(text.contains("meta backup backed/meta/dump-"), "{text}");
    m.unmount();

    // The engine is lost; the bucket is all that is left.
    let rebuilt = tempfile::tempdir().unwrap();
    let new_meta = format!("sqlite://{}/meta.db", rebuilt.path().display());
    let out = common::tessera(&[
        "load",
        &new_meta,
        "--from-bucket",
        &vol.storage,
        "--volume",
        "backed",
    ]);
    assert!(out.status.success(), "load: {}", common::stderr(&out));
    let mnt = rebuilt.path().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let cache = rebuilt.path().join("cache");
    let again = common::Mount::start(
        &new_meta,
        &mnt,
        &["--cache-dir", cache.to_str().unwrap(), "--metrics", "none"],
    );
    assert_eq!(
        fs::read(again.join("models/lora/adapter.bin")).unwrap(),
        data
    );
    assert_eq!(fs::read(again.join("models/README")).unwrap(), b"kept\n");
    again.unmount();

    // Bad input: a volume with no backups, a backup name that is not one.
    let out = common::tessera(&[
        "load",
        &format!("sqlite://{}/other.db", rebuilt.path().display()),
        "--from-bucket",
        &vol.storage,
        "--volume",
        "nosuch",
    ]);
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("no metadata backup of volume \"nosuch\""),
        "{}",
        common::stderr(&out)
    );
    assert!(
        !rebuilt.path().join("other.db").exists(),
        "a refused load leaves no database behind"
    );
    let out = common::tessera(&[
        "load",
        &format!("sqlite://{}/other.db", rebuilt.path().display()),
        "--from-bucket",
        &vol.storage,
        "--volume",
        "backed",
        "--backup",
        "yesterday",
    ]);
    assert!(common::stderr(&out).contains("is not a backup name or time stamp"));
}

/// `tessera config`: shows the settings, changes capacity (df shows it on
/// the next mount) and the storage URL (only to a place that holds the
/// volume), and refuses what is fixed at format by name.
#[test]
fn config_changes_what_may_change_and_refuses_the_rest() {
    let vol = Volume::new("configured");
    let m = vol.mount("m");
    fs::write(m.join("kept.bin"), pseudo_random(300_000, 5)).unwrap();
    m.unmount();
    let config = |args: &[&str]| {
        let mut all = vec!["config", vol.meta_url.as_str()];
        all.extend_from_slice(args);
        common::tessera(&all)
    };
    let out = config(&[]);
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && shown.contains("capacity    unlimited"),
        "{shown}"
    );
    let out = config(&["--capacity", "10"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("capacity: 0 -> 10737418240"));
    let out = config(&["--upload-limit", "80", "--download-limit", "1.5"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains("upload limit kbit/s: 0 -> 80000")
            && said.contains("download limit kbit/s: 0 -> 1500"),
        "{said} {}",
        common::stderr(&out)
    );
    let shown = String::from_utf8_lossy(&config(&[]).stdout).into_owned();
    assert!(shown.contains("upload      80 Mbit/s"), "{shown}");
    assert!(config(&["--upload-limit", "0", "--download-limit", "0"])
        .status
        .success());
    for (args, says) in [
        (
            &["--block-size", "1M"][..],
            "--block-size cannot change after format",
        ),
        (
            &["--compress", "zstd"][..],
            "--compress cannot change after format",
        ),
        (
            &["--trash-days", "5000"][..],
            "--trash-days 5000 is out of range",
        ),
        (
            &["--upload-limit=0.001"][..],
            "--upload-limit 0.001 is out of range",
        ),
        (&["--capacity=-5"][..], "--capacity"),
    ] {
        let out = config(args);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(
            common::stderr(&out).contains(says),
            "{args:?}: {}",
            common::stderr(&out)
        );
    }
    // Another place: refused while it does not hold the volume.
    let moved = vol.dir.path().join("moved");
    fs::create_dir_all(&moved).unwrap();
    let moved_url = format!("file://{}", moved.display());
    let out = config(&["--storage", &moved_url]);
    assert!(
        common::stderr(&out).contains("does not hold volume \"configured\""),
        "{}",
        common::stderr(&out)
    );
    let copied = std::process::Command::new("cp")
        .args(["-a", &format!("{}/objects/.", vol.dir.path().display())])
        .arg(&moved)
        .status()
        .unwrap();
    assert!(copied.success());
    let out = config(&["--storage", &moved_url]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    fs::remove_dir_all(vol.dir.path().join("objects")).unwrap();
    let m = vol.mount("m");
    assert_eq!(
        fs::read(m.join("kept.bin")).unwrap(),
        pseudo_random(300_000, 5)
    );
    let path = cpath(&m.path);
    // SAFETY: statvfs is plain data; all zeroes is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid path and a statvfs to fill.
    assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut st) }, 0);
    assert_eq!(
        st.f_blocks as u64 * st.f_frsize as u64,
        10 << 30,
        "df shows the new capacity"
    );
    m.unmount();
}

/// `tessera clone`: a directory tree copied as metadata only (no object
/// written), equal in bytes, links and xattrs; both sides then change
/// independently, and the copy's blocks outlive the deleted source.
#[test]
fn clone_shares_blocks_and_both_sides_change_independently() {
    let vol = Volume::new("cloned");
    let m = vol.mount_with("m", &["--heartbeat", "0.5"]);
    fs::create_dir_all(m.join("models/sub")).unwrap();
    let ckpt = pseudo_random(5 << 20, 11);
    fs::write(m.join("models/ckpt.bin"), &ckpt).unwrap();
    fs::write(m.join("models/sub/a.txt"), b"adapter config\n").unwrap();
    std::os::unix::fs::symlink("ckpt.bin", m.join("models/link")).unwrap();
    let a_txt = cpath(&m.join("models/sub/a.txt"));
    // SAFETY: valid C strings and a value buffer of the given length.
    let set = unsafe {
        libc::setxattr(
            a_txt.as_ptr(),
            c"user.origin".as_ptr(),
            b"hub".as_ptr().cast(),
            3,
            0,
        )
    };
    assert_eq!(set, 0);
    let objects = || common::files_under(&vol.dir.path().join("objects/cloned/chunks")).len();
    let before = objects();
    let out = common::tessera(&[
        "clone",
        m.join("models").to_str().unwrap(),
        m.join("models-copy").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "clone: {}", common::stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("5 inodes"), "{said}");
    assert_eq!(objects(), before, "a clone writes no object");
    assert_eq!(fs::read(m.join("models-copy/ckpt.bin")).unwrap(), ckpt);
    assert_eq!(
        fs::read(m.join("models-copy/sub/a.txt")).unwrap(),
        b"adapter config\n"
    );
    assert_eq!(
        fs::read_link(m.join("models-copy/link")).unwrap(),
        std::path::PathBuf::from("ckpt.bin")
    );
    let copy_txt = cpath(&m.join("models-copy/sub/a.txt"));
    let mut value = [0u8; 16];
    // SAFETY: valid C strings and a buffer of the given length.
    let n = unsafe {
        libc::getxattr(
            copy_txt.as_ptr(),
            c"user.origin".as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    assert_eq!(&value[..n as usize], b"hub");

    // Both sides change independently.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(m.join("models-copy/ckpt.bin"))
        .unwrap();
    f.write_all(b"changed in the copy").unwrap();
    drop(f);
    fs::write(m.join("models/sub/a.txt"), b"changed in the source\n").unwrap();
    assert_eq!(fs::read(m.join("models/ckpt.bin")).unwrap(), ckpt);
    assert_eq!(
        fs::read(m.join("models-copy/sub/a.txt")).unwrap(),
        b"adapter config\n"
    );
    let mut expected = ckpt.clone();
    expected[..19].copy_from_slice(b"changed in the copy");

    // The source goes; its shared blocks stay for the copy.
    fs::remove_dir_all(m.join("models")).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(4));
    m.unmount();
    let m = vol.mount("m");
    assert_eq!(fs::read(m.join("models-copy/ckpt.bin")).unwrap(), expected);

    // Bad input, each with its reason.
    let fails = |src: &std::path::Path, dst: &std::path::Path, says: &str| {
        let out = common::tessera(&["clone", src.to_str().unwrap(), dst.to_str().unwrap()]);
        assert!(!out.status.success(), "{src:?} -> {dst:?} accepted");
        assert!(
            common::stderr(&out).contains(says),
            "{}",
            common::stderr(&out)
        );
    };
    fails(&m.join("models-copy"), &m.join("models-copy/sub"), "exists");
    fails(
        &m.join("models-copy"),
        &m.join("models-copy/sub/inner"),
        "Invalid argument",
    );
    let elsewhere = tempfile::tempdir().unwrap();
    fails(
        &m.join("models-copy"),
        &elsewhere.path().join("x"),
        "different file systems",
    );
    fails(&m.join("missing"), &m.join("y"), "cannot stat");
    m.unmount();
    common::assert_fsck_clean(&vol.meta_url, "after clones");
}

/// `tessera rmr`: a tree of 2,000 files goes in one request, the space
/// is released, open files stay readable until closed, and a path off the
/// mount or a missing one is refused with its reason.
#[test]
fn rmr_removes_a_tree_in_the_engine() {
    let vol = Volume::new("rmrvol");
    let m = vol.mount_with("m", &["--heartbeat", "0.5"]);
    for d in 0..20 {
        let dir = m.join(&format!("run/epoch{d}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            fs::write(dir.join(format!("shard{f}")), format!("{d}/{f}")).unwrap();
        }
    }
    fs::write(m.join("run/big.bin"), pseudo_random(2 << 20, 3)).unwrap();
    let mut held = fs::File::open(m.join("run/big.bin")).unwrap();
    let out = common::tessera(&["rmr", m.join("run").to_str().unwrap()]);
    assert!(out.status.success(), "rmr: {}", common::stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains("removed 2001 files and 21 directories"),
        "{said}"
    );
    assert!(!m.join("run").exists());
    let mut back = Vec::new();
    held.read_to_end(&mut back).unwrap();
    assert_eq!(
        back,
        pseudo_random(2 << 20, 3),
        "an open file stays readable"
    );
    drop(held);
    let out = common::tessera(&["rmr", m.join("run").to_str().unwrap()]);
    assert!(
        common::stderr(&out).contains("cannot stat"),
        "{}",
        common::stderr(&out)
    );
    let elsewhere = tempfile::tempdir().unwrap();
    fs::write(elsewhere.path().join("x"), b"x").unwrap();
    let out = common::tessera(&["rmr", elsewhere.path().join("x").to_str().unwrap()]);
    assert!(
        common::stderr(&out).contains("is not on a Tessera mount"),
        "{}",
        common::stderr(&out)
    );
    assert!(elsewhere.path().join("x").exists());
    m.unmount();
    common::assert_fsck_clean(&vol.meta_url, "after rmr");
}

/// `tessera destroy`: refused with a wrong UUID or while mounted; with the
/// right one every object of the volume and all its metadata go, and
/// another volume in the same bucket is untouched.
#[test]
fn destroy_removes_a_volume_and_only_it() {
    let vol = Volume::new("doomed");
    let storage = vol.storage.clone();
    let other_meta = format!("sqlite://{}/other.db", vol.dir.path().display());
    let out = common::tessera(&["format", &other_meta, "neighbour", "--storage", &storage]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let m = vol.mount("m");
    fs::write(m.join("weights.bin"), pseudo_random(3 << 20, 9)).unwrap();
    let uuid = vol.uuid();
    let out = common::tessera(&["destroy", &vol.meta_url, &uuid, "--yes"]);
    assert!(
        common::stderr(&out).contains("is mounted"),
        "{}",
        common::stderr(&out)
    );
    m.unmount();
    let out = common::tessera(&[
        "destroy",
        &vol.meta_url,
        "00000000-0000-0000-0000-000000000000",
        "--yes",
    ]);
    assert!(
        common::stderr(&out)
            .contains("not 00000000-0000-0000-0000-000000000000: nothing destroyed"),
        "{}",
        common::stderr(&out)
    );
    let objects = vol.dir.path().join("objects");
    assert!(!common::files_under(&objects.join("doomed")).is_empty());
    let out = common::tessera(&["destroy", &vol.meta_url, &uuid, "--yes"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(common::files_under(&objects.join("doomed")).is_empty());
    assert!(!common::files_under(&objects.join("neighbour")).is_empty());
    let out = common::tessera(&["status", &vol.meta_url]);
    assert!(
        common::stderr(&out).contains("no volume is formatted"),
        "{}",
        common::stderr(&out)
    );
    let out = common::tessera(&["status", &other_meta]);
    assert!(
        out.status.success(),
        "the neighbour lives: {}",
        common::stderr(&out)
    );
}

/// The trash (`--trash-days`): a deleted file and a file renamed over go
/// to `.trash/{hour}/`, hidden from the root's listing and readable there;
/// `tessera restore` puts them back byte-identical; a mount purges hours
/// past their time (a short test setting), and `fsck` agrees throughout.
#[test]
fn trash_keeps_deleted_files_until_restored_or_purged() {
    let vol = Volume::with_storage("trashed", None, &["--trash-days", "1"]);
    let m = vol.mount("m");
    fs::create_dir_all(m.join("ckpt")).unwrap();
    let data = pseudo_random(2 << 20, 21);
    fs::write(m.join("ckpt/step-100.bin"), &data).unwrap();
    fs::write(m.join("ckpt/latest"), b"step-100").unwrap();
    fs::write(m.join("ckpt/latest.tmp"), b"step-200").unwrap();
    fs::remove_file(m.join("ckpt/step-100.bin")).unwrap();
    fs::rename(m.join("ckpt/latest.tmp"), m.join("ckpt/latest")).unwrap();
    let root: Vec<String> = fs::read_dir(&m.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!root.contains(&".trash".to_string()), "{root:?}");
    let hours: Vec<_> = fs::read_dir(m.join(".trash"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(hours.len(), 1, "{hours:?}");
    let mut trashed: Vec<String> = fs::read_dir(&hours[0])
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    // The old `latest` (renamed over) first, then the deleted checkpoint.
    trashed.sort_by_key(|n| !n.ends_with("-latest"));
    assert_eq!(trashed.len(), 2, "{trashed:?}");
    assert!(
        trashed[0].ends_with("-latest") && trashed[1].ends_with("-step-100.bin"),
        "{trashed:?}"
    );
    assert_eq!(fs::read(hours[0].join(&trashed[1])).unwrap(), data);
    // Nobody writes into the trash through the kernel.
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "touch"])
        .arg(hours[0].join("new"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = common::tessera(&["restore", hours[0].join(&trashed[1]).to_str().unwrap()]);
    assert!(out.status.success(), "restore: {}", common::stderr(&out));
    assert_eq!(fs::read(m.join("ckpt/step-100.bin")).unwrap(), data);
    // Restoring over a live name is refused.
    let out = common::tessera(&["restore", hours[0].join(&trashed[0]).to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("File exists"),
        "{}",
        common::stderr(&out)
    );
    let out = common::tessera(&["restore", m.join("ckpt/latest").to_str().unwrap()]);
    assert!(
        common::stderr(&out).contains("is not in a trash"),
        "{}",
        common::stderr(&out)
    );
    // Data a truncate frees is kept for the trash days too, and gc knows it.
    let objects = || common::files_under(&vol.dir.path().join("objects/trashed/chunks")).len();
    fs::write(m.join("ckpt/cut.bin"), pseudo_random(3 << 20, 22)).unwrap();
    let before = objects();
    fs::OpenOptions::new()
        .write(true)
        .open(m.join("ckpt/cut.bin"))
        .unwrap()
        .set_len(0)
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(
        objects(),
        before,
        "a truncate in a volume with a trash deletes no block"
    );
    m.unmount();
    common::assert_fsck_clean(&vol.meta_url, "with a trash");
    let out = common::tessera(&["gc", &vol.meta_url, "--age", "0s"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains(" 0 unreferenced"),
        "gc: {said} {}",
        common::stderr(&out)
    );

    // A mount that keeps trash for no time purges the hour.
    let m = vol.mount_with(
        "m",
        &[
            "--trash-keep",
            "0",
            "--trash-purge-every",
            "0.2",
            "--heartbeat",
            "0.2",
        ],
    );
    common::wait_for("the trash purge", || {
        fs::read_dir(m.join(".trash"))
            .map(|d| d.count() == 0)
            .unwrap_or(true)
    });
    assert_eq!(fs::read(m.join("ckpt/latest")).unwrap(), b"step-200");
    m.unmount();
    common::assert_fsck_clean(&vol.meta_url, "after the purge");
}

#[test]
fn directory_quotas_refuse_growth_with_edquot_and_df_shows_them() {
    use common::{df_size, tessera, wait_for, write_until_refused};
    let vol = Volume::new("quotas");
    let m = vol.mount("m");
    fs::create_dir(m.join("team")).unwrap();
    fs::write(m.join("team/a"), vec![1u8; 1 << 20]).unwrap();
    let meta = vol.meta_url.as_str();

    // Bad input first: each names what is wrong, and nothing is set.
    let refused = |args: &[&str], says: &str| {
        let out = tessera(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = common::stderr(&out);
        assert!(err.contains(says), "{args:?}: {err}");
    };
    for (args, says) in [
        (&["/team/a", "--capacity", "1G"][..], "is not a directory"),
        (&["/team", "--capacity", "-5G"][..], "cannot be negative"),
        (&["/team", "--inodes", "-1"][..], "expected a whole number"),
        (&["/nowhere", "--inodes", "5"][..], "no such directory"),
        (&["/team"][..], "give --capacity or --inodes"),
    ] {
        let mut all = vec!["quota", "set", meta];
        all.extend_from_slice(args);
        refused(&all, says);
    }
    refused(&["quota", "get", meta, "/team"], "has no quota");

    let out = tessera(&[
        "quota",
        "set",
        meta,
        "/team",
        "--capacity",
        "4M",
        "--inodes",
        "10",
    ]);
    assert!(out.status.success(), "set: {}", common::stderr(&out));
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        shown.contains("/team") && shown.contains("4.00 MiB"),
        "{shown}"
    );

    // The mount takes the quota within a second or two: df shows it
    // inside the directory, and the volume's figures outside.
    wait_for("df to show the quota", || {
        df_size(&m.join("team")) == 4 << 20
    });
    assert!(df_size(&m.path) > 4 << 20);

    // Growth stops at the quota with EDQUOT; 1 MiB is used already.
    let (written, errno) = write_until_refused(&m.join("team/b"), 8 << 20);
    assert_eq!(errno, libc::EDQUOT, "after {written} bytes");
    assert!(
        (2 << 20..=3 << 20).contains(&written),
        "{written} bytes written"
    );
    // Outside the quota nothing stops.
    assert_eq!(write_until_refused(&m.join("free"), 8 << 20), (8 << 20, 0));

    // Inodes: a and b are 2 of 10.
    let mut made = 0;
    let last = loop {
        match fs::File::create(m.join(&format!("team/f{made}"))) {
            Ok(_) => made += 1,
            Err(e) => break e,
        }
        assert!(made <= 10, "the inode limit never stopped creates");
    };
    assert_eq!(last.raw_os_error(), Some(libc::EDQUOT), "{last}");
    assert_eq!(made, 8);
    // Removing gives the room back.
    fs::remove_file(m.join("team/b")).unwrap();
    fs::write(m.join("team/g"), vec![2u8; 1 << 20]).unwrap();

    // A directory moved in brings its usage along (and may not pass it).
    fs::create_dir(m.join("big")).unwrap();
    fs::write(m.join("big/x"), vec![3u8; 3 << 20]).unwrap();
    let err = fs::rename(m.join("big"), m.join("team/big")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err}");

    std::thread::sleep(std::time::Duration::from_millis(1500));
    let out = tessera(&["quota", "list", meta]);
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(listed.contains("/team"), "{listed}");
    let out = tessera(&["quota", "check", meta]);
    assert!(
        out.status.success(),
        "check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        common::stderr(&out)
    );
    let out = tessera(&["quota", "delete", meta, "/team"]);
    assert!(out.status.success(), "delete: {}", common::stderr(&out));
    wait_for("df to drop the quota", || {
        df_size(&m.join("team")) > 4 << 20
    });
    fs::write(m.join("team/after"), vec![4u8; 4 << 20]).unwrap();
    m.unmount();
    common::assert_fsck_clean(meta, "after quotas");
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    common::files_under(dir)
        .into_iter()
        .filter(|p| {
            fs::read(p)
                .map(|b| b.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn an_encrypted_volume_stores_no_plaintext_and_opens_only_with_its_key() {
    use common::{stderr, tessera};
    let dir = tempfile::tempdir().unwrap();
    // The key from OpenSSL when it is here (what users have), else ours.
    let key_path = dir.path().join("key.pem");
    let made_by_openssl = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key_path)
        .output()
        .is_ok_and(|o| o.status.success());
    if !made_by_openssl {
        let key = tessera_crypt::VolumeKey::generate(2048).unwrap();
        fs::write(&key_path, key.to_pem().unwrap()).unwrap();
    }
    let other_key = dir.path().join("other.pem");
    fs::write(
        &other_key,
        tessera_crypt::VolumeKey::generate(2048)
            .unwrap()
            .to_pem()
            .unwrap(),
    )
    .unwrap();
    let meta = format!("sqlite://{}/meta.db", dir.path().display());
    let storage = format!("file://{}/objects", dir.path().display());
    let key = key_path.to_str().unwrap();
    let pass = [("TESSERA_KEY_PASSPHRASE", "correct horse")];
    let run = |args: &[&str], env: &[(&str, &str)]| {
        std::process::Command::new(common::bin())
            .args(args)
            .env_remove("TESSERA_KEY_PASSPHRASE")
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };

    // A key file that is not a key is refused before anything is made.
    let not_a_key = dir.path().join("not-a-key.pem");
    fs::write(&not_a_key, "hello").unwrap();
    let out = tessera(&[
        "format",
        &meta,
        "secret",
        "--storage",
        &storage,
        "--encrypt-key",
        not_a_key.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not an RSA private key"),
        "{}",
        stderr(&out)
    );
    assert!(
        !dir.path().join("meta.db").exists(),
        "a refused format made the database"
    );

    let out = run(
        &[
            "format",
            &meta,
            "secret",
            "--storage",
            &storage,
            "--compress",
            "zstd",
            "--encrypt-key",
            key,
        ],
        &pass,
    );
    assert!(out.status.success(), "format: {}", stderr(&out));
    let out = tessera(&["status", &meta]);
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(status.contains("encryption  aes256gcm"), "{status}");
    // The key is kept only under its passphrase, in the engine and in the
    // bucket's copy of the settings.
    let pem = fs::read_to_string(&key_path).unwrap();
    let body_line = pem.lines().nth(1).unwrap().as_bytes().to_vec();
    for place in [
        dir.path().join("meta.db"),
        dir.path().join("objects/secret/tessera.json"),
    ] {
        let bytes = fs::read(&place).unwrap();
        assert!(
            !bytes.windows(body_line.len()).any(|w| w == body_line),
            "the key in clear in {}",
            place.display()
        );
    }

    // Without the passphrase, with a wrong one, or with another key: no mount.
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let cache = dir.path().join("cache");
    let mount_args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["mount", &meta, mnt.to_str().unwrap(), "--cache-dir"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.push(cache.to_str().unwrap().into());
        // In the background: a mount that wrongly succeeds returns too.
        v.extend(["--metrics".into(), "none".into(), "-d".into()]);
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    for (env, extra, says) in [
        (&[][..], &[][..], "set TESSERA_KEY_PASSPHRASE"),
        (
            &[("TESSERA_KEY_PASSPHRASE", "wrong")][..],
            &[][..],
            "wrong passphrase",
        ),
        (
            &[][..],
            &["--encrypt-key", other_key.to_str().unwrap()][..],
            "not the volume's key",
        ),
    ] {
        let args = mount_args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&args, env);
        assert!(!out.status.success(), "mounted with {env:?} {extra:?}");
        assert!(stderr(&out).contains(says), "{extra:?}: {}", stderr(&out));
        assert!(!common::is_mounted(&mnt));
    }

    // With the passphrase: files go in, and no object holds their bytes.
    let marker = b"TESSERA-PLAINTEXT-MARKER-0123456789abcdef-";
    let text: Vec<u8> = marker.iter().copied().cycle().take(6 << 20).collect();
    let random = pseudo_random(3 << 20, 31);
    let m = common::Mount::start_env(
        &meta,
        &mnt,
        &[
            "--cache-dir",
            cache.to_str().unwrap(),
            "--metrics",
            "none",
            "--backup-meta",
            "1s",
            "--heartbeat",
            "0.5",
        ],
        &pass,
    );
    fs::write(m.join("notes.txt"), &text).unwrap();
    fs::write(m.join("weights.bin"), &random).unwrap();
    let objects = dir.path().join("objects");
    let written = std::time::Instant::now();
    common::wait_for("a metadata backup after the writes", || {
        written.elapsed() > std::time::Duration::from_secs(2)
            && fs::read_dir(objects.join("secret/meta")).is_ok_and(|mut d| d.next().is_some())
    });
    m.unmount();
    // The metadata backup is sealed like the blocks: no file name shows.
    assert!(
        files_containing(&objects, b"weights.bin").is_empty(),
        "a file name in the bucket"
    );
    assert!(
        files_containing(&objects, &marker[..24]).is_empty(),
        "plaintext in the bucket"
    );
    assert!(files_containing(&objects, &random[1 << 20..(1 << 20) + 64]).is_empty());
    let stored: u64 = common::files_under(&objects.join("secret/chunks"))
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert!(
        stored < (3 << 20) + (1 << 20),
        "{stored} bytes stored: the text was not compressed before encryption"
    );

    // The engine is lost: the bucket's backup rebuilds it, with the
    // passphrase (and without it, nothing is made).
    let rebuilt = format!("sqlite://{}/rebuilt.db", dir.path().display());
    let load = [
        "load",
        &rebuilt,
        "--from-bucket",
        &storage,
        "--volume",
        "secret",
    ];
    let out = run(&load, &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("TESSERA_KEY_PASSPHRASE"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join("rebuilt.db").exists());
    let out = run(&load, &pass);
    assert!(out.status.success(), "load: {}", stderr(&out));

    // Read back, from the rebuilt engine, through a cold cache, with the
    // key file alone.
    // A mount with the key file and an empty cache of its own.
    let cold_mount = |meta_url: &str, cache: &str| {
        let cold = dir.path().join(cache);
        common::Mount::start(
            meta_url,
            &mnt,
            &[
                "--cache-dir",
                cold.to_str().unwrap(),
                "--metrics",
                "none",
                "--encrypt-key",
                key,
            ],
        )
    };
    let m = cold_mount(&rebuilt, "cache-cold");
    assert_eq!(fs::read(m.join("notes.txt")).unwrap(), text);
    assert_eq!(
        digest(&fs::read(m.join("weights.bin")).unwrap()),
        digest(&random)
    );
    m.unmount();

    // A changed byte in a block: an error naming nothing wrong as data.
    let victim = common::files_under(&objects.join("secret/chunks"))
        .into_iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    fs::write(&victim, &bytes).unwrap();
    let m = cold_mount(&meta, "cache-cold-2");
    let reads = [
        fs::read(m.join("notes.txt")),
        fs::read(m.join("weights.bin")),
    ];
    let failed: Vec<_> = reads.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(failed.len(), 1, "exactly the damaged file fails");
    assert_eq!(failed[0].raw_os_error(), Some(libc::EIO));
    for r in reads.iter().flatten() {
        assert!(
            r == &text || digest(r) == digest(&random),
            "wrong bytes served"
        );
    }
    m.unmount();

    // The volume cannot be formatted again without its key.
    let out = tessera(&[
        "format",
        &meta,
        "secret",
        "--storage",
        &storage,
        "--compress",
        "zstd",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("encrypted with key"),
        "{}",
        stderr(&out)
    );
}
