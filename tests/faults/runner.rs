//! The real `mcp-runner` binary as a child process: its own temp directory, database, instance
//! id, port, network pool slice and UID range; killed, restarted and measured by the scenarios.
//! Whatever it leaves behind when a scenario fails is removed when the `Runner` is dropped.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::mcp::Client;
use crate::support::{API_KEY, Api, docker, eventually, json_of};

/// Prefix of the instance ids of this binary: `flt-<pid>-<random>-<scenario>`. The pid tells
/// which runs are over, so their leftovers can be swept without touching a live run's.
const INSTANCE_PREFIX: &str = "flt-";

/// Every scenario holds this while it runs: they share two cores with each other, and one of
/// them restarts dockerd under everybody's feet.
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let turn = SERIAL.lock().await;
    sweep_abandoned();
    turn
}

/// Removes what runs of this binary that are no longer alive left behind.
fn sweep_abandoned() {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| {
        docker::require_docker();
        docker::sweep_instances(|instance| {
            let Some(rest) = instance.strip_prefix(INSTANCE_PREFIX) else {
                return false;
            };
            let pid = rest.split('-').next().unwrap_or("");
            !pid.is_empty()
                && pid.bytes().all(|b| b.is_ascii_digit())
                && !Path::new(&format!("/proc/{pid}")).exists()
        });
    });
}

/// Writes a scenario's one-line summary straight to the test's stderr (not captured).
pub fn summary(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// What a scenario's mcp-runner is started with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Short scenario name, part of the instance id.
    pub name: &'static str,
    /// Network pool slice: `10.230.<16 * slot>.0/20` (256 subnets of /28).
    pub network_pool: String,
    /// UID range: `3230000 + 10000 * slot` and the 9999 after it.
    pub uid_range: String,
    /// `DOCKER_HOST`, when not Docker's default.
    pub docker_host: Option<String>,
}

