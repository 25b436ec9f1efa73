//! Request and response shapes of the deployments API (camelCase in, snake_case out, as the
//! NestJS service had them) and the validation of a create request.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::config::MIN_MEMORY_MB;
use crate::deployments::NewDeployment;
use crate::domain::{Deployment, SessionMode, Transport, iso8601};
use crate::error::ApiError;

/// Body of `POST /api/deployment`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({
    "image": "mcp/everything:latest",
    "args": ["--verbose"],
    "env": {"LOG_LEVEL": "info"},
    "maxMemory": 256,
    "maxCpus": 0.5,
    "pauseAfterSeconds": 300,
    "deleteAfterSeconds": 86400,
    "autoStart": true,
    "metadata": {"owner": "team-a"},
    "transport": {"type": "stdio"},
    "sessionMode": "shared"
}))]
pub struct CreateDeploymentRequest {
    /// Docker image; used when present locally, pulled otherwise. Its name (before the tag or
    /// digest) is at most 255 characters, Docker's limit.
    #[schema(
        example = "mcp/everything:latest",
        min_length = 1,
        max_length = 512,
        pattern = r"^[A-Za-z0-9_+][A-Za-z0-9._/:@+-]*$"
    )]
    pub image: String,
    /// The container's command (Docker `Cmd`); the image's default when absent. At most 256
    /// entries and 64 KiB in all, no NUL characters.
    #[serde(default)]
    #[schema(max_items = 256)]
    pub args: Option<Vec<String>>,
    /// Environment variables of the container: at most 256, names of 1-256 characters of
    /// A-Z, a-z, 0-9 and `_` not starting with a digit, 256 KiB in all, no NUL characters.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    /// Memory limit in MB (whole number, at least 32: the gVisor sandbox itself lives in
    /// it); the server's default when absent.
    #[serde(default)]
    #[schema(minimum = 32, example = 256)]
    pub max_memory: Option<f64>,
    /// CPU limit in cores (at least 0.1, at most the host's CPU count); the server's default
    /// when absent.
    #[serde(default)]
    #[schema(minimum = 0.1, example = 0.5)]
    pub max_cpus: Option<f64>,
    /// Seconds without MCP traffic after which the container is stopped (whole, at least 30,
    /// at most a year).
    #[serde(default)]
    #[schema(minimum = 30, maximum = 31536000, example = 300)]
    pub pause_after_seconds: Option<f64>,
    /// Seconds without MCP traffic after which the deployment is deleted (whole, at least 30,
    /// at most a year).
    #[serde(default)]
    #[schema(minimum = 30, maximum = 31536000, example = 86400)]
    pub delete_after_seconds: Option<f64>,
    /// Start the container now (default true); otherwise it is created stopped.
    #[serde(default)]
    pub auto_start: Option<bool>,
    /// Any JSON object, stored and returned as given (at most 16 KiB); null or absent is
    /// `{}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// How the MCP server in the image speaks.
    pub transport: Transport,
    /// `shared` (default): every MCP session talks to the one container (a stdio server's
    /// requests are multiplexed, see the README for how server requests are routed).
    /// `isolated`: every MCP session gets its own container, started on `initialize` and
    /// removed when the session ends, for servers that keep per-client state.
    #[serde(default)]
    pub session_mode: Option<SessionMode>,
}

/// A deployment as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeploymentData {
    /// `dp_` + 24 random characters; the secret part of the MCP URLs.
    #[schema(example = "dp_3k9x0q2m7c1v8b4n6z5l0p2r")]
    pub id: String,
    /// `running` or `stopped`.
    #[schema(example = "running")]
    pub status: DeploymentStatus,
    /// Docker container id.
    pub container_id: Option<String>,
    /// Docker network id.
    pub network_id: Option<String>,
    /// Image reference.
    pub image: String,
    /// Host user the container runs as.
    #[schema(example = "mcp-3k9x0q2m7c1v8b4n6z5l0p2r")]
    pub username: String,
    /// Host UID.
    #[schema(example = 3000042)]
    pub uid: u32,
    /// Host GID.
    #[schema(example = 3000042)]
    pub gid: u32,
    /// Memory limit in MB; null when unlimited.
    pub max_memory: Option<u64>,
    /// CPU limit in cores; null when unlimited.
    pub max_cpus: Option<f64>,
    /// The caller's metadata.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    /// The last 64 KiB of the container's stderr.
    pub stderr: String,
    /// Upstream transport.
    pub transport: Transport,
    /// `shared` or `isolated`.
    pub session_mode: SessionMode,
    /// Idle seconds before stop.
    pub pause_after_seconds: Option<u64>,
    /// Idle seconds before deletion.
    pub delete_after_seconds: Option<u64>,
    /// When the container will be stopped if idle (ISO-8601).
    #[schema(example = "2026-11-21T10:05:00.000Z")]
    pub pause_at: Option<String>,
    /// When the deployment will be deleted if idle (ISO-8601).
    pub delete_at: Option<String>,
    /// Creation time (ISO-8601).
    #[schema(example = "2026-11-21T10:00:00.000Z")]
    pub created_at: String,
    /// Last MCP interaction (ISO-8601).
    pub last_interaction_at: String,
}

/// What the API shows as a deployment's status.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeploymentStatus {
    /// The container runs.
    Running,
    /// The container is stopped; the next MCP request starts it.
    Stopped,
}

