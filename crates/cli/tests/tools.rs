//! Real tools that no one here wrote, on a mounted volume, compared with the
//! same tools on the local disk: `tar x`, `cp -a`, `rsync -a`, `git clone`
//! with `git fsck`, and sqlite3's integrity check. They exercise what test
//! suites of single calls miss: times set on open descriptors, hard links,
//! symlinks, modes, many small files, fsync patterns of a database.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: it asserts

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A tree with what archives carry: nested directories, files of awkward
/// sizes, modes, a hard link, symlinks, and times in the past.
fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("a/b/c")).expect("dirs");
    std::fs::create_dir_all(root.join("empty")).expect("empty dir");
    for (i, size) in [0usize, 1, 4095, 4096, 65_537, (1 << 20) + 3, 5 << 20]
        .iter()
        .enumerate()
    {
        let dir = ["", "a", "a/b", "a/b/c"][i % 4];
        std::fs::write(
            root.join(dir).join(format!("f{i}")),
            pseudo_random(*size, i as u64 + 1),
        )
        .expect("file");
    }
    for i in 0..200 {
        std::fs::write(root.join("a/b").join(format!("small{i}")), format!("{i}\n"))
            .expect("small");
    }
    output_of(Command::new("chmod").args(["0600"]).arg(root.join("f0")));
    output_of(Command::new("chmod").args(["0755"]).arg(root.join("a/f1")));
    std::fs::hard_link(root.join("a/f1"), root.join("a/b/c/hardlink")).expect("link");
    std::os::unix::fs::symlink("../f0", root.join("a/rel-link")).expect("symlink");
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).expect("symlink");
    // Times in the past, files first, then directories (as tar restores).
    output_of(Command::new("find").arg(root).args([
        "-exec",
        "touch",
        "-h",
        "-d",
        "2001-02-03 04:05:06.789",
        "{}",
        "+",
    ]));
}

/// What `find` sees of a tree: path, size, mtime (ns), mode, type, link
/// count, symlink target; sorted.
fn listing(root: &Path, with_times_of_dirs: bool) -> String {
    let fmt = if with_times_of_dirs {
        "%P %s %T@ %m %y %n %l\n"
    } else {
        "%P %s %m %y %n %l\n"
    };
    let out = output_of(
        Command::new("find")
            .arg(root)
            .args(["-mindepth", "1", "-printf", fmt]),
    );
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort_unstable();
    lines.join("\n")
}

#[test]
fn tar_x_cp_a_and_rsync_keep_every_name_byte_mode_and_time() {
    let local = tempfile::tempdir().expect("tempdir");
    let src = local.path().join("src");
    make_tree(&src);
    let tarball = local.path().join("tree.tar");
    output_of(
        Command::new("tar")
            .arg("-cf")
            .arg(&tarball)
            .arg("-C")
            .arg(&src)
            .arg("."),
    );
    let vol = Volume::new("tools");
    let m = vol.mount("mnt");

    // tar x, on the local disk and on the volume: the same listing, times
    // of files and directories included.
    let on_disk = local.path().join("untar");
    std::fs::create_dir(&on_disk).expect("mkdir");
    output_of(
        Command::new("tar")
            .arg("-xf")
            .arg(&tarball)
            .arg("-C")
            .arg(&on_disk),
    );
    let on_volume = m.join("untar");
    std::fs::create_dir(&on_volume).expect("mkdir");
    output_of(
        Command::new("tar")
            .arg("-xf")
            .arg(&tarball)
            .arg("-C")
            .arg(&on_volume),
    );
    assert_eq!(listing(&on_volume, true), listing(&on_disk, true), "tar x");
    output_of(
        Command::new("diff")
            .args(["-r", "--no-dereference"])
            .arg(&on_disk)
            .arg(&on_volume),
    );

    // cp -a: nanosecond times, modes, the hard link and the symlinks.
    let copied = m.join("cp");
    output_of(Command::new("cp").arg("-a").arg(&src).arg(&copied));
    assert_eq!(listing(&copied, true), listing(&src, true), "cp -a");
    output_of(
        Command::new("diff")
            .args(["-r", "--no-dereference"])
            .arg(&src)
            .arg(&copied),
    );

    // rsync -a, then a dry run that must find nothing to do.
    if have("rsync") {
        let synced = m.join("rsync");
        let from = format!("{}/", src.display());
        let to = format!("{}/", synced.display());
        output_of(Command::new("rsync").args(["-aH", &from, &to]));
        let again =
            output_of(Command::new("rsync").args(["-aHn", "--itemize-changes", &from, &to]));
        assert_eq!(again.trim(), "", "rsync sees differences after rsync -a");
        assert_eq!(listing(&synced, false), listing(&src, false), "rsync -a");
    }
    // The same, read back through a fresh mount (no kernel or mount cache).
    m.unmount();
    let m = vol.mount_with("again", &["--cache-dir", "memory"]);
    assert_eq!(
        listing(&m.join("untar"), true),
        listing(&on_disk, true),
        "after remount"
    );
    output_of(
        Command::new("diff")
            .args(["-r", "--no-dereference"])
            .arg(&src)
            .arg(m.join("cp")),
    );
}

