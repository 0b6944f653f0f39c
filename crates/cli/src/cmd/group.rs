//! Taking part in a cache group, for `tessera mount --cache-group` and
//! `tessera cache-server`: serve this process's caches to peers, register
//! as a member, and let the data path ask blocks' owners. A member given
//! weight 0 drains: it hands each block it holds to the block's new owner
//! and drops it, and reports an empty cache once done.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tessera_cachegroup::{Answer, Group, GroupConfig, Op, PeerTimeouts, Server, Tls};
use tessera_chunk::{ChunkStore, Serving};
use tessera_meta::{Format, MemberRecord, Meta};
use tessera_metrics::Metrics;
use tracing::{info, warn};

/// Heartbeat of group members, and the silence after which one is out.
const HEARTBEAT: Duration = Duration::from_secs(1);
const MEMBER_TIMEOUT: Duration = Duration::from_secs(5);

/// Cache group options of a mount.
#[derive(clap::Args, Debug, Clone)]
pub struct GroupArgs {
    /// Take part in this cache group: blocks are asked of their owner
    /// before object storage, and this mount's cache serves the group.
    #[arg(long, help_heading = "Cache group")]
    pub cache_group: Option<String>,
    /// Use the group's caches without serving this mount's (a consumer).
    #[arg(long, requires = "cache_group", help_heading = "Cache group")]
    pub no_sharing: bool,
    /// Address peers reach this member at (port 0 picks one); "auto" is
    /// this host's address.
    #[arg(long, default_value = "auto", help_heading = "Cache group")]
    pub group_listen: String,
    /// This member's share of the blocks relative to the others (0 drains
    /// it).
    #[arg(long, default_value_t = 1, help_heading = "Cache group")]
    pub group_weight: u32,
    /// Seconds after a membership change during which a block's new owner
    /// asks its previous owner before object storage.
    #[arg(long, value_parser = crate::common::parse_seconds, default_value_t = 600.0, help_heading = "Cache group")]
    pub backup_period: f64,
    #[command(flatten)]
    pub tls: GroupTlsArgs,
}

/// TLS between members.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct GroupTlsArgs {
    /// CA certificate (PEM) that members' certificates are checked
    /// against; turns on TLS between members.
    #[arg(long, value_name = "PEM", help_heading = "Cache group")]
    pub group_tls_ca: Option<std::path::PathBuf>,
    /// This member's certificate chain (PEM), issued for the address it is
    /// reached at.
    #[arg(
        long,
        value_name = "PEM",
        requires = "group_tls_ca",
        help_heading = "Cache group"
    )]
    pub group_tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --group-tls-cert.
    #[arg(
        long,
        value_name = "PEM",
        requires = "group_tls_ca",
        help_heading = "Cache group"
    )]
    pub group_tls_key: Option<std::path::PathBuf>,
}

impl GroupTlsArgs {
    /// The TLS settings, or None when TLS is off; `serves` asks for the
    /// server side too.
    pub fn load(&self, serves: bool) -> Result<Option<Arc<Tls>>> {
        let Some(ca) = &self.group_tls_ca else {
            return Ok(None);
        };
        let server = match (serves, &self.group_tls_cert, &self.group_tls_key) {
            (false, _, _) => None,
            (true, Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            (true, _, _) => bail!(
                "a member that serves over TLS needs --group-tls-cert and --group-tls-key (a consumer, --no-sharing, needs only --group-tls-ca)"
            ),
        };
        Ok(Some(Arc::new(Tls::load(ca, server)?)))
    }
}

/// A group name: letters, digits, `-`, `_`, `.`; 1 to 63 characters.
pub fn check_group_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        bail!("invalid cache group name {name:?}: use 1 to 63 letters, digits, '-', '_' or '.'");
    }
    Ok(())
}

/// This host's address as others see it: the source address of a route
/// out (no packet is sent), else loopback.
fn host_ip() -> IpAddr {
    UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("10.254.254.254:9")?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// Where to listen, from `auto`, `ip`, `ip:port` or `:port`.
fn listen_addr(spec: &str) -> Result<SocketAddr> {
    let spec = spec.trim();
    if spec == "auto" {
        return Ok(SocketAddr::new(host_ip(), 0));
    }
    if let Ok(a) = spec.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = spec.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 0));
    }
    if let Some(port) = spec.strip_prefix(':').and_then(|p| p.parse::<u16>().ok()) {
        return Ok(SocketAddr::new(host_ip(), port));
    }
    Err(anyhow!(
        "invalid listen address {spec:?}: use IP:PORT (e.g. 10.0.0.5:9800), IP, :PORT or auto"
    ))
}

/// How a process joins.
pub struct JoinSpec<'a> {
    pub name: &'a str,
    /// Listen address and weight when sharing; None for a consumer.
    pub share: Option<(&'a str, u32)>,
    pub backup_period: Duration,
    pub kind: &'a str,
    pub tls: Option<Arc<Tls>>,
}

