//! Router tests: the whole HTTP surface (management API and MCP fronts) of a real server on
//! 127.0.0.1, with a temporary SQLite file and the in-memory sandbox backend. No Docker, no
//! root; the tier runs in seconds.
//!
//! - `api.rs`: validation, authentication and lockout, error bodies, probes, metrics,
//!   OpenAPI
//! - `deployments.rs`: create, read and delete through the API, and how backend failures
//!   are answered
//! - `mcp.rs`: the MCP fronts' protocol rules against the fake's tiny MCP server

mod api;
mod deployments;
mod mcp;

use std::sync::Arc;

use mcp_runner::runtime::fake::FakeBackend;
use mcp_test_support::TestApp;
use mcp_test_support::server::{Backend, Options};
use serde_json::{Value, json};

/// A server on a fresh fake whose stdio sandboxes answer MCP.
pub async fn app() -> TestApp {
    app_on(FakeBackend::with_mcp_server(), &[]).await
}

/// A server with extra command-line arguments.
pub async fn app_with(args: &[&str]) -> TestApp {
    app_on(FakeBackend::with_mcp_server(), args).await
}

/// A server on `fake`, with extra command-line arguments.
pub async fn app_on(fake: Arc<FakeBackend>, args: &[&str]) -> TestApp {
    TestApp::spawn_with(Options {
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        backend: Backend::Fake(fake),
        ..Options::default()
    })
    .await
}

/// A stdio create body with `extra` fields.
pub fn stdio(extra: Value) -> Value {
    let mut body = json!({"image": "fixture:1", "transport": {"type": "stdio"}});
    for (k, v) in extra.as_object().expect("object") {
        body[k] = v.clone();
    }
    body
}

/// Asserts the management API's error body and status.
pub fn assert_error_body(status: u16, body: &Value, expected_status: u16) {
    assert_eq!(status, expected_status, "unexpected answer {body}");
    assert_eq!(body["statusCode"], expected_status, "{body}");
    assert!(body["error"].is_string(), "{body}");
    assert!(body["message"].is_string(), "{body}");
}
