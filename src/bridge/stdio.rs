//! One stdio server process shared by many client sessions.
//!
//! A single task reads the container's attach stream; the hub's state sits behind a lock
//! that this task and the request handlers take in turn, so that a client message goes to
//! the process's stdin from the handler that received it, without a hop to another task.
//! The hub rewrites the id of every client request to one of its own (and the progress
//! token with it), so that answers and progress
//! go back to the session and stream they belong to; it sends `initialize` to the process
//! once and answers later sessions from the cached result; and it routes the server's own
//! requests (sampling, elicitation, roots, ping) to the one session that caused them:
//!
//! 1. the session with requests in flight, when exactly one has;
//! 2. otherwise the session whose in-flight request is the oldest, preferring requests that
//!    have not already caused a server request;
//! 3. with nothing in flight, the session that spoke last.
//!
//! Notifications that belong to no request (list changes, log messages) reach every session;
//! `notifications/resources/updated` only the sessions that subscribed to the resource.
//! Servers that keep per-client state beyond this need `sessionMode: "isolated"`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::jsonrpc::{self, Kind, code};
use super::lines::{Line, LineAssembler};
use super::session::{Outgoing, Session};
use super::version;
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
    pub fn send(&self, session: Arc<Session>, message: Value) -> bool {
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

/// The process's stdin, written under the hub's lock.
struct Stdin {
    writer: tokio::sync::Mutex<std::pin::Pin<Box<dyn AsyncWrite + Send>>>,
    /// Lines (or their rest) the pipe did not take at once, oldest first.
    queue: std::sync::Mutex<VecDeque<Bytes>>,
    /// The bytes in `queue` (changed under its lock, read without it).
    backlog: AtomicUsize,
    wake: tokio::sync::Notify,
}

impl Stdin {
    fn new(writer: std::pin::Pin<Box<dyn AsyncWrite + Send>>) -> Arc<Stdin> {
        Arc::new(Stdin {
            writer: tokio::sync::Mutex::new(writer),
            queue: std::sync::Mutex::default(),
            backlog: AtomicUsize::new(0),
            wake: tokio::sync::Notify::new(),
        })
    }

    /// Writes `line` now if nothing waits before it, the pipe takes it and `busy` is false;
    /// otherwise queues it for the writer task. `busy` (other requests in flight) defers the
    /// line so that the lines of requests arriving together go out in one write: each write
    /// costs dockerd a copy and the sandboxed server a read, which under gVisor are the
    /// dearest steps of the path. An idle hub writes at once and adds no latency.
    fn send(&self, mut line: Bytes, busy: bool) {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if !busy
            && queue.is_empty()
            && let Ok(mut writer) = self.writer.try_lock()
        {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            while !line.is_empty() {
                match writer.as_mut().poll_write(&mut cx, &line) {
                    Poll::Ready(Ok(n)) if n > 0 => line.advance(n),
                    // The pipe is closed: the writer task finds out too, and ends the hub.
                    Poll::Ready(_) => break,
                    Poll::Pending => break,
                }
            }
            if line.is_empty() {
                // A socket needs no flush; anything buffered is flushed by the next write.
                let _ = writer.as_mut().poll_flush(&mut cx);
                return;
            }
        }
        self.backlog.fetch_add(line.len(), Ordering::Relaxed);
        queue.push_back(line);
        self.wake.notify_one();
    }

    /// Writes what `send` queued, in order, waiting for the pipe. Before each batch it lets
    /// the other ready tasks run once, so that the lines they send join the batch.
    async fn drain(self: Arc<Self>) {
        loop {
            self.wake.notified().await;
            loop {
                tokio::task::yield_now().await;
                // The lines stay queued until written, so that `send` cannot overtake them.
                let batch: Vec<Bytes> = self
                    .queue
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .cloned()
                    .collect();
                let Some(first) = batch.first() else { break };
                let bytes = if batch.len() == 1 {
                    first.clone()
                } else {
                    Bytes::from(batch.concat())
                };
                let mut writer = self.writer.lock().await;
                if writer.write_all(&bytes).await.is_err() || writer.flush().await.is_err() {
                    return;
                }
                drop(writer);
                self.queue
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .drain(..batch.len());
                self.backlog.fetch_sub(bytes.len(), Ordering::Relaxed);
            }
        }
    }
}

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

    fn on_client(&mut self, session: &Arc<Session>, mut message: Value) {
        self.sessions
            .entry(session.id.clone())
            .or_insert_with(|| session.clone());
        self.last_speaker = Some(session.id.clone());
        let Ok(kind) = jsonrpc::classify(&message) else {
            return;
        };
        let method = jsonrpc::method(&message).unwrap_or("").to_owned();
        match kind {
            Kind::Request if method == "initialize" => self.initialize(session, message),
            Kind::Request => {
                let Some(client_id) = jsonrpc::id(&message).cloned() else {
                    return;
                };
                self.next_id += 1;
                let our_id = self.next_id;
                let token = jsonrpc::progress_token(&message).cloned().map(|t| {
                    let ours = json!(format!("p{our_id}"));
                    self.progress.insert(
                        jsonrpc::key(&ours),
                        (session.id.clone(), t, jsonrpc::key(&client_id)),
                    );
                    jsonrpc::set_progress_token(&mut message, ours.clone());
                    jsonrpc::key(&ours)
                });
                match method.as_str() {
                    "resources/subscribe" | "resources/unsubscribe" => {
                        if let Some(uri) = message
                            .get("params")
                            .and_then(|p| p.get("uri"))
                            .and_then(Value::as_str)
                        {
                            let subs = self.subscriptions.entry(uri.to_owned()).or_default();
                            if method == "resources/subscribe" {
                                subs.insert(session.id.clone());
                            } else {
                                subs.remove(&session.id);
                            }
                        }
                    }
                    _ => {}
                }
                self.by_client
                    .insert((session.id.clone(), jsonrpc::key(&client_id)), our_id);
                self.pending.insert(
                    our_id,
                    Pending {
                        session: session.id.clone(),
                        client_id,
                        token,
                        at: Instant::now(),
                        asked: false,
                    },
                );
                jsonrpc::set_id(&mut message, json!(our_id));
                self.write(&message);
            }
            Kind::Notification => match method.as_str() {
                "notifications/initialized" => {
                    // The process hears it once; later sessions' copies would confuse it.
                    if !self.initialized_sent {
                        self.initialized_sent = true;
                        self.write(&message);
                    }
                }
                "notifications/cancelled" => {
                    let target = jsonrpc::cancelled_request_id(&message)
                        .map(|id| (session.id.clone(), jsonrpc::key(id)))
                        .and_then(|k| self.by_client.get(&k).copied());
                    if let Some(our_id) = target {
                        jsonrpc::set_cancelled_request_id(&mut message, json!(our_id));
                        self.write(&message);
                    }
                }
                _ => self.write(&message),
            },
            Kind::Response => {
                // The answer to a server request: only the session it was sent to may give it.
                let key = jsonrpc::id(&message).map(jsonrpc::key).unwrap_or_default();
                if self.server_requests.get(&key) == Some(&session.id) {
                    self.server_requests.remove(&key);
                    self.write(&message);
                } else {
                    tracing::debug!(session.id = %session.id, "dropped a response to no server request of this session");
                }
            }
        }
    }

    fn initialize(&mut self, session: &Arc<Session>, mut message: Value) {
        let declared = message
            .get("params")
            .and_then(|p| p.get("capabilities"))
            .cloned()
            .unwrap_or_else(|| json!({}));
        self.capabilities.insert(session.id.clone(), declared);
        let client_id = jsonrpc::id(&message).cloned().unwrap_or(Value::Null);
        let requested = message
            .get("params")
            .and_then(|p| p.get("protocolVersion"))
            .and_then(Value::as_str)
            .unwrap_or(version::DEFAULT)
            .to_owned();
        match &mut self.init {
            Init::Done { result, version } => {
                let answer = answer_initialize(client_id, &requested, result, version);
                deliver_init(session, &answer);
            }
            Init::InFlight { waiters, .. } => waiters.push((session.clone(), client_id, requested)),
            Init::None => {
                self.next_id += 1;
                let our_id = self.next_id;
                // The process is initialized once for every session to come: it is told the
                // client side can do everything the bridge can route, and requests for a
                // capability the chosen session did not declare are refused by the hub.
                if let Some(caps) = message
                    .get_mut("params")
                    .and_then(|p| p.get_mut("capabilities"))
                    .and_then(Value::as_object_mut)
                {
                    caps.entry("sampling").or_insert_with(|| json!({}));
                    caps.entry("elicitation").or_insert_with(|| json!({}));
                    caps.entry("roots")
                        .or_insert_with(|| json!({"listChanged": true}));
                }
                jsonrpc::set_id(&mut message, json!(our_id));
                self.init = Init::InFlight {
                    upstream_id: our_id,
                    waiters: vec![(session.clone(), client_id, requested)],
                };
                self.write(&message);
            }
        }
    }

    fn on_server(&mut self, line: &[u8]) {
        if let Some(raw) = jsonrpc::RawResult::parse(line)
            && self.server_result(&raw)
        {
            return;
        }
        let Ok(message) = serde_json::from_slice::<Value>(line) else {
            tracing::warn!(deployment.id = %self.deployment_id, "the server wrote a line that is not JSON; ignored");
            return;
        };
        let Ok(kind) = jsonrpc::classify(&message) else {
            tracing::warn!(deployment.id = %self.deployment_id, "the server wrote a malformed JSON-RPC message; ignored");
            return;
        };
        match kind {
            Kind::Response => self.server_response(message),
            Kind::Notification => self.server_notification(message),
            Kind::Request => {
                let Some(id) = jsonrpc::id(&message).cloned() else {
                    return;
                };
                let needs = required_capability(jsonrpc::method(&message).unwrap_or(""));
                match self.pick_session() {
                    Some((session, _))
                        if needs.is_some_and(|cap| {
                            self.capabilities
                                .get(&session.id)
                                .is_none_or(|c| c.get(cap).is_none())
                        }) =>
                    {
                        let cap = needs.unwrap_or_default();
                        let error = jsonrpc::error_response(
                            id,
                            code::METHOD_NOT_FOUND,
                            &format!(
                                "the client session this request belongs to did not declare the `{cap}` capability"
                            ),
                            None,
                        );
                        self.write(&error);
                    }
                    Some((session, related)) => {
                        self.server_requests
                            .insert(jsonrpc::key(&id), session.id.clone());
                        session.deliver(&message, related.as_deref());
                    }
                    None if jsonrpc::method(&message) == Some("ping") => {
                        self.write(&jsonrpc::result_response(id, json!({})));
                    }
                    None => {
                        let error = jsonrpc::error_response(
                            id,
                            code::INTERNAL_ERROR,
                            "no client session is connected to answer this request",
                            None,
                        );
                        self.write(&error);
                    }
                }
            }
        }
    }

    /// A success response routed from its text (most of what a server writes); false when it
    /// needs the `Value` path (the answer to `initialize`).
    fn server_result(&mut self, raw: &jsonrpc::RawResult<'_>) -> bool {
        if let Init::InFlight { upstream_id, .. } = &self.init
            && *upstream_id == raw.id
        {
            return false;
        }
        let Some(p) = self.take_pending(raw.id) else {
            return true;
        };
        let related = jsonrpc::key(&p.client_id);
        if let Some(s) = self.sessions.get(&p.session) {
            let text = raw.with_id(&p.client_id);
            s.deliver_text(
                text.into(),
                Outgoing::Response { error: false },
                Some(&related),
            );
        }
        true
    }

    /// Forgets request `our_id` (answered): its cancellation and progress mappings go too.
    fn take_pending(&mut self, our_id: u64) -> Option<Pending> {
        let p = self.pending.remove(&our_id)?;
        self.by_client
            .remove(&(p.session.clone(), jsonrpc::key(&p.client_id)));
        if let Some(t) = &p.token {
            self.progress.remove(t);
        }
        Some(p)
    }

    fn server_response(&mut self, mut message: Value) {
        let Some(our_id) = jsonrpc::id(&message).and_then(Value::as_u64) else {
            return;
        };
        if let Init::InFlight { upstream_id, .. } = &self.init
            && *upstream_id == our_id
        {
            self.finish_initialize(message);
            return;
        }
        let Some(p) = self.take_pending(our_id) else {
            return;
        };
        let related = jsonrpc::key(&p.client_id);
        jsonrpc::set_id(&mut message, p.client_id);
        if let Some(s) = self.sessions.get(&p.session) {
            s.deliver(&message, Some(&related));
        }
    }

    fn finish_initialize(&mut self, message: Value) {
        let waiters = match std::mem::replace(&mut self.init, Init::None) {
            Init::InFlight { waiters, .. } => waiters,
            other => {
                self.init = other;
                return;
            }
        };
        match message.get("result") {
            Some(result) => {
                let version = result
                    .get("protocolVersion")
                    .and_then(Value::as_str)
                    .unwrap_or(version::DEFAULT)
                    .to_owned();
                for (session, client_id, requested) in waiters {
                    let answer = answer_initialize(client_id, &requested, result, &version);
                    deliver_init(&session, &answer);
                }
                self.init = Init::Done {
                    result: result.clone(),
                    version,
                };
            }
            None => {
                // The server refused; the next initialize tries again.
                for (session, client_id, _) in waiters {
                    let mut answer = message.clone();
                    jsonrpc::set_id(&mut answer, client_id.clone());
                    session.deliver(&answer, Some(&jsonrpc::key(&client_id)));
                }
            }
        }
    }

    fn server_notification(&mut self, mut message: Value) {
        let method = jsonrpc::method(&message).unwrap_or("").to_owned();
        match method.as_str() {
            "notifications/progress" => {
                let Some(token) = jsonrpc::notified_progress_token(&message).map(jsonrpc::key)
                else {
                    return;
                };
                let Some((session, client_token, related)) = self.progress.get(&token).cloned()
                else {
                    return;
                };
                jsonrpc::set_notified_progress_token(&mut message, client_token);
                if let Some(s) = self.sessions.get(&session) {
                    s.deliver(&message, Some(&related));
                }
            }
            "notifications/cancelled" => {
                // The server gives up a request it sent to a client.
                let key = jsonrpc::cancelled_request_id(&message).map(jsonrpc::key);
                if let Some(session) = key.and_then(|k| self.server_requests.remove(&k))
                    && let Some(s) = self.sessions.get(&session)
                {
                    s.deliver(&message, None);
                }
            }
            "notifications/resources/updated" => {
                let uri = message
                    .get("params")
                    .and_then(|p| p.get("uri"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let subscribers = self.subscriptions.get(uri).cloned().unwrap_or_default();
                for id in subscribers {
                    if let Some(s) = self.sessions.get(&id) {
                        s.deliver(&message, None);
                    }
                }
            }
            _ => {
                // Belongs to no request: every session, on its oldest request's stream if one
                // is open (so a log line made during a call arrives before the call's result).
                for s in self.sessions.values() {
                    let related = self.oldest_of(&s.id).map(|p| jsonrpc::key(&p.client_id));
                    s.deliver(&message, related.as_deref());
                }
            }
        }
    }

    fn oldest_of(&self, session: &str) -> Option<&Pending> {
        self.pending
            .values()
            .filter(|p| p.session == session)
            .min_by_key(|p| p.at)
    }

    /// The session a server request goes to, with the client request it relates to: the
    /// oldest request in flight, preferring requests that have not already caused a server
    /// request (a tool that asked the client once is usually waiting for that answer, so a
    /// new server request more likely comes from another call).
    fn pick_session(&mut self) -> Option<(Arc<Session>, Option<String>)> {
        let fresh = self
            .pending
            .iter()
            .filter(|(_, p)| !p.asked)
            .min_by_key(|(_, p)| p.at)
            .map(|(id, _)| *id);
        let oldest = fresh.or_else(|| {
            self.pending
                .iter()
                .min_by_key(|(_, p)| p.at)
                .map(|(id, _)| *id)
        });
        let chosen = match oldest.and_then(|id| self.pending.get_mut(&id)) {
            Some(p) => {
                p.asked = true;
                Some((p.session.clone(), Some(jsonrpc::key(&p.client_id))))
            }
            None => self.last_speaker.clone().map(|s| (s, None)),
        }?;
        let session = self.sessions.get(&chosen.0)?.clone();
        Some((session, chosen.1))
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

/// The client capability a server request needs.
fn required_capability(method: &str) -> Option<&'static str> {
    match method {
        "sampling/createMessage" => Some("sampling"),
        "elicitation/create" => Some("elicitation"),
        "roots/list" => Some("roots"),
        _ => None,
    }
}

/// The cached initialize result for a later session. The process speaks one version,
/// negotiated by the first session; by the spec's negotiation rule a server answers a
/// version it does not speak with one it does, and the client decides. So any revision the
/// bridge knows (or a newer one) gets the cached result; a version that is no MCP revision
/// at all gets the spec's "Unsupported protocol version" error.
fn answer_initialize(client_id: Value, requested: &str, result: &Value, version: &str) -> Value {
    if requested == version
        || version::is_supported(requested)
        || version::newer_or_equal(requested, version)
    {
        jsonrpc::result_response(client_id, result.clone())
    } else {
        jsonrpc::error_response(
            client_id,
            code::INVALID_PARAMS,
            &format!(
                "Unsupported protocol version {requested:?}: this deployment's server process \
                 speaks {version}"
            ),
            Some(json!({"supported": [version], "requested": requested})),
        )
    }
}

fn deliver_init(session: &Session, answer: &Value) {
    if let Some(v) = answer
        .get("result")
        .and_then(|r| r.get("protocolVersion"))
        .and_then(Value::as_str)
    {
        session.set_protocol_version(v);
    }
    let related = jsonrpc::id(answer).map(jsonrpc::key);
    session.deliver(answer, related.as_deref());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::session::{Front, SseEvent};
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::sync::mpsc;

    /// A fake stdio server: what the hub writes to stdin, and a way to write its stdout.
    struct Fake {
        stdin: tokio::io::Lines<BufReader<tokio::io::DuplexStream>>,
        stdout: mpsc::UnboundedSender<Bytes>,
    }

    impl Fake {
        async fn read(&mut self) -> Value {
            let line =
                tokio::time::timeout(std::time::Duration::from_secs(5), self.stdin.next_line())
                    .await
                    .expect("the hub wrote in time")
                    .expect("read")
                    .expect("a line");
            serde_json::from_str(&line).expect("JSON")
        }

        /// Writes a message in two chunks, split mid-line, as Docker's frames may come.
        fn write(&self, message: Value) {
            let mut bytes = message.to_string().into_bytes();
            bytes.push(b'\n');
            let tail = bytes.split_off(bytes.len() / 2);
            let _ = self.stdout.send(Bytes::from(bytes));
            let _ = self.stdout.send(Bytes::from(tail));
        }
    }

    fn hub() -> (Arc<StdioHub>, Fake) {
        let (hub_side, fake_side) = tokio::io::duplex(1 << 16);
        let (hub, stdout) = hub_on(Box::pin(hub_side));
        let fake = Fake {
            stdin: BufReader::new(fake_side).lines(),
            stdout,
        };
        (hub, fake)
    }

    /// A hub writing to `stdin`, and the sender of its process's stdout.
    fn hub_on(
        stdin: std::pin::Pin<Box<dyn AsyncWrite + Send>>,
    ) -> (Arc<StdioHub>, mpsc::UnboundedSender<Bytes>) {
        let (out_tx, out_rx) = mpsc::unbounded_channel::<Bytes>();
        let stdout = futures_util::stream::unfold(out_rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok(b), rx))
        })
        .boxed();
        let attached = Attached {
            stdout,
            stdin,
            stderr: futures_util::stream::empty().boxed(),
        };
        let hub = StdioHub::spawn("dp".into(), attached, 1 << 20, CancellationToken::new());
        (hub, out_tx)
    }

    fn session(id: &str) -> (Arc<Session>, mpsc::Receiver<SseEvent>) {
        let s = Session::new(id.into(), "dp".into(), Front::Streamable, "stdio");
        let get = s.open_get_stream(false).expect("get stream");
        (s, get)
    }

    async fn next(rx: &mut mpsc::Receiver<SseEvent>) -> Value {
        let e = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .expect("delivered in time")
            .expect("stream open");
        serde_json::from_str(&e.data).expect("JSON")
    }

    fn init(id: Value, version: &str) -> Value {
        json!({"jsonrpc":"2.0","id":id,"method":"initialize","params":{"protocolVersion":version,"capabilities":{"sampling":{}},"clientInfo":{"name":"t","version":"0"}}})
    }

    #[tokio::test]
    async fn one_process_many_sessions_ids_tokens_and_cancellation_are_mapped() {
        let (hub, mut fake) = hub();
        let (s1, _g1) = session("s1");
        let (s2, _g2) = session("s2");
        hub.join(s1.clone());
        hub.join(s2.clone());

        // The first initialize reaches the process with the hub's own id.
        let mut r1 = s1.open_request_stream(jsonrpc::key(&json!("a")), false);
        hub.send(s1.clone(), init(json!("a"), "2025-06-18"));
        let sent = fake.read().await;
        assert_eq!(sent["method"], "initialize");
        assert_ne!(sent["id"], "a");
        fake.write(json!({"jsonrpc":"2.0","id":sent["id"],"result":{"protocolVersion":"2025-06-18","capabilities":{},"serverInfo":{"name":"x","version":"1"}}}));
        assert_eq!(next(&mut r1).await["id"], "a");
        assert_eq!(s1.protocol_version().as_deref(), Some("2025-06-18"));

        // A later session is answered from the cache; its initialized is not forwarded.
        let mut r2 = s2.open_request_stream(jsonrpc::key(&json!(7)), false);
        hub.send(s2.clone(), init(json!(7), "2025-11-25"));
        let cached = next(&mut r2).await;
        assert_eq!(cached["id"], 7);
        assert_eq!(cached["result"]["protocolVersion"], "2025-06-18");
        let initialized = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
        hub.send(s1.clone(), initialized.clone());
        hub.send(s2.clone(), initialized);
        assert_eq!(fake.read().await["method"], "notifications/initialized");

        // The same client id from two sessions becomes two upstream ids.
        let mut c1 = s1.open_request_stream(jsonrpc::key(&json!(5)), false);
        let mut c2 = s2.open_request_stream(jsonrpc::key(&json!(5)), false);
        hub.send(s1.clone(), json!({"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"slow","_meta":{"progressToken":"t"}}}));
        hub.send(
            s2.clone(),
            json!({"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"echo"}}),
        );
        let u1 = fake.read().await;
        let u2 = fake.read().await;
        assert_ne!(u1["id"], u2["id"]);
        let token = u1["params"]["_meta"]["progressToken"].clone();
        assert_ne!(token, "t");

        // Progress goes to s1's request stream only, with s1's own token.
        fake.write(json!({"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":token,"progress":1}}));
        let p = next(&mut c1).await;
        assert_eq!(p["params"]["progressToken"], "t");

        // A server request goes to the session with the oldest request in flight (s1) and
        // only s1 may answer it.
        fake.write(json!({"jsonrpc":"2.0","id":0,"method":"sampling/createMessage","params":{}}));
        assert_eq!(next(&mut c1).await["method"], "sampling/createMessage");
        hub.send(
            s2.clone(),
            json!({"jsonrpc":"2.0","id":0,"result":{"from":"s2"}}),
        );
        hub.send(
            s1.clone(),
            json!({"jsonrpc":"2.0","id":0,"result":{"from":"s1"}}),
        );
        assert_eq!(fake.read().await["result"]["from"], "s1");

        // Cancellation names the upstream id.
        hub.send(
            s1.clone(),
            json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":5}}),
        );
        let cancel = fake.read().await;
        assert_eq!(cancel["params"]["requestId"], u1["id"]);

        // s2's answer comes back with s2's id.
        fake.write(json!({"jsonrpc":"2.0","id":u2["id"],"result":{"ok":2}}));
        let answer = next(&mut c2).await;
        assert_eq!(
            (answer["id"].clone(), answer["result"]["ok"].clone()),
            (json!(5), json!(2))
        );

        // The process exits: s1's request still in flight gets an error; sessions end.
        drop(fake);
        let error = next(&mut c1).await;
        assert_eq!(error["id"], 5);
        assert_eq!(error["error"]["code"], code::SERVER_UNAVAILABLE);
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            hub.shared.ended.cancelled(),
        )
        .await
        .expect("hub ended");
        assert!(s1.is_closed() && s2.is_closed());
    }

    /// A process's stdin for tests: records every write it takes; while shut it takes
    /// nothing (a server that does not read), until opened.
    #[derive(Default)]
    struct Pipe {
        broken: std::sync::atomic::AtomicBool,
        shut: std::sync::atomic::AtomicBool,
        waker: std::sync::Mutex<Option<std::task::Waker>>,
        writes: std::sync::Mutex<Vec<Vec<u8>>>,
    }

    impl Pipe {
        fn shut() -> Arc<Pipe> {
            let pipe = Pipe::default();
            pipe.shut.store(true, Ordering::SeqCst);
            Arc::new(pipe)
        }

        fn open(&self) {
            self.shut.store(false, Ordering::SeqCst);
            if let Some(w) = self.waker.lock().expect("lock").take() {
                w.wake();
            }
        }

        fn writes(&self) -> Vec<Vec<u8>> {
            self.writes.lock().expect("lock").clone()
        }

        fn taken(&self) -> usize {
            self.writes.lock().expect("lock").iter().map(Vec::len).sum()
        }

        fn stdin(self: &Arc<Self>) -> std::pin::Pin<Box<dyn AsyncWrite + Send>> {
            Box::pin(PipeStdin(self.clone()))
        }
    }

    struct PipeStdin(Arc<Pipe>);

    impl AsyncWrite for PipeStdin {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            if self.0.broken.load(Ordering::SeqCst) {
                return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
            }
            if self.0.shut.load(Ordering::SeqCst) {
                *self.0.waker.lock().expect("lock") = Some(cx.waker().clone());
                return Poll::Pending;
            }
            self.0.writes.lock().expect("lock").push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn an_idle_hub_writes_at_once_and_a_busy_one_batches_in_order() {
        let pipe = Arc::new(Pipe::default());
        let stdin = Stdin::new(pipe.stdin());
        let drain = tokio::spawn(stdin.clone().drain());
        stdin.send(Bytes::from_static(b"a\n"), false);
        assert_eq!(pipe.writes(), vec![b"a\n".to_vec()]);
        stdin.send(Bytes::from_static(b"b\n"), true);
        stdin.send(Bytes::from_static(b"c\n"), true);
        // Not busy, but lines wait before it: it must not overtake them.
        stdin.send(Bytes::from_static(b"d\n"), false);
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while !stdin.queue.lock().expect("lock").is_empty() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the queue drained");
        assert_eq!(pipe.writes(), vec![b"a\n".to_vec(), b"b\nc\nd\n".to_vec()]);
        drain.abort();
    }

    /// The hub calls itself busy while another request is in flight: the first request goes
    /// out at once, the ones sent while it waits go out together.
    #[tokio::test]
    async fn requests_sent_while_another_is_in_flight_share_a_write() {
        let pipe = Arc::new(Pipe::default());
        let (hub, _stdout) = hub_on(pipe.stdin());
        let (s1, _g1) = session("s1");
        hub.join(s1.clone());
        let call = |id: u64| json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{}});
        hub.send(s1.clone(), call(1));
        assert_eq!(pipe.writes().len(), 1, "an idle hub writes at once");
        hub.send(s1.clone(), call(2));
        hub.send(s1.clone(), call(3));
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while pipe.writes().len() < 2 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the batch was written");
        let writes = pipe.writes();
        assert_eq!(writes.len(), 2, "two writes in all");
        let ids: Vec<Value> = String::from_utf8(writes[1].clone())
            .expect("utf-8")
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("JSON")["id"].clone())
            .collect();
        assert_eq!(ids, vec![json!(2), json!(3)], "both lines, in order");
    }

    #[tokio::test]
    async fn a_closed_stdin_ends_the_hub_and_its_sessions() {
        let pipe = Arc::new(Pipe::default());
        pipe.broken.store(true, Ordering::SeqCst);
        let (hub, _stdout) = hub_on(pipe.stdin());
        let (s1, _g1) = session("s1");
        hub.join(s1.clone());
        hub.send(
            s1.clone(),
            json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}),
        );
        tokio::time::timeout(std::time::Duration::from_secs(5), s1.closed.cancelled())
            .await
            .expect("the session ended");
        assert!(!hub.is_alive());
    }

    #[tokio::test]
    async fn a_server_that_does_not_read_stdin_holds_at_most_the_backlog_limit() {
        let pipe = Pipe::shut();
        let (hub, _stdout) = hub_on(pipe.stdin());
        let (s1, _g1) = session("s1");
        hub.join(s1.clone());
        let text = "x".repeat(1 << 20);
        let mut sent = 0;
        while hub.backlog_full().is_none() {
            assert!(sent < 64, "the backlog never counted as full");
            let call = json!({"jsonrpc":"2.0","id":sent,"method":"tools/call",
                "params":{"name":"echo","arguments":{"text":text}}});
            hub.send(s1.clone(), call);
            sent += 1;
        }
        // Eight lines of a little over 1 MiB reach the 8 MiB limit; not one fewer.
        assert_eq!(sent, STDIN_BACKLOG_LIMIT >> 20);
        let waiting = hub.backlog_full().expect("full");
        assert!((STDIN_BACKLOG_LIMIT..STDIN_BACKLOG_LIMIT + 4096).contains(&waiting));

        // Once the server reads again, everything goes out and new messages are taken.
        pipe.open();
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while pipe.taken() < waiting || hub.backlog_full().is_some() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the backlog drained");
        assert_eq!(pipe.taken(), waiting);
        assert_eq!(hub.shared.lock().stdin.backlog.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn later_sessions_get_the_cached_result_or_a_clear_error() {
        let result = json!({"protocolVersion": "2025-06-18", "capabilities": {}});
        let same = answer_initialize(json!(1), "2025-06-18", &result, "2025-06-18");
        assert_eq!(same["result"], result);
        let newer = answer_initialize(json!(2), "2025-11-25", &result, "2025-06-18");
        assert_eq!(newer["result"]["protocolVersion"], "2025-06-18");
        let older = answer_initialize(json!(3), "2024-11-05", &result, "2025-06-18");
        assert_eq!(older["result"]["protocolVersion"], "2025-06-18");
        let bogus = answer_initialize(json!(4), "1.0.0", &result, "2025-06-18");
        assert_eq!(bogus["error"]["code"], code::INVALID_PARAMS);
        assert_eq!(bogus["error"]["data"]["supported"], json!(["2025-06-18"]));
        assert_eq!(bogus["id"], 4);
    }

    #[tokio::test]
    async fn server_requests_need_the_chosen_sessions_capability() {
        let (hub, mut fake) = hub();
        let (s1, _g1) = session("s1");
        hub.join(s1.clone());
        let mut r = s1.open_request_stream(jsonrpc::key(&json!(1)), false);
        let mut bare = init(json!(1), "2025-06-18");
        bare["params"]["capabilities"] = json!({});
        hub.send(s1.clone(), bare);
        let sent = fake.read().await;
        // The process hears every capability the bridge can route.
        assert!(sent["params"]["capabilities"]["sampling"].is_object());
        assert!(sent["params"]["capabilities"]["roots"].is_object());
        fake.write(json!({"jsonrpc":"2.0","id":sent["id"],"result":{"protocolVersion":"2025-06-18","capabilities":{},"serverInfo":{"name":"x","version":"1"}}}));
        next(&mut r).await;
        hub.send(
            s1.clone(),
            json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{}}),
        );
        fake.read().await;
        // s1 declared no sampling: the hub refuses on its behalf.
        fake.write(json!({"jsonrpc":"2.0","id":"q","method":"sampling/createMessage","params":{}}));
        let refusal = fake.read().await;
        assert_eq!(refusal["id"], "q");
        assert_eq!(refusal["error"]["code"], code::METHOD_NOT_FOUND);
    }

    #[tokio::test]
    async fn resource_updates_reach_subscribers_and_list_changes_everyone() {
        let (hub, mut fake) = hub();
        let (s1, mut g1) = session("s1");
        let (s2, mut g2) = session("s2");
        hub.join(s1.clone());
        hub.join(s2.clone());
        hub.send(s1.clone(), json!({"jsonrpc":"2.0","id":1,"method":"resources/subscribe","params":{"uri":"test://x"}}));
        let sub = fake.read().await;
        fake.write(json!({"jsonrpc":"2.0","id":sub["id"],"result":{}}));
        fake.write(json!({"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"test://x"}}));
        fake.write(json!({"jsonrpc":"2.0","method":"notifications/tools/list_changed"}));
        assert_eq!(
            next(&mut g1).await["method"],
            "notifications/resources/updated"
        );
        assert_eq!(
            next(&mut g1).await["method"],
            "notifications/tools/list_changed"
        );
        assert_eq!(
            next(&mut g2).await["method"],
            "notifications/tools/list_changed"
        );
        assert!(g2.try_recv().is_err(), "s2 did not subscribe");
    }
}
