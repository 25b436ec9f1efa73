//! The HTTP fronts of the bridge: Streamable HTTP at `/mcp-server/{id}/mcp` (POST, GET,
//! DELETE) and legacy HTTP+SSE at `/mcp-server/{id}/sse` with its message endpoint
//! `/mcp-server/{id}/sse/messages?sessionId=…`.
//!
//! Status codes follow the specification and the reference SDKs: 400 for a missing session
//! header or an invalid message (JSON-RPC -32700 / -32600), 404 for an unknown or ended
//! session and for an unknown deployment, 403 for a foreign `Origin`, 406 / 415 for wrong
//! `Accept` / `Content-Type`, 409 for a second GET stream, 413 for an oversized body, 202 for
//! notifications and responses.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use super::jsonrpc::{self, Kind, code};
use super::session::{Front, SseEvent, StreamError, parse_event_id};
use super::{Bridge, BridgeError, Link, version};
use crate::app::AppState;
use crate::deployments::DeployError;
use crate::runtime::FailureKind;

/// How long a JSON answer is waited for before the request is given up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);
/// Keep-alive comments on idle streams.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long a request that may stream waits for its first message before its SSE stream
/// starts. A response that comes first and alone is sent as plain JSON: one write instead
/// of a stream's headers, events and end. Progress, log messages or server requests that
/// come first, or a slower server, start the stream (the priming event included) at once.
const JSON_IF_ANSWERED_WITHIN: Duration = Duration::from_millis(100);

/// The MCP routes with their own layers: body limit, panic safety with a JSON-RPC error
/// body, [`finish`] (request counts, failure log lines, no proxy buffering), and the Sentry
/// scope and a request span only where they can do something: every client message passes
/// here, and the management API's general-purpose layers would cost each one its work.
pub fn routes(max_body: usize) -> Router<AppState> {
    let sentry = sentry::Hub::current()
        .client()
        .is_some_and(|c| c.is_enabled());
    let debug = tracing::level_filters::LevelFilter::current() >= tracing::Level::DEBUG;
    let routes = Router::new()
        .route(
            "/mcp-server/{id}/mcp",
            post(mcp_post).get(mcp_get).delete(mcp_delete),
        )
        .route("/mcp-server/{id}/sse", get(sse_get))
        .route("/mcp-server/{id}/sse/messages", post(sse_post))
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(max_body));
    always_layers(routes)
        .layer(tower::util::option_layer(
            sentry.then(|| axum::middleware::from_fn(crate::telemetry::sentry_scope)),
        ))
        .layer(tower::util::option_layer(debug.then(|| {
            tower::ServiceBuilder::new()
                .map_response(IntoResponse::into_response)
                .layer(
                    TraceLayer::new_for_http().make_span_with(|req: &axum::extract::Request| {
                        tracing::debug_span!("http", method = %req.method(), path = %req.uri().path())
                    }),
                )
        })))
}

/// The layers every MCP route has, inside out: panic safety, then [`finish`].
fn always_layers<S: Clone + Send + Sync + 'static>(routes: Router<S>) -> Router<S> {
    routes
        .layer(CatchPanicLayer::custom(panicked))
        .layer(axum::middleware::from_fn(finish))
}

/// A handler that panicked: 500 with a JSON-RPC error body, logged by [`finish`].
fn panicked(panic: Box<dyn std::any::Any + Send>) -> Response {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    rpc_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        code::INTERNAL_ERROR,
        "Internal error",
    )
    .logged(true, "an MCP request panicked", what)
    .into_response()
}

/// 405 with a JSON-RPC error body (axum adds the `Allow` header).
async fn wrong_method(method: axum::http::Method) -> Reject {
    rpc_error(
        StatusCode::METHOD_NOT_ALLOWED,
        code::INVALID_REQUEST,
        &format!("Method Not Allowed: {method} is not served here"),
    )
}

