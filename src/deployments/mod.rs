//! Deployments: the orchestration of store and runtime. Create is all-or-nothing, delete
//! tolerates parts already gone, and the database stays the truth.

mod reconcile;
mod spares;
pub mod stderr;

pub use reconcile::{FIRST_SWEEP_AFTER, Reconciled, SWEEP_INTERVAL};
pub use spares::Spare;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use futures_util::StreamExt;
use rand::seq::IndexedRandom;

use crate::config::UidRange;
use crate::domain::{Deployment, SessionMode, Status, Transport, now_millis};
use crate::metrics::METRICS;
use crate::runtime::{
    Attached, ContainerState, FailureKind, HostUsers, Runtime, RuntimeError, SandboxSpec,
    object_name,
};
use crate::store::{Store, StoreError};
use crate::subnet::SubnetPool;
use stderr::StderrHub;

/// Grace period between SIGTERM and SIGKILL when a container is stopped.
pub const STOP_GRACE_SECS: i32 = 10;

/// A validated create request.
#[derive(Debug, Clone)]
pub struct NewDeployment {
    /// Image reference.
    pub image: String,
    /// Container command.
    pub args: Option<Vec<String>>,
    /// Container environment.
    pub env: BTreeMap<String, String>,
    /// Memory limit in MB.
    pub max_memory: Option<u64>,
    /// CPU limit in cores.
    pub max_cpus: Option<f64>,
    /// Idle time before stop.
    pub pause_after_seconds: Option<u64>,
    /// Idle time before deletion.
    pub delete_after_seconds: Option<u64>,
    /// Start the container now.
    pub auto_start: bool,
    /// Caller's metadata.
    pub metadata: serde_json::Value,
    /// Upstream transport.
    pub transport: Transport,
    /// How sessions share the server.
    pub session_mode: SessionMode,
}

/// What can go wrong with a deployment operation.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// No such deployment.
    #[error("Deployment not found")]
    NotFound,
    /// Docker or a host command failed.
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
        DeployError::Runtime(r) => match r {
            RuntimeError::Pull {
                not_found: true, ..
            } => "image_not_found",
            RuntimeError::Pull { .. } => "image_pull",
            RuntimeError::UidsExhausted { .. } => "uids_exhausted",
            RuntimeError::SubnetsExhausted { .. } => "subnets_exhausted",
            RuntimeError::User { .. } => "host_user",
            RuntimeError::Connect(_) => "docker_unreachable",
            RuntimeError::Docker { .. } => match r.kind() {
                FailureKind::Unreachable => "docker_unreachable",
                _ => "docker_rejected",
            },
        },
    }
}

/// The deployments service, shared by the API, the reaper and (later) the bridge.
#[derive(Clone)]
pub struct Deployments {
    inner: Arc<Inner>,
}

/// What happened to a deployment, for the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lifecycle {
    /// Deletion started: its sessions end.
    Deleting(String),
    /// Its container was stopped for idleness.
    Paused(String),
}

struct Inner {
    events: tokio::sync::broadcast::Sender<Lifecycle>,
    /// Deployments being deleted now: a second deleter (the reaper retrying a `deleting`
    /// row, a repeated DELETE) stands back instead of racing the first.
    deleting: std::sync::Mutex<HashSet<String>>,
    store: Store,
    runtime: Runtime,
    users: HostUsers,
    uid_range: UidRange,
    pool: SubnetPool,
    stderr: StderrHub,
    /// Networks made ahead of creates.
    spares: spares::Spares,
    /// Sweeps finished so far.
    sweeps: std::sync::atomic::AtomicU64,
    /// Who takes the stdin and stdout of a stdio process started here (the bridge).
    stdio_owner: std::sync::OnceLock<StdioOwner>,
    /// Pauses and starts of one deployment run one at a time: a pause may replace the
    /// container that a start would use (see `leave_holder`).
    pauses_and_starts: crate::runtime::KeyedLocks,
}

/// Takes over the stdio pipes of a deployment's freshly started process.
pub type StdioOwner = Box<dyn Fn(&Deployment, Attached) + Send + Sync>;

