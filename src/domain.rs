//! The domain types shared by the API, the store, the runtime and the reaper.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Unix time in milliseconds.
pub type Millis = i64;

/// Now, in Unix milliseconds.
pub fn now_millis() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

/// Formats Unix milliseconds as ISO-8601 with milliseconds and `Z`, like JavaScript's
/// `Date.toISOString()` (what clients of the NestJS service parse).
pub fn iso8601(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Life-cycle state of a deployment row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Resources are being made; not visible through the API.
    Creating,
    /// The container runs.
    Running,
    /// The container exists but is stopped (paused for idleness, or exited).
    Stopped,
    /// Teardown started and will be finished, if need be by the reaper.
    Deleting,
}

impl Status {
    /// The database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Running => "running",
            Status::Stopped => "stopped",
            Status::Deleting => "deleting",
        }
    }

    /// Parses the database spelling.
    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "creating" => Status::Creating,
            "running" => Status::Running,
            "stopped" => Status::Stopped,
            "deleting" => Status::Deleting,
            _ => return None,
        })
    }
}

/// How the MCP server inside the container speaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Transport {
    /// JSON-RPC lines on stdin/stdout (reached through the Docker attach stream).
    Stdio,
    /// Legacy HTTP+SSE inside the container.
    Sse {
        /// URL of the SSE endpoint; its host is replaced by the container's address.
        #[schema(example = "http://localhost:8000/sse")]
        endpoint: String,
    },
    /// Streamable HTTP inside the container.
    StreamableHttp {
        /// URL of the MCP endpoint; its host is replaced by the container's address.
        #[schema(example = "http://localhost:8000/mcp")]
        endpoint: String,
    },
}

impl Transport {
    /// Whether the server is reached over the container's stdin/stdout.
    pub fn is_stdio(&self) -> bool {
        matches!(self, Transport::Stdio)
    }

    /// The transport's name as the API spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Transport::Stdio => "stdio",
            Transport::Sse { .. } => "sse",
            Transport::StreamableHttp { .. } => "streamable_http",
        }
    }
}

/// How the MCP sessions of a deployment share its server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionMode {
    /// One container serves every session (stdio: one process, requests multiplexed).
    #[default]
    Shared,
    /// Every session gets its own container (same sandbox, network and user), made on
    /// `initialize` and removed when the session ends or expires.
    Isolated,
}

impl SessionMode {
    /// The database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionMode::Shared => "shared",
            SessionMode::Isolated => "isolated",
        }
    }

    /// Parses the database spelling.
    pub fn parse(s: &str) -> Option<SessionMode> {
        match s {
            "shared" => Some(SessionMode::Shared),
            "isolated" => Some(SessionMode::Isolated),
            _ => None,
        }
    }
}

/// A deployment as the store holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Deployment {
    /// `dp_` + 24 random lowercase letters and digits; the capability in the MCP URLs.
    pub id: String,
    /// Life-cycle state.
    pub status: Status,
    /// The backend's id of the sandbox (Docker: the container id), once made.
    pub container_id: Option<String>,
    /// The backend's id of the deployment's network (Docker: the network id), once made.
    pub network_id: Option<String>,
    /// Image reference.
    pub image: String,
    /// Host user name.
    pub username: String,
    /// Host UID.
    pub uid: u32,
    /// Host GID.
    pub gid: u32,
    /// Memory limit in MB (`None`: unlimited).
    pub max_memory: Option<u64>,
    /// CPU limit in cores (`None`: unlimited).
    pub max_cpus: Option<f64>,
    /// Container command.
    pub args: Option<Vec<String>>,
    /// Container environment.
    pub env: BTreeMap<String, String>,
    /// Caller's metadata, stored as given.
    pub metadata: serde_json::Value,
    /// Upstream transport.
    pub transport: Transport,
    /// How sessions share the server.
    pub session_mode: SessionMode,
    /// Last 64 KiB of the container's stderr.
    pub stderr: String,
    /// Idle time before the container is stopped.
    pub pause_after_seconds: Option<u64>,
    /// Idle time before the deployment is deleted.
    pub delete_after_seconds: Option<u64>,
    /// When the container will be stopped for idleness.
    pub pause_at: Option<Millis>,
    /// When the deployment will be deleted for idleness.
    pub delete_at: Option<Millis>,
    /// Creation time.
    pub created_at: Millis,
    /// Last MCP interaction (or creation).
    pub last_interaction_at: Millis,
}

impl Deployment {
    /// Recomputes the idle deadlines from `last_interaction_at`.
    pub fn deadlines(&self) -> (Option<Millis>, Option<Millis>) {
        let at = |secs: Option<u64>| {
            secs.map(|s| {
                self.last_interaction_at.saturating_add(
                    i64::try_from(s)
                        .unwrap_or(i64::MAX / 2)
                        .saturating_mul(1000),
                )
            })
        };
        (at(self.pause_after_seconds), at(self.delete_after_seconds))
    }
}

/// A random free item among `count` (item `i` is `nth(i)`), or `None` when all are `taken`.
/// Random probes first, so that concurrent allocations rarely collide; a crowded set is then
/// scanned from a random point.
pub fn pick_free<T>(count: u64, nth: impl Fn(u64) -> T, taken: impl Fn(&T) -> bool) -> Option<T> {
    use rand::Rng;
    if count == 0 {
        return None;
    }
    let mut rng = rand::rng();
    for _ in 0..64 {
        let candidate = nth(rng.random_range(0..count));
        if !taken(&candidate) {
            return Some(candidate);
        }
    }
    let start = rng.random_range(0..count);
    (start..count).chain(0..start).map(nth).find(|c| !taken(c))
}

/// Splits `repo[:tag][@digest]` into what the pull endpoint wants: a digest stays in the
/// image part; a missing tag means `latest`.
pub fn split_tag(image: &str) -> (&str, &str) {
    if image.contains('@') {
        return (image, "");
    }
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(i) => (&image[..last_slash + i], &image[last_slash + i + 1..]),
        None => (image, "latest"),
    }
}

/// Upper bound of the stderr kept per deployment.
pub const STDERR_LIMIT: usize = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_matches_javascript() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn status_round_trips() {
        for s in [
            Status::Creating,
            Status::Running,
            Status::Stopped,
            Status::Deleting,
        ] {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert_eq!(Status::parse("paused"), None);
    }

    #[test]
    fn tags_and_registries_with_ports() {
        assert_eq!(split_tag("alpine"), ("alpine", "latest"));
        assert_eq!(split_tag("alpine:3.20"), ("alpine", "3.20"));
        assert_eq!(
            split_tag("registry:5000/team/img"),
            ("registry:5000/team/img", "latest")
        );
        assert_eq!(
            split_tag("registry:5000/team/img:v1"),
            ("registry:5000/team/img", "v1")
        );
        assert_eq!(split_tag("img@sha256:abc"), ("img@sha256:abc", ""));
    }

    #[test]
    fn transport_json_shape() {
        let t: Transport = serde_json::from_str(
            r#"{"type":"streamable_http","endpoint":"http://localhost:8000/mcp"}"#,
        )
        .expect("parses");
        assert!(matches!(t, Transport::StreamableHttp { .. }));
        let s = serde_json::to_value(Transport::Stdio).expect("serializes");
        assert_eq!(s, serde_json::json!({"type":"stdio"}));
    }
}
