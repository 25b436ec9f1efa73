//! [`DockerBackend`]: the [`SandboxBackend`] of one Docker host.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Mutex;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use crate::runtime::{
    Capacity, Created, Identity, Owned, OwnedKind, Place, Replacement, RuntimeError,
    SandboxBackend, SandboxSpec, SandboxState, Started, Teardown,
};

use super::container::grace_secs;
use super::subnet::{SubnetBook, SubnetPool};
use super::{Client, ContainerState, DockerError, HostUsers};

/// Sandboxes as containers under gVisor on one Docker host, each deployment on a bridge
/// network of its own with a host account of its own.
pub struct DockerBackend {
    pub(super) client: Client,
    pub(super) users: HostUsers,
    pub(super) subnets: SubnetBook,
    /// The running network holders of places provisioned ahead, by deployment id, until a
    /// create takes (or removes) them.
    holders: Mutex<HashMap<String, String>>,
    /// Containers made by `create` to be started right after (a create that starts, a
    /// session's), with the holder whose namespace they join: their first start needs no
    /// inspect of them.
    fresh: Mutex<HashMap<String, Option<String>>>,
    /// Places to keep provisioned ahead.
    ahead: usize,
}

impl DockerBackend {
    /// A backend over `client` (connected) and the host accounts `users`, with networks from
    /// `pool`, keeping `ahead` places provisioned ahead.
    pub fn new(client: Client, users: HostUsers, pool: SubnetPool, ahead: usize) -> DockerBackend {
        DockerBackend {
            client,
            users,
            subnets: SubnetBook::new(pool),
            holders: Mutex::default(),
            fresh: Mutex::default(),
            ahead,
        }
    }

    /// The Docker client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub(super) fn holders_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.holders.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes a container just made, joining `holder`'s namespace when given.
    pub(super) fn made(&self, container: &str, holder: Option<String>) {
        let mut fresh = self.fresh.lock().unwrap_or_else(|p| p.into_inner());
        fresh.insert(container.to_owned(), holder);
    }

    /// Forgets a container that goes without its first start.
    pub(super) fn forget(&self, container: &str) {
        let mut fresh = self.fresh.lock().unwrap_or_else(|p| p.into_inner());
        fresh.remove(container);
    }

    /// The state of a container for its start: a container made here and never started is
    /// known without asking Docker.
    async fn state_for_start(
        &self,
        container: &str,
    ) -> Result<Option<ContainerState>, DockerError> {
        let fresh = self
            .fresh
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(container);
        match fresh {
            Some(joins_namespace_of) => Ok(Some(ContainerState {
                joins_namespace_of,
                ..ContainerState::default()
            })),
            None => self.client.container_state(container).await,
        }
    }
}

#[async_trait::async_trait]
impl SandboxBackend for DockerBackend {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn ping(&self) -> Result<(), RuntimeError> {
        Ok(self.client.ping().await?)
    }

    fn capacity(&self) -> Capacity {
        Capacity {
            places: Some((
                self.subnets.len() as u64,
                u64::from(self.subnets.pool().len()),
            )),
            ahead: self.ahead,
        }
    }

    fn requests_made(&self) -> u64 {
        self.client.requests_made()
    }

    async fn taken_ids(&self) -> Result<HashSet<u32>, RuntimeError> {
        Ok(self.users.used_ids().await?)
    }

    async fn provision(&self, identity: &Identity) -> Result<Place, RuntimeError> {
        Ok(self.provision_place(identity).await?)
    }

    async fn discard(&self, identity: &Identity, place: &Place) -> Result<(), RuntimeError> {
        Ok(self.discard_place(identity, place).await?)
    }

    async fn create(
        &self,
        spec: &SandboxSpec,
        place: Option<&Place>,
        starts_soon: bool,
    ) -> Result<Created, RuntimeError> {
        Ok(self.create_sandbox(spec, place, starts_soon).await?)
    }

