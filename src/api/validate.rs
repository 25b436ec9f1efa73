//! The rules of a create request: every one names the field it is about, and the bounds the
//! OpenAPI document states are the ones applied here.

use std::collections::BTreeMap;

use super::dto::CreateDeploymentRequest;
use crate::config::MIN_MEMORY_MB;
use crate::deployments::{Limits, NewDeployment};
use crate::domain::Transport;
use crate::error::ApiError;

/// Largest idle time: one year.
pub const MAX_IDLE_SECONDS: u64 = 365 * 24 * 3600;
/// Most `args` entries.
pub const MAX_ARGS: usize = 256;
/// Largest size of all `args` together, bytes.
pub const MAX_ARGS_BYTES: usize = 64 * 1024;
/// Most `env` entries.
pub const MAX_ENV: usize = 256;
/// Largest size of all `env` names and values together, bytes.
pub const MAX_ENV_BYTES: usize = 256 * 1024;
/// Largest serialized `metadata`, bytes.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Longest image reference.
pub const MAX_IMAGE_LEN: usize = 512;
/// Longest image name without its tag or digest (Docker's limit).
pub const MAX_IMAGE_NAME_LEN: usize = 255;
/// Longest transport endpoint URL.
pub const MAX_ENDPOINT_LEN: usize = 2048;

impl CreateDeploymentRequest {
    /// Checks every rule; the first violation is a 400 naming its field.
    pub fn validate(self, limits: &Limits) -> Result<NewDeployment, ApiError> {
        let image = validate_image(&self.image)?;
        let args = self.args.map(validate_args).transpose()?;
        let env = validate_env(self.env.unwrap_or_default())?;
        let max_memory = match self.max_memory {
            Some(mb) => Some(whole(
                "maxMemory",
                mb,
                MIN_MEMORY_MB,
                limits.max_memory_mb,
                "MB",
            )?),
            None => limits.default_memory_mb,
        };
        let max_cpus = match self.max_cpus {
            Some(c) => Some(validate_cpus(c, limits.max_cpus)?),
            None => limits.default_cpus.map(|c| c.min(limits.max_cpus)),
        };
        let idle = |name: &str, v: Option<f64>| {
            v.map(|s| {
                whole(
                    name,
                    s,
                    limits.min_idle_seconds,
                    MAX_IDLE_SECONDS,
                    "seconds",
                )
            })
            .transpose()
        };
        let pause_after_seconds = idle("pauseAfterSeconds", self.pause_after_seconds)?;
        let delete_after_seconds = idle("deleteAfterSeconds", self.delete_after_seconds)?;
        let metadata = validate_metadata(self.metadata)?;
        validate_transport(&self.transport)?;
        Ok(NewDeployment {
            image,
            args,
            env,
            max_memory,
            max_cpus,
            pause_after_seconds,
            delete_after_seconds,
            auto_start: self.auto_start.unwrap_or(true),
            metadata,
            transport: self.transport,
            session_mode: self.session_mode.unwrap_or_default(),
        })
    }
}

fn validate_image(image: &str) -> Result<String, ApiError> {
    let image = image.trim();
    if image.is_empty() {
        return Err(ApiError::field("image", "image must not be empty"));
    }
    if image.len() > MAX_IMAGE_LEN {
        return Err(ApiError::field(
            "image",
            format!("image must be at most {MAX_IMAGE_LEN} characters"),
        ));
    }
    let ok = image
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-/:@+".contains(&b));
    if !ok || image.starts_with(['-', '.', ':', '/', '@']) {
        return Err(ApiError::field(
            "image",
            "image is not a valid image reference (e.g. `registry/name:tag`)",
        ));
    }
    // Docker's own limit on the name (registry and path, without tag or digest).
    let (name, _tag) = crate::domain::split_tag(image.split('@').next().unwrap_or(image));
    if name.len() > MAX_IMAGE_NAME_LEN {
        return Err(ApiError::field(
            "image",
            format!(
                "the image name (before its tag or digest) must be at most {MAX_IMAGE_NAME_LEN} characters"
            ),
        ));
    }
    Ok(image.to_owned())
}

fn validate_args(args: Vec<String>) -> Result<Vec<String>, ApiError> {
    if args.len() > MAX_ARGS {
        return Err(ApiError::field(
            "args",
            format!("args may have at most {MAX_ARGS} entries"),
        ));
    }
    if let Some(i) = args.iter().position(|a| a.contains('\0')) {
        return Err(ApiError::field(
            &format!("args[{i}]"),
            format!("args[{i}] must not contain NUL characters"),
        ));
    }
    if args.iter().map(String::len).sum::<usize>() > MAX_ARGS_BYTES {
        return Err(ApiError::field(
            "args",
            format!("args may total at most {MAX_ARGS_BYTES} bytes"),
        ));
    }
    Ok(args)
}