#[test]
fn git_clone_and_fsck_on_a_volume() {
    if !have("git") {
        eprintln!("git is not installed; skipped");
        return;
    }
    let local = tempfile::tempdir().expect("tempdir");
    let repo = local.path().join("repo");
    std::fs::create_dir(&repo).expect("mkdir");
    let git = |dir: &Path, args: &[&str]| {
        output_of(
            Command::new("git")
                .arg("-C")
                .arg(dir)
                .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
                .args(args),
        )
    };
    git(&repo, &["init", "-q"]);
    for i in 0..30 {
        std::fs::write(
            repo.join(format!("file{}", i % 7)),
            pseudo_random(3000 + i * 517, i as u64),
        )
        .expect("write");
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-q", "-m", &format!("commit {i}")]);
    }
    git(&repo, &["gc", "-q"]);
    let vol = Volume::new("gitvol");
    let m = vol.mount("mnt");
    let clone = m.join("clone");
    output_of(
        Command::new("git")
            .args(["clone", "-q", "--no-hardlinks"])
            .arg(&repo)
            .arg(&clone),
    );
    git(&clone, &["fsck", "--full", "--strict"]);
    std::fs::write(clone.join("new"), b"on the volume").expect("write");
    git(&clone, &["add", "new"]);
    git(&clone, &["commit", "-q", "-m", "made on the volume"]);
    git(&clone, &["gc", "-q", "--aggressive"]);
    git(&clone, &["fsck", "--full", "--strict"]);
    assert_eq!(git(&clone, &["rev-list", "--count", "HEAD"]).trim(), "31");
}

#[test]
fn sqlite_database_on_a_volume_passes_its_integrity_check() {
    if !have("sqlite3") {
        eprintln!("sqlite3 is not installed; skipped");
        return;
    }
    let vol = Volume::new("sqlvol");
    let m = vol.mount("mnt");
    let db = m.join("app.db");
    let mut script = String::from(
        "PRAGMA journal_mode=DELETE;\nCREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB);\n",
    );
    for batch in 0..20 {
        script.push_str("BEGIN;\n");
        for i in 0..500 {
            let k = batch * 500 + i;
            script.push_str(&format!(
                "INSERT INTO t VALUES({k}, randomblob({}));\n",
                50 + k % 900
            ));
        }
        script.push_str("COMMIT;\n");
        if batch % 5 == 4 {
            script.push_str(&format!("DELETE FROM t WHERE k % 7 = {};\n", batch % 7));
        }
    }
    script.push_str("CREATE INDEX tv ON t(length(v));\nVACUUM;\n");
    let mut child = Command::new("sqlite3")
        .arg(&db)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("sqlite3");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("feed sqlite3");
    }
    assert!(child.wait().expect("sqlite3").success());
    m.unmount();
    let m = vol.mount_with("again", &["--cache-dir", "memory"]);
    let db = m.join("app.db");
    let check = output_of(
        Command::new("sqlite3")
            .arg(&db)
            .arg("PRAGMA integrity_check;"),
    );
    assert_eq!(check.trim(), "ok");
    let rows = output_of(
        Command::new("sqlite3")
            .arg(&db)
            .arg("SELECT count(*) FROM t;"),
    );
    let expected = (0..10_000)
        .filter(|k| !(0..20).any(|b| b % 5 == 4 && k / 500 <= b && k % 7 == b % 7))
        .count();
    assert_eq!(rows.trim(), expected.to_string());
}

