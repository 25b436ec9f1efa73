//! The sandboxes of an isolated deployment's sessions: one per MCP session, made and started
//! on `initialize` with the deployment's spec, place and identity, removed when the session
//! ends. Their stderr joins the deployment's tail, each line marked with its session.

use crate::domain::Deployment;
use crate::runtime::Attached;

use super::spec::{place_of, spec_of};
use super::{DeployError, Deployments};

impl Deployments {
    /// Makes and starts the sandbox of session `session_id` of the isolated deployment `d`;
    /// with `attach`, its stdio is attached before the start so that nothing is missed.
    /// Returns the sandbox and its stdio.
    pub async fn start_session(
        &self,
        d: &Deployment,
        session_id: &str,
        attach: bool,
    ) -> Result<(String, Option<Attached>), DeployError> {
        let backend = &self.inner.backend;
        let place = place_of(d).ok_or(DeployError::NotFound)?;
        let spec = spec_of(d, Some(session_id.to_owned()));
        let created = backend.create(&spec, Some(&place), false).await?;
        let started = backend.start(&spec, &created.sandbox, &place, attach).await;
        let mut started = match started {
            Ok(Some(started)) => started,
            failed => {
                let _ = backend.remove_sandbox(&created.sandbox).await;
                return Err(match failed {
                    Err(e) => e.into(),
                    Ok(_) => DeployError::NotFound,
                });
            }
        };
        tracing::info!(deployment.id = %d.id, session.id = %session_id, "session container started");
        // Its stderr joins the deployment's tail: from the attachment for a stdio server
        // (the hub reads only stdout), from the backend's log otherwise.
        let stderr = match &mut started.attached {
            Some(a) => a.take_stderr(),
            None => backend.stderr(&started.sandbox, 0),
        };
        self.inner
            .stderr
            .follow_session(&d.id, session_id, &d.stderr, stderr);
        Ok((started.sandbox, started.attached))
    }

    /// Removes a session's sandbox (its session ended).
    pub async fn remove_session(&self, sandbox: &str) -> Result<(), DeployError> {
        Ok(self.inner.backend.remove_sandbox(sandbox).await?)
    }
}
