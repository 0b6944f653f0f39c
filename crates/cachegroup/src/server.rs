//! A member serving blocks to its peers.
//!
//! One thread accepts; each connection gets a thread of its own that reads
//! requests one after another (a client opens several connections for
//! parallelism). Blocks in the disk cache go out with `sendfile` straight
//! from the cache file, after a header carrying the CRCs stored with the
//! block; blocks in memory are written from the buffer. A block cached
//! nowhere is fetched from object storage once (the source does the single
//! flight), kept, and sent. With TLS, file blocks are copied through user
//! space (sendfile cannot encrypt). Connections that fail the handshake are logged
//! and counted, never served.

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tessera_metrics::Metrics;
use tracing::{debug, info, warn};

use crate::proto::{self, Op, ProtoError, Secret};
use crate::tls::{Stream, Tls};

/// A block as a member holds it.
pub enum Held {
    /// A block in memory, with its piece CRCs when the disk cache holds
    /// them too (read from the file's trailer rather than computed again).
    Memory { data: Bytes, sums: Option<Vec<u32>> },
    /// A disk cache file: the data is its first `len` bytes; `sums` are the
    /// CRCs stored in its trailer.
    File {
        file: std::fs::File,
        len: usize,
        sums: Vec<u32>,
    },
}

/// The cache a member serves from.
pub trait BlockSource: Send + Sync + 'static {
    /// The block if this member has it cached (no fetch).
    fn held(&self, key: &str) -> Option<Held>;
    /// Fetch a block from object storage and keep it (blocking).
    fn fetch(&self, key: &str, len: u64) -> Result<Bytes, String>;
    /// Drop a block from the cache.
    fn evict(&self, key: &str);
}

/// How long a connection may sit idle, and how long one write may block.
const IDLE: Duration = Duration::from_secs(300);
const HANDSHAKE: Duration = Duration::from_secs(5);
const SEND: Duration = Duration::from_secs(30);

/// A running member server.
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Server {
    /// Listen on `listen` (`ip:port`; port 0 picks one) and serve.
    pub fn start(
        listen: &str,
        secret: Secret,
        source: Arc<dyn BlockSource>,
        metrics: Arc<Metrics>,
        tls: Option<Arc<Tls>>,
    ) -> std::io::Result<Server> {
        let listener = TcpListener::bind(listen).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}"))
        })?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::Builder::new()
            .name("group-accept".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stopping.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (secret, source, metrics, tls) =
                        (secret.clone(), source.clone(), metrics.clone(), tls.clone());
                    let spawned =
                        std::thread::Builder::new()
                            .name("group-conn".into())
                            .spawn(move || {
                                serve(conn, &secret, source.as_ref(), &metrics, tls.as_deref())
                            });
                    if let Err(e) = spawned {
                        warn!(error = %e, "cannot start a thread for a peer connection");
                    }
                }
            })?;
        info!(%addr, "cache group member listening");
        Ok(Server { addr, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop accepting connections (those open finish their request).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A key a peer may ask for: relative, no `..`, as block keys are.
fn plausible_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('/')
        && !key
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
}

fn serve(
    conn: TcpStream,
    secret: &Secret,
    source: &dyn BlockSource,
    metrics: &Metrics,
    tls: Option<&Tls>,
) {
    let peer = conn
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let _ = conn.set_nodelay(true);
    let _ = conn.set_read_timeout(Some(HANDSHAKE));
    let _ = conn.set_write_timeout(Some(SEND));
    let mut stream = match tls {
        Some(t) => match t.accept(conn) {
            Ok(s) => s,
            Err(e) => {
                warn!(%peer, error = %e, "cache group connection refused");
                return;
            }
        },
        None => Stream::Plain(conn),
    };
    let greeted = proto::server_handshake(&mut stream, secret).and_then(|_| Ok(stream.flush()?));
    if let Err(e) = greeted {
        metrics.group_auth_failures.inc();
        warn!(%peer, error = %e, "cache group connection refused");
        return;
    }
    let _ = stream.tcp().set_read_timeout(Some(IDLE));
    let mut io = BufReader::new(stream);
    loop {
        let req = match proto::read_request(&mut io) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                debug!(%peer, error = %e, "peer connection ended");
                return;
            }
        };
        let _span =
            tracing::debug_span!("serve_block", %peer, op = ?req.op, key = %req.key).entered();
        let conn = io.get_mut();
        if !plausible_key(&req.key) {
            warn!(%peer, key = %req.key, "peer asked for a key that is no block key");
            let _ = proto::write_failed(conn, "not a block key");
            let _ = conn.flush();
            return;
        }
        let answered = answer(conn, &req, secret, source, metrics).and_then(|_| Ok(conn.flush()?));
        if let Err(e) = answered {
            debug!(%peer, key = %req.key, error = %e, "cannot answer a peer");
            return;
        }
    }
}

