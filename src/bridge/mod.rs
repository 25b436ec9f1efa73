//! The MCP bridge: serves each deployment's MCP server at `/mcp-server/{id}/mcp` (Streamable
//! HTTP) and `/mcp-server/{id}/sse` (legacy SSE), whatever transport the server speaks.
//!
//! `Bridge` keeps the sessions and, per stdio deployment, the one hub that owns the
//! container's attach stream; it starts stopped containers on demand, ends sessions when a
//! deployment is deleted or its process exits, and records interaction time (at most once a
//! second per deployment, off the request path).

pub mod front;
pub mod jsonrpc;
pub mod lines;
pub mod session;
pub mod sse;
pub mod stdio;
pub mod upstream_http;
pub mod version;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::HeaderValue;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::deployments::{DeployError, Deployments, Lifecycle};
use crate::domain::{Deployment, SessionMode, Status, Transport, now_millis};
use crate::runtime::Attached;
use futures_util::StreamExt;
use session::{Front, Session};
use stdio::StdioHub;
use upstream_http::{SseUpstream, StreamableUpstream};

/// Settings of the bridge.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// Largest MCP request body.
    pub max_body: usize,
    /// Longest stdout line of a stdio server.
    pub max_line: usize,
    /// Sessions idle this long are ended.
    pub session_idle: Duration,
    /// How long to wait for an HTTP server in a container to accept connections.
    pub ready_timeout: Duration,
    /// Origins allowed besides loopback ones (`scheme://host[:port]`).
    pub allowed_origins: Vec<String>,
}

/// Why a bridge operation failed, with the HTTP status it maps to.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// No such deployment (404).
    #[error("Deployment not found")]
    UnknownDeployment,
    /// Docker or the database failed.
    #[error(transparent)]
    Deploy(#[from] DeployError),
    /// The server in the container cannot be reached (502).
    #[error("{0}")]
    Upstream(String),
    /// A stdio server leaves this many bytes of earlier messages unread on its stdin (503).
    #[error("the MCP server is not reading its input: {0} bytes of earlier messages wait")]
    Backlog(usize),
}

/// A session and the upstream its messages go to.
#[derive(Clone)]
pub struct Link {
    /// The client session.
    pub session: Arc<Session>,
    /// Its upstream.
    pub upstream: Upstream,
    /// The session's own container (isolated deployments), removed when the session ends.
    pub own_container: Option<String>,
}

/// Where a session's messages go.
#[derive(Clone)]
pub enum Upstream {
    /// The deployment's shared stdio process.
    Stdio(Arc<StdioHub>),
    /// An upstream Streamable HTTP session.
    Streamable(Arc<StreamableUpstream>),
    /// An upstream legacy SSE connection.
    Sse(Arc<SseUpstream>),
}

impl Link {
    /// Forwards a client message of kind `kind` (as the front classified it) upstream.
    /// False when the upstream is gone.
    pub fn send(&self, message: Value, kind: jsonrpc::Kind) -> bool {
        self.session.touch();
        match kind {
            jsonrpc::Kind::Request => {
                if let Some(id) = jsonrpc::id(&message) {
                    self.session.request_sent(jsonrpc::key(id));
                }
            }
            // A cancelled request may never be answered (the spec asks servers not to).
            jsonrpc::Kind::Notification
                if jsonrpc::method(&message) == Some("notifications/cancelled") =>
            {
                if let Some(id) = message.pointer("/params/requestId") {
                    self.session.request_cancelled(&jsonrpc::key(id));
                }
            }
            _ => {}
        }
        match &self.upstream {
            Upstream::Stdio(hub) => hub.send(self.session.clone(), message),
            Upstream::Streamable(up) => {
                up.send(self.session.clone(), message);
                true
            }
            Upstream::Sse(up) => {
                up.send(self.session.clone(), message);
                true
            }
        }
    }

    /// Refuses a new client message while a stdio server leaves too much of its input
    /// unread (see [`stdio::STDIN_BACKLOG_LIMIT`]); checked before anything is recorded
    /// for the message, so that a refused one leaves no trace in the session.
    pub fn check_backlog(&self) -> Result<(), BridgeError> {
        match &self.upstream {
            Upstream::Stdio(hub) => hub
                .backlog_full()
                .map_or(Ok(()), |n| Err(BridgeError::Backlog(n))),
            Upstream::Streamable(_) | Upstream::Sse(_) => Ok(()),
        }
    }