/// This process in a group: the view and, when sharing, the server.
pub struct Membership {
    pub group: Arc<Group>,
    pub server: Option<Server>,
}

impl Membership {
    pub fn leave(&self) {
        self.group.leave();
        if let Some(s) = &self.server {
            s.stop();
        }
    }
}

pub fn join(
    meta: &Arc<Meta>,
    format: &Format,
    chunks: &Arc<ChunkStore>,
    metrics: &Arc<Metrics>,
    spec: JoinSpec<'_>,
) -> Result<Membership> {
    check_group_name(spec.name)?;
    let secret = tessera_cachegroup::Secret::derive(&format.uuid, spec.name);
    let (server, member) = match spec.share {
        Some((listen, weight)) => {
            let want = listen_addr(listen)?;
            let server = Server::start(
                &want.to_string(),
                secret,
                Arc::new(Serving(chunks.clone())),
                metrics.clone(),
                spec.tls.clone(),
            )
            .with_context(|| format!("cache group {}", spec.name))?;
            // Peers need an address they can reach: not 0.0.0.0.
            let mut advertised = server.addr();
            if advertised.ip().is_unspecified() {
                advertised.set_ip(host_ip());
            }
            let record = MemberRecord {
                id: advertised.to_string(),
                addr: advertised.to_string(),
                weight,
                kind: spec.kind.to_string(),
                ..Default::default()
            };
            (Some(server), Some(record))
        }
        None => (None, None),
    };
    let usage_chunks = chunks.clone();
    let group = Group::join(
        meta.clone(),
        GroupConfig {
            name: spec.name.to_string(),
            volume_uuid: format.uuid.clone(),
            member: member.clone(),
            heartbeat: HEARTBEAT,
            member_timeout: MEMBER_TIMEOUT,
            backup_period: spec.backup_period,
            timeouts: PeerTimeouts::default(),
            tls: spec.tls.clone(),
        },
        Box::new(move || match &usage_chunks.disk {
            Some(d) => (
                d.used(),
                usage_chunks
                    .config()
                    .disk_cache
                    .as_ref()
                    .map(|c| c.capacity)
                    .unwrap_or(0),
            ),
            None => (
                usage_chunks.mem.used() as u64,
                usage_chunks.config().mem_cache_size as u64,
            ),
        }),
        metrics.clone(),
    )
    .with_context(|| format!("cannot join cache group {}", spec.name))?;
    chunks.set_group(group.clone());
    match &member {
        Some(m) => {
            info!(group = spec.name, member = %m.id, weight = m.weight, "joined the cache group")
        }
        None => info!(group = spec.name, "using the cache group without sharing"),
    }
    if member.as_ref().is_some_and(|m| m.weight == 0) {
        start_drain(chunks.clone(), group.clone());
    }
    Ok(Membership { group, server })
}

/// Hand every cached block to its owner (asking it to warm the block,
/// which it takes from us within the backup period) and drop our copy,
/// until the cache is empty.
fn start_drain(chunks: Arc<ChunkStore>, group: Arc<Group>) {
    let spawned = std::thread::Builder::new()
        .name("group-drain".into())
        .spawn(move || {
            let Some(disk) = chunks.disk.as_ref() else {
                return;
            };
            loop {
                std::thread::sleep(Duration::from_secs(2));
                let keys = disk.keys();
                if keys.is_empty() {
                    continue;
                }
                let mut moved = 0usize;
                for key in keys {
                    let Some(owner) = group.owner(&key) else {
                        break; // nobody to hand blocks to yet
                    };
                    if group.is_me(&owner) {
                        continue;
                    }
                    let Some((_, len, _)) = disk.open_sealed(&key) else {
                        continue;
                    };
                    match group.peers.request(&owner.addr, Op::Warm, &key, len as u64) {
                        Ok(Answer::Done) => {
                            chunks.mem.remove(&key);
                            disk.remove(&key);
                            moved += 1;
                        }
                        Ok(_) => {}
                        Err(e) => warn!(key = %key, error = %e, "drain: cannot hand a block over"),
                    }
                }
                if moved > 0 {
                    info!(
                        moved,
                        left = disk.len(),
                        "drain: blocks handed to their owners"
                    );
                }
            }
        });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start draining");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_and_group_names() {
        assert_eq!(
            listen_addr("127.0.0.2:9800").expect("ip:port"),
            "127.0.0.2:9800".parse().expect("addr")
        );
        assert_eq!(listen_addr("127.0.0.3").expect("ip").port(), 0);
        assert_eq!(listen_addr(":9801").expect(":port").port(), 9801);
        assert!(listen_addr("auto").is_ok());
        assert!(listen_addr("nonsense:port")
            .expect_err("bad")
            .to_string()
            .contains("invalid listen address"));
        assert!(check_group_name("gpu-a100.rack_1").is_ok());
        for bad in ["", "a b", "x/y", &"g".repeat(64)] {
            assert!(check_group_name(bad).is_err(), "{bad:?}");
        }
    }
}
