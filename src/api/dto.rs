//! Request and response shapes of the deployments API: camelCase in, snake_case out, as the
//! NestJS service had them. Their rules are checked in `validate.rs`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_cuts_at_line_ends() {
        let text = "a\nb\nc\n";
        assert_eq!(last_lines(text, 0), "");
        assert_eq!(last_lines(text, 1), "c\n");
        assert_eq!(last_lines(text, 2), "b\nc\n");
        assert_eq!(last_lines(text, 9), text);
        assert_eq!(last_lines("x\npartial", 1), "partial");
        assert_eq!(last_lines("", 3), "");
    }

    #[test]
    fn tail_must_be_a_number_in_range() {
        let q = |t: &str| LogsQuery {
            tail: Some(t.to_owned()),
        };
        assert_eq!(q("10").lines().ok(), Some(Some(10)));
        assert_eq!(LogsQuery { tail: None }.lines().ok(), Some(None));
        for bad in ["-1", "x", "100001", "1.5", ""] {
            match q(bad).lines() {
                Err(ApiError::BadRequest { field, .. }) => {
                    assert_eq!(field.as_deref(), Some("tail"), "{bad}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
