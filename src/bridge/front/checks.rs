//! The checks every MCP request passes: `Origin` (DNS-rebinding protection), `Accept`,
//! `Content-Type`, the body as one JSON-RPC message, `MCP-Protocol-Version`, and the session
//! it names.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use serde_json::Value;

use super::reject::{Reject, rpc_error};
use crate::bridge::protocol::jsonrpc::{self, Kind, code};
use crate::bridge::protocol::version;
use crate::bridge::{Bridge, Link};

/// DNS-rebinding protection: a present `Origin` must be a loopback origin or one of the
/// configured ones.
pub(super) fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<(), Reject> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("").trim_end_matches('/');
    let listed = allowed
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/') == origin);
    let loopback = url::Url::parse(origin).ok().is_some_and(|u| {
        matches!(
            u.host(),
            Some(url::Host::Domain("localhost"))
                | Some(url::Host::Ipv4(std::net::Ipv4Addr::LOCALHOST))
                | Some(url::Host::Ipv6(std::net::Ipv6Addr::LOCALHOST))
        )
    });
    if listed || loopback {
        Ok(())
    } else {
        Err(rpc_error(
            StatusCode::FORBIDDEN,
            code::INVALID_REQUEST,
            "Origin not allowed",
        ))
    }
}

pub(super) fn accepts(headers: &HeaderMap, what: &str) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.split(';').next().unwrap_or("").trim())
        .any(|v| v == what || v == "*/*")
}

fn is_json_body(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|v| v == "application/json")
}

/// Reads and checks one JSON-RPC message from a body.
pub(super) fn read_message(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Value, Kind), Reject> {
    if !is_json_body(headers) {
        return Err(rpc_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code::INVALID_REQUEST,
            "Unsupported Media Type: Content-Type must be application/json",
        ));
    }
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            rpc_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                code::INVALID_REQUEST,
                "Request body too large",
            )
        } else {
            rpc_error(
                StatusCode::BAD_REQUEST,
                code::PARSE_ERROR,
                "Cannot read the request body",
            )
        }
    })?;
    let message: Value = serde_json::from_slice(&bytes).map_err(|e| {
        rpc_error(
            StatusCode::BAD_REQUEST,
            code::PARSE_ERROR,
            &format!("Parse error: {e}"),
        )
    })?;
    if message.is_array() {
        return Err(rpc_error(
            StatusCode::BAD_REQUEST,
            code::INVALID_REQUEST,
            "JSON-RPC batches are not supported; send one message per request",
        ));
    }
    let kind = jsonrpc::classify(&message).map_err(|why| {
        rpc_error(
            StatusCode::BAD_REQUEST,
            code::INVALID_REQUEST,
            &format!("Invalid Request: {why}"),
        )
    })?;
    Ok((message, kind))
}

/// The live session named by the request: 400 when it names none, 404 when it is unknown,
/// ended, or of another deployment.
pub(super) fn find_session(
    bridge: &Bridge,
    deployment_id: &str,
    session_id: Option<String>,
    what: &str,
) -> Result<Link, Reject> {
    let Some(session_id) = session_id else {
        return Err(rpc_error(
            StatusCode::BAD_REQUEST,
            code::INVALID_REQUEST,
            &format!("Bad Request: the {what} is required"),
        ));
    };
    bridge.session(deployment_id, &session_id).ok_or_else(|| {
        rpc_error(
            StatusCode::NOT_FOUND,
            code::SESSION_NOT_FOUND,
            "Session not found",
        )
    })
}

/// The Streamable HTTP session of a request (protocol header checked, activity recorded).
pub(super) fn streamable_session(
    bridge: &Bridge,
    id: &str,
    headers: &HeaderMap,
) -> Result<Link, Reject> {
    check_protocol_header(headers)?;
    let link = find_session(bridge, id, session_header(headers), "Mcp-Session-Id header")?;
    bridge.touch(id);
    Ok(link)
}

fn session_header(headers: &HeaderMap) -> Option<String> {
    headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `MCP-Protocol-Version`: absent means 2025-03-26; an unknown one is a 400.
fn check_protocol_header(headers: &HeaderMap) -> Result<(), Reject> {
    match headers.get("mcp-protocol-version").map(|v| v.to_str()) {
        None => Ok(()),
        Some(Ok(v)) if version::is_supported(v) => Ok(()),
        Some(v) => Err(rpc_error(
            StatusCode::BAD_REQUEST,
            code::INVALID_REQUEST,
            &format!(
                "Unsupported MCP-Protocol-Version {:?}; supported: {}",
                v.unwrap_or("?"),
                version::KNOWN.join(", ")
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn origins_loopback_listed_or_refused() {
        let allowed = vec!["https://app.example.com".to_owned()];
        assert!(check_origin(&headers(&[]), &allowed).is_ok());
        assert!(check_origin(&headers(&[("origin", "http://localhost:6274")]), &allowed).is_ok());
        assert!(check_origin(&headers(&[("origin", "http://127.0.0.1")]), &allowed).is_ok());
        assert!(check_origin(&headers(&[("origin", "https://app.example.com")]), &allowed).is_ok());
        assert!(check_origin(&headers(&[("origin", "https://evil.example")]), &allowed).is_err());
        assert!(check_origin(&headers(&[("origin", "null")]), &allowed).is_err());
    }

    #[test]
    fn accept_lists_are_parsed() {
        let h = headers(&[("accept", "application/json, text/event-stream;q=0.9")]);
        assert!(accepts(&h, "application/json") && accepts(&h, "text/event-stream"));
        assert!(!accepts(
            &headers(&[("accept", "text/html")]),
            "application/json"
        ));
    }

    #[test]
    fn protocol_header_rule() {
        assert!(check_protocol_header(&headers(&[])).is_ok());
        assert!(check_protocol_header(&headers(&[("mcp-protocol-version", "2025-06-18")])).is_ok());
        assert!(
            check_protocol_header(&headers(&[("mcp-protocol-version", "1999-01-01")])).is_err()
        );
    }
}
