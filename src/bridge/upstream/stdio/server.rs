//! From the server: results and errors go back to the session and request they answer,
//! progress to its request's stream, notifications to the sessions they concern, and the
//! server's own requests to the one session that most likely caused them.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{Hub, Init, Pending};
use crate::bridge::protocol::jsonrpc::{self, Kind, code};
use crate::bridge::session::{Outgoing, Session};

impl Hub {
    pub(super) fn on_server(&mut self, line: &[u8]) {
        if let Some(raw) = jsonrpc::RawResult::parse(line)
            && self.server_result(&raw)
        {
            return;
        }
        let Ok(message) = serde_json::from_slice::<Value>(line) else {
            tracing::warn!(deployment.id = %self.deployment_id, "the server wrote a line that is not JSON; ignored");
            return;
        };
        let Ok(kind) = jsonrpc::classify(&message) else {
            tracing::warn!(deployment.id = %self.deployment_id, "the server wrote a malformed JSON-RPC message; ignored");
            return;
        };
        match kind {
            Kind::Response => self.server_response(message),
            Kind::Notification => self.server_notification(message),
            Kind::Request => {
                let Some(id) = jsonrpc::id(&message).cloned() else {
                    return;
                };
                let needs = required_capability(jsonrpc::method(&message).unwrap_or(""));
                match self.pick_session() {
                    Some((session, _))
                        if needs.is_some_and(|cap| {
                            self.capabilities
                                .get(&session.id)
                                .is_none_or(|c| c.get(cap).is_none())
                        }) =>
                    {
                        let cap = needs.unwrap_or_default();
                        let error = jsonrpc::error_response(
                            id,
                            code::METHOD_NOT_FOUND,
                            &format!(
                                "the client session this request belongs to did not declare the `{cap}` capability"
                            ),
                            None,
                        );
                        self.write(&error);
                    }
                    Some((session, related)) => {
                        self.server_requests
                            .insert(jsonrpc::key(&id), session.id.clone());
                        session.deliver(&message, related.as_deref());
                    }
                    None if jsonrpc::method(&message) == Some("ping") => {
                        self.write(&jsonrpc::result_response(id, json!({})));
                    }
                    None => {
                        let error = jsonrpc::error_response(
                            id,
                            code::INTERNAL_ERROR,
                            "no client session is connected to answer this request",
                            None,
                        );
                        self.write(&error);
                    }
                }
            }
        }
    }

    /// A success response routed from its text (most of what a server writes); false when it
    /// needs the `Value` path (the answer to `initialize`).
    fn server_result(&mut self, raw: &jsonrpc::RawResult<'_>) -> bool {
        if let Init::InFlight { upstream_id, .. } = &self.init
            && *upstream_id == raw.id
        {
            return false;
        }
        let Some(p) = self.take_pending(raw.id) else {
            return true;
        };
        let related = jsonrpc::key(&p.client_id);
        if let Some(s) = self.sessions.get(&p.session) {
            let text = raw.with_id(&p.client_id);
            s.deliver_text(
                text.into(),
                Outgoing::Response { error: false },
                Some(&related),
            );
        }
        true
    }

    /// Forgets request `our_id` (answered): its cancellation and progress mappings go too.
    fn take_pending(&mut self, our_id: u64) -> Option<Pending> {
        let p = self.pending.remove(&our_id)?;
        self.by_client
            .remove(&(p.session.clone(), jsonrpc::key(&p.client_id)));
        if let Some(t) = &p.token {
            self.progress.remove(t);
        }
        Some(p)
    }

    fn server_response(&mut self, mut message: Value) {
        let Some(our_id) = jsonrpc::id(&message).and_then(Value::as_u64) else {
            return;
        };
        if let Init::InFlight { upstream_id, .. } = &self.init
            && *upstream_id == our_id
        {
            self.finish_initialize(message);
            return;
        }
        let Some(p) = self.take_pending(our_id) else {
            return;
        };
        let related = jsonrpc::key(&p.client_id);
        jsonrpc::set_id(&mut message, p.client_id);
        if let Some(s) = self.sessions.get(&p.session) {
            s.deliver(&message, Some(&related));
        }
    }

    fn server_notification(&mut self, mut message: Value) {
        let method = jsonrpc::method(&message).unwrap_or("").to_owned();
        match method.as_str() {
            "notifications/progress" => {
                let Some(token) = jsonrpc::notified_progress_token(&message).map(jsonrpc::key)
                else {
                    return;
                };
                let Some((session, client_token, related)) = self.progress.get(&token).cloned()
                else {
                    return;
                };
                jsonrpc::set_notified_progress_token(&mut message, client_token);
                if let Some(s) = self.sessions.get(&session) {
                    s.deliver(&message, Some(&related));
                }
            }
            "notifications/cancelled" => {
                // The server gives up a request it sent to a client.
                let key = jsonrpc::cancelled_request_id(&message).map(jsonrpc::key);
                if let Some(session) = key.and_then(|k| self.server_requests.remove(&k))
                    && let Some(s) = self.sessions.get(&session)
                {
                    s.deliver(&message, None);
                }
            }
            "notifications/resources/updated" => {
                let uri = message
                    .get("params")
                    .and_then(|p| p.get("uri"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let subscribers = self.subscriptions.get(uri).cloned().unwrap_or_default();
                for id in subscribers {
                    if let Some(s) = self.sessions.get(&id) {
                        s.deliver(&message, None);
                    }
                }
            }
            _ => {
                // Belongs to no request: every session, on its oldest request's stream if one
                // is open (so a log line made during a call arrives before the call's result).
                for s in self.sessions.values() {
                    let related = self.oldest_of(&s.id).map(|p| jsonrpc::key(&p.client_id));
                    s.deliver(&message, related.as_deref());
                }
            }
        }
    }

    fn oldest_of(&self, session: &str) -> Option<&Pending> {
        self.pending
            .values()
            .filter(|p| p.session == session)
            .min_by_key(|p| p.at)
    }

    /// The session a server request goes to, with the client request it relates to: the
    /// oldest request in flight, preferring requests that have not already caused a server
    /// request (a tool that asked the client once is usually waiting for that answer, so a
    /// new server request more likely comes from another call).
    fn pick_session(&mut self) -> Option<(Arc<Session>, Option<String>)> {
        let fresh = self
            .pending
            .iter()
            .filter(|(_, p)| !p.asked)
            .min_by_key(|(_, p)| p.at)
            .map(|(id, _)| *id);
        let oldest = fresh.or_else(|| {
            self.pending
                .iter()
                .min_by_key(|(_, p)| p.at)
                .map(|(id, _)| *id)
        });
        let chosen = match oldest.and_then(|id| self.pending.get_mut(&id)) {
            Some(p) => {
                p.asked = true;
                Some((p.session.clone(), Some(jsonrpc::key(&p.client_id))))
            }
            None => self.last_speaker.clone().map(|s| (s, None)),
        }?;
        let session = self.sessions.get(&chosen.0)?.clone();
        Some((session, chosen.1))
    }
}

/// The client capability a server request needs.
fn required_capability(method: &str) -> Option<&'static str> {
    match method {
        "sampling/createMessage" => Some("sampling"),
        "elicitation/create" => Some("elicitation"),
        "roots/list" => Some("roots"),
        _ => None,
    }
}
