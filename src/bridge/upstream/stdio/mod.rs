//! One stdio server process shared by many client sessions.
//!
//! A single task reads the container's attach stream; the hub's state sits behind a lock
//! that this task and the request handlers take in turn, so that a client message goes to
//! the process's stdin from the handler that received it, without a hop to another task.
//! The hub rewrites the id of every client request to one of its own (and the progress
//! token with it), so that answers and progress go back to the session and stream they
//! belong to; it sends `initialize` to the process once and answers later sessions from the
//! cached result; and it routes the server's own requests (sampling, elicitation, roots,
//! ping) to the one session that caused them:
//!
//! 1. the session with requests in flight, when exactly one has;
//! 2. otherwise the session whose in-flight request is the oldest, preferring requests that
//!    have not already caused a server request;
//! 3. with nothing in flight, the session that spoke last.
//!
//! Notifications that belong to no request (list changes, log messages) reach every session;
//! `notifications/resources/updated` only the sessions that subscribed to the resource.
//! Servers that keep per-client state beyond this need `sessionMode: "isolated"`.
//!
//! - `client.rs`: messages from the clients; `server.rs`: messages from the server
//! - `initialize.rs`: the one `initialize` and the cached answer for later sessions
//! - `stdin.rs`: writing to the process without letting a slow reader stall the hub

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{Gone, Upstream};
use crate::bridge::BridgeError;
use crate::bridge::protocol::jsonrpc::{self, code};
use crate::bridge::protocol::lines::{Line, LineAssembler};
use crate::bridge::session::Session;
use crate::runtime::{Attached, RuntimeError};

/// How many bytes of client messages may wait for a stdio server to read its stdin before
/// new ones are refused (503). A server that stops reading would otherwise let its clients
/// grow mcp-runner's memory without bound. A message is taken while the backlog is under the
/// limit, so the most a hub holds is this plus one maximal request body for each request
/// being forwarded at that moment.
pub const STDIN_BACKLOG_LIMIT: usize = 8 << 20;

/// Handle on a running stdio hub. When the last handle goes, the hub stops and lets go of
/// the process's pipes.
pub struct StdioHub {
    shared: Arc<Shared>,
}

/// What the handles and the stdout reader share.
struct Shared {
    hub: std::sync::Mutex<Hub>,
    /// Cancelled when the process has exited and the hub stopped.
    ended: CancellationToken,
    /// Cancelled when the last handle is dropped.
    unused: CancellationToken,
}

