//! A legacy HTTP+SSE server inside the container: each client session is one upstream SSE
//! connection, whose messages are matched to the client requests they belong to.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::relay::{MAX_EVENT, lock, note_version};
use super::{Gone, Upstream};
use crate::bridge::protocol::jsonrpc::{self, Kind, code};
use crate::bridge::protocol::sse;
use crate::bridge::session::Session;

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
    /// Itself, for the tasks its methods spawn.
    me: Weak<SseUpstream>,
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
        let up = Arc::new_cyclic(|me| SseUpstream {
            me: me.clone(),
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
    fn post(self: Arc<Self>, session: Arc<Session>, message: Value) {
        lock(&self.correlator).sent(&message);
        let this = self;
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
}

impl Upstream for SseUpstream {
    fn send(&self, session: &Arc<Session>, message: Value) -> Result<(), Gone> {
        let this = self.me.upgrade().ok_or(Gone)?;
        this.post(session.clone(), message);
        Ok(())
    }

    fn close(&self, _session: &Arc<Session>) {
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