/// Every MCP answer: counted, marked so that nginx does not buffer it (streams above all),
/// and logged with the request's method and path when it is a failure worth a line (the
/// MCP routes have a request span only at DEBUG, which cannot give that context).
async fn finish(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let (method, uri) = (request.method().clone(), request.uri().clone());
    let mut resp = next.run(request).await;
    crate::api::count_request(route.as_ref(), &method, resp.status());
    resp.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    let path = uri.path();
    match resp.extensions_mut().remove::<Failure>() {
        Some(f) if f.error_level => {
            tracing::error!(%method, path, error = %f.error, "{}", f.what);
        }
        Some(f) => tracing::warn!(%method, path, error = %f.error, "{}", f.what),
        None if resp.status().is_server_error() => {
            let status = resp.status().as_u16();
            tracing::warn!(%method, path, status, "MCP request answered with a server error");
        }
        None => {}
    }
    resp
}

/// What went wrong in an MCP request, for the log (see [`finish`]).
#[derive(Debug, Clone)]
struct Failure {
    error_level: bool,
    what: &'static str,
    error: String,
}

/// An HTTP error with a JSON-RPC error body (no id).
pub struct Reject {
    status: StatusCode,
    code: i64,
    message: String,
    failure: Option<Failure>,
}

impl Reject {
    /// The same answer, logged as a warning (or an error) `what` with `error`.
    fn logged(mut self, error_level: bool, what: &'static str, error: String) -> Reject {
        self.failure = Some(Failure {
            error_level,
            what,
            error,
        });
        self
    }
}

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(jsonrpc::error_body(self.code, &self.message)),
        )
            .into_response();
        if let Some(f) = self.failure {
            resp.extensions_mut().insert(f);
        }
        resp
    }
}

/// Sends a client message upstream; 502 when the upstream stopped between looking the
/// session up and sending to it.
fn forward(link: &Link, message: Value, kind: Kind) -> Result<(), Reject> {
    if link.send(message, kind) {
        Ok(())
    } else {
        Err(BridgeError::Upstream("the MCP server process is not running".into()).into())
    }
}

fn rpc_error(status: StatusCode, code: i64, message: &str) -> Reject {
    Reject {
        status,
        code,
        message: message.to_owned(),
        failure: None,
    }
}

impl From<BridgeError> for Reject {
    fn from(e: BridgeError) -> Self {
        match &e {
            BridgeError::UnknownDeployment => rpc_error(
                StatusCode::NOT_FOUND,
                code::INVALID_REQUEST,
                "Deployment not found",
            ),
            BridgeError::Upstream(m) => {
                rpc_error(StatusCode::BAD_GATEWAY, code::SERVER_UNAVAILABLE, m).logged(
                    false,
                    "upstream unavailable",
                    m.clone(),
                )
            }
            BridgeError::Backlog(n) => rpc_error(
                StatusCode::SERVICE_UNAVAILABLE,
                code::SERVER_UNAVAILABLE,
                &format!(
                    "The MCP server is not reading its input: {:.1} MiB of earlier messages are still waiting for it; try again later",
                    *n as f64 / f64::from(1 << 20)
                ),
            )
            .logged(
                false,
                "an MCP server is not reading its input",
                format!("{n} bytes wait unread on its stdin"),
            ),
            BridgeError::Deploy(DeployError::NotFound) => rpc_error(
                StatusCode::NOT_FOUND,
                code::INVALID_REQUEST,
                "Deployment not found",
            ),
            BridgeError::Deploy(DeployError::Runtime(e)) => {
                let status = if e.kind() == FailureKind::Unreachable {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::BAD_GATEWAY
                };
                rpc_error(status, code::SERVER_UNAVAILABLE, &format!("Docker: {e}")).logged(
                    false,
                    "Docker failed for an MCP request",
                    e.to_string(),
                )
            }
            BridgeError::Deploy(e) => rpc_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                code::INTERNAL_ERROR,
                "Internal error",
            )
            .logged(true, "bridge failure", e.to_string()),
        }
    }
}

