//! Upstreams: where a session's messages go. [`Upstream`] is what the fronts and the session
//! registry use; [`connect`] is the one place that tells a deployment's transports apart.
//!
//! - `stdio/`: one stdio process shared by many sessions (or one per session, isolated)
//! - `streamable.rs`: a Streamable HTTP server; each client session is an upstream session
//! - `legacy_sse.rs`: a legacy HTTP+SSE server; each client session is one SSE connection
//! - `relay.rs`: what both HTTP upstreams do with an SSE response

mod legacy_sse;
mod relay;
pub mod stdio;
mod streamable;

use std::sync::Arc;

use reqwest::header::HeaderValue;
use serde_json::Value;

use super::session::Session;
use super::{Bridge, BridgeError};
use crate::domain::{Deployment, Transport};
use legacy_sse::SseUpstream;
use streamable::StreamableUpstream;

/// The upstream stopped between looking the session up and sending to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the MCP server process is not running")]
pub struct Gone;

/// Where a session's messages go: a server process, or a server reached over HTTP.
pub trait Upstream: Send + Sync {
    /// Forwards a message of `session`'s client. What comes back is delivered to the
    /// session.
    fn send(&self, session: &Arc<Session>, message: Value) -> Result<(), Gone>;

    /// Refuses a new client message while the server falls behind (a stdio server that does
    /// not read its input); checked before anything is recorded for the message, so that a
    /// refused one leaves no trace in the session.
    fn check_backlog(&self) -> Result<(), BridgeError> {
        Ok(())
    }

    /// The client opened the session's stream for messages that belong to no request.
    fn open_server_stream(&self, _session: &Arc<Session>) {}

    /// The session ended: what the upstream holds for it goes.
    fn close(&self, session: &Arc<Session>);
}

/// Connects `session` to deployment `d`'s server: the process or server of a shared
/// deployment (started when needed), or a sandbox of its own for an isolated one. Returns
/// the upstream and the session's own sandbox, if it has one.
pub(super) async fn connect(
    bridge: &Bridge,
    d: &Deployment,
    session: &Arc<Session>,
    authorization: Option<HeaderValue>,
) -> Result<(Arc<dyn Upstream>, Option<String>), BridgeError> {
    match &d.transport {
        Transport::Stdio => {
            let (hub, own) = bridge.stdio_process(d, session).await?;
            hub.join(session.clone());
            Ok((hub, own))
        }
        Transport::StreamableHttp { endpoint } => {
            let (url, own) = bridge.http_server(d, session, endpoint).await?;
            let up = StreamableUpstream::new(bridge.http.clone(), url, authorization);
            Ok((up, own))
        }
        Transport::Sse { endpoint } => {
            let (url, own) = bridge.http_server(d, session, endpoint).await?;
            let up = SseUpstream::connect(
                bridge.http.clone(),
                &url,
                authorization,
                session.clone(),
                bridge.config.ready_timeout,
            )
            .await;
            match up {
                Ok(up) => Ok((up, own)),
                Err(e) => {
                    bridge.remove_own_sandbox(own);
                    Err(BridgeError::Upstream(e))
                }
            }
        }
    }
}
