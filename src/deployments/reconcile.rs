//! Start-up reconciliation, both ways: what the backend holds that no row explains is
//! removed; rows whose sandbox vanished are deleted with the rest of their parts; the status
//! of every row is read again from its sandbox.

use std::collections::HashSet;

use tokio_util::sync::CancellationToken;

use super::spec::teardown_of;
use super::{DeployError, Deployments};
use crate::domain::{Status, now_millis};
use crate::runtime::OwnedKind;

/// How often a running mcp-runner sweeps what no row explains (see `Deployments::sweep`).
pub const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(300);

/// When the first sweep runs after start-up: by then the backend (Docker, `useradd`) has
/// finished what a killed predecessor asked of it after start-up reconciliation had looked.
pub const FIRST_SWEEP_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// What reconciliation did, for the log and for tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// Sandboxes (Docker: containers) without a row, removed.
    pub orphan_sandboxes: usize,
    /// Sandboxes of isolated deployments' sessions, removed (sessions end with a restart).
    pub session_sandboxes: usize,
    /// Places (Docker: networks) without a row, removed.
    pub orphan_places: usize,
    /// Places made ahead by an earlier run and never taken, removed.
    pub spare_places: usize,
    /// Identities (Docker: host accounts) of those places, deleted.
    pub spare_identities: usize,
    /// Identities without a row, deleted.
    pub orphan_identities: usize,
    /// Rows whose create was interrupted, undone.
    pub interrupted_creates: usize,
    /// Rows whose container was gone, deleted.
    pub vanished: usize,
    /// Deletions that were pending and are now finished.
    pub finished_deletes: usize,
    /// Rows found running (their stderr is followed again).
    pub running: usize,
    /// Rows found stopped.
    pub stopped: usize,
    /// Running stdio deployments: their processes are restarted attached once the bridge is
    /// up (their stdio belonged to the previous mcp-runner, their protocol state is unknown).
    pub stdio_to_restart: Vec<String>,
}

impl Deployments {
    /// Brings the backend and the database back in agreement.
    pub async fn reconcile(&self) -> Result<Reconciled, DeployError> {
        let mut report = Reconciled::default();
        let rows = self.inner.store.list().await?;
        let known: HashSet<&str> = rows
            .iter()
            .filter(|d| d.status != Status::Creating)
            .map(|d| d.id.as_str())
            .collect();

        // Interrupted creates first: their resources may be half made.
        for d in rows.iter().filter(|d| d.status == Status::Creating) {
            tracing::warn!(deployment.id = %d.id, "undoing a create interrupted by a restart");
            self.inner.backend.teardown(&teardown_of(d)).await?;
            self.inner.store.delete(&d.id).await?;
            report.interrupted_creates += 1;
        }

        let backend = &self.inner.backend;
        for o in backend.list_owned().await? {
            if matches!(o.kind, OwnedKind::Sandbox { session: Some(_) })
                && known.contains(o.deployment_id.as_str())
            {
                // Sessions do not survive a restart; neither do their sandboxes.
                tracing::info!(deployment.id = %o.deployment_id, container.id = %o.id, "removing the container of a session that ended with the restart");
                backend.remove_owned(&o).await?;
                report.session_sandboxes += 1;
            }
        }
        self.remove_unexplained(&mut report).await?;

        let since = now_millis() / 1000;
        for d in rows.iter().filter(|d| d.status != Status::Creating) {
            if d.status == Status::Deleting {
                match self.delete(&d.id).await {
                    Ok(()) | Err(DeployError::NotFound) => report.finished_deletes += 1,
                    Err(e) => {
                        tracing::warn!(deployment.id = %d.id, error = %e, "pending delete failed again; the reaper retries")
                    }
                }
                continue;
            }
            let state = match &d.container_id {
                Some(c) => backend.state(c).await?,
                None => None,
            };
            match state {
                None => {
                    tracing::warn!(
                        deployment.id = %d.id,
                        "the deployment's sandbox was removed outside mcp-runner; deleting the deployment"
                    );
                    self.delete(&d.id).await?;
                    report.vanished += 1;
                }
                Some(s) if s.running => {
                    self.inner.store.set_status(&d.id, Status::Running).await?;
                    if d.transport.is_stdio() {
                        report.stdio_to_restart.push(d.id.clone());
                    } else {
                        // The row holds the stderr saved before the restart; follow what is
                        // new.
                        self.follow(d, since);
                    }
                    report.running += 1;
                }
                Some(_) => {
                    self.inner.store.set_status(&d.id, Status::Stopped).await?;
                    report.stopped += 1;
                }
            }
        }
        tracing::info!(?report, "reconciliation done");
        Ok(report)
    }

