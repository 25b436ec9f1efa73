//! Opening a session: the deployment is started when it does not run, and the session is
//! connected to its server: the shared stdio process (started attached when needed), the
//! HTTP server once it accepts connections, or, for an isolated deployment, a sandbox of the
//! session's own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::header::HeaderValue;

use super::session::{Front, Session};
use super::upstream::{self, stdio::StdioHub};
use super::{Bridge, BridgeError, Link, lock};
use crate::deployments::DeployError;
use crate::domain::{Deployment, SessionMode, Status, now_millis};
use crate::runtime::{Attached, Place};

/// How often a sandbox's address and its server's port are looked at while it comes up.
const READY_POLL: Duration = Duration::from_millis(50);

impl Bridge {
    /// Opens a session of deployment `deployment_id`: starts its sandbox when stopped and
    /// connects the session to the server.
    pub async fn open(
        &self,
        deployment_id: &str,
        front: Front,
        authorization: Option<HeaderValue>,
    ) -> Result<Link, BridgeError> {
        let d = match self.deployments.get(deployment_id).await {
            Ok(d) => d,
            Err(DeployError::NotFound) => return Err(BridgeError::UnknownDeployment),
            Err(e) => return Err(e.into()),
        };
        if d.status != Status::Running {
            self.touch_before_start(deployment_id).await;
        }
        let session = Session::new(new_session_id(), d.id.clone(), front, d.transport.name());
        let (upstream, own_sandbox) = upstream::connect(self, &d, &session, authorization).await?;
        let link = Link {
            session,
            upstream,
            own_sandbox,
        };
        lock(&self.sessions).insert(link.session.id.clone(), link.clone());
        self.touch(deployment_id);
        Ok(link)
    }

    /// Records an interaction before a stopped deployment starts: its `pause_at` is in the
    /// past, and the reaper must not pause it again the moment it runs.
    async fn touch_before_start(&self, deployment_id: &str) {
        let now = self.touch_due(deployment_id).unwrap_or_else(now_millis);
        if let Err(e) = self.deployments.touch(deployment_id, now).await {
            tracing::warn!(deployment.id = %deployment_id, error = %e, "cannot record interaction");
        }
    }

    /// The stdio process a session talks to: the deployment's shared one, or a process of
    /// the session's own (isolated deployments; its sandbox is returned too).
    pub(super) async fn stdio_process(
        &self,
        d: &Deployment,
        session: &Session,
    ) -> Result<(Arc<StdioHub>, Option<String>), BridgeError> {
        if d.session_mode == SessionMode::Shared {
            return Ok((self.stdio_hub(d).await?, None));
        }
        let (sandbox, attached) = self.deployments.start_session(d, &session.id, true).await?;
        let Some(attached) = attached else {
            self.remove_own_sandbox(Some(sandbox));
            return Err(BridgeError::Upstream(
                "the session's process started without its stdio".into(),
            ));
        };
        Ok((self.spawn_hub(d, attached), Some(sandbox)))
    }

    /// The URL of the HTTP server a session talks to: the deployment's shared one (started
    /// when needed), or one of the session's own (isolated deployments; its sandbox is
    /// returned too). Either accepts connections.
    pub(super) async fn http_server(
        &self,
        d: &Deployment,
        session: &Session,
        endpoint: &str,
    ) -> Result<(String, Option<String>), BridgeError> {
        if d.session_mode == SessionMode::Shared {
            return Ok((self.http_url(d, endpoint).await?, None));
        }
        let (sandbox, _) = self
            .deployments
            .start_session(d, &session.id, false)
            .await?;
        let ready = match &d.network_id {
            Some(network) => self.wait_ready(&sandbox, network, endpoint).await,
            None => Err(BridgeError::UnknownDeployment),
        };
        match ready {
            Ok(url) => Ok((url, Some(sandbox))),
            Err(e) => {
                self.remove_own_sandbox(Some(sandbox));
                Err(e)
            }
        }
    }

