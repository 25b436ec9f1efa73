//! A deployment's place (its network on a subnet of the pool, its host account) and its
//! container: made ahead of a create or with it, and removed with everything else of the
//! deployment.

use std::collections::HashSet;

use crate::runtime::{Created, Identity, Place, RuntimeError, SandboxSpec, Teardown};

use super::backend::DockerBackend;
use super::container::grace_secs;
use super::{ContainerSpec, DockerError, holder_network_mode, object_name};

/// How often a subnet that another Docker network holds is swapped for another before the
/// pool counts as exhausted.
const SUBNET_ATTEMPTS: usize = 8;

impl DockerBackend {
    /// Makes the network of `deployment_id` on a free subnet of the pool; `ahead` labels a
    /// network made before its deployment's create. A subnet that another Docker network
    /// holds (another mcp-runner instance's, or one made by hand) is swapped for a free one,
    /// avoiding every subnet Docker knows.
    pub(super) async fn make_network(
        &self,
        deployment_id: &str,
        ahead: bool,
    ) -> Result<String, DockerError> {
        let mut avoid: HashSet<String> = HashSet::new();
        for _ in 0..SUBNET_ATTEMPTS {
            let subnet = self
                .subnets
                .take(deployment_id, &avoid)
                .ok_or_else(|| self.exhausted())?;
            match self
                .client
                .create_network(deployment_id, Some(&subnet), ahead)
                .await
            {
                Ok(id) => return Ok(id),
                Err(e) => {
                    self.subnets.give_back(deployment_id);
                    if !e.is_subnet_overlap() {
                        return Err(e);
                    }
                    tracing::info!(deployment.id = %deployment_id, subnet = %subnet, error = %e, "subnet held by another Docker network; picking another");
                    avoid.insert(subnet);
                    avoid.extend(self.client.docker_subnets().await?);
                }
            }
        }
        Err(self.exhausted())
    }

    fn exhausted(&self) -> DockerError {
        DockerError::Other(RuntimeError::Exhausted {
            reason: "subnets_exhausted",
            message: format!(
                "the network pool {} is exhausted: every subnet is in use",
                self.subnets.pool()
            ),
            advice: "delete deployments or widen NETWORK_POOL".to_owned(),
        })
    }

    /// Removes the network of a deployment (by id, or by name when the id is unknown) and
    /// gives its subnet back.
    pub(super) async fn remove_network(
        &self,
        deployment_id: &str,
        network: Option<&str>,
    ) -> Result<(), DockerError> {
        let name = object_name(deployment_id);
        self.client.remove_network(network.unwrap_or(&name)).await?;
        self.subnets.give_back(deployment_id);
        Ok(())
    }

    /// The network and host account of a deployment to come, made together (whichever was
    /// made is removed when the other fails), then its network holder.
    pub(super) async fn provision_place(&self, identity: &Identity) -> Result<Place, DockerError> {
        let id = &identity.deployment_id;
        let (network, user) = tokio::join!(
            self.make_network(id, true),
            self.users.create(&identity.username, identity.uid, id)
        );
        let network = match (network, user) {
            (Ok(network), Ok(())) => network,
            (Ok(network), Err(e)) => {
                let _ = self.remove_network(id, Some(&network)).await;
                return Err(e);
            }
            (Err(e), Ok(())) => {
                let _ = self.users.delete(&identity.username).await;
                return Err(e);
            }
            (Err(e), Err(_)) => return Err(e),
        };
        match self.client.start_holder(id, &network).await {
            Ok(Some(holder)) => {
                self.holders_lock().insert(id.clone(), holder);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(deployment.id = %id, error = %e, "cannot start a network holder; the deployment's first start joins its network the slow way");
            }
        }
        Ok(Place { network })
    }

    /// Removes a place made ahead that no create used: its holder, network and account.
    pub(super) async fn discard_place(
        &self,
        identity: &Identity,
        place: &Place,
    ) -> Result<(), DockerError> {
        let id = &identity.deployment_id;
        self.holders_lock().remove(id);
        let network = async {
            self.client.remove_holder(id).await?;
            self.remove_network(id, Some(&place.network)).await
        };
        let (network, user) = tokio::join!(network, self.users.delete(&identity.username));
        network.and(user)
    }

