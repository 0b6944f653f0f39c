//! `tessera csi --endpoint unix:///csi/csi.sock --node-id NODE [--mode
//! node|controller|all]`: the Kubernetes CSI plugin (`tessera_csi`),
//! serving until SIGTERM or SIGINT. The volumes it mounted keep running
//! when it stops.

use std::path::PathBuf;

use anyhow::{Context, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The socket kubelet and the registrar talk to.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    pub endpoint: String,
    /// This node's name (the Kubernetes node name).
    #[arg(long, env = "NODE_NAME", default_value = "")]
    pub node_id: String,
    /// Where the plugin keeps its state file, the volumes' shared mount
    /// points and their logs (a host directory that outlives the pod).
    #[arg(long, default_value = "/var/lib/tessera/csi")]
    pub state_dir: PathBuf,
    /// Which services: node (the DaemonSet), controller (the Deployment
    /// beside the external provisioner), or all.
    #[arg(long, default_value = "node", value_parser = ["node", "controller", "all"])]
    pub mode: String,
    /// Serve the plugin's Prometheus metrics on HOST:PORT ("none": off).
    #[arg(long, default_value = "none")]
    pub metrics: String,
}

pub fn run(a: Args) -> Result<()> {
    if a.mode != "controller" && a.node_id.is_empty() {
        anyhow::bail!("--node-id (or NODE_NAME) is needed for the node service");
    }
    let socket = tessera_csi::socket_path(&a.endpoint)?;
    let mode = match a.mode.as_str() {
        "controller" => tessera_csi::Mode::Controller,
        "all" => tessera_csi::Mode::All,
        _ => tessera_csi::Mode::Node,
    };
    let config = tessera_csi::NodeConfig {
        node_id: a.node_id,
        state_dir: a.state_dir,
        exe: std::env::current_exe().context("cannot find the tessera binary")?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let shutdown = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return std::future::pending().await,
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("stopping; the volumes stay mounted");
        };
        let metrics = (a.metrics != "none").then_some(a.metrics.as_str());
        tessera_csi::serve(config, mode, &socket, metrics, shutdown).await
    })?;
    Ok(())
}
