//! What both HTTP upstreams do with a server's SSE stream: relay its messages to the session,
//! each with the client request it belongs to, and note the protocol version an
//! `initialize` result names.

use std::sync::Mutex;

use futures_util::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::bridge::protocol::jsonrpc::{self, Kind};
use crate::bridge::protocol::sse;
use crate::bridge::session::Session;

/// Largest SSE event accepted from an upstream.
pub(super) const MAX_EVENT: usize = 64 * 1024 * 1024;

/// A poisoned lock only means another thread panicked mid-update; the data is usable.
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Relays an upstream SSE response to the session, each message with `related`. Returns
/// whether the response to `related` came (or the session ended, so no more is wanted).
pub(super) async fn relay_stream(
    resp: reqwest::Response,
    session: &Session,
    related: Option<&str>,
    closed: &CancellationToken,
    parser: &mut sse::Parser,
) -> bool {
    let mut body = resp.bytes_stream();
    loop {
        let chunk = tokio::select! {
            () = closed.cancelled() => return true,
            () = session.closed.cancelled() => return true,
            c = body.next() => c,
        };
        let Some(Ok(bytes)) = chunk else { return false };
        for event in parser.push(&bytes) {
            if event.data.is_empty() {
                continue; // a priming event (its id is kept by the parser)
            }
            if let Ok(message) = serde_json::from_str::<Value>(&event.data) {
                note_version(session, &message);
                let answered = related.is_some()
                    && matches!(jsonrpc::classify(&message), Ok(Kind::Response))
                    && jsonrpc::id(&message).map(jsonrpc::key).as_deref() == related;
                session.deliver(&message, related);
                if answered {
                    return true;
                }
            }
        }
    }
}

/// Records the protocol version of an initialize result passing by.
pub(super) fn note_version(session: &Session, message: &Value) {
    if let Some(v) = message
        .get("result")
        .and_then(|r| r.get("protocolVersion"))
        .and_then(Value::as_str)
        && message
            .get("result")
            .is_some_and(|r| r.get("serverInfo").is_some())
    {
        session.set_protocol_version(v);
    }
}
