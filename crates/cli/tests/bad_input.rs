//! Bad input fails at once with a message that says what is wrong.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: it asserts

mod common;

use common::{stderr, tessera, Volume};

fn fails_with(args: &[&str], needle: &str) {
    let out = tessera(args);
    assert!(!out.status.success(), "{args:?} should fail");
    let msg = stderr(&out);
    assert!(
        msg.contains(needle),
        "{args:?}: expected {needle:?} in {msg:?}"
    );
}

#[test]
fn malformed_urls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = format!("sqlite://{}/m.db", dir.path().display());
    fails_with(&["format", "meta.db", "vol1"], "expected SCHEME://");
    fails_with(&["format", "foo://x", "vol1"], "unknown engine \"foo\"");
    fails_with(
        &["format", &meta, "vol1", "--storage", "ftp://x"],
        "unknown scheme \"ftp\"",
    );
    fails_with(
        &["format", &meta, "vol1", "--storage", "s3://"],
        "bucket name is missing",
    );
    fails_with(
        &["format", &meta, "vol1", "--storage", "file://relative"],
        "absolute path",
    );
    fails_with(
        &["format", &meta, "x", "--storage", "file:///tmp"],
        "invalid volume name",
    );
    fails_with(
        &["format", &meta, "vol1", "--compress", "gzip"],
        "possible values: none, lz4, zstd",
    );
    fails_with(
        &["format", &meta, "vol1", "--block-size", "3M"],
        "invalid block size",
    );
}

#[test]
fn unformatted_and_unreachable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = format!("sqlite://{}/m.db", dir.path().display());
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let mnt = mnt.to_string_lossy().into_owned();
    fails_with(&["mount", &meta, &mnt], "no volume is formatted");
    fails_with(&["status", &meta], "run `tessera format");
    // A directory of this test's own that does not exist, whatever the
    // machine has at /no/such/dir.
    let missing = dir.path().join("no/such/dir");
    fails_with(
        &[
            "mount",
            &format!("sqlite://{}/m.db", missing.display()),
            &mnt,
        ],
        &format!("directory {} does not exist", missing.display()),
    );
    fails_with(
        &["status", "redis://127.0.0.1:1/0"],
        "cannot reach redis at redis://127.0.0.1:1/0",
    );
    fails_with(
        &["status", "postgres://u:secret@127.0.0.1:1/db"],
        "cannot reach postgres at postgres://u:****@127.0.0.1:1/db",
    );
    fails_with(
        &["status", "mysql://u:secret@127.0.0.1:1/db"],
        "cannot reach mysql at mysql://u:****@127.0.0.1:1/db",
    );
    fails_with(
        &["status", "mysql://u@127.0.0.1:1"],
        "database name is missing",
    );
    fails_with(
        &["status", "etcd://127.0.0.1:1/vol"],
        "cannot reach etcd at etcd://127.0.0.1:1/vol",
    );
    fails_with(&["status", "etcd://127.0.0.1:1"], "key prefix is missing");
    fails_with(
        &["status", "tikv://127.0.0.1:1/vol"],
        "tikv engine is not built into this version",
    );
    fails_with(&["dump", &meta, "-"], "no volume is formatted");
    let junk = dir.path().join("junk.jsonl");
    std::fs::write(&junk, "{\"not\": \"a dump\"}\n").expect("write");
    fails_with(
        &["load", &meta, junk.to_str().expect("utf-8")],
        "not a tessera dump header",
    );
    fails_with(
        &["load", &meta, "/no/such/dump"],
        "cannot open /no/such/dump",
    );
    fails_with(
        &["import", "file:///tmp", &meta, "/x"],
        "no volume is formatted",
    );
    // An S3 endpoint nobody listens on: format refuses before writing metadata.
    let out = std::process::Command::new(common::bin())
        .args([
            "format",
            &meta,
            "vol1",
            "--storage",
            "s3://bucket",
            "--endpoint",
            "http://127.0.0.1:1",
        ])
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "y")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("object storage s3://bucket is not usable"),
        "{}",
        stderr(&out)
    );
    fails_with(&["status", &meta], "no volume is formatted");
}

