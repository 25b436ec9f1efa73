//! MCP by hand over Streamable HTTP: single POSTs with the headers a client sends, for tests
//! that look at status codes, headers and bodies rather than at a client library's view.

use serde_json::{Value, json};

use crate::api::Api;

/// The `Accept` header of a Streamable HTTP client.
pub const ACCEPT_BOTH: &str = "application/json, text/event-stream";

/// POSTs `body` to deployment `id`'s Streamable HTTP endpoint as a client would, in session
/// `session` when given.
pub async fn post(api: &Api, id: &str, session: Option<&str>, body: &Value) -> reqwest::Response {
    let mut req = api
        .http
        .post(api.mcp_url(id))
        .header("accept", ACCEPT_BOTH)
        .header("content-type", "application/json")
        .json(body);
    if let Some(s) = session {
        req = req.header("mcp-session-id", s);
    }
    req.send().await.expect("post")
}

/// An `initialize` request with id `id` asking for 2025-11-25.
pub fn init_body(id: i64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"}}})
}

/// Initializes a session by hand (checking the session id and the answer) and sends
/// `notifications/initialized`; returns the session id.
pub async fn session(api: &Api, id: &str) -> String {
    let resp = post(api, id, None, &init_body(1)).await;
    assert_eq!(resp.status(), 200);
    let sid = resp
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .expect("session id")
        .to_owned();
    assert!(sid.len() >= 32 && sid.bytes().all(|b| (0x21..=0x7e).contains(&b)));
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["result"]["protocolVersion"], "2025-11-25");
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(post(api, id, Some(&sid), &note).await.status(), 202);
    sid
}
