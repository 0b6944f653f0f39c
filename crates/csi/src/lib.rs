//! `tessera csi`: the Kubernetes CSI v1 node plugin. It serves the
//! Identity and Node services over a unix socket (gRPC, code generated
//! from `proto/csi.proto` at build time).
//!
//! * NodeStageVolume mounts a volume once per node and option set: one
//!   `tessera mount` process (daemonized, so it outlives a restart of the
//!   plugin) per metadata URL, mount options and credentials, its cache
//!   shared by every pod on the node; the staging path is a bind mount of
//!   it (or of the volume's `subdir`).
//! * NodePublishVolume bind-mounts the staging path at the pod's target
//!   path, read-only where asked; Unpublish and Unstage undo exactly that,
//!   and the last Unstage of a shared mount unmounts it.
//! * What is mounted where is kept in a state file, so a restarted plugin
//!   knows its mounts; a watchdog finds a mount process that died, mounts
//!   the volume again and re-binds the staging and target paths (a pod
//!   that held the dead mount is told in the log: it sees ENOTCONN until
//!   it restarts).
//! * Every call is idempotent, as the CSI spec asks.

pub mod proto {
    //! The generated CSI messages, servers and clients.
    #![allow(
        clippy::all,
        clippy::pedantic,
        clippy::unwrap_used,
        clippy::expect_used
    )]
    tonic::include_proto!("csi.v1");
}

mod checks;
mod controller;
mod identity;
mod metrics;
mod mounts;
mod node;
mod state;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use node::NodeConfig;

/// The plugin's name, as the CSIDriver object and StorageClasses name it.
pub const DRIVER_NAME: &str = "csi.tessera.io";

/// Why the plugin could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum CsiError {
    #[error("endpoint {0:?}: give unix:///path/to/csi.sock")]
    Endpoint(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("state file {path}: {reason}")]
    State { path: PathBuf, reason: String },
}

/// The socket path of a `unix://` endpoint (`unix:///csi/csi.sock`, or a
/// bare path).
pub fn socket_path(endpoint: &str) -> Result<PathBuf, CsiError> {
    let path = endpoint
        .strip_prefix("unix://")
        .unwrap_or(endpoint)
        .to_string();
    if !path.starts_with('/') {
        return Err(CsiError::Endpoint(endpoint.to_string()));
    }
    Ok(PathBuf::from(path))
}

/// Which services a plugin process serves: the node plugin (a DaemonSet),
/// the controller (a Deployment beside the external provisioner), or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Node,
    Controller,
    All,
}

/// Serve Identity and the services of `mode` on `socket` until `shutdown`
/// resolves. Mounts are left running when it returns.
pub async fn serve(
    config: NodeConfig,
    mode: Mode,
    socket: &Path,
    metrics_addr: Option<&str>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), CsiError> {
    let metrics = Arc::new(metrics::PluginMetrics::default());
    if let Some(addr) = metrics_addr {
        let m = metrics.clone();
        let bound = tessera_metrics::serve_text(addr, move || m.render()).map_err(|source| {
            CsiError::Io {
                what: format!("cannot serve metrics on {addr}"),
                source,
            }
        })?;
        tracing::info!(%bound, "serving metrics");
    }
    let io = |what: String| move |source| CsiError::Io { what, source };
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
    }
    // A socket left by a killed plugin is in the way of the new one.
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(format!("cannot remove {}", socket.display()))(e)),
    }
    let listener = tokio::net::UnixListener::bind(socket)
        .map_err(io(format!("cannot listen on {}", socket.display())))?;
    let controller = mode != Mode::Node;
    let mut router = tonic::transport::Server::builder()
        .add_service(proto::identity_server::IdentityServer::new(
            identity::Identity { controller },
        ))
        .add_optional_service(controller.then(|| {
            proto::controller_server::ControllerServer::new(controller::Controller {
                metrics: metrics.clone(),
            })
        }));
    let mut watchdog = None;
    if mode != Mode::Controller {
        let node = Arc::new(node::Node::open(config, metrics.clone())?);
        // Mounts that died while no plugin ran are mounted again now, then
        // checked every few seconds.
        let watched = node.clone();
        watchdog = Some(tokio::spawn(async move {
            loop {
                let n = watched.clone();
                let _ = tokio::task::spawn_blocking(move || n.repair()).await;
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        }));
        router = router.add_service(proto::node_server::NodeServer::new(node::Service(node)));
    }
    tracing::info!(socket = %socket.display(), ?mode, "CSI plugin serving");
    let served = router
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown,
        )
        .await;
    if let Some(w) = watchdog {
        w.abort();
    }
    served.map_err(CsiError::from)
}
