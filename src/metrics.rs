//! Prometheus metrics: one process-wide registry, encoded by the `prometheus-client` crate
//! (OpenMetrics text, which Prometheus scrapes natively) at `GET /metrics`.
//!
//! Counters and histograms are updated where things happen; the gauges that describe state
//! (deployments by status, open sessions) are read fresh at each scrape. HTTP requests are
//! counted here too: by [`count_http`] on the management API and by the MCP routes' own
//! layer, which calls [`count_request`].

use std::sync::LazyLock;
use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of the HTTP request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route template, e.g. `/api/deployment/{id}`; `unmatched` for unknown paths.
    pub route: String,
    /// HTTP method (`other` for unusual ones).
    pub method: &'static str,
    /// Status code.
    pub status: u16,
}

/// Labels naming an operation's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// `create` or `delete`.
    pub operation: &'static str,
    /// Why it failed: one of `FAILURE_REASONS`.
    pub reason: &'static str,
}

/// A single `outcome` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `ok` or `error`.
    pub outcome: &'static str,
}

/// Labels of MCP requests through the bridge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct McpLabels {
    /// `streamable_http` or `sse` (the client-facing front).
    pub front: &'static str,
    /// The deployment's transport: `stdio`, `sse` or `streamable_http`.
    pub transport: &'static str,
    /// `result`, `error` (a JSON-RPC error answer), `cancelled` (by the client) or
    /// `unanswered` (the session or the server ended first).
    pub outcome: &'static str,
}

/// Labels of the request latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    /// The client-facing front.
    pub front: &'static str,
    /// The deployment's transport.
    pub transport: &'static str,
}

/// Labels of the open sessions gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SessionLabels {
    /// The client-facing front.
    pub front: &'static str,
}

/// Labels of upstream exits.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExitLabels {
    /// `exited` or `oom_killed`.
    pub reason: &'static str,
}

/// Labels of reaper actions.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReaperLabels {
    /// `pause` or `delete`.
    pub action: &'static str,
    /// `ok` or `error`.
    pub outcome: &'static str,
}

/// Labels of Docker API errors.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DockerLabels {
    /// What mcp-runner asked of Docker, e.g. `create the container`.
    pub operation: &'static str,
}

/// Labels of the deployments gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// Deployment status.
    pub status: &'static str,
}

/// Every `reason` of a failed create or delete.
pub const FAILURE_REASONS: [&str; 9] = [
    "not_found",
    "database",
    "image_not_found",
    "image_pull",
    "uids_exhausted",
    "subnets_exhausted",
    "host_user",
    "docker_unreachable",
    "docker_rejected",
];

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric.
pub struct Metrics {
    registry: Registry,
    /// HTTP requests by route, method and status.
    pub http_requests: Family<HttpLabels, Counter>,
    /// Deployments by status (set at scrape time).
    pub deployments: Family<StatusLabels, Gauge>,
    /// Successful create durations.
    pub create_seconds: Histogram,
    /// Successful delete durations.
    pub delete_seconds: Histogram,
    /// Failed creates and deletes by reason.
    pub failures: Family<OperationLabels, Counter>,
    /// Image pulls by outcome.
    pub image_pulls: Family<OutcomeLabels, Counter>,
    /// MCP requests by front, transport and outcome.
    pub mcp_requests: Family<McpLabels, Counter>,
    /// Time from a client request to its answer through the bridge.
    pub mcp_seconds: HistogramFamily<LatencyLabels>,
    /// Open MCP sessions by front (set at scrape time).
    pub sessions: Family<SessionLabels, Gauge>,
    /// Deployment networks made ahead and ready (set at scrape time).
    pub spare_networks: Gauge,
    /// Deployment processes that stopped on their own.
    pub upstream_exits: Family<ExitLabels, Counter>,
    /// Reaper actions by kind and outcome.
    pub reaper_actions: Family<ReaperLabels, Counter>,
    /// Docker API errors by operation.
    pub docker_errors: Family<DockerLabels, Counter>,
    /// Docker API requests by operation.
    pub docker_requests: Family<DockerLabels, Counter>,
}