    async fn start(
        &self,
        spec: &SandboxSpec,
        sandbox: &str,
        place: &Place,
        attach: bool,
    ) -> Result<Option<Started>, RuntimeError> {
        let Some(state) = self.state_for_start(sandbox).await? else {
            return Ok(None);
        };
        if state.running {
            if !attach {
                return Ok(Some(Started {
                    sandbox: sandbox.to_owned(),
                    attached: None,
                    replacement: None,
                }));
            }
            // It ran before a restart of mcp-runner: its protocol state is unknown.
            self.client.stop_container(sandbox, grace_secs()).await?;
        }
        let Some((container, replacement)) =
            self.prepare_start(spec, sandbox, place, &state).await?
        else {
            return Ok(None);
        };
        let started = async {
            let attached = match attach {
                true => Some(self.client.attach_stdio(&container).await?),
                false => None,
            };
            self.client.start_container(&container).await?;
            Ok::<_, RuntimeError>(attached)
        }
        .await;
        match started {
            Ok(attached) => Ok(Some(Started {
                sandbox: container,
                attached,
                replacement,
            })),
            Err(e) => {
                if let Some(r) = &replacement {
                    self.abort_replacement(r).await;
                }
                Err(e)
            }
        }
    }

    async fn pause(
        &self,
        spec: &SandboxSpec,
        sandbox: &str,
        place: &Place,
    ) -> Result<Option<Replacement>, RuntimeError> {
        self.client.stop_container(sandbox, grace_secs()).await?;
        // A paused deployment keeps nothing running: not its network holder either.
        Ok(self.release_holder(spec, sandbox, place).await?)
    }

    async fn commit(&self, replacement: &Replacement) -> Result<(), RuntimeError> {
        Ok(self.commit_replacement(replacement).await?)
    }

    async fn abort(&self, replacement: &Replacement) {
        self.abort_replacement(replacement).await;
    }

    async fn remove_sandbox(&self, sandbox: &str) -> Result<(), RuntimeError> {
        self.forget(sandbox);
        self.client.stop_container(sandbox, grace_secs()).await?;
        Ok(self.client.remove_container(sandbox).await?)
    }

    async fn state(&self, sandbox: &str) -> Result<Option<SandboxState>, RuntimeError> {
        Ok(self
            .client
            .container_state(sandbox)
            .await?
            .map(|s| SandboxState {
                running: s.running,
                exited: s.exited,
                exit_code: s.exit_code,
                oom_killed: s.oom_killed,
            }))
    }

    async fn address(&self, sandbox: &str, place: &Place) -> Result<Option<IpAddr>, RuntimeError> {
        let ip = self.client.container_ip(sandbox, &place.network).await?;
        Ok(ip.and_then(|ip| ip.parse().ok()))
    }

    fn stderr(&self, sandbox: &str, since: i64) -> BoxStream<'static, Result<Bytes, RuntimeError>> {
        self.client
            .follow_stderr(sandbox, since)
            .map(|item| item.map_err(RuntimeError::from))
            .boxed()
    }

    async fn teardown(&self, teardown: &Teardown) -> Result<(), RuntimeError> {
        Ok(self.remove_all(teardown).await?)
    }

    async fn list_owned(&self) -> Result<Vec<Owned>, RuntimeError> {
        let containers = self.client.list_containers().await?;
        let networks = self.client.list_networks().await?;
        let users = self.users.list().await?;
        self.subnets.seed(
            networks
                .iter()
                .filter_map(|n| Some((n.deployment_id.clone(), n.subnet.clone()?))),
        );
        let containers = containers.into_iter().map(|c| Owned {
            kind: OwnedKind::Sandbox { session: c.session },
            id: c.id,
            deployment_id: c.deployment_id,
        });
        let networks = networks.into_iter().map(|n| Owned {
            kind: OwnedKind::Place {
                ahead: n.made_ahead,
            },
            id: n.id,
            deployment_id: n.deployment_id,
        });
        let users = users.into_iter().map(|u| Owned {
            kind: OwnedKind::Identity,
            id: u.name,
            deployment_id: u.deployment_id,
        });
        Ok(containers.chain(networks).chain(users).collect())
    }

    async fn remove_owned(&self, owned: &Owned) -> Result<(), RuntimeError> {
        match owned.kind {
            OwnedKind::Sandbox { .. } => self.client.remove_container(&owned.id).await?,
            OwnedKind::Place { .. } => {
                self.remove_network(&owned.deployment_id, Some(&owned.id))
                    .await?
            }
            OwnedKind::Identity => self.users.delete(&owned.id).await?,
        }
        Ok(())
    }
}
