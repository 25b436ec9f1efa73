//! Legacy HTTP+SSE at `/mcp-server/{id}/sse`: GET opens the session and its one stream,
//! whose `endpoint` event names `/mcp-server/{id}/sse/messages?sessionId=…` for the client's
//! POSTs.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::body::sse_stream;
use super::checks::{find_session, read_message};
use super::reject::Reject;
use super::{bridge, forward};
use crate::bridge::session::Front;
use crate::bridge::{Bridge, BridgeSlot, Link};

/// Ends the legacy session when its stream's body is dropped (the client went away).
struct EndOnDrop {
    bridge: Arc<Bridge>,
    link: Link,
}

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.bridge.end_session(&self.link);
    }
}

pub(super) async fn get(
    State(slot): State<BridgeSlot>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Reject> {
    let bridge = bridge(&slot, &headers)?;
    let auth = headers.get(header::AUTHORIZATION).cloned();
    let link = bridge.open(&id, Front::Legacy, auth).await?;
    let endpoint = format!(
        "/mcp-server/{id}/sse/messages?sessionId={}",
        link.session.id
    );
    let rx = link.session.open_legacy(endpoint);
    let guard = EndOnDrop {
        bridge: bridge.clone(),
        link,
    };
    Ok(sse_stream(Vec::new(), rx, guard))
}

/// Query of the legacy message endpoint.
#[derive(Debug, Deserialize)]
pub(super) struct SessionQuery {
    #[serde(rename = "sessionId")]
    session_id: Option<String>,
}

pub(super) async fn post(
    State(slot): State<BridgeSlot>,
    Path(id): Path<String>,
    Query(query): Query<SessionQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Reject> {
    let bridge = bridge(&slot, &headers)?;
    let link = find_session(&bridge, &id, query.session_id, "sessionId query parameter")?;
    let (message, kind) = read_message(&headers, body)?;
    bridge.touch(&id);
    link.check_backlog()?;
    forward(&link, message, kind)?;
    Ok((StatusCode::ACCEPTED, "Accepted").into_response())
}
