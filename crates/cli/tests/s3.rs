//! The S3 path against a real S3-compatible server. Needs
//! TESSERA_TEST_S3_ENDPOINT and TESSERA_TEST_S3_BUCKET (scripts/test.sh
//! starts moto on loopback and sets them); ignored by a plain `cargo test`
//! and failing loudly when run without them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: it asserts

mod common;

use std::fs;
use std::io::Write;

use common::{digest, pseudo_random, Volume};

/// The tests of this file take turns: the server is one Python process,
/// and the request log one test reads must hold only its own requests.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The test S3 server's bucket, with the server's endpoint and credentials
/// put in the environment for this process and the mounts it starts.
fn s3_env() -> String {
    let endpoint = std::env::var("TESSERA_TEST_S3_ENDPOINT")
        .expect("TESSERA_TEST_S3_ENDPOINT must name a running S3 server");
    let bucket =
        std::env::var("TESSERA_TEST_S3_BUCKET").expect("TESSERA_TEST_S3_BUCKET must name a bucket");
    // SAFETY: the tests of this file set the same values; nothing reads the
    // environment concurrently with a change of value.
    unsafe {
        std::env::set_var("AWS_ENDPOINT_URL", &endpoint);
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    }
    bucket
}

#[test]
#[ignore = "needs an S3 server: run through scripts/test.sh"]
fn hundred_mib_round_trip_on_s3() {
    let _turn = serial();
    let bucket = s3_env();
    let storage = format!("s3://{bucket}/round-trip-{}", std::process::id());
    let vol = Volume::with_storage("s3vol", Some(&storage), &[]);
    let data = pseudo_random(100 << 20, 9);
    {
        let m = vol.mount("mnt");
        let mut f = fs::File::create(m.join("ckpt.bin")).expect("create");
        for part in data.chunks(1 << 20) {
            f.write_all(part).expect("write");
        }
        f.sync_all().expect("fsync");
    }
    // The volume remembers the endpoint it was formatted with: a mount
    // given none (no flag, no AWS_ENDPOINT_URL) reaches the same server
    // instead of going to AWS.
    let endpoint = std::env::var("AWS_ENDPOINT_URL").expect("endpoint");
    // SAFETY: the tests of this file take turns (`serial`) and only they
    // change the environment.
    unsafe { std::env::remove_var("AWS_ENDPOINT_URL") };
    let status = common::tessera(&["status", &vol.meta_url]);
    let shown = String::from_utf8_lossy(&status.stdout).to_string();
    let log = vol.dir.path().join("remount.log");
    let back = {
        let path = vol.dir.path().join("mnt");
        fs::create_dir_all(&path).expect("mountpoint");
        let cache = vol.cache_dir("mnt");
        let m = common::Mount::start_logged(
            &vol.meta_url,
            &path,
            &[
                "--cache-dir",
                cache.to_str().expect("utf-8"),
                "--metrics",
                "none",
            ],
            &log,
        );
        fs::read(m.join("ckpt.bin"))
    };
    let said = fs::read_to_string(&log).unwrap_or_default();
    // SAFETY: as above.
    unsafe { std::env::set_var("AWS_ENDPOINT_URL", &endpoint) };
    assert!(
        shown.contains(&format!("endpoint    {endpoint}")),
        "status names the endpoint: {shown}"
    );
    assert!(
        !said.contains("not reachable"),
        "the mount found its store: {said}"
    );
    let back = back.expect("read back");
    assert_eq!(back.len(), data.len());
    assert_eq!(
        digest(&back),
        digest(&data),
        "identical bytes from S3 after remount"
    );
}

