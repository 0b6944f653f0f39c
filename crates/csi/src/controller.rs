//! The Controller service: dynamic provisioning. A claim becomes a
//! directory of a volume (`BASEDIR/NAME`, made in the engine, mode 0777
//! so that pods of any user may write) with a directory quota of the
//! requested size; deleting the claim (reclaim policy Delete) removes the
//! tree and its quota in the engine. The StorageClass's parameters other
//! than `basedir` go to the nodes as mount options (volume attributes),
//! and the directory as `subdir`. The volume id is that directory's path.

use std::collections::HashMap;

use tonic::{Request, Response, Status};
use tracing::info;

use crate::checks::{internal, invalid, meta_url_of, mount_capability, open_volume, required};
use crate::proto::{
    controller_server, controller_service_capability, validate_volume_capabilities_response,
    ControllerGetCapabilitiesRequest, ControllerGetCapabilitiesResponse,
    ControllerServiceCapability, CreateVolumeRequest, CreateVolumeResponse, DeleteVolumeRequest,
    DeleteVolumeResponse, ValidateVolumeCapabilitiesRequest, ValidateVolumeCapabilitiesResponse,
    Volume,
};
use tessera_meta::{Ctx, FileType, Ino, Meta, MetaError, ROOT_INO};

pub struct Controller {
    pub metrics: std::sync::Arc<crate::metrics::PluginMetrics>,
}

/// `basedir` and the volume's name as one path without outer slashes.
fn volume_path(basedir: Option<&String>, name: &str) -> Result<String, Status> {
    let base = basedir.map(|b| b.trim_matches('/')).unwrap_or("");
    if base.split('/').any(|p| p == "..") || name.contains('/') || name == ".." || name == "." {
        return Err(invalid("basedir and name must stay inside the volume"));
    }
    Ok(if base.is_empty() {
        name.to_string()
    } else {
        format!("{base}/{name}")
    })
}

fn meta_status(what: &str, e: MetaError) -> Status {
    match e {
        MetaError::NotFound => Status::not_found(format!("{what}: {e}")),
        MetaError::NotDir | MetaError::Exists => Status::already_exists(format!("{what}: {e}")),
        e => internal(what, e),
    }
}

/// The directory at `path` (made, with its parents, if missing).
fn make_dirs(meta: &Meta, path: &str) -> Result<Ino, Status> {
    let mut at = ROOT_INO;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        at = match meta.lookup(at, part.as_bytes()) {
            Ok((ino, a)) if a.typ == FileType::Dir => ino,
            Ok(_) => {
                return Err(Status::already_exists(format!(
                    "{path}: {part} is not a directory"
                )))
            }
            Err(MetaError::NotFound) => {
                match meta.mknod(
                    &Ctx::ROOT,
                    at,
                    part.as_bytes(),
                    FileType::Dir,
                    0o777,
                    0,
                    None,
                ) {
                    Ok((ino, _)) => ino,
                    // Made meanwhile by another call for the same claim.
                    Err(MetaError::Exists) => {
                        meta.lookup(at, part.as_bytes())
                            .map_err(|e| meta_status(path, e))?
                            .0
                    }
                    Err(e) => return Err(meta_status(path, e)),
                }
            }
            Err(e) => return Err(meta_status(path, e)),
        };
    }
    Ok(at)
}

fn create(req: CreateVolumeRequest) -> Result<Volume, Status> {
    let name = required(&req.name, "name")?;
    if req.volume_capabilities.is_empty() {
        return Err(invalid("volume_capabilities is missing"));
    }
    for cap in &req.volume_capabilities {
        mount_capability(Some(cap))?;
    }
    let meta_url = meta_url_of(&req.secrets)?;
    let path = volume_path(req.parameters.get("basedir"), name)?;
    let capacity = req.capacity_range.as_ref().map_or(0, |r| {
        if r.required_bytes > 0 {
            r.required_bytes
        } else {
            r.limit_bytes
        }
    });
    if capacity < 0 {
        return Err(invalid("capacity_range is negative"));
    }
    let meta = open_volume(&meta_url)?;
    // The same name again is the same claim only with the same size.
    if let Ok((ino, _)) = meta.resolve(&path) {
        let had = meta
            .get_quota(ino)
            .map_err(|e| meta_status(&path, e))?
            .map_or(0, |q| q.capacity);
        if had != capacity as u64 {
            return Err(Status::already_exists(format!(
                "volume {path} exists with a capacity of {had} bytes, not {capacity}"
            )));
        }
    }
    let ino = make_dirs(&meta, &path)?;
    if capacity > 0 {
        meta.set_quota(ino, Some(capacity as u64), None)
            .map_err(|e| meta_status(&path, e))?;
    }
    let _ = meta.flush_usage();
    info!(volume = %path, capacity, "provisioned");
    let mut context: HashMap<String, String> = req
        .parameters
        .into_iter()
        .filter(|(k, _)| k != "basedir" && !k.starts_with("csi.storage.k8s.io/"))
        .collect();
    context.insert("subdir".into(), path.clone());
    Ok(Volume {
        capacity_bytes: capacity,
        volume_id: path,
        volume_context: context,
    })
}

