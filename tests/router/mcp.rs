//! The MCP fronts' protocol rules on the in-memory backend, whose stdio sandboxes run a tiny
//! MCP server: sessions, status codes and JSON-RPC error codes, header checks, streams, and
//! both fronts end to end.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::{app, stdio};
use mcp_test_support::TestApp;
use mcp_test_support::mcp::{Client, raw};

/// A malformed POST: headers, body, expected status, expected JSON-RPC error code.
type BadPost<'a> = (Vec<(&'a str, &'a str)>, String, u16, Option<i64>);

/// Creates a stdio deployment; returns its id.
async fn create(app: &TestApp) -> String {
    let (status, body) = app.create(&stdio(json!({}))).await;
    assert_eq!(status, 201, "{body}");
    body["deployment"]["id"].as_str().expect("id").to_owned()
}

#[tokio::test]
async fn protocol_errors_have_the_spec_status_codes() {
    let app = app().await;
    let id = create(&app).await;
    let sid = raw::session(&app, &id).await;
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});

    // Unknown deployment: 404 with a JSON-RPC body.
    let resp = raw::post(&app, "dp_nope", None, &raw::init_body(1)).await;
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["jsonrpc"], "2.0");
    assert!(body["error"]["message"].is_string());

    // Missing session: 400; unknown session: 404.
    assert_eq!(raw::post(&app, &id, None, &list).await.status(), 400);
    assert_eq!(
        raw::post(&app, &id, Some("nope"), &list).await.status(),
        404
    );
    // JSON answer with the session.
    let resp = raw::post(&app, &id, Some(&sid), &list).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-accel-buffering"], "no");
    let body: Value = resp.json().await.expect("json");
    assert!(body["result"]["tools"].is_array());

    // Wrong shapes and headers: (headers, body, expected status, expected JSON-RPC code).
    let bad_shape = json!({"jsonrpc": "2.0", "id": null, "method": "tools/list"}).to_string();
    let json_ct = ("content-type", "application/json");
    let accept = ("accept", raw::ACCEPT_BOTH);
    let session = ("mcp-session-id", sid.as_str());
    let cases: Vec<BadPost> = vec![
        (vec![accept, json_ct, session], bad_shape, 400, Some(-32600)),
        (
            vec![accept, json_ct, session],
            "{not json".into(),
            400,
            Some(-32700),
        ),
        (
            vec![("accept", "text/html"), json_ct, session],
            list.to_string(),
            406,
            None,
        ),
        (
            vec![accept, ("content-type", "text/plain"), session],
            list.to_string(),
            415,
            None,
        ),
        (
            vec![
                accept,
                json_ct,
                session,
                ("mcp-protocol-version", "1999-01-01"),
            ],
            list.to_string(),
            400,
            None,
        ),
        (
            vec![accept, json_ct, ("origin", "https://evil.example")],
            raw::init_body(1).to_string(),
            403,
            None,
        ),
    ];
    for (headers, body, status, rpc_code) in cases {
        let mut req = app.http.post(app.mcp_url(&id)).body(body.clone());
        for (k, v) in &headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("post");
        assert_eq!(resp.status(), status, "{headers:?} {body}");
        let answer: Value = resp.json().await.expect("JSON-RPC error body");
        assert_eq!(answer["jsonrpc"], "2.0");
        if let Some(c) = rpc_code {
            assert_eq!(answer["error"]["code"], c, "{answer}");
        }
    }
    let huge = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "x".repeat(5 * 1024 * 1024)}}});
    assert_eq!(raw::post(&app, &id, Some(&sid), &huge).await.status(), 413);

    // A second GET stream in the session is a conflict.
    let get = || {
        app.http
            .get(app.mcp_url(&id))
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &sid)
            .send()
    };
    let first = get().await.expect("get");
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["content-type"], "text/event-stream");
    assert_eq!(get().await.expect("get").status(), 409);
    drop(first);

    // DELETE ends the session: 404 afterwards.
    let resp = app
        .http
        .delete(app.mcp_url(&id))
        .header("mcp-session-id", &sid)
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.status(), 200);
    assert_eq!(raw::post(&app, &id, Some(&sid), &list).await.status(), 404);

    // Deleting the deployment ends its sessions.
    let sid = raw::session(&app, &id).await;
    assert_eq!(app.delete(&id).await.0, 200);
    assert_eq!(raw::post(&app, &id, Some(&sid), &list).await.status(), 404);
    app.teardown().await;
}

#[tokio::test]
async fn both_fronts_reach_a_stdio_server_with_real_clients() {
    let app = app().await;
    let id = create(&app).await;
    let streamable = Client::streamable(&app.mcp_url(&id), "router").await;
    assert_eq!(streamable.server_name(), "fake");
    assert_eq!(streamable.tool_names().await, vec!["echo".to_owned()]);
    assert_eq!(
        streamable
            .call("echo", json!({"text": "über"}))
            .await
            .as_deref(),
        Ok("über")
    );
    let legacy = Client::legacy(&format!("{}/mcp-server/{id}/sse", app.url), "router").await;
    assert_eq!(
        legacy.call("echo", json!({"text": "old"})).await.as_deref(),
        Ok("old")
    );
    streamable.close().await;
    legacy.close().await;
    app.teardown().await;
}

/// A legacy SSE session's stream starts with the `endpoint` event naming its message URL.
#[tokio::test]
async fn a_legacy_stream_starts_with_its_endpoint() {
    let app = app().await;
    let id = create(&app).await;
    let resp = app
        .http
        .get(format!("{}/mcp-server/{id}/sse", app.url))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-accel-buffering"], "no");
    let mut body = resp.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .expect("an event in time")
        .expect("a chunk")
        .expect("bytes");
    let text = String::from_utf8_lossy(&first);
    assert!(text.starts_with("event: endpoint\n"), "{text}");
    assert!(
        text.contains(&format!("data: /mcp-server/{id}/sse/messages?sessionId=")),
        "{text}"
    );
    drop(body);
    app.teardown().await;
}
