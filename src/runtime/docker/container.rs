//! Deployment containers: the sandbox settings (every one explained in the README's security
//! model), and the container life cycle.

use std::collections::{BTreeMap, HashMap};

use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, HostConfig, HostConfigLogConfig,
    ResourcesUlimits,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::{Client, DockerError, LABEL_DEPLOYMENT, LABEL_SESSION, docker_err, object_name};

/// A container to make: a [`crate::runtime::SandboxSpec`] with its network (a network id, or
/// `container:<holder>` to join a network holder's namespace).
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// Deployment id (labels, names).
    pub deployment_id: String,
    /// Image reference.
    pub image: String,
    /// Command (`None`: the image's default).
    pub args: Option<Vec<String>>,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Host UID and GID the container runs as.
    pub uid: u32,
    /// Host GID.
    pub gid: u32,
    /// Memory limit in MB.
    pub memory_mb: Option<u64>,
    /// CPU limit in cores.
    pub cpus: Option<f64>,
    /// Docker network (name or id) to join.
    pub network: String,
    /// Keep stdin open (stdio servers).
    pub stdin: bool,
    /// For a per-session container of an isolated deployment: the session id.
    pub session: Option<String>,
}

/// Where a container is in its life.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerState {
    /// Whether it runs now.
    pub running: bool,
    /// Whether it ran and exited (a container made but never started has not).
    pub exited: bool,
    /// Exit code of the last run, when it ran and exited.
    pub exit_code: Option<i64>,
    /// Whether the kernel's OOM killer ended the last run.
    pub oom_killed: bool,
    /// It runs in this container's network namespace (a network holder's), not on a
    /// network of its own.
    pub joins_namespace_of: Option<String>,
}

/// A container of this instance, as found by its labels.
#[derive(Debug, Clone)]
pub struct ManagedContainer {
    /// Docker container id.
    pub id: String,
    /// Deployment it belongs to.
    pub deployment_id: String,
    /// The session it serves, for per-session containers of isolated deployments.
    pub session: Option<String>,
}

const MIB: i64 = 1024 * 1024;

/// Docker's stop grace in whole seconds.
pub(super) fn grace_secs() -> i32 {
    i32::try_from(crate::runtime::STOP_GRACE.as_secs()).unwrap_or(i32::MAX)
}

/// The pids cgroup limit for a workload limit of `nproc` tasks: room for gVisor's own host
/// threads (about 50 at idle and 8 per sandboxed task with the ptrace platform, measured).
pub fn host_pids_limit(nproc: i64) -> i64 {
    nproc.saturating_mul(8).saturating_add(256)
}

impl Client {
    /// The Docker container configuration of a sandbox. Every setting is explained in the
    /// README's security section.
    pub fn container_config(&self, spec: &ContainerSpec) -> ContainerCreateBody {
        let s = &self.settings;
        let memory = spec
            .memory_mb
            .map(|mb| i64::try_from(mb).unwrap_or(i64::MAX / MIB) * MIB);
        let host_config = HostConfig {
            runtime: Some(s.oci_runtime.clone()),
            cap_drop: Some(vec!["ALL".to_owned()]),
            security_opt: Some(vec!["no-new-privileges:true".to_owned()]),
            memory,
            // Swap equal to memory: the container gets no swap on top of its memory limit.
            memory_swap: memory,
            nano_cpus: spec.cpus.map(|c| (c * 1e9).round() as i64),
            // Two process limits, because under gVisor the pids cgroup counts the sandbox
            // kernel's own host threads: a cgroup limit near the workload's size makes
            // gVisor block inside its own thread creation and the whole container hangs.
            // The workload's limit is RLIMIT_NPROC, enforced by gVisor itself (a fork bomb
            // gets EAGAIN, the server keeps answering); each deployment has its own UID, so
            // it is a per-deployment limit. The cgroup limit stays as a host-side backstop.
            pids_limit: Some(host_pids_limit(s.pids_limit)),
            ulimits: Some(vec![ResourcesUlimits {
                name: Some("nproc".to_owned()),
                soft: Some(s.pids_limit),
                hard: Some(s.pids_limit),
            }]),
            // A container in a holder's namespace uses the holder's resolv.conf (Docker
            // refuses DNS settings with that network mode).
            dns: super::joined_namespace(&spec.network)
                .is_none()
                .then(|| s.dns.clone()),
            network_mode: Some(spec.network.clone()),
            // A stdio server's stdout is the protocol: its messages must not land in a log
            // file, and its stderr reaches mcp-runner through the attach connection. Other
            // servers keep a small log that the stderr follower reads.
            log_config: Some(if spec.stdin {
                HostConfigLogConfig {
                    typ: Some("none".to_owned()),
                    config: None,
                }
            } else {
                HostConfigLogConfig {
                    typ: Some("json-file".to_owned()),
                    config: Some(HashMap::from([
                        ("max-size".to_owned(), format!("{}m", s.log_max_mb)),
                        ("max-file".to_owned(), "1".to_owned()),
                    ])),
                }
            }),
            // A minimal init (docker-init) as PID 1 forwards SIGTERM to the server and reaps
            // zombies: a server running as PID 1 would ignore SIGTERM and every stop would
            // wait out the grace period.
            init: Some(true),
            // mcp-runner decides when a deployment runs; Docker must not restart it.
            restart_policy: None,
            ..Default::default()
        };
        ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: spec.args.clone(),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            user: Some(format!("{}:{}", spec.uid, spec.gid)),
            labels: Some({
                let mut labels = self.labels(&spec.deployment_id);
                if let Some(session) = &spec.session {
                    labels.insert(LABEL_SESSION.to_owned(), session.clone());
                }
                labels
            }),
            open_stdin: Some(spec.stdin),
            // Stdin stays open across attaches: the bridge may re-attach after a restart.
            stdin_once: Some(false),
            attach_stdin: Some(spec.stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            host_config: Some(host_config),
            ..Default::default()
        }
    }