impl Drop for StdioHub {
    fn drop(&mut self) {
        self.shared.unused.cancel();
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Hub> {
        self.hub.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl StdioHub {
    /// Starts the hub on an attachment made before the container started.
    pub fn spawn(
        deployment_id: String,
        attached: Attached,
        max_line: usize,
        stop: CancellationToken,
    ) -> Arc<StdioHub> {
        let Attached { stdout, stdin, .. } = attached;
        // A line goes to stdin at once when the pipe takes it; what the pipe cannot take now
        // waits for a writer task of its own, so that a server that stops reading stdin
        // cannot stop us from reading its stdout.
        let stdin = Stdin::new(stdin);
        let hub = Hub {
            deployment_id,
            sessions: HashMap::new(),
            next_id: 0,
            pending: HashMap::new(),
            by_client: HashMap::new(),
            progress: HashMap::new(),
            server_requests: HashMap::new(),
            init: Init::None,
            initialized_sent: false,
            subscriptions: HashMap::new(),
            capabilities: HashMap::new(),
            last_speaker: None,
            stdin: stdin.clone(),
            stopped: false,
        };
        let shared = Arc::new(Shared {
            hub: std::sync::Mutex::new(hub),
            ended: CancellationToken::new(),
            unused: CancellationToken::new(),
        });
        tokio::spawn(shared.clone().read(stdout, stdin, max_line, stop));
        Arc::new(StdioHub { shared })
    }

    /// The bytes of client messages still waiting for the process to read its stdin, when
    /// they reach [`STDIN_BACKLOG_LIMIT`]: new messages are refused until it reads.
    pub fn backlog_full(&self) -> Option<usize> {
        let waiting = self.shared.lock().stdin.backlog.load(Ordering::Relaxed);
        (waiting >= STDIN_BACKLOG_LIMIT).then_some(waiting)
    }

    /// Whether the process is still served.
    pub fn is_alive(&self) -> bool {
        !self.shared.ended.is_cancelled()
    }

    /// Adds a session.
    pub fn join(&self, session: Arc<Session>) {
        let mut hub = self.shared.lock();
        if !hub.stopped {
            hub.sessions.insert(session.id.clone(), session);
        }
    }

    /// Removes a session; its requests still in flight are cancelled upstream.
    pub fn leave(&self, session_id: &str) {
        let mut hub = self.shared.lock();
        if !hub.stopped {
            hub.leave(session_id);
        }
    }

    /// Forwards a client message. False when the hub has stopped.
    pub fn forward(&self, session: Arc<Session>, message: Value) -> bool {
        let mut hub = self.shared.lock();
        if hub.stopped {
            return false;
        }
        hub.on_client(&session, message);
        true
    }
}

struct Pending {
    session: String,
    client_id: Value,
    token: Option<String>,
    at: Instant,
    /// A server request was already routed to this request's session on its behalf.
    asked: bool,
}

enum Init {
    None,
    InFlight {
        upstream_id: u64,
        waiters: Vec<(Arc<Session>, Value, String)>,
    },
    Done {
        result: Value,
        version: String,
    },
}

struct Hub {
    deployment_id: String,
    sessions: HashMap<String, Arc<Session>>,
    next_id: u64,
    /// Our request id → who asked.
    pending: HashMap<u64, Pending>,
    /// (session, client id key) → our request id, for cancellation.
    by_client: HashMap<(String, String), u64>,
    /// Our progress token key → (session, client's token, client request key).
    progress: HashMap<String, (String, Value, String)>,
    /// Server request id key → (session it went to).
    server_requests: HashMap<String, String>,
    init: Init,
    initialized_sent: bool,
    subscriptions: HashMap<String, HashSet<String>>,
    /// The capabilities each session declared in its own `initialize`.
    capabilities: HashMap<String, Value>,
    last_speaker: Option<String>,
    stdin: Arc<Stdin>,
    /// The process is gone: nothing more is taken.
    stopped: bool,
}

mod client;
mod initialize;
mod server;
mod stdin;
#[cfg(test)]
mod tests;

use stdin::Stdin;

impl Shared {
    /// Reads the process's stdout until it ends, the deployment stops or the last handle
    /// goes; then fails what is in flight and ends the sessions.
    async fn read(
        self: Arc<Self>,
        mut stdout: futures_util::stream::BoxStream<'static, Result<Bytes, RuntimeError>>,
        stdin: Arc<Stdin>,
        max_line: usize,
        stop: CancellationToken,
    ) {
        let mut writer = tokio::spawn(stdin.drain());
        let mut lines = LineAssembler::new(max_line);
        let deployment_id = self.lock().deployment_id.clone();
        let reason = loop {
            tokio::select! {
                () = stop.cancelled() => break "the deployment is stopping",
                () = self.unused.cancelled() => break "the bridge stopped",
                // The writer only ends when stdin refuses a write: nothing sent reaches the
                // process any more, so its requests would wait for ever.
                _ = &mut writer => break "the server's stdin is closed",
                chunk = stdout.next() => match chunk {
                    Some(Ok(bytes)) => {
                        let lines = lines.push(&bytes);
                        let mut hub = self.lock();
                        for line in lines {
                            match line {
                                Line::Complete(l) => hub.on_server(&l),
                                Line::TooLong(n) => tracing::warn!(
                                    deployment.id = %deployment_id,
                                    bytes = n,
                                    "dropped a stdout line longer than the limit"
                                ),
                            }
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(deployment.id = %deployment_id, error = %e, "stdout stream failed");
                        break "the server's output stream failed";
                    }
                    None => break "the MCP server process exited",
                },
            }
        };
        tracing::info!(deployment.id = %deployment_id, reason, "stdio bridge stopped");
        self.ended.cancel();
        {
            let mut hub = self.lock();
            hub.stopped = true;
            hub.fail_everything(reason);
        }
        writer.abort();
    }
}

impl Hub {
    fn write(&self, message: &Value) {
        let mut line = message.to_string().into_bytes();
        line.push(b'\n');
        self.stdin.send(Bytes::from(line), self.pending.len() > 1);
    }

    fn leave(&mut self, session_id: &str) {
        self.sessions.remove(session_id);
        self.capabilities.remove(session_id);
        for subs in self.subscriptions.values_mut() {
            subs.remove(session_id);
        }
        self.server_requests.retain(|_, s| s != session_id);
        let abandoned: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.session == session_id)
            .map(|(id, _)| *id)
            .collect();
        for our_id in abandoned {
            if let Some(p) = self.pending.remove(&our_id) {
                self.by_client
                    .remove(&(p.session.clone(), jsonrpc::key(&p.client_id)));
                if let Some(t) = p.token {
                    self.progress.remove(&t);
                }
            }
            self.write(&json!({
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": {"requestId": our_id, "reason": "the client session ended"}
            }));
        }
        if self.last_speaker.as_deref() == Some(session_id) {
            self.last_speaker = None;
        }
    }

    /// The process is gone: every request in flight gets an error at once and every session
    /// ends (its next use is a 404).
    fn fail_everything(&mut self, reason: &str) {
        let message = format!("{reason}; the session has ended, initialize a new one");
        for p in self.pending.values() {
            if let Some(s) = self.sessions.get(&p.session) {
                let error = jsonrpc::error_response(
                    p.client_id.clone(),
                    code::SERVER_UNAVAILABLE,
                    &message,
                    None,
                );
                s.deliver(&error, Some(&jsonrpc::key(&p.client_id)));
            }
        }
        if let Init::InFlight { waiters, .. } = &self.init {
            for (s, client_id, _) in waiters {
                let error = jsonrpc::error_response(
                    client_id.clone(),
                    code::SERVER_UNAVAILABLE,
                    &message,
                    None,
                );
                s.deliver(&error, Some(&jsonrpc::key(client_id)));
            }
        }
        for s in self.sessions.values() {
            s.close();
        }
        self.pending.clear();
        self.sessions.clear();
    }
}

impl Upstream for StdioHub {
    fn send(&self, session: &Arc<Session>, message: Value) -> Result<(), Gone> {
        match self.forward(session.clone(), message) {
            true => Ok(()),
            false => Err(Gone),
        }
    }

    fn check_backlog(&self) -> Result<(), BridgeError> {
        self.backlog_full()
            .map_or(Ok(()), |n| Err(BridgeError::Backlog(n)))
    }

    fn close(&self, session: &Arc<Session>) {
        self.leave(&session.id);
    }
}
