//! Starts and pauses. Both run on a task of their own, so that a client that hangs up cannot
//! cut one in half, and one at a time per deployment. A backend may replace a stopped
//! sandbox on the way (see `runtime`); the replacement is recorded in the row before the
//! backend lets the old sandbox go.

use crate::domain::{Deployment, Status, now_millis};
use crate::runtime::{Attached, Replacement, RuntimeError};

use super::spec::{place_of, spec_of};
use super::{DeployError, Deployments};

/// Runs `work` on a task of its own and waits for it: it runs to its end even when the
/// caller goes away.
async fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T, DeployError>> + Send + 'static,
) -> Result<T, DeployError> {
    tokio::spawn(work).await.unwrap_or_else(|e| {
        Err(DeployError::Runtime(RuntimeError::Host {
            op: "finish a start or pause",
            reason: e.to_string(),
        }))
    })
}

impl Deployments {
    /// Starts the sandbox of a deployment (the bridge calls this on demand): status
    /// `running`, stderr followed from now. A running sandbox is left as it is.
    pub async fn start(&self, id: &str) -> Result<Deployment, DeployError> {
        let (this, id) = (self.clone(), id.to_owned());
        detached(async move {
            let locks = &this.inner.pauses_and_starts;
            locks.with(&id, this.start_now(&id)).await
        })
        .await
    }

    async fn start_now(&self, id: &str) -> Result<Deployment, DeployError> {
        let mut d = self.get(id).await?;
        let sandbox = d.container_id.clone().ok_or(DeployError::NotFound)?;
        let place = place_of(&d).ok_or(DeployError::NotFound)?;
        let started = self
            .inner
            .backend
            .start(&spec_of(&d, None), &sandbox, &place, false)
            .await?
            .ok_or(DeployError::NotFound)?;
        let now = self
            .settle(&d, started.sandbox, started.replacement)
            .await?;
        if d.status != Status::Running || now != sandbox {
            tracing::info!(deployment.id = %id, "container started on demand");
        }
        d.container_id = Some(now);
        self.inner.store.set_status(id, Status::Running).await?;
        if self.inner.stderr.snapshot(id).is_none() {
            self.follow(&d, now_millis() / 1000);
        }
        d.status = Status::Running;
        Ok(d)
    }

    /// Starts the process of a stdio deployment afresh and attached: one that runs already
    /// (started before a restart of mcp-runner: its protocol state is unknown) is stopped
    /// first. Status `running`; stderr is followed from the attachment; stdin and stdout are
    /// returned. The new tail starts from `d.stderr`, which `get` filled with the live tail.
    pub async fn start_stdio(&self, d: &Deployment) -> Result<Attached, DeployError> {
        let (this, d) = (self.clone(), d.clone());
        detached(async move {
            let locks = &this.inner.pauses_and_starts;
            locks
                .with(&d.id, async {
                    // A pause that ran while this waited may have replaced the sandbox.
                    let now = this
                        .inner
                        .store
                        .get(&d.id)
                        .await?
                        .ok_or(DeployError::NotFound)?;
                    this.start_stdio_now(&Deployment {
                        container_id: now.container_id,
                        status: now.status,
                        ..d.clone()
                    })
                    .await
                })
                .await
        })
        .await
    }

    async fn start_stdio_now(&self, d: &Deployment) -> Result<Attached, DeployError> {
        let sandbox = d.container_id.clone().ok_or(DeployError::NotFound)?;
        let place = place_of(d).ok_or(DeployError::NotFound)?;
        // A follower of a process that ran before must not record the stop that comes.
        self.inner.stderr.stop(&d.id);
        let started = self
            .inner
            .backend
            .start(&spec_of(d, None), &sandbox, &place, true)
            .await?
            .ok_or(DeployError::NotFound)?;
        let sandbox = self.settle(d, started.sandbox, started.replacement).await?;
        let mut attached = started.attached.ok_or_else(|| {
            DeployError::Runtime(RuntimeError::Rejected {
                message: "the backend started the process without its stdio".to_owned(),
            })
        })?;
        self.inner.store.set_status(&d.id, Status::Running).await?;
        let stderr = attached.take_stderr();
        self.inner
            .stderr
            .follow_stream(&d.id, &sandbox, &d.stderr, stderr);
        tracing::info!(deployment.id = %d.id, "stdio process started");
        Ok(attached)
    }

    /// Starts a stdio deployment's process and hands its pipes to the listener.
    pub(super) async fn start_owned_stdio(&self, d: &Deployment) -> Result<(), DeployError> {
        let attached = self.start_stdio(d).await?;
        match self.listener() {
            Some(listener) => listener.stdio_started(d, attached),
            None => tracing::warn!(deployment.id = %d.id, "no bridge takes the process's stdio"),
        }
        Ok(())
    }

    /// Stops the sandbox of an idle deployment; the row keeps status `stopped`.
    pub async fn pause(&self, id: &str) -> Result<(), DeployError> {
        let (this, id) = (self.clone(), id.to_owned());
        detached(async move {
            let locks = &this.inner.pauses_and_starts;
            locks.with(&id, this.pause_now(&id)).await
        })
        .await
    }

    async fn pause_now(&self, id: &str) -> Result<(), DeployError> {
        let Some(d) = self.inner.store.get(id).await? else {
            return Err(DeployError::NotFound);
        };
        if d.status != Status::Running {
            return Ok(());
        }
        if let Some(listener) = self.listener() {
            listener.paused(id);
        }
        if let (Some(sandbox), Some(place)) = (&d.container_id, place_of(&d)) {
            let replacement = self
                .inner
                .backend
                .pause(&spec_of(&d, None), sandbox, &place)
                .await?;
            self.settle(&d, sandbox.clone(), replacement).await?;
        }
        self.inner.stderr.stop(id);
        self.inner.store.set_status(id, Status::Stopped).await?;
        tracing::info!(deployment.id = %id, "deployment paused after idling");
        Ok(())
    }

    /// Records a replacement the backend made, then lets it commit; a row that is being
    /// deleted (or cannot be written) aborts it. Returns the sandbox the row names now.
    pub(super) async fn settle(
        &self,
        d: &Deployment,
        sandbox: String,
        replacement: Option<Replacement>,
    ) -> Result<String, DeployError> {
        let Some(r) = replacement else {
            return Ok(sandbox);
        };
        let backend = &self.inner.backend;
        match self.inner.store.set_container(&d.id, &r.new).await {
            Ok(true) => {
                // The row names the new sandbox now: what the commit could not remove is
                // left to the deletion (by name) and the sweep, not an error of this start.
                if let Err(e) = backend.commit(&r).await {
                    tracing::warn!(deployment.id = %d.id, error = %e, "cannot remove what the replaced sandbox left; the deletion or the sweep removes it");
                }
                Ok(r.new)
            }
            recorded => {
                backend.abort(&r).await;
                Err(match recorded {
                    Err(e) => e.into(),
                    // Being deleted: the deletion removes the old sandbox.
                    Ok(_) => DeployError::NotFound,
                })
            }
        }
    }
}
