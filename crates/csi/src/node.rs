//! The Node service: stage (one shared mount per volume and option set,
//! bound at the staging path), publish (a bind at the pod's path), their
//! undoing, volume stats, and the repair of mounts whose process died.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::checks::{
    check_volume, internal, invalid, meta_url_of, mount_capability, required, SECRET_ENV,
};
use crate::metrics::PluginMetrics;
use crate::mounts;
use crate::proto::{
    node_server, node_service_capability, volume_usage, NodeGetCapabilitiesRequest,
    NodeGetCapabilitiesResponse, NodeGetInfoRequest, NodeGetInfoResponse,
    NodeGetVolumeStatsRequest, NodeGetVolumeStatsResponse, NodePublishVolumeRequest,
    NodePublishVolumeResponse, NodeServiceCapability, NodeStageVolumeRequest,
    NodeStageVolumeResponse, NodeUnpublishVolumeRequest, NodeUnpublishVolumeResponse,
    NodeUnstageVolumeRequest, NodeUnstageVolumeResponse, VolumeUsage,
};
use crate::state::{Published, Shared, Staged, State};
use crate::CsiError;

/// How the node plugin runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's name, as NodeGetInfo reports it.
    pub node_id: String,
    /// Where the state file, shared mount points and mount logs live.
    pub state_dir: PathBuf,
    /// The `tessera` binary that mounts volumes.
    pub exe: PathBuf,
}

/// Volume attributes that become `tessera mount` flags: (key, takes a
/// value). `subdir` is handled by the plugin (it binds that directory).
const MOUNT_OPTIONS: &[(&str, bool)] = &[
    ("cache-group", true),
    ("open-cache", true),
    ("read-only", false),
    ("cache-size", true),
    ("mem-cache-size", true),
    ("cache-dir", true),
    ("buffer-size", true),
    ("max-readahead", true),
    ("writeback", false),
    ("upload-limit", true),
    ("download-limit", true),
];

pub struct Node {
    config: NodeConfig,
    state: Mutex<State>,
    metrics: Arc<PluginMetrics>,
}

