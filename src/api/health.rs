//! `GET /health`: the liveness answer of the NestJS service, without a key.

use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;

/// Health answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always "ok" while the process serves requests.
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// The routes of this resource.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(health))
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