fn validate_env(env: BTreeMap<String, String>) -> Result<BTreeMap<String, String>, ApiError> {
    if env.len() > MAX_ENV {
        return Err(ApiError::field(
            "env",
            format!("env may have at most {MAX_ENV} entries"),
        ));
    }
    for (k, v) in &env {
        let valid_name = !k.is_empty()
            && k.len() <= 256
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid_name {
            return Err(ApiError::field(
                &format!("env.{k}"),
                format!(
                    "env name `{k}` must be 1-256 characters of A-Z, a-z, 0-9 and _, not starting with a digit"
                ),
            ));
        }
        if v.contains('\0') {
            return Err(ApiError::field(
                &format!("env.{k}"),
                format!("env.{k} must not contain NUL characters"),
            ));
        }
    }
    if env
        .iter()
        .map(|(k, v)| k.len() + v.len() + 1)
        .sum::<usize>()
        > MAX_ENV_BYTES
    {
        return Err(ApiError::field(
            "env",
            format!("env may total at most {MAX_ENV_BYTES} bytes"),
        ));
    }
    Ok(env)
}

/// A whole number within `[min, max]`.
fn whole(field: &str, v: f64, min: u64, max: u64, unit: &str) -> Result<u64, ApiError> {
    if !v.is_finite() || v.fract() != 0.0 {
        return Err(ApiError::field(
            field,
            format!("{field} must be a whole number of {unit}"),
        ));
    }
    if v < min as f64 {
        return Err(ApiError::field(
            field,
            format!("{field} must be at least {min} ({unit})"),
        ));
    }
    if v > max as f64 {
        return Err(ApiError::field(
            field,
            format!("{field} must be at most {max} ({unit})"),
        ));
    }
    Ok(v as u64)
}

fn validate_cpus(c: f64, max: f64) -> Result<f64, ApiError> {
    if !c.is_finite() || c < 0.1 {
        return Err(ApiError::field("maxCpus", "maxCpus must be at least 0.1"));
    }
    if c > max {
        return Err(ApiError::field(
            "maxCpus",
            format!("maxCpus must be at most {max} (the host's CPU count)"),
        ));
    }
    Ok(c)
}

fn validate_metadata(metadata: Option<serde_json::Value>) -> Result<serde_json::Value, ApiError> {
    let metadata = match metadata {
        None | Some(serde_json::Value::Null) => return Ok(serde_json::json!({})),
        Some(m @ serde_json::Value::Object(_)) => m,
        Some(_) => {
            return Err(ApiError::field(
                "metadata",
                "metadata must be a JSON object",
            ));
        }
    };
    let size = serde_json::to_vec(&metadata)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_METADATA_BYTES {
        return Err(ApiError::field(
            "metadata",
            format!("metadata may be at most {MAX_METADATA_BYTES} bytes of JSON"),
        ));
    }
    Ok(metadata)
}