fn delete(req: DeleteVolumeRequest) -> Result<(), Status> {
    let path = required(&req.volume_id, "volume_id")?
        .trim_matches('/')
        .to_string();
    if path.is_empty() || path.split('/').any(|p| p == "..") {
        return Err(invalid(format!(
            "volume id {path:?} is not a claim's directory"
        )));
    }
    let meta_url = meta_url_of(&req.secrets)?;
    let meta = open_volume(&meta_url)?;
    let (parent_path, name) = match path.rsplit_once('/') {
        Some((p, n)) => (p, n),
        None => ("", path.as_str()),
    };
    let parent = match meta.resolve(parent_path) {
        Ok((ino, _)) => ino,
        Err(MetaError::NotFound) => return Ok(()), // gone already
        Err(e) => return Err(meta_status(&path, e)),
    };
    let ino = match meta.lookup(parent, name.as_bytes()) {
        Ok((ino, _)) => ino,
        Err(MetaError::NotFound) => return Ok(()),
        Err(e) => return Err(meta_status(&path, e)),
    };
    meta.delete_quota(ino).map_err(|e| meta_status(&path, e))?;
    let removed = meta
        .remove_tree(&Ctx::ROOT, parent, name.as_bytes())
        .map_err(|e| meta_status(&path, e))?;
    let _ = meta.flush_usage();
    info!(volume = %path, files = removed.files, dirs = removed.dirs, "deleted; mounts of the volume delete the data");
    Ok(())
}

fn validate(
    req: ValidateVolumeCapabilitiesRequest,
) -> Result<ValidateVolumeCapabilitiesResponse, Status> {
    let path = required(&req.volume_id, "volume_id")?.to_string();
    if req.volume_capabilities.is_empty() {
        return Err(invalid("volume_capabilities is missing"));
    }
    let meta = open_volume(&meta_url_of(&req.secrets)?)?;
    match meta.resolve(&path) {
        Ok((_, a)) if a.typ == FileType::Dir => {}
        Ok(_) | Err(MetaError::NotFound) => {
            return Err(Status::not_found(format!("no volume {path}")))
        }
        Err(e) => return Err(meta_status(&path, e)),
    }
    if let Some(bad) = req
        .volume_capabilities
        .iter()
        .find_map(|c| mount_capability(Some(c)).err())
    {
        return Ok(ValidateVolumeCapabilitiesResponse {
            confirmed: None,
            message: bad.message().to_string(),
        });
    }
    Ok(ValidateVolumeCapabilitiesResponse {
        confirmed: Some(validate_volume_capabilities_response::Confirmed {
            volume_context: req.volume_context,
            volume_capabilities: req.volume_capabilities,
            parameters: req.parameters,
        }),
        message: String::new(),
    })
}

#[tonic::async_trait]
impl controller_server::Controller for Controller {
    async fn create_volume(
        &self,
        req: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        let req = req.into_inner();
        let volume = self
            .metrics
            .run("CreateVolume", move || create(req))
            .await?;
        Ok(Response::new(CreateVolumeResponse {
            volume: Some(volume),
        }))
    }

    async fn delete_volume(
        &self,
        req: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        let req = req.into_inner();
        self.metrics
            .run("DeleteVolume", move || delete(req))
            .await?;
        Ok(Response::new(DeleteVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        req: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
        let req = req.into_inner();
        let answer = self
            .metrics
            .run("ValidateVolumeCapabilities", move || validate(req));
        Ok(Response::new(answer.await?))
    }

    async fn controller_get_capabilities(
        &self,
        _: Request<ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        use controller_service_capability::{rpc::Type, Rpc, Type as Of};
        Ok(Response::new(ControllerGetCapabilitiesResponse {
            capabilities: vec![ControllerServiceCapability {
                r#type: Some(Of::Rpc(Rpc {
                    r#type: Type::CreateDeleteVolume as i32,
                })),
            }],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_paths_stay_inside_the_volume() {
        assert_eq!(volume_path(None, "pvc-1").expect("plain"), "pvc-1");
        let base = "/k8s/".to_string();
        assert_eq!(
            volume_path(Some(&base), "pvc-1").expect("based"),
            "k8s/pvc-1"
        );
        assert!(volume_path(Some(&"../x".to_string()), "pvc").is_err());
        assert!(volume_path(None, "a/b").is_err());
    }
}
