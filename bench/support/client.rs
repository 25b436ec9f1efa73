//! The two MCP clients under comparison and the load driver they share.
//!
//! Both clients send the same JSON-RPC bodies, split their input into lines with the same
//! code, parse every answer once into a `serde_json::Value` and are driven by the same
//! `drive` loop; they differ only in the transport:
//!
//! - `Direct` writes newline-delimited JSON-RPC to the container's stdin over its Docker
//!   attach stream and reads stdout (what mcp-runner's stdio hub itself does);
//! - `Http` POSTs each message to mcp-runner's Streamable HTTP front and reads the answer
//!   from the SSE stream of the response (or a JSON body), over keep-alive HTTP/1.1
//!   connections (hyper's client connection, one request in flight per connection).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use http::header::{ACCEPT, CONTENT_TYPE, HOST, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use mcp_runner::runtime::{Attached, RuntimeError};
use serde_json::{Value, json};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// The protocol revision the clients ask for (the newest the bridge knows).
pub const PROTOCOL_VERSION: &str = "2025-11-25";
/// A call that takes longer than this fails the benchmark.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// An answer and when it arrived.
pub struct Reply {
    /// The JSON-RPC response.
    pub message: Value,
    /// When the response was in the client's hands (parsed).
    pub answered: Instant,
    /// When the exchange was over (for HTTP: the end of the SSE stream, after which the
    /// connection can carry the next request).
    pub finished: Instant,
}

/// A way to send one JSON-RPC request and get its response.
pub trait Transport: Send + Sync + 'static {
    /// Sends `body` (a request with id `id`) and waits for the response to `id`.
    fn call(&self, id: u64, body: Vec<u8>) -> impl Future<Output = anyhow::Result<Reply>> + Send;
}

// ---------------------------------------------------------------------------------------
// JSON-RPC bodies, shared by both clients.

/// `initialize`.
pub fn initialize_body(id: u64) -> Vec<u8> {
    to_vec(&json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "initialize",
        "params": {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "mcp-runner-bench", "version": "0.0.0"}
        }
    }))
}

/// `notifications/initialized`.
pub fn initialized_body() -> Vec<u8> {
    to_vec(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
}

/// `tools/list`.
pub fn tools_list_body(id: u64) -> Vec<u8> {
    to_vec(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"}))
}

/// The tool names of a successful `tools/list` response to `id`.
pub fn tool_names(v: &Value, id: u64) -> anyhow::Result<Vec<String>> {
    if v.get("id").and_then(Value::as_u64) != Some(id) {
        bail!("answer to the wrong request (wanted id {id}): {}", short(v));
    }
    if let Some(e) = v.get("error") {
        bail!("JSON-RPC error: {e}");
    }
    let tools = v
        .pointer("/result/tools")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("no tools in {}", short(v)))?;
    Ok(tools
        .iter()
        .filter_map(|t| t.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect())
}

/// `tools/call` of `name` with `arguments`.
pub fn tool_call_body(id: u64, name: &str, arguments: Value) -> Vec<u8> {
    to_vec(&json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments}
    }))
}

fn to_vec(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a JSON value serializes")
}

/// Whether `v` is the response to request `id`.
fn is_response_to(v: &Value, id: u64) -> bool {
    v.get("method").is_none()
        && v.get("id").and_then(Value::as_u64) == Some(id)
        && (v.get("result").is_some() || v.get("error").is_some())
}

/// The first text of a successful `tools/call` response to `id`.
pub fn tool_text(v: &Value, id: u64) -> anyhow::Result<&str> {
    if v.get("id").and_then(Value::as_u64) != Some(id) {
        bail!("answer to the wrong request (wanted id {id}): {}", short(v));
    }
    if let Some(e) = v.get("error") {
        bail!("JSON-RPC error: {e}");
    }
    let result = v.get("result").ok_or_else(|| anyhow!("no result"))?;
    if result.get("isError").and_then(Value::as_bool) == Some(true) {
        bail!("the tool failed: {}", short(result));
    }
    result
        .get("content")
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("text"))
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("no text content in {}", short(result)))
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 300 {
        format!("{}…", &s[..s.floor_char_boundary(300)])
    } else {
        s
    }
}

// ---------------------------------------------------------------------------------------
// Line splitting, shared by both clients (stdout lines; SSE field lines).

/// Splits a byte stream into lines (without `\n` and a trailing `\r`), whatever the chunking.
#[derive(Default)]
pub struct Lines {
    buf: Vec<u8>,
}

