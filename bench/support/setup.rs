//! What the benchmarks stand on: the host check, the fixture image, the direct container, the
//! in-process mcp-runner, and the clean-up of all of them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::Parser;
use mcp_runner::app::{AppState, Server};
use mcp_runner::config::Config;
use mcp_runner::runtime::{Attached, Runtime, RuntimeSettings, SandboxSpec};
use tokio_util::sync::CancellationToken;

use super::api::Api;

/// Tag of the benchmark's fixture image (not the tests' tag: both may build at once).
pub const FIXTURE_IMAGE: &str = "mcp-runner-bench-fixture:latest";
/// API key of the servers the benchmarks start.
pub const API_KEY: &str = "bench-key-0123456789abcdef";
/// Prefix of the benchmark's instance ids: `bench-<pid>-<random>`.
const INSTANCE_PREFIX: &str = "bench-";
/// Memory and CPU limits of both containers (the same for the direct and the bridged one).
pub const MEMORY_MB: u64 = 256;
/// CPU limit of both containers, in cores.
pub const CPUS: f64 = 1.0;

/// Fails with a clear message unless this runs as root with Docker and gVisor; `bench` names
/// the benchmark in it.
pub fn preflight(bench: &str) -> anyhow::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    if euid != "0" {
        bail!(
            "the {bench} benchmark must run as root (mcp-runner creates host users and drives \
             the Docker socket); run it as root, e.g. `sudo -E cargo bench --bench {bench}`"
        );
    }
    let out = Command::new("docker")
        .args(["info", "--format", "{{json .Runtimes}}"])
        .output()
        .map_err(|e| anyhow!("cannot run the docker CLI ({e}); install Docker with ./setup.sh"))?;
    if !out.status.success() {
        bail!(
            "Docker does not answer ({}); start it with ./setup.sh",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if !String::from_utf8_lossy(&out.stdout).contains("\"runsc\"") {
        bail!("Docker has no `runsc` runtime; install gVisor with ./setup.sh");
    }
    Ok(())
}

/// A fresh instance id.
pub fn instance_id(role: &str) -> String {
    let r: u32 = rand::random();
    format!("{INSTANCE_PREFIX}{}-{r:08x}-{role}", std::process::id())
}

fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .context("run docker")?;
    if !out.status.success() {
        bail!(
            "docker {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether an instance id names a benchmark whose process is gone.
fn abandoned(instance: &str) -> bool {
    let Some(rest) = instance.strip_prefix(INSTANCE_PREFIX) else {
        return false;
    };
    let pid = rest.split('-').next().unwrap_or("");
    !pid.is_empty()
        && pid.bytes().all(|b| b.is_ascii_digit())
        && !Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes containers, networks and host users that interrupted benchmark runs left.
pub fn sweep_leftovers() {
    sweep(abandoned, "left by an interrupted run");
}

/// Removes containers, networks and host users of `instance` (after a failure).
pub fn sweep_instance(instance: &str) {
    sweep(|i| i == instance, "left behind");
}

/// Removes the containers, networks and host users of the instances `doomed` picks.
fn sweep(doomed: impl Fn(&str) -> bool, why: &str) {
    for (list, remove) in [
        (vec!["ps", "-a"], vec!["rm", "-f"]),
        (vec!["network", "ls"], vec!["network", "rm"]),
    ] {
        let mut args = list.clone();
        args.extend([
            "--filter",
            "label=managed-by=mcp-runner",
            "--format",
            "{{.ID}} {{.Label \"mcp-runner.instance\"}}",
        ]);
        let Ok(out) = docker(&args) else { continue };
        for (id, instance) in out.lines().filter_map(|l| l.split_once(' ')) {
            if doomed(instance) {
                eprintln!("removing {id} {why} ({instance})");
                let mut rm = remove.clone();
                rm.push(id);
                let _ = docker(&rm);
            }
        }
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        let instance = f
            .get(4)
            .and_then(|c| c.strip_prefix("mcp-runner/"))
            .and_then(|c| c.split('/').next());
        if instance.is_some_and(&doomed) {
            eprintln!("removing host user {} {why}", f[0]);
            let _ = Command::new("userdel").arg(f[0]).output();
            let _ = Command::new("groupdel").arg(f[0]).output();
        }
    }
}

/// Builds the fixture server as a static binary (as the e2e tests do) and packs it
/// `FROM scratch` into `FIXTURE_IMAGE`.
pub fn build_fixture() -> anyhow::Result<()> {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // A target directory of its own: the static flags must not invalidate the main build,
    // and the cargo that runs the benchmark keeps its own directory locked.
    let target_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-fixture-build");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let triple = "x86_64-unknown-linux-gnu";
    let status = Command::new(cargo)
        .current_dir(&workspace)
        .args([
            "build",
            "--quiet",
            "--release",
            "--locked",
            "-p",
            "mcp-fixture",
            "--target",
            triple,
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env(
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            "-C target-feature=+crt-static",
        )
        .status()
        .context("run cargo build for the fixture")?;
    if !status.success() {
        bail!("building the fixture server failed");
    }
    let binary = target_dir.join(triple).join("release").join("mcp-fixture");
    let context = tempfile::tempdir().context("build context")?;
    std::fs::copy(&binary, context.path().join("mcp-fixture")).context("copy the fixture")?;
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM scratch\nCOPY mcp-fixture /mcp-fixture\nENTRYPOINT [\"/mcp-fixture\"]\nCMD [\"stdio\"]\n",
    )
    .context("write the Dockerfile")?;
    let out = Command::new("docker")
        .args(["build", "-q", "-t", FIXTURE_IMAGE])
        .arg(context.path())
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .context("run docker build")?;
    if !out.status.success() {
        bail!(
            "docker build of the fixture image failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The direct container: the same sandbox settings as a deployment, made with mcp-runner's
// own runtime code, attached by the benchmark itself.

/// mcp-runner's runtime code with a deployment's sandbox settings, for containers the
/// benchmark makes itself under instance `instance`.
pub async fn direct_runtime(instance: &str) -> anyhow::Result<Runtime> {
    Ok(Runtime::connect(
        None,
        RuntimeSettings {
            oci_runtime: "runsc".to_owned(),
            dns: vec!["8.8.8.8".to_owned()],
            pids_limit: 256,
            log_max_mb: 10,
            instance_id: instance.to_owned(),
        },
        4,
    )?
    .negotiate()
    .await?)
}

/// The sandbox of a direct fixture container named after `name`, on Docker network `network`
/// (`none`: a stdio server needs none; `bridge`: what `docker run` gives).
pub fn direct_spec(name: &str, network: &str) -> SandboxSpec {
    SandboxSpec {
        deployment_id: name.to_owned(),
        image: FIXTURE_IMAGE.to_owned(),
        args: None,
        env: BTreeMap::new(),
        uid: 65534,
        gid: 65534,
        memory_mb: Some(MEMORY_MB),
        cpus: Some(CPUS),
        network: network.to_owned(),
        stdin: true,
        session: None,
    }
}

/// When each step of a launch was done.
#[derive(Debug, Clone, Copy)]
pub struct Launch {
    /// The container exists.
    pub created: Instant,
    /// Its stdio is attached.
    pub attached: Instant,
    /// It runs.
    pub started: Instant,
}

/// A fixture container under runsc, attached and started.
pub struct DirectContainer {
    runtime: Runtime,
    /// Docker id.
    pub id: String,
}

impl DirectContainer {
    /// Creates, attaches and starts a container without a network under instance `instance`;
    /// returns it with its attachment.
    pub async fn start(instance: &str) -> anyhow::Result<(DirectContainer, Attached)> {
        let runtime = direct_runtime(instance).await?;
        let (container, attached, _) =
            DirectContainer::launch(&runtime, &direct_spec(instance, "none")).await?;
        Ok((container, attached))
    }

    /// Creates a container of `spec`, attaches to its stdio and starts it (what
    /// `docker run -i` does), noting when each step was done. A failed step removes it again.
    pub async fn launch(
        runtime: &Runtime,
        spec: &SandboxSpec,
    ) -> anyhow::Result<(DirectContainer, Attached, Launch)> {
        let id = runtime.create_container(spec).await?;
        let created = Instant::now();
        let container = DirectContainer {
            runtime: runtime.clone(),
            id,
        };
        let attached = match container.runtime.attach_stdio(&container.id).await {
            Ok(a) => a,
            Err(e) => {
                container.remove().await;
                return Err(e.into());
            }
        };
        let attached_at = Instant::now();
        if let Err(e) = container.runtime.start_container(&container.id).await {
            container.remove().await;
            return Err(e.into());
        }
        let launch = Launch {
            created,
            attached: attached_at,
            started: Instant::now(),
        };
        Ok((container, attached, launch))
    }

    /// Stops and removes the container.
    pub async fn remove(&self) {
        if let Err(e) = self.runtime.stop_container(&self.id, 5).await {
            eprintln!("stopping the direct container failed: {e}");
        }
        if let Err(e) = self.runtime.remove_container(&self.id).await {
            eprintln!("removing the direct container failed: {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// The in-process mcp-runner.

/// A real mcp-runner serving on 127.0.0.1 from a runtime and threads of its own.
pub struct RunnerServer {
    /// Its management API.
    pub api: Api,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

/// Name prefix of the server's runtime threads (the CPU accounting looks for it).
pub const SERVER_THREADS: &str = "mcpr-server";

impl RunnerServer {
    /// Starts the server with `extra_args` (command-line flags) and waits until Docker
    /// answered and reconciliation finished. Its runtime has `worker_threads` threads, or as
    /// many as mcp-runner itself would start (`WORKER_THREADS`' default).
    pub async fn start(
        instance: &str,
        worker_threads: Option<usize>,
        extra_args: &[&str],
    ) -> anyhow::Result<RunnerServer> {
        let dir = tempfile::tempdir().context("temp dir")?;
        let db = dir.path().join("app.db");
        let mut args = vec![
            "mcp-runner",
            "--api-key",
            API_KEY,
            "--db-path",
            db.to_str().context("utf-8 temp path")?,
            "--instance-id",
            instance,
        ];
        args.extend_from_slice(extra_args);
        let config = Config::try_parse_from(args).context("server configuration")?;
        config.validate().map_err(|e| anyhow!(e))?;
        let worker_threads = worker_threads.unwrap_or_else(|| config.runtime_threads());
        type Started = (SocketAddr, AppState, CancellationToken);
        let (tx, rx) = tokio::sync::oneshot::channel::<anyhow::Result<Started>>();
        let thread = std::thread::Builder::new()
            .name(format!("{SERVER_THREADS}-main"))
            .spawn(move || -> anyhow::Result<()> {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(worker_threads)
                    .thread_name(SERVER_THREADS)
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let built = async {
                        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                        let addr = listener.local_addr()?;
                        let server = Server::build(config, API_KEY.to_owned()).await?;
                        anyhow::Ok((listener, addr, server))
                    };
                    match built.await {
                        Ok((listener, addr, server)) => {
                            let _ = tx.send(Ok((addr, server.state(), server.shutdown_token())));
                            server.serve(listener, std::future::pending()).await
                        }
                        Err(e) => {
                            let _ = tx.send(Err(anyhow!("{e:#}")));
                            Err(e)
                        }
                    }
                })
            })
            .context("spawn the server thread")?;
        let (addr, state, stop) = rx.await.context("the server thread ended")??;
        let server = RunnerServer {
            api: Api::new(format!("http://{addr}"))?,
            stop,
            thread: Some(thread),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !state.is_ready() {
            if Instant::now() > deadline {
                bail!("mcp-runner did not become ready within 60 s (Docker, reconciliation)");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(server)
    }

    /// Stops the server gracefully and waits for its thread.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        if let Some(thread) = self.thread.take() {
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .context("join")?
                .map_err(|_| anyhow!("the server thread panicked"))??;
        }
        Ok(())
    }
}