    /// The URL of an HTTP deployment's server, starting its sandbox when needed. While the
    /// sandbox is known to run (its stderr follower is alive), a new session costs no
    /// backend call and no database write.
    async fn http_url(&self, d: &Deployment, endpoint: &str) -> Result<String, BridgeError> {
        if self.deployments.known_running(&d.id)
            && let Some(url) = lock(&self.upstream_urls).get(&d.id)
        {
            return Ok(url.clone());
        }
        let d = {
            let start = self.start_lock(&d.id);
            let _guard = start.lock().await;
            self.deployments.start(&d.id).await?
        };
        let (Some(sandbox), Some(network)) = (&d.container_id, &d.network_id) else {
            return Err(BridgeError::UnknownDeployment);
        };
        let url = self.wait_ready(sandbox, network, endpoint).await?;
        lock(&self.upstream_urls).insert(d.id.clone(), url.clone());
        Ok(url)
    }

    fn start_lock(&self, deployment_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.starting)
            .entry(deployment_id.to_owned())
            .or_default()
            .clone()
    }

    /// The hub of a shared stdio deployment, starting the process when needed. A process
    /// this bridge did not start (it ran before a restart of mcp-runner) is restarted: its
    /// protocol state is unknown.
    async fn stdio_hub(&self, d: &Deployment) -> Result<Arc<StdioHub>, BridgeError> {
        let start = self.start_lock(&d.id);
        let _guard = start.lock().await;
        if let Some(hub) = lock(&self.hubs).get(&d.id).filter(|h| h.is_alive()) {
            return Ok(hub.clone());
        }
        let attached = self.deployments.start_stdio(d).await?;
        Ok(self.adopt(d, attached))
    }

    /// Takes over the stdio of a deployment's process started attached: its hub.
    pub(super) fn adopt(&self, d: &Deployment, attached: Attached) -> Arc<StdioHub> {
        let hub = self.spawn_hub(d, attached);
        lock(&self.hubs).insert(d.id.clone(), hub.clone());
        hub
    }

    fn spawn_hub(&self, d: &Deployment, attached: Attached) -> Arc<StdioHub> {
        StdioHub::spawn(
            d.id.clone(),
            attached,
            self.config.max_line,
            self.stop.child_token(),
        )
    }

    /// Restarts, attached, the stdio processes that ran before mcp-runner restarted (see
    /// `Reconciled::stdio_to_restart`), a few at a time.
    pub async fn restart_stdio(self: Arc<Self>, ids: Vec<String>) {
        futures_util::stream::iter(ids)
            .for_each_concurrent(4, |id| {
                let bridge = self.clone();
                async move {
                    let started = match bridge.deployments.get(&id).await {
                        Ok(d) => bridge.stdio_hub(&d).await.map(drop),
                        Err(e) => Err(e.into()),
                    };
                    if let Err(e) = started {
                        tracing::warn!(deployment.id = %id, error = %e, "cannot restart the stdio process after the restart of mcp-runner");
                    }
                }
            })
            .await;
    }

    /// Waits until the HTTP server in a running sandbox accepts connections; returns the
    /// endpoint URL with the sandbox's address.
    async fn wait_ready(
        &self,
        sandbox: &str,
        network: &str,
        endpoint: &str,
    ) -> Result<String, BridgeError> {
        let mut url = reqwest::Url::parse(endpoint)
            .map_err(|e| BridgeError::Upstream(format!("bad endpoint URL: {e}")))?;
        let port = url.port_or_known_default().unwrap_or(80);
        let deadline = tokio::time::Instant::now() + self.config.ready_timeout;
        let place = Place {
            network: network.to_owned(),
        };
        let ip = loop {
            if let Some(ip) = self.deployments.address(sandbox, &place).await? {
                break ip;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(BridgeError::Upstream("the container got no address".into()));
            }
            tokio::time::sleep(READY_POLL).await;
        };
        let addr = SocketAddr::new(ip, port);
        loop {
            let attempt =
                tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr))
                    .await;
            if matches!(attempt, Ok(Ok(_))) {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(BridgeError::Upstream(format!(
                    "the MCP server in the container did not accept connections on port {port} within {:?}",
                    self.config.ready_timeout
                )));
            }
            if !self.deployments.is_running(sandbox).await? {
                return Err(BridgeError::Upstream(
                    "the container exited before its MCP server accepted connections".into(),
                ));
            }
            tokio::time::sleep(READY_POLL).await;
        }
        url.set_ip_host(addr.ip())
            .map_err(|()| BridgeError::Upstream("cannot address the container".into()))?;
        Ok(url.to_string())
    }
}

/// A session id: 32 random hex characters (128 bits), visible ASCII as the spec asks.
fn new_session_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
