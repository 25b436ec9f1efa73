//! `GET /metrics`: Prometheus metrics (see `crate::metrics`), open unless
//! `METRICS_REQUIRE_API_KEY` is set. Also the middleware counting HTTP requests by route.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::domain::Status;
use crate::metrics::{HttpLabels, METRICS, SessionLabels, StatusLabels};

/// The routes of this resource.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(metrics))
}

/// Prometheus metrics in the OpenMetrics text format. Needs the X-API-Key header only when
/// mcp-runner runs with `METRICS_REQUIRE_API_KEY=true`.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses(
        (status = 200, description = "The metrics", content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String),
        (status = 401, description = "With METRICS_REQUIRE_API_KEY: missing or wrong key", body = crate::error::ErrorBody),
        (status = 403, description = "With METRICS_REQUIRE_API_KEY: client blocked after repeated failures", body = crate::error::ErrorBody)
    )
)]
async fn metrics(State(state): State<AppState>) -> Response {
    // State gauges are read now; a store that cannot answer leaves them as last seen.
    if let Ok(counts) = state.store().count_by_status().await {
        for status in [
            Status::Creating,
            Status::Running,
            Status::Stopped,
            Status::Deleting,
        ] {
            let name = status.as_str();
            let n = counts
                .iter()
                .find(|(s, _)| s == name)
                .map_or(0, |(_, n)| *n);
            METRICS
                .deployments
                .get_or_create(&StatusLabels { status: name })
                .set(n);
        }
    }
    if let Ok(d) = state.deployments() {
        METRICS
            .spare_networks
            .set(i64::try_from(d.spare_networks()).unwrap_or(i64::MAX));
    }
    if let Some(bridge) = state.bridge() {
        for (front, n) in bridge.session_counts() {
            METRICS
                .sessions
                .get_or_create(&SessionLabels {
                    front: front.name(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        METRICS.encode(),
    )
        .into_response()
}

const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// Counts every HTTP request by route template, method and status.
pub async fn count_http(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let response = next.run(request).await;
    count_request(route.as_ref(), &method, response.status());
    response
}

/// Counts one answered request of route `route` (`unmatched` without one).
pub fn count_request(route: Option<&MatchedPath>, method: &Method, status: StatusCode) {
    // Known methods only: a client must not grow the label set at will.
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
