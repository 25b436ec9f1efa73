//! The two MCP clients the benchmarks measure and the load driver they share.
//!
//! Both clients send the same JSON-RPC bodies, split their input into lines with the same
//! code, parse every answer once into a `serde_json::Value` and are driven by the same
//! `drive` loop; they differ only in the transport:
//!
//! - `Direct` writes newline-delimited JSON-RPC to the container's stdin over its Docker
//!   attach stream and reads stdout (what mcp-runner's stdio hub itself does);
//! - `Http` POSTs each message to mcp-runner's Streamable HTTP front and reads the answer
//!   from the SSE stream of the response (or a JSON body), over keep-alive HTTP/1.1
//!   connections (hyper's client connection, one request in flight per connection).

mod direct;
mod drive;
mod http;

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use serde_json::{Value, json};

pub use direct::Direct;
pub use drive::{Sample, Work, drive};
pub use http::{Floor, Http};

/// The protocol revision the clients ask for (the newest the bridge knows).
pub const PROTOCOL_VERSION: &str = "2025-11-25";
/// A call that takes longer than this fails the benchmark.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// An answer and when it arrived.
pub struct Reply {
    /// The JSON-RPC response.
    pub message: Value,
    /// When the response was in the client's hands (parsed).
    pub answered: Instant,
    /// When the exchange was over (for HTTP: the end of the SSE stream, after which the
    /// connection can carry the next request).
    pub finished: Instant,
}

/// A way to send one JSON-RPC request and get its response.
pub trait Transport: Send + Sync + 'static {
    /// Sends `body` (a request with id `id`) and waits for the response to `id`.
    fn call(&self, id: u64, body: Vec<u8>) -> impl Future<Output = anyhow::Result<Reply>> + Send;
}

// ---------------------------------------------------------------------------------------
// JSON-RPC bodies, shared by both clients.

/// `initialize`.
pub fn initialize_body(id: u64) -> Vec<u8> {
    to_vec(&json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "initialize",
        "params": {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "mcp-runner-bench", "version": "0.0.0"}
        }
    }))
}

/// `notifications/initialized`.
pub fn initialized_body() -> Vec<u8> {
    to_vec(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
}

/// `tools/list`.
pub fn tools_list_body(id: u64) -> Vec<u8> {
    to_vec(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"}))
}

/// The tool names of a successful `tools/list` response to `id`.
pub fn tool_names(v: &Value, id: u64) -> anyhow::Result<Vec<String>> {
    if v.get("id").and_then(Value::as_u64) != Some(id) {
        bail!("answer to the wrong request (wanted id {id}): {}", short(v));
    }
    if let Some(e) = v.get("error") {
        bail!("JSON-RPC error: {e}");
    }
    let tools = v
        .pointer("/result/tools")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("no tools in {}", short(v)))?;
    Ok(tools
        .iter()
        .filter_map(|t| t.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect())
}

/// `tools/call` of `name` with `arguments`.
pub fn tool_call_body(id: u64, name: &str, arguments: Value) -> Vec<u8> {
    to_vec(&json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments}
    }))
}

fn to_vec(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a JSON value serializes")
}

/// Whether `v` is the response to request `id`.
fn is_response_to(v: &Value, id: u64) -> bool {
    v.get("method").is_none()
        && v.get("id").and_then(Value::as_u64) == Some(id)
        && (v.get("result").is_some() || v.get("error").is_some())
}

/// The first text of a successful `tools/call` response to `id`.
pub fn tool_text(v: &Value, id: u64) -> anyhow::Result<&str> {
    if v.get("id").and_then(Value::as_u64) != Some(id) {
        bail!("answer to the wrong request (wanted id {id}): {}", short(v));
    }
    if let Some(e) = v.get("error") {
        bail!("JSON-RPC error: {e}");
    }
    let result = v.get("result").ok_or_else(|| anyhow!("no result"))?;
    if result.get("isError").and_then(Value::as_bool) == Some(true) {
        bail!("the tool failed: {}", short(result));
    }
    result
        .get("content")
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("text"))
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("no text content in {}", short(result)))
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 300 {
        format!("{}…", &s[..s.floor_char_boundary(300)])
    } else {
        s
    }
}

// ---------------------------------------------------------------------------------------
// Line splitting, shared by both clients (stdout lines; SSE field lines).

/// Splits a byte stream into lines (without `\n` and a trailing `\r`), whatever the chunking.
#[derive(Default)]
pub struct Lines {
    buf: Vec<u8>,
}

impl Lines {
    /// Feeds a chunk; calls `on_line` for every line it completes.
    pub fn push(
        &mut self,
        chunk: &[u8],
        mut on_line: impl FnMut(&[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        if self.buf.is_empty() {
            // Fast path: lines straight out of the chunk; keep only the unfinished tail.
            let mut rest = chunk;
            while let Some(i) = find_newline(rest) {
                on_line(trim_cr(&rest[..i]))?;
                rest = &rest[i + 1..];
            }
            self.buf.extend_from_slice(rest);
            return Ok(());
        }
        let mut scan = self.buf.len();
        self.buf.extend_from_slice(chunk);
        let mut from = 0;
        while let Some(i) = find_newline(&self.buf[scan..]) {
            let end = scan + i;
            on_line(trim_cr(&self.buf[from..end]))?;
            from = end + 1;
            scan = from;
        }
        self.buf.drain(..from);
        Ok(())
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The first `\n` in `s`, eight bytes at a time.
fn find_newline(s: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const NL: u64 = LO * b'\n' as u64;
    let words = s.chunks_exact(8);
    let tail = s.len() - words.remainder().len();
    for (k, w) in words.enumerate() {
        let v = u64::from_le_bytes(w.try_into().expect("8 bytes")) ^ NL;
        if v.wrapping_sub(LO) & !v & HI != 0 {
            let at = k * 8;
            return s[at..].iter().position(|b| *b == b'\n').map(|p| p + at);
        }
    }
    s[tail..].iter().position(|b| *b == b'\n').map(|p| p + tail)
}
