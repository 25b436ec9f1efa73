//! Real MCP clients for the bridge tests: rmcp over Streamable HTTP, and a small legacy
//! HTTP+SSE client of our own (rmcp has none). Both answer sampling requests and record the
//! progress and log notifications they get.
#![allow(deprecated)] // rmcp marks sampling and logging deprecated (SEP-2577); we test them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, ClientRequest,
    CreateMessageRequestParams, CreateMessageResult, Implementation,
    LoggingMessageNotificationParam, ProgressNotificationParam, Request, SamplingMessage,
    SamplingMessageContentBlock, ServerResult,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RequestContext, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, ErrorData, RoleClient, ServiceExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

/// What a client saw besides answers.
#[derive(Clone, Default)]
pub struct Seen {
    /// Log message texts.
    pub logs: Arc<Mutex<Vec<String>>>,
    /// Progress values.
    pub progress: Arc<Mutex<Vec<f64>>>,
    /// Sampling prompts answered.
    pub sampled: Arc<Mutex<Vec<String>>>,
}

impl Seen {
    fn log(&self, s: String) {
        self.logs.lock().expect("lock").push(s);
    }
    fn prog(&self, p: f64) {
        self.progress.lock().expect("lock").push(p);
    }
    fn sample(&self, s: String) {
        self.sampled.lock().expect("lock").push(s);
    }
    /// Number of progress notifications.
    pub fn progress_count(&self) -> usize {
        self.progress.lock().expect("lock").len()
    }
    /// Log texts.
    pub fn log_texts(&self) -> Vec<String> {
        self.logs.lock().expect("lock").clone()
    }
}

/// The rmcp client handler: answers sampling with `tag:<PROMPT>` and records notifications.
#[derive(Clone)]
pub struct Recorder {
    /// What it saw.
    pub seen: Seen,
    /// Prefix of sampling answers (tells sessions apart in concurrency tests).
    pub tag: String,
}

impl ClientHandler for Recorder {
    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, ErrorData> {
        let prompt = match params.messages.first().and_then(|m| m.content.first()) {
            Some(SamplingMessageContentBlock::Text(text)) => text.text.clone(),
            _ => return Err(ErrorData::invalid_params("no text prompt", None)),
        };
        self.seen.sample(prompt.clone());
        Ok(CreateMessageResult::new(
            SamplingMessage::assistant_text(format!("{}:{}", self.tag, prompt.to_uppercase())),
            "test-model".to_owned(),
        ))
    }

    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.seen
            .log(params.data.as_str().unwrap_or_default().to_owned());
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.seen.prog(params.progress);
    }

    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::builder().enable_sampling().build(),
            Implementation::new("mcp-runner-e2e", "0.0.0"),
        )
    }
}

/// A connected client of either front.
pub enum Client {
    /// rmcp over Streamable HTTP.
    Streamable(RunningService<RoleClient, Recorder>, Seen),
    /// Our legacy SSE client.
    Legacy(LegacyClient),
}

impl Client {
    /// Connects rmcp to `url` (`…/mcp`).
    pub async fn streamable(url: &str, tag: &str) -> Client {
        let seen = Seen::default();
        let handler = Recorder {
            seen: seen.clone(),
            tag: tag.to_owned(),
        };
        let service = handler
            .serve(StreamableHttpClientTransport::from_uri(url.to_owned()))
            .await
            .unwrap_or_else(|e| panic!("initialize over Streamable HTTP at {url} failed: {e}"));
        Client::Streamable(service, seen)
    }

    /// Connects the legacy client to `url` (`…/sse`).
    pub async fn legacy(url: &str, tag: &str) -> Client {
        Client::Legacy(LegacyClient::connect(url, tag).await)
    }

    /// What the client saw.
    pub fn seen(&self) -> &Seen {
        match self {
            Client::Streamable(_, seen) => seen,
            Client::Legacy(c) => &c.seen,
        }
    }

