//! `ApiError`: every HTTP outcome of the management API other than success, and the one error
//! body `{statusCode, error, message}` (plus `field` for validation errors).
//!
//! 5xx details are logged once here and never sent to the client.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// The error body of every management endpoint.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// The HTTP status code, repeated.
    #[schema(example = 404)]
    pub status_code: u16,
    /// The status code's reason phrase.
    #[schema(example = "Not Found")]
    pub error: String,
    /// What went wrong, for a person.
    #[schema(example = "Deployment not found")]
    pub message: String,
    /// The request field at fault, for validation errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "maxMemory")]
    pub field: Option<String>,
}

/// The outcomes of a failed API call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed or breaks a rule; `field` names the culprit.
    #[error("{message}")]
    BadRequest {
        /// The field at fault, when there is one.
        field: Option<String>,
        /// Explanation.
        message: String,
    },
    /// 401: no key or a wrong key.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the client is blocked after repeated failures.
    #[error("{message}")]
    Forbidden {
        /// Explanation.
        message: String,
        /// Seconds until the block ends.
        retry_after: Option<u64>,
    },
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 409.
    #[error("{0}")]
    Conflict(String),
    /// 413: the body is larger than allowed.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 502: an upstream (Docker, a registry) answered with an error.
    #[error("{0}")]
    BadGateway(String),
    /// 503: a dependency is unreachable or a resource pool is exhausted.
    #[error("{0}")]
    Unavailable(String),
    /// 500: a bug or an unexpected failure; the detail is logged, not sent.
    #[error("internal error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// A 400 that names the field at fault.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            field: Some(field.to_owned()),
            message: message.into(),
        }
    }

    /// A 400 without a field.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            field: None,
            message: message.into(),
        }
    }

    /// The HTTP status of this outcome.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Builds the error body for a status and message.
pub fn error_response(status: StatusCode, message: String, field: Option<String>) -> Response {
    let body = ErrorBody {
        status_code: status.as_u16(),
        error: status.canonical_reason().unwrap_or("Error").to_owned(),
        message,
        field,
    };
    (status, Json(body)).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match self {
            ApiError::Internal(err) => {
                tracing::error!(error = format!("{err:#}"), "internal error");
                error_response(status, "Internal server error".into(), None)
            }
            ApiError::BadGateway(ref m) | ApiError::Unavailable(ref m) => {
                tracing::warn!(status = status.as_u16(), "{m}");
                error_response(status, m.clone(), None)
            }
            ApiError::BadRequest { field, message } => error_response(status, message, field),
            ApiError::Forbidden {
                message,
                retry_after,
            } => {
                let mut resp = error_response(status, message, None);
                if let Some(secs) = retry_after
                    && let Ok(v) = HeaderValue::from_str(&secs.to_string())
                {
                    resp.headers_mut().insert(header::RETRY_AFTER, v);
                }
                resp
            }
            other => error_response(status, other.to_string(), None),
        }
    }
}
