//! The metrics of one mount, in Prometheus form.
//!
//! [`Metrics`] is created once per mount and shared (as an `Arc`) by every
//! layer that reports something: the object store (request latency per
//! method, bytes moved), the block caches (hits and bytes per tier,
//! corruption, usage), the data path (readahead, upload queue, write buffer)
//! and the VFS (operations). [`Metrics::render`] gives the text exposition
//! format served on `--metrics` and in the volume's `.stats` file, which
//! `tessera stats` reads back.
//!
//! Instances rather than a process-wide registry keep tests that run several
//! volumes in one process from seeing each other's counts.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// One label, e.g. `("tier", "disk")`.
pub type Label = [(&'static str, &'static str); 1];

/// Cache tiers, as they appear in the `tier` label.
pub mod tier {
    pub const MEMORY: &str = "memory";
    pub const DISK: &str = "disk";
    pub const OBJECT: &str = "object";
    /// Another member of the cache group.
    pub const PEER: &str = "peer";
}

/// Builds latency histograms from 100 µs to about 52 s.
#[derive(Clone)]
pub struct LatencyBuckets;

impl MetricConstructor<Histogram> for LatencyBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.0001, 2.0, 20))
    }
}

/// A counter that reads its value from an atomic owned elsewhere (such as
/// the metadata engine's transaction restart count).
type F64Gauge = Gauge<f64, AtomicU64>;

