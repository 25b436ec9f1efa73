//! The management API: routes with their OpenAPI documentation, authentication, the
//! request/response shapes and their validation.
//!
//! - `deployment.rs`, `health.rs`, `metrics.rs`: one file per resource, routes and docs
//! - `dto.rs`: request and response shapes; `validate.rs`: the rules of a create request
//! - `auth.rs`: the `X-API-Key` check; `extract.rs`: the JSON body and path extractors

pub mod auth;
mod deployment;
pub mod dto;
pub mod extract;
mod health;
mod metrics;
pub mod validate;

use axum::Router;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

use crate::deployments::DeployError;
use crate::error::ApiError;
use crate::runtime::{RuntimeError, backend_title};
use crate::state::AppState;

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> Self {
        match e {
            DeployError::NotFound => ApiError::NotFound("Deployment not found".to_owned()),
            DeployError::Store(e) => ApiError::Internal(e.into()),
            DeployError::Runtime(e) => runtime_error(e),
        }
    }
}

/// The answer to a backend failure: the client's image is wrong (400 naming `image`), a
/// pool is exhausted or the backend unreachable (503), the backend refused (502), or a host
/// command failed (500).
fn runtime_error(e: RuntimeError) -> ApiError {
    match &e {
        RuntimeError::Pull {
            not_found: true, ..
        } => ApiError::field("image", e.to_string()),
        RuntimeError::Exhausted { advice, .. } => ApiError::Unavailable(format!("{e}; {advice}")),
        RuntimeError::Unreachable { backend, .. } => {
            ApiError::Unavailable(format!("{} is unreachable: {e}", backend_title(backend)))
        }
        RuntimeError::Rejected { .. }
        | RuntimeError::NotFound { .. }
        | RuntimeError::Pull { .. } => ApiError::BadGateway(e.to_string()),
        RuntimeError::Host { .. } => ApiError::Internal(e.into()),
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mcp-runner",
        description = "Runs MCP servers from Docker images in gVisor sandboxes and serves them over Streamable HTTP and SSE. Every `/api/deployment` call needs the `X-API-Key` header.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    modifiers(&ApiKeyScheme),
    tags(
        (name = "deployments", description = "Sandboxed MCP server deployments"),
        (name = "health", description = "Probes")
    )
)]
struct ApiDoc;

struct ApiKeyScheme;

impl Modify for ApiKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "The management key (API_KEY). Five failures within a minute block the client address for 1 minute, doubling up to 1 hour.",
            ))),
        );
    }
}

/// The API routes (management routes behind the key) and the OpenAPI document.
pub fn router(state: AppState) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    parts(Some(state))
}

/// The OpenAPI document of the whole API, pretty JSON with a final newline: what
/// `mcp-runner openapi` prints, `/api/openapi.json` serves and `openapi/openapi.json` holds.
pub fn openapi_document() -> String {
    openapi_json(&parts(None).1)
}

/// Pretty JSON of a document, with a final newline.
pub fn openapi_json(doc: &utoipa::openapi::OpenApi) -> String {
    let mut json = doc.to_pretty_json().unwrap_or_else(|_| "{}".to_owned());
    json.push('\n');
    json
}

/// Routes and document; the key check is layered on when a state is given (the document is
/// the same either way).
fn parts(auth: Option<AppState>) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let mut managed = deployment::routes();
    if let Some(state) = &auth {
        managed = managed.route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_key,
        ));
    }
    let mut metrics = metrics::routes();
    if let Some(state) = auth.filter(|s| s.metrics_require_key) {
        metrics = metrics.route_layer(axum::middleware::from_fn_with_state(
            state,
            auth::require_api_key,
        ));
    }
    let (router, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(managed)
        .merge(health::routes())
        .merge(metrics)
        .split_for_parts();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    (router, doc)
}