    /// The client opened its GET stream: HTTP upstreams open theirs.
    pub fn get_stream_opened(&self) {
        if let Upstream::Streamable(up) = &self.upstream {
            up.open_get_stream(self.session.clone());
        }
    }
}

/// The bridge.
pub struct Bridge {
    deployments: Deployments,
    config: BridgeConfig,
    http: reqwest::Client,
    sessions: Mutex<HashMap<String, Link>>,
    hubs: Mutex<HashMap<String, Arc<StdioHub>>>,
    starting: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    touched: Mutex<HashMap<String, i64>>,
    /// The server URL of each HTTP deployment whose container this bridge saw running.
    upstream_urls: Mutex<HashMap<String, String>>,
    stop: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Bridge {
    /// A bridge over `deployments`; its tasks stop with `stop`.
    pub fn new(
        deployments: Deployments,
        config: BridgeConfig,
        stop: CancellationToken,
    ) -> Arc<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        let bridge = Arc::new(Bridge {
            deployments,
            config,
            http,
            sessions: Mutex::default(),
            hubs: Mutex::default(),
            starting: Mutex::default(),
            touched: Mutex::default(),
            upstream_urls: Mutex::default(),
            stop,
        });
        tokio::spawn(bridge.clone().watch());
        let owner = Arc::downgrade(&bridge);
        bridge
            .deployments
            .set_stdio_owner(Box::new(move |d, attached| {
                if let Some(bridge) = owner.upgrade() {
                    bridge.adopt(d, attached);
                }
            }));
        bridge
    }

    /// The number of open sessions of each front.
    pub fn session_counts(&self) -> Vec<(Front, usize)> {
        let sessions = lock(&self.sessions);
        [Front::Streamable, Front::Legacy]
            .into_iter()
            .map(|f| {
                (
                    f,
                    sessions.values().filter(|l| l.session.front == f).count(),
                )
            })
            .collect()
    }

    /// Ends every session (shutdown): their open streams end, so the HTTP server can finish
    /// its connections instead of waiting for clients that never hang up.
    pub fn close_all(&self) {
        let links: Vec<Link> = lock(&self.sessions).values().cloned().collect();
        for link in links {
            self.end_session(&link);
        }
    }

    /// The bridge's settings.
    pub fn config(&self) -> &BridgeConfig {
        &self.config
    }

    /// Ends sessions of deleted or paused deployments, and idle sessions.
    async fn watch(self: Arc<Self>) {
        let mut events = self.deployments.subscribe();
        let every = (self.config.session_idle / 2)
            .clamp(Duration::from_millis(100), Duration::from_secs(5));
        let mut sweep = tokio::time::interval(every);
        loop {
            tokio::select! {
                () = self.stop.cancelled() => break,
                ev = events.recv() => match ev {
                    Ok(Lifecycle::Deleting(id)) => {
                        self.end_deployment(&id);
                        // Gone for good: forget its bookkeeping too.
                        lock(&self.touched).remove(&id);
                        lock(&self.starting).remove(&id);
                        lock(&self.upstream_urls).remove(&id);
                    }
                    Ok(Lifecycle::Paused(id)) => self.end_deployment(&id),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => break,
                },
                _ = sweep.tick() => self.sweep(),
            }
        }
        let all: Vec<Link> = lock(&self.sessions).drain().map(|(_, l)| l).collect();
        for link in all {
            link.session.close();
        }
    }

    fn sweep(&self) {
        let idle_ms = i64::try_from(self.config.session_idle.as_millis()).unwrap_or(i64::MAX);
        let now = now_millis();
        let expired: Vec<Link> = lock(&self.sessions)
            .values()
            .filter(|l| l.session.is_closed() || now - l.session.last_active() > idle_ms)
            .cloned()
            .collect();
        for link in expired {
            tracing::debug!(session.id = %link.session.id, "session expired or closed");
            self.end_session(&link);
        }
    }

