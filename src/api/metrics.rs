//! `GET /metrics`: Prometheus metrics (see `crate::metrics`), open unless
//! `METRICS_REQUIRE_API_KEY` is set.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::domain::Status;
use crate::metrics::{METRICS, SessionLabels, StatusLabels};
use crate::state::AppState;

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
            .set(i64::try_from(d.ahead_ready()).unwrap_or(i64::MAX));
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