    /// Removes what the backend holds of this instance that no row explains; run while
    /// mcp-runner serves (every `SWEEP_INTERVAL`, and when it stops). The backend may finish
    /// a request of a killed mcp-runner after the next one's start-up reconciliation looked:
    /// what such a request made is found here.
    pub async fn sweep(&self) -> Result<Reconciled, DeployError> {
        let mut report = Reconciled::default();
        self.remove_unexplained(&mut report).await?;
        self.inner
            .sweeps
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if report != Reconciled::default() {
            tracing::info!(?report, "sweep removed what no deployment explains");
        }
        Ok(report)
    }

    /// Removes what the backend holds of this instance whose deployment has no row and, for
    /// places and identities, is not one being provisioned ahead.
    async fn remove_unexplained(&self, report: &mut Reconciled) -> Result<(), DeployError> {
        let backend = &self.inner.backend;
        let owned = backend.list_owned().await?;
        // Read after the listing: anything made since was made after its row was written or
        // its id reserved, and anything listed that was reserved and is not any more has its
        // row by now (a create writes its row before it releases the reservation).
        let mut known = self.inner.ahead.reserved_ids();
        known.extend(self.inner.store.list().await?.into_iter().map(|d| d.id));
        let mut unexplained: Vec<_> = owned
            .into_iter()
            .filter(|o| !known.contains(&o.deployment_id))
            .collect();
        // Sandboxes first (a place is busy while they are on it), identities last (one of a
        // spare's place counts as a spare's).
        unexplained.sort_by_key(|o| match o.kind {
            OwnedKind::Sandbox { .. } => 0,
            OwnedKind::Place { .. } => 1,
            OwnedKind::Identity => 2,
        });
        let mut spare_ids = HashSet::new();
        for o in &unexplained {
            match o.kind {
                OwnedKind::Sandbox { .. } => {
                    tracing::warn!(deployment.id = %o.deployment_id, container.id = %o.id, "removing a container that has no deployment");
                    report.orphan_sandboxes += 1;
                }
                OwnedKind::Place { ahead: true } => {
                    spare_ids.insert(o.deployment_id.clone());
                    tracing::info!(network.id = %o.id, "removing a network made ahead and never taken");
                    report.spare_places += 1;
                }
                OwnedKind::Place { ahead: false } => {
                    tracing::warn!(deployment.id = %o.deployment_id, network.id = %o.id, "removing a network that has no deployment");
                    report.orphan_places += 1;
                }
                OwnedKind::Identity if spare_ids.contains(&o.deployment_id) => {
                    tracing::info!(user = %o.id, "deleting the host user of a spare never taken");
                    report.spare_identities += 1;
                }
                OwnedKind::Identity => {
                    tracing::warn!(deployment.id = %o.deployment_id, user = %o.id, "deleting a host user that has no deployment");
                    report.orphan_identities += 1;
                }
            }
            backend.remove_owned(o).await?;
        }
        Ok(())
    }

    /// Sweeps `FIRST_SWEEP_AFTER` start-up, then every `every`, until `stop` is cancelled;
    /// a failed sweep waits for the next.
    pub async fn keep_swept(self, every: std::time::Duration, stop: CancellationToken) {
        let mut wait = FIRST_SWEEP_AFTER;
        let mut first = true;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            match self.sweep().await {
                Ok(report) if first => tracing::info!(?report, "start-up sweep done"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "sweep failed; the next one retries"),
            }
            wait = every;
            first = false;
        }
    }
}
