//! The Docker client: bollard with a cap on concurrent calls, request counting, the labels
//! that mark what this instance makes, and `DockerError`, one variant per kind of failure
//! with the operation named.

use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::keyed::KeyedLocks;
use crate::metrics::{DockerLabels, METRICS};
use crate::runtime::{FailureKind, RuntimeError};

/// Label every object we make carries: `managed-by=mcp-runner`.
pub const LABEL_MANAGED_BY: &str = "managed-by";
/// Value of [`LABEL_MANAGED_BY`].
pub const MANAGED_BY: &str = "mcp-runner";
/// Label with the instance id of the mcp-runner that made the object.
pub const LABEL_INSTANCE: &str = "mcp-runner.instance";
/// Label with the deployment id the object belongs to.
pub const LABEL_DEPLOYMENT: &str = "mcp-runner.deployment";
/// Label with the MCP session a per-session container serves (isolated deployments).
pub const LABEL_SESSION: &str = "mcp-runner.session";
/// Label of a network made before its deployment's create (provisioned ahead, see `SandboxBackend::provision`).
pub const LABEL_MADE_AHEAD: &str = "mcp-runner.made-ahead";

/// Errors of the Docker backend: one variant per kind of failure, with the Docker or host error
/// inside. They become [`RuntimeError`]s at the backend's edge.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// No Docker client could be made (bad DOCKER_HOST).
    #[error("cannot set up the Docker client: {0}")]
    Connect(#[source] bollard::errors::Error),
    /// A Docker API call failed.
    #[error("Docker could not {op}: {source}")]
    Docker {
        /// The operation, e.g. "create the container".
        op: &'static str,
        /// Cause.
        source: bollard::errors::Error,
    },
    /// A failure that is no Docker API call's (a pull the registry refused, a host account
    /// command, an exhausted pool), already in the backend-neutral form.
    #[error(transparent)]
    Other(RuntimeError),
}

impl DockerError {
    /// Classifies the failure for the HTTP answer.
    pub fn kind(&self) -> FailureKind {
        match self {
            DockerError::Connect(_) => FailureKind::Unreachable,
            DockerError::Docker { source, .. } => classify(source),
            DockerError::Other(e) => e.kind(),
        }
    }

    /// Whether Docker refused a network because its subnet overlaps another network's.
    pub fn is_subnet_overlap(&self) -> bool {
        matches!(
            self,
            DockerError::Docker {
                source: bollard::errors::Error::DockerResponseServerError { message, .. },
                ..
            } if message.contains("overlaps")
        )
    }

    /// Whether the error says the object is already gone.
    pub fn is_not_found(&self) -> bool {
        self.kind() == FailureKind::NotFound
    }
}

/// The name the backend's errors give it.
const BACKEND: &str = "docker";

impl From<DockerError> for RuntimeError {
    fn from(e: DockerError) -> Self {
        let kind = e.kind();
        match e {
            DockerError::Other(e) => e,
            DockerError::Connect(_) | DockerError::Docker { .. } => {
                let message = e.to_string();
                match kind {
                    FailureKind::Unreachable => RuntimeError::Unreachable {
                        backend: BACKEND,
                        message,
                    },
                    FailureKind::NotFound => RuntimeError::NotFound { message },
                    FailureKind::Rejected | FailureKind::Host => RuntimeError::Rejected { message },
                }
            }
        }
    }
}

pub(super) fn classify(e: &bollard::errors::Error) -> FailureKind {
    use bollard::errors::Error as E;
    match e {
        E::DockerResponseServerError {
            status_code: 404, ..
        } => FailureKind::NotFound,
        E::DockerResponseServerError { .. } | E::DockerContainerWaitError { .. } => {
            FailureKind::Rejected
        }
        E::JsonDataError { .. } | E::JsonSerdeError { .. } => FailureKind::Rejected,
        _ => FailureKind::Unreachable,
    }
}

/// Attaches the operation to a bollard error, and counts it (not-found answers are
/// expected, e.g. removing what is gone, and are not counted).
pub(super) fn docker_err(op: &'static str) -> impl FnOnce(bollard::errors::Error) -> DockerError {
    move |source| {
        if classify(&source) != FailureKind::NotFound {
            METRICS
                .docker_errors
                .get_or_create(&DockerLabels { operation: op })
                .inc();
        }
        DockerError::Docker { op, source }
    }
}

/// Settings every container shares, from the configuration.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// OCI runtime name (`runsc`).
    pub oci_runtime: String,
    /// DNS servers of the containers.
    pub dns: Vec<String>,
    /// Pids limit of each container.
    pub pids_limit: i64,
    /// Size cap of each container's json-file log, in MB.
    pub log_max_mb: u64,
    /// This instance's id (label value).
    pub instance_id: String,
}