    /// Creates the container of a sandbox; returns its id.
    pub async fn create_container(&self, spec: &ContainerSpec) -> Result<String, DockerError> {
        let _permit = self.permit("create the container").await;
        let name = match &spec.session {
            Some(session) => format!(
                "{}-{}",
                object_name(&spec.deployment_id),
                session.get(..12).unwrap_or(session)
            ),
            None => object_name(&spec.deployment_id),
        };
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let created = self
            .docker
            .create_container(Some(options), self.container_config(spec))
            .await
            .map_err(docker_err("create the container"))?;
        Ok(created.id)
    }

    /// Starts a container; one already running is fine.
    pub async fn start_container(&self, id: &str) -> Result<(), DockerError> {
        let _permit = self.permit("start the container").await;
        match self.docker.start_container(id, None).await {
            Ok(()) => Ok(()),
            // 304: already started.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(docker_err("start the container")(e)),
        }
    }

    /// Stops a container: SIGTERM, then SIGKILL after `grace_secs`. One already stopped or
    /// gone is fine.
    pub async fn stop_container(&self, id: &str, grace_secs: i32) -> Result<(), DockerError> {
        let _permit = self.permit("stop the container").await;
        let options = StopContainerOptionsBuilder::default().t(grace_secs).build();
        match self.docker.stop_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => {
                let err = docker_err("stop the container")(e);
                if err.is_not_found() { Ok(()) } else { Err(err) }
            }
        }
    }

    /// Removes a container (killing it if it still runs); one already gone is fine.
    pub async fn remove_container(&self, id: &str) -> Result<(), DockerError> {
        let _permit = self.permit("remove the container").await;
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = docker_err("remove the container")(e);
                // 409 "removal already in progress" ends the same way.
                if err.is_not_found() || is_conflict(&err) {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }

    /// Docker's description of a container (with the size of its own file system layer when
    /// `size`), `None` when it does not exist.
    async fn inspect(
        &self,
        id: &str,
        size: bool,
    ) -> Result<Option<bollard::models::ContainerInspectResponse>, DockerError> {
        let _permit = self.permit("inspect the container").await;
        let options = bollard::query_parameters::InspectContainerOptions { size };
        match self.docker.inspect_container(id, Some(options)).await {
            Ok(info) => Ok(Some(info)),
            Err(e) => {
                let err = docker_err("inspect the container")(e);
                if err.is_not_found() {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    /// The image id a container was made from and the bytes it wrote to its own file
    /// system layer; `None` when it does not exist.
    pub async fn container_layer(&self, id: &str) -> Result<Option<(String, i64)>, DockerError> {
        Ok(self
            .inspect(id, true)
            .await?
            .and_then(|info| Some((info.image?, info.size_rw.unwrap_or(0)))))
    }

    /// Renames a container.
    pub async fn rename_container(&self, id: &str, name: &str) -> Result<(), DockerError> {
        let _permit = self.permit("rename the container").await;
        let options = bollard::query_parameters::RenameContainerOptions {
            name: name.to_owned(),
        };
        self.docker
            .rename_container(id, options)
            .await
            .map_err(docker_err("rename the container"))
    }

    /// The state of a container, `None` when it does not exist.
    pub async fn container_state(&self, id: &str) -> Result<Option<ContainerState>, DockerError> {
        Ok(self.inspect(id, false).await?.map(|info| {
            let state = info.state.unwrap_or_default();
            ContainerState {
                running: state.running.unwrap_or(false),
                exited: matches!(
                    state.status,
                    Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD)
                ),
                exit_code: state.exit_code,
                oom_killed: state.oom_killed.unwrap_or(false),
                joins_namespace_of: info
                    .host_config
                    .and_then(|h| h.network_mode)
                    .and_then(|m| super::joined_namespace(&m).map(str::to_owned)),
            }
        }))
    }

    /// Every container of this instance, running or not.
    pub async fn list_containers(&self) -> Result<Vec<ManagedContainer>, DockerError> {
        let _permit = self.permit("list containers").await;
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&self.instance_filter())
            .build();
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(docker_err("list containers"))?;
        Ok(containers
            .into_iter()
            .filter_map(|c| {
                let mut labels = c.labels?;
                Some(ManagedContainer {
                    id: c.id?,
                    deployment_id: labels.remove(LABEL_DEPLOYMENT)?,
                    session: labels.remove(LABEL_SESSION),
                })
            })
            .collect())
    }

    /// Follows a container's stderr from `since` (Unix seconds) until the container stops.
    /// The stream ends when the container stops; errors end it too.
    pub fn follow_stderr(
        &self,
        id: &str,
        since: i64,
    ) -> impl Stream<Item = Result<Bytes, DockerError>> + Send + 'static {
        let options = LogsOptionsBuilder::default()
            .follow(true)
            .stdout(false)
            .stderr(true)
            .since(i32::try_from(since).unwrap_or(0))
            .build();
        self.count_request("stream the container's stderr");
        self.docker.logs(id, Some(options)).map(|item| {
            item.map(|out| out.into_bytes())
                .map_err(docker_err("stream the container's stderr"))
        })
    }
}

fn is_conflict(err: &DockerError) -> bool {
    matches!(
        err,
        DockerError::Docker {
            source: bollard::errors::Error::DockerResponseServerError {
                status_code: 409,
                ..
            },
            ..
        }
    )
}