/// Every metric of one mount.
pub struct Metrics {
    registry: Registry,
    /// Reads served per tier (memory, disk, object) and their bytes.
    pub tier_reads: Family<Label, Counter>,
    pub tier_read_bytes: Family<Label, Counter>,
    /// Cached blocks and bytes per tier right now.
    pub cache_blocks: Family<Label, Gauge>,
    pub cache_bytes: Family<Label, Gauge>,
    pub cache_evictions: Family<Label, Counter>,
    /// Cached blocks whose checksum did not match; each was dropped and fetched again.
    pub corrupt_blocks: Counter,
    /// Small random reads served from the pieces of a block on the disk
    /// cache that hold them, without reading the rest of the block.
    pub disk_range_reads: Counter,
    /// Blocks fetched from object storage whose checksum did not match (each
    /// fetch is retried once before the read fails).
    pub corrupt_objects: Counter,
    /// Object requests by method: latency, failures, bytes.
    pub object_latency: Family<Label, Histogram, LatencyBuckets>,
    pub object_errors: Family<Label, Counter>,
    pub object_bytes: Family<Label, Counter>,
    /// Time spent waiting for the upload or download rate limit.
    pub throttle_seconds: Family<Label, Counter<f64, AtomicU64>>,
    /// Block fetches started ahead of the reader, and those in flight now.
    pub readahead_blocks: Counter,
    pub readahead_inflight: Gauge,
    /// Reads that had to wait for a block fetch, and the seconds they waited.
    pub read_waits: Counter,
    pub read_wait_seconds: Counter<f64, AtomicU64>,
    /// Block uploads queued or running, and bytes held by write buffers.
    pub upload_queue: Gauge,
    pub buffer_bytes: Gauge,
    /// Blocks staged on local disk by `--writeback`, not yet uploaded.
    pub staging_blocks: Gauge,
    pub staging_bytes: Gauge,
    /// File system operations by name, and bytes through read and write.
    pub ops: Family<Label, Counter>,
    /// Failed file system operations, by name and errno.
    pub op_errors: Family<[(&'static str, &'static str); 2], Counter>,
    pub fuse_read_bytes: Counter,
    pub fuse_write_bytes: Counter,
    /// Metadata transactions restarted after a conflict.
    pub meta_txn_restarts: F64Gauge,
    /// Metadata transactions run (each at least one engine round trip).
    pub meta_txns: F64Gauge,
    /// Of those, the ones of background work (heartbeats, syncs, cleaning).
    pub meta_background_txns: F64Gauge,
    /// Cache group, as a reader: requests to peers by result (hit, miss,
    /// error, down), and reads that went to object storage instead.
    pub group_requests: Family<Label, Counter>,
    pub group_fallbacks: Counter,
    /// Cache group, as a member serving others: blocks served from its
    /// cache (hits), fetched for a peer (misses), bytes sent, connections
    /// refused for a wrong secret or protocol.
    pub group_hits: Counter,
    pub group_misses: Counter,
    pub group_served_bytes: Counter,
    pub group_auth_failures: Counter,
    /// Live members in the group's view.
    pub group_members: Gauge,
    /// Directories of lazy imports listed from their bucket.
    pub lazy_listings: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("tessera"),
            tier_reads: Family::default(),
            tier_read_bytes: Family::default(),
            cache_blocks: Family::default(),
            cache_bytes: Family::default(),
            cache_evictions: Family::default(),
            corrupt_blocks: Counter::default(),
            disk_range_reads: Counter::default(),
            corrupt_objects: Counter::default(),
            object_latency: Family::new_with_constructor(LatencyBuckets),
            object_errors: Family::default(),
            object_bytes: Family::default(),
            throttle_seconds: Family::default(),
            readahead_blocks: Counter::default(),
            readahead_inflight: Gauge::default(),
            read_waits: Counter::default(),
            read_wait_seconds: Counter::default(),
            upload_queue: Gauge::default(),
            buffer_bytes: Gauge::default(),
            staging_blocks: Gauge::default(),
            staging_bytes: Gauge::default(),
            ops: Family::default(),
            op_errors: Family::default(),
            fuse_read_bytes: Counter::default(),
            fuse_write_bytes: Counter::default(),
            meta_txn_restarts: F64Gauge::default(),
            meta_txns: F64Gauge::default(),
            meta_background_txns: F64Gauge::default(),
            group_requests: Family::default(),
            group_fallbacks: Counter::default(),
            group_hits: Counter::default(),
            group_misses: Counter::default(),
            group_served_bytes: Counter::default(),
            group_auth_failures: Counter::default(),
            group_members: Gauge::default(),
            lazy_listings: Counter::default(),
        };
        let r = &mut m.registry;
        r.register(
            "tier_reads",
            "Block reads served, by tier (memory, disk, object)",
            m.tier_reads.clone(),
        );
        r.register(
            "tier_read_bytes",
            "Bytes of blocks served, by tier",
            m.tier_read_bytes.clone(),
        );
        r.register(
            "cache_blocks",
            "Blocks cached now, by tier",
            m.cache_blocks.clone(),
        );
        r.register(
            "cache_bytes",
            "Bytes cached now, by tier (on disk: blocks and whole-file local copies)",
            m.cache_bytes.clone(),
        );
        r.register(
            "cache_evictions",
            "Blocks evicted, by tier",
            m.cache_evictions.clone(),
        );
        r.register(
            "lazy_listings",
            "Directories of lazy imports listed from their bucket",
            m.lazy_listings.clone(),
        );
        r.register(
            "corrupt_blocks",
            "Cached blocks that failed their checksum and were fetched again",
            m.corrupt_blocks.clone(),
        );
        r.register(
            "disk_range_reads",
            "Small random reads served from part of a block on the disk cache",
            m.disk_range_reads.clone(),
        );
        r.register(
            "corrupt_objects",
            "Blocks fetched from object storage that failed their checksum",
            m.corrupt_objects.clone(),
        );
        r.register(
            "object_request_seconds",
            "Object storage request latency, by method",
            m.object_latency.clone(),
        );
        r.register(
            "object_request_errors",
            "Failed object storage requests, by method",
            m.object_errors.clone(),
        );
        r.register(
            "object_bytes",
            "Bytes moved to and from object storage, by method",
            m.object_bytes.clone(),
        );
        r.register(
            "throttle_seconds",
            "Seconds requests waited for the rate limit, by direction",
            m.throttle_seconds.clone(),
        );
        r.register(
            "readahead_blocks",
            "Blocks fetched ahead of the reader",
            m.readahead_blocks.clone(),
        );
        r.register(
            "readahead_inflight",
            "Readahead block fetches in flight",
            m.readahead_inflight.clone(),
        );
        r.register(
            "read_waits",
            "Reads that waited for a block fetch",
            m.read_waits.clone(),
        );
        r.register(
            "read_wait_seconds",
            "Seconds reads spent waiting for block fetches",
            m.read_wait_seconds.clone(),
        );
        r.register(
            "upload_queue",
            "Block uploads queued or running",
            m.upload_queue.clone(),
        );
        r.register(
            "buffer_bytes",
            "Bytes held by write buffers",
            m.buffer_bytes.clone(),
        );
        r.register(
            "staging_blocks",
            "Write-back blocks staged on disk and not yet uploaded",
            m.staging_blocks.clone(),
        );
        r.register(
            "staging_bytes",
            "Bytes of write-back blocks staged on disk",
            m.staging_bytes.clone(),
        );
        r.register("ops", "File system operations, by name", m.ops.clone());
        r.register(
            "op_errors",
            "Failed file system operations, by name and errno",
            m.op_errors.clone(),
        );
        r.register(
            "fuse_read_bytes",
            "Bytes returned by read",
            m.fuse_read_bytes.clone(),
        );
        r.register(
            "fuse_write_bytes",
            "Bytes accepted by write",
            m.fuse_write_bytes.clone(),
        );
        r.register(
            "meta_txn_restarts",
            "Metadata transactions retried after a conflict",
            m.meta_txn_restarts.clone(),
        );
        r.register(
            "meta_txns",
            "Metadata transactions run, each at least one engine round trip",
            m.meta_txns.clone(),
        );
        r.register(
            "meta_background_txns",
            "Of the metadata transactions, those of background work (heartbeats, usage and quota syncs, cleaning)",
            m.meta_background_txns.clone(),
        );
        r.register(
            "group_requests",
            "Block requests to cache group peers, by result (hit, miss, error, down)",
            m.group_requests.clone(),
        );
        r.register(
            "group_fallbacks",
            "Block reads that went to object storage because a peer failed",
            m.group_fallbacks.clone(),
        );
        r.register(
            "group_hits",
            "Blocks served to peers from this member's cache",
            m.group_hits.clone(),
        );
        r.register(
            "group_misses",
            "Blocks this member fetched from object storage for a peer",
            m.group_misses.clone(),
        );
        r.register(
            "group_served_bytes",
            "Bytes of blocks sent to peers",
            m.group_served_bytes.clone(),
        );
        r.register(
            "group_auth_failures",
            "Peer connections refused: wrong group secret or protocol",
            m.group_auth_failures.clone(),
        );
        r.register(
            "group_members",
            "Live members of the cache group",
            m.group_members.clone(),
        );
        m
    }

    /// Count one failed operation by name and errno name.
    pub fn op_error(&self, name: &'static str, errno: &'static str) {
        self.op_errors
            .get_or_create(&[("op", name), ("errno", errno)])
            .inc();
    }

    /// One directory of a lazy import listed from its bucket.
    pub fn lazy_listing(&self) {
        self.lazy_listings.inc();
    }

    /// Count one operation by name.
    pub fn op(&self, name: &'static str) {
        self.ops.get_or_create(&[("op", name)]).inc();
    }

    /// A served block read of `bytes` from `tier`.
    pub fn tier_read(&self, tier: &'static str, bytes: u64) {
        let l = [("tier", tier)];
        self.tier_reads.get_or_create(&l).inc();
        self.tier_read_bytes.get_or_create(&l).inc_by(bytes);
    }

    /// A cache tier's usage after a change, and the blocks it evicted.
    pub fn cache_usage(&self, tier: &'static str, bytes: u64, blocks: usize, evicted: u64) {
        let l = [("tier", tier)];
        self.cache_bytes.get_or_create(&l).set(bytes as i64);
        self.cache_blocks.get_or_create(&l).set(blocks as i64);
        if evicted > 0 {
            self.cache_evictions.get_or_create(&l).inc_by(evicted);
        }
    }

    /// The text exposition format of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Serve `GET /metrics` (any path, in fact) on `addr` from a background
    /// thread. Returns the bound address (useful with port 0).
    pub fn serve(self: &Arc<Self>, addr: &str) -> std::io::Result<SocketAddr> {
        let me = self.clone();
        serve_text(addr, move || me.render())
    }

    /// Serve on `addr` (HOST:PORT; "none" or "" turns it off), or on one of
    /// the next ten ports when it is taken (several mounts on one host).
    /// Failing to serve is logged, not fatal: the `.stats` file has the
    /// same figures.
    pub fn serve_near(self: &Arc<Self>, addr: &str) -> Option<SocketAddr> {
        if addr == "none" || addr.is_empty() {
            return None;
        }
        let Some((host, port)) = addr
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        else {
            tracing::warn!(addr, "--metrics wants HOST:PORT; metrics are not served");
            return None;
        };
        for p in port..port.saturating_add(10) {
            match self.serve(&format!("{host}:{p}")) {
                Ok(bound) => {
                    tracing::info!(%bound, "serving metrics");
                    return Some(bound);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                Err(e) => {
                    tracing::warn!(addr, error = %e, "cannot serve metrics");
                    return None;
                }
            }
        }
        tracing::warn!(addr, "ports busy; metrics are only in the .stats file");
        None
    }
}

