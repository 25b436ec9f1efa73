//! The server: the router, start-up (the sandbox backend, reconciliation, the bridge and the
//! background tasks) and graceful shutdown. The handlers' shared state is `crate::state`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Request, StatusCode, Uri};
use axum::response::Response;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::classify::ServerErrorsFailureClass;
use tower_http::trace::TraceLayer;
use utoipa_swagger_ui::SwaggerUi;

use crate::bridge::{Bridge, BridgeConfig};
use crate::config::Config;
use crate::deployments::{Deployments, Limits};
use crate::runtime::SandboxBackend;
use crate::runtime::docker::{self, ClientSettings, DockerSettings};
use crate::state::{App, AppState};
use crate::store::Store;

/// Largest management request body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A configured, not yet serving, mcp-runner.
pub struct Server {
    state: AppState,
    router: Router,
    config: Config,
    backend: Option<Arc<dyn SandboxBackend>>,
    root: CancellationToken,
    tracker: TaskTracker,
}

impl Server {
    /// Opens the database and builds the router. Docker need not be up: the connection is
    /// made (and retried) when serving starts.
    pub async fn build(config: Config, api_key: String) -> anyhow::Result<Server> {
        Server::build_on(config, api_key, None).await
    }

    /// Like [`Server::build`], on `backend` instead of the one the configuration names (the
    /// router tests run on an in-memory backend).
    pub async fn build_on(
        config: Config,
        api_key: String,
        backend: Option<Arc<dyn SandboxBackend>>,
    ) -> anyhow::Result<Server> {
        let store = Store::open(&config.db_path).await?;
        let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let limits = Limits {
            min_idle_seconds: config.min_idle_seconds,
            max_memory_mb: config.max_memory_limit,
            max_cpus: host_cpus,
            default_memory_mb: (config.default_max_memory > 0).then_some(config.default_max_memory),
            default_cpus: (config.default_max_cpus > 0.0).then_some(config.default_max_cpus),
        };
        let backend_name = backend.as_ref().map_or("docker", |b| b.name());
        let state = AppState(Arc::new(App::new(
            api_key,
            limits,
            config.metrics_require_api_key,
            backend_name,
            store,
        )));
        let router = router(state.clone(), config.mcp_max_body_bytes);
        Ok(Server {
            state,
            router,
            config,
            backend,
            root: CancellationToken::new(),
            tracker: TaskTracker::new(),
        })
    }

    /// The shared state (tests use it to wait for readiness).
    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// A token that stops the server when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.root.clone()
    }

    /// Serves on `listener` until `shutdown` completes or the token is cancelled, then shuts
    /// down gracefully: stop accepting, finish in-flight requests, stop background tasks.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Server {
            state,
            router,
            config,
            backend,
            root,
            tracker,
        } = self;
        tracker.spawn(start_up(
            state.clone(),
            config.clone(),
            backend,
            root.clone(),
            tracker.clone(),
        ));

        let stop = root.clone();
        let streams = state.clone();
        let signal = async move {
            tokio::select! {
                () = shutdown => {}
                () = stop.cancelled() => {}
            }
            // MCP streams stay open until the client hangs up: end them, or the graceful
            // shutdown would wait for ever (and `docker stop` would kill us).
            if let Some(bridge) = streams.bridge() {
                bridge.close_all();
            }
        };
        let addr = listener.local_addr().context("listener address")?;
        tracing::info!(%addr, "mcp-runner listening");
        // No Nagle: SSE answers are written in several small pieces, and waiting for the
        // client's delayed ACK before the next one adds ~40 ms to every streamed answer.
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(signal)
        .await
        .context("HTTP server failed")?;

        tracing::info!("shutting down");
        if config.cleanup_on_shutdown
            && let Ok(d) = state.deployments()
        {
            tracing::info!("deleting every deployment (--cleanup-on-shutdown)");
            d.delete_all().await;
        }
        root.cancel();
        tracker.close();
        if tokio::time::timeout(Duration::from_secs(15), tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("background tasks did not stop within 15 s");
        }
        // Last, what no row explains: what Docker finished for requests cut off by a kill
        // before this run's start-up looked, and spares that could not be removed above.
        if let Ok(d) = state.deployments() {
            match tokio::time::timeout(Duration::from_secs(10), d.sweep()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "the final sweep failed; the next start-up reconciles")
                }
                Err(_) => {
                    tracing::warn!("the final sweep took over 10 s; the next start-up reconciles")
                }
            }
        }
        state.store().close().await;
        tracing::info!("shutdown complete");
        Ok(())
    }
}

/// The Docker backend's settings.
fn docker_settings(config: &Config) -> DockerSettings {
    DockerSettings {
        host: config.docker_host.clone(),
        concurrency: config.docker_concurrency,
        client: ClientSettings {
            oci_runtime: config.docker_runtime.clone(),
            dns: config.dns_servers.iter().map(ToString::to_string).collect(),
            pids_limit: config.pids_limit,
            log_max_mb: config.container_log_max_mb,
            instance_id: config.instance_id.clone(),
        },
        network_pool: config.network_pool.clone(),
        subnet_prefix: config.network_subnet_prefix,
        spares: config.network_spares,
        firewall: config.firewall,
    }
}

