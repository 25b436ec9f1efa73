//! `initialize`: the process hears it once; later sessions are answered from the cached
//! result.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{Hub, Init};
use crate::bridge::protocol::jsonrpc::{self, code};
use crate::bridge::protocol::version;
use crate::bridge::session::Session;

impl Hub {
    pub(super) fn initialize(&mut self, session: &Arc<Session>, mut message: Value) {
        let declared = message
            .get("params")
            .and_then(|p| p.get("capabilities"))
            .cloned()
            .unwrap_or_else(|| json!({}));
        self.capabilities.insert(session.id.clone(), declared);
        let client_id = jsonrpc::id(&message).cloned().unwrap_or(Value::Null);
        let requested = message
            .get("params")
            .and_then(|p| p.get("protocolVersion"))
            .and_then(Value::as_str)
            .unwrap_or(version::DEFAULT)
            .to_owned();
        match &mut self.init {
            Init::Done { result, version } => {
                let answer = answer_initialize(client_id, &requested, result, version);
                deliver_init(session, &answer);
            }
            Init::InFlight { waiters, .. } => waiters.push((session.clone(), client_id, requested)),
            Init::None => {
                self.next_id += 1;
                let our_id = self.next_id;
                // The process is initialized once for every session to come: it is told the
                // client side can do everything the bridge can route, and requests for a
                // capability the chosen session did not declare are refused by the hub.
                if let Some(caps) = message
                    .get_mut("params")
                    .and_then(|p| p.get_mut("capabilities"))
                    .and_then(Value::as_object_mut)
                {
                    caps.entry("sampling").or_insert_with(|| json!({}));
                    caps.entry("elicitation").or_insert_with(|| json!({}));
                    caps.entry("roots")
                        .or_insert_with(|| json!({"listChanged": true}));
                }
                jsonrpc::set_id(&mut message, json!(our_id));
                self.init = Init::InFlight {
                    upstream_id: our_id,
                    waiters: vec![(session.clone(), client_id, requested)],
                };
                self.write(&message);
            }
        }
    }

    pub(super) fn finish_initialize(&mut self, message: Value) {
        let waiters = match std::mem::replace(&mut self.init, Init::None) {
            Init::InFlight { waiters, .. } => waiters,
            other => {
                self.init = other;
                return;
            }
        };
        match message.get("result") {
            Some(result) => {
                let version = result
                    .get("protocolVersion")
                    .and_then(Value::as_str)
                    .unwrap_or(version::DEFAULT)
                    .to_owned();
                for (session, client_id, requested) in waiters {
                    let answer = answer_initialize(client_id, &requested, result, &version);
                    deliver_init(&session, &answer);
                }
                self.init = Init::Done {
                    result: result.clone(),
                    version,
                };
            }
            None => {
                // The server refused; the next initialize tries again.
                for (session, client_id, _) in waiters {
                    let mut answer = message.clone();
                    jsonrpc::set_id(&mut answer, client_id.clone());
                    session.deliver(&answer, Some(&jsonrpc::key(&client_id)));
                }
            }
        }
    }
}

/// The cached initialize result for a later session. The process speaks one version,
/// negotiated by the first session; by the spec's negotiation rule a server answers a
/// version it does not speak with one it does, and the client decides. So any revision the
/// bridge knows (or a newer one) gets the cached result; a version that is no MCP revision
/// at all gets the spec's "Unsupported protocol version" error.
pub(super) fn answer_initialize(
    client_id: Value,
    requested: &str,
    result: &Value,
    version: &str,
) -> Value {
    if requested == version
        || version::is_supported(requested)
        || version::newer_or_equal(requested, version)
    {
        jsonrpc::result_response(client_id, result.clone())
    } else {
        jsonrpc::error_response(
            client_id,
            code::INVALID_PARAMS,
            &format!(
                "Unsupported protocol version {requested:?}: this deployment's server process \
                 speaks {version}"
            ),
            Some(json!({"supported": [version], "requested": requested})),
        )
    }
}

fn deliver_init(session: &Session, answer: &Value) {
    if let Some(v) = answer
        .get("result")
        .and_then(|r| r.get("protocolVersion"))
        .and_then(Value::as_str)
    {
        session.set_protocol_version(v);
    }
    let related = jsonrpc::id(answer).map(jsonrpc::key);
    session.deliver(answer, related.as_deref());
}
