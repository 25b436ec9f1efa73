//! Deployments: the orchestration of the store and a sandbox backend. Create is
//! all-or-nothing, delete tolerates parts already gone, and the database stays the truth.
//! Every sandbox operation goes through [`SandboxBackend`]: nothing here knows Docker.
//!
//! - `spec.rs`: the create request, its bounds, ids, and the sandbox spec of a row
//! - `create.rs`: create and its undo; `delete.rs`: delete and teardown
//! - `power.rs`: start, pause, and the replacements a backend may make on the way
//! - `sessions.rs`: the sandboxes of an isolated deployment's sessions
//! - `ahead.rs`: places provisioned ahead of creates; `reconcile.rs`: start-up and sweeps
//! - `stderr.rs`: the stderr tail of running sandboxes
//! - `listener.rs`: how the bridge hears of deletions, pauses and started processes

mod ahead;
mod create;
mod delete;
mod listener;
mod power;
mod reconcile;
mod sessions;
mod spec;
pub mod stderr;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::UidRange;
use crate::domain::{Deployment, Millis};
use crate::keyed::KeyedLocks;
use crate::runtime::{Place, RuntimeError, SandboxBackend, SandboxState};
use crate::store::{DueRow, Store, StoreError};
use stderr::StderrHub;

pub use listener::LifecycleListener;
pub use reconcile::{FIRST_SWEEP_AFTER, Reconciled, SWEEP_INTERVAL};
pub use spec::{Limits, NewDeployment, new_id};

/// What can go wrong with a deployment operation.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// No such deployment.
    #[error("Deployment not found")]
    NotFound,
    /// The sandbox backend or a host command failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The `reason` label of a failed create or delete.
fn failure_reason(e: &DeployError) -> &'static str {
    match e {
        DeployError::NotFound => "not_found",
        DeployError::Store(_) => "database",
        DeployError::Runtime(r) => r.reason(),
    }
}

/// The deployments service, shared by the API, the reaper and the bridge.
#[derive(Clone)]
pub struct Deployments {
    inner: Arc<Inner>,
}

struct Inner {
    /// Deployments being deleted now: a second deleter (the reaper retrying a `deleting`
    /// row, a repeated DELETE) stands back instead of racing the first.
    deleting: std::sync::Mutex<HashSet<String>>,
    store: Store,
    backend: Arc<dyn SandboxBackend>,
    uid_range: UidRange,
    stderr: StderrHub,
    /// Places provisioned ahead of creates.
    ahead: ahead::Ahead,
    /// Sweeps finished so far.
    sweeps: AtomicU64,
    /// Who hears of deletions, pauses and started stdio processes (the bridge).
    listener: OnceLock<Weak<dyn LifecycleListener>>,
    /// Pauses and starts of one deployment run one at a time: a pause may replace the
    /// sandbox that a start would use.
    pauses_and_starts: KeyedLocks,
}

impl Deployments {
    /// The service over `store` and `backend`, with UIDs from `uid_range`; its background
    /// work (stderr followers) runs on `tracker` and stops with `stop`.
    pub fn new(
        store: Store,
        backend: Arc<dyn SandboxBackend>,
        uid_range: UidRange,
        tracker: TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        let stderr = StderrHub::new(store.clone(), backend.clone(), tracker, stop);
        Deployments {
            inner: Arc::new(Inner {
                deleting: std::sync::Mutex::default(),
                store,
                backend,
                uid_range,
                stderr,
                ahead: ahead::Ahead::default(),
                sweeps: AtomicU64::new(0),
                listener: OnceLock::new(),
                pauses_and_starts: KeyedLocks::default(),
            }),
        }
    }

    /// Sets who hears of deletions, pauses and started stdio processes (once; later calls
    /// are ignored).
    pub fn set_listener(&self, listener: Weak<dyn LifecycleListener>) {
        let _ = self.inner.listener.set(listener);
    }

    /// The listener, while it lives.
    fn listener(&self) -> Option<Arc<dyn LifecycleListener>> {
        self.inner.listener.get().and_then(Weak::upgrade)
    }

    /// A deployment visible through the API (running or stopped), with its live stderr.
    pub async fn get(&self, id: &str) -> Result<Deployment, DeployError> {
        match self.inner.store.get(id).await? {
            Some(d) if spec::visible(&d) => Ok(self.with_live_stderr(d)),
            _ => Err(DeployError::NotFound),
        }
    }

    /// Every visible deployment, oldest first.
    pub async fn list(&self) -> Result<Vec<Deployment>, DeployError> {
        let rows = self.inner.store.list().await?;
        Ok(rows
            .into_iter()
            .filter(spec::visible)
            .map(|d| self.with_live_stderr(d))
            .collect())
    }

    /// A deployment's stderr tail with the state of its process: whether it runs, and how
    /// its last run ended.
    pub async fn logs(&self, id: &str) -> Result<(Deployment, Option<SandboxState>), DeployError> {
        let d = self.get(id).await?;
        let state = match &d.container_id {
            Some(c) => self.inner.backend.state(c).await?,
            None => None,
        };
        Ok((d, state))
    }

    fn with_live_stderr(&self, mut d: Deployment) -> Deployment {
        if let Some(live) = self.inner.stderr.snapshot(&d.id) {
            d.stderr = live;
        }
        d
    }

    /// Starts following a running deployment's stderr from `since` (Unix seconds; 0 = all).
    fn follow(&self, d: &Deployment, since: i64) {
        if let Some(sandbox) = &d.container_id {
            self.inner.stderr.follow(&d.id, sandbox, &d.stderr, since);
        }
    }

    /// Whether the deployment's sandbox is known to run without asking the backend: its
    /// stderr follower is alive (it ends when the sandbox stops).
    pub fn known_running(&self, id: &str) -> bool {
        self.inner.stderr.is_following(id)
    }

    /// Records MCP traffic at `at`: the idle deadlines slide.
    pub async fn touch(&self, id: &str, at: Millis) -> Result<(), DeployError> {
        Ok(self.inner.store.touch(id, at).await?)
    }

    /// Rows the reaper may have to act on at `now`.
    pub async fn due(&self, now: Millis) -> Result<Vec<DueRow>, DeployError> {
        Ok(self.inner.store.due(now).await?)
    }

    /// Whether the backend answers.
    pub async fn ping(&self) -> Result<(), DeployError> {
        Ok(self.inner.backend.ping().await?)
    }

    /// The address of the running sandbox `sandbox` on `place`, `None` while it has none.
    pub async fn address(
        &self,
        sandbox: &str,
        place: &Place,
    ) -> Result<Option<IpAddr>, DeployError> {
        Ok(self.inner.backend.address(sandbox, place).await?)
    }

    /// Whether the sandbox `sandbox` runs now.
    pub async fn is_running(&self, sandbox: &str) -> Result<bool, DeployError> {
        let state = self.inner.backend.state(sandbox).await?;
        Ok(state.is_some_and(|s| s.running))
    }

    /// Requests made to the backend so far.
    pub fn backend_requests(&self) -> u64 {
        self.inner.backend.requests_made()
    }

    /// Sweeps finished so far.
    pub fn sweeps_done(&self) -> u64 {
        self.inner.sweeps.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;
