//! Create: row first (status `creating`, with a UID no one else holds), then the sandbox and
//! its place, then the start. Any failure removes what was made, and the row.

use crate::domain::{Deployment, SessionMode, Status, now_millis};
use crate::metrics::METRICS;
use crate::runtime::{Created, RuntimeError};
use crate::store::StoreError;

use super::spec::{NewDeployment, new_id, pick_uid, place_of, spec_of, teardown_of, username_of};
use super::{DeployError, Deployments, failure_reason};

/// How many times a create picks another UID after a concurrent create took the one it
/// picked.
const UID_ATTEMPTS: usize = 16;

impl Deployments {
    /// Creates a deployment: row, image, place, sandbox, and start when asked. Any failure
    /// removes everything made so far, the row included.
    pub async fn create(&self, req: NewDeployment) -> Result<Deployment, DeployError> {
        let started = std::time::Instant::now();
        let created = self.make(req).await;
        match &created {
            Ok(_) => METRICS
                .create_seconds
                .observe(started.elapsed().as_secs_f64()),
            Err(e) => METRICS.failure("create", failure_reason(e)),
        }
        created
    }

    async fn make(&self, req: NewDeployment) -> Result<Deployment, DeployError> {
        let ahead = self.inner.ahead.take().await;
        let now = now_millis();
        let id = ahead
            .as_ref()
            .map_or_else(new_id, |a| a.identity.deployment_id.clone());
        let uid = ahead.as_ref().map_or(0, |a| a.identity.uid);
        let mut d = Deployment {
            username: username_of(&id),
            id,
            status: Status::Creating,
            container_id: None,
            network_id: ahead.as_ref().map(|a| a.place.network.clone()),
            image: req.image,
            uid,
            gid: uid,
            max_memory: req.max_memory,
            max_cpus: req.max_cpus,
            args: req.args,
            env: req.env,
            metadata: req.metadata,
            transport: req.transport,
            session_mode: req.session_mode,
            stderr: String::new(),
            pause_after_seconds: req.pause_after_seconds,
            delete_after_seconds: req.delete_after_seconds,
            pause_at: None,
            delete_at: None,
            created_at: now,
            last_interaction_at: now,
        };
        (d.pause_at, d.delete_at) = d.deadlines();
        let inserted = self.insert_with_uid(&mut d).await;
        // The place made ahead is in the row now, or its parts must go.
        let ahead_used = match &ahead {
            Some(a) if inserted.is_err() || d.network_id.is_none() => {
                self.discard(a).await;
                false
            }
            Some(a) => {
                self.inner.ahead.release(&a.identity.deployment_id);
                true
            }
            None => false,
        };
        inserted?;
        tracing::info!(deployment.id = %d.id, image = %d.image, uid = d.uid, spare = ahead_used, "creating deployment");

        match self.build(&d, req.auto_start, ahead_used).await {
            Ok(created) => {
                d.status = if req.auto_start && d.session_mode == SessionMode::Shared {
                    Status::Running
                } else {
                    Status::Stopped
                };
                let recorded = self
                    .inner
                    .store
                    .set_resources(&d.id, &created.sandbox, &created.place.network, d.status)
                    .await;
                d.container_id = Some(created.sandbox);
                d.network_id = Some(created.place.network);
                if let Err(e) = recorded {
                    self.undo(&d).await;
                    return Err(e.into());
                }
                if d.status == Status::Running {
                    if d.transport.is_stdio() {
                        // Started attached, so that the bridge owns its stdio from the
                        // first byte and needs no restart on the first request.
                        if let Err(e) = self.start_owned_stdio(&d).await {
                            tracing::warn!(deployment.id = %d.id, error = %e, "start failed; undoing the create");
                            self.undo(&d).await;
                            return Err(e);
                        }
                    } else {
                        self.follow(&d, 0);
                    }
                }
                tracing::info!(deployment.id = %d.id, status = d.status.as_str(), "deployment created");
                Ok(d)
            }
            Err(e) => {
                tracing::warn!(deployment.id = %d.id, error = %e, "create failed; undoing it");
                self.undo(&d).await;
                Err(e)
            }
        }
    }