    fn end_deployment(&self, deployment_id: &str) {
        let links: Vec<Link> = lock(&self.sessions)
            .values()
            .filter(|l| l.session.deployment_id == deployment_id)
            .cloned()
            .collect();
        for link in links {
            self.end_session(&link);
        }
        lock(&self.hubs).remove(deployment_id);
    }

    /// Ends a session and tells its upstream.
    pub fn end_session(&self, link: &Link) {
        if lock(&self.sessions).remove(&link.session.id).is_none() && link.session.is_closed() {
            return; // already ended
        }
        link.session.close();
        if let Some(container) = link.own_container.clone() {
            let deployments = self.deployments.clone();
            tokio::spawn(async move {
                if let Err(e) = deployments.remove_session_container(&container).await {
                    tracing::warn!(container.id = %container, error = %e, "cannot remove a session container");
                }
            });
        }
        match &link.upstream {
            Upstream::Stdio(hub) => hub.leave(&link.session.id),
            Upstream::Streamable(up) => {
                let (up, session) = (up.clone(), link.session.clone());
                tokio::spawn(async move { up.close(&session).await });
            }
            Upstream::Sse(up) => up.close(),
        }
    }

    /// The live session `id` of deployment `deployment_id`.
    pub fn session(&self, deployment_id: &str, id: &str) -> Option<Link> {
        let link = lock(&self.sessions).get(id).cloned()?;
        (link.session.deployment_id == deployment_id && !link.session.is_closed()).then_some(link)
    }

    /// Records MCP traffic of a deployment: its idle deadlines slide. Written at most once per
    /// second per deployment, by a task of its own.
    pub fn touch(&self, deployment_id: &str) {
        let Some(now) = self.touch_due(deployment_id) else {
            return;
        };
        let store = self.deployments.store().clone();
        let id = deployment_id.to_owned();
        tokio::spawn(async move {
            if let Err(e) = store.touch(&id, now).await {
                tracing::warn!(deployment.id = %id, error = %e, "cannot record interaction");
            }
        });
    }

    /// The time to record an interaction with `deployment_id` now, unless one was recorded
    /// less than a second ago.
    fn touch_due(&self, deployment_id: &str) -> Option<i64> {
        let now = now_millis();
        let mut touched = lock(&self.touched);
        let last = touched.entry(deployment_id.to_owned()).or_insert(0);
        if now - *last < 1000 {
            return None;
        }
        *last = now;
        Some(now)
    }

    /// Records an interaction before a stopped deployment starts: its `pause_at` is in the
    /// past, and the reaper must not pause it again the moment it runs.
    async fn touch_before_start(&self, deployment_id: &str) {
        let now = self.touch_due(deployment_id).unwrap_or_else(now_millis);
        if let Err(e) = self.deployments.store().touch(deployment_id, now).await {
            tracing::warn!(deployment.id = %deployment_id, error = %e, "cannot record interaction");
        }
    }

