//! `Http`: mcp-runner's Streamable HTTP front over keep-alive HTTP/1.1 connections (hyper's
//! client connection, one request in flight per connection), and `Floor`, the same client on
//! `/healthz`.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HOST, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

use super::{
    CALL_TIMEOUT, Lines, Reply, Transport, initialize_body, initialized_body, is_response_to, short,
};

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
