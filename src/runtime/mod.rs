//! The sandbox backend seam: [`SandboxBackend`] is the one trait through which
//! `deployments` makes, starts, pauses and removes the sandboxes that MCP servers run in.
//! `deployments`, `bridge` and `api` know nothing of what implements it.
//!
//! Implementations: [`docker::DockerBackend`] (one host: Docker with gVisor's `runsc`, a
//! bridge network and a host account per deployment) and, for tests, `fake::FakeBackend`
//! (in memory).
//!
//! # What a backend guarantees
//!
//! - **Ownership.** Everything it makes for a deployment carries the deployment id and the
//!   instance id (Docker: the labels `managed-by=mcp-runner`, `mcp-runner.instance` and
//!   `mcp-runner.deployment`; host accounts: their comment field), so that
//!   [`SandboxBackend::list_owned`] finds it without names and never lists what another
//!   instance made. Names stand in for ids only where an id was never learned (a create
//!   that failed part-way).
//! - **Idempotent removal.** [`teardown`](SandboxBackend::teardown),
//!   [`remove_sandbox`](SandboxBackend::remove_sandbox),
//!   [`remove_owned`](SandboxBackend::remove_owned) and
//!   [`discard`](SandboxBackend::discard) succeed when what they remove is already gone.
//!   `teardown` also works for a create that failed before it learned any id: it finds the
//!   parts by the deployment id.
//! - **State.** [`state`](SandboxBackend::state) is the backend's view now: `None` when the
//!   sandbox does not exist, `running` while the server process runs, and for a sandbox that
//!   ran and stopped, its exit code and whether it was OOM-killed.
//! - **Streams end with the sandbox.** The stderr stream of
//!   [`stderr`](SandboxBackend::stderr) and the stdout of an [`Attached`] end when the
//!   sandbox stops; `deployments` takes that end to mean it stopped.
//! - **Replacements are two-phase.** A backend may replace a stopped sandbox by an
//!   equivalent one (same spec, same place; Docker does so to leave a network holder, see
//!   `docker::netns`). It then returns a [`Replacement`]: the new sandbox exists, the old one
//!   is set aside, and nothing is lost until `deployments` has recorded the new id and calls
//!   [`commit`](SandboxBackend::commit), or calls [`abort`](SandboxBackend::abort) to put
//!   the old one back.
//! - **Concurrency.** Calls for different deployments may run at once. For one deployment,
//!   `deployments` runs starts and pauses one at a time; a start that races the deployment's
//!   deletion loses (the teardown removes what it started), so teardown must stop and
//!   remove a sandbox whatever state it is in.
//! - **No hot path.** Nothing here is called per MCP message: the bridge asks for an
//!   [`address`](SandboxBackend::address) only when a session opens on a deployment that is
//!   not known to run.

pub mod docker;
mod error;
#[cfg(any(test, feature = "fake-backend"))]
pub mod fake;

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use tokio::io::AsyncWrite;

pub use error::{FailureKind, RuntimeError};

/// Grace period between SIGTERM and SIGKILL when a sandbox is stopped.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// The identity a deployment's sandboxes run as: a UID and GID from `UID_RANGE` (never shared
/// by two deployments), and the account name that goes with them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The deployment.
    pub deployment_id: String,
    /// Account name (`mcp-<id without dp_>`).
    pub username: String,
    /// UID.
    pub uid: u32,
    /// GID.
    pub gid: u32,
}

/// Where a deployment's sandboxes run: the backend's handle of its network (Docker: the id of
/// the deployment's bridge network). Recorded in the row as `network_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// The network's id.
    pub network: String,
}

/// What a deployment asks of its sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxSpec {
    /// The deployment (labels, names).
    pub deployment_id: String,
    /// Image reference.
    pub image: String,
    /// Command (`None`: the image's default).
    pub args: Option<Vec<String>>,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Account name of the identity (made with the place).
    pub username: String,
    /// UID the server runs as.
    pub uid: u32,
    /// GID the server runs as.
    pub gid: u32,
    /// Memory limit in MB.
    pub memory_mb: Option<u64>,
    /// CPU limit in cores.
    pub cpus: Option<f64>,
    /// Keep stdin open (stdio servers).
    pub stdin: bool,
    /// For the sandbox of one session of an isolated deployment: the session id.
    pub session: Option<String>,
}

