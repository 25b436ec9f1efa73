//! Per-deployment bridge networks with inter-container traffic off, each on a subnet of its
//! own from `NETWORK_POOL`.

use std::collections::HashMap;

use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest};

use super::subnet::SubnetPool;
use bollard::query_parameters::ListNetworksOptionsBuilder;

use super::{Client, DockerError, LABEL_DEPLOYMENT, LABEL_MADE_AHEAD, docker_err, object_name};

/// A network of this instance, as found by its labels.
#[derive(Debug, Clone)]
pub struct ManagedNetwork {
    /// Docker network id.
    pub id: String,
    /// Deployment it belongs to (or will: see `made_ahead`).
    pub deployment_id: String,
    /// Made ahead of its deployment's create (`mcp-runner.made-ahead` label); while no row
    /// names `deployment_id` it is a spare.
    pub made_ahead: bool,
    /// Its subnet, when it has one of its own.
    pub subnet: Option<String>,
}

impl Client {
    /// Creates the bridge network of a deployment, on `subnet` when given (else from
    /// Docker's default pools); returns its id. `made_ahead` labels a network made before
    /// its deployment exists.
    pub async fn create_network(
        &self,
        deployment_id: &str,
        subnet: Option<&str>,
        made_ahead: bool,
    ) -> Result<String, DockerError> {
        let _permit = self.permit("create the network").await;
        let mut labels = self.labels(deployment_id);
        if made_ahead {
            labels.insert(LABEL_MADE_AHEAD.to_owned(), "true".to_owned());
        }
        let request = NetworkCreateRequest {
            name: object_name(deployment_id),
            driver: Some("bridge".to_owned()),
            labels: Some(labels),
            ipam: subnet.map(|s| Ipam {
                driver: Some("default".to_owned()),
                config: Some(vec![IpamConfig {
                    subnet: Some(s.to_owned()),
                    gateway: SubnetPool::gateway(s),
                    ..Default::default()
                }]),
                options: None,
            }),
            options: Some(HashMap::from([(
                // The container must not reach other containers on its network.
                "com.docker.network.bridge.enable_icc".to_owned(),
                "false".to_owned(),
            )])),
            ..Default::default()
        };
        let created = self
            .docker
            .create_network(request)
            .await
            .map_err(docker_err("create the network"))?;
        Ok(created.id)
    }

    /// Removes a network; one already gone is not an error.
    pub async fn remove_network(&self, network_id: &str) -> Result<(), DockerError> {
        let _permit = self.permit("remove the network").await;
        match self.docker.remove_network(network_id).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = docker_err("remove the network")(e);
                if err.is_not_found() { Ok(()) } else { Err(err) }
            }
        }
    }

    /// The subnets of every Docker network on the host, whoever made it.
    pub async fn docker_subnets(&self) -> Result<Vec<String>, DockerError> {
        let _permit = self.permit("list networks").await;
        let networks = self
            .docker
            .list_networks(None::<bollard::query_parameters::ListNetworksOptions>)
            .await
            .map_err(docker_err("list networks"))?;
        Ok(networks
            .into_iter()
            .filter_map(|n| n.ipam?.config)
            .flatten()
            .filter_map(|c| c.subnet)
            .collect())
    }

    /// Every network of this instance.
    pub async fn list_networks(&self) -> Result<Vec<ManagedNetwork>, DockerError> {
        let _permit = self.permit("list networks").await;
        let options = ListNetworksOptionsBuilder::default()
            .filters(&self.instance_filter())
            .build();
        let networks = self
            .docker
            .list_networks(Some(options))
            .await
            .map_err(docker_err("list networks"))?;
        Ok(networks
            .into_iter()
            .filter_map(|n| {
                let mut labels = n.labels?;
                let subnet = n
                    .ipam
                    .and_then(|i| i.config)
                    .and_then(|c| c.into_iter().find_map(|c| c.subnet));
                Some(ManagedNetwork {
                    id: n.id?,
                    made_ahead: labels.contains_key(LABEL_MADE_AHEAD),
                    deployment_id: labels.remove(LABEL_DEPLOYMENT)?,
                    subnet,
                })
            })
            .collect())
    }
}