fn answer(
    conn: &mut Stream,
    req: &proto::Request,
    secret: &Secret,
    source: &dyn BlockSource,
    metrics: &Metrics,
) -> Result<(), ProtoError> {
    match req.op {
        Op::Evict => {
            source.evict(&req.key);
            proto::write_done(conn)
        }
        Op::Check => match source.held(&req.key) {
            Some(_) => proto::write_done(conn),
            None => proto::write_missing(conn),
        },
        Op::Peek | Op::Get | Op::Warm => {
            let held = match source.held(&req.key) {
                Some(h) => {
                    metrics.group_hits.inc();
                    h
                }
                None if req.op == Op::Peek => return proto::write_missing(conn),
                None => {
                    metrics.group_misses.inc();
                    match source.fetch(&req.key, req.len) {
                        Ok(data) => Held::Memory { data, sums: None },
                        Err(why) => return proto::write_failed(conn, &why),
                    }
                }
            };
            if req.op == Op::Warm {
                return proto::write_done(conn);
            }
            send(conn, held, req.len, secret.tag(&req.key), metrics)
        }
    }
}

/// Send a block with its sums, bound to `tag` (those of a disk copy's
/// trailer are already).
fn send(
    conn: &mut Stream,
    held: Held,
    want: u64,
    tag: u32,
    metrics: &Metrics,
) -> Result<(), ProtoError> {
    match held {
        Held::Memory { data, sums } => {
            if data.len() as u64 != want {
                return proto::write_failed(conn, "cached block has another length");
            }
            let sums = sums.unwrap_or_else(|| proto::sums_of(&data, tag));
            proto::write_data_header(conn, data.len(), &sums)?;
            conn.write_all(&data)?;
            metrics.group_served_bytes.inc_by(data.len() as u64);
        }
        Held::File { file, len, sums } => {
            if len as u64 != want {
                return proto::write_failed(conn, "cached block has another length");
            }
            proto::write_data_header(conn, len, &sums)?;
            if conn.is_plain() {
                sendfile_all(conn.tcp(), &file, len)?;
            } else {
                // TLS encrypts in user space: copy the file through.
                let mut left = (&file).take(len as u64);
                std::io::copy(&mut left, conn)?;
            }
            metrics.group_served_bytes.inc_by(len as u64);
        }
    }
    Ok(())
}

/// Send the first `len` bytes of `file` with sendfile(2): the data goes
/// from the page cache to the socket without passing through this process.
fn sendfile_all(conn: &TcpStream, file: &std::fs::File, len: usize) -> std::io::Result<()> {
    let mut offset: libc::off_t = 0;
    while (offset as usize) < len {
        let left = len - offset as usize;
        // SAFETY: both descriptors are open for the duration of the call and
        // `offset` is a valid pointer to a local.
        let n = unsafe { libc::sendfile(conn.as_raw_fd(), file.as_raw_fd(), &mut offset, left) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "cache file shorter than its block",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_block_keys_are_served() {
        assert!(plausible_key("vol/chunks/0/0/1_0_4194304"));
        assert!(plausible_key("ext/12-0badf00d/3"));
        for bad in ["", "/etc/passwd", "vol/../../etc", "a//b", "./x"] {
            assert!(!plausible_key(bad), "{bad:?}");
        }
    }
}
