//! Logging (text or JSON lines through `tracing`) and Sentry error reporting.
//!
//! Sentry events carry the route and the deployment id of the request they happened in, and
//! the JSON body of a management request; before anything leaves, `scrub_event` replaces
//! every value under a sensitive key (`env`, `args`, registry credentials, keys, tokens) and
//! drops headers, cookies and query strings.

use std::io::IsTerminal;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use sentry::SentryFutureExt;
use sentry::protocol::{Event, Value};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{Config, LogFormat};

/// Keeps Sentry flushing until dropped at the end of `main`.
pub struct Telemetry {
    _sentry: Option<sentry::ClientInitGuard>,
}

/// Installs the log subscriber and, with a DSN, Sentry (panics and error-level events).
pub fn init(config: &Config) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_new(&config.rust_log)
        .map_err(|e| anyhow::anyhow!("RUST_LOG is not a valid filter: {e}"))?;
    let sentry_guard = match &config.sentry_dsn {
        Some(dsn) => {
            let dsn: sentry::types::Dsn = dsn
                .parse()
                .map_err(|e| anyhow::anyhow!("SENTRY_DSN is not a valid DSN: {e}"))?;
            let mut options = sentry::ClientOptions::new();
            options.dsn = Some(dsn);
            options.release = sentry::release_name!();
            options.send_default_pii = false;
            options.before_send = Some(Arc::new(scrub_event));
            options.before_breadcrumb = Some(Arc::new(|mut crumb| {
                scrub_map(&mut crumb.data);
                Some(crumb)
            }));
            Some(sentry::init(options))
        }
        None => None,
    };
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(sentry_guard.as_ref().map(|_| {
            // Error-level events become Sentry events; info and above ride along as
            // breadcrumbs of the next one.
            sentry::integrations::tracing::ErrorLayer::new().with_filter(LevelFilter::ERROR)
        }))
        .with(sentry_guard.as_ref().map(|_| {
            sentry::integrations::tracing::BreadcrumbLayer::new().with_filter(LevelFilter::INFO)
        }));
    match config.log_format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_ansi(std::io::stdout().is_terminal()))
            .try_init(),
    }
    .map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))?;
    Ok(Telemetry {
        _sentry: sentry_guard,
    })
}

/// Keys whose values never reach Sentry (compared without case, `-` and `_`).
const SENSITIVE: [&str; 14] = [
    "env",
    "args",
    "registryauth",
    "auth",
    "password",
    "token",
    "identitytoken",
    "authorization",
    "xapikey",
    "apikey",
    "secret",
    "cookie",
    "sessionid",
    "mcpsessionid",
];

const REDACTED: &str = "[redacted]";

fn is_sensitive(key: &str) -> bool {
    let key: String = key
        .chars()
        .filter(|c| *c != '-' && *c != '_')
        .flat_map(char::to_lowercase)
        .collect();
    SENSITIVE.contains(&key.as_str())
}

/// Replaces the values of sensitive keys, at any depth.
fn scrub_value(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if is_sensitive(k) {
                    *v = Value::String(REDACTED.to_owned());
                } else {
                    scrub_value(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(scrub_value),
        // JSON carried as text (a body in a log field) is scrubbed too.
        Value::String(text) if text.starts_with('{') || text.starts_with('[') => {
            if let Ok(mut inner) = serde_json::from_str::<Value>(text)
                && inner.is_object() | inner.is_array()
            {
                scrub_value(&mut inner);
                *text = inner.to_string();
            }
        }
        _ => {}
    }
}

fn scrub_map(map: &mut sentry::protocol::Map<String, Value>) {
    for (k, v) in map.iter_mut() {
        if is_sensitive(k) {
            *v = Value::String(REDACTED.to_owned());
        } else {
            scrub_value(v);
        }
    }
}

/// What leaves for Sentry: request bodies, extra data, contexts and breadcrumbs with
/// sensitive values replaced; no headers, cookies or query strings (API keys, session ids).
pub fn scrub_event(mut event: Event<'static>) -> Option<Event<'static>> {
    if let Some(request) = event.request.as_mut() {
        request.headers.clear();
        request.cookies = None;
        request.query_string = None;
        request.env.clear();
        if let Some(data) = request.data.take() {
            request.data = Some(match serde_json::from_str::<Value>(&data) {
                Ok(mut v) => {
                    scrub_value(&mut v);
                    v.to_string()
                }
                // Not JSON: it cannot be scrubbed by key, so it is not sent.
                Err(_) => REDACTED.to_owned(),
            });
        }
    }
    scrub_map(&mut event.extra);
    for (_, context) in event.contexts.iter_mut() {
        if let sentry::protocol::Context::Other(map) = context {
            scrub_map(map);
        }
    }
    for crumb in event.breadcrumbs.values.iter_mut() {
        scrub_map(&mut crumb.data);
    }
    Some(event)
}

/// Largest management request body attached to Sentry events.
const MAX_REPORTED_BODY: usize = 64 * 1024;

/// With Sentry on, runs the request in a hub of its own whose events carry the route
/// template, the deployment id and (for `/api` requests) the JSON body, scrubbed on send.
pub async fn sentry_scope(request: Request, next: Next) -> Response {
    let enabled = sentry::Hub::current()
        .client()
        .is_some_and(|c| c.is_enabled());
    if !enabled {
        return next.run(request).await;
    }
    let hub = Arc::new(sentry::Hub::new_from_top(sentry::Hub::current()));
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let path = request.uri().path().to_owned();
    let method = request.method().to_string();
    let deployment = route.as_deref().and_then(|r| deployment_id(r, &path));
    // Only a body of known, small length is read ahead: anything else goes to the route
    // untouched (its own limit answers an oversized one).
    let small = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|n| n > 0 && n <= MAX_REPORTED_BODY);
    let (request, body) = if small && route.as_deref().is_some_and(|r| r.starts_with("/api/")) {
        let (parts, body) = request.into_parts();
        match axum::body::to_bytes(body, MAX_REPORTED_BODY).await {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                (Request::from_parts(parts, Body::from(bytes)), Some(text))
            }
            // The client broke off or lied about the length: the route sees an empty body.
            Err(_) => (Request::from_parts(parts, Body::empty()), None),
        }
    } else {
        (request, None)
    };
    hub.configure_scope(|scope| {
        if let Some(route) = &route {
            scope.set_tag("route", route);
        }
        if let Some(id) = &deployment {
            scope.set_tag("deployment.id", id);
        }
        scope.add_event_processor(move |mut event| {
            event.request = Some(sentry::protocol::Request {
                method: Some(method.clone()),
                data: body.clone(),
                ..Default::default()
            });
            Some(event)
        });
    });
    next.run(request).bind_hub(hub).await
}