    /// Opens a session of deployment `deployment_id`: starts its container when stopped and
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
        let (upstream, own_container) = if d.session_mode == SessionMode::Isolated {
            self.isolated_upstream(&d, &session, authorization).await?
        } else {
            let upstream = match &d.transport {
                Transport::Stdio => {
                    let hub = self.stdio_hub(&d).await?;
                    hub.join(session.clone());
                    Upstream::Stdio(hub)
                }
                Transport::StreamableHttp { endpoint } | Transport::Sse { endpoint } => {
                    let url = self.http_url(&d, endpoint).await?;
                    self.http_upstream(&d.transport, url, authorization, &session)
                        .await?
                }
            };
            (upstream, None)
        };
        let link = Link {
            session,
            upstream,
            own_container,
        };
        lock(&self.sessions).insert(link.session.id.clone(), link.clone());
        self.touch(deployment_id);
        Ok(link)
    }

    /// The URL of an HTTP deployment's server, starting its container when needed. While
    /// the container is known to run (its stderr follower is alive), a new session costs no
    /// Docker call and no database write.
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
        let (Some(container), Some(network)) = (&d.container_id, &d.network_id) else {
            return Err(BridgeError::UnknownDeployment);
        };
        let url = self.wait_ready(container, network, endpoint).await?;
        lock(&self.upstream_urls).insert(d.id.clone(), url.clone());
        Ok(url)
    }

    fn start_lock(&self, deployment_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.starting)
            .entry(deployment_id.to_owned())
            .or_default()
            .clone()
    }

    /// The hub of a stdio deployment, starting the process when needed. A process this
    /// bridge did not start (it ran before a restart of mcp-runner) is restarted: its
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
    fn adopt(&self, d: &Deployment, attached: Attached) -> Arc<StdioHub> {
        let hub = StdioHub::spawn(
            d.id.clone(),
            attached,
            self.config.max_line,
            self.stop.child_token(),
        );
        lock(&self.hubs).insert(d.id.clone(), hub.clone());
        hub
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

    /// The upstream of one session of an isolated deployment: a container of its own.
    async fn isolated_upstream(
        &self,
        d: &Deployment,
        session: &Arc<Session>,
        authorization: Option<HeaderValue>,
    ) -> Result<(Upstream, Option<String>), BridgeError> {
        let stdio = d.transport.is_stdio();
        let (container, attached) = self
            .deployments
            .start_session_container(d, &session.id, stdio)
            .await?;
        let made = async {
            if let Some(attached) = attached {
                let hub = StdioHub::spawn(
                    d.id.clone(),
                    attached,
                    self.config.max_line,
                    self.stop.child_token(),
                );
                hub.join(session.clone());
                return Ok(Upstream::Stdio(hub));
            }
            let network = d
                .network_id
                .as_deref()
                .ok_or(BridgeError::UnknownDeployment)?;
            let endpoint = match &d.transport {
                Transport::StreamableHttp { endpoint } | Transport::Sse { endpoint } => endpoint,
                Transport::Stdio => return Err(BridgeError::UnknownDeployment),
            };
            let url = self.wait_ready(&container, network, endpoint).await?;
            self.http_upstream(&d.transport, url, authorization, session)
                .await
        }
        .await;
        match made {
            Ok(upstream) => Ok((upstream, Some(container))),
            Err(e) => {
                let _ = self.deployments.remove_session_container(&container).await;
                Err(e)
            }
        }
    }

    /// The upstream of an HTTP server at `url`.
    async fn http_upstream(
        &self,
        transport: &Transport,
        url: String,
        authorization: Option<HeaderValue>,
        session: &Arc<Session>,
    ) -> Result<Upstream, BridgeError> {
        Ok(match transport {
            Transport::Sse { .. } => Upstream::Sse(
                SseUpstream::connect(
                    self.http.clone(),
                    &url,
                    authorization,
                    session.clone(),
                    self.config.ready_timeout,
                )
                .await
                .map_err(BridgeError::Upstream)?,
            ),
            _ => Upstream::Streamable(StreamableUpstream::new(
                self.http.clone(),
                url,
                authorization,
            )),
        })
    }

    /// Waits until the HTTP server in a running container accepts connections; returns the
    /// endpoint URL with the container's address.
    async fn wait_ready(
        &self,
        container: &str,
        network: &str,
        endpoint: &str,
    ) -> Result<String, BridgeError> {
        let mut url = reqwest::Url::parse(endpoint)
            .map_err(|e| BridgeError::Upstream(format!("bad endpoint URL: {e}")))?;
        let port = url.port_or_known_default().unwrap_or(80);
        let deadline = tokio::time::Instant::now() + self.config.ready_timeout;
        let rt = self.deployments.runtime();
        let ip = loop {
            if let Some(ip) = rt
                .container_ip(container, network)
                .await
                .map_err(DeployError::from)?
            {
                break ip;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(BridgeError::Upstream("the container got no address".into()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let addr: SocketAddr = format!("{ip}:{port}")
            .parse()
            .map_err(|_| BridgeError::Upstream(format!("bad container address {ip}")))?;
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
            if !rt
                .container_state(container)
                .await
                .map_err(DeployError::from)?
                .is_some_and(|s| s.running)
            {
                return Err(BridgeError::Upstream(
                    "the container exited before its MCP server accepted connections".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
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