#[test]
fn du_and_status_count_what_a_sparse_file_stores() {
    let vol = Volume::new("sparse");
    let m = vol.mount("mnt");
    let f = m.join("sparse.img");
    output_of(Command::new("truncate").args(["-s", "10G"]).arg(&f));
    let du = |p: &Path| -> u64 {
        output_of(Command::new("du").arg("-B1").arg(p))
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .expect("du prints a number")
    };
    assert_eq!(du(&f), 0, "a 10 GiB hole stores nothing");
    output_of(
        Command::new("dd")
            .args([
                "if=/dev/urandom",
                "bs=1M",
                "count=1",
                "seek=5120",
                "conv=notrunc,fsync",
                "status=none",
            ])
            .arg(format!("of={}", f.display())),
    );
    assert_eq!(du(&f), 1 << 20, "1 MiB written in the middle");
    assert_eq!(std::fs::metadata(&f).expect("stat").len(), 10 << 30);
    m.unmount();
    let status = output_of(Command::new(bin()).args(["status", &vol.meta_url]));
    let used: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("used"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("status shows usage");
    assert_eq!(used, 1 << 20, "status counts stored bytes:\n{status}");
}

/// Run `sh -c script` as the unprivileged user nobody (uid/gid 65534).
fn as_nobody(script: &str, dir: &Path) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .current_dir(dir)
        .output()
        .expect("setpriv")
}

