//! The in-process server on the in-memory backend: no Docker, no root. It starts, serves the
//! management API, and its teardown finds the fake empty and no row left.

use mcp_runner::runtime::fake::FakeBackend;
use mcp_test_support::server::{Backend, Options, TestApp};
use serde_json::json;

#[tokio::test]
async fn a_server_on_the_fake_backend_creates_lists_and_tears_down() {
    let fake = FakeBackend::with_mcp_server();
    let app = TestApp::spawn_with(Options {
        backend: Backend::Fake(fake.clone()),
        ..Options::default()
    })
    .await;
    let (status, body) = app
        .create(&json!({"image": "fixture:1", "transport": {"type": "stdio"}}))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(app.list_ids().await.len(), 1);
    assert_eq!(fake.sandboxes().len(), 1);
    assert!(app.backend_requests() > 0);
    app.teardown().await;
    assert!(fake.is_empty());
}
