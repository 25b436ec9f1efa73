//! The tiny MCP server a stdio sandbox of the fake runs when asked (`initialize`, `ping`,
//! `tools/list`, `tools/call echo`), so that the bridge can be driven without Docker.

use serde_json::{Value, json};

/// What the tiny MCP server of a stdio sandbox answers to `line`.
pub(super) fn answer_mcp(line: &str) -> Option<Value> {
    let message: Value = serde_json::from_str(line).ok()?;
    let id = message.get("id")?.clone();
    let params = message.get("params").cloned().unwrap_or(Value::Null);
    let result = match message.get("method").and_then(Value::as_str) {
        // The revision asked for when the fake speaks it, else its newest, as a server should.
        Some("initialize") => json!({
            "protocolVersion": params["protocolVersion"]
                .as_str()
                .filter(|v| matches!(*v, "2024-11-05" | "2025-03-26" | "2025-06-18"))
                .unwrap_or("2025-11-25"),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "fake", "version": "1"}
        }),
        Some("ping") => json!({}),
        Some("tools/list") => json!({"tools": [{
            "name": "echo",
            "description": "Echoes its text",
            "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}}
        }]}),
        Some("tools/call") if params["name"] == "echo" => json!({
            "content": [{"type": "text", "text": params["arguments"]["text"].clone()}]
        }),
        Some(_) => {
            return Some(json!({"jsonrpc": "2.0", "id": id,
                "error": {"code": -32601, "message": "Method not found"}}));
        }
        // A response to a request of ours: nothing to answer.
        None => return None,
    };
    Some(json!({"jsonrpc": "2.0", "id": id, "result": result}))
}
