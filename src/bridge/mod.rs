//! The MCP bridge: serves each deployment's MCP server at `/mcp-server/{id}/mcp` (Streamable
//! HTTP) and `/mcp-server/{id}/sse` (legacy SSE), whatever transport the server speaks.
//!
//! A client message goes front → session → upstream → server; what the server writes comes
//! back through the session's streams. [`Bridge`] keeps the sessions and, per shared stdio
//! deployment, the one hub that owns the process's stdio; it hears of deletions and pauses
//! from `deployments` (it is their [`LifecycleListener`]), ends idle sessions, and records
//! interaction time (at most once a second per deployment, off the request path).
//!
//! - `front/`: the HTTP handlers of both fronts, their checks, errors and bodies
//! - `session.rs`: a client session and its streams (ids, replay, resumption)
//! - `open.rs`: opening a session: starting a deployment on demand, reaching its server
//! - `upstream/`: where a session's messages go (stdio hub, Streamable HTTP, legacy SSE)
//! - `protocol/`: JSON-RPC, the line codec, SSE on the wire, protocol revisions

pub mod front;
mod open;
pub mod protocol;
pub mod session;
pub mod upstream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::deployments::{DeployError, Deployments, LifecycleListener};
use crate::domain::{Deployment, now_millis};
use crate::runtime::Attached;
use protocol::jsonrpc;
use session::{Front, Session};
use upstream::stdio::StdioHub;
use upstream::{Gone, Upstream};

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
    /// The sandbox backend or the database failed.
    #[error(transparent)]
    Deploy(#[from] DeployError),
    /// The server in the container cannot be reached (502).
    #[error("{0}")]
    Upstream(String),
    /// A stdio server leaves this many bytes of earlier messages unread on its stdin (503).
    #[error("the MCP server is not reading its input: {0} bytes of earlier messages wait")]
    Backlog(usize),
}

/// Where the MCP routes find the bridge: empty until start-up has finished.
#[derive(Clone)]
pub struct BridgeSlot {
    bridge: Arc<OnceLock<Arc<Bridge>>>,
    backend: &'static str,
}

impl BridgeSlot {
    /// An empty slot; `backend` names what start-up waits for.
    pub fn new(backend: &'static str) -> BridgeSlot {
        BridgeSlot {
            bridge: Arc::default(),
            backend,
        }
    }

    /// The bridge, once start-up has finished.
    pub fn get(&self) -> Option<Arc<Bridge>> {
        self.bridge.get().cloned()
    }

    /// Puts the bridge in (once).
    pub fn set(&self, bridge: Arc<Bridge>) {
        let _ = self.bridge.set(bridge);
    }

    /// The sandbox backend's name.
    pub fn backend(&self) -> &'static str {
        self.backend
    }
}

/// A session and the upstream its messages go to.
#[derive(Clone)]
pub struct Link {
    /// The client session.
    pub session: Arc<Session>,
    /// Its upstream.
    pub upstream: Arc<dyn Upstream>,
    /// The session's own sandbox (isolated deployments), removed when the session ends.
    pub own_sandbox: Option<String>,
}

impl Link {
    /// Forwards a client message of kind `kind` (as the front classified it) upstream.
    pub fn send(&self, message: Value, kind: jsonrpc::Kind) -> Result<(), Gone> {
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
        self.upstream.send(&self.session, message)
    }

    /// Refuses a new client message while the server falls behind (see
    /// [`Upstream::check_backlog`]).
    pub fn check_backlog(&self) -> Result<(), BridgeError> {
        self.upstream.check_backlog()
    }

    /// The client opened its GET stream: HTTP upstreams open theirs.
    pub fn get_stream_opened(&self) {
        self.upstream.open_server_stream(&self.session);
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
    /// The server URL of each HTTP deployment whose sandbox this bridge saw running.
    upstream_urls: Mutex<HashMap<String, String>>,
    stop: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Bridge {
    /// A bridge over `deployments`, which it listens to; its tasks stop with `stop`.
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
        tokio::spawn(bridge.clone().expire_idle());
        let listener: std::sync::Weak<dyn LifecycleListener> = Arc::downgrade(&bridge) as _;
        bridge.deployments.set_listener(listener);
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

    /// Ends idle sessions (and sessions already closed) until the bridge stops, then every
    /// session.
    async fn expire_idle(self: Arc<Self>) {
        let every = (self.config.session_idle / 2)
            .clamp(Duration::from_millis(100), Duration::from_secs(5));
        let mut sweep = tokio::time::interval(every);
        loop {
            tokio::select! {
                () = self.stop.cancelled() => break,
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
        self.remove_own_sandbox(link.own_sandbox.clone());
        link.upstream.close(&link.session);
    }

    /// Removes a session's own sandbox, off the caller's path.
    fn remove_own_sandbox(&self, sandbox: Option<String>) {
        if let Some(sandbox) = sandbox {
            let deployments = self.deployments.clone();
            tokio::spawn(async move {
                if let Err(e) = deployments.remove_session(&sandbox).await {
                    tracing::warn!(container.id = %sandbox, error = %e, "cannot remove a session container");
                }
            });
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
        let deployments = self.deployments.clone();
        let id = deployment_id.to_owned();
        tokio::spawn(async move {
            if let Err(e) = deployments.touch(&id, now).await {
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
}

impl LifecycleListener for Bridge {
    fn deleting(&self, id: &str) {
        self.end_deployment(id);
        // Gone for good: forget its bookkeeping too.
        lock(&self.touched).remove(id);
        lock(&self.starting).remove(id);
        lock(&self.upstream_urls).remove(id);
    }

    fn paused(&self, id: &str) {
        self.end_deployment(id);
    }

    fn stdio_started(&self, d: &Deployment, attached: Attached) {
        self.adopt(d, attached);
    }
}

#[cfg(test)]
mod tests;