impl Deployments {
    /// The service over `store` and `runtime`, following stderr through `stderr`.
    pub fn new(
        store: Store,
        runtime: Runtime,
        users: HostUsers,
        uid_range: UidRange,
        pool: SubnetPool,
        stderr: StderrHub,
    ) -> Self {
        Deployments {
            inner: Arc::new(Inner {
                events: tokio::sync::broadcast::channel(1024).0,
                deleting: std::sync::Mutex::default(),
                store,
                runtime,
                users,
                uid_range,
                pool,
                stderr,
                spares: spares::Spares::default(),
                sweeps: std::sync::atomic::AtomicU64::new(0),
                stdio_owner: std::sync::OnceLock::new(),
                pauses_and_starts: crate::runtime::KeyedLocks::default(),
            }),
        }
    }

    /// Sets who takes the stdio pipes of processes started by a create (once; later calls
    /// are ignored).
    pub fn set_stdio_owner(&self, owner: StdioOwner) {
        let _ = self.inner.stdio_owner.set(owner);
    }

    /// Deployment life-cycle events (deletions, pauses).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Lifecycle> {
        self.inner.events.subscribe()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The runtime.
    pub fn runtime(&self) -> &Runtime {
        &self.inner.runtime
    }

    /// Creates a deployment: row, image, network, user, container, and start when asked.
    /// Any failure removes everything made so far, the row included.
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
        let spare = self.inner.spares.take().await;
        let now = now_millis();
        let id = spare
            .as_ref()
            .map_or_else(new_id, |s| s.deployment_id.clone());
        let mut d = Deployment {
            username: username_of(&id),
            id,
            status: Status::Creating,
            container_id: None,
            network_id: spare.as_ref().map(|s| s.network_id.clone()),
            subnet: spare.as_ref().map(|s| s.subnet.clone()),
            image: req.image,
            uid: spare.as_ref().map_or(0, |s| s.uid),
            gid: spare.as_ref().map_or(0, |s| s.uid),
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
        let inserted = self.insert_with_ids(&mut d).await;
        // The spare's subnet and UID are in the row now, or its parts must go.
        let spare_used = match &spare {
            Some(spare) if inserted.is_err() || d.network_id.is_none() => {
                self.discard(spare).await;
                false
            }
            Some(spare) => {
                self.inner.spares.release(&spare.deployment_id);
                true
            }
            None => false,
        };
        inserted?;
        tracing::info!(deployment.id = %d.id, image = %d.image, uid = d.uid, spare = spare_used, "creating deployment");
        let holder = spare.filter(|_| spare_used).and_then(|s| s.holder);

        match self.build(&mut d, req.auto_start, holder).await {
            Ok((container_id, network_id)) => {
                d.status = if req.auto_start && d.session_mode == SessionMode::Shared {
                    Status::Running
                } else {
                    Status::Stopped
                };
                let recorded = self
                    .inner
                    .store
                    .set_resources(&d.id, &container_id, &network_id, d.status)
                    .await;
                d.container_id = Some(container_id);
                d.network_id = Some(network_id);
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

    /// Picks a free UID (not in a row, not on the host, not a spare's) and a free subnet of
    /// the network pool, unless the deployment has a spare's (its network id is set), and
    /// inserts the row with them. UNIQUE constraints settle races between concurrent
    /// creates: the loser picks again.
    async fn insert_with_ids(&self, d: &mut Deployment) -> Result<(), DeployError> {
        for _ in 0..16 {
            if d.network_id.is_none() {
                d.subnet = Some(self.free_subnet(&self.taken_subnets().await?)?);
                d.uid = self.free_uid().await?;
                d.gid = d.uid;
            }
            match self.inner.store.insert(d).await {
                Ok(()) => return Ok(()),
                Err(StoreError::Taken("uid" | "subnet")) if d.network_id.is_some() => {
                    // A row holds the subnet or UID of the spare (a create picked it while
                    // the spare was being made): pick afresh, and make the parts here.
                    d.network_id = None;
                    continue;
                }
                Err(StoreError::Taken("uid" | "subnet")) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(RuntimeError::User {
            op: "allocate a UID",
            reason: "too many concurrent allocations collided".to_owned(),
        }
        .into())
    }

    /// A free UID of the range: no row's, no host user's or group's, no spare's.
    async fn free_uid(&self) -> Result<u32, DeployError> {
        let mut used = self.inner.users.used_ids().await?;
        used.extend(self.inner.store.used_uids().await?);
        used.extend(self.inner.spares.reserved_uids());
        let range = self.inner.uid_range;
        Ok(pick_uid(range, &used).ok_or(RuntimeError::UidsExhausted {
            first: range.first,
            last: range.last,
        })?)
    }

    /// The subnets that rows and spares hold.
    async fn taken_subnets(&self) -> Result<HashSet<String>, DeployError> {
        let mut taken: HashSet<String> =
            self.inner.store.used_subnets().await?.into_iter().collect();
        taken.extend(self.inner.spares.reserved_subnets());
        Ok(taken)
    }

    /// A subnet of the pool not in `avoid`.
    fn free_subnet(&self, avoid: &HashSet<String>) -> Result<String, RuntimeError> {
        let pool = self.inner.pool;
        pool.pick(avoid).ok_or(RuntimeError::SubnetsExhausted {
            pool: pool.to_string(),
        })
    }

    /// Makes the image, network, user and container (a deployment whose network id is set
    /// took a spare: its network and user are made); returns (container id, network id).
    /// A container started now joins the namespace of the spare's network `holder` when
    /// there is one (its start skips Docker's network setup); an unused holder is removed.
    async fn build(
        &self,
        d: &mut Deployment,
        start: bool,
        holder: Option<String>,
    ) -> Result<(String, String), DeployError> {
        let rt = &self.inner.runtime;
        let spare = d.network_id.is_some();
        let starts_now = start && d.session_mode == SessionMode::Shared;
        let (holder, unused_holder) = match holder {
            Some(h) if starts_now => (Some(h), None),
            unused => (None, unused),
        };
        // A holder the create does not use goes alongside the rest.
        let unused_holder = async {
            if let Some(h) = &unused_holder
                && let Err(e) = rt.remove_container(h).await
            {
                tracing::warn!(deployment.id = %d.id, error = %e, "cannot remove an unused network holder; deleting the deployment removes it");
            }
        };
        // Independent steps run together. Docker needs the image and the network before the
        // container, but not the host user (it takes a numeric uid:gid), so the user is made
        // alongside all three.
        let docker = async {
            let network = async {
                match &d.network_id {
                    Some(made_ahead) => Ok((made_ahead.clone(), d.subnet.clone())),
                    None => self.create_network(d).await,
                }
            };
            let (image, network) = tokio::join!(rt.ensure_image(&d.image), network);
            image?;
            let (network_id, subnet) = network?;
            let mode = holder.as_deref().map(crate::runtime::holder_network_mode);
            let container_id = rt
                .create_container(&spec_of(d, mode.as_deref().unwrap_or(&network_id), None))
                .await?;
            Ok::<_, DeployError>((container_id, network_id, subnet))
        };
        let user = async {
            if spare {
                Ok(())
            } else {
                self.inner.users.create(&d.username, d.uid, &d.id).await
            }
        };
        let (user, docker, ()) = tokio::join!(user, docker, unused_holder);
        user?;
        let (container_id, network_id, subnet) = docker?;
        d.subnet = subnet;
        // An isolated deployment's own container is the template of its sessions' containers
        // and never runs itself.
        // A stdio process is started attached once its row is recorded (`create`).
        if starts_now && !d.transport.is_stdio() {
            rt.start_container(&container_id).await?;
        }
        Ok((container_id, network_id))
    }

    /// Creates the deployment's network on its subnet; returns the network id and the
    /// subnet. A subnet that another Docker network holds (another mcp-runner instance's, or
    /// one made by hand) is swapped for a free one, also in the row.
    async fn create_network(
        &self,
        d: &Deployment,
    ) -> Result<(String, Option<String>), DeployError> {
        let rt = &self.inner.runtime;
        let mut subnet = d.subnet.clone();
        let mut avoid: HashSet<String> = HashSet::new();
        let mut attempts = 0;
        loop {
            let err = match rt.create_network(&d.id, subnet.as_deref(), false).await {
                Ok(id) => return Ok((id, subnet)),
                Err(e) if e.is_subnet_overlap() && attempts < 8 => e,
                Err(e) => return Err(e.into()),
            };
            attempts += 1;
            tracing::info!(deployment.id = %d.id, subnet = ?subnet, error = %err, "subnet held by another Docker network; picking another");
            avoid.extend(subnet.take());
            avoid.extend(rt.docker_subnets().await?);
            avoid.extend(self.taken_subnets().await?);
            while subnet.is_none() {
                let next = self.free_subnet(&avoid)?;
                match self.inner.store.set_subnet(&d.id, &next).await {
                    Ok(()) => subnet = Some(next),
                    // A concurrent create holds it now: pick again.
                    Err(StoreError::Taken(_)) => {
                        avoid.insert(next);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }

    /// Networks made ahead and ready now.
    pub fn spare_networks(&self) -> usize {
        self.inner.spares.ready()
    }

    /// Removes whatever of a failed create exists, then its row. When that fails (Docker
    /// went away: the cause of many failed creates) the row becomes `deleting`, and the
    /// reaper retries the deletion until it succeeds.
    async fn undo(&self, d: &Deployment) {
        match self.teardown(d).await {
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

    /// Removes container, network holder, network and user of a deployment. Parts already
    /// gone are fine; names stand in for ids a failed create never learned.
    async fn teardown(&self, d: &Deployment) -> Result<(), DeployError> {
        let rt = &self.inner.runtime;
        // Docker's parts go in order (the network is busy until its container is gone);
        // the host user needs no Docker and goes even when Docker does not answer.
        let docker = async {
            if d.session_mode == SessionMode::Isolated {
                for c in rt.list_containers().await? {
                    if c.deployment_id == d.id && c.session.is_some() {
                        rt.remove_container(&c.id).await?;
                    }
                }
            }
            let name = object_name(&d.id);
            let container = d.container_id.as_deref().unwrap_or(&name);
            rt.stop_container(container, STOP_GRACE_SECS).await?;
            rt.remove_container(container).await?;
            rt.remove_holder(&d.id).await?;
            rt.remove_network(d.network_id.as_deref().unwrap_or(&name))
                .await?;
            Ok::<_, RuntimeError>(())
        }
        .await;
        let user = self.inner.users.delete(&d.username).await;
        docker?;
        user?;
        Ok(())
    }

    /// Deletes a deployment: stop (10 s grace, then kill), remove container and network,
    /// delete the user and the row. When a step fails the row stays `deleting` and the reaper
    /// retries.
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
        let _ = self.inner.events.send(Lifecycle::Deleting(id.to_owned()));
        self.inner.stderr.stop(id);
        self.teardown(&d).await?;
        if self.inner.store.delete(id).await? {
            tracing::info!(deployment.id = %id, "deployment deleted");
            // Its subnet is free: a refill that found none may go on.
            self.inner.spares.wake();
            Ok(())
        } else {
            // A concurrent delete finished first.
            Err(DeployError::NotFound)
        }
    }

    /// Stops the container of an idle deployment; the row keeps status `stopped`.
    pub async fn pause(&self, id: &str) -> Result<(), DeployError> {
        self.inner
            .pauses_and_starts
            .with(id, self.pause_now(id))
            .await
    }

    async fn pause_now(&self, id: &str) -> Result<(), DeployError> {
        let Some(d) = self.inner.store.get(id).await? else {
            return Err(DeployError::NotFound);
        };
        if d.status != Status::Running {
            return Ok(());
        }
        let _ = self.inner.events.send(Lifecycle::Paused(id.to_owned()));
        if let Some(container) = &d.container_id {
            let rt = &self.inner.runtime;
            rt.stop_container(container, STOP_GRACE_SECS).await?;
            // A paused deployment keeps nothing running: not its network holder either.
            if let Some(state) = rt.container_state(container).await? {
                self.release_holder(&d, container, &state).await?;
            }
        }
        self.inner.stderr.stop(id);
        self.inner.store.set_status(id, Status::Stopped).await?;
        tracing::info!(deployment.id = %id, "deployment paused after idling");
        Ok(())
    }

    /// After the pause of a container that ran in its network holder's namespace: when it
    /// wrote nothing to its own file system, it is replaced, losing nothing, by one on the
    /// deployment's network and the holder is removed (later starts cost what they always
    /// did); otherwise the holder is stopped with it and started again before it, so that
    /// its files stay.
    async fn release_holder(
        &self,
        d: &Deployment,
        container: &str,
        state: &ContainerState,
    ) -> Result<(), DeployError> {
        let Some(holder) = &state.joins_namespace_of else {
            return Ok(());
        };
        let rt = &self.inner.runtime;
        match rt.container_layer(container).await? {
            Some((image, 0)) => {
                self.leave_holder(d, container, image).await?;
            }
            _ => rt.stop_container(holder, 0).await?,
        }
        Ok(())
    }

    /// Before the start of a stopped `container` (state `state`): its network holder, when
    /// it runs in one's namespace, is started again if it stopped; if the holder is gone
    /// (removed behind mcp-runner's back), the container is replaced by one on the
    /// deployment's network, the only way it can start. Returns the container to start.
    async fn prepare_start(
        &self,
        d: &Deployment,
        container: String,
        state: &ContainerState,
    ) -> Result<String, DeployError> {
        let Some(holder) = &state.joins_namespace_of else {
            return Ok(container);
        };
        let rt = &self.inner.runtime;
        match rt.container_state(holder).await? {
            Some(h) if h.running => Ok(container),
            Some(_) => {
                rt.start_container(holder).await?;
                Ok(container)
            }
            None => {
                tracing::warn!(deployment.id = %d.id, "the network holder is gone; the container moves to the deployment's network (its own files are not kept)");
                let image = rt
                    .container_layer(&container)
                    .await?
                    .ok_or(DeployError::NotFound)?
                    .0;
                self.leave_holder(d, &container, image).await
            }
        }
    }

    /// Replaces the stopped `container` of a deployment, which ran in its network holder's
    /// namespace, with a container of the same settings and the same `image` (id) on the
    /// deployment's network, and removes the holder; returns the new container's id. Runs
    /// to its end even when the request that asked goes away; the old container keeps its
    /// place until the new one is recorded.
    async fn leave_holder(
        &self,
        d: &Deployment,
        container: &str,
        image: String,
    ) -> Result<String, DeployError> {
        let this = self.clone();
        let d = d.clone();
        let container = container.to_owned();
        tokio::spawn(async move { this.swap_container(&d, &container, image).await })
            .await
            .unwrap_or_else(|e| {
                Err(DeployError::Runtime(RuntimeError::User {
                    op: "replace the container",
                    reason: e.to_string(),
                }))
            })
    }

    async fn swap_container(
        &self,
        d: &Deployment,
        container: &str,
        image: String,
    ) -> Result<String, DeployError> {
        let rt = &self.inner.runtime;
        let network = d.network_id.as_deref().ok_or(DeployError::NotFound)?;
        let name = object_name(&d.id);
        // The new container takes the old one's name; the old one waits aside until the
        // row names the new one.
        rt.rename_container(container, &format!("{name}-replaced"))
            .await?;
        let put_back = || async {
            if let Err(e) = rt.rename_container(container, &name).await {
                tracing::warn!(deployment.id = %d.id, error = %e, "cannot give the container its name back");
            }
        };
        let spec = SandboxSpec {
            image,
            ..spec_of(d, network, None)
        };
        let replacement = match rt.create_container(&spec).await {
            Ok(id) => id,
            Err(e) => {
                put_back().await;
                return Err(e.into());
            }
        };
        match self.inner.store.set_container(&d.id, &replacement).await {
            Ok(true) => {}
            recorded => {
                let _ = rt.remove_container(&replacement).await;
                put_back().await;
                return Err(match recorded {
                    Err(e) => e.into(),
                    // Being deleted: the deletion removes the old container.
                    _ => DeployError::NotFound,
                });
            }
        }
        // What cannot be removed now goes later: the holder with the deletion (by name), the
        // old container with the first sweep after it.
        if let Err(e) = rt.remove_container(container).await {
            tracing::warn!(deployment.id = %d.id, error = %e, "cannot remove the replaced container");
        }
        rt.remove_holder(&d.id).await?;
        tracing::info!(deployment.id = %d.id, container.id = %replacement, "left the network holder: the container is on the deployment's network now");
        Ok(replacement)
    }

    /// Starts the container of a deployment (the bridge calls this on demand): status
    /// `running`, stderr followed from now. A running container is left as it is.
    pub async fn start(&self, id: &str) -> Result<Deployment, DeployError> {
        self.inner
            .pauses_and_starts
            .with(id, self.start_now(id))
            .await
    }

    async fn start_now(&self, id: &str) -> Result<Deployment, DeployError> {
        let mut d = self.get(id).await?;
        let mut container = d.container_id.clone().ok_or(DeployError::NotFound)?;
        let state = self.inner.runtime.container_state(&container).await?;
        match state {
            None => return Err(DeployError::NotFound),
            Some(s) if s.running => {}
            Some(s) => {
                container = self.prepare_start(&d, container, &s).await?;
                d.container_id = Some(container.clone());
                self.inner.runtime.start_container(&container).await?;
                tracing::info!(deployment.id = %id, "container started on demand");
            }
        }
        self.inner.store.set_status(id, Status::Running).await?;
        if self.inner.stderr.snapshot(id).is_none() {
            self.follow(&d, now_millis() / 1000);
        }
        d.status = Status::Running;
        Ok(d)
    }

    /// Starts the process of a stdio deployment afresh and attached: a container that runs
    /// already (started before a restart of mcp-runner: its protocol state is unknown) is
    /// stopped first. Status `running`; stderr is followed from the attachment; stdin and
    /// stdout are returned. The new tail starts from `d.stderr`, which `get` filled with the
    /// live tail.
    pub async fn start_stdio(&self, d: &Deployment) -> Result<Attached, DeployError> {
        self.inner
            .pauses_and_starts
            .with(&d.id, async {
                // A pause that ran while this waited may have replaced the container.
                let now = self
                    .inner
                    .store
                    .get(&d.id)
                    .await?
                    .ok_or(DeployError::NotFound)?;
                self.start_stdio_now(&Deployment {
                    container_id: now.container_id,
                    status: now.status,
                    ..d.clone()
                })
                .await
            })
            .await
    }

    async fn start_stdio_now(&self, d: &Deployment) -> Result<Attached, DeployError> {
        let container = d.container_id.clone().ok_or(DeployError::NotFound)?;
        let rt = &self.inner.runtime;
        let Some(state) = rt.container_state(&container).await? else {
            return Err(DeployError::NotFound);
        };
        if state.running {
            self.stop_container(d).await?;
        }
        let container = self.prepare_start(d, container, &state).await?;
        let container = container.as_str();
        let mut attached = rt.attach_stdio(container).await?;
        rt.start_container(container).await?;
        self.inner.store.set_status(&d.id, Status::Running).await?;
        let stderr = std::mem::replace(&mut attached.stderr, futures_util::stream::empty().boxed());
        self.inner
            .stderr
            .follow_stream(&d.id, container, &d.stderr, stderr);
        tracing::info!(deployment.id = %d.id, "stdio process started");
        Ok(attached)
    }

    /// Starts a stdio deployment's process and hands its pipes to the stdio owner.
    pub async fn start_owned_stdio(&self, d: &Deployment) -> Result<(), DeployError> {
        let attached = self.start_stdio(d).await?;
        match self.inner.stdio_owner.get() {
            Some(owner) => owner(d, attached),
            None => tracing::warn!(deployment.id = %d.id, "no bridge takes the process's stdio"),
        }
        Ok(())
    }

    /// Stops the container of a deployment now (the bridge restarts a stdio process it did
    /// not start itself, so that its protocol state is known).
    pub async fn stop_container(&self, d: &Deployment) -> Result<(), DeployError> {
        if let Some(container) = &d.container_id {
            self.inner.stderr.stop(&d.id);
            self.inner
                .runtime
                .stop_container(container, STOP_GRACE_SECS)
                .await?;
        }
        Ok(())
    }

    /// Makes and starts the container of one session of an isolated deployment: the
    /// deployment's sandbox, network and user. With `attach`, stdio is attached before the
    /// start so that nothing is missed.
    pub async fn start_session_container(
        &self,
        d: &Deployment,
        session_id: &str,
        attach: bool,
    ) -> Result<(String, Option<crate::runtime::Attached>), DeployError> {
        let rt = &self.inner.runtime;
        let network = d.network_id.as_deref().ok_or(DeployError::NotFound)?;
        let container = rt
            .create_container(&spec_of(d, network, Some(session_id.to_owned())))
            .await?;
        let started = async {
            let attached = if attach {
                Some(rt.attach_stdio(&container).await?)
            } else {
                None
            };
            rt.start_container(&container).await?;
            Ok::<_, RuntimeError>(attached)
        }
        .await;
        match started {
            Ok(mut attached) => {
                tracing::info!(deployment.id = %d.id, session.id = %session_id, "session container started");
                // Its stderr joins the deployment's tail: from the attach connection for a
                // stdio server (the hub reads only stdout), from Docker's log otherwise.
                let stderr = match &mut attached {
                    Some(a) => {
                        std::mem::replace(&mut a.stderr, futures_util::stream::empty().boxed())
                    }
                    None => rt.follow_stderr(&container, 0).boxed(),
                };
                self.inner
                    .stderr
                    .follow_session(&d.id, session_id, &d.stderr, stderr);
                Ok((container, attached))
            }
            Err(e) => {
                let _ = rt.remove_container(&container).await;
                Err(e.into())
            }
        }
    }

    /// Removes a session's container (its session ended).
    pub async fn remove_session_container(&self, container: &str) -> Result<(), DeployError> {
        let rt = &self.inner.runtime;
        rt.stop_container(container, STOP_GRACE_SECS).await?;
        rt.remove_container(container).await?;
        Ok(())
    }

    /// Whether the deployment's container is known to run without asking Docker: its stderr
    /// follower is alive (it ends when the container stops).
    pub fn known_running(&self, id: &str) -> bool {
        self.inner.stderr.is_following(id)
    }

    /// A deployment visible through the API (running or stopped), with its live stderr.
    pub async fn get(&self, id: &str) -> Result<Deployment, DeployError> {
        match self.inner.store.get(id).await? {
            Some(d) if visible(&d) => Ok(self.with_live_stderr(d)),
            _ => Err(DeployError::NotFound),
        }
    }

    /// A deployment's stderr tail with the state of its process: whether it runs, and how
    /// its last run ended.
    pub async fn logs(
        &self,
        id: &str,
    ) -> Result<(Deployment, Option<ContainerState>), DeployError> {
        let d = self.get(id).await?;
        let state = match &d.container_id {
            Some(c) => self.inner.runtime.container_state(c).await?,
            None => None,
        };
        Ok((d, state))
    }

    /// Every visible deployment, oldest first.
    pub async fn list(&self) -> Result<Vec<Deployment>, DeployError> {
        let rows = self.inner.store.list().await?;
        Ok(rows
            .into_iter()
            .filter(visible)
            .map(|d| self.with_live_stderr(d))
            .collect())
    }

    fn with_live_stderr(&self, mut d: Deployment) -> Deployment {
        if let Some(live) = self.inner.stderr.snapshot(&d.id) {
            d.stderr = live;
        }
        d
    }

    /// Starts following a running deployment's stderr from `since` (Unix seconds; 0 = all).
    fn follow(&self, d: &Deployment, since: i64) {
        if let Some(container) = &d.container_id {
            self.inner.stderr.follow(&d.id, container, &d.stderr, since);
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

/// The sandbox of a deployment (or of one of its sessions).
fn spec_of(d: &Deployment, network: &str, session: Option<String>) -> SandboxSpec {
    SandboxSpec {
        deployment_id: d.id.clone(),
        image: d.image.clone(),
        args: d.args.clone(),
        env: d.env.clone(),
        uid: d.uid,
        gid: d.gid,
        memory_mb: d.max_memory,
        cpus: d.max_cpus,
        network: network.to_owned(),
        stdin: d.transport.is_stdio(),
        session,
    }
}

fn visible(d: &Deployment) -> bool {
    matches!(d.status, Status::Running | Status::Stopped)
}

/// `dp_` + 24 random characters of `[a-z0-9]` (about 124 bits): unguessable, since the id is
/// the capability in the MCP URLs.
pub fn new_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let mut id = String::with_capacity(27);
    id.push_str("dp_");
    for _ in 0..24 {
        id.push(char::from(*ALPHABET.choose(&mut rng).unwrap_or(&b'a')));
    }
    id
}

/// The host user name of deployment `id`.
fn username_of(id: &str) -> String {
    format!("mcp-{}", id.strip_prefix("dp_").unwrap_or(id))
}

/// A random free UID of the range.
fn pick_uid(range: UidRange, used: &HashSet<u32>) -> Option<u32> {
    crate::domain::pick_free(
        range.len(),
        |i| range.first + i as u32,
        |uid| used.contains(uid),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_and_random() {
        let a = new_id();
        let b = new_id();
        assert!(a.starts_with("dp_") && a.len() == 27);
        assert!(
            a[3..]
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        assert_ne!(a, b);
    }

    #[test]
    fn picks_only_free_uids_and_reports_exhaustion() {
        let range = UidRange {
            first: 5000,
            last: 5009,
        };
        let used: HashSet<u32> = (5000..=5008).collect();
        assert_eq!(pick_uid(range, &used), Some(5009));
        let all: HashSet<u32> = (5000..=5009).collect();
        assert_eq!(pick_uid(range, &all), None);
    }
}
