//! The container's stdio, for stdio MCP servers: one attach connection carrying stdin and
//! stdout (stderr stays out of it: the stderr follower reads it from the logs), and the
//! container's address on its own network, for HTTP servers.

use std::pin::Pin;

use bollard::container::LogOutput;
use bollard::query_parameters::AttachContainerOptionsBuilder;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use tokio::io::AsyncWrite;

use super::{Runtime, RuntimeError, docker_err};

/// A stdio attachment: stdout chunks (Docker's frames already demultiplexed, in any size) and
/// a writer to stdin.
pub struct Attached {
    /// stdout bytes, chunked as Docker's frames arrive.
    pub stdout: BoxStream<'static, Result<Bytes, RuntimeError>>,
    /// The container's stdin.
    pub stdin: Pin<Box<dyn AsyncWrite + Send>>,
}

impl Runtime {
    /// Attaches to stdin and stdout of a container. Attach before starting it so that no
    /// output is missed.
    pub async fn attach_stdio(&self, id: &str) -> Result<Attached, RuntimeError> {
        let _permit = self.permit().await;
        let options = AttachContainerOptionsBuilder::default()
            .stdin(true)
            .stdout(true)
            .stderr(false)
            .stream(true)
            .logs(false)
            .build();
        let attached = self
            .docker
            .attach_container(id, Some(options))
            .await
            .map_err(docker_err("attach to the container"))?;
        let stdout = attached
            .output
            .map_err(|e| docker_err("read the container's stdout")(e))
            .try_filter_map(|out| async move {
                Ok(match out {
                    LogOutput::StdOut { message } | LogOutput::Console { message } => Some(message),
                    LogOutput::StdErr { .. } | LogOutput::StdIn { .. } => None,
                })
            })
            .boxed();
        Ok(Attached {
            stdout,
            stdin: attached.input,
        })
    }

    /// The IPv4 address of a running container on the network `network_id`.
    pub async fn container_ip(
        &self,
        container_id: &str,
        network_id: &str,
    ) -> Result<Option<String>, RuntimeError> {
        let _permit = self.permit().await;
        let info = self
            .docker
            .inspect_container(container_id, None)
            .await
            .map_err(docker_err("inspect the container"))?;
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
