//! Upstreams that speak HTTP inside the container: Streamable HTTP (each client session is
//! one upstream session) and legacy HTTP+SSE (each client session is one upstream SSE
//! connection). Messages are passed through unchanged; only their routing to the client's
//! streams is decided here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::jsonrpc::{self, Kind, code};
use super::session::Session;
use super::sse;

/// Largest SSE event accepted from an upstream.
const MAX_EVENT: usize = 64 * 1024 * 1024;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A client session's upstream Streamable HTTP session.
pub struct StreamableUpstream {
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
        Arc::new(StreamableUpstream {
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

    /// Forwards a client message; what comes back is delivered to the session.
    pub fn send(self: &Arc<Self>, session: Arc<Session>, message: Value) {
        let this = self.clone();
        tokio::spawn(async move { this.post(session, message).await });
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
    pub fn open_get_stream(self: &Arc<Self>, session: Arc<Session>) {
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
    pub async fn close(&self, session: &Session) {
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

/// Relays an upstream SSE response to the session, each message with `related`. Returns
/// whether the response to `related` came (or the session ended, so no more is wanted).
async fn relay_stream(
    resp: reqwest::Response,
    session: &Session,
    related: Option<&str>,
    closed: &CancellationToken,
    parser: &mut sse::Parser,
) -> bool {
    let mut body = resp.bytes_stream();
    loop {
        let chunk = tokio::select! {
            () = closed.cancelled() => return true,
            () = session.closed.cancelled() => return true,
            c = body.next() => c,
        };
        let Some(Ok(bytes)) = chunk else { return false };
        for event in parser.push(&bytes) {
            if event.data.is_empty() {
                continue; // a priming event (its id is kept by the parser)
            }
            if let Ok(message) = serde_json::from_str::<Value>(&event.data) {
                note_version(session, &message);
                let answered = related.is_some()
                    && matches!(jsonrpc::classify(&message), Ok(Kind::Response))
                    && jsonrpc::id(&message).map(jsonrpc::key).as_deref() == related;
                session.deliver(&message, related);
                if answered {
                    return true;
                }
            }
        }
    }
}

/// Records the protocol version of an initialize result passing by.
fn note_version(session: &Session, message: &Value) {
    if let Some(v) = message
        .get("result")
        .and_then(|r| r.get("protocolVersion"))
        .and_then(Value::as_str)
        && message
            .get("result")
            .is_some_and(|r| r.get("serverInfo").is_some())
    {
        session.set_protocol_version(v);
    }
}

/// Which client request a message from a single-stream upstream belongs to.
#[derive(Default)]
struct Correlator {
    in_flight: HashMap<String, Instant>,
    tokens: HashMap<String, String>,
}

impl Correlator {
    fn sent(&mut self, message: &Value) {
        if let (Ok(Kind::Request), Some(id)) = (jsonrpc::classify(message), jsonrpc::id(message)) {
            let key = jsonrpc::key(id);
            if let Some(t) = jsonrpc::progress_token(message) {
                self.tokens.insert(jsonrpc::key(t), key.clone());
            }
            self.in_flight.insert(key, Instant::now());
        }
    }

    fn related(&mut self, message: &Value) -> Option<String> {
        match jsonrpc::classify(message) {
            Ok(Kind::Response) => {
                let key = jsonrpc::id(message).map(jsonrpc::key)?;
                self.in_flight.remove(&key);
                self.tokens.retain(|_, v| *v != key);
                Some(key)
            }
            _ if jsonrpc::method(message) == Some("notifications/progress") => {
                let token = jsonrpc::notified_progress_token(message).map(jsonrpc::key)?;
                self.tokens.get(&token).cloned()
            }
            _ => self
                .in_flight
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(k, _)| k.clone()),
        }
    }
}

/// A client session's upstream legacy SSE connection.
pub struct SseUpstream {
    http: reqwest::Client,
    post_url: String,
    authorization: Option<HeaderValue>,
    correlator: Mutex<Correlator>,
    closed: CancellationToken,
}

impl SseUpstream {
    /// Connects to the SSE endpoint at `url`, waits for its `endpoint` event and relays the
    /// stream to `session` from then on.
    pub async fn connect(
        http: reqwest::Client,
        url: &str,
        authorization: Option<HeaderValue>,
        session: Arc<Session>,
        deadline: Duration,
    ) -> Result<Arc<Self>, String> {
        let mut req = http.get(url).header(ACCEPT, "text/event-stream");
        if let Some(auth) = &authorization {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("cannot open the server's SSE stream: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!(
                "the server's SSE endpoint answered HTTP {}",
                resp.status()
            ));
        }
        let mut body = resp.bytes_stream();
        let mut parser = sse::Parser::new(MAX_EVENT);
        let mut backlog = Vec::new();
        let endpoint = tokio::time::timeout(deadline, async {
            while let Some(Ok(bytes)) = body.next().await {
                let mut events = parser.push(&bytes).into_iter();
                while let Some(e) = events.next() {
                    if e.event == "endpoint" {
                        backlog.extend(events);
                        return Some(e.data);
                    }
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .ok_or("the server's SSE stream sent no `endpoint` event")?;
        let post_url = reqwest::Url::parse(url)
            .and_then(|base| base.join(endpoint.trim()))
            .map_err(|e| format!("the server's `endpoint` event is not a URL: {e}"))?
            .to_string();
        let up = Arc::new(SseUpstream {
            http,
            post_url,
            authorization,
            correlator: Mutex::default(),
            closed: CancellationToken::new(),
        });
        let reader = up.clone();
        tokio::spawn(async move {
            for e in backlog {
                reader.relay(&session, &e);
            }
            loop {
                let chunk = tokio::select! {
                    () = reader.closed.cancelled() => break,
                    () = session.closed.cancelled() => break,
                    c = body.next() => c,
                };
                let Some(Ok(bytes)) = chunk else {
                    // The server ended the stream: the session cannot go on.
                    session.close();
                    break;
                };
                for e in parser.push(&bytes) {
                    reader.relay(&session, &e);
                }
            }
        });
        Ok(up)
    }

    fn relay(&self, session: &Session, event: &sse::Event) {
        if event.event != "message" || event.data.is_empty() {
            return;
        }
        if let Ok(message) = serde_json::from_str::<Value>(&event.data) {
            note_version(session, &message);
            let related = lock(&self.correlator).related(&message);
            session.deliver(&message, related.as_deref());
        }
    }

    /// Forwards a client message to the server's message endpoint.
    pub fn send(self: &Arc<Self>, session: Arc<Session>, message: Value) {
        lock(&self.correlator).sent(&message);
        let this = self.clone();
        tokio::spawn(async move {
            let mut req = this
                .http
                .post(&this.post_url)
                .header(CONTENT_TYPE, "application/json")
                .body(message.to_string());
            if let Some(auth) = &this.authorization {
                req = req.header(AUTHORIZATION, auth.clone());
            }
            let outcome = match req.send().await {
                Ok(r) if r.status().is_success() => return,
                Ok(r) => format!(
                    "the MCP server in the container answered HTTP {}",
                    r.status()
                ),
                Err(e) => format!("the MCP server in the container did not answer: {e}"),
            };
            if let (Ok(Kind::Request), Some(id)) =
                (jsonrpc::classify(&message), jsonrpc::id(&message))
            {
                let key = jsonrpc::key(id);
                lock(&this.correlator).in_flight.remove(&key);
                let error =
                    jsonrpc::error_response(id.clone(), code::SERVER_UNAVAILABLE, &outcome, None);
                session.deliver(&error, Some(&key));
            }
        });
    }

    /// Closes the upstream connection.
    pub fn close(&self) {
        self.closed.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn single_stream_messages_are_matched_to_their_requests() {
        let mut c = Correlator::default();
        c.sent(&json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{"progressToken":"t1"}}}));
        c.sent(&json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{}}));
        let progress = json!({"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"t1","progress":1}});
        assert_eq!(c.related(&progress).as_deref(), Some("1"));
        let sampling =
            json!({"jsonrpc":"2.0","id":0,"method":"sampling/createMessage","params":{}});
        assert_eq!(
            c.related(&sampling).as_deref(),
            Some("1"),
            "oldest in flight"
        );
        let done = json!({"jsonrpc":"2.0","id":1,"result":{}});
        assert_eq!(c.related(&done).as_deref(), Some("1"));
        assert_eq!(c.related(&sampling).as_deref(), Some("2"));
    }
}
