//! Start-up reconciliation, both ways: what Docker and the host have that no row explains is
//! removed; rows whose container vanished are deleted with the rest of their resources; the
//! status of every row is read again from its container.

use std::collections::HashSet;

use tokio_util::sync::CancellationToken;

use super::{DeployError, Deployments};
use crate::domain::{Status, now_millis};

/// How often a running mcp-runner sweeps what no row explains (see `Deployments::sweep`).
pub const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(300);

/// When the first sweep runs after start-up: by then Docker and `useradd` have finished what
/// a killed predecessor asked of them after start-up reconciliation had looked.
pub const FIRST_SWEEP_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// What reconciliation did, for the log and for tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// Containers without a row, removed.
    pub orphan_containers: usize,
    /// Per-session containers of isolated deployments, removed (sessions end with a restart).
    pub session_containers: usize,
    /// Networks without a row, removed.
    pub orphan_networks: usize,
    /// Spares' networks (made ahead by an earlier run, never taken), removed.
    pub spare_networks: usize,
    /// Spares' host users (of deployment ids a spare's network carried), deleted.
    pub spare_users: usize,
    /// Host users without a row, deleted.
    pub orphan_users: usize,
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
    /// Brings Docker, the host users and the database back in agreement.
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
            self.teardown(d).await?;
            self.inner.store.delete(&d.id).await?;
            report.interrupted_creates += 1;
        }

        let rt = &self.inner.runtime;
        for c in rt.list_containers().await? {
            if c.session.is_some() && known.contains(c.deployment_id.as_str()) {
                // Sessions do not survive a restart; neither do their containers.
                tracing::info!(deployment.id = %c.deployment_id, container.id = %c.id, "removing the container of a session that ended with the restart");
                rt.remove_container(&c.id).await?;
                report.session_containers += 1;
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
                Some(c) => rt.container_state(c).await?,
                None => None,
            };
            match state {
                None => {
                    tracing::warn!(
                        deployment.id = %d.id,
                        "the deployment's container was removed outside mcp-runner; deleting the deployment"
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

    /// Removes what Docker and the host have of this instance that no row explains; run
    /// while mcp-runner serves (every `SWEEP_INTERVAL`, and when it stops). Docker may finish
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

    /// Sweeps finished so far.
    pub fn sweeps_done(&self) -> u64 {
        self.inner.sweeps.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Removes the containers, networks and host users of this instance whose deployment
    /// has no row and, for networks, is not one being made ahead.
    async fn remove_unexplained(&self, report: &mut Reconciled) -> Result<(), DeployError> {
        let rt = &self.inner.runtime;
        let containers = rt.list_containers().await?;
        let networks = rt.list_networks().await?;
        let users = self.inner.users.list().await?;
        // Read after the listings: anything made since was made after its row was written
        // or its id reserved, and anything listed that was reserved and is not any more
        // has its row by now (a create writes its row before it releases the reservation).
        let mut known = self.inner.spares.reserved_ids();
        known.extend(self.inner.store.list().await?.into_iter().map(|d| d.id));

        for c in containers {
            if !known.contains(&c.deployment_id) {
                tracing::warn!(deployment.id = %c.deployment_id, container.id = %c.id, "removing a container that has no deployment");
                rt.remove_container(&c.id).await?;
                report.orphan_containers += 1;
            }
        }
        let mut spare_ids = HashSet::new();
        for n in networks {
            if known.contains(&n.deployment_id) {
                continue;
            }
            if n.made_ahead {
                spare_ids.insert(n.deployment_id.clone());
                tracing::info!(network.id = %n.id, "removing a network made ahead and never taken");
                report.spare_networks += 1;
            } else {
                tracing::warn!(deployment.id = %n.deployment_id, network.id = %n.id, "removing a network that has no deployment");
                report.orphan_networks += 1;
            }
            rt.remove_network(&n.id).await?;
        }
        for u in users {
            if known.contains(&u.deployment_id) {
                continue;
            }
            if spare_ids.contains(&u.deployment_id) {
                tracing::info!(user = %u.name, "deleting the host user of a spare never taken");
                report.spare_users += 1;
            } else {
                tracing::warn!(deployment.id = %u.deployment_id, user = %u.name, "deleting a host user that has no deployment");
                report.orphan_users += 1;
            }
            self.inner.users.delete(&u.name).await?;
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
