//! Response bodies of the MCP routes: a message's text as JSON, and SSE streams written by
//! hand with keep-alive comments.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::bridge::protocol::sse::{SseEvent, frame};

/// Keep-alive comments on idle streams.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub(super) fn sse_response(rx: mpsc::Receiver<SseEvent>) -> Response {
    sse_stream(Vec::new(), rx, ())
}

/// An SSE response written by hand (axum's `Event` cannot write the empty `data:` line of a
/// priming event), with keep-alive comments while idle. `guard` lives as long as the body:
/// it is dropped when the client goes away.
pub(super) fn sse_stream<G: Send + 'static>(
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

/// The bytes of a message's text, shared rather than copied into the response body.
struct Text(Arc<str>);

impl AsRef<[u8]> for Text {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// A `200 application/json` response whose body is `text`.
pub(super) fn json_response(text: Arc<str>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        Bytes::from_owner(Text(text)),
    )
        .into_response()
}
