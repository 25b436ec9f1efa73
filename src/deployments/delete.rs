//! Delete: the row becomes `deleting`, the bridge ends the deployment's sessions, the backend
//! removes every part (parts already gone are fine), then the row goes. When a step fails the
//! row stays `deleting` and the reaper retries.

use crate::domain::Status;
use crate::metrics::METRICS;

use super::spec::teardown_of;
use super::{DeployError, Deployments, Inner, failure_reason};

impl Deployments {
    /// Deletes a deployment: stop (grace period, then kill), remove its sandbox, place and
    /// identity, then the row.
    pub async fn delete(&self, id: &str) -> Result<(), DeployError> {
        let started = std::time::Instant::now();
        let deleted = self.remove(id).await;
        match &deleted {
            Ok(()) => METRICS
                .delete_seconds
                .observe(started.elapsed().as_secs_f64()),
            Err(DeployError::NotFound) => {}
            Err(e) => METRICS.failure("delete", failure_reason(e)),
        }
        deleted
    }

    async fn remove(&self, id: &str) -> Result<(), DeployError> {
        let Some(_guard) = DeletionGuard::claim(&self.inner, id) else {
            return Err(DeployError::NotFound);
        };
        let Some(d) = self.inner.store.mark_deleting(id).await? else {
            return Err(DeployError::NotFound);
        };
        if let Some(listener) = self.listener() {
            listener.deleting(id);
        }
        self.inner.stderr.stop(id);
        self.inner.backend.teardown(&teardown_of(&d)).await?;
        if self.inner.store.delete(id).await? {
            tracing::info!(deployment.id = %id, "deployment deleted");
            // Its place is free: a refill that found none may go on.
            self.inner.ahead.wake();
            Ok(())
        } else {
            // A concurrent delete finished first.
            Err(DeployError::NotFound)
        }
    }

    /// Deletes every deployment (shutdown with `--cleanup-on-shutdown`).
    pub async fn delete_all(&self) {
        let rows = match self.inner.store.list().await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, "cannot list deployments to clean up");
                return;
            }
        };
        let deletions = rows
            .iter()
            .filter(|d| d.status != Status::Creating)
            .map(|d| async move {
                if let Err(e) = self.delete(&d.id).await {
                    tracing::error!(deployment.id = %d.id, error = %e, "cleanup on shutdown failed");
                }
            });
        futures_util::future::join_all(deletions).await;
    }
}

/// Marks a deployment as being deleted by this task until dropped.
struct DeletionGuard<'a> {
    inner: &'a Inner,
    id: String,
}

impl<'a> DeletionGuard<'a> {
    fn claim(inner: &'a Inner, id: &str) -> Option<Self> {
        let mut set = inner.deleting.lock().unwrap_or_else(|p| p.into_inner());
        set.insert(id.to_owned()).then(|| DeletionGuard {
            inner,
            id: id.to_owned(),
        })
    }
}

impl Drop for DeletionGuard<'_> {
    fn drop(&mut self) {
        let mut set = self
            .inner
            .deleting
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        set.remove(&self.id);
    }
}