/// The `{id}` segment of `path` when `route` (a template) has one.
fn deployment_id(route: &str, path: &str) -> Option<String> {
    let at = route.split('/').position(|s| s == "{id}")?;
    path.split('/').nth(at).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::post;
    use tower::ServiceExt;

    /// A handler failing the way a create can, with the body in an error's data.
    async fn failing(body: String) -> &'static str {
        tracing::error!(request = %body, "create failed");
        "failed"
    }

    #[test]
    fn events_carry_route_and_deployment_and_never_secrets() {
        let body = serde_json::json!({
            "image": "registry.example/app:1",
            "env": {"OPENAI_API_KEY": "sk-secret-env"},
            "args": ["--token", "secret-arg"],
            "registryAuth": {"username": "bob", "password": "secret-pass"},
            "transport": {"type": "stdio"}
        })
        .to_string();
        let mut options = sentry::ClientOptions::new();
        options.before_send = Some(Arc::new(scrub_event));
        let events = sentry::test::with_captured_events_options(
            || {
                let subscriber = tracing_subscriber::registry().with(
                    sentry::integrations::tracing::ErrorLayer::new()
                        .with_filter(LevelFilter::ERROR),
                );
                let _guard = tracing::subscriber::set_default(subscriber);
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    let app = Router::new()
                        .route("/api/deployment/{id}/restart", post(failing))
                        .layer(axum::middleware::from_fn(sentry_scope));
                    let request = Request::post("/api/deployment/dp_abc123/restart?sessionId=s1")
                        .header("content-type", "application/json")
                        .header("content-length", body.len())
                        .header("x-api-key", "the-api-key")
                        .body(Body::from(body.clone()))
                        .expect("request");
                    let response = app.oneshot(request).await.expect("response");
                    assert_eq!(response.status(), 200, "the body still reaches the route");
                });
            },
            options,
        );
        assert_eq!(events.len(), 1, "{events:?}");
        let event = &events[0];
        assert_eq!(
            event.tags.get("route").map(String::as_str),
            Some("/api/deployment/{id}/restart")
        );
        assert_eq!(
            event.tags.get("deployment.id").map(String::as_str),
            Some("dp_abc123")
        );
        let request = event.request.as_ref().expect("request data");
        let data: serde_json::Value =
            serde_json::from_str(request.data.as_deref().expect("body")).expect("JSON");
        assert_eq!(data["image"], "registry.example/app:1");
        assert_eq!(data["env"], REDACTED);
        assert_eq!(data["args"], REDACTED);
        assert_eq!(data["registryAuth"], REDACTED);
        assert!(request.headers.is_empty() && request.query_string.is_none());
        let sent = serde_json::to_string(event).expect("serialize");
        for secret in ["sk-secret-env", "secret-arg", "secret-pass", "the-api-key"] {
            assert!(!sent.contains(secret), "{secret} leaked: {sent}");
        }
    }

    #[test]
    fn sensitive_keys_are_found_at_any_depth_and_spelling() {
        let mut v = serde_json::json!({
            "a": [{"X-Api-Key": "k", "keep": 1}],
            "Authorization": "Bearer t",
            "nested": {"identity_token": "t", "ok": true}
        });
        scrub_value(&mut v);
        assert_eq!(
            v,
            serde_json::json!({
                "a": [{"X-Api-Key": REDACTED, "keep": 1}],
                "Authorization": REDACTED,
                "nested": {"identity_token": REDACTED, "ok": true}
            })
        );
    }
}
