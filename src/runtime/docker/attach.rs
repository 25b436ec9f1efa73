//! The container's stdio, for stdio MCP servers: one attach connection carrying stdin, stdout
//! and stderr, split here into the protocol path (stdout) and the diagnostics path (stderr),
//! and the container's address on its own network, for HTTP servers.

use bollard::container::LogOutput;
use bollard::query_parameters::AttachContainerOptionsBuilder;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;

use super::{Client, DockerError, docker_err};
use crate::runtime::{Attached, RuntimeError};

impl Client {
    /// Attaches to stdin, stdout and stderr of a container. Attach before starting it so that
    /// no output is missed.
    ///
    /// stderr comes from this connection rather than from Docker's logs API: following the
    /// logs makes dockerd decode its log file, protocol lines included, a second time.
    pub async fn attach_stdio(&self, id: &str) -> Result<Attached, DockerError> {
        let _permit = self.permit("attach to the container").await;
        let options = AttachContainerOptionsBuilder::default()
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .stream(true)
            .logs(false)
            .build();
        let attached = self
            .docker
            .attach_container(id, Some(options))
            .await
            .map_err(docker_err("attach to the container"))?;
        // Unbounded, but drained by a task that only copies into a bounded tail.
        let (stderr_tx, mut stderr_rx) = mpsc::unbounded_channel::<Bytes>();
        let stdout = attached
            .output
            .map_err(|e| RuntimeError::from(docker_err("read the container's stdout")(e)))
            .try_filter_map(move |out| {
                let message = match out {
                    LogOutput::StdOut { message } | LogOutput::Console { message } => Some(message),
                    LogOutput::StdErr { message } => {
                        // Nobody listening is fine: the chunk is dropped.
                        let _ = stderr_tx.send(message);
                        None
                    }
                    LogOutput::StdIn { .. } => None,
                };
                async move { Ok(message) }
            })
            .boxed();
        let stderr = futures_util::stream::poll_fn(move |cx| stderr_rx.poll_recv(cx))
            .map(Ok)
            .boxed();
        Ok(Attached {
            stdout,
            stdin: attached.input,
            stderr,
        })
    }

    /// The IPv4 address of a running container on the network `network_id` (its network
    /// holder's, when it runs in one's namespace).
    pub async fn container_ip(
        &self,
        container_id: &str,
        network_id: &str,
    ) -> Result<Option<String>, DockerError> {
        let mut info = {
            let _permit = self.permit("inspect the container").await;
            self.docker
                .inspect_container(container_id, None)
                .await
                .map_err(docker_err("inspect the container"))?
        };
        // A container in a network holder's namespace has the holder's address.
        let holder = info
            .host_config
            .as_ref()
            .and_then(|h| h.network_mode.as_deref())
            .and_then(super::joined_namespace)
            .map(str::to_owned);
        if let Some(holder) = holder {
            let _permit = self.permit("inspect the network holder").await;
            info = self
                .docker
                .inspect_container(&holder, None)
                .await
                .map_err(docker_err("inspect the network holder"))?;
        }
        let networks = info
            .network_settings
            .and_then(|n| n.networks)
            .unwrap_or_default();
        Ok(networks
            .into_values()
            .find(|e| e.network_id.as_deref() == Some(network_id))
            .and_then(|e| e.ip_address)
            .filter(|ip| !ip.is_empty()))
    }
}