    /// Picks a free UID (not in a row, not used on the backend's hosts, not a place's made
    /// ahead) unless the deployment has a place made ahead (its network id is set), and
    /// inserts the row with it. The UNIQUE constraint settles races between concurrent
    /// creates: the loser picks again.
    async fn insert_with_uid(&self, d: &mut Deployment) -> Result<(), DeployError> {
        for _ in 0..UID_ATTEMPTS {
            if d.network_id.is_none() {
                d.uid = self.free_uid().await?;
                d.gid = d.uid;
            }
            match self.inner.store.insert(d).await {
                Ok(()) => return Ok(()),
                Err(StoreError::Taken("uid")) if d.network_id.is_some() => {
                    // A row holds the UID of the place made ahead (a create picked it while
                    // the place was being made): pick afresh, and make the place here.
                    d.network_id = None;
                }
                Err(StoreError::Taken("uid")) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(RuntimeError::Host {
            op: "allocate a UID",
            reason: "too many concurrent allocations collided".to_owned(),
        }
        .into())
    }

    /// A free UID of the range: no row's, none the backend's hosts use, no place's made
    /// ahead.
    pub(super) async fn free_uid(&self) -> Result<u32, DeployError> {
        let mut used = self.inner.backend.taken_ids().await?;
        used.extend(self.inner.store.used_uids().await?);
        used.extend(self.inner.ahead.reserved_uids());
        let range = self.inner.uid_range;
        Ok(
            pick_uid(range, &used).ok_or_else(|| RuntimeError::Exhausted {
                reason: "uids_exhausted",
                message: format!("the UID range {}-{} is exhausted", range.first, range.last),
                advice: "delete deployments or widen UID_RANGE".to_owned(),
            })?,
        )
    }

    /// Makes the sandbox (and its place, unless made ahead), and starts a non-stdio server
    /// that should run. An isolated deployment's own sandbox is the template of its sessions'
    /// and never runs itself; a stdio process is started attached once its row is recorded.
    async fn build(
        &self,
        d: &Deployment,
        start: bool,
        ahead: bool,
    ) -> Result<Created, DeployError> {
        let backend = &self.inner.backend;
        let starts_now = start && d.session_mode == SessionMode::Shared;
        let place = if ahead { place_of(d) } else { None };
        let spec = spec_of(d, None);
        let mut created = backend.create(&spec, place.as_ref(), starts_now).await?;
        if starts_now && !d.transport.is_stdio() {
            // On failure the create is undone by names: the row does not hold the ids yet.
            let started = backend
                .start(&spec, &created.sandbox, &created.place, false)
                .await?
                .ok_or(DeployError::NotFound)?;
            // A replacement (the backend could not start the sandbox as made) needs no
            // record yet: the row is `creating`, and nothing else acts on it.
            if let Some(r) = &started.replacement {
                backend.commit(r).await?;
            }
            created.sandbox = started.sandbox;
        }
        Ok(created)
    }

    /// Removes whatever of a failed create exists, then its row. When that fails (the
    /// backend went away: the cause of many failed creates) the row becomes `deleting`, and
    /// the reaper retries the deletion until it succeeds.
    pub(super) async fn undo(&self, d: &Deployment) {
        match self.inner.backend.teardown(&teardown_of(d)).await {
            Ok(()) => {
                if let Err(e) = self.inner.store.delete(&d.id).await {
                    tracing::error!(deployment.id = %d.id, error = %e, "cannot delete the row of a failed create");
                }
            }
            Err(e) => {
                tracing::error!(deployment.id = %d.id, error = %e, "cannot undo a failed create; the reaper will retry");
                if let Err(e) = self.inner.store.set_deleting(&d.id).await {
                    tracing::error!(deployment.id = %d.id, error = %e, "cannot hand a failed create to the reaper; start-up reconciliation will undo it");
                }
            }
        }
    }
}
