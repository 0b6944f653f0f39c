//! The cache-group options of `tessera mount` and `tessera cache-server`
//! (joining is `tessera_chunk::membership`).

use std::sync::Arc;

use anyhow::{bail, Result};
use tessera_cachegroup::Tls;

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
    Ok(tessera_cachegroup::check_group_name(name)?)
}