/// POSIX ACLs on a volume formatted with `--enable-acl`, through the
/// kernel's own checks: a named entry grants a user what the mode does
/// not, chmod moves the mask, default ACLs are inherited (the umask gives
/// way), `cp -a` keeps an ACL, and a second mount sees them. A volume
/// without ACLs refuses them, so tools fall back to chmod.
#[test]
fn posix_acls_are_kept_inherited_and_enforced_by_the_kernel() {
    if !have("setfacl") || !have("setpriv") {
        eprintln!("skipped: setfacl or setpriv missing");
        return;
    }
    let vol = Volume::with_storage("aclvol", None, &["--enable-acl"]);
    let m = vol.mount("a");
    let root = m.join("");
    std::fs::write(m.join("secret"), b"for nobody\n").expect("write");
    output_of(
        Command::new("chmod")
            .args(["600", "secret"])
            .current_dir(&root),
    );
    assert!(
        !as_nobody("cat secret", &root).status.success(),
        "mode 600 keeps nobody out"
    );
    output_of(
        Command::new("setfacl")
            .args(["-m", "u:nobody:r", "secret"])
            .current_dir(&root),
    );
    let read = as_nobody("cat secret", &root);
    assert_eq!(
        read.stdout,
        b"for nobody\n",
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    assert!(
        !as_nobody("echo x >> secret", &root).status.success(),
        "read only"
    );
    let listed = output_of(Command::new("ls").args(["-l", "secret"]).current_dir(&root));
    assert!(listed.starts_with("-rw-r-----+"), "{listed}");

    // chmod narrows the mask: the named entry loses what the mask drops.
    output_of(
        Command::new("chmod")
            .args(["600", "secret"])
            .current_dir(&root),
    );
    let acl = output_of(
        Command::new("getfacl")
            .args(["-c", "secret"])
            .current_dir(&root),
    );
    assert!(acl.contains("mask::---"), "{acl}");
    assert!(
        !as_nobody("cat secret", &root).status.success(),
        "masked out"
    );
    output_of(
        Command::new("setfacl")
            .args(["-b", "secret"])
            .current_dir(&root),
    );
    let listed = output_of(Command::new("ls").args(["-l", "secret"]).current_dir(&root));
    assert!(listed.starts_with("-rw------- "), "{listed}");

    // Default ACLs: inherited by files and directories, umask ignored.
    std::fs::create_dir(m.join("shared")).expect("mkdir");
    output_of(
        Command::new("setfacl")
            .args(["-d", "-m", "u:nobody:rwx", "-m", "o::---", "shared"])
            .current_dir(&root),
    );
    output_of(
        Command::new("sh")
            .args([
                "-c",
                "umask 077 && echo data > shared/f && mkdir shared/sub",
            ])
            .current_dir(&root),
    );
    let f_acl = output_of(
        Command::new("getfacl")
            .args(["-c", "shared/f"])
            .current_dir(&root),
    );
    assert!(
        f_acl.contains("user:nobody:rwx") && f_acl.contains("mask::rw-"),
        "{f_acl}"
    );
    let sub_acl = output_of(
        Command::new("getfacl")
            .args(["-c", "shared/sub"])
            .current_dir(&root),
    );
    assert!(sub_acl.contains("default:user:nobody:rwx"), "{sub_acl}");
    let wrote = as_nobody("echo more >> shared/f && touch shared/sub/mine", &root);
    assert!(
        wrote.status.success(),
        "{}",
        String::from_utf8_lossy(&wrote.stderr)
    );

    // cp -a carries the ACL; another mount sees what this one set.
    output_of(
        Command::new("cp")
            .args(["-a", "shared/f", "copy"])
            .current_dir(&root),
    );
    let copy_acl = output_of(
        Command::new("getfacl")
            .args(["-c", "copy"])
            .current_dir(&root),
    );
    assert_eq!(copy_acl, f_acl);
    let other = vol.mount("b");
    let seen = output_of(
        Command::new("getfacl")
            .args(["-c", "shared/f"])
            .current_dir(other.join("")),
    );
    assert_eq!(seen, f_acl);
    drop(other);
    drop(m);

    let plain = Volume::new("plainvol");
    let m = plain.mount("a");
    std::fs::write(m.join("f"), b"x").expect("write");
    let refused = Command::new("setfacl")
        .args(["-m", "u:nobody:r", "f"])
        .current_dir(m.join(""))
        .output()
        .expect("setfacl");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Operation not supported"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

/// A model repository in safetensors format (two checkpoint shards of about
/// 80 MiB, each across a chunk boundary, and four adapters) written with
/// the `safetensors` package and loaded as inference servers load it: mmap
/// through `safe_open(framework="numpy")`, every tensor touched in a
/// shuffled order and compared. Cold (a new mount with an empty cache),
/// warm in the same mount, and warm from the disk cache of a new mount,
/// which then asks object storage for nothing; loaded again there with
/// `--open-cache` (and the kernel's caches as long), it asks the metadata
/// engine nothing either.
#[test]
fn safetensors_models_load_through_mmap_cold_and_warm() {
    let Some(py) = loader_python() else {
        eprintln!("no python with safetensors and numpy; skipped (scripts/test.sh provides one)");
        return;
    };
    let script = LOADER_SCRIPT;
    let vol = Volume::new("models");
    let m = vol.mount("w");
    output_of(
        Command::new(&py)
            .args([script, "write"])
            .arg(&m.path)
            .arg("7"),
    );
    m.unmount();

    let check = |m: &Mount| {
        let said = output_of(
            Command::new(&py)
                .args([script, "check"])
                .arg(&m.path)
                .arg("7"),
        );
        assert!(said.contains("checked 6 files, 144 tensors"), "{said}");
    };
    let cache = vol.dir.path().join("cache-reader");
    let cache_arg = cache.to_str().unwrap();
    let m = vol.mount_with("r", &["--cache-dir", cache_arg]);
    let gets = || {
        stat(
            &m.path,
            "tessera_object_request_seconds_count{method=\"get\"}",
        )
    };
    check(&m);
    let cold_gets = gets();
    assert!(cold_gets > 0.0, "the cold load read object storage");
    check(&m);
    m.unmount();

    // A mount that serves a model trusts what it saw for a minute: the
    // open cache and the kernel's attribute and name caches alike (a load
    // that starts after a one-second entry cache expired would look the
    // names up again).
    let trusting = [
        "--cache-dir",
        cache_arg,
        "--open-cache",
        "60",
        "--entry-cache",
        "60",
        "--dir-entry-cache",
        "60",
        "--attr-cache",
        "60",
    ];
    let m = vol.mount_with("r", &trusting);
    check(&m);
    let gets = || {
        stat(
            &m.path,
            "tessera_object_request_seconds_count{method=\"get\"}",
        )
    };
    assert_eq!(gets(), 0.0, "a load warm on disk asked object storage");
    // With --open-cache, loading the same model again asks neither the
    // metadata engine nor object storage anything.
    // (Heartbeats and usage syncs run meanwhile: they are counted apart.)
    let requests =
        || stat(&m.path, "tessera_meta_txns") - stat(&m.path, "tessera_meta_background_txns");
    let before = requests();
    check(&m);
    let again = requests() - before;
    eprintln!(
        "second load with --open-cache: {again} metadata transactions, {} GETs",
        gets()
    );
    assert_eq!((again, gets()), (0.0, 0.0));
    m.unmount();
}