/// The bridge, for a request whose `Origin` is allowed; 503 while starting.
fn bridge(state: &AppState, headers: &HeaderMap) -> Result<Arc<Bridge>, Reject> {
    let bridge = state.bridge().ok_or_else(|| {
        rpc_error(
            StatusCode::SERVICE_UNAVAILABLE,
            code::SERVER_UNAVAILABLE,
            "mcp-runner is starting: waiting for Docker",
        )
    })?;
    check_origin(headers, &bridge.config().allowed_origins)?;
    Ok(bridge)
}

/// DNS-rebinding protection: a present `Origin` must be a loopback origin or one of the
/// configured ones.
fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<(), Reject> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("").trim_end_matches('/');
    let listed = allowed
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/') == origin);
    let loopback = url::Url::parse(origin).ok().is_some_and(|u| {
        matches!(
            u.host(),
            Some(url::Host::Domain("localhost"))
                | Some(url::Host::Ipv4(std::net::Ipv4Addr::LOCALHOST))
                | Some(url::Host::Ipv6(std::net::Ipv6Addr::LOCALHOST))
        )
    });
    if listed || loopback {
        Ok(())
    } else {
        Err(rpc_error(
            StatusCode::FORBIDDEN,
            code::INVALID_REQUEST,
            "Origin not allowed",
        ))
    }
}

fn accepts(headers: &HeaderMap, what: &str) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.split(';').next().unwrap_or("").trim())
        .any(|v| v == what || v == "*/*")
}

fn is_json_body(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|v| v == "application/json")
}

/// Reads and checks one JSON-RPC message from a body.
fn read_message(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Value, Kind), Reject> {
    if !is_json_body(headers) {
        return Err(rpc_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code::INVALID_REQUEST,
            "Unsupported Media Type: Content-Type must be application/json",
        ));
    }
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            rpc_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                code::INVALID_REQUEST,
                "Request body too large",
            )
        } else {
            rpc_error(
                StatusCode::BAD_REQUEST,
                code::PARSE_ERROR,
                "Cannot read the request body",
            )
        }
    })?;
    let message: Value = serde_json::from_slice(&bytes).map_err(|e| {
        rpc_error(
            StatusCode::BAD_REQUEST,
            code::PARSE_ERROR,
            &format!("Parse error: {e}"),
        )
    })?;
    if message.is_array() {
        return Err(rpc_error(
            StatusCode::BAD_REQUEST,
            code::INVALID_REQUEST,
            "JSON-RPC batches are not supported; send one message per request",
        ));
    }
    let kind = jsonrpc::classify(&message).map_err(|why| {
        rpc_error(
            StatusCode::BAD_REQUEST,
            code::INVALID_REQUEST,
            &format!("Invalid Request: {why}"),
        )
    })?;
    Ok((message, kind))
}

/// The live session named by the request: 400 when it names none, 404 when it is unknown,
/// ended, or of another deployment.
fn find_session(
    bridge: &Bridge,
    deployment_id: &str,
    session_id: Option<String>,
    what: &str,
) -> Result<Link, Reject> {
    let Some(session_id) = session_id else {
        return Err(rpc_error(
            StatusCode::BAD_REQUEST,
            code::INVALID_REQUEST,
            &format!("Bad Request: the {what} is required"),
        ));
    };
    bridge.session(deployment_id, &session_id).ok_or_else(|| {
        rpc_error(
            StatusCode::NOT_FOUND,
            code::SESSION_NOT_FOUND,
            "Session not found",
        )
    })
}

/// The Streamable HTTP session of a request (protocol header checked, activity recorded).
fn streamable_session(bridge: &Bridge, id: &str, headers: &HeaderMap) -> Result<Link, Reject> {
    check_protocol_header(headers)?;
    let link = find_session(bridge, id, session_header(headers), "Mcp-Session-Id header")?;
    bridge.touch(id);
    Ok(link)
}

