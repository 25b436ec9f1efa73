//! The HTTP fronts of the bridge: Streamable HTTP at `/mcp-server/{id}/mcp` (POST, GET,
//! DELETE) and legacy HTTP+SSE at `/mcp-server/{id}/sse` with its message endpoint
//! `/mcp-server/{id}/sse/messages?sessionId=…`.
//!
//! Status codes follow the specification and the reference SDKs: 400 for a missing session
//! header or an invalid message (JSON-RPC -32700 / -32600), 404 for an unknown or ended
//! session and for an unknown deployment, 403 for a foreign `Origin`, 406 / 415 for wrong
//! `Accept` / `Content-Type`, 409 for a second GET stream, 413 for an oversized body, 202 for
//! notifications and responses.
//!
//! - `streamable.rs`: the Streamable HTTP handlers; `legacy.rs`: the legacy SSE handlers
//! - `checks.rs`: the header and body checks both share; `reject.rs`: their error answers
//! - `body.rs`: JSON and SSE response bodies

mod body;
mod checks;
mod legacy;
mod reject;
mod streamable;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use serde_json::Value;

use super::protocol::jsonrpc::{Kind, code};
use super::{Bridge, BridgeError, BridgeSlot, Link};
use checks::check_origin;
use reject::{Failure, Reject, rpc_error};

/// The MCP routes with their own layers: body limit, panic safety with a JSON-RPC error
/// body, [`finish`] (request counts, failure log lines, no proxy buffering), and the Sentry
/// scope and a request span only where they can do something: every client message passes
/// here, and the management API's general-purpose layers would cost each one its work.
pub fn routes(max_body: usize) -> Router<BridgeSlot> {
    let sentry = sentry::Hub::current()
        .client()
        .is_some_and(|c| c.is_enabled());
    let debug = tracing::level_filters::LevelFilter::current() >= tracing::Level::DEBUG;
    let routes = Router::new()
        .route(
            "/mcp-server/{id}/mcp",
            post(streamable::post)
                .get(streamable::get)
                .delete(streamable::delete),
        )
        .route("/mcp-server/{id}/sse", get(legacy::get))
        .route("/mcp-server/{id}/sse/messages", post(legacy::post))
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
    crate::metrics::count_request(route.as_ref(), &method, resp.status());
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

/// The bridge, for a request whose `Origin` is allowed; 503 while starting.
fn bridge(slot: &BridgeSlot, headers: &HeaderMap) -> Result<Arc<Bridge>, Reject> {
    let bridge = slot.get().ok_or_else(|| {
        rpc_error(
            StatusCode::SERVICE_UNAVAILABLE,
            code::SERVER_UNAVAILABLE,
            &format!(
                "mcp-runner is starting: waiting for {}",
                crate::runtime::backend_title(slot.backend())
            ),
        )
    })?;
    check_origin(headers, &bridge.config().allowed_origins)?;
    Ok(bridge)
}

/// Sends a client message upstream; 502 when the upstream stopped between looking the
/// session up and sending to it.
fn forward(link: &Link, message: Value, kind: Kind) -> Result<(), Reject> {
    link.send(message, kind)
        .map_err(|gone| BridgeError::Upstream(gone.to_string()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

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