/// Serve what `render` returns (the text exposition format) to every
/// request on `addr`, from a background thread; for registries other than
/// a mount's (the CSI plugin's). Returns the bound address.
pub fn serve_text(
    addr: &str,
    render: impl Fn() -> String + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("tessera-metrics".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut reader = BufReader::new(&conn);
                // Read the request head; the path does not matter.
                let mut line = String::new();
                while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                    line.clear();
                }
                let body = render();
                let mut w = &conn;
                let _ = write!(
                    w,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        })?;
    Ok(local)
}

/// Parse the text exposition format into `(name{labels}, value)` pairs,
/// skipping comments. What `tessera stats` reads from `.stats`.
pub fn parse(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_parses_back() {
        let m = Metrics::new();
        m.tier_read(tier::DISK, 4096);
        m.tier_read(tier::DISK, 4096);
        m.op("read");
        m.object_latency
            .get_or_create(&[("method", "get")])
            .observe(0.003);
        let text = m.render();
        let parsed = parse(&text);
        let get = |n: &str| {
            parsed
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| *v)
                .unwrap_or_else(|| panic!("{n} missing from:\n{text}"))
        };
        assert_eq!(get("tessera_tier_reads_total{tier=\"disk\"}"), 2.0);
        assert_eq!(get("tessera_tier_read_bytes_total{tier=\"disk\"}"), 8192.0);
        assert_eq!(get("tessera_ops_total{op=\"read\"}"), 1.0);
        m.op_error("lookup", "ENOENT");
        m.op_error("lookup", "ENOENT");
        let text = m.render();
        assert!(
            text.contains("tessera_op_errors_total{op=\"lookup\",errno=\"ENOENT\"} 2"),
            "{text}"
        );
        assert_eq!(
            get("tessera_object_request_seconds_count{method=\"get\"}"),
            1.0
        );
    }

    #[test]
    fn serves_over_http() {
        let m = Arc::new(Metrics::new());
        m.op("lookup");
        let addr = m.serve("127.0.0.1:0").expect("bind");
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("send");
        let mut body = String::new();
        std::io::Read::read_to_string(&mut s, &mut body).expect("read");
        assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
        assert!(
            body.contains("tessera_ops_total{op=\"lookup\"} 1"),
            "{body}"
        );
    }

    #[test]
    fn a_busy_metrics_port_moves_to_the_next() {
        let m = Arc::new(Metrics::new());
        let first = m.serve_near("127.0.0.1:0").expect("served");
        let taken = format!("127.0.0.1:{}", first.port());
        let second = m.serve_near(&taken).expect("served next door");
        assert_ne!(second.port(), first.port());
        assert!(m.serve_near("none").is_none());
        assert!(m.serve_near("no-port").is_none());
    }
}
