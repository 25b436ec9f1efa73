//! The real `mcp-runner` binary as a child process: its own temporary directory, database,
//! log, instance id, port on 127.0.0.1, network pool and UID range; started, restarted on the
//! same database and instance, killed, stopped and measured.
//!
//! The child runs in a process group of its own (Ctrl-C in a terminal reaches the test or
//! benchmark only, which then stops it) and gets SIGTERM should the thread that started it
//! die first (`PR_SET_PDEATHSIG`: start it from a thread that lives as long as it should,
//! the test's or the benchmark's main thread). Whatever it leaves behind is removed when the
//! [`ChildServer`] is dropped.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::api::Api;
use crate::docker::{self, sweep};
use crate::leftovers::assert_nothing_left;
use crate::{API_KEY, poll, procfs};

/// How long the binary may take to answer `/healthz`.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long it may take to become ready (Docker answers, reconciliation is done).
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// What a child mcp-runner is started with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The binary (`env!("CARGO_BIN_EXE_mcp-runner")` in a test or benchmark of mcp-runner:
    /// only those know where cargo built it).
    pub binary: PathBuf,
    /// Its instance id.
    pub instance: String,
    /// `NETWORK_POOL`.
    pub network_pool: String,
    /// `UID_RANGE`.
    pub uid_range: String,
    /// `DOCKER_HOST`, when not Docker's default.
    pub docker_host: Option<String>,
    /// Extra command-line arguments.
    pub args: Vec<String>,
    /// Extra environment (`CLEANUP_ON_SHUTDOWN` is removed unless set here).
    pub env: Vec<(String, String)>,
    /// How long a stop may take after SIGTERM before the process is killed.
    pub stop_timeout: Duration,
}

impl Settings {
    /// Settings of `binary` as instance `instance` on its own network pool and UID range; the
    /// rest as mcp-runner's defaults, a 30 s stop.
    pub fn new(binary: &str, instance: String, network_pool: &str, uid_range: &str) -> Settings {
        Settings {
            binary: binary.into(),
            instance,
            network_pool: network_pool.to_owned(),
            uid_range: uid_range.to_owned(),
            docker_host: None,
            args: Vec::new(),
            env: Vec::new(),
            stop_timeout: Duration::from_secs(30),
        }
    }
}

/// Resource use of the process, from /proc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Open file descriptors.
    pub fds: usize,
    /// Threads.
    pub threads: usize,
    /// Resident set size, KiB.
    pub rss_kib: u64,
}

/// A running (or killed, or stopped) `mcp-runner` child process; its API through `Deref`.
pub struct ChildServer {
    api: Api,
    /// Its instance id.
    pub instance: String,
    /// Its database file.
    pub db_path: PathBuf,
    settings: Settings,
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for ChildServer {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl ChildServer {
    /// Starts a fresh instance (new directory and database) and waits until it serves HTTP
    /// (not until it is ready: that is [`ChildServer::wait_ready`]). Sweeps what interrupted
    /// runs left first, once per process.
    pub async fn start(settings: Settings) -> anyhow::Result<ChildServer> {
        docker::check()?;
        tokio::task::spawn_blocking(sweep::sweep_abandoned).await?;
        let dir = tempfile::tempdir().context("temp dir")?;
        let mut server = ChildServer {
            api: Api::new(String::new()),
            instance: settings.instance.clone(),
            db_path: dir.path().join("app.db"),
            settings,
            child: None,
            log: dir.path().join("mcp-runner.log"),
            _dir: dir,
        };
        server.spawn().await?;
        Ok(server)
    }

    /// Starts the process again on the same database and instance id (after
    /// [`ChildServer::kill`] or [`ChildServer::stop`]), on a new port.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("the previous process still runs");
        }
        self.spawn().await
    }

