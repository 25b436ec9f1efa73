//! The Docker backend: one host running Docker with gVisor's `runsc`. The only code that
//! talks to Docker (through bollard) or changes host accounts.
//!
//! A deployment's place is a bridge network of its own (inter-container traffic off, a
//! subnet of `NETWORK_POOL`) and a host account of its own; its sandbox is a container with
//! every capability dropped (see `container.rs` and the README's security model). Places are
//! made ahead of creates with a network holder whose namespace the first container joins
//! (`netns.rs`); the choreography of that, of subnet choice and of container replacement
//! lives in `places.rs` and `holders.rs`.
//!
//! - `client.rs`: the bollard client, labels, `DockerError`
//! - `container.rs`, `attach.rs`, `image.rs`, `network.rs`, `netns.rs`: one Docker object
//!   each
//! - `subnet.rs`: the network pool and the book of subnets in use
//! - `users.rs`: host accounts; `firewall.rs`: the host's iptables rules for the pool
//! - `backend.rs`: [`DockerBackend`], the [`SandboxBackend`](crate::runtime::SandboxBackend)

mod attach;
mod backend;
mod client;
mod container;
pub mod firewall;
mod holders;
mod image;
mod netns;
mod network;
mod places;
pub mod subnet;
mod users;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use backend::DockerBackend;
pub use client::{
    Client, ClientSettings, DockerError, LABEL_DEPLOYMENT, LABEL_INSTANCE, LABEL_MADE_AHEAD,
    LABEL_MANAGED_BY, LABEL_SESSION, MANAGED_BY, object_name,
};
use client::{classify, docker_err};
pub use container::{ContainerSpec, ContainerState, ManagedContainer, host_pids_limit};
use netns::joined_namespace;
pub use netns::{holder_name, holder_network_mode};
pub use network::ManagedNetwork;
pub use users::{HostUser, HostUsers};

/// What the Docker backend is configured with.
#[derive(Debug, Clone)]
pub struct DockerSettings {
    /// Daemon address (`DOCKER_HOST`); Docker's defaults when `None`.
    pub host: Option<String>,
    /// Docker API calls in flight at once.
    pub concurrency: usize,
    /// What every container shares.
    pub client: ClientSettings,
    /// `NETWORK_POOL`.
    pub network_pool: String,
    /// `NETWORK_SUBNET_PREFIX`.
    pub subnet_prefix: u8,
    /// Places kept provisioned ahead (`NETWORK_SPARES`).
    pub spares: usize,
    /// Whether to install the host firewall rules for the pool.
    pub firewall: bool,
}

/// Waits until Docker answers (retrying with backoff up to 5 s; bollard refuses a socket path
/// that does not exist yet, which is how a daemon that is still starting looks), checks that
/// it knows the configured OCI runtime, installs the firewall rules, and returns the backend.
/// `None` when `stop` fires first or the pool is invalid.
pub async fn connect(settings: DockerSettings, stop: &CancellationToken) -> Option<DockerBackend> {
    let pool = match subnet::SubnetPool::parse(&settings.network_pool, settings.subnet_prefix) {
        Ok(pool) => pool,
        Err(e) => {
            tracing::error!(error = %e, "invalid network pool");
            return None;
        }
    };
    let mut delay = Duration::from_millis(250);
    let client = loop {
        let connected = Client::connect(
            settings.host.as_deref(),
            settings.client.clone(),
            settings.concurrency,
        );
        let negotiated = match connected {
            Ok(client) => client.negotiate().await,
            Err(e) => Err(e),
        };
        match negotiated {
            Ok(client) => break client,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "Docker is not answering yet");
                tokio::select! {
                    () = stop.cancelled() => return None,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    };
    let oci_runtime = &settings.client.oci_runtime;
    match client.runtimes().await {
        Ok(known) if !known.contains(oci_runtime) => tracing::error!(
            runtime = %oci_runtime,
            known = ?known,
            "Docker does not know the configured runtime; creates will fail (run setup.sh)"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot list Docker's runtimes"),
    }
    if settings.firewall {
        firewall::protect_host(&settings.network_pool).await;
    }
    let users = HostUsers::new(&settings.client.instance_id);
    Some(DockerBackend::new(client, users, pool, settings.spares))
}