/// FNV-1a, 64 bits: a stable name for an option set across versions.
fn fnv64(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

impl Node {
    pub fn open(config: NodeConfig, metrics: Arc<PluginMetrics>) -> Result<Node, CsiError> {
        std::fs::create_dir_all(config.state_dir.join("mounts")).map_err(|source| {
            CsiError::Io {
                what: format!("cannot create {}", config.state_dir.display()),
                source,
            }
        })?;
        let state = State::load(&config.state_dir.join("state.json"))?;
        info!(
            shared = state.shared.len(),
            staged = state.staged.len(),
            published = state.published.len(),
            "node plugin state loaded"
        );
        let node = Node {
            config,
            state: Mutex::new(state),
            metrics,
        };
        node.gauges(&node.state.lock());
        Ok(node)
    }

    fn gauges(&self, state: &State) {
        self.metrics.mounts.set(state.shared.len() as i64);
        self.metrics.staged.set(state.staged.len() as i64);
        self.metrics.published.set(state.published.len() as i64);
    }

    fn save(&self, state: &State) -> Result<(), Status> {
        self.gauges(state);
        state
            .save(&self.config.state_dir.join("state.json"))
            .map_err(|e| internal("cannot save the plugin's state", e))
    }

    /// The shared mount a stage request asks for: its id and record.
    fn shared_for(&self, req: &NodeStageVolumeRequest) -> Result<(String, Shared), Status> {
        let meta_url = meta_url_of(&req.secrets)?;
        let mut args = Vec::new();
        // In key order: the same options make the same shared mount.
        let context: BTreeMap<&String, &String> = req.volume_context.iter().collect();
        for (key, value) in context {
            if key == "subdir" || key.starts_with("csi.storage.k8s.io/") {
                continue;
            }
            match MOUNT_OPTIONS.iter().find(|(k, _)| k == key) {
                Some((_, true)) => {
                    args.push(format!("--{key}"));
                    args.push(value.to_string());
                }
                Some((_, false)) if value == "true" => args.push(format!("--{key}")),
                Some((_, false)) if value == "false" => {}
                Some(_) => {
                    return Err(invalid(format!(
                        "volume attribute {key}={value:?}: give true or false"
                    )))
                }
                None => {
                    return Err(invalid(format!(
                        "unknown volume attribute {key:?}: known are subdir, {}",
                        MOUNT_OPTIONS
                            .iter()
                            .map(|o| o.0)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )))
                }
            }
        }
        let env: Vec<(String, String)> = SECRET_ENV
            .iter()
            .filter_map(|(key, var)| Some((var.to_string(), req.secrets.get(*key)?.clone())))
            .collect();
        let mut parts: Vec<&str> = vec![&meta_url];
        parts.extend(args.iter().map(String::as_str));
        parts.extend(env.iter().flat_map(|(k, v)| [k.as_str(), v.as_str()]));
        let id = fnv64(&parts);
        let mountpoint = self.config.state_dir.join("mounts").join(&id);
        Ok((
            id,
            Shared {
                meta_url,
                args,
                env,
                mountpoint,
            },
        ))
    }

    /// Mount a shared mount unless it is mounted and answering.
    fn ensure_mounted(&self, id: &str, shared: &Shared) -> Result<(), Status> {
        if mounts::is_mountpoint(&shared.mountpoint) {
            if mounts::answers(&shared.mountpoint) {
                return Ok(());
            }
            warn!(mountpoint = %shared.mountpoint.display(), "the mount process of a volume is gone; mounting it again");
            let _ = mounts::unmount(&shared.mountpoint);
        }
        let log = self
            .config
            .state_dir
            .join("mounts")
            .join(format!("{id}.log"));
        mounts::start_mount(
            &self.config.exe,
            &shared.meta_url,
            &shared.mountpoint,
            &log,
            &shared.args,
            &shared.env,
        )
        .map_err(|why| Status::internal(format!("cannot mount the volume: {why}")))
    }

    fn stage(&self, req: NodeStageVolumeRequest) -> Result<(), Status> {
        let volume_id = required(&req.volume_id, "volume_id")?.to_string();
        let staging = PathBuf::from(required(&req.staging_target_path, "staging_target_path")?);
        mount_capability(req.volume_capability.as_ref())?;
        let (id, shared) = self.shared_for(&req)?;
        let subdir = req
            .volume_context
            .get("subdir")
            .map(|s| s.trim_matches('/').to_string())
            .filter(|s| !s.is_empty());
        if subdir
            .as_deref()
            .is_some_and(|s| s.split('/').any(|p| p == ".."))
        {
            return Err(invalid("subdir may not leave the volume (..)"));
        }
        check_volume(&shared.meta_url)?;
        // Asked before the lock: a stat of a hung mount must not hold up
        // every other call.
        let staged_alive = mounts::is_mountpoint(&staging) && mounts::answers(&staging);
        let mut state = self.state.lock();
        let wanted = Staged {
            volume_id,
            shared: id.clone(),
            subdir: subdir.clone(),
        };
        if let Some(have) = state.staged.get(&staging) {
            if have != &wanted {
                return Err(Status::already_exists(format!(
                    "{} is staged for volume {} with other options",
                    staging.display(),
                    have.volume_id
                )));
            }
            if staged_alive {
                return Ok(());
            }
        }
        self.ensure_mounted(&id, &shared)?;
        let source = match &subdir {
            Some(s) => {
                let dir = shared.mountpoint.join(s);
                std::fs::create_dir_all(&dir)
                    .map_err(|e| internal(&format!("cannot make subdir {s}"), e))?;
                dir
            }
            None => shared.mountpoint.clone(),
        };
        if mounts::is_mountpoint(&staging) {
            let _ = mounts::unmount(&staging);
        }
        mounts::bind(&source, &staging, false)
            .map_err(|e| internal(&format!("cannot bind {}", staging.display()), e))?;
        state.shared.insert(id, shared);
        state.staged.insert(staging, wanted);
        self.save(&state)
    }

    fn unstage(&self, req: NodeUnstageVolumeRequest) -> Result<(), Status> {
        required(&req.volume_id, "volume_id")?;
        let staging = PathBuf::from(required(&req.staging_target_path, "staging_target_path")?);
        let mut state = self.state.lock();
        mounts::unmount(&staging)
            .map_err(|e| internal(&format!("cannot unmount {}", staging.display()), e))?;
        if let Some(staged) = state.staged.remove(&staging) {
            if !state.in_use(&staged.shared) {
                if let Some(shared) = state.shared.remove(&staged.shared) {
                    info!(mountpoint = %shared.mountpoint.display(), "last staging path gone: unmounting the volume");
                    if let Err(e) = mounts::unmount(&shared.mountpoint) {
                        warn!(mountpoint = %shared.mountpoint.display(), error = %e, "cannot unmount");
                    }
                    let _ = std::fs::remove_dir(&shared.mountpoint);
                }
            }
        }
        self.save(&state)
    }

    fn publish(&self, req: NodePublishVolumeRequest) -> Result<(), Status> {
        let volume_id = required(&req.volume_id, "volume_id")?.to_string();
        let target = PathBuf::from(required(&req.target_path, "target_path")?);
        let staging = PathBuf::from(required(&req.staging_target_path, "staging_target_path")?);
        let readonly = mount_capability(req.volume_capability.as_ref())? || req.readonly;
        let target_alive = mounts::is_mountpoint(&target) && mounts::answers(&target);
        let mut state = self.state.lock();
        match state.staged.get(&staging) {
            Some(s) if s.volume_id == volume_id => {}
            Some(s) => {
                return Err(Status::failed_precondition(format!(
                    "{} is staged for volume {}, not {volume_id}",
                    staging.display(),
                    s.volume_id
                )))
            }
            None => {
                return Err(Status::failed_precondition(format!(
                    "volume {volume_id} is not staged at {}",
                    staging.display()
                )))
            }
        }
        let wanted = Published {
            volume_id,
            staging: staging.clone(),
            readonly,
        };
        if let Some(have) = state.published.get(&target) {
            if have != &wanted {
                return Err(Status::already_exists(format!(
                    "{} is published with other options",
                    target.display()
                )));
            }
            if target_alive {
                return Ok(());
            }
            let _ = mounts::unmount(&target);
        }
        mounts::bind(&staging, &target, readonly)
            .map_err(|e| internal(&format!("cannot bind {}", target.display()), e))?;
        state.published.insert(target, wanted);
        self.save(&state)
    }

    fn unpublish(&self, req: NodeUnpublishVolumeRequest) -> Result<(), Status> {
        required(&req.volume_id, "volume_id")?;
        let target = PathBuf::from(required(&req.target_path, "target_path")?);
        let mut state = self.state.lock();
        mounts::unmount(&target)
            .map_err(|e| internal(&format!("cannot unmount {}", target.display()), e))?;
        // The plugin made the directory; kubelet expects it gone.
        let _ = std::fs::remove_dir(&target);
        state.published.remove(&target);
        self.save(&state)
    }

    fn stats(&self, req: NodeGetVolumeStatsRequest) -> Result<NodeGetVolumeStatsResponse, Status> {
        required(&req.volume_id, "volume_id")?;
        let path = PathBuf::from(required(&req.volume_path, "volume_path")?);
        if !path.exists() {
            return Err(Status::not_found(format!(
                "{} does not exist",
                path.display()
            )));
        }
        let (bytes, inodes) = mounts::usage(&path)
            .map_err(|e| internal(&format!("statvfs {}", path.display()), e))?;
        let usage = |v: [u64; 3], unit: volume_usage::Unit| VolumeUsage {
            total: v[0] as i64,
            available: v[1] as i64,
            used: v[2] as i64,
            unit: unit as i32,
        };
        Ok(NodeGetVolumeStatsResponse {
            usage: vec![
                usage(bytes, volume_usage::Unit::Bytes),
                usage(inodes, volume_usage::Unit::Inodes),
            ],
            volume_condition: None,
        })
    }

    /// Mount again every shared mount whose process died, and bind its
    /// staging and target paths again. Runs at start and every few
    /// seconds.
    pub fn repair(&self) {
        // Which mounts are dead is asked without the lock (a stat of a
        // hung mount must not hold up the calls of other volumes); only
        // their repair takes it.
        let shared: BTreeMap<String, Shared> = self.state.lock().shared.clone();
        let dead: Vec<(&String, &Shared)> = shared
            .iter()
            .filter(|(_, s)| {
                !(mounts::is_mountpoint(&s.mountpoint) && mounts::answers(&s.mountpoint))
            })
            .collect();
        let mut state = self.state.lock();
        for (id, s) in dead {
            if !state.shared.contains_key(id) {
                continue; // unstaged meanwhile
            }
            if let Err(e) = self.ensure_mounted(id, s) {
                warn!(volume = %s.mountpoint.display(), error = %e.message(), "cannot mount a volume again");
                continue;
            }
            self.metrics.remounts.inc();
            let staged: Vec<(PathBuf, Staged)> = state
                .staged
                .iter()
                .filter(|(_, st)| &st.shared == id)
                .map(|(p, st)| (p.clone(), st.clone()))
                .collect();
            for (path, st) in staged {
                let source = match &st.subdir {
                    Some(d) => s.mountpoint.join(d),
                    None => s.mountpoint.clone(),
                };
                let _ = mounts::unmount(&path);
                if let Err(e) = mounts::bind(&source, &path, false) {
                    warn!(staging = %path.display(), error = %e, "cannot bind a staging path again");
                    continue;
                }
                let targets: Vec<(PathBuf, Published)> = state
                    .published
                    .iter()
                    .filter(|(_, p)| p.staging == path)
                    .map(|(t, p)| (t.clone(), p.clone()))
                    .collect();
                for (target, p) in targets {
                    let _ = mounts::unmount(&target);
                    match mounts::bind(&path, &target, p.readonly) {
                        Ok(()) => warn!(
                            volume = %p.volume_id,
                            target = %target.display(),
                            "the volume's mount process died and was restarted: this target was bound again; \
                             a pod that held the old mount sees ENOTCONN there until it restarts"
                        ),
                        Err(e) => {
                            warn!(target = %target.display(), error = %e, "cannot bind a target path again")
                        }
                    }
                }
            }
        }
        // Forget targets that are gone (kubelet cleaned up while we were
        // down); a path that is still a mount point is not looked into.
        state
            .published
            .retain(|t, _| mounts::is_mountpoint(t) || t.exists());
        if let Err(e) = self.save(&state) {
            warn!(error = %e.message(), "cannot save the plugin's state");
        }
    }
}

/// The gRPC face of a [`Node`].
pub struct Service(pub Arc<Node>);

#[tonic::async_trait]
impl node_server::Node for Service {
    async fn node_stage_volume(
        &self,
        req: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        let req = req.into_inner();
        let node = self.0.clone();
        self.0
            .metrics
            .run("NodeStageVolume", move || node.stage(req))
            .await?;
        Ok(Response::new(NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        req: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        let req = req.into_inner();
        let node = self.0.clone();
        self.0
            .metrics
            .run("NodeUnstageVolume", move || node.unstage(req))
            .await?;
        Ok(Response::new(NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        req: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let req = req.into_inner();
        let node = self.0.clone();
        self.0
            .metrics
            .run("NodePublishVolume", move || node.publish(req))
            .await?;
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let req = req.into_inner();
        let node = self.0.clone();
        self.0
            .metrics
            .run("NodeUnpublishVolume", move || node.unpublish(req))
            .await?;
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        req: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        let req = req.into_inner();
        let node = self.0.clone();
        let stats = self
            .0
            .metrics
            .run("NodeGetVolumeStats", move || node.stats(req));
        Ok(Response::new(stats.await?))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        use node_service_capability::{rpc::Type, Rpc, Type as Of};
        let cap = |t: Type| NodeServiceCapability {
            r#type: Some(Of::Rpc(Rpc { r#type: t as i32 })),
        };
        Ok(Response::new(NodeGetCapabilitiesResponse {
            capabilities: vec![cap(Type::StageUnstageVolume), cap(Type::GetVolumeStats)],
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.0.config.node_id.clone(),
            max_volumes_per_node: 0,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_sets_have_stable_distinct_names() {
        assert_eq!(fnv64(&["a", "b"]), fnv64(&["a", "b"]));
        assert_ne!(fnv64(&["a", "b"]), fnv64(&["ab"]));
        assert_eq!(fnv64(&[]).len(), 16);
    }
}
