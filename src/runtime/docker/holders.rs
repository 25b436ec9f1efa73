//! Containers that run in a network holder's namespace (see `netns.rs`): what a start needs
//! (the holder running), what a pause releases (the holder), and the replacement of such a
//! container by one on the deployment's network, which Docker offers no other way to do.

use crate::runtime::{Place, Replacement, SandboxSpec};

use super::backend::DockerBackend;
use super::places::container_spec;
use super::{ContainerState, DockerError, object_name};

impl DockerBackend {
    /// Before the start of a stopped `container` (state `state`): its network holder, when it
    /// runs in one's namespace, is started again if it stopped; if the holder is gone
    /// (removed behind mcp-runner's back), the container is replaced by one on the
    /// deployment's network, the only way it can start. Returns the container to start and
    /// the replacement, if any; `None` when the container is gone.
    pub(super) async fn prepare_start(
        &self,
        spec: &SandboxSpec,
        container: &str,
        place: &Place,
        state: &ContainerState,
    ) -> Result<Option<(String, Option<Replacement>)>, DockerError> {
        let Some(holder) = &state.joins_namespace_of else {
            return Ok(Some((container.to_owned(), None)));
        };
        match self.client.container_state(holder).await? {
            Some(h) if h.running => {}
            Some(_) => self.client.start_container(holder).await?,
            None => {
                tracing::warn!(deployment.id = %spec.deployment_id, "the network holder is gone; the container moves to the deployment's network (its own files are not kept)");
                let Some((image, _)) = self.client.container_layer(container).await? else {
                    return Ok(None);
                };
                let replacement = self.stage(spec, container, place, image).await?;
                return Ok(Some((replacement.new.clone(), Some(replacement))));
            }
        }
        Ok(Some((container.to_owned(), None)))
    }

    /// After the stop of a paused container that ran in its network holder's namespace: when
    /// it wrote nothing to its own file system, it is replaced, losing nothing, by one on the
    /// deployment's network, and the holder goes with the commit (later starts cost what they
    /// always did); otherwise the holder is stopped with it and started again before it, so
    /// that its files stay.
    pub(super) async fn release_holder(
        &self,
        spec: &SandboxSpec,
        container: &str,
        place: &Place,
    ) -> Result<Option<Replacement>, DockerError> {
        let Some(state) = self.client.container_state(container).await? else {
            return Ok(None);
        };
        let Some(holder) = &state.joins_namespace_of else {
            return Ok(None);
        };
        match self.client.container_layer(container).await? {
            Some((image, 0)) => Ok(Some(self.stage(spec, container, place, image).await?)),
            _ => {
                self.client.stop_container(holder, 0).await?;
                Ok(None)
            }
        }
    }

    /// Sets the stopped `container` aside (renamed) and makes a container of the same
    /// settings and the same `image` (id) on the deployment's network, under the old one's
    /// name. The old one keeps its place until the replacement is committed.
    async fn stage(
        &self,
        spec: &SandboxSpec,
        container: &str,
        place: &Place,
        image: String,
    ) -> Result<Replacement, DockerError> {
        let name = object_name(&spec.deployment_id);
        self.client
            .rename_container(container, &aside_name(&spec.deployment_id))
            .await?;
        let mut config = container_spec(spec, place.network.clone());
        config.image = image;
        match self.client.create_container(&config).await {
            Ok(new) => Ok(Replacement {
                deployment_id: spec.deployment_id.clone(),
                old: container.to_owned(),
                new,
            }),
            Err(e) => {
                self.put_back(&spec.deployment_id, container, &name).await;
                Err(e)
            }
        }
    }

    /// The replacement is recorded: the old container and the network holder go. What cannot
    /// be removed now goes later: the holder with the deletion (by name), the old container
    /// with the first sweep after it.
    pub(super) async fn commit_replacement(&self, r: &Replacement) -> Result<(), DockerError> {
        if let Err(e) = self.client.remove_container(&r.old).await {
            tracing::warn!(deployment.id = %r.deployment_id, error = %e, "cannot remove the replaced container");
        }
        self.client.remove_holder(&r.deployment_id).await?;
        tracing::info!(deployment.id = %r.deployment_id, container.id = %r.new, "left the network holder: the container is on the deployment's network now");
        Ok(())
    }

    /// The replacement is not recorded: the new container goes, the old one gets its name
    /// back.
    pub(super) async fn abort_replacement(&self, r: &Replacement) {
        let _ = self.client.remove_container(&r.new).await;
        self.put_back(&r.deployment_id, &r.old, &object_name(&r.deployment_id))
            .await;
    }

    async fn put_back(&self, deployment_id: &str, container: &str, name: &str) {
        if let Err(e) = self.client.rename_container(container, name).await {
            tracing::warn!(deployment.id = %deployment_id, error = %e, "cannot give the container its name back");
        }
    }
}

/// The name of a container set aside for its replacement.
fn aside_name(deployment_id: &str) -> String {
    format!("{}-replaced", object_name(deployment_id))
}
