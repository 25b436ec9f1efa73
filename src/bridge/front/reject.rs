//! `Reject`: an MCP route's HTTP error with a JSON-RPC error body, and how each bridge
//! failure is answered (status, code, message) and logged.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::bridge::BridgeError;
use crate::bridge::protocol::jsonrpc::{self, code};
use crate::deployments::DeployError;
use crate::runtime::FailureKind;

/// What went wrong in an MCP request, for the log (see [`finish`]).
#[derive(Debug, Clone)]
pub(super) struct Failure {
    pub(super) error_level: bool,
    pub(super) what: &'static str,
    pub(super) error: String,
}

/// An HTTP error with a JSON-RPC error body (no id).
pub struct Reject {
    status: StatusCode,
    code: i64,
    message: String,
    failure: Option<Failure>,
}

impl Reject {
    /// The same answer, logged as a warning (or an error) `what` with `error`.
    pub(super) fn logged(mut self, error_level: bool, what: &'static str, error: String) -> Reject {
        self.failure = Some(Failure {
            error_level,
            what,
            error,
        });
        self
    }
}

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(jsonrpc::error_body(self.code, &self.message)),
        )
            .into_response();
        if let Some(f) = self.failure {
            resp.extensions_mut().insert(f);
        }
        resp
    }
}

pub(super) fn rpc_error(status: StatusCode, code: i64, message: &str) -> Reject {
    Reject {
        status,
        code,
        message: message.to_owned(),
        failure: None,
    }
}

impl From<BridgeError> for Reject {
    fn from(e: BridgeError) -> Self {
        match &e {
            BridgeError::UnknownDeployment => rpc_error(
                StatusCode::NOT_FOUND,
                code::INVALID_REQUEST,
                "Deployment not found",
            ),
            BridgeError::Upstream(m) => {
                rpc_error(StatusCode::BAD_GATEWAY, code::SERVER_UNAVAILABLE, m).logged(
                    false,
                    "upstream unavailable",
                    m.clone(),
                )
            }
            BridgeError::Backlog(n) => rpc_error(
                StatusCode::SERVICE_UNAVAILABLE,
                code::SERVER_UNAVAILABLE,
                &format!(
                    "The MCP server is not reading its input: {:.1} MiB of earlier messages are still waiting for it; try again later",
                    *n as f64 / f64::from(1 << 20)
                ),
            )
            .logged(
                false,
                "an MCP server is not reading its input",
                format!("{n} bytes wait unread on its stdin"),
            ),
            BridgeError::Deploy(DeployError::NotFound) => rpc_error(
                StatusCode::NOT_FOUND,
                code::INVALID_REQUEST,
                "Deployment not found",
            ),
            BridgeError::Deploy(DeployError::Runtime(e)) => {
                let status = if e.kind() == FailureKind::Unreachable {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::BAD_GATEWAY
                };
                rpc_error(status, code::SERVER_UNAVAILABLE, &e.to_string()).logged(
                    false,
                    "the sandbox backend failed for an MCP request",
                    e.to_string(),
                )
            }
            BridgeError::Deploy(e) => rpc_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                code::INTERNAL_ERROR,
                "Internal error",
            )
            .logged(true, "bridge failure", e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stdin_backlog_is_a_503_that_says_why() {
        let reject = Reject::from(BridgeError::Backlog(9 << 20));
        assert_eq!(reject.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reject.code, code::SERVER_UNAVAILABLE);
        assert!(
            reject.message.contains("not reading its input") && reject.message.contains("9.0 MiB"),
            "{}",
            reject.message
        );
    }
}
