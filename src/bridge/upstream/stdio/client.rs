//! From the client: requests get ids of the hub's own (and progress tokens with them),
//! cancellations name those ids, and a response goes upstream only from the session the
//! server's request was routed to.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};

use super::{Hub, Pending};
use crate::bridge::protocol::jsonrpc::{self, Kind};
use crate::bridge::session::Session;

impl Hub {
    pub(super) fn on_client(&mut self, session: &Arc<Session>, mut message: Value) {
        self.sessions
            .entry(session.id.clone())
            .or_insert_with(|| session.clone());
        self.last_speaker = Some(session.id.clone());
        let Ok(kind) = jsonrpc::classify(&message) else {
            return;
        };
        let method = jsonrpc::method(&message).unwrap_or("").to_owned();
        match kind {
            Kind::Request if method == "initialize" => self.initialize(session, message),
            Kind::Request => {
                let Some(client_id) = jsonrpc::id(&message).cloned() else {
                    return;
                };
                self.next_id += 1;
                let our_id = self.next_id;
                let token = jsonrpc::progress_token(&message).cloned().map(|t| {
                    let ours = json!(format!("p{our_id}"));
                    self.progress.insert(
                        jsonrpc::key(&ours),
                        (session.id.clone(), t, jsonrpc::key(&client_id)),
                    );
                    jsonrpc::set_progress_token(&mut message, ours.clone());
                    jsonrpc::key(&ours)
                });
                match method.as_str() {
                    "resources/subscribe" | "resources/unsubscribe" => {
                        if let Some(uri) = message
                            .get("params")
                            .and_then(|p| p.get("uri"))
                            .and_then(Value::as_str)
                        {
                            let subs = self.subscriptions.entry(uri.to_owned()).or_default();
                            if method == "resources/subscribe" {
                                subs.insert(session.id.clone());
                            } else {
                                subs.remove(&session.id);
                            }
                        }
                    }
                    _ => {}
                }
                self.by_client
                    .insert((session.id.clone(), jsonrpc::key(&client_id)), our_id);
                self.pending.insert(
                    our_id,
                    Pending {
                        session: session.id.clone(),
                        client_id,
                        token,
                        at: Instant::now(),
                        asked: false,
                    },
                );
                jsonrpc::set_id(&mut message, json!(our_id));
                self.write(&message);
            }
            Kind::Notification => match method.as_str() {
                "notifications/initialized" => {
                    // The process hears it once; later sessions' copies would confuse it.
                    if !self.initialized_sent {
                        self.initialized_sent = true;
                        self.write(&message);
                    }
                }
                "notifications/cancelled" => {
                    let target = jsonrpc::cancelled_request_id(&message)
                        .map(|id| (session.id.clone(), jsonrpc::key(id)))
                        .and_then(|k| self.by_client.get(&k).copied());
                    if let Some(our_id) = target {
                        jsonrpc::set_cancelled_request_id(&mut message, json!(our_id));
                        self.write(&message);
                    }
                }
                _ => self.write(&message),
            },
            Kind::Response => {
                // The answer to a server request: only the session it was sent to may give it.
                let key = jsonrpc::id(&message).map(jsonrpc::key).unwrap_or_default();
                if self.server_requests.get(&key) == Some(&session.id) {
                    self.server_requests.remove(&key);
                    self.write(&message);
                } else {
                    tracing::debug!(session.id = %session.id, "dropped a response to no server request of this session");
                }
            }
        }
    }
}
