//! Asking peers for blocks.
//!
//! Connections to each peer are authenticated once and pooled. Every
//! request has a short deadline; a peer that refuses the connection, times
//! out, answers nonsense or sends bytes that fail their checksum is marked
//! down for a while and skipped, and the caller reads from object storage
//! instead — a peer never fails a read.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::BufReader;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::warn;

use crate::proto::{self, Op, ProtoError, Reply, Request, Secret};
use crate::tls::{Stream, Tls};

/// Timeouts and penalties of peer requests.
#[derive(Debug, Clone, Copy)]
pub struct PeerTimeouts {
    pub connect: Duration,
    /// The whole of one request: asking, the peer's own fetch on a miss,
    /// and the transfer.
    pub request: Duration,
    /// The same for a warm-up request: the peer answers once it has the
    /// block from object storage, which over a far link and behind the
    /// warm-up's other blocks can take long; a reader is not waiting on
    /// it, so it is not failed over early.
    pub warm: Duration,
    /// How long a failed peer is left alone.
    pub down_for: Duration,
}

impl Default for PeerTimeouts {
    fn default() -> Self {
        PeerTimeouts {
            connect: Duration::from_millis(500),
            request: Duration::from_secs(5),
            warm: Duration::from_secs(120),
            down_for: Duration::from_secs(10),
        }
    }
}

/// A request that got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {0} is marked down after a recent failure")]
    Down(String),
    #[error("peer {addr}: {source}")]
    Failed {
        addr: String,
        #[source]
        source: ProtoError,
    },
}

/// What a peer said.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Data(Bytes),
    Missing,
    Done,
}

struct Conn {
    io: BufReader<Stream>,
}

/// Pooled, authenticated connections to the members of one group.
pub struct Peers {
    group: String,
    secret: Secret,
    timeouts: PeerTimeouts,
    idle: Mutex<HashMap<String, Vec<Conn>>>,
    down: Mutex<HashMap<String, Instant>>,
    tls: Option<Arc<Tls>>,
}

/// Idle connections kept per peer.
const POOL: usize = 16;

impl Peers {
    pub fn new(
        group: &str,
        secret: Secret,
        timeouts: PeerTimeouts,
        tls: Option<Arc<Tls>>,
    ) -> Peers {
        Peers {
            group: group.to_string(),
            secret,
            timeouts,
            idle: Mutex::new(HashMap::new()),
            down: Mutex::new(HashMap::new()),
            tls,
        }
    }

    pub fn is_down(&self, addr: &str) -> bool {
        let mut down = self.down.lock();
        match down.get(addr) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                down.remove(addr);
                false
            }
            None => false,
        }
    }

    fn mark_down(&self, addr: &str) {
        {
            let mut down = self.down.lock();
            down.insert(addr.to_string(), Instant::now() + self.timeouts.down_for);
        }
        {
            let mut idle = self.idle.lock();
            idle.remove(addr);
        }
    }

    fn connect(&self, addr: &str) -> Result<Conn, ProtoError> {
        let target: SocketAddr = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| ProtoError::Protocol(format!("cannot resolve {addr}")))?;
        let tcp = TcpStream::connect_timeout(&target, self.timeouts.connect)?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(self.timeouts.request))?;
        tcp.set_write_timeout(Some(self.timeouts.request))?;
        let mut s = match &self.tls {
            Some(tls) => tls.connect(&target.ip().to_string(), tcp)?,
            None => Stream::Plain(tcp),
        };
        proto::client_handshake(&mut s, &self.group, &self.secret)?;
        Ok(Conn {
            io: BufReader::with_capacity(256 << 10, s),
        })
    }

    /// One request on `conn` (or a new connection).
    fn exchange(
        &self,
        addr: &str,
        conn: Option<Conn>,
        op: Op,
        key: &str,
        len: u64,
    ) -> Result<(Conn, Reply), ProtoError> {
        let mut conn = match conn {
            Some(c) => c,
            None => self.connect(addr)?,
        };
        let started = Instant::now();
        let limit = if op == Op::Warm {
            self.timeouts.warm
        } else {
            self.timeouts.request
        };
        // Per request: a pooled connection may have served the other kind.
        conn.io.get_ref().tcp().set_read_timeout(Some(limit))?;
        let writer = conn.io.get_mut();
        proto::write_request(
            writer,
            &Request {
                op,
                len,
                key: key.to_string(),
            },
        )?;
        std::io::Write::flush(writer)?;
        let reply = proto::read_reply(&mut conn.io, len, self.secret.tag(key), || {
            if started.elapsed() > limit {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the peer is too slow",
                ))
            } else {
                Ok(())
            }
        })?;
        Ok((conn, reply))
    }

    /// Ask `addr` for a block (blocking; call it off async threads).
    pub fn request(&self, addr: &str, op: Op, key: &str, len: u64) -> Result<Answer, PeerError> {
        let _span = tracing::debug_span!("peer_request", peer = addr, ?op, key).entered();
        if self.is_down(addr) {
            return Err(PeerError::Down(addr.to_string()));
        }
        let pooled = self.idle.lock().get_mut(addr).and_then(Vec::pop);
        let was_pooled = pooled.is_some();
        let mut result = self.exchange(addr, pooled, op, key, len);
        // A pooled connection may have been closed by the peer since (it
        // restarted, or dropped an idle connection): one fresh try before
        // the peer is taken for failed.
        if was_pooled && matches!(&result, Err(ProtoError::Io(_))) {
            result = self.exchange(addr, None, op, key, len);
        }
        match result {
            Ok((conn, reply)) => {
                {
                    let mut idle = self.idle.lock();
                    let pool = idle.entry(addr.to_string()).or_default();
                    if pool.len() < POOL {
                        pool.push(conn);
                    }
                }
                Ok(match reply {
                    Reply::Data(d) => Answer::Data(d),
                    Reply::Missing => Answer::Missing,
                    Reply::Done => Answer::Done,
                })
            }
            // The peer answered, but could not get the block (object
            // storage failed it): the peer itself is fine.
            Err(ProtoError::Remote(why)) => Err(PeerError::Failed {
                addr: addr.to_string(),
                source: ProtoError::Remote(why),
            }),
            Err(e) => {
                warn!(peer = addr, error = %e, "cache group peer failed; reading from object storage, peer marked down for {:?}", self.timeouts.down_for);
                self.mark_down(addr);
                Err(PeerError::Failed {
                    addr: addr.to_string(),
                    source: e,
                })
            }
        }
    }
}
