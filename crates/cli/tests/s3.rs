//! The S3 path against a real S3-compatible server. Needs
//! TESSERA_TEST_S3_ENDPOINT and TESSERA_TEST_S3_BUCKET (scripts/test.sh
//! starts moto on loopback and sets them); ignored by a plain `cargo test`
//! and failing loudly when run without them.

mod common;

use std::fs;
use std::io::Write;

use common::{digest, pseudo_random, Volume};

#[test]
#[ignore = "needs an S3 server: run through scripts/test.sh"]
fn hundred_mib_round_trip_on_s3() {
    let endpoint = std::env::var("TESSERA_TEST_S3_ENDPOINT")
        .expect("TESSERA_TEST_S3_ENDPOINT must name a running S3 server");
    let bucket =
        std::env::var("TESSERA_TEST_S3_BUCKET").expect("TESSERA_TEST_S3_BUCKET must name a bucket");
    // SAFETY: set before any thread of this test reads the environment.
    unsafe {
        std::env::set_var("AWS_ENDPOINT_URL", &endpoint);
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    }
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
