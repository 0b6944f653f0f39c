//! What sealing and opening blocks cost on one core, without any I/O:
//! 256 blocks of 4 MiB sealed, then opened.
//!
//!     cargo run --release -p tessera-crypt --example throughput

use std::time::Instant;

fn main() -> Result<(), tessera_crypt::CryptError> {
    const BLOCK: usize = 4 << 20;
    const BLOCKS: usize = 256;
    let key = tessera_crypt::VolumeKey::generate(2048)?;
    let (cipher, _) = key.new_secret()?;
    let data: Vec<u8> = (0..BLOCK).map(|i| (i * 31 % 251) as u8).collect();
    let gib = (BLOCK * BLOCKS) as f64 / f64::from(1u32 << 30);

    let started = Instant::now();
    let mut first = Vec::new();
    for i in 0..BLOCKS {
        let sealed = cipher.seal(format!("vol/chunks/{i}").as_bytes(), &data)?;
        if i == 0 {
            first = sealed;
        } else {
            std::hint::black_box(&sealed);
        }
    }
    let seal = started.elapsed().as_secs_f64() / gib;

    let started = Instant::now();
    for _ in 0..BLOCKS {
        std::hint::black_box(cipher.open(b"vol/chunks/0", &first)?);
    }
    let open = started.elapsed().as_secs_f64() / gib;
    println!(
        "seal {:.3} s/GiB ({:.2} GiB/s), open {:.3} s/GiB ({:.2} GiB/s), one core",
        seal,
        1.0 / seal,
        open,
        1.0 / open
    );
    Ok(())
}