/// Objects already in a bucket become files of a volume in place: read back
/// identically through a mount, nothing written to the source, a rerun
/// follows changes, and an object replaced behind the volume's back is an
/// EIO rather than other bytes.
#[test]
#[ignore = "needs an S3 server: run through scripts/test.sh"]
fn import_a_bucket_in_place() {
    use tessera_object::{open_store, StorageOptions};
    let _turn = serial();
    let bucket = s3_env();
    let source = format!("s3://{bucket}/repo-{}", std::process::id());
    let store = open_store(&source, &StorageOptions::from_env()).expect("source store");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let put = |key: &str, data: Vec<u8>| {
        rt.block_on(store.put(key, bytes::Bytes::from(data).into()))
            .expect("put");
    };
    let ckpt = pseudo_random(70 << 20, 3); // over one 64 MiB chunk
    put("ckpt/model.safetensors", ckpt.clone());
    for i in 0..20 {
        put(
            &format!("lora/a{i:02}.safetensors"),
            pseudo_random(10_000 + i * 7, i as u64),
        );
    }
    put("README.md", b"hello".to_vec());
    let listing = |rt: &tokio::runtime::Runtime| {
        let mut l = rt.block_on(store.list("")).expect("list");
        l.sort_by(|a, b| a.key.cmp(&b.key));
        l
    };
    let before = listing(&rt);

    let vol = Volume::new("importvol");
    let import = |extra: &[&str]| {
        let mut args = vec!["import", &source, &vol.meta_url, "/models"];
        args.extend_from_slice(extra);
        let out = common::tessera(&args);
        assert!(out.status.success(), "import: {}", common::stderr(&out));
        common::stderr(&out)
    };
    let said = import(&["--exclude", "*.md"]);
    assert!(said.contains("21 new"), "{said}");
    {
        let m = vol.mount("mnt");
        let got = fs::read(m.join("models/ckpt/model.safetensors")).expect("read ckpt");
        assert_eq!(digest(&got), digest(&ckpt), "checkpoint bytes");
        for i in 0..20 {
            let got = fs::read(m.join(&format!("models/lora/a{i:02}.safetensors"))).expect("read");
            assert_eq!(got, pseudo_random(10_000 + i * 7, i as u64));
        }
        assert!(!m.join("models/README.md").exists(), "--exclude");
        // Written on top: the object stays as it was.
        fs::OpenOptions::new()
            .write(true)
            .open(m.join("models/lora/a00.safetensors"))
            .and_then(|mut f| f.write_all(b"LOCAL"))
            .expect("write on top");
    }
    assert_eq!(listing(&rt), before, "nothing written to the source");

    // Change, add, delete; a rerun follows.
    put("lora/a01.safetensors", b"new version".to_vec());
    put("lora/new.safetensors", b"brand new".to_vec());
    rt.block_on(store.delete("lora/a02.safetensors"))
        .expect("delete");
    let said = import(&["--exclude", "*.md"]);
    assert!(
        said.contains("1 new, 1 changed") && said.contains("1 removed"),
        "{said}"
    );
    // And an object replaced behind the volume's back.
    put("lora/a03.safetensors", b"swapped".to_vec());
    let m = vol.mount("mnt");
    assert_eq!(
        fs::read(m.join("models/lora/a01.safetensors")).expect("read"),
        b"new version"
    );
    assert_eq!(
        fs::read(m.join("models/lora/new.safetensors")).expect("read"),
        b"brand new"
    );
    assert!(!m.join("models/lora/a02.safetensors").exists());
    let err = fs::read(m.join("models/lora/a03.safetensors")).expect_err("changed behind our back");
    assert_eq!(err.raw_os_error(), Some(libc::ESTALE), "{err}");
}

/// A call to the test server's own API (moto's request recorder); the body
/// of the answer.
fn server_api(method: &str, path: &str) -> String {
    use std::io::Read;
    let endpoint = std::env::var("TESSERA_TEST_S3_ENDPOINT").expect("endpoint");
    let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut conn = std::net::TcpStream::connect(host).expect("connect to the S3 server");
    write!(
        conn,
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n"
    )
    .expect("request");
    let mut answer = String::new();
    conn.read_to_string(&mut answer).expect("answer");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    assert!(head.contains(" 200 "), "{method} {path}: {head}");
    body.to_string()
}

