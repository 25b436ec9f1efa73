//! Start-up reconciliation, both ways: what Docker and the host have that no row explains is
//! removed; rows whose container vanished are deleted with the rest of their resources; the
//! status of every row is read again from its container.

use std::collections::HashSet;

use super::{DeployError, Deployments};
use crate::domain::{Status, now_millis};

/// What reconciliation did, for the log and for tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// Containers without a row, removed.
    pub orphan_containers: usize,
    /// Per-session containers of isolated deployments, removed (sessions end with a restart).
    pub session_containers: usize,
    /// Networks without a row, removed.
    pub orphan_networks: usize,
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
            } else if !known.contains(c.deployment_id.as_str()) {
                tracing::warn!(deployment.id = %c.deployment_id, container.id = %c.id, "removing a container that has no deployment");
                rt.remove_container(&c.id).await?;
                report.orphan_containers += 1;
            }
        }
        for n in rt.list_networks().await? {
            if !known.contains(n.deployment_id.as_str()) {
                tracing::warn!(deployment.id = %n.deployment_id, network.id = %n.id, "removing a network that has no deployment");
                rt.remove_network(&n.id).await?;
                report.orphan_networks += 1;
            }
        }
        for u in self.inner.users.list().await? {
            if !known.contains(u.deployment_id.as_str()) {
                tracing::warn!(deployment.id = %u.deployment_id, user = %u.name, "deleting a host user that has no deployment");
                self.inner.users.delete(&u.name).await?;
                report.orphan_users += 1;
            }
        }

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
}