fn validate_transport(t: &Transport) -> Result<(), ApiError> {
    let endpoint = match t {
        Transport::Stdio => return Ok(()),
        Transport::Sse { endpoint } | Transport::StreamableHttp { endpoint } => endpoint,
    };
    let bad =
        |why: &str| ApiError::field("transport.endpoint", format!("transport.endpoint {why}"));
    if endpoint.len() > MAX_ENDPOINT_LEN {
        return Err(bad(&format!(
            "must be at most {MAX_ENDPOINT_LEN} characters"
        )));
    }
    let url = url::Url::parse(endpoint).map_err(|e| bad(&format!("is not a valid URL: {e}")))?;
    if url.scheme() != "http" {
        // The bridge reaches the container over its private network by address; TLS to a
        // certificate for another name could not be verified there.
        return Err(bad(
            "must be an http:// URL (the bridge reaches the container directly)",
        ));
    }
    if url.host().is_none() {
        return Err(bad(
            "must have a host (it is replaced by the container's address)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The limits the OpenAPI document states are the ones `validate` applies.
    #[test]
    fn the_documented_limits_are_the_enforced_ones() {
        use utoipa::PartialSchema;
        let schema = serde_json::to_value(CreateDeploymentRequest::schema()).expect("JSON");
        let props = &schema["properties"];
        assert_eq!(props["image"]["maxLength"], MAX_IMAGE_LEN);
        assert_eq!(props["args"]["maxItems"], MAX_ARGS);
        assert_eq!(props["pauseAfterSeconds"]["maximum"], MAX_IDLE_SECONDS);
        assert_eq!(props["deleteAfterSeconds"]["maximum"], MAX_IDLE_SECONDS);
        assert_eq!(props["maxMemory"]["minimum"], MIN_MEMORY_MB);
        // The image pattern, read by hand: a first character of `[A-Za-z0-9_+]`, then any of
        // `[A-Za-z0-9._/:@+-]`. It accepts exactly what `validate_image` accepts.
        assert_eq!(
            props["image"]["pattern"],
            r"^[A-Za-z0-9_+][A-Za-z0-9._/:@+-]*$"
        );
        let pattern_accepts = |image: &str| {
            let mut bytes = image.bytes();
            bytes
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric() || b"_+".contains(&b))
                && bytes.all(|b| b.is_ascii_alphanumeric() || b"._/:@+-".contains(&b))
        };
        for image in [
            "busybox",
            "mcp/everything:latest",
            "registry.example.com:5000/a/b@sha256:00ff",
            "_x",
            "+x",
            "",
            "-x",
            ".x",
            ":x",
            "/x",
            "@x",
            "a b",
            "a$b",
            "ü",
        ] {
            assert_eq!(
                pattern_accepts(image),
                validate_image(image).is_ok(),
                "{image:?}"
            );
        }
    }

    #[test]
    fn an_image_name_longer_than_dockers_limit_is_refused() {
        let name = "a".repeat(MAX_IMAGE_NAME_LEN);
        assert!(validate_image(&name).is_ok());
        assert!(validate_image(&format!("{name}:{}", "t".repeat(128))).is_ok());
        assert!(validate_image(&format!("registry:5000/{}", "b".repeat(241))).is_ok());
        for image in [
            "a".repeat(MAX_IMAGE_NAME_LEN + 1),
            "0".repeat(512),
            format!("registry:5000/{}:v1", "b".repeat(242)),
        ] {
            match validate_image(&image) {
                Err(ApiError::BadRequest { field, message }) => {
                    assert_eq!(field.as_deref(), Some("image"));
                    assert!(message.contains("255"), "{message}");
                }
                other => panic!("{image}: {other:?}"),
            }
        }
    }

    fn limits() -> Limits {
        Limits {
            min_idle_seconds: 30,
            max_memory_mb: 4096,
            max_cpus: 2.0,
            default_memory_mb: Some(512),
            default_cpus: Some(1.0),
        }
    }

    fn field_of(body: serde_json::Value) -> String {
        let req: CreateDeploymentRequest = serde_json::from_value(body).expect("shape is fine");
        match req.validate(&limits()) {
            Err(ApiError::BadRequest { field, .. }) => field.unwrap_or_default(),
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    fn base() -> serde_json::Value {
        serde_json::json!({"image": "img:1", "transport": {"type": "stdio"}})
    }

    fn with(key: &str, value: serde_json::Value) -> serde_json::Value {
        let mut b = base();
        b[key] = value;
        b
    }

    #[test]
    fn defaults_apply() {
        let req: CreateDeploymentRequest = serde_json::from_value(base()).expect("shape");
        let d = req.validate(&limits()).expect("valid");
        assert!(d.auto_start);
        assert_eq!(d.max_memory, Some(512));
        assert_eq!(d.max_cpus, Some(1.0));
        assert_eq!(d.metadata, serde_json::json!({}));
    }

    #[test]
    fn every_rule_names_its_field() {
        assert_eq!(field_of(with("image", "".into())), "image");
        assert_eq!(field_of(with("image", "bad image".into())), "image");
        assert_eq!(field_of(with("maxMemory", 0.into())), "maxMemory");
        assert_eq!(field_of(with("maxMemory", 5000.into())), "maxMemory");
        assert_eq!(field_of(with("maxMemory", 64.5.into())), "maxMemory");
        assert_eq!(field_of(with("maxCpus", 0.05.into())), "maxCpus");
        assert_eq!(field_of(with("maxCpus", 64.into())), "maxCpus");
        assert_eq!(
            field_of(with("pauseAfterSeconds", 29.into())),
            "pauseAfterSeconds"
        );
        assert_eq!(
            field_of(with("deleteAfterSeconds", 10.into())),
            "deleteAfterSeconds"
        );
        assert_eq!(
            field_of(with("deleteAfterSeconds", 1e12.into())),
            "deleteAfterSeconds"
        );
        assert_eq!(
            field_of(with("metadata", serde_json::json!([1]))),
            "metadata"
        );
        assert_eq!(
            field_of(with(
                "metadata",
                serde_json::json!({"x": "y".repeat(20_000)})
            )),
            "metadata"
        );
        assert_eq!(
            field_of(with("env", serde_json::json!({"1BAD": "x"}))),
            "env.1BAD"
        );
        assert_eq!(
            field_of(with("args", serde_json::json!(vec!["a"; 300]))),
            "args"
        );
        assert_eq!(
            field_of(with(
                "transport",
                serde_json::json!({"type": "sse", "endpoint": "ftp://x/"})
            )),
            "transport.endpoint"
        );
        assert_eq!(
            field_of(with(
                "transport",
                serde_json::json!({"type": "sse", "endpoint": "not a url"})
            )),
            "transport.endpoint"
        );
    }

    #[test]
    fn accepts_the_documented_example() {
        let example = serde_json::json!({
            "image": "mcp/everything:latest", "args": ["--verbose"], "env": {"LOG_LEVEL": "info"},
            "maxMemory": 256, "maxCpus": 0.5, "pauseAfterSeconds": 300,
            "deleteAfterSeconds": 86400, "autoStart": false, "metadata": {"owner": "team-a"},
            "transport": {"type": "streamable_http", "endpoint": "http://localhost:8000/mcp"}
        });
        let req: CreateDeploymentRequest = serde_json::from_value(example).expect("shape");
        let d = req.validate(&limits()).expect("valid");
        assert!(!d.auto_start);
        assert_eq!(d.max_memory, Some(256));
        assert_eq!(d.pause_after_seconds, Some(300));
    }
}