impl Settings {
    /// Settings of scenario `name`, using address and UID slice `slot` (0..16).
    pub fn new(name: &'static str, slot: u32) -> Settings {
        assert!(slot < 16, "16 slices of 10.230.0.0/16");
        let first = 3_230_000 + 10_000 * slot;
        Settings {
            name,
            network_pool: format!("10.230.{}.0/20", 16 * slot),
            uid_range: format!("{first}-{}", first + 9_999),
            docker_host: None,
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

/// A running (or killed) `mcp-runner` child process; its API through `Deref`.
pub struct Runner {
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

impl std::ops::Deref for Runner {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Runner {
    /// Starts a fresh instance (new directory, database and instance id) and waits until it
    /// serves HTTP (not until it is ready: that is [`Runner::wait_ready`]).
    pub async fn start(settings: Settings) -> Runner {
        docker::require_docker();
        let dir = tempfile::tempdir().expect("temp dir");
        let instance = format!(
            "{INSTANCE_PREFIX}{}-{:06x}-{}",
            std::process::id(),
            rand::random::<u32>() & 0xff_ffff,
            settings.name
        );
        let mut runner = Runner {
            api: Api::new(String::new()),
            instance,
            db_path: dir.path().join("app.db"),
            settings,
            child: None,
            log: dir.path().join("mcp-runner.log"),
            _dir: dir,
        };
        runner.spawn().await;
        runner
    }

    /// Starts the process again on the same database and instance id (after [`Runner::kill`]
    /// or [`Runner::stop`]), on a new port.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "the previous process still runs");
        self.spawn().await;
    }

    /// Starts the binary and waits for `/healthz`. A port taken between choosing and binding
    /// it is chosen again.
    async fn spawn(&mut self) {
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let log = File::options()
                .create(true)
                .append(true)
                .open(&self.log)
                .expect("open the log");
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_mcp-runner"));
            cmd.args([
                "--port",
                &port.to_string(),
                "--bind-ip",
                "127.0.0.1",
                "--db-path",
                self.db_path.to_str().expect("utf-8 path"),
                "--instance-id",
                &self.instance,
                "--network-pool",
                &self.settings.network_pool,
                "--uid-range",
                &self.settings.uid_range,
                "--default-max-memory",
                "256",
            ])
            .env("API_KEY", API_KEY)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("SENTRY_DSN")
            .env_remove("CLEANUP_ON_SHUTDOWN")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
            if let Some(host) = &self.settings.docker_host {
                cmd.args(["--docker-host", host]);
            }
            self.child = Some(cmd.spawn().expect("start mcp-runner"));
            self.api = Api::new(format!("http://127.0.0.1:{port}"));
            if self.wait_healthy().await {
                return;
            }
            self.child = None;
        }
        panic!("mcp-runner did not start:\n{}", self.log_tail());
    }

    /// Polls `/healthz`; false when the process exited because its port was taken.
    async fn wait_healthy(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                if self.log_tail().contains("cannot listen") {
                    return false;
                }
                panic!("mcp-runner exited with {status}:\n{}", self.log_tail());
            }
            let probe = self
                .http
                .get(format!("{}/healthz", self.url))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if probe.is_ok_and(|r| r.status() == 200) {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "mcp-runner did not answer /healthz within 30 s:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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

    /// Stops the process with SIGTERM and waits for a clean exit.
    pub async fn stop(&mut self) {
        let pid = self.pid().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        let mut child = self.child.take().expect("mcp-runner runs");
        let status = eventually(
            "mcp-runner to exit after SIGTERM",
            Duration::from_secs(30),
            || {
                let exited = child.try_wait().expect("wait for mcp-runner");
                async move { exited }
            },
        )
        .await;
        assert!(
            status.success(),
            "mcp-runner exited with {status} after SIGTERM:\n{}",
            self.log_tail()
        );
    }

    /// `GET /readyz`: status and body.
    pub async fn readyz(&self) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}/readyz", self.url))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("readyz request");
        json_of(resp).await
    }

    /// `GET /healthz` status.
    pub async fn healthz(&self) -> u16 {
        self.http
            .get(format!("{}/healthz", self.url))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("healthz request")
            .status()
            .as_u16()
    }

    /// Waits until `/readyz` answers 200 (Docker answers, reconciliation is done); returns
    /// how long that took.
    pub async fn wait_ready(&self) -> Duration {
        let started = Instant::now();
        eventually("/readyz 200", Duration::from_secs(90), || async {
            (self.readyz().await.0 == 200).then_some(())
        })
        .await;
        started.elapsed()
    }

    /// Open file descriptors, threads and RSS of the process.
    pub fn usage(&self) -> Usage {
        let pid = self.pid();
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("read the fd directory")
            .count();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        };
        Usage {
            fds,
            threads: field("Threads:") as usize,
            rss_kib: field("VmRSS:"),
        }
    }

    /// Deletes every deployment through the API (a few at a time), stops the process and
    /// asserts that no container, network, host user or row of the instance is left.
    pub async fn teardown(mut self) {
        let ids: Vec<String> = self
            .list()
            .await
            .iter()
            .map(|d| d["id"].as_str().expect("id").to_owned())
            .collect();
        delete_all(&self, &ids).await;
        self.stop().await;
        crate::support::assert_nothing_left(&self.instance, &self.db_path).await;
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

    /// The last lines of the process's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- last lines of the log of {} ---\n{}",
                self.instance,
                self.log_tail()
            );
        }
        self.kill();
        let instance = self.instance.clone();
        docker::sweep_instances(|i| i == instance);
    }
}

/// Deletes deployments concurrently (8 at a time), asserting 200 for each.
pub async fn delete_all(api: &Api, ids: &[String]) {
    use futures_util::StreamExt;
    futures_util::stream::iter(ids)
        .for_each_concurrent(8, |id| async move {
            let (status, body) = api.delete(id).await;
            assert_eq!(status, 200, "delete {id}: {body}");
        })
        .await;
}

/// Calls the fixture's `echo` through a fresh Streamable HTTP session of deployment `id`.
pub async fn echo(api: &Api, id: &str, text: &str) -> Result<String, String> {
    let client = Client::streamable(&api.mcp_url(id), "faults").await;
    let answer = client.call("echo", json!({ "text": text })).await;
    client.close().await;
    answer
}

/// A bare `initialize` POST to deployment `id`'s Streamable HTTP endpoint: status and body.
pub async fn initialize(api: &Api, id: &str) -> (u16, Value) {
    let resp = api
        .http
        .post(api.mcp_url(id))
        .header("accept", "application/json, text/event-stream")
        .json(&json!({
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "faults", "version": "0"}
            }
        }))
        .send()
        .await
        .expect("initialize request");
    json_of(resp).await
}

/// Runs `f`, failing the test when it takes longer than `bound`; returns its output and the
/// time it took.
pub async fn bounded<T>(
    what: &str,
    bound: Duration,
    f: impl std::future::Future<Output = T>,
) -> (T, Duration) {
    let started = Instant::now();
    match tokio::time::timeout(bound, f).await {
        Ok(v) => (v, started.elapsed()),
        Err(_) => panic!("{what} did not finish within {bound:?}"),
    }
}