/// Every file under `dir`: relative path → (size, digest).
fn tree(dir: &std::path::Path) -> std::collections::BTreeMap<String, (u64, u64)> {
    fn walk(
        root: &std::path::Path,
        d: &std::path::Path,
        out: &mut std::collections::BTreeMap<String, (u64, u64)>,
    ) {
        for e in fs::read_dir(d).expect("readdir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let data = fs::read(&p).expect("read");
                let rel = p
                    .strip_prefix(root)
                    .expect("under root")
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, (data.len() as u64, digest(&data)));
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The whole model-repository story on a real S3 server: 200 objects (a
/// 1 GiB checkpoint and 199 adapters) uploaded with `tessera sync`,
/// imported in place (the server's request log shows no write to them),
/// read back identically; a warm-up of the adapters makes later reads
/// GET-free, `--check` says 100% and `--evict` 0%; the tree synced out of
/// the volume to a new prefix and imported into a second volume is the
/// same tree.
#[test]
#[ignore = "needs an S3 server: run through scripts/test.sh"]
fn two_hundred_objects_import_warm_up_and_sync_back() {
    let _turn = serial();
    let bucket = s3_env();
    let run = |args: &[&str]| {
        let out = common::tessera(args);
        assert!(out.status.success(), "{args:?}: {}", common::stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned() + &common::stderr(&out)
    };
    let local = tempfile::tempdir().expect("tempdir");
    let repo = local.path().join("repo");
    fs::create_dir_all(repo.join("ckpt")).expect("mkdir");
    fs::create_dir_all(repo.join("lora/v2")).expect("mkdir");
    fs::write(
        repo.join("ckpt/model.safetensors"),
        pseudo_random(1 << 30, 77),
    )
    .expect("ckpt");
    for i in 0..199u64 {
        let dir = if i % 3 == 0 { "lora/v2" } else { "lora" };
        let data = pseudo_random(20_000 + i as usize * 1_013, i + 1_000);
        fs::write(repo.join(format!("{dir}/adapter-{i:03}.safetensors")), data).expect("adapter");
    }
    let expected = tree(&repo);
    assert_eq!(expected.len(), 200);

    let id = std::process::id();
    let source = format!("s3://{bucket}/models-{id}");
    let said = run(&["sync", repo.to_str().expect("utf-8"), &source]);
    assert!(said.contains("200 copied"), "{said}");

    // From here on the server logs every request.
    server_api("POST", "/moto-api/recorder/reset-recording");
    server_api("POST", "/moto-api/recorder/start-recording");
    // Blocks of 16 MiB (the largest): the test server reads a whole object
    // to answer each range GET, so fewer, larger ranges keep the test quick.
    let vol = Volume::with_storage("modelvol", None, &["--block-size", "16M"]);
    let said = run(&["import", &source, &vol.meta_url, "/models"]);
    assert!(said.contains("200 new"), "{said}");
    let m = vol.mount_with("mnt", &["--max-downloads", "4"]);
    let models = m.join("models");
    assert_eq!(tree(&models), expected, "every file reads back identically");
    server_api("POST", "/moto-api/recorder/stop-recording");
    let log = server_api("GET", "/moto-api/recorder/download-recording");
    let prefix = format!("/models-{id}");
    let (mut reads, mut writes) = (0, Vec::new());
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let req: serde_json::Value = serde_json::from_str(line).expect("log line");
        let url = req["url"].as_str().unwrap_or_default();
        let method = req["method"].as_str().unwrap_or_default();
        let copy = req["headers"].as_object().is_some_and(|h| {
            h.keys()
                .any(|k| k.eq_ignore_ascii_case("x-amz-copy-source"))
        });
        let on_source =
            url.contains(&prefix) || (method == "GET" && url.contains("prefix=models-"));
        if !on_source {
            continue;
        }
        if matches!(method, "GET" | "HEAD") && !copy {
            reads += 1;
        } else {
            writes.push(format!("{method} {url}"));
        }
    }
    assert!(reads >= 200, "the source was read ({reads} requests)");
    assert!(
        writes.is_empty(),
        "requests that write to the source: {writes:?}"
    );

    // Warm-up of the adapters' directory (the checkpoint's is in
    // datapath.rs; here every extra pass over 1 GiB costs the test server
    // half a minute): evict, warm, then reads make no GET.
    let models_arg = models.to_str().expect("utf-8");
    let lora = models.join("lora");
    let lora_arg = lora.to_str().expect("utf-8");
    assert!(run(&["warmup", "--evict", lora_arg]).contains("(0.0%)"));
    assert!(run(&["warmup", "--check", lora_arg]).contains("(0.0%)"));
    const GETS: &str = "tessera_object_request_seconds_count{method=\"get\"}";
    let gets = common::stat(&m.path, GETS);
    let said = run(&["warmup", "--threads", "4", lora_arg]);
    assert!(
        said.contains("warmed up 199 files") && said.contains("(100.0%)"),
        "{said}"
    );
    assert!(
        common::stat(&m.path, GETS) >= gets + 199.0,
        "the warm-up fetched every adapter"
    );
    let check = run(&["warmup", "--check", models_arg]);
    assert!(
        check.contains("(100.0%)") && check.contains("200 files"),
        "{check}"
    );
    let gets = common::stat(&m.path, GETS);
    assert_eq!(tree(&models), expected);
    assert_eq!(
        common::stat(&m.path, GETS),
        gets,
        "a warmed tree is read with no GET"
    );

    // Out of the volume and into another: the same tree.
    let export = format!("s3://{bucket}/export-{id}");
    let said = run(&["sync", models_arg, &export, "--threads", "4"]);
    assert!(said.contains("200 copied"), "{said}");
    let said = run(&["sync", models_arg, &export, "--update"]);
    assert!(
        said.contains("0 copied") && said.contains("200 unchanged"),
        "{said}"
    );
    fs::remove_file(models.join("lora/adapter-001.safetensors")).expect("rm");
    let said = run(&["sync", models_arg, &export, "--update", "--delete-dst"]);
    assert!(
        said.contains("199 unchanged") && said.contains("1 deleted"),
        "{said}"
    );
    let mut expected = expected;
    expected.remove("lora/adapter-001.safetensors");
    let vol2 = Volume::with_storage("restorevol", None, &["--block-size", "16M"]);
    let said = run(&["import", &export, &vol2.meta_url, "/restored"]);
    assert!(said.contains("199 new"), "{said}");
    let m2 = vol2.mount_with("mnt", &["--max-downloads", "4"]);
    assert_eq!(
        tree(&m2.join("restored")),
        expected,
        "the round trip keeps the tree"
    );
    // And back into a plain directory, adapters only.
    let copy = local.path().join("copy");
    let said = run(&[
        "sync",
        &export,
        copy.to_str().expect("utf-8"),
        "--include",
        "lora/**",
    ]);
    assert!(said.contains("198 copied"), "{said}");
    let said = run(&[
        "sync",
        &export,
        copy.to_str().expect("utf-8"),
        "--include",
        "lora/**",
        "--update",
    ]);
    assert!(
        said.contains("0 copied") && said.contains("198 unchanged"),
        "{said}"
    );
}