impl SandboxSpec {
    /// The identity of the spec's deployment.
    pub fn identity(&self) -> Identity {
        Identity {
            deployment_id: self.deployment_id.clone(),
            username: self.username.clone(),
            uid: self.uid,
            gid: self.gid,
        }
    }
}

/// A sandbox made by [`SandboxBackend::create`], and its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The backend's id of the sandbox (Docker: the container id); the row's `container_id`.
    pub sandbox: String,
    /// Its place.
    pub place: Place,
}

/// A stopped sandbox set aside for an equivalent new one (see the module's guarantees).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacement {
    /// The deployment.
    pub deployment_id: String,
    /// The sandbox set aside.
    pub old: String,
    /// The sandbox that takes its place.
    pub new: String,
}

/// A started sandbox.
pub struct Started {
    /// The sandbox that runs now: the one asked for, or its replacement.
    pub sandbox: String,
    /// Its stdio, when asked for.
    pub attached: Option<Attached>,
    /// Set when the sandbox was replaced before it started: `deployments` records
    /// `replacement.new` and commits (or aborts) it.
    pub replacement: Option<Replacement>,
}

/// A sandbox's stdio, for stdio MCP servers: stdout chunks (in any size), a writer to stdin,
/// and the stderr chunks. stdout ends when the process does.
pub struct Attached {
    /// stdout bytes, chunked as they arrive.
    pub stdout: BoxStream<'static, Result<Bytes, RuntimeError>>,
    /// The process's stdin.
    pub stdin: Pin<Box<dyn AsyncWrite + Send>>,
    /// stderr bytes. They may arrive only while `stdout` is read (Docker carries both on one
    /// connection), and the stream ends with it.
    pub stderr: BoxStream<'static, Result<Bytes, RuntimeError>>,
}

impl Attached {
    /// Takes the stderr stream out, leaving an empty one.
    pub fn take_stderr(&mut self) -> BoxStream<'static, Result<Bytes, RuntimeError>> {
        use futures_util::StreamExt;
        std::mem::replace(&mut self.stderr, futures_util::stream::empty().boxed())
    }
}

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxState {
    /// Whether its process runs now.
    pub running: bool,
    /// Whether it ran and exited (a sandbox made but never started has not).
    pub exited: bool,
    /// Exit code of the last run, when it ran and exited.
    pub exit_code: Option<i64>,
    /// Whether the kernel's OOM killer ended the last run.
    pub oom_killed: bool,
}

/// Everything of a deployment, for [`SandboxBackend::teardown`]. Ids a failed create never
/// learned are `None`; the backend then finds the parts by the deployment id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Teardown {
    /// The deployment's identity.
    pub identity: Identity,
    /// Its sandbox, when known.
    pub sandbox: Option<String>,
    /// Its place, when known.
    pub place: Option<Place>,
    /// Whether session sandboxes may exist (isolated deployments).
    pub sessions: bool,
}

/// What kind of thing a backend owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedKind {
    /// A sandbox (Docker: a container, network holders included); `session` for the sandbox
    /// of one session of an isolated deployment.
    Sandbox {
        /// The session it serves.
        session: Option<String>,
    },
    /// A place (Docker: a network); `ahead` when it was provisioned before its deployment's
    /// create (see [`SandboxBackend::provision`]).
    Place {
        /// Provisioned ahead.
        ahead: bool,
    },
    /// An identity the backend made (Docker: a host account).
    Identity,
}

/// Something a backend made for a deployment, as [`SandboxBackend::list_owned`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned {
    /// What it is.
    pub kind: OwnedKind,
    /// The backend's id of it (for an identity: the account name).
    pub id: String,
    /// The deployment it belongs to (or will, for a place provisioned ahead).
    pub deployment_id: String,
}

/// What a backend can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Places in use and in all (Docker: subnets of `NETWORK_POOL`), when bounded.
    pub places: Option<(u64, u64)>,
    /// How many places `deployments` keeps provisioned ahead (Docker: `NETWORK_SPARES`).
    pub ahead: usize,
}

