//! The direct container: a fixture container with the sandbox settings of a deployment, made
//! with mcp-runner's own Docker code and attached by the benchmark itself (what `docker run
//! -i` does), the baseline the bridge is compared with.

use std::collections::BTreeMap;
use std::time::Instant;

use mcp_runner::runtime::Attached;
use mcp_runner::runtime::docker::{Client, ClientSettings, ContainerSpec};

use super::{CPUS, MEMORY_MB};
use crate::fixture::BENCH_IMAGE;

/// mcp-runner's Docker client with a deployment's sandbox settings, for containers the
/// benchmark makes itself under instance `instance`.
pub async fn direct_client(instance: &str) -> anyhow::Result<Client> {
    Ok(Client::connect(
        None,
        ClientSettings {
            oci_runtime: "runsc".to_owned(),
            dns: vec!["8.8.8.8".to_owned()],
            pids_limit: 256,
            log_max_mb: 10,
            instance_id: instance.to_owned(),
        },
        4,
    )?
    .negotiate()
    .await?)
}

/// The container of a direct fixture named after `name`, on Docker network `network`
/// (`none`: a stdio server needs none; `bridge`: what `docker run` gives).
pub fn direct_spec(name: &str, network: &str) -> ContainerSpec {
    ContainerSpec {
        deployment_id: name.to_owned(),
        image: BENCH_IMAGE.to_owned(),
        args: None,
        env: BTreeMap::new(),
        uid: 65534,
        gid: 65534,
        memory_mb: Some(MEMORY_MB),
        cpus: Some(CPUS),
        network: network.to_owned(),
        stdin: true,
        session: None,
    }
}

/// When each step of a launch was done.
#[derive(Debug, Clone, Copy)]
pub struct Launch {
    /// The container exists.
    pub created: Instant,
    /// Its stdio is attached.
    pub attached: Instant,
    /// It runs.
    pub started: Instant,
}

/// A fixture container under runsc, attached and started.
pub struct DirectContainer {
    client: Client,
    /// Docker id.
    pub id: String,
}

impl DirectContainer {
    /// Creates, attaches and starts a container without a network under instance `instance`;
    /// returns it with its attachment.
    pub async fn start(instance: &str) -> anyhow::Result<(DirectContainer, Attached)> {
        let client = direct_client(instance).await?;
        let (container, attached, _) =
            DirectContainer::launch(&client, &direct_spec(instance, "none")).await?;
        Ok((container, attached))
    }

    /// Creates a container of `spec`, attaches to its stdio and starts it (what
    /// `docker run -i` does), noting when each step was done. A failed step removes it again.
    pub async fn launch(
        client: &Client,
        spec: &ContainerSpec,
    ) -> anyhow::Result<(DirectContainer, Attached, Launch)> {
        let id = client.create_container(spec).await?;
        let created = Instant::now();
        let container = DirectContainer {
            client: client.clone(),
            id,
        };
        let attached = match container.client.attach_stdio(&container.id).await {
            Ok(a) => a,
            Err(e) => {
                container.remove().await;
                return Err(e.into());
            }
        };
        let attached_at = Instant::now();
        if let Err(e) = container.client.start_container(&container.id).await {
            container.remove().await;
            return Err(e.into());
        }
        let launch = Launch {
            created,
            attached: attached_at,
            started: Instant::now(),
        };
        Ok((container, attached, launch))
    }

    /// Stops and removes the container.
    pub async fn remove(&self) {
        if let Err(e) = self.client.stop_container(&self.id, 5).await {
            eprintln!("stopping the direct container failed: {e}");
        }
        if let Err(e) = self.client.remove_container(&self.id).await {
            eprintln!("removing the direct container failed: {e}");
        }
    }
}
