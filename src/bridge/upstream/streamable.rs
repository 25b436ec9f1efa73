//! A Streamable HTTP server inside the container: each client session is one upstream
//! session. Messages are passed through unchanged; only their routing to the client's
//! streams is decided here.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::relay::{MAX_EVENT, lock, note_version, relay_stream};
use super::{Gone, Upstream};
use crate::bridge::protocol::jsonrpc::{self, Kind, code};
use crate::bridge::protocol::sse;
use crate::bridge::session::Session;

/// A client session's upstream Streamable HTTP session.
pub struct StreamableUpstream {
    /// Itself, for the tasks its methods spawn.
    me: Weak<StreamableUpstream>,
    http: reqwest::Client,
    url: String,
    authorization: Option<HeaderValue>,
    upstream_session: Mutex<Option<String>>,
    get_opened: Mutex<bool>,
    closed: CancellationToken,
}

impl StreamableUpstream {
    /// An upstream session at `url`, passing the client's `Authorization` on.
    pub fn new(
        http: reqwest::Client,
        url: String,
        authorization: Option<HeaderValue>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| StreamableUpstream {
            me: me.clone(),
            http,
            url,
            authorization,
            upstream_session: Mutex::new(None),
            get_opened: Mutex::new(false),
            closed: CancellationToken::new(),
        })
    }

    fn request(&self, method: reqwest::Method, session: &Session) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .request(method, &self.url)
            .header(ACCEPT, "application/json, text/event-stream");
        if let Some(auth) = &self.authorization {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        if let Some(id) = lock(&self.upstream_session).clone() {
            req = req.header("mcp-session-id", id);
        }
        if let Some(v) = session.protocol_version() {
            req = req.header("mcp-protocol-version", v);
        }
        req
    }

    async fn post(self: Arc<Self>, session: Arc<Session>, message: Value) {
        let request_key = match jsonrpc::classify(&message) {
            Ok(Kind::Request) => jsonrpc::id(&message).map(jsonrpc::key),
            _ => None,
        };
        let fail = |why: String| {
            if let (Some(key), Some(id)) = (&request_key, jsonrpc::id(&message)) {
                let error =
                    jsonrpc::error_response(id.clone(), code::SERVER_UNAVAILABLE, &why, None);
                session.deliver(&error, Some(key));
            }
        };
        let sent = self
            .request(reqwest::Method::POST, &session)
            .header(CONTENT_TYPE, "application/json")
            .body(message.to_string())
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                return fail(format!(
                    "the MCP server in the container did not answer: {e}"
                ));
            }
        };
        if let Some(id) = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
        {
            *lock(&self.upstream_session) = Some(id.to_owned());
        }
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND && lock(&self.upstream_session).is_some() {
            fail("the upstream session has ended".to_owned());
            session.close();
            return;
        }
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return fail(format!(
                "the MCP server in the container answered HTTP {status}: {}",
                body.chars().take(500).collect::<String>()
            ));
        }
        if jsonrpc::method(&message) == Some("notifications/initialized") {
            // Server messages unrelated to a request come on the upstream's GET stream: open
            // it now, whether or not the client ever opens its own (legacy clients cannot).
            self.open_get_stream(session.clone());
        }
        if status == reqwest::StatusCode::ACCEPTED || request_key.is_none() {
            return;
        }
        let is_sse = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if is_sse {
            self.relay_until_answered(resp, &session, request_key.as_deref(), &message)
                .await;
        } else {
            match resp.json::<Value>().await {
                Ok(answer) => {
                    note_version(&session, &answer);
                    session.deliver(&answer, request_key.as_deref());
                }
                Err(e) => fail(format!(
                    "the MCP server in the container sent invalid JSON: {e}"
                )),
            }
        }
    }

    /// Relays a request's SSE answer. A server may end the connection before the response
    /// (2025-11-25 "polling"): then the stream is resumed with a GET carrying the last event
    /// id, after the `retry` it asked for, a few times; without an id to resume from the
    /// client gets an error instead of waiting for ever.
    async fn relay_until_answered(
        &self,
        resp: reqwest::Response,
        session: &Session,
        related: Option<&str>,
        message: &Value,
    ) {
        let mut parser = sse::Parser::new(MAX_EVENT);
        if relay_stream(resp, session, related, &self.closed, &mut parser).await {
            return;
        }
        for _ in 0..5 {
            if self.closed.is_cancelled() || session.is_closed() {
                return;
            }
            let Some(last_id) = parser.last_id().map(str::to_owned) else {
                break;
            };
            let wait = Duration::from_millis(parser.retry().unwrap_or(500).min(2000));
            tokio::time::sleep(wait).await;
            let resumed = self
                .request(reqwest::Method::GET, session)
                .header(ACCEPT, "text/event-stream")
                .header("last-event-id", last_id)
                .send()
                .await;
            match resumed {
                Ok(r) if r.status().is_success() => {
                    if relay_stream(r, session, related, &self.closed, &mut parser).await {
                        return;
                    }
                }
                _ => break,
            }
        }
        if let (Some(key), Some(id)) = (related, jsonrpc::id(message)) {
            let error = jsonrpc::error_response(
                id.clone(),
                code::SERVER_UNAVAILABLE,
                "the MCP server in the container ended its stream without an answer",
                None,
            );
            session.deliver(&error, Some(key));
        }
    }

    /// Opens the upstream's GET stream once; its messages go to the client's GET stream.
    fn open_get_stream(self: &Arc<Self>, session: Arc<Session>) {
        {
            let mut opened = lock(&self.get_opened);
            if *opened {
                return;
            }
            *opened = true;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let resp = this
                .request(reqwest::Method::GET, &session)
                .header(ACCEPT, "text/event-stream")
                .send()
                .await;
            match resp {
                Ok(r) if r.status().is_success() => {
                    let mut parser = sse::Parser::new(MAX_EVENT);
                    relay_stream(r, &session, None, &this.closed, &mut parser).await;
                }
                // 405: the server offers no GET stream; nothing to relay.
                _ => {}
            }
            *lock(&this.get_opened) = false;
        });
    }

    /// Ends the upstream session (DELETE), best effort.
    async fn end(&self, session: &Session) {
        self.closed.cancel();
        if lock(&self.upstream_session).is_some() {
            let _ = self
                .request(reqwest::Method::DELETE, session)
                .timeout(Duration::from_secs(5))
                .send()
                .await;
        }
    }
}

impl Upstream for StreamableUpstream {
    fn send(&self, session: &Arc<Session>, message: Value) -> Result<(), Gone> {
        let this = self.me.upgrade().ok_or(Gone)?;
        let session = session.clone();
        tokio::spawn(async move { this.post(session, message).await });
        Ok(())
    }

    fn open_server_stream(&self, session: &Arc<Session>) {
        if let Some(this) = self.me.upgrade() {
            this.open_get_stream(session.clone());
        }
    }

    fn close(&self, session: &Arc<Session>) {
        if let Some(this) = self.me.upgrade() {
            let session = session.clone();
            tokio::spawn(async move { this.end(&session).await });
        }
    }
}