impl From<Deployment> for DeploymentData {
    fn from(d: Deployment) -> Self {
        DeploymentData {
            status: match d.status {
                crate::domain::Status::Running => DeploymentStatus::Running,
                _ => DeploymentStatus::Stopped,
            },
            id: d.id,
            container_id: d.container_id,
            network_id: d.network_id,
            image: d.image,
            username: d.username,
            uid: d.uid,
            gid: d.gid,
            max_memory: d.max_memory,
            max_cpus: d.max_cpus,
            metadata: d.metadata,
            stderr: d.stderr,
            transport: d.transport,
            session_mode: d.session_mode,
            pause_after_seconds: d.pause_after_seconds,
            delete_after_seconds: d.delete_after_seconds,
            pause_at: d.pause_at.map(iso8601),
            delete_at: d.delete_at.map(iso8601),
            created_at: iso8601(d.created_at),
            last_interaction_at: iso8601(d.last_interaction_at),
        }
    }
}

/// Answer of `POST /api/deployment`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreateDeploymentResponse {
    /// The new deployment.
    pub deployment: DeploymentData,
    /// Always "Deployment created successfully".
    #[schema(example = "Deployment created successfully")]
    pub message: String,
}

/// Answer of `GET /api/deployment/{id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct GetDeploymentResponse {
    /// The deployment.
    pub deployment: DeploymentData,
}

/// Answer of `DELETE /api/deployment/{id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeleteDeploymentResponse {
    /// Always "Deployment deleted successfully".
    #[schema(example = "Deployment deleted successfully")]
    pub message: String,
}

/// Query of `GET /api/deployment/{id}/logs`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Only the last `tail` lines (0 to 100000); all that is kept (the last 64 KiB) when
    /// absent.
    #[param(value_type = Option<u32>, minimum = 0, maximum = 100000, example = 100)]
    pub tail: Option<String>,
}

/// Most lines `tail` may ask for.
pub const MAX_TAIL_LINES: usize = 100_000;

impl LogsQuery {
    /// The number of lines asked for; 400 naming `tail` when it is not a number in range.
    pub fn lines(&self) -> Result<Option<usize>, ApiError> {
        let Some(raw) = &self.tail else {
            return Ok(None);
        };
        match raw.trim().parse::<usize>() {
            Ok(n) if n <= MAX_TAIL_LINES => Ok(Some(n)),
            _ => Err(ApiError::field(
                "tail",
                format!("tail must be an integer from 0 to {MAX_TAIL_LINES}"),
            )),
        }
    }
}

/// The last lines a deployment's process wrote to stderr, and the state of that process.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeploymentLogsResponse {
    /// Deployment id.
    #[schema(example = "dp_3k9x0q2m7c1v8b4n6z5l0p2r")]
    pub id: String,
    /// Deployment status.
    #[schema(example = "running")]
    pub status: String,
    /// The stderr tail (at most the last 64 KiB, cut to `tail` lines when asked).
    #[schema(example = "server listening\n")]
    pub stderr: String,
    /// Whether the process runs now.
    pub running: bool,
    /// Whether the process has run and exited (stopped for idleness, crashed or ended).
    pub exited: bool,
    /// Exit code of the last run, once it exited.
    #[schema(example = 1)]
    pub exit_code: Option<i64>,
    /// Whether the kernel's OOM killer ended the last run.
    pub oom_killed: bool,
}

/// The last `n` lines of `text` (a final newline does not start an empty line).
pub fn last_lines(text: &str, n: usize) -> &str {
    if n == 0 {
        return "";
    }
    let body = text.strip_suffix('\n').unwrap_or(text);
    match body.rmatch_indices('\n').nth(n - 1) {
        Some((i, _)) => &text[i + 1..],
        None => text,
    }
}

/// Bounds a create request must respect.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Smallest idle time, seconds.
    pub min_idle_seconds: u64,
    /// Largest memory limit, MB.
    pub max_memory_mb: u64,
    /// Largest CPU limit, cores.
    pub max_cpus: f64,
    /// Memory limit when none is asked (None: unlimited).
    pub default_memory_mb: Option<u64>,
    /// CPU limit when none is asked (None: unlimited).
    pub default_cpus: Option<f64>,
}

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
    let (name, _tag) = crate::runtime::split_tag(image.split('@').next().unwrap_or(image));
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

    #[test]
    fn last_lines_cuts_at_line_ends() {
        let text = "a\nb\nc\n";
        assert_eq!(super::last_lines(text, 0), "");
        assert_eq!(super::last_lines(text, 1), "c\n");
        assert_eq!(super::last_lines(text, 2), "b\nc\n");
        assert_eq!(super::last_lines(text, 9), text);
        assert_eq!(super::last_lines("x\npartial", 1), "partial");
        assert_eq!(super::last_lines("", 3), "");
    }

    #[test]
    fn tail_must_be_a_number_in_range() {
        let q = |t: &str| super::LogsQuery {
            tail: Some(t.to_owned()),
        };
        assert_eq!(q("10").lines().ok(), Some(Some(10)));
        assert_eq!(super::LogsQuery { tail: None }.lines().ok(), Some(None));
        for bad in ["-1", "x", "100001", "1.5", ""] {
            match q(bad).lines() {
                Err(super::ApiError::BadRequest { field, .. }) => {
                    assert_eq!(field.as_deref(), Some("tail"), "{bad}")
                }
                other => panic!("{bad}: {other:?}"),
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
