//! Probes, without a key: `GET /health` (the NestJS service's answer), `GET /healthz`
//! (the process is alive) and `GET /readyz` (the database takes writes and the sandbox
//! backend, Docker, answers).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

/// Health answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always "ok" while the process serves requests.
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Readiness answer: every check with `ok` or what failed.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ok` or `unavailable`.
    #[schema(example = "ok")]
    pub status: &'static str,
    /// `database`, `docker` and `startup`, each `ok` or the failure.
    #[schema(example = json!({"database": "ok", "docker": "ok", "startup": "ok"}))]
    pub checks: std::collections::BTreeMap<&'static str, String>,
}

/// The routes of this resource.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

/// Liveness probe: the process serves requests.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses((status = 200, description = "The process is alive", body = Health))
)]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness probe: the database takes writes, Docker answers, start-up reconciliation is
/// done. 503 names the failing part.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready; `checks` names the failing part", body = Readiness)
    )
)]
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let limit = Duration::from_secs(2);
    let mut checks = std::collections::BTreeMap::new();
    let outcome = |r: Result<Result<(), String>, tokio::time::error::Elapsed>| match r {
        Ok(Ok(())) => "ok".to_owned(),
        Ok(Err(e)) => e,
        Err(_) => format!("no answer within {limit:?}"),
    };
    let db = tokio::time::timeout(limit, async {
        state
            .store()
            .check_writable()
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    checks.insert("database", outcome(db));
    match state.deployments() {
        Ok(d) => {
            let backend =
                tokio::time::timeout(limit, async { d.ping().await.map_err(|e| e.to_string()) })
                    .await;
            checks.insert(state.backend, outcome(backend));
            checks.insert("startup", "ok".to_owned());
        }
        Err(_) => {
            checks.insert(state.backend, "not connected yet".to_owned());
            checks.insert(
                "startup",
                format!(
                    "waiting for {} and reconciling deployments",
                    crate::runtime::backend_title(state.backend)
                ),
            );
        }
    }
    let ready = checks.values().all(|v| v == "ok");
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            status: if ready { "ok" } else { "unavailable" },
            checks,
        }),
    )
}

/// Liveness check.
#[utoipa::path(
    get,
    path = "/health",
    tag = "health",
    responses((status = 200, description = "The process serves requests", body = Health))
)]
async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}
