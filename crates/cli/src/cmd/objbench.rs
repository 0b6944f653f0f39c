//! `tessera objbench STORAGE_URL`: what the object store itself can do, so
//! file system figures can be read against it. Put, get, range get, list
//! and delete of small and large objects with N concurrent requests, under
//! a scratch prefix that is removed afterwards.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Result};
use bytes::Bytes;
use tessera_object::{open_store, DynStore};

use crate::common::{new_uuid, parse_size, StorageFlags};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Storage URL, e.g. s3://bucket/prefix or file:///data
    pub storage: String,
    /// Concurrent requests.
    #[arg(short = 'p', long, default_value_t = 4)]
    pub threads: usize,
    /// Objects per size.
    #[arg(long, default_value_t = 64)]
    pub count: usize,
    /// Object sizes to test, comma-separated; a bare number is KiB.
    #[arg(long, value_delimiter = ',', default_value = "128K,4M")]
    pub sizes: Vec<String>,
    #[command(flatten)]
    pub storage_flags: StorageFlags,
}

struct Row {
    op: String,
    ops: f64,
    mib: Option<f64>,
    ms: f64,
}

/// Run `count` operations over `threads` workers; returns (seconds, mean ms).
async fn timed<F, Fut>(threads: usize, count: usize, op: F) -> Result<(f64, f64)>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..threads {
        let (op, next) = (op.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut spent = 0.0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<f64, anyhow::Error>(spent);
                }
                let t = Instant::now();
                op(i).await?;
                spent += t.elapsed().as_secs_f64();
            }
        }));
    }
    let mut spent = 0.0;
    for t in tasks {
        spent += t
            .await
            .map_err(|e| anyhow!("objbench task failed: {e}"))??;
    }
    Ok((
        start.elapsed().as_secs_f64(),
        1000.0 * spent / count.max(1) as f64,
    ))
}

pub fn run(a: Args) -> Result<()> {
    let store: DynStore = open_store(&a.storage, &a.storage_flags.options()?)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads.clamp(1, 16))
        .enable_all()
        .build()?;
    let prefix = format!("__tessera_objbench_{}/", new_uuid()?);
    let threads = a.threads.max(1);
    let count = a.count.max(1);
    let mut rows = Vec::new();
    let result = rt.block_on(async {
        for size_s in &a.sizes {
            let size = parse_size(size_s, 1 << 10)? as usize;
            let body = Bytes::from(
                (0..size)
                    .map(|i| (i * 131 % 251) as u8)
                    .collect::<Vec<u8>>(),
            );
            let key = {
                let prefix = prefix.clone();
                move |i: usize| format!("{prefix}{size}/{i}")
            };
            let mib = (size * count) as f64 / 1048576.0;
            let (s, ms) = timed(threads, count, {
                let (store, body, key) = (store.clone(), body.clone(), key.clone());
                move |i| {
                    let (store, body, k) = (store.clone(), body.clone(), key(i));
                    async move { Ok(store.put(&k, body.into()).await?) }
                }
            })
            .await?;
            rows.push(Row {
                op: format!("put {size_s}"),
                ops: count as f64 / s,
                mib: Some(mib / s),
                ms,
            });
            let (s, ms) = timed(threads, count, {
                let (store, key) = (store.clone(), key.clone());
                move |i| {
                    let (store, k) = (store.clone(), key(i));
                    async move {
                        let got = store.get(&k, None).await?;
                        if got.len() != size {
                            return Err(anyhow!("get {k}: {} of {size} bytes", got.len()));
                        }
                        Ok(())
                    }
                }
            })
            .await?;
            rows.push(Row {
                op: format!("get {size_s}"),
                ops: count as f64 / s,
                mib: Some(mib / s),
                ms,
            });
            let range = (size / 4).max(1).min(size) as u64;
            let (s, ms) = timed(threads, count, {
                let (store, key) = (store.clone(), key.clone());
                move |i| {
                    let (store, k) = (store.clone(), key(i));
                    async move {
                        let off = (i as u64 * 4096) % (size as u64 - range + 1);
                        store.get(&k, Some(off..off + range)).await?;
                        Ok(())
                    }
                }
            })
            .await?;
            rows.push(Row {
                op: format!("range get {size_s} (1/4)"),
                ops: count as f64 / s,
                mib: Some((range as usize * count) as f64 / 1048576.0 / s),
                ms,
            });
        }
        let t = Instant::now();
        let listed = store.list(&prefix).await?;
        let s = t.elapsed().as_secs_f64();
        rows.push(Row {
            op: format!("list ({} objects)", listed.len()),
            ops: 1.0 / s,
            mib: None,
            ms: 1000.0 * s,
        });
        let keys: Arc<Vec<String>> = Arc::new(listed.into_iter().map(|o| o.key).collect());
        let n = keys.len();
        let (s, ms) = timed(threads, n, {
            let store = store.clone();
            move |i| {
                let (store, keys) = (store.clone(), keys.clone());
                async move { Ok(store.delete(&keys[i]).await?) }
            }
        })
        .await?;
        rows.push(Row {
            op: "delete".into(),
            ops: n as f64 / s,
            mib: None,
            ms,
        });
        Ok::<(), anyhow::Error>(())
    });
    if result.is_err() {
        // Best effort: leave nothing behind.
        rt.block_on(async {
            for o in store.list(&prefix).await.unwrap_or_default() {
                let _ = store.delete(&o.key).await;
            }
        });
    }
    result?;
    println!(
        "tessera objbench {} ({threads} concurrent, {count} objects per size)",
        store.describe()
    );
    println!(
        "{:<28} {:>10} {:>10} {:>10}",
        "operation", "ops/s", "MiB/s", "mean ms"
    );
    for r in rows {
        let mib = r
            .mib
            .map(|m| format!("{m:10.1}"))
            .unwrap_or_else(|| format!("{:>10}", "-"));
        println!("{:<28} {:>10.1} {mib} {:>10.2}", r.op, r.ops, r.ms);
    }
    Ok(())
}