/// A backend's name as a sentence shows it (`docker` → `Docker`).
pub fn backend_title(name: &str) -> String {
    let mut chars = name.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

/// A backend that runs sandboxes. See the module documentation for what every
/// implementation guarantees.
#[async_trait::async_trait]
pub trait SandboxBackend: Send + Sync + 'static {
    /// The backend's name in messages and in the readiness check (`docker`).
    fn name(&self) -> &'static str;

    /// Whether the backend answers.
    async fn ping(&self) -> Result<(), RuntimeError>;

    /// What the backend can hold and how many places to keep provisioned ahead.
    fn capacity(&self) -> Capacity;

    /// Requests made to the backend's API so far (tests check that MCP traffic to a running
    /// deployment makes none).
    fn requests_made(&self) -> u64;

    /// IDs (UIDs and GIDs) that something else on the backend's hosts uses: a deployment's
    /// UID is picked outside them.
    async fn taken_ids(&self) -> Result<HashSet<u32>, RuntimeError>;

    /// Provisions the place of a deployment to come, ahead of its create: the network, the
    /// identity, and whatever lets its first sandbox start sooner (Docker: a network holder).
    async fn provision(&self, identity: &Identity) -> Result<Place, RuntimeError>;

    /// Removes a place provisioned ahead that no create will use.
    async fn discard(&self, identity: &Identity, place: &Place) -> Result<(), RuntimeError>;

    /// Makes the sandbox of `spec`, not started: on `place` when given (provisioned ahead,
    /// or the deployment's own for a session sandbox), otherwise on a place made now with the
    /// identity. The image is pulled when missing. `starts_soon` says the sandbox will be
    /// started right after (the backend may prepare for that).
    async fn create(
        &self,
        spec: &SandboxSpec,
        place: Option<&Place>,
        starts_soon: bool,
    ) -> Result<Created, RuntimeError>;

    /// Starts the sandbox `sandbox` of `spec` on `place`; `None` when it does not exist.
    /// Without `attach`, one that runs already is left as it is; with `attach`, its process
    /// is started afresh (stopped first when it runs) with stdio attached before the start,
    /// so that no output is missed.
    async fn start(
        &self,
        spec: &SandboxSpec,
        sandbox: &str,
        place: &Place,
        attach: bool,
    ) -> Result<Option<Started>, RuntimeError>;

    /// Stops the sandbox of an idle deployment and releases what a stopped sandbox does not
    /// need; may replace it by an equivalent one (see the module's guarantees).
    async fn pause(
        &self,
        spec: &SandboxSpec,
        sandbox: &str,
        place: &Place,
    ) -> Result<Option<Replacement>, RuntimeError>;

    /// Completes a replacement: the old sandbox goes.
    async fn commit(&self, replacement: &Replacement) -> Result<(), RuntimeError>;

    /// Undoes a replacement: the new sandbox goes, the old one is as before.
    async fn abort(&self, replacement: &Replacement);

    /// Stops and removes one sandbox (a session's).
    async fn remove_sandbox(&self, sandbox: &str) -> Result<(), RuntimeError>;

    /// The state of a sandbox, `None` when it does not exist.
    async fn state(&self, sandbox: &str) -> Result<Option<SandboxState>, RuntimeError>;

    /// The address of a running sandbox on its place, `None` while it has none.
    async fn address(&self, sandbox: &str, place: &Place) -> Result<Option<IpAddr>, RuntimeError>;

    /// The stderr of a running sandbox from `since` (Unix seconds; 0: all it kept), until it
    /// stops.
    fn stderr(&self, sandbox: &str, since: i64) -> BoxStream<'static, Result<Bytes, RuntimeError>>;

    /// Removes everything of a deployment: its session sandboxes, its sandbox, its place and
    /// its identity.
    async fn teardown(&self, teardown: &Teardown) -> Result<(), RuntimeError>;

    /// Everything of this instance that the backend holds.
    async fn list_owned(&self) -> Result<Vec<Owned>, RuntimeError>;

    /// Removes one thing `list_owned` found.
    async fn remove_owned(&self, owned: &Owned) -> Result<(), RuntimeError>;
}
