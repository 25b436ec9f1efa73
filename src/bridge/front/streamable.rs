//! Streamable HTTP at `/mcp-server/{id}/mcp`: POST carries a client message (and
//! `initialize` opens a session), GET opens the session's stream or resumes one with
//! `Last-Event-ID`, DELETE ends the session.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::mpsc;

use super::body::{json_response, sse_response, sse_stream};
use super::checks::{accepts, read_message, streamable_session};
use super::reject::{Reject, rpc_error};
use super::{bridge, forward};
use crate::bridge::protocol::jsonrpc::{self, Kind, code};
use crate::bridge::protocol::sse::{SseEvent, parse_event_id};
use crate::bridge::protocol::version;
use crate::bridge::session::{Front, StreamError};
use crate::bridge::{BridgeSlot, Link};

/// How long a JSON answer is waited for before the request is given up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a request that may stream waits for its first message before its SSE stream
/// starts. A response that comes first and alone is sent as plain JSON: one write instead
/// of a stream's headers, events and end. Progress, log messages or server requests that
/// come first, or a slower server, start the stream (the priming event included) at once.
const JSON_IF_ANSWERED_WITHIN: Duration = Duration::from_millis(100);

pub(super) async fn post(
    State(slot): State<BridgeSlot>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Reject> {
    let bridge = bridge(&slot, &headers)?;
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

pub(super) async fn get(
    State(slot): State<BridgeSlot>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Reject> {
    let bridge = bridge(&slot, &headers)?;
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

pub(super) async fn delete(
    State(slot): State<BridgeSlot>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Reject> {
    let bridge = bridge(&slot, &headers)?;
    let link = streamable_session(&bridge, &id, &headers)?;
    bridge.end_session(&link);
    Ok(StatusCode::OK.into_response())
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