/// The Docker client plus the settings every container shares.
#[derive(Debug, Clone)]
pub struct Client {
    pub(super) docker: Docker,
    pub(super) settings: Arc<ClientSettings>,
    /// Caps concurrent Docker API calls so a burst of creates cannot swamp the daemon.
    pub(super) permits: Arc<Semaphore>,
    /// One pull at a time per image.
    pub(super) pulls: Arc<KeyedLocks>,
    /// Docker API requests made through this client.
    pub(super) requests: Arc<std::sync::atomic::AtomicU64>,
    /// Whether the network holder image is there (known once asked).
    pub(super) holder_image: Arc<tokio::sync::OnceCell<bool>>,
}

impl Client {
    /// Makes a client for `docker_host` (Docker's defaults when `None`). Does not contact the
    /// daemon: mcp-runner starts even while Docker is down and reports it in readiness.
    pub fn connect(
        docker_host: Option<&str>,
        settings: ClientSettings,
        concurrency: usize,
    ) -> Result<Client, DockerError> {
        let docker = match docker_host {
            Some(host) => Docker::connect_with_host(host),
            None => Docker::connect_with_defaults(),
        }
        .map_err(DockerError::Connect)?
        // Long enough for a 10 s stop grace period plus a slow daemon.
        .with_timeout(Duration::from_secs(120));
        Ok(Client {
            docker,
            settings: Arc::new(settings),
            permits: Arc::new(Semaphore::new(concurrency)),
            requests: Arc::default(),
            pulls: Arc::default(),
            holder_image: Arc::default(),
        })
    }

    /// Negotiates the API version with the daemon (Docker 20.10 speaks 1.41) and checks that it
    /// answers.
    pub async fn negotiate(self) -> Result<Client, DockerError> {
        let docker = self
            .docker
            .clone()
            .negotiate_version()
            .await
            .map_err(docker_err("negotiate the API version"))?;
        Ok(Client { docker, ..self })
    }

    /// Whether the daemon answers.
    pub async fn ping(&self) -> Result<(), DockerError> {
        let _permit = self.permit("answer a ping").await;
        self.docker
            .ping()
            .await
            .map_err(docker_err("answer a ping"))?;
        Ok(())
    }

    /// The OCI runtimes the daemon knows (to check `DOCKER_RUNTIME` at start-up).
    pub async fn runtimes(&self) -> Result<Vec<String>, DockerError> {
        let _permit = self.permit("describe itself").await;
        let info = self
            .docker
            .info()
            .await
            .map_err(docker_err("describe itself"))?;
        Ok(info
            .runtimes
            .map(|r| r.into_keys().collect())
            .unwrap_or_default())
    }

    /// Docker API requests made through this client so far (start-up's version negotiation
    /// aside).
    pub fn requests_made(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts a Docker API request by operation (`mcp_runner_docker_requests_total`).
    pub(super) fn count_request(&self, operation: &'static str) {
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        METRICS
            .docker_requests
            .get_or_create(&DockerLabels { operation })
            .inc();
    }

    /// This instance's id.
    pub fn instance_id(&self) -> &str {
        &self.settings.instance_id
    }

    /// Waits for a slot under the cap on concurrent Docker operations, counting the request
    /// `operation` about to be made.
    pub(super) async fn permit(&self, operation: &'static str) -> Option<SemaphorePermit<'_>> {
        self.count_request(operation);
        // The semaphore is never closed; `None` would only mean no cap.
        self.permits.acquire().await.ok()
    }

    /// The labels of an object belonging to `deployment_id`.
    pub(super) fn labels(&self, deployment_id: &str) -> std::collections::HashMap<String, String> {
        [
            (LABEL_MANAGED_BY, MANAGED_BY),
            (LABEL_INSTANCE, self.settings.instance_id.as_str()),
            (LABEL_DEPLOYMENT, deployment_id),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// The label filter that finds this instance's objects.
    pub(super) fn instance_filter(&self) -> std::collections::HashMap<String, Vec<String>> {
        std::collections::HashMap::from([(
            "label".to_owned(),
            vec![
                format!("{LABEL_MANAGED_BY}={MANAGED_BY}"),
                format!("{LABEL_INSTANCE}={}", self.settings.instance_id),
            ],
        )])
    }
}

/// The Docker name of a deployment's container and network.
pub fn object_name(deployment_id: &str) -> String {
    format!("mcp-runner-{deployment_id}")
}