/// Connects the sandbox backend, reconciles, then starts the bridge and the background
/// tasks (places made ahead, sweeps, the reaper). Retries while the backend is unreachable.
async fn start_up(
    state: AppState,
    config: Config,
    backend: Option<Arc<dyn SandboxBackend>>,
    root: CancellationToken,
    tracker: TaskTracker,
) {
    let backend = match backend {
        Some(backend) => backend,
        None => match docker::connect(docker_settings(&config), &root).await {
            Some(docker) => Arc::new(docker),
            None => return,
        },
    };
    let deployments = Deployments::new(
        state.store().clone(),
        backend,
        config.uid_range,
        tracker.clone(),
        root.clone(),
    );
    let mut delay = Duration::from_millis(250);
    let reconciled = loop {
        match deployments.reconcile().await {
            Ok(report) => break report,
            Err(e) => {
                tracing::warn!(error = %e, "reconciliation failed; retrying");
                tokio::select! {
                    () = root.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    };
    let bridge = Bridge::new(
        deployments.clone(),
        BridgeConfig {
            max_body: config.mcp_max_body_bytes,
            max_line: config.stdio_max_line_bytes,
            session_idle: Duration::from_secs(config.session_idle_seconds),
            ready_timeout: Duration::from_secs(config.upstream_ready_seconds),
            allowed_origins: config.allowed_origins.clone(),
        },
        root.child_token(),
    );
    tracker.spawn(bridge.clone().restart_stdio(reconciled.stdio_to_restart));
    if !state.ready(deployments.clone(), bridge) {
        return;
    }
    tracker.spawn(deployments.clone().keep_ahead(root.child_token()));
    tracker.spawn(
        deployments
            .clone()
            .keep_swept(crate::deployments::SWEEP_INTERVAL, root.child_token()),
    );
    tracing::info!("ready");
    tracker.spawn(crate::reaper::run(
        deployments,
        config.reaper_interval(),
        root.child_token(),
        tracker.clone(),
    ));
}

/// 404 for a path that no route serves, with the API's JSON error body.
async fn no_route(method: Method, uri: Uri) -> Response {
    crate::error::error_response(
        StatusCode::NOT_FOUND,
        format!("No route for {method} {}", uri.path()),
        None,
    )
}

/// 405 for a method that a route does not serve, with the API's JSON error body (axum adds
/// the `Allow` header). The MCP routes answer with a JSON-RPC error body of their own.
async fn wrong_method(method: Method, uri: Uri) -> Response {
    crate::error::error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
        None,
    )
}

/// Where the OpenAPI document is served.
const OPENAPI_PATH: &str = "/api/openapi.json";

/// Paths that no route serves: Swagger UI's files under `/api/`, or the API's JSON 404.
///
/// Swagger UI is reached from here rather than routed, because its routes serve
/// `/api/{*file}`: a mistyped API path would get its empty 404, or a 405 with an `Allow`
/// header saying that the path exists.
async fn swagger_or_no_route(swagger: Router, request: axum::extract::Request) -> Response {
    let (method, uri) = (request.method().clone(), request.uri().clone());
    if uri.path() != "/api" && !uri.path().starts_with("/api/") {
        return no_route(method, uri).await;
    }
    let response = match swagger.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let own_route = matches!(uri.path(), "/api" | "/api/" | OPENAPI_PATH);
    match response.status() {
        StatusCode::METHOD_NOT_ALLOWED if own_route => {
            let mut answer = wrong_method(method, uri).await;
            if let Some(allow) = response.headers().get(axum::http::header::ALLOW) {
                answer
                    .headers_mut()
                    .insert(axum::http::header::ALLOW, allow.clone());
            }
            answer
        }
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => no_route(method, uri).await,
        _ => response,
    }
}

/// The whole router: the management API and Swagger UI with their layers (request counts,
/// Sentry scope, body limit, request spans, panic safety), and the MCP routes with their own
/// (see `bridge::front::routes`): those carry every client message, so they are not wrapped
/// in the management API's layers.
fn router(state: AppState, mcp_max_body: usize) -> Router {
    let (api, doc) = crate::api::router(state.clone());
    let swagger = Router::new().merge(SwaggerUi::new("/api").url(OPENAPI_PATH, doc));
    let api = api
        .with_state(state.clone())
        .method_not_allowed_fallback(wrong_method)
        .fallback(move |request: axum::extract::Request| {
            swagger_or_no_route(swagger.clone(), request)
        })
        .layer(axum::middleware::from_fn(crate::metrics::count_http))
        .layer(axum::middleware::from_fn(crate::telemetry::sentry_scope))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<_>| {
                    tracing::info_span!("http", method = %req.method(), path = %req.uri().path())
                })
                // tower-http's own line for a 5xx, where the span gives it its request.
                .on_failure(
                    |class: ServerErrorsFailureClass, latency: Duration, span: &tracing::Span| {
                        if !span.is_disabled() {
                            tracing::error!(classification = %class, latency_ms = latency.as_millis(), "response failed");
                        }
                    },
                ),
        )
        .layer(CatchPanicLayer::custom(|_| {
            crate::error::error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal server error".to_owned(),
                None,
            )
        }));
    crate::bridge::front::routes(mcp_max_body)
        .with_state(state.bridge_slot())
        .merge(api)
}
