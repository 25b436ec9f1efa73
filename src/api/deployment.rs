//! `/api/deployment`: create, list, get and delete deployments.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::dto::{
    CreateDeploymentRequest, CreateDeploymentResponse, DeleteDeploymentResponse, DeploymentData,
    DeploymentLogsResponse, GetDeploymentResponse, LogsQuery, last_lines,
};
use super::extract::{ApiJson, DeploymentId};
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// The routes of this resource, with their OpenAPI documentation.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_deployment, list_deployments))
        .routes(routes!(get_deployment, delete_deployment))
        .routes(routes!(deployment_logs))
}

/// Create a deployment.
///
/// Pulls the image if it is not present, makes the deployment's bridge network, host user and
/// gVisor container, and starts it unless `autoStart` is false. All or nothing: on failure
/// nothing is left behind.
#[utoipa::path(
    post,
    path = "/api/deployment",
    tag = "deployments",
    request_body = CreateDeploymentRequest,
    responses(
        (status = 201, description = "Created", body = CreateDeploymentResponse),
        (status = 400, description = "Invalid request; `field` names the culprit", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 403, description = "Client blocked after repeated authentication failures", body = ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = ErrorBody),
        (status = 502, description = "Docker or the registry refused", body = ErrorBody),
        (status = 503, description = "Docker unreachable, or a resource pool exhausted", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
async fn create_deployment(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateDeploymentRequest>,
) -> Result<(StatusCode, Json<CreateDeploymentResponse>), ApiError> {
    let request = body.validate(&state.limits)?;
    let deployments = state.deployments()?.clone();
    // A client that hangs up must not cut a create in half: it runs to its end (or its undo)
    // on a task of its own.
    let deployment = tokio::spawn(async move { deployments.create(request).await })
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("the create task failed: {e}")))??;
    Ok((
        StatusCode::CREATED,
        Json(CreateDeploymentResponse {
            deployment: deployment.into(),
            message: "Deployment created successfully".to_owned(),
        }),
    ))
}

/// List deployments, oldest first.
#[utoipa::path(
    get,
    path = "/api/deployment",
    tag = "deployments",
    responses(
        (status = 200, description = "Every deployment", body = [DeploymentData]),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 403, description = "Client blocked", body = ErrorBody),
        (status = 503, description = "Starting up", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
async fn list_deployments(
    State(state): State<AppState>,
) -> Result<Json<Vec<DeploymentData>>, ApiError> {
    let all = state.deployments()?.list().await?;
    Ok(Json(all.into_iter().map(DeploymentData::from).collect()))
}

/// Get one deployment.
#[utoipa::path(
    get,
    path = "/api/deployment/{id}",
    tag = "deployments",
    params(("id" = String, Path, description = "Deployment id", example = "dp_3k9x0q2m7c1v8b4n6z5l0p2r")),
    responses(
        (status = 200, description = "The deployment", body = GetDeploymentResponse),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 403, description = "Client blocked", body = ErrorBody),
        (status = 404, description = "No such deployment", body = ErrorBody),
        (status = 503, description = "Starting up", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
async fn get_deployment(
    State(state): State<AppState>,
    DeploymentId(id): DeploymentId,
) -> Result<Json<GetDeploymentResponse>, ApiError> {
    let deployment = state.deployments()?.get(&id).await?;
    Ok(Json(GetDeploymentResponse {
        deployment: deployment.into(),
    }))
}

/// Delete a deployment.
///
/// Stops the container (10 s grace, then kill), removes it and its network, deletes the host
/// user and the row. If Docker fails part-way the answer is an error and the deletion is
/// finished in the background.
#[utoipa::path(
    delete,
    path = "/api/deployment/{id}",
    tag = "deployments",
    params(("id" = String, Path, description = "Deployment id", example = "dp_3k9x0q2m7c1v8b4n6z5l0p2r")),
    responses(
        (status = 200, description = "Deleted", body = DeleteDeploymentResponse),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 403, description = "Client blocked", body = ErrorBody),
        (status = 404, description = "No such deployment", body = ErrorBody),
        (status = 502, description = "Docker refused; deletion will be retried", body = ErrorBody),
        (status = 503, description = "Docker unreachable; deletion will be retried", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
async fn delete_deployment(
    State(state): State<AppState>,
    DeploymentId(id): DeploymentId,
) -> Result<Json<DeleteDeploymentResponse>, ApiError> {
    let deployments = state.deployments()?.clone();
    // Same for a delete: it finishes even if the client goes away.
    tokio::spawn(async move { deployments.delete(&id).await })
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("the delete task failed: {e}")))??;
    Ok(Json(DeleteDeploymentResponse {
        message: "Deployment deleted successfully".to_owned(),
    }))
}

/// The stderr tail of a deployment's process, and whether that process exited.
///
/// What the server wrote to stderr (the last 64 KiB are kept, also across restarts of the
/// process and of mcp-runner), cut to the last `tail` lines when asked. Protocol traffic is
/// never in it. For an isolated deployment it holds what its sessions' containers wrote,
/// each line starting with `[session <first 8 characters of the session id>] `.
#[utoipa::path(
    get,
    path = "/api/deployment/{id}/logs",
    tag = "deployments",
    params(
        ("id" = String, Path, description = "Deployment id", example = "dp_3k9x0q2m7c1v8b4n6z5l0p2r"),
        LogsQuery
    ),
    responses(
        (status = 200, description = "The stderr tail and the process state", body = DeploymentLogsResponse),
        (status = 400, description = "`tail` is not an integer from 0 to 100000", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 403, description = "Client blocked", body = ErrorBody),
        (status = 404, description = "No such deployment", body = ErrorBody),
        (status = 502, description = "Docker refused to tell the process state", body = ErrorBody),
        (status = 503, description = "Docker unreachable, or starting up", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
async fn deployment_logs(
    State(state): State<AppState>,
    DeploymentId(id): DeploymentId,
    query: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Json<DeploymentLogsResponse>, ApiError> {
    let Query(query) =
        query.map_err(|e| ApiError::field("tail", format!("invalid query: {}", e.body_text())))?;
    let lines = query.lines()?;
    let (d, process) = state.deployments()?.logs(&id).await?;
    let stderr = match lines {
        Some(n) => last_lines(&d.stderr, n).to_owned(),
        None => d.stderr.clone(),
    };
    let process = process.unwrap_or_default();
    Ok(Json(DeploymentLogsResponse {
        id: d.id,
        status: d.status.as_str().to_owned(),
        stderr,
        running: process.running,
        exited: process.exited,
        exit_code: process.exited.then_some(process.exit_code).flatten(),
        oom_killed: process.oom_killed,
    }))
}
