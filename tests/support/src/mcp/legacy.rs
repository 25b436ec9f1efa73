//! The legacy HTTP+SSE client: GET the stream, POST to the `endpoint` it announces; it
//! answers sampling and pings and records progress and log notifications.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::Seen;

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

    pub(crate) fn next_token(&self) -> String {
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