fn session_header(headers: &HeaderMap) -> Option<String> {
    headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `MCP-Protocol-Version`: absent means 2025-03-26; an unknown one is a 400.
fn check_protocol_header(headers: &HeaderMap) -> Result<(), Reject> {
    match headers.get("mcp-protocol-version").map(|v| v.to_str()) {
        None => Ok(()),
        Some(Ok(v)) if version::is_supported(v) => Ok(()),
        Some(v) => Err(rpc_error(
            StatusCode::BAD_REQUEST,
            code::INVALID_REQUEST,
            &format!(
                "Unsupported MCP-Protocol-Version {:?}; supported: {}",
                v.unwrap_or("?"),
                version::KNOWN.join(", ")
            ),
        )),
    }
}

fn sse_response(rx: mpsc::Receiver<SseEvent>) -> Response {
    sse_stream(Vec::new(), rx, ())
}

/// The answer to a request that may stream (see `JSON_IF_ANSWERED_WITHIN`).
async fn streamed_answer(link: &Link, mut rx: mpsc::Receiver<SseEvent>, prime: bool) -> Response {
    let mut first = Vec::with_capacity(3);
    if prime && let Some(priming) = rx.recv().await {
        first.push(priming);
    }
    if let Ok(Some(event)) = tokio::time::timeout(JSON_IF_ANSWERED_WITHIN, rx.recv()).await {
        match rx.try_recv() {
            // The stream ended with this one message, and not because the session did: it
            // was the response.
            Err(mpsc::error::TryRecvError::Disconnected) if !link.session.is_closed() => {
                return json_response(event.data);
            }
            Ok(next) => first.extend([event, next]),
            Err(_) => first.push(event),
        }
    }
    sse_stream(first, rx, ())
}

/// An SSE response written by hand (axum's `Event` cannot write the empty `data:` line of a
/// priming event), with keep-alive comments while idle. `guard` lives as long as the body:
/// it is dropped when the client goes away.
fn sse_stream<G: Send + 'static>(
    first: Vec<SseEvent>,
    rx: mpsc::Receiver<SseEvent>,
    guard: G,
) -> Response {
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
    keep_alive.reset();
    let first = futures_util::stream::iter(first).map(|e| Ok::<_, Infallible>(frame(&e)));
    let rest = futures_util::stream::unfold(
        (rx, guard, keep_alive),
        |(mut rx, guard, mut keep_alive)| async move {
            let bytes = tokio::select! {
                e = rx.recv() => frame(&e?),
                _ = keep_alive.tick() => Bytes::from_static(b":\n\n"),
            };
            keep_alive.reset();
            Some((Ok::<_, Infallible>(bytes), (rx, guard, keep_alive)))
        },
    );
    let body = first.chain(rest);
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

/// One SSE event. An event without data is a priming event: its id lets the client resume
/// before any message came, and `retry` tells it how soon to reconnect.
fn frame(e: &SseEvent) -> Bytes {
    let mut out = String::with_capacity(e.data.len() + 48);
    if let Some(id) = &e.id {
        out.push_str("id: ");
        out.push_str(id);
        out.push('\n');
    }
    if e.data.is_empty() {
        out.push_str("retry: 3000\ndata: \n\n");
    } else {
        out.push_str("event: ");
        out.push_str(e.event);
        out.push('\n');
        for line in e.data.split('\n') {
            out.push_str("data: ");
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
    }
    Bytes::from(out)
}

/// Whether the answer to a request goes on an SSE stream: whenever progress, log messages
/// or server requests may come before the response.
fn wants_stream(method: &str, message: &Value) -> bool {
    jsonrpc::progress_token(message).is_some()
        || matches!(
            method,
            "tools/call" | "prompts/get" | "resources/read" | "completion/complete"
        )
}

/// Waits for the JSON answer of a request: the response's text.
async fn json_answer(
    link: &Link,
    rx: tokio::sync::oneshot::Receiver<Arc<str>>,
    id: &Value,
) -> Arc<str> {
    let failed = |code, message| -> Arc<str> {
        jsonrpc::error_response(id.clone(), code, message, None)
            .to_string()
            .into()
    };
    tokio::select! {
        answer = rx => answer.unwrap_or_else(|_| failed(
            code::SERVER_UNAVAILABLE, "the session ended before the server answered")),
        () = tokio::time::sleep(ANSWER_TIMEOUT) => failed(
            code::INTERNAL_ERROR, "the server did not answer in time"),
        () = link.session.closed.cancelled() => failed(
            code::SERVER_UNAVAILABLE, "the session ended before the server answered"),
    }
}

/// The bytes of a message's text, shared rather than copied into the response body.
struct Text(Arc<str>);

impl AsRef<[u8]> for Text {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// A `200 application/json` response whose body is `text`.
fn json_response(text: Arc<str>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        Bytes::from_owner(Text(text)),
    )
        .into_response()
}

async fn mcp_post(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Reject> {
    let bridge = bridge(&state, &headers)?;
    if !(accepts(&headers, "application/json") && accepts(&headers, "text/event-stream")) {
        return Err(rpc_error(
            StatusCode::NOT_ACCEPTABLE,
            code::INVALID_REQUEST,
            "Not Acceptable: Accept must list application/json and text/event-stream",
        ));
    }
    let (message, kind) = read_message(&headers, body)?;
    let method = jsonrpc::method(&message).unwrap_or("").to_owned();

    if method == "initialize" {
        if kind != Kind::Request {
            return Err(rpc_error(
                StatusCode::BAD_REQUEST,
                code::INVALID_REQUEST,
                "initialize must be a request",
            ));
        }
        let rpc_id = jsonrpc::id(&message).cloned().unwrap_or(Value::Null);
        let auth = headers.get(header::AUTHORIZATION).cloned();
        let link = bridge.open(&id, Front::Streamable, auth).await?;
        let rx = link.session.expect_json(jsonrpc::key(&rpc_id));
        if let Err(e) = forward(&link, message, kind) {
            bridge.end_session(&link);
            return Err(e);
        }
        let text = json_answer(&link, rx, &rpc_id).await;
        let succeeded =
            serde_json::from_str::<Value>(&text).is_ok_and(|answer| answer.get("result").is_some());
        let mut resp = json_response(text);
        if succeeded {
            if let Ok(v) = HeaderValue::from_str(&link.session.id) {
                resp.headers_mut().insert("mcp-session-id", v);
            }
        } else {
            bridge.end_session(&link);
        }
        return Ok(resp);
    }

    let link = streamable_session(&bridge, &id, &headers)?;
    link.check_backlog()?;
    match kind {
        Kind::Notification | Kind::Response => {
            forward(&link, message, kind)?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        Kind::Request => {
            let rpc_id = jsonrpc::id(&message).cloned().unwrap_or(Value::Null);
            let key = jsonrpc::key(&rpc_id);
            if wants_stream(&method, &message) {
                let prime = link
                    .session
                    .protocol_version()
                    .is_some_and(|v| version::primes_streams(&v));
                let rx = link.session.open_request_stream(key, prime);
                forward(&link, message, kind)?;
                Ok(streamed_answer(&link, rx, prime).await)
            } else {
                let rx = link.session.expect_json(key);
                forward(&link, message, kind)?;
                Ok(json_response(json_answer(&link, rx, &rpc_id).await))
            }
        }
    }
}

async fn mcp_get(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Reject> {
    let bridge = bridge(&state, &headers)?;
    if !accepts(&headers, "text/event-stream") {
        return Err(rpc_error(
            StatusCode::NOT_ACCEPTABLE,
            code::INVALID_REQUEST,
            "Not Acceptable: Accept must list text/event-stream",
        ));
    }
    let link = streamable_session(&bridge, &id, &headers)?;
    link.session.touch();
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_event_id);
    if let Some((stream, seq)) = resume
        && let Some(rx) = link.session.resume(stream, seq)
    {
        return Ok(sse_response(rx));
    }
    let prime = link
        .session
        .protocol_version()
        .is_some_and(|v| version::primes_streams(&v));
    match link.session.open_get_stream(prime) {
        Ok(rx) => {
            link.get_stream_opened();
            Ok(sse_response(rx))
        }
        Err(StreamError::Conflict) => Err(rpc_error(
            StatusCode::CONFLICT,
            code::INVALID_REQUEST,
            "Conflict: this session already has a GET stream",
        )),
        Err(StreamError::Closed) => Err(rpc_error(
            StatusCode::NOT_FOUND,
            code::SESSION_NOT_FOUND,
            "Session not found",
        )),
    }
}

async fn mcp_delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Reject> {
    let bridge = bridge(&state, &headers)?;
    let link = streamable_session(&bridge, &id, &headers)?;
    bridge.end_session(&link);
    Ok(StatusCode::OK.into_response())
}

/// Ends the legacy session when its stream's body is dropped (the client went away).
struct EndOnDrop {
    bridge: Arc<Bridge>,
    link: Link,
}

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.bridge.end_session(&self.link);
    }
}

async fn sse_get(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Reject> {
    let bridge = bridge(&state, &headers)?;
    let auth = headers.get(header::AUTHORIZATION).cloned();
    let link = bridge.open(&id, Front::Legacy, auth).await?;
    let endpoint = format!(
        "/mcp-server/{id}/sse/messages?sessionId={}",
        link.session.id
    );
    let rx = link.session.open_legacy(endpoint);
    let guard = EndOnDrop {
        bridge: bridge.clone(),
        link,
    };
    Ok(sse_stream(Vec::new(), rx, guard))
}

/// Query of the legacy message endpoint.
#[derive(Debug, Deserialize)]
struct SessionQuery {
    #[serde(rename = "sessionId")]
    session_id: Option<String>,
}

async fn sse_post(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<SessionQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Reject> {
    let bridge = bridge(&state, &headers)?;
    let link = find_session(&bridge, &id, query.session_id, "sessionId query parameter")?;
    let (message, kind) = read_message(&headers, body)?;
    bridge.touch(&id);
    link.check_backlog()?;
    forward(&link, message, kind)?;
    Ok((StatusCode::ACCEPTED, "Accepted").into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn a_stdin_backlog_is_a_503_that_says_why() {
        let reject = Reject::from(BridgeError::Backlog(9 << 20));
        assert_eq!(reject.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reject.code, code::SERVER_UNAVAILABLE);
        assert!(
            reject.message.contains("not reading its input") && reject.message.contains("9.0 MiB"),
            "{}",
            reject.message
        );
    }

    #[test]
    fn origins_loopback_listed_or_refused() {
        let allowed = vec!["https://app.example.com".to_owned()];
        assert!(check_origin(&headers(&[]), &allowed).is_ok());
        assert!(check_origin(&headers(&[("origin", "http://localhost:6274")]), &allowed).is_ok());
        assert!(check_origin(&headers(&[("origin", "http://127.0.0.1")]), &allowed).is_ok());
        assert!(check_origin(&headers(&[("origin", "https://app.example.com")]), &allowed).is_ok());
        assert!(check_origin(&headers(&[("origin", "https://evil.example")]), &allowed).is_err());
        assert!(check_origin(&headers(&[("origin", "null")]), &allowed).is_err());
    }

    #[test]
    fn accept_lists_are_parsed() {
        let h = headers(&[("accept", "application/json, text/event-stream;q=0.9")]);
        assert!(accepts(&h, "application/json") && accepts(&h, "text/event-stream"));
        assert!(!accepts(
            &headers(&[("accept", "text/html")]),
            "application/json"
        ));
    }

    #[test]
    fn sse_frames() {
        let msg = SseEvent {
            id: Some("2_5".into()),
            event: "message",
            data: std::sync::Arc::from("{\"a\":1}"),
        };
        assert_eq!(
            &frame(&msg)[..],
            b"id: 2_5\nevent: message\ndata: {\"a\":1}\n\n"
        );
        let prime = SseEvent {
            id: Some("2_0".into()),
            event: "message",
            data: std::sync::Arc::from(""),
        };
        assert_eq!(&frame(&prime)[..], b"id: 2_0\nretry: 3000\ndata: \n\n");
    }

    #[test]
    fn protocol_header_rule() {
        assert!(check_protocol_header(&headers(&[])).is_ok());
        assert!(check_protocol_header(&headers(&[("mcp-protocol-version", "2025-06-18")])).is_ok());
        assert!(
            check_protocol_header(&headers(&[("mcp-protocol-version", "1999-01-01")])).is_err()
        );
    }

    /// A log sink for one test.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Captured {
        /// Captures this thread's log lines at INFO and above until the guard is dropped.
        fn start() -> (Captured, tracing::subscriber::DefaultGuard) {
            let captured = Captured::default();
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::INFO)
                .with_ansi(false)
                .with_writer({
                    let c = captured.clone();
                    move || c.clone()
                })
                .finish();
            (captured, tracing::subscriber::set_default(subscriber))
        }

        fn text(&self) -> String {
            String::from_utf8(self.0.lock().expect("lock").clone()).expect("UTF-8")
        }
    }

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_failed_mcp_request_is_logged_with_its_method_and_path() {
        use tower::ServiceExt;
        let (captured, _guard) = Captured::start();
        let app: Router = Router::new()
            .route(
                "/mcp-server/{id}/mcp",
                post(|| async {
                    Err::<Response, Reject>(
                        BridgeError::Upstream("the process is gone".into()).into(),
                    )
                }),
            )
            .route(
                "/mcp-server/{id}/sse",
                get(|| async {
                    Err::<Response, Reject>(rpc_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        code::SERVER_UNAVAILABLE,
                        "starting",
                    ))
                }),
            );
        let app = always_layers(app);
        let request = axum::http::Request::post("/mcp-server/dp_x/mcp")
            .body(axum::body::Body::empty())
            .expect("request");
        let resp = app.clone().oneshot(request).await.expect("response");

        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(resp.headers()["x-accel-buffering"], "no");
        assert!(resp.extensions().get::<Failure>().is_none());
        let log = captured.text();
        assert!(log.contains("WARN"), "{log}");
        assert!(log.contains("upstream unavailable"), "{log}");
        assert!(log.contains("method=POST"), "{log}");
        assert!(log.contains("path=\"/mcp-server/dp_x/mcp\""), "{log}");
        assert!(log.contains("the process is gone"), "{log}");

        // A server error without a failure of its own is logged too, with its status.
        let request = axum::http::Request::get("/mcp-server/dp_y/sse")
            .body(axum::body::Body::empty())
            .expect("request");
        let resp = app.oneshot(request).await.expect("response");
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        let log = captured.text();
        let line = log
            .lines()
            .find(|l| l.contains("/mcp-server/dp_y/sse"))
            .unwrap_or_else(|| panic!("no line for the 503: {log}"));
        assert!(
            line.contains("WARN") && line.contains("status=503"),
            "{line}"
        );
        assert!(line.contains("method=GET"), "{line}");
    }

    #[tokio::test]
    async fn a_panicking_mcp_request_is_a_json_rpc_500_logged_and_counted() {
        use tower::ServiceExt;
        let (captured, _guard) = Captured::start();
        async fn boom() -> Response {
            panic!("the hub is inconsistent")
        }
        let app: Router =
            always_layers(Router::new().route("/mcp-server/{id}/sse/messages", post(boom)));
        let request = axum::http::Request::post("/mcp-server/dp_p/sse/messages")
            .body(axum::body::Body::empty())
            .expect("request");
        let resp = app.oneshot(request).await.expect("response");

        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(resp.headers()["x-accel-buffering"], "no");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .expect("body");
        let body: Value = serde_json::from_slice(&body).expect("JSON body");
        assert_eq!(body["jsonrpc"], "2.0");
        assert_eq!(body["error"]["code"], code::INTERNAL_ERROR);
        let log = captured.text();
        let line = log
            .lines()
            .find(|l| l.contains("an MCP request panicked"))
            .unwrap_or_else(|| panic!("no line for the panic: {log}"));
        assert!(line.contains("ERROR"), "{line}");
        assert!(line.contains("the hub is inconsistent"), "{line}");
        assert!(
            line.contains("path=\"/mcp-server/dp_p/sse/messages\""),
            "{line}"
        );
        let metrics = crate::metrics::METRICS.encode();
        assert!(
            metrics.contains(
                "mcp_runner_http_requests_total{route=\"/mcp-server/{id}/sse/messages\",method=\"POST\",status=\"500\"}"
            ),
            "{metrics}"
        );
    }
}
