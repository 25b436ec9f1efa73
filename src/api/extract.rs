//! `ApiJson<T>`: the JSON body extractor of the management API. Every way a body can be wrong
//! (content type, size, syntax, shape) becomes an `ApiError` with the common error body, and
//! shape errors name the field at fault. `DeploymentId`: the `{id}` of a path; one that is not
//! even text (bad percent-encoding) names no deployment, so it is the usual 404.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON request body deserialized into `T`.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            return Err(ApiError::bad_request(
                "Content-Type must be application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge("Request body is too large".to_owned())
            } else {
                ApiError::bad_request(format!("Could not read the request body: {e}"))
            }
        })?;
        parse(&bytes).map(ApiJson)
    }
}

/// The deployment id of the path.
#[derive(Debug)]
pub struct DeploymentId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for DeploymentId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(id)| DeploymentId(id))
            .map_err(|_| ApiError::NotFound("Deployment not found".to_owned()))
    }
}

fn is_json(value: Option<&header::HeaderValue>) -> bool {
    let Some(Ok(v)) = value.map(|v| v.to_str()) else {
        return false;
    };
    let mime = v
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// Deserializes `bytes`, naming the field of a shape error.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Syntax first: serde_path_to_error reports syntax errors inside a value as data errors.
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("Malformed JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "Invalid request body: expected a JSON object",
        ));
    }
    match serde_path_to_error::deserialize(value) {
        Ok(v) => Ok(v),
        Err(err) => {
            let path = err.path().to_string();
            let inner: serde_json::Error = err.into_inner();
            let text = strip_position(&inner.to_string());
            let missing = missing_field(&text);
            let at_root = path == "." || path.is_empty();
            let field = match (at_root, &missing) {
                (true, Some(m)) => Some(m.clone()),
                (true, None) => None,
                (false, Some(m)) => Some(format!("{path}.{m}")),
                (false, None) => Some(path),
            };
            Err(match field {
                Some(f) => {
                    let message = if missing.is_some() {
                        format!("{f} is required")
                    } else {
                        format!("{f}: {text}")
                    };
                    ApiError::field(&f, message)
                }
                None => ApiError::bad_request(format!("Invalid request body: {text}")),
            })
        }
    }
}

/// serde names a missing field only in its message: "missing field `image`".
fn missing_field(text: &str) -> Option<String> {
    let rest = text.strip_prefix("missing field `")?;
    rest.split_once('`').map(|(name, _)| name.to_owned())
}

/// serde_json appends " at line L column C"; the client does not need it for shape errors.
fn strip_position(text: &str) -> String {
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Body {
        image: String,
        max_memory: Option<f64>,
    }

    fn field_of(json: &str) -> Option<String> {
        match parse::<Body>(json.as_bytes()) {
            Err(ApiError::BadRequest { field, .. }) => field,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn names_missing_and_mistyped_fields() {
        assert_eq!(field_of("{}").as_deref(), Some("image"));
        assert_eq!(
            field_of(r#"{"image":"a","maxMemory":"x"}"#).as_deref(),
            Some("maxMemory")
        );
        assert_eq!(field_of(r#"{"image":5}"#).as_deref(), Some("image"));
    }

    #[test]
    fn malformed_json_is_a_plain_400() {
        assert_eq!(field_of("{\"image\":"), None);
        assert_eq!(field_of("{} trailing"), None);
    }

    #[test]
    fn content_types() {
        let ok = header::HeaderValue::from_static("application/json; charset=utf-8");
        assert!(is_json(Some(&ok)));
        let bad = header::HeaderValue::from_static("text/plain");
        assert!(!is_json(Some(&bad)));
        assert!(!is_json(None));
    }
}