    /// Starts the binary and waits for `/healthz`. A port taken between choosing and binding
    /// it is chosen again.
    async fn spawn(&mut self) -> anyhow::Result<()> {
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .context("a free port")?
                .port();
            let log = File::options()
                .create(true)
                .append(true)
                .open(&self.log)
                .context("open the log")?;
            let s = &self.settings;
            let mut cmd = Command::new(&s.binary);
            cmd.args(["--port", &port.to_string(), "--bind-ip", "127.0.0.1"])
                .args(["--db-path", self.db_path.to_str().context("utf-8 path")?])
                .args(["--instance-id", &self.instance])
                .args([
                    "--network-pool",
                    &s.network_pool,
                    "--uid-range",
                    &s.uid_range,
                ])
                .args(s.docker_host.iter().flat_map(|h| ["--docker-host", h]))
                .args(&s.args)
                .env("API_KEY", API_KEY)
                .env("RUST_LOG", "info")
                .env("LOG_FORMAT", "text")
                // Plain text in the log file (and in the tail printed after a failure).
                .env("NO_COLOR", "1")
                .env_remove("SENTRY_DSN")
                .env_remove("CLEANUP_ON_SHUTDOWN")
                .envs(s.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(log.try_clone().context("log handle")?)
                .stderr(log)
                .process_group(0);
            // SAFETY: the closure only calls prctl(2), which is async-signal-safe, between
            // fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            self.child = Some(cmd.spawn().context("start the mcp-runner binary")?);
            self.api = Api::new(format!("http://127.0.0.1:{port}"));
            if self.wait_healthy().await? {
                return Ok(());
            }
            self.child = None;
        }
        bail!("mcp-runner did not start:\n{}", self.log_tail(60));
    }

    /// Polls `/healthz`; false when the process exited because its port was taken.
    async fn wait_healthy(&mut self) -> anyhow::Result<bool> {
        let child = self.child.as_mut().context("mcp-runner runs")?;
        let api = self.api.clone();
        let outcome = poll::within(HEALTHY_TIMEOUT, || {
            let exited = child.try_wait().ok().flatten();
            let api = api.clone();
            async move {
                if let Some(status) = exited {
                    return Some(Err(status));
                }
                let probe = api.probe("/healthz", Duration::from_secs(2)).await;
                probe
                    .is_ok_and(|(status, _)| status == 200)
                    .then_some(Ok(()))
            }
        });
        match outcome.await {
            Some(Ok(())) => Ok(true),
            Some(Err(_)) if self.log_tail(60).contains("cannot listen") => Ok(false),
            Some(Err(status)) => bail!("mcp-runner exited with {status}:\n{}", self.log_tail(60)),
            None => bail!(
                "mcp-runner did not answer /healthz within {HEALTHY_TIMEOUT:?}:\n{}",
                self.log_tail(60)
            ),
        }
    }

    /// Waits until `/readyz` answers 200 (Docker answers, reconciliation is done); returns
    /// how long that took.
    pub async fn wait_ready(&self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let ready = poll::within(READY_TIMEOUT, || async {
            let probe = self.probe("/readyz", Duration::from_secs(10)).await;
            probe.is_ok_and(|(status, _)| status == 200).then_some(())
        });
        if ready.await.is_none() {
            bail!(
                "mcp-runner was not ready within {READY_TIMEOUT:?}:\n{}",
                self.log_tail(60)
            );
        }
        Ok(started.elapsed())
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("mcp-runner runs").id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process with SIGTERM and waits for it to exit; kills it and fails when that
    /// takes longer than the settings' `stop_timeout`. Returns its exit status.
    pub async fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().context("mcp-runner runs")?;
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
        if unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) } != 0 {
            let e = std::io::Error::last_os_error();
            self.child = Some(child);
            bail!("cannot signal mcp-runner: {e}");
        }
        let timeout = self.settings.stop_timeout;
        let exited = poll::within(timeout, || {
            let exited = child.try_wait().ok().flatten();
            async move { exited }
        });
        match exited.await {
            Some(status) => Ok(status),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("mcp-runner did not stop within {timeout:?} of SIGTERM; killed it")
            }
        }
    }

    /// Open file descriptors, threads and RSS of the process.
    pub fn usage(&self) -> Usage {
        let pid = self.pid();
        let read = || -> anyhow::Result<Usage> {
            Ok(Usage {
                fds: procfs::fds(pid)?,
                threads: procfs::threads(pid)?,
                rss_kib: procfs::status_field(pid, "VmRSS:")?,
            })
        };
        read().unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Deletes every deployment through the API (a few at a time), stops the process (it
    /// must exit cleanly) and asserts that no container, network, host user or row of the
    /// instance is left.
    pub async fn teardown(mut self) {
        self.delete_everything().await;
        let status = self.stop().await.unwrap_or_else(|e| panic!("{e:#}"));
        assert!(
            status.success(),
            "mcp-runner exited with {status} after SIGTERM:\n{}",
            self.log_tail(60)
        );
        assert_nothing_left(&self.instance, &self.db_path).await;
    }

    /// The lines of the process's log (all its runs) that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .map(String::from)
            .collect()
    }

    /// The last `n` lines of the process's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- last lines of the log of {} ---\n{}",
                self.instance,
                self.log_tail(60)
            );
        }
        self.kill();
        sweep::sweep_instance(&self.instance);
    }
}
