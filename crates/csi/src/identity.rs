//! The Identity service: the plugin's name and version, its capabilities
//! (the Controller service, where it is served) and its readiness.

use tonic::{Request, Response, Status};

use crate::proto::{
    identity_server, GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse,
    GetPluginInfoRequest, GetPluginInfoResponse, ProbeRequest, ProbeResponse,
};

/// `controller`: the Controller service is served too.
pub struct Identity {
    pub controller: bool,
}

#[tonic::async_trait]
impl identity_server::Identity for Identity {
    async fn get_plugin_info(
        &self,
        _: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: crate::DRIVER_NAME.to_string(),
            vendor_version: env!("CARGO_PKG_VERSION").to_string(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        use crate::proto::plugin_capability::{service::Type, Service, Type as Of};
        let capabilities = if self.controller {
            vec![crate::proto::PluginCapability {
                r#type: Some(Of::Service(Service {
                    r#type: Type::ControllerService as i32,
                })),
            }]
        } else {
            Vec::new()
        };
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        Ok(Response::new(ProbeResponse { ready: Some(true) }))
    }
}