    /// The server name from initialize.
    pub fn server_name(&self) -> String {
        match self {
            Client::Streamable(s, _) => s
                .peer_info()
                .and_then(|i| i.server_info.as_ref().map(|s| s.name.clone()))
                .unwrap_or_default(),
            Client::Legacy(c) => c.server_info["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        }
    }

    /// Tool names.
    pub async fn tool_names(&self) -> Vec<String> {
        match self {
            Client::Streamable(s, _) => {
                let mut names: Vec<String> = s
                    .list_all_tools()
                    .await
                    .expect("tools/list")
                    .into_iter()
                    .map(|t| t.name.to_string())
                    .collect();
                names.sort();
                names
            }
            Client::Legacy(c) => {
                let r = c
                    .request("tools/list", json!({}))
                    .await
                    .expect("tools/list");
                let mut names: Vec<String> = r["tools"]
                    .as_array()
                    .expect("tools")
                    .iter()
                    .map(|t| t["name"].as_str().unwrap_or_default().to_owned())
                    .collect();
                names.sort();
                names
            }
        }
    }

    /// Calls a tool with a progress token and returns its text, or the error text.
    pub async fn call(&self, tool: &str, arguments: Value) -> Result<String, String> {
        let Value::Object(args) = arguments else {
            panic!("arguments must be an object");
        };
        match self {
            Client::Streamable(s, _) => {
                let params = CallToolRequestParams::new(tool.to_owned()).with_arguments(args);
                let handle = s
                    .send_cancellable_request(
                        ClientRequest::CallToolRequest(Request::new(params)),
                        PeerRequestOptions::no_options(),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                match handle.await_response().await.map_err(|e| e.to_string())? {
                    ServerResult::CallToolResult(r) => {
                        let text = r
                            .content
                            .first()
                            .and_then(|c| c.as_text())
                            .map(|t| t.text.clone())
                            .unwrap_or_default();
                        if r.is_error == Some(true) {
                            Err(text)
                        } else {
                            Ok(text)
                        }
                    }
                    other => Err(format!("unexpected result {other:?}")),
                }
            }
            Client::Legacy(c) => {
                let params = json!({"name": tool, "arguments": args, "_meta": {"progressToken": c.next_token()}});
                let r = c.request("tools/call", params).await?;
                let text = r["content"][0]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if r["isError"] == true {
                    Err(text)
                } else {
                    Ok(text)
                }
            }
        }
    }

    /// Ends the session.
    pub async fn close(self) {
        match self {
            Client::Streamable(s, _) => {
                let _ = s.cancel().await;
            }
            Client::Legacy(c) => drop(c),
        }
    }
}

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>;

/// A legacy HTTP+SSE client: GET the stream, POST to the `endpoint` it announces.
pub struct LegacyClient {
    http: reqwest::Client,
    post_url: String,
    next_id: Mutex<u64>,
    waiters: Waiters,
    /// What it saw.
    pub seen: Seen,
    /// `serverInfo` from initialize.
    pub server_info: Value,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for LegacyClient {
    fn drop(&mut self) {
        // Closing the stream ends the session.
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl LegacyClient {
    /// Opens the stream and initializes.
    pub async fn connect(url: &str, tag: &str) -> LegacyClient {
        let http = reqwest::Client::new();
        let resp = http
            .get(url)
            .header("accept", "text/event-stream")
            .send()
            .await
            .expect("GET /sse");
        assert_eq!(resp.status(), 200, "GET {url}: {}", resp.status());
        let base = reqwest::Url::parse(url).expect("url");
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, String)>();
        let reader = tokio::spawn(async move {
            let mut body = resp.bytes_stream();
            let (mut buf, mut event, mut data) = (Vec::new(), String::new(), String::new());
            while let Some(Ok(chunk)) = body.next().await {
                for b in chunk {
                    if b != b'\n' {
                        buf.push(b);
                        continue;
                    }
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches('\r')
                        .to_owned();
                    buf.clear();
                    if line.is_empty() {
                        if !data.is_empty() {
                            let _ =
                                tx.send((std::mem::take(&mut event), std::mem::take(&mut data)));
                        }
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
            }
        });
        let (event, endpoint) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("endpoint event in time")
            .expect("stream open");
        assert_eq!(event, "endpoint");
        let post_url = base.join(&endpoint).expect("endpoint URL").to_string();
        let waiters: Waiters = Arc::default();
        let seen = Seen::default();
        let dispatcher = {
            let (waiters, seen, http, post_url, tag) = (
                waiters.clone(),
                seen.clone(),
                http.clone(),
                post_url.clone(),
                tag.to_owned(),
            );
            tokio::spawn(async move {
                while let Some((_, data)) = rx.recv().await {
                    let Ok(msg) = serde_json::from_str::<Value>(&data) else {
                        continue;
                    };
                    dispatch(&msg, &waiters, &seen, &http, &post_url, &tag).await;
                }
            })
        };
        let mut client = LegacyClient {
            http,
            post_url,
            next_id: Mutex::new(0),
            waiters,
            seen,
            server_info: Value::Null,
            tasks: vec![reader, dispatcher],
        };
        let init = client
            .request(
                "initialize",
                json!({
                    "protocolVersion": "2024-11-05",
                    "capabilities": {"sampling": {}},
                    "clientInfo": {"name": "legacy-e2e", "version": "0"}
                }),
            )
            .await
            .expect("initialize over legacy SSE");
        client.server_info = init["serverInfo"].clone();
        client.notify("notifications/initialized", json!({})).await;
        client
    }

    fn next_token(&self) -> String {
        let mut n = self.next_id.lock().expect("lock");
        *n += 1;
        format!("tok-{n}")
    }

    /// Sends a request and waits for its result (or the error message).
    pub async fn request(&self, method: &str, params: Value) -> Result<Value, String> {
        let id = {
            let mut n = self.next_id.lock().expect("lock");
            *n += 1;
            *n
        };
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .expect("lock")
            .insert(json!(id).to_string(), tx);
        let resp = self
            .http
            .post(&self.post_url)
            .json(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if resp.status() != 202 {
            return Err(format!("POST answered {}", resp.status()));
        }
        let answer = tokio::time::timeout(Duration::from_secs(60), rx)
            .await
            .map_err(|_| format!("no answer to {method}"))?
            .map_err(|_| "stream ended".to_owned())?;
        match answer.get("result") {
            Some(r) => Ok(r.clone()),
            None => Err(answer["error"]["message"]
                .as_str()
                .unwrap_or("error")
                .to_owned()),
        }
    }

    /// Sends a notification.
    pub async fn notify(&self, method: &str, params: Value) {
        let resp = self
            .http
            .post(&self.post_url)
            .json(&json!({"jsonrpc": "2.0", "method": method, "params": params}))
            .send()
            .await
            .expect("notify");
        assert_eq!(resp.status(), 202);
    }
}

async fn dispatch(
    msg: &Value,
    waiters: &Waiters,
    seen: &Seen,
    http: &reqwest::Client,
    post_url: &str,
    tag: &str,
) {
    match (msg.get("method").and_then(Value::as_str), msg.get("id")) {
        (Some("sampling/createMessage"), Some(id)) => {
            let prompt = msg["params"]["messages"][0]["content"]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            seen.sample(prompt.clone());
            let answer = json!({"jsonrpc": "2.0", "id": id, "result": {
                "role": "assistant",
                "content": {"type": "text", "text": format!("{tag}:{}", prompt.to_uppercase())},
                "model": "test-model"
            }});
            let _ = http.post(post_url).json(&answer).send().await;
        }
        (Some("ping"), Some(id)) => {
            let _ = http
                .post(post_url)
                .json(&json!({"jsonrpc": "2.0", "id": id, "result": {}}))
                .send()
                .await;
        }
        (Some("notifications/progress"), None) => {
            seen.prog(msg["params"]["progress"].as_f64().unwrap_or(-1.0));
        }
        (Some("notifications/message"), None) => {
            seen.log(
                msg["params"]["data"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
        (None, Some(id)) => {
            if let Some(tx) = waiters.lock().expect("lock").remove(&id.to_string()) {
                let _ = tx.send(msg.clone());
            }
        }
        _ => {}
    }
}
