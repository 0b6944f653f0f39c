//! `tessera link` (hidden, for benches and tests): a TCP relay that plays a
//! far network link between a client and a server on this machine — each
//! byte is delivered a fixed delay after it was sent, and each direction of
//! the link carries at most `--rate-mbit` shared by every connection. The
//! kernel here has no `netem`; this stands in for it. What it does not
//! model: loss, jitter, and the TCP windows of a real long link (the relay
//! ends TCP on both sides; it buffers up to [`IN_FLIGHT`] chunks per
//! direction of a connection, about what a tuned long-haul socket keeps in
//! flight).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// LISTEN=TARGET: accept on LISTEN and relay each connection to
    /// TARGET (host:port each); repeatable, all pairs share the link.
    #[arg(long = "pair", required = true)]
    pub pairs: Vec<String>,
    /// One-way delay in milliseconds (a round trip costs twice this).
    #[arg(long, default_value_t = 25.0)]
    pub delay_ms: f64,
    /// Capacity of each direction in Mbit/s (0: unlimited).
    #[arg(long, default_value_t = 1000.0)]
    pub rate_mbit: f64,
}

/// Bytes read at a time from either side.
const CHUNK: usize = 64 << 10;
/// Chunks in flight per direction of a connection.
const IN_FLIGHT: usize = 256;

/// One direction of the link: when it is next free to send.
struct Direction {
    next_free: Mutex<Instant>,
    /// Seconds to put one byte on the wire (0: no limit).
    secs_per_byte: f64,
}

impl Direction {
    /// When `n` bytes sent now are on the wire's far end, before the delay.
    fn reserve(&self, n: usize) -> Instant {
        let mut next = self.next_free.lock();
        let start = (*next).max(Instant::now());
        *next = start + Duration::from_secs_f64(n as f64 * self.secs_per_byte);
        *next
    }
}

struct Link {
    delay: Duration,
    up: Direction,
    down: Direction,
}

fn parse_pair(p: &str) -> Result<(SocketAddr, String)> {
    let (listen, target) = p.split_once('=').ok_or_else(|| {
        anyhow!("--pair {p:?}: expected LISTEN=TARGET, like 127.0.0.1:16379=127.0.0.1:6379")
    })?;
    let listen = listen
        .parse()
        .with_context(|| format!("--pair {p:?}: {listen:?} is not an address"))?;
    Ok((listen, target.to_string()))
}

pub fn run(a: Args) -> Result<()> {
    if !(0.0..=10_000.0).contains(&a.delay_ms) {
        return Err(anyhow!(
            "--delay-ms {} is out of range: give 0 to 10000",
            a.delay_ms
        ));
    }
    if !(0.0..=1_000_000.0).contains(&a.rate_mbit) {
        return Err(anyhow!(
            "--rate-mbit {} is out of range: give 0 (unlimited) to 1000000",
            a.rate_mbit
        ));
    }
    let pairs = a
        .pairs
        .iter()
        .map(|p| parse_pair(p))
        .collect::<Result<Vec<_>>>()?;
    let secs_per_byte = if a.rate_mbit > 0.0 {
        8.0 / (a.rate_mbit * 1e6)
    } else {
        0.0
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let now = Instant::now();
        let link = Arc::new(Link {
            delay: Duration::from_secs_f64(a.delay_ms / 1000.0),
            up: Direction {
                next_free: Mutex::new(now),
                secs_per_byte,
            },
            down: Direction {
                next_free: Mutex::new(now),
                secs_per_byte,
            },
        });
        let mut tasks = Vec::new();
        for (listen, target) in pairs {
            let listener = TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            eprintln!(
                "relaying {listen} -> {target}: {} ms each way, {} Mbit/s",
                a.delay_ms, a.rate_mbit
            );
            let link = link.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    let (link, target) = (link.clone(), target.clone());
                    tokio::spawn(async move {
                        if let Err(e) = relay(client, &target, link).await {
                            tracing::debug!(error = %e, "relay ended");
                        }
                    });
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        Ok(())
    })
}

async fn relay(client: TcpStream, target: &str, link: Arc<Link>) -> Result<()> {
    // The connection's own handshake crosses the link too.
    tokio::time::sleep(link.delay * 2).await;
    let server = TcpStream::connect(target).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = carry(cr, sw, link.clone(), true);
    let down = carry(sr, cw, link, false);
    let _ = tokio::join!(up, down);
    Ok(())
}

/// Move bytes one way: each chunk read is written out once the link has
/// carried it and the delay has passed; EOF is passed on the same way.
async fn carry(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    link: Arc<Link>,
    upward: bool,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, Option<Vec<u8>>)>(IN_FLIGHT);
    let delay = link.delay;
    let reader = async move {
        let dir = if upward { &link.up } else { &link.down };
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = from.read(&mut buf).await.unwrap_or(0);
            let at = if n == 0 {
                Instant::now()
            } else {
                dir.reserve(n)
            } + delay;
            buf.truncate(n);
            let eof = n == 0;
            if tx.send((at, (!eof).then_some(buf))).await.is_err() || eof {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((at, data)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            match data {
                Some(d) => {
                    if to.write_all(&d).await.is_err() {
                        return;
                    }
                }
                None => {
                    let _ = to.shutdown().await;
                    return;
                }
            }
        }
    };
    tokio::join!(reader, writer);
}
