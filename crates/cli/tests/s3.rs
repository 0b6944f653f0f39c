//! The S3 path against a real S3-compatible server. Needs
//! TESSERA_TEST_S3_ENDPOINT and TESSERA_TEST_S3_BUCKET (scripts/test.sh
//! starts moto on loopback and sets them); ignored by a plain `cargo test`
//! and failing loudly when run without them.

mod common;

use std::fs;
use std::io::Write;

use common::{digest, pseudo_random, Volume};

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
    let m = vol.mount("mnt");
    let back = fs::read(m.join("ckpt.bin")).expect("read back");
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
    let bucket = s3_env();
    let source = format!("s3://{bucket}/repo-{}", std::process::id());
    let store = open_store(&source, &StorageOptions::from_env()).expect("source store");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let put = |key: &str, data: Vec<u8>| {
        rt.block_on(store.put(key, data.into())).expect("put");
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
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
}