/// The `mcp-runner.deployment` labels of the instance's objects of `kind` (`container` or
/// `network`); network holders (label `mcp-runner.role=netns`) are not counted as
/// containers.
pub fn labelled(kind: &str, instance: &str) -> Vec<String> {
    let filter = format!("label=mcp-runner.instance={instance}");
    let format = "{{.Label \"mcp-runner.deployment\"}} {{.Label \"mcp-runner.role\"}}";
    let args = if kind == "container" {
        vec!["ps", "-a", "--filter", &filter, "--format", format]
    } else {
        vec!["network", "ls", "--filter", &filter, "--format", format]
    };
    docker::docker(&args)
        .lines()
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [deployment] => Some(deployment.to_owned()),
            _ => None,
        })
        .collect()
}

/// Containers labelled with `instance` that run deployments (or their sessions): network
/// holders (label `mcp-runner.role=netns`) left out.
pub fn workload_containers_of(instance: &str) -> Vec<String> {
    let filter = format!("label=mcp-runner.instance={instance}");
    let format = "{{.ID}} {{.Label \"mcp-runner.role\"}}";
    docker::docker(&["ps", "-a", "--filter", &filter, "--format", format])
        .lines()
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [id] => Some(id.to_owned()),
            _ => None,
        })
        .collect()
}

/// Spares the server keeps (`NETWORK_SPARES`, 2 by default): a network and a host user each.
pub const SPARES: usize = 2;

/// Deployment ids that a network made ahead or a host user of the instance carries but no
/// row has: the spares, and anything the sweep has yet to remove.
async fn unexplained_ids(instance: &str, db_path: &Path) -> std::collections::HashSet<String> {
    let rows: std::collections::HashSet<String> = rows(db_path)
        .await
        .into_iter()
        .map(|(id, _, _)| id)
        .collect();
    let users = docker::users_of(instance);
    docker::made_ahead_deployments_of(instance)
        .into_iter()
        .chain(
            users
                .iter()
                .filter_map(|u| Some(format!("dp_{}", u.strip_prefix("mcp-")?))),
        )
        .filter(|d| !rows.contains(d))
        .collect()
}

/// The ids of the instance's spares (see `unexplained_ids`). Asserts that there are no more
/// than the server keeps (the check after the server stops finds anything left beyond that).
async fn spare_ids(instance: &str, db_path: &Path) -> std::collections::HashSet<String> {
    let spares = unexplained_ids(instance, db_path).await;
    assert!(
        spares.len() <= SPARES,
        "{} deployment ids with a network made ahead or a user but no row (at most {SPARES} \
         spares are kept): {spares:?}",
        spares.len()
    );
    spares
}

/// The `mcp-runner.deployment` labels of the instance's networks, its spares' left out.
pub async fn deployment_networks(instance: &str, db_path: &Path) -> Vec<String> {
    let networks = labelled("network", instance);
    let spares = spare_ids(instance, db_path).await;
    networks
        .into_iter()
        .filter(|d| !spares.contains(d))
        .collect()
}

/// The instance's host users, its spares' left out.
pub async fn deployment_users(instance: &str, db_path: &Path) -> Vec<String> {
    let users = docker::users_of(instance);
    let spares = spare_ids(instance, db_path).await;
    users
        .into_iter()
        .filter(|u| {
            u.strip_prefix("mcp-")
                .is_none_or(|rest| !spares.contains(&format!("dp_{rest}")))
        })
        .collect()
}

/// The subnets of Docker networks `ids`.
pub fn subnets(ids: &[String]) -> Vec<String> {
    if ids.is_empty() {
        return Vec::new();
    }
    let mut args = vec!["network", "inspect"];
    args.extend(ids.iter().map(String::as_str));
    let all: Value = serde_json::from_str(&docker::docker(&args)).expect("inspect JSON");
    all.as_array()
        .expect("inspect array")
        .iter()
        .map(|n| {
            n["IPAM"]["Config"][0]["Subnet"]
                .as_str()
                .expect("subnet")
                .to_owned()
        })
        .collect()
}

/// Every row of a database file: (id, status, username).
pub async fn rows(db_path: &Path) -> Vec<(String, String, String)> {
    let store = mcp_runner::store::Store::open(db_path)
        .await
        .expect("open db");
    let rows = store
        .list()
        .await
        .expect("list rows")
        .into_iter()
        .map(|d| (d.id, d.status.as_str().to_owned(), d.username))
        .collect();
    store.close().await;
    rows
}
