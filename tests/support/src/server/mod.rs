//! mcp-runner under test: in this process ([`TestApp`], what the end-to-end tests and the
//! in-process benchmarks use) or as a child process of the real binary ([`child`], what the
//! fault tests and the scale benchmark use).
//!
//! In process, the server has its own temporary SQLite file and instance id, listens on
//! 127.0.0.1 with a port the system picks, and drives the real Docker daemon, or a backend
//! the caller gives it (an in-memory `FakeBackend`, which needs neither Docker nor root).

pub mod child;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::Parser;
use mcp_runner::app::Server;
use mcp_runner::config::Config;
use mcp_runner::runtime::SandboxBackend;
use mcp_runner::runtime::fake::FakeBackend;
use mcp_runner::state::AppState;
use tokio_util::sync::CancellationToken;

use crate::api::Api;
use crate::docker::{self, sweep};
use crate::leftovers::{assert_nothing_left, row_count};
use crate::{API_KEY, poll};

/// Name prefix of the threads of a server with a runtime of its own (CPU accounting looks
/// for it).
pub const SERVER_THREADS: &str = "mcpr-server";

/// How long start-up (the backend answering, reconciliation) may take.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Arguments every in-process test server gets unless [`Options::test_tuning`] is off: quick
/// idle limits and reaper, and a memory limit that lets many fixtures run on a small machine.
const TEST_TUNING: [&str; 6] = [
    "--min-idle-seconds",
    "1",
    "--reaper-interval-ms",
    "100",
    "--default-max-memory",
    "256",
];

/// The sandbox backend of an in-process server.
#[derive(Clone, Default)]
pub enum Backend {
    /// The real Docker daemon (with runsc), as the configuration names it.
    #[default]
    Docker,
    /// An in-memory fake: no Docker check or sweep happens, and the teardown checks that the
    /// fake holds nothing.
    Fake(Arc<FakeBackend>),
}

/// Where an in-process server's tasks run.
#[derive(Clone, Copy, Debug, Default)]
pub enum Threads {
    /// On the caller's runtime.
    #[default]
    Caller,
    /// On a runtime of its own whose threads are named [`SERVER_THREADS`], with this many
    /// worker threads, or as many as mcp-runner itself would start (`WORKER_THREADS`'
    /// default) when `None`.
    Own(Option<usize>),
}

/// How to start an in-process server.
#[derive(Clone)]
pub struct Options {
    /// Extra command-line arguments.
    pub args: Vec<String>,
    /// Reuse this instance id and database (restart tests).
    pub reuse: Option<(String, PathBuf)>,
    /// Prefix of a new instance id ([`sweep::TEST`] or [`sweep::BENCH`]).
    pub prefix: &'static str,
    /// Wait until the backend answered and reconciliation finished.
    pub wait_ready: bool,
    /// Address to listen on (the port is always picked by the system); `url` uses 127.0.0.1
    /// when this is 0.0.0.0.
    pub bind_ip: IpAddr,
    /// Start with the tests' quick idle limits and reaper (see `TEST_TUNING`); off, the
    /// server runs with mcp-runner's defaults, as deployed (benchmarks).
    pub test_tuning: bool,
    /// The sandbox backend.
    pub backend: Backend,
    /// Where its tasks run.
    pub threads: Threads,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            args: vec![],
            reuse: None,
            prefix: sweep::TEST,
            wait_ready: true,
            bind_ip: Ipv4Addr::LOCALHOST.into(),
            test_tuning: true,
            backend: Backend::Docker,
            threads: Threads::Caller,
        }
    }
}