    /// Makes the image, the place (unless given) and the container. Independent steps run
    /// together: Docker needs the image and the network before the container, but not the
    /// host account (it takes a numeric uid:gid), which is made alongside all three. A
    /// container that starts soon on a place made ahead joins its network holder's namespace
    /// (its start skips Docker's network setup); a holder that will not be used goes.
    pub(super) async fn create_sandbox(
        &self,
        spec: &SandboxSpec,
        place: Option<&Place>,
        starts_soon: bool,
    ) -> Result<Created, DockerError> {
        let id = &spec.deployment_id;
        let holder = place.and_then(|_| self.holders_lock().remove(id));
        let (holder, unused_holder) = match holder {
            Some(h) if starts_soon => (Some(h), None),
            unused => (None, unused),
        };
        let unused_holder = async {
            if let Some(h) = &unused_holder
                && let Err(e) = self.client.remove_container(h).await
            {
                tracing::warn!(deployment.id = %id, error = %e, "cannot remove an unused network holder; deleting the deployment removes it");
            }
        };
        let docker = async {
            let network = async {
                match place {
                    Some(p) => Ok(p.network.clone()),
                    None => self.make_network(id, false).await,
                }
            };
            // A session's container uses the image its deployment's create made sure of.
            let image = async {
                match spec.session {
                    Some(_) => Ok(()),
                    None => self.client.ensure_image(&spec.image).await,
                }
            };
            let (image, network) = tokio::join!(image, network);
            image?;
            let network = network?;
            let mode = holder.as_deref().map(holder_network_mode);
            let container = self
                .client
                .create_container(&container_spec(
                    spec,
                    mode.unwrap_or_else(|| network.clone()),
                ))
                .await?;
            if starts_soon || spec.session.is_some() {
                self.made(&container, holder.clone());
            }
            Ok::<_, DockerError>((container, network))
        };
        let user = async {
            match place {
                Some(_) => Ok(()),
                None => self.users.create(&spec.username, spec.uid, id).await,
            }
        };
        let (user, docker, ()) = tokio::join!(user, docker, unused_holder);
        user?;
        let (sandbox, network) = docker?;
        Ok(Created {
            sandbox,
            place: Place { network },
        })
    }

    /// Removes the session containers, container, network holder, network and account of a
    /// deployment. Parts already gone are fine; names stand in for ids a failed create never
    /// learned. Docker's parts go in order (the network is busy until its containers are
    /// gone); the account needs no Docker and goes even when Docker does not answer.
    pub(super) async fn remove_all(&self, t: &Teardown) -> Result<(), DockerError> {
        let id = &t.identity.deployment_id;
        self.holders_lock().remove(id);
        if let Some(sandbox) = &t.sandbox {
            self.forget(sandbox);
        }
        let docker = async {
            if t.sessions {
                for c in self.client.list_containers().await? {
                    if &c.deployment_id == id && c.session.is_some() {
                        self.client.remove_container(&c.id).await?;
                    }
                }
            }
            let name = object_name(id);
            let container = t.sandbox.as_deref().unwrap_or(&name);
            self.client.stop_container(container, grace_secs()).await?;
            self.client.remove_container(container).await?;
            self.client.remove_holder(id).await?;
            self.remove_network(id, t.place.as_ref().map(|p| p.network.as_str()))
                .await
        }
        .await;
        let user = self.users.delete(&t.identity.username).await;
        docker?;
        user
    }
}

/// The container of `spec` on `network` (a network id, or a holder's namespace).
pub(super) fn container_spec(spec: &SandboxSpec, network: String) -> ContainerSpec {
    ContainerSpec {
        deployment_id: spec.deployment_id.clone(),
        image: spec.image.clone(),
        args: spec.args.clone(),
        env: spec.env.clone(),
        uid: spec.uid,
        gid: spec.gid,
        memory_mb: spec.memory_mb,
        cpus: spec.cpus,
        network,
        stdin: spec.stdin,
        session: spec.session.clone(),
    }
}
