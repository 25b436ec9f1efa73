//! Real MCP clients for the tests: rmcp over Streamable HTTP, a small legacy HTTP+SSE client
//! of our own ([`legacy`]; rmcp has none), and single POSTs by hand ([`raw`]). Both answer sampling requests and record the
//! progress and log notifications they get.
#![allow(deprecated)] // rmcp marks sampling and logging deprecated (SEP-2577); we test them.

pub mod legacy;
pub mod raw;

use std::sync::{Arc, Mutex};

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

pub use legacy::LegacyClient;

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
    pub(crate) fn log(&self, s: String) {
        self.logs.lock().expect("lock").push(s);
    }
    pub(crate) fn prog(&self, p: f64) {
        self.progress.lock().expect("lock").push(p);
    }
    pub(crate) fn sample(&self, s: String) {
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