/// Logs of the servers under test go to the test output when `TEST_LOG` is set (a filter such
/// as `mcp_runner=debug`).
fn init_logging() {
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// The running server's task.
enum Task {
    Caller(tokio::task::JoinHandle<anyhow::Result<()>>),
    Own(std::thread::JoinHandle<anyhow::Result<()>>),
}

impl Task {
    async fn join(self) -> anyhow::Result<()> {
        match self {
            Task::Caller(task) => task.await.context("the server task")?,
            Task::Own(thread) => tokio::task::spawn_blocking(move || thread.join())
                .await
                .context("join the server thread")?
                .map_err(|_| anyhow!("the server thread panicked"))?,
        }
    }
}

/// What the server reports once it listens.
type Started = (SocketAddr, AppState, CancellationToken);

/// Builds the server, reports it through `started`, and serves until stopped.
async fn run(
    config: Config,
    bind_ip: IpAddr,
    backend: Option<Arc<dyn SandboxBackend>>,
    started: tokio::sync::oneshot::Sender<anyhow::Result<Started>>,
) -> anyhow::Result<()> {
    let built = async {
        let listener = tokio::net::TcpListener::bind((bind_ip, 0))
            .await
            .context("bind")?;
        let mut addr = listener.local_addr()?;
        if addr.ip().is_unspecified() {
            addr.set_ip(Ipv4Addr::LOCALHOST.into());
        }
        let server = Server::build_on(config, API_KEY.to_owned(), backend)
            .await
            .context("the server builds")?;
        anyhow::Ok((listener, addr, server))
    };
    match built.await {
        Ok((listener, addr, server)) => {
            let _ = started.send(Ok((addr, server.state(), server.shutdown_token())));
            server.serve(listener, std::future::pending()).await
        }
        Err(e) => {
            let _ = started.send(Err(anyhow!("{e:#}")));
            Err(e)
        }
    }
}

/// A running in-process mcp-runner; its API through `Deref`.
pub struct TestApp {
    api: Api,
    /// Its instance id (labels of everything it makes).
    pub instance: String,
    /// Its database file.
    pub db_path: PathBuf,
    state: AppState,
    stop: CancellationToken,
    task: Task,
    backend: Backend,
    _dir: Option<tempfile::TempDir>,
}

impl TestApp {
    /// Starts a server with default test options.
    pub async fn spawn() -> TestApp {
        Self::spawn_with(Options::default()).await
    }

    /// Starts a server, failing the test when it cannot.
    pub async fn spawn_with(opts: Options) -> TestApp {
        Self::start(opts).await.unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Starts a server (after the sweep of what interrupted runs left, once per process, when
    /// it drives Docker) and, unless told otherwise, waits until it is ready.
    pub async fn start(opts: Options) -> anyhow::Result<TestApp> {
        init_logging();
        let backend: Option<Arc<dyn SandboxBackend>> = match &opts.backend {
            Backend::Docker => {
                docker::check()?;
                tokio::task::spawn_blocking(sweep::sweep_abandoned).await?;
                None
            }
            Backend::Fake(fake) => Some(fake.clone()),
        };
        let (instance, db_path, dir) = match opts.reuse {
            Some((instance, db)) => (instance, db, None),
            None => {
                let dir = tempfile::tempdir().context("temp dir")?;
                let instance = sweep::instance_id(opts.prefix, "");
                (instance, dir.path().join("app.db"), Some(dir))
            }
        };
        let db = db_path.to_str().context("utf-8 temp path")?;
        let mut args = vec![
            "mcp-runner",
            "--api-key",
            API_KEY,
            "--db-path",
            db,
            "--instance-id",
            &instance,
        ];
        if opts.test_tuning {
            args.extend(TEST_TUNING);
        }
        args.extend(opts.args.iter().map(String::as_str));
        let config = Config::try_parse_from(&args).context("the server's configuration")?;
        config.validate().map_err(|e| anyhow!("{e}"))?;

        let (tx, rx) = tokio::sync::oneshot::channel();
        let serving = run(config.clone(), opts.bind_ip, backend, tx);
        let task = match opts.threads {
            Threads::Caller => Task::Caller(tokio::spawn(serving)),
            Threads::Own(threads) => {
                let threads = threads.unwrap_or_else(|| config.runtime_threads());
                let thread = std::thread::Builder::new()
                    .name(format!("{SERVER_THREADS}-main"))
                    .spawn(move || {
                        tokio::runtime::Builder::new_multi_thread()
                            .worker_threads(threads)
                            .thread_name(SERVER_THREADS)
                            .enable_all()
                            .build()?
                            .block_on(serving)
                    })
                    .context("spawn the server thread")?;
                Task::Own(thread)
            }
        };
        let (addr, state, stop) = rx.await.context("the server ended during start-up")??;
        let app = TestApp {
            api: Api::new(format!("http://{addr}")),
            instance,
            db_path,
            state,
            stop,
            task,
            backend: opts.backend,
            _dir: dir,
        };
        if opts.wait_ready {
            let state = app.state.clone();
            let ready = poll::within(READY_TIMEOUT, || {
                let ready = state.is_ready();
                async move { ready.then_some(()) }
            });
            if ready.await.is_none() {
                bail!(
                    "mcp-runner did not become ready within {READY_TIMEOUT:?} (backend, reconciliation)"
                );
            }
        }
        Ok(app)
    }

    /// The API.
    pub fn api(&self) -> &Api {
        &self.api
    }

    /// The server's shared state.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    fn deployments(&self) -> &mcp_runner::deployments::Deployments {
        self.state.deployments().expect("the server is ready")
    }

    /// Waits until the server's own sweep after start-up has run (the next is minutes away).
    pub async fn first_sweep_done(&self) {
        let deployments = self.deployments().clone();
        poll::eventually("the sweep after start-up", READY_TIMEOUT, || {
            let done = deployments.sweeps_done() >= 1;
            async move { done.then_some(()) }
        })
        .await;
    }

    /// The stderr tail saved in deployment `id`'s database row (not the live tail the logs
    /// endpoint may answer from).
    pub async fn saved_stderr(&self, id: &str) -> Option<String> {
        let row = self.state.store().get(id).await.expect("read the row")?;
        Some(row.stderr)
    }

    /// Runs the server's sweep of what no row explains now.
    pub async fn sweep(&self) -> mcp_runner::deployments::Reconciled {
        self.deployments().sweep().await.expect("sweep")
    }

    /// Requests this server has made to its sandbox backend so far.
    pub fn backend_requests(&self) -> u64 {
        self.deployments().backend_requests()
    }

    /// Stops the server gracefully and waits for it (deployments are kept); returns its
    /// instance id, database and the directory that holds it.
    pub async fn try_stop(self) -> anyhow::Result<(String, PathBuf, Option<tempfile::TempDir>)> {
        self.stop.cancel();
        self.task.join().await.context("the server stops cleanly")?;
        Ok((self.instance, self.db_path, self._dir))
    }

    /// Like [`TestApp::try_stop`], failing the test when the server does not stop cleanly.
    pub async fn stop(self) -> (String, PathBuf, Option<tempfile::TempDir>) {
        self.try_stop().await.unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Deletes every deployment through the API, stops the server, and asserts that nothing
    /// of this instance is left: no container, network, host user or row (on a fake backend:
    /// nothing in the fake, and no row).
    pub async fn teardown(self) {
        self.delete_everything().await;
        let backend = self.backend.clone();
        let (instance, db_path, _dir) = self.stop().await;
        match backend {
            Backend::Docker => assert_nothing_left(&instance, &db_path).await,
            Backend::Fake(fake) => {
                assert!(
                    fake.is_empty(),
                    "left in the fake backend: sandboxes {:?}, places {:?}, identities {:?}",
                    fake.sandboxes(),
                    fake.places(),
                    fake.identities()
                );
                assert_eq!(row_count(&db_path).await, 0, "rows left");
            }
        }
    }
}

impl std::ops::Deref for TestApp {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}