impl Lines {
    /// Feeds a chunk; calls `on_line` for every line it completes.
    pub fn push(
        &mut self,
        chunk: &[u8],
        mut on_line: impl FnMut(&[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        if self.buf.is_empty() {
            // Fast path: lines straight out of the chunk; keep only the unfinished tail.
            let mut rest = chunk;
            while let Some(i) = find_newline(rest) {
                on_line(trim_cr(&rest[..i]))?;
                rest = &rest[i + 1..];
            }
            self.buf.extend_from_slice(rest);
            return Ok(());
        }
        let mut scan = self.buf.len();
        self.buf.extend_from_slice(chunk);
        let mut from = 0;
        while let Some(i) = find_newline(&self.buf[scan..]) {
            let end = scan + i;
            on_line(trim_cr(&self.buf[from..end]))?;
            from = end + 1;
            scan = from;
        }
        self.buf.drain(..from);
        Ok(())
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The first `\n` in `s`, eight bytes at a time.
fn find_newline(s: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const NL: u64 = LO * b'\n' as u64;
    let words = s.chunks_exact(8);
    let tail = s.len() - words.remainder().len();
    for (k, w) in words.enumerate() {
        let v = u64::from_le_bytes(w.try_into().expect("8 bytes")) ^ NL;
        if v.wrapping_sub(LO) & !v & HI != 0 {
            let at = k * 8;
            return s[at..].iter().position(|b| *b == b'\n').map(|p| p + at);
        }
    }
    s[tail..].iter().position(|b| *b == b'\n').map(|p| p + tail)
}

// ---------------------------------------------------------------------------------------
// Direct: JSON-RPC lines over the container's attach stream.

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A client on a container's stdin/stdout.
pub struct Direct {
    /// When the response to `initialize` was in hand.
    pub initialized: Instant,
    stdin: tokio::sync::Mutex<Pin<Box<dyn AsyncWrite + Send>>>,
    waiting: Waiters,
    reader: tokio::task::JoinHandle<()>,
}

impl Direct {
    /// A client on an attachment; runs `initialize` and `notifications/initialized`.
    pub async fn connect(attached: Attached) -> anyhow::Result<Arc<Direct>> {
        let Attached { stdout, stdin, .. } = attached;
        let waiting: Waiters = Arc::default();
        let reader = tokio::spawn(read_stdout(stdout, waiting.clone()));
        let mut client = Direct {
            initialized: Instant::now(),
            stdin: tokio::sync::Mutex::new(stdin),
            waiting,
            reader,
        };
        let init = client.call(0, initialize_body(0)).await?;
        if init.message.get("result").is_none() {
            bail!("initialize failed: {}", short(&init.message));
        }
        client.initialized = init.answered;
        client.send(initialized_body()).await?;
        Ok(Arc::new(client))
    }

    async fn send(&self, mut line: Vec<u8>) -> anyhow::Result<()> {
        line.push(b'\n');
        let mut stdin = self.stdin.lock().await;
        stdin.write_all(&line).await.context("write to stdin")?;
        stdin.flush().await.context("flush stdin")?;
        Ok(())
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn read_stdout(
    mut stdout: BoxStream<'static, Result<bytes::Bytes, RuntimeError>>,
    waiting: Waiters,
) {
    let mut lines = Lines::default();
    while let Some(Ok(chunk)) = stdout.next().await {
        let pushed = lines.push(&chunk, |line| {
            let v: Value = serde_json::from_slice(line).context("stdout line is not JSON")?;
            if let Some(id) = v.get("id").and_then(Value::as_u64)
                && v.get("method").is_none()
                && let Some(tx) = waiting.lock().expect("lock").remove(&id)
            {
                let _ = tx.send(v);
            }
            Ok(())
        });
        if let Err(e) = pushed {
            eprintln!("direct client: {e:#}");
            break;
        }
    }
    // The stream ended: every waiter fails.
    waiting.lock().expect("lock").clear();
}

impl Transport for Direct {
    async fn call(&self, id: u64, body: Vec<u8>) -> anyhow::Result<Reply> {
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().expect("lock").insert(id, tx);
        self.send(body).await?;
        let message = tokio::time::timeout(CALL_TIMEOUT, rx)
            .await
            .map_err(|_| anyhow!("no answer to request {id} within {CALL_TIMEOUT:?}"))?
            .map_err(|_| anyhow!("the container's stdout ended"))?;
        let now = Instant::now();
        Ok(Reply {
            message,
            answered: now,
            finished: now,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Http: mcp-runner's Streamable HTTP front.

type ReqBody = Full<Bytes>;

/// A keep-alive HTTP/1.1 connection. No task of its own drives it: the task that sends a
/// request on it polls it until the response has been read, as a client of one server
/// with a request in flight per connection can, so that an answer wakes the waiting task
/// itself rather than a connection task that then wakes it (one thread hop fewer per call,
/// the same as the direct client's reader task costs it once per stream).
struct Conn {
    send: http1::SendRequest<ReqBody>,
    conn: http1::Connection<TokioIo<TcpStream>, ReqBody>,
}

/// Idle connections to one server; a caller takes one (or opens one) for each exchange.
struct Connections {
    /// `host:port`.
    authority: String,
    host: HeaderValue,
    idle: Mutex<Vec<Conn>>,
}

impl Connections {
    /// Connections to the server of `url` (`http://host:port/...`); returns them and the
    /// path and query of `url`.
    fn new(url: &str) -> anyhow::Result<(Connections, String)> {
        let uri: Uri = url.parse().with_context(|| format!("URL {url}"))?;
        if uri.scheme_str() != Some("http") {
            bail!("URL {url}: only http:// is supported");
        }
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow!("URL {url} has no host"))?
            .to_string();
        let path = uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        Ok((
            Connections {
                host: HeaderValue::from_str(&authority)?,
                authority,
                idle: Mutex::new(Vec::new()),
            },
            path,
        ))
    }

    async fn open(&self) -> anyhow::Result<Conn> {
        let tcp = TcpStream::connect(&self.authority)
            .await
            .with_context(|| format!("connect to {}", self.authority))?;
        tcp.set_nodelay(true).context("TCP_NODELAY")?;
        let (send, conn) = http1::handshake(TokioIo::new(tcp))
            .await
            .context("HTTP/1.1 handshake")?;
        Ok(Conn { send, conn })
    }

    /// Sends `request` (its `Host` header added) and hands the response to `read`, driving
    /// the connection until `read` is done; the connection is kept for the next exchange
    /// when all went well.
    async fn exchange<T, F, Fut>(&self, mut request: Request<ReqBody>, read: F) -> anyhow::Result<T>
    where
        F: FnOnce(Response<Incoming>) -> Fut,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        let idle = self.idle.lock().expect("lock").pop();
        let Conn { mut send, mut conn } = match idle {
            Some(c) => c,
            None => self.open().await?,
        };
        request.headers_mut().insert(HOST, self.host.clone());
        let work = async {
            send.ready().await.context("the connection")?;
            let response = send.send_request(request).await.context("send")?;
            read(response).await
        };
        let out = tokio::select! {
            biased;
            out = work => out,
            end = &mut conn => Err(match end {
                Ok(()) => anyhow!("the server closed the connection"),
                Err(e) => anyhow::Error::new(e).context("the connection"),
            }),
        };
        if out.is_ok() {
            self.idle.lock().expect("lock").push(Conn { send, conn });
        }
        out
    }
}

/// A Streamable HTTP client session (keep-alive connections, one MCP session).
pub struct Http {
    /// When the response to `initialize` was in hand.
    pub initialized: Instant,
    connections: Connections,
    path: String,
    session: HeaderValue,
    version: HeaderValue,
}

const ACCEPT_BOTH: &str = "application/json, text/event-stream";

impl Http {
    /// Opens a session at `url` (`…/mcp-server/{id}/mcp`).
    pub async fn connect(url: String) -> anyhow::Result<Arc<Http>> {
        let (connections, path) = Connections::new(&url)?;
        let request = Request::post(&path)
            .header(ACCEPT, ACCEPT_BOTH)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::from(initialize_body(0)))?;
        let (session, init) = connections
            .exchange(request, |resp| async move {
                let session = resp
                    .headers()
                    .get("mcp-session-id")
                    .cloned()
                    .ok_or_else(|| {
                        anyhow!("initialize answered {} without a session id", resp.status())
                    })?;
                Ok((session, read_answer(resp, 0).await?))
            })
            .await
            .context("POST initialize")?;
        let version = init
            .message
            .pointer("/result/protocolVersion")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("initialize failed: {}", short(&init.message)))?;
        let http = Http {
            initialized: init.answered,
            version: HeaderValue::from_str(version)?,
            connections,
            path,
            session,
        };
        let status = http
            .connections
            .exchange(http.post(initialized_body())?, |resp| async move {
                let status = resp.status();
                resp.into_body().collect().await.context("read the body")?;
                Ok(status)
            })
            .await?;
        if status != StatusCode::ACCEPTED {
            bail!("notifications/initialized answered {status}");
        }
        Ok(Arc::new(http))
    }

    fn with_session(&self, builder: http::request::Builder) -> http::request::Builder {
        builder
            .header("mcp-session-id", self.session.clone())
            .header("mcp-protocol-version", self.version.clone())
    }

    fn post(&self, body: Vec<u8>) -> anyhow::Result<Request<ReqBody>> {
        let builder = self.with_session(
            Request::post(&self.path)
                .header(ACCEPT, ACCEPT_BOTH)
                .header(CONTENT_TYPE, "application/json"),
        );
        Ok(builder.body(Full::from(body))?)
    }

    /// Ends the session (`DELETE`).
    pub async fn close(&self) {
        let Ok(request) = self
            .with_session(Request::delete(&self.path))
            .body(ReqBody::default())
        else {
            return;
        };
        let _ = self
            .connections
            .exchange(request, |resp| async move {
                resp.into_body().collect().await?;
                Ok(())
            })
            .await;
    }
}

impl Transport for Http {
    async fn call(&self, id: u64, body: Vec<u8>) -> anyhow::Result<Reply> {
        let exchange = async {
            let request = self.post(body)?;
            self.connections
                .exchange(request, |resp| read_answer(resp, id))
                .await
                .context("POST")
        };
        tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow!("no answer to request {id} within {CALL_TIMEOUT:?}"))?
    }
}

/// The response to `id` out of an HTTP answer: a JSON body, or an SSE stream read to its end
/// (so that the keep-alive connection can carry the next request).
async fn read_answer(resp: Response<Incoming>, id: u64) -> anyhow::Result<Reply> {
    let status = resp.status();
    let sse = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut body = resp.into_body();
    if !status.is_success() {
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        bail!("HTTP {status}: {}", String::from_utf8_lossy(&bytes));
    }
    if !sse {
        let bytes = body
            .collect()
            .await
            .context("read the JSON body")?
            .to_bytes();
        let message: Value = serde_json::from_slice(&bytes).context("JSON body")?;
        let now = Instant::now();
        return Ok(Reply {
            message,
            answered: now,
            finished: now,
        });
    }
    let mut lines = Lines::default();
    let mut data: Vec<u8> = Vec::new();
    let mut has_data = false;
    let mut answer: Option<(Value, Instant)> = None;
    while let Some(frame) = body.frame().await {
        let Ok(chunk) = frame.context("read the SSE stream")?.into_data() else {
            continue;
        };
        lines.push(&chunk, |line| {
            if line.is_empty() {
                // End of an event.
                if has_data && !data.is_empty() {
                    let v: Value = serde_json::from_slice(&data).context("SSE data is not JSON")?;
                    if is_response_to(&v, id) {
                        answer = Some((v, Instant::now()));
                    }
                }
                data.clear();
                has_data = false;
            } else if let Some(value) = line.strip_prefix(b"data:") {
                let value = value.strip_prefix(b" ").unwrap_or(value);
                if has_data {
                    data.push(b'\n');
                }
                data.extend_from_slice(value);
                has_data = true;
            }
            Ok(())
        })?;
    }
    let finished = Instant::now();
    let (message, answered) = answer
        .ok_or_else(|| anyhow!("the SSE stream of request {id} ended without its response"))?;
    Ok(Reply {
        message,
        answered,
        finished,
    })
}

/// The HTTP floor: the same client and server without the bridge. `GET /healthz` goes through
/// mcp-runner's router and middleware like an MCP request, and the answer is a fixed small JSON
/// body, so its round trip is what any HTTP front on this machine costs before it does any
/// work of its own.
pub struct Floor {
    connections: Connections,
    path: String,
}

impl Floor {
    /// A client of `base` (`http://host:port`), built like `Http`'s.
    pub fn new(base: &str) -> anyhow::Result<Arc<Floor>> {
        let (connections, path) = Connections::new(&format!("{base}/healthz"))?;
        Ok(Arc::new(Floor { connections, path }))
    }
}

impl Transport for Floor {
    async fn call(&self, _id: u64, _body: Vec<u8>) -> anyhow::Result<Reply> {
        let exchange = async {
            let request = Request::get(&self.path).body(ReqBody::default())?;
            self.connections
                .exchange(request, |resp| async move {
                    let status = resp.status();
                    let bytes = resp
                        .into_body()
                        .collect()
                        .await
                        .context("read the body")?
                        .to_bytes();
                    if !status.is_success() {
                        bail!("HTTP {status}: {}", String::from_utf8_lossy(&bytes));
                    }
                    let message: Value = serde_json::from_slice(&bytes).context("JSON body")?;
                    let now = Instant::now();
                    Ok(Reply {
                        message,
                        answered: now,
                        finished: now,
                    })
                })
                .await
                .context("GET")
        };
        tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow!("no answer from {} within {CALL_TIMEOUT:?}", self.path))?
    }
}

// ---------------------------------------------------------------------------------------
// The load driver.

/// What a benchmark call does and how its answer is checked.
#[derive(Debug, Clone, Copy)]
pub enum Work {
    /// `echo` of a short text naming the call.
    Echo,
    /// `payload` of this many KiB.
    Payload(u64),
    /// A liveness probe (`Floor`): no MCP message at all.
    Probe,
}

impl Work {
    fn body(self, id: u64) -> Vec<u8> {
        match self {
            Work::Echo => tool_call_body(id, "echo", json!({"text": echo_text(id)})),
            Work::Payload(kb) => tool_call_body(id, "payload", json!({"kb": kb})),
            Work::Probe => Vec::new(),
        }
    }

    /// Checks the answer; returns the payload bytes it carried.
    fn check(self, message: &Value, id: u64) -> anyhow::Result<u64> {
        match self {
            Work::Echo => {
                let text = tool_text(message, id)?;
                if text != echo_text(id) {
                    bail!("echo of call {id} came back as {text:?}");
                }
                Ok(text.len() as u64)
            }
            Work::Payload(kb) => {
                let text = tool_text(message, id)?;
                let want = kb * 1024;
                if text.len() as u64 != want || !all_x(text.as_bytes()) {
                    bail!(
                        "payload of call {id}: {} bytes (or not all 'x'), expected {want}",
                        text.len()
                    );
                }
                Ok(want)
            }
            Work::Probe => {
                if message.get("status").and_then(Value::as_str) != Some("ok") {
                    bail!("the probe answered {}", short(message));
                }
                Ok(0)
            }
        }
    }
}

/// Whether every byte is `x` (compared a page at a time: cheap next to the transfer).
fn all_x(bytes: &[u8]) -> bool {
    static XS: [u8; 4096] = [b'x'; 4096];
    bytes.chunks(XS.len()).all(|c| c == &XS[..c.len()])
}

fn echo_text(id: u64) -> String {
    format!("mcp-runner bench call {id}")
}

/// Latencies and totals of a batch of calls.
#[derive(Debug, Default, Clone)]
pub struct Sample {
    /// Send → response parsed, per call.
    pub answered: Vec<Duration>,
    /// Send → exchange over, per call.
    pub finished: Vec<Duration>,
    /// Wall time of the batch.
    pub wall: Duration,
    /// Payload bytes received and verified.
    pub bytes: u64,
}

impl Sample {
    /// Adds another batch.
    pub fn merge(&mut self, other: Sample) {
        self.answered.extend(other.answered);
        self.finished.extend(other.finished);
        self.wall += other.wall;
        self.bytes += other.bytes;
    }
}

/// Runs `calls` calls of `work` with `concurrency` calls in flight at any time, or as many as
/// start within `max_time`; request ids come from `ids` (unique over the transport's life).
/// Any failed or wrong answer fails it.
pub async fn drive<T: Transport>(
    transport: &Arc<T>,
    ids: &Arc<AtomicU64>,
    concurrency: usize,
    calls: usize,
    max_time: Duration,
    work: Work,
) -> anyhow::Result<Sample> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + max_time;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (transport, ids, next) = (transport.clone(), ids.clone(), next.clone());
        workers.spawn(async move {
            let mut sample = Sample::default();
            while Instant::now() < deadline && next.fetch_add(1, Ordering::Relaxed) < calls {
                let id = ids.fetch_add(1, Ordering::Relaxed);
                let body = work.body(id);
                let sent = Instant::now();
                let reply = transport
                    .call(id, body)
                    .await
                    .with_context(|| format!("call {id}"))?;
                sample.bytes += work.check(&reply.message, id)?;
                sample
                    .answered
                    .push(reply.answered.saturating_duration_since(sent));
                sample
                    .finished
                    .push(reply.finished.saturating_duration_since(sent));
            }
            anyhow::Ok(sample)
        });
    }
    let mut total = Sample::default();
    while let Some(done) = workers.join_next().await {
        total.merge(done.context("worker panicked")??);
    }
    total.wall = start.elapsed();
    if total.answered.is_empty() && calls > 0 {
        bail!("no call was answered");
    }
    Ok(total)
}