#[test]
fn mountpoint_problems_and_reformat() {
    let vol = Volume::new("mounts");
    let missing = vol
        .dir
        .path()
        .join("missing")
        .to_string_lossy()
        .into_owned();
    fails_with(
        &["mount", &vol.meta_url, &missing],
        "does not exist: create it",
    );
    let file = vol.dir.path().join("file");
    std::fs::write(&file, b"").expect("file");
    fails_with(
        &["mount", &vol.meta_url, &file.to_string_lossy()],
        "is not a directory",
    );
    let m = vol.mount("mnt");
    fails_with(
        &["mount", &vol.meta_url, &m.path.to_string_lossy()],
        "is busy",
    );
    fails_with(
        &[
            "format",
            &vol.meta_url,
            "mounts",
            "--storage",
            &vol.storage,
            "--block-size",
            "1M",
        ],
        "refusing to reformat",
    );
    let same = tessera(&["format", &vol.meta_url, "mounts", "--storage", &vol.storage]);
    assert!(
        same.status.success(),
        "same settings are accepted: {}",
        stderr(&same)
    );
    fails_with(
        &["umount", &vol.dir.path().to_string_lossy()],
        "is not a mount point",
    );
}

/// Every number a flag takes is range-checked by name: no panic on 1e20,
/// no -1 or NaN taken as 0.
#[test]
fn out_of_range_numbers_are_refused_by_name() {
    let vol = Volume::new("numbers");
    let mnt = vol.dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let mnt = mnt.to_string_lossy().into_owned();
    for (flag, value) in [
        ("--heartbeat", "1e20"),
        ("--session-timeout", "1e300"),
        ("--open-cache", "1e20"),
        ("--attr-cache", "1e20"),
        ("--attr-cache=-1", ""),
        ("--entry-cache", "NaN"),
        ("--dir-entry-cache", "inf"),
        ("--negative-entry-cache", "1e20"),
        ("--upload-limit", "1e-300"),
        ("--download-limit", "NaN"),
        ("--upload-limit=-1", ""),
        ("--io-timeout", "0"),
        ("--io-timeout", "1e20"),
        ("--max-downloads", "0"),
        ("--threads", "100000"),
        ("--cache-expire", "18446744073709551615"),
    ] {
        let mut args = vec!["mount", &vol.meta_url, &mnt, flag];
        if !value.is_empty() {
            args.push(value);
        }
        let out = tessera(&args);
        let msg = stderr(&out);
        assert!(!out.status.success(), "{args:?} was accepted");
        let name = flag.split('=').next().unwrap_or(flag);
        assert!(
            msg.contains(name) && !msg.contains("panicked"),
            "{args:?}: {msg}"
        );
    }
}

/// Mounting over files, or with the object store down, works but says so.
#[test]
fn mounting_over_files_or_with_the_store_down_warns() {
    let vol = Volume::new("warnings");
    let mnt = vol.dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    std::fs::write(mnt.join("hidden.txt"), b"under the mount").expect("file");
    let log = vol.dir.path().join("mount.log");
    let m = common::Mount::start_logged(&vol.meta_url, &mnt, &["--metrics", "none"], &log);
    m.unmount();
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("is not empty"), "{text}");

    // The store becomes unusable (its directory replaced by a file): the
    // mount comes up and says that reads of uncached data will fail.
    let objects = vol.dir.path().join("objects");
    std::fs::rename(&objects, vol.dir.path().join("objects.away")).expect("move the store");
    std::fs::write(&objects, b"not a directory").expect("block the store");
    let log = vol.dir.path().join("mount2.log");
    std::fs::remove_file(mnt.join("hidden.txt")).expect("rm");
    let m = common::Mount::start_logged(&vol.meta_url, &mnt, &["--metrics", "none"], &log);
    m.unmount();
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("is not reachable"), "{text}");
}

/// A refused command changes nothing: no database file for a mistyped
/// path, no storage directory for a format whose metadata cannot be made.
#[test]
fn refused_commands_leave_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let typo = dir.path().join("typo.db");
    let url = format!("sqlite://{}", typo.display());
    fails_with(&["status", &url], "no volume is formatted");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    fails_with(
        &["mount", &url, &mnt.to_string_lossy()],
        "no volume is formatted",
    );
    assert!(
        !typo.exists(),
        "status and mount created {}",
        typo.display()
    );
    let storage = dir.path().join("objects");
    fails_with(
        &[
            "format",
            &format!("sqlite://{}/missing/meta.db", dir.path().display()),
            "vol",
            "--storage",
            &format!("file://{}", storage.display()),
        ],
        "does not exist",
    );
    assert!(
        !storage.exists(),
        "a refused format made {}",
        storage.display()
    );
    // A volume without trash days says so; an absurd number is refused.
    fails_with(
        &["format", &url, "vol", "--trash-days", "5000"],
        "--trash-days 5000 is out of range",
    );
    let vol = Volume::new("notrash");
    let out = tessera(&["status", &vol.meta_url]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("trash       none"), "{text}");
}