fn mcp_histogram() -> Histogram {
    // 100 µs .. ~3.3 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

fn lifecycle_histogram() -> Histogram {
    // 50 ms .. ~100 s: creates pull images and start sandboxes.
    Histogram::new(exponential_buckets(0.05, 2.0, 12))
}

impl Metrics {
    fn new() -> Metrics {
        let mut m = Metrics {
            http_requests: Family::default(),
            deployments: Family::default(),
            create_seconds: lifecycle_histogram(),
            delete_seconds: lifecycle_histogram(),
            failures: Family::default(),
            image_pulls: Family::default(),
            mcp_requests: Family::default(),
            mcp_seconds: Family::new_with_constructor(mcp_histogram),
            sessions: Family::default(),
            spare_networks: Gauge::default(),
            upstream_exits: Family::default(),
            reaper_actions: Family::default(),
            docker_errors: Family::default(),
            docker_requests: Family::default(),
            registry: Registry::with_prefix("mcp_runner"),
        };
        m.registry.register(
            "http_requests",
            "HTTP requests by route template, method and status",
            m.http_requests.clone(),
        );
        m.registry.register(
            "deployments",
            "Deployments by status",
            m.deployments.clone(),
        );
        m.registry.register(
            "deployment_create_duration_seconds",
            "Time to create a deployment (successful creates)",
            m.create_seconds.clone(),
        );
        m.registry.register(
            "deployment_delete_duration_seconds",
            "Time to delete a deployment (successful deletes)",
            m.delete_seconds.clone(),
        );
        m.registry.register(
            "deployment_failures",
            "Failed creates and deletes by operation and reason",
            m.failures.clone(),
        );
        m.registry.register(
            "image_pulls",
            "Image pulls by outcome",
            m.image_pulls.clone(),
        );
        m.registry.register(
            "mcp_requests",
            "MCP requests through the bridge by front, upstream transport and outcome",
            m.mcp_requests.clone(),
        );
        m.registry.register(
            "mcp_request_duration_seconds",
            "Time from a client's MCP request to its answer through the bridge",
            m.mcp_seconds.clone(),
        );
        m.registry.register(
            "mcp_sessions",
            "Open MCP sessions by front",
            m.sessions.clone(),
        );
        m.registry.register(
            "spare_networks",
            "Deployment networks made ahead of creates and ready to be taken",
            m.spare_networks.clone(),
        );
        m.registry.register(
            "upstream_exits",
            "Deployment processes that stopped on their own, by reason",
            m.upstream_exits.clone(),
        );
        m.registry.register(
            "reaper_actions",
            "Reaper pauses and deletes by outcome",
            m.reaper_actions.clone(),
        );
        m.registry.register(
            "docker_errors",
            "Docker API errors by operation",
            m.docker_errors.clone(),
        );
        m.registry.register(
            "docker_requests",
            "Docker API requests by operation",
            m.docker_requests.clone(),
        );
        // Label sets known in advance are exposed from the start, at zero.
        for operation in ["create", "delete"] {
            for reason in FAILURE_REASONS {
                let _ = m
                    .failures
                    .get_or_create(&OperationLabels { operation, reason });
            }
        }
        for outcome in ["ok", "error"] {
            let _ = m.image_pulls.get_or_create(&OutcomeLabels { outcome });
            for action in ["pause", "delete"] {
                let _ = m
                    .reaper_actions
                    .get_or_create(&ReaperLabels { action, outcome });
            }
        }
        for reason in ["exited", "oom_killed"] {
            let _ = m.upstream_exits.get_or_create(&ExitLabels { reason });
        }
        m
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a failed create or delete.
    pub fn failure(&self, operation: &'static str, reason: &'static str) {
        self.failures
            .get_or_create(&OperationLabels { operation, reason })
            .inc();
    }

    /// Counts an MCP request's outcome and, when answered, its latency.
    pub fn mcp_request(
        &self,
        front: &'static str,
        transport: &'static str,
        outcome: &'static str,
        elapsed: Option<Duration>,
    ) {
        self.mcp_requests
            .get_or_create(&McpLabels {
                front,
                transport,
                outcome,
            })
            .inc();
        if let Some(elapsed) = elapsed {
            self.mcp_seconds
                .get_or_create(&LatencyLabels { front, transport })
                .observe(elapsed.as_secs_f64());
        }
    }
}

/// The process-wide metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// HTTP methods counted by name; any other is `other`, so that a client cannot grow the
/// label set at will.
const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// Middleware counting every HTTP request by route template, method and status.
pub async fn count_http(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let response = next.run(request).await;
    count_request(route.as_ref(), &method, response.status());
    response
}

/// Counts one answered request of route `route` (`unmatched` without one).
pub fn count_request(route: Option<&MatchedPath>, method: &Method, status: StatusCode) {
    let method = METHODS
        .iter()
        .find(|k| **k == method.as_str())
        .copied()
        .unwrap_or("other");
    METRICS
        .http_requests
        .get_or_create(&HttpLabels {
            route: route.map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned()),
            method,
            status: status.as_u16(),
        })
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_follow_the_conventions() {
        METRICS.failure("create", "docker_unreachable");
        METRICS.mcp_request(
            "streamable_http",
            "stdio",
            "result",
            Some(Duration::from_millis(2)),
        );
        let text = METRICS.encode();
        assert!(text.contains(
            "mcp_runner_deployment_failures_total{operation=\"create\",reason=\"docker_unreachable\"}"
        ));
        assert!(text.contains("# TYPE mcp_runner_mcp_request_duration_seconds histogram"));
        assert!(text.contains(
            "mcp_runner_mcp_requests_total{front=\"streamable_http\",transport=\"stdio\",outcome=\"result\"}"
        ));
        assert!(text.ends_with("# EOF\n"));
    }
}
