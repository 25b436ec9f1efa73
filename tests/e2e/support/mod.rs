//! Test harness: a real mcp-runner on 127.0.0.1:0 with its own SQLite file and instance id,
//! driving the real Docker daemon; the fixture image; and checks that nothing is left behind.

pub mod docker;
pub mod fixture;
pub mod mcp;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use mcp_runner::app::{AppState, Server};
use mcp_runner::config::Config;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use fixture::fixture_image;

/// The API key of every test server.
pub const API_KEY: &str = "test-key-0123456789abcdef";

/// Logs of the servers under test go to the test output when `TEST_LOG` is set (a filter
/// such as `mcp_runner=debug`).
fn init_logging() {
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// Polls `f` until it returns `Some`, failing the test after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The HTTP API of a running mcp-runner, in-process ([`TestApp`]) or a child process.
#[derive(Clone)]
pub struct Api {
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    /// HTTP client.
    pub http: reqwest::Client,
}

/// A running mcp-runner under test; its API through `Deref`.
pub struct TestApp {
    api: Api,
    /// Its instance id (labels of everything it makes).
    pub instance: String,
    /// Its database file.
    pub db_path: PathBuf,
    state: AppState,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    _dir: Option<tempfile::TempDir>,
}

/// How to start a test server.
#[derive(Clone)]
pub struct Options {
    /// Extra command-line arguments.
    pub args: Vec<String>,
    /// Reuse this instance id and database (restart tests).
    pub reuse: Option<(String, PathBuf)>,
    /// Wait until Docker answered and reconciliation finished.
    pub wait_ready: bool,
    /// Address to listen on (the port is always picked by the system); `url` uses 127.0.0.1
    /// when this is 0.0.0.0.
    pub bind_ip: std::net::IpAddr,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            args: vec![],
            reuse: None,
            wait_ready: true,
            bind_ip: std::net::Ipv4Addr::LOCALHOST.into(),
        }
    }
}

impl TestApp {
    /// Starts a server with default test options.
    pub async fn spawn() -> TestApp {
        Self::spawn_with(Options::default()).await
    }

    /// Starts a server.
    pub async fn spawn_with(opts: Options) -> TestApp {
        init_logging();
        docker::require_docker();
        // Once per run, before this run makes anything: what interrupted runs left.
        static SWEPT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
        SWEPT
            .get_or_init(|| async {
                tokio::task::spawn_blocking(docker::sweep_leftovers)
                    .await
                    .expect("sweep task");
            })
            .await;
        let (instance, db_path, dir) = match opts.reuse {
            Some((instance, db)) => (instance, db, None),
            None => {
                let dir = tempfile::tempdir().expect("temp dir");
                let instance = format!("t-{}", &mcp_runner::deployments::new_id()[3..15]);
                (instance, dir.path().join("app.db"), Some(dir))
            }
        };
        let mut args: Vec<String> = [
            "mcp-runner",
            "--api-key",
            API_KEY,
            "--db-path",
            db_path.to_str().expect("utf-8 path"),
            "--instance-id",
            &instance,
            "--min-idle-seconds",
            "1",
            "--reaper-interval-ms",
            "100",
            "--default-max-memory",
            "256",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        args.extend(opts.args);
        let config = Config::try_parse_from(&args).expect("test config parses");
        config.validate().expect("test config is valid");
        let listener = tokio::net::TcpListener::bind((opts.bind_ip, 0))
            .await
            .expect("bind");
        let mut addr: SocketAddr = listener.local_addr().expect("addr");
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let server = Server::build(config, API_KEY.to_owned())
            .await
            .expect("server builds");
        let state = server.state();
        let stop = server.shutdown_token();
        let task = tokio::spawn(server.serve(listener, std::future::pending()));
        let app = TestApp {
            api: Api::new(format!("http://{addr}")),
            instance,
            db_path,
            state,
            stop,
            task,
            _dir: dir,
        };
        if opts.wait_ready {
            let state = app.state.clone();
            eventually("Docker and reconciliation", Duration::from_secs(60), || {
                let ready = state.is_ready();
                async move { ready.then_some(()) }
            })
            .await;
        }
        app
    }

    /// Waits until the server's own sweep after start-up has run (the next is minutes away).
    pub async fn first_sweep_done(&self) {
        let deployments = self
            .state
            .deployments()
            .expect("the server is ready")
            .clone();
        eventually("the sweep after start-up", Duration::from_secs(60), || {
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
        self.state
            .deployments()
            .expect("the server is ready")
            .sweep()
            .await
            .expect("sweep")
    }

    /// Docker API requests this server has made so far.
    pub fn docker_requests(&self) -> u64 {
        self.state
            .deployments()
            .expect("the server is ready")
            .runtime()
            .requests_made()
    }

    /// Stops the server gracefully and waits for it (deployments are kept).
    pub async fn stop(self) -> (String, PathBuf, Option<tempfile::TempDir>) {
        self.stop.cancel();
        self.task
            .await
            .expect("server task joins")
            .expect("server stops cleanly");
        (self.instance, self.db_path, self._dir)
    }

    /// Deletes every deployment through the API, stops the server, and asserts that no
    /// container, network, host user or row of this instance is left.
    pub async fn teardown(self) {
        for d in self.list().await {
            let id = d["id"].as_str().expect("id");
            let (status, body) = self.delete(id).await;
            assert_eq!(status, 200, "teardown delete failed: {body}");
        }
        let (instance, db_path, _dir) = self.stop().await;
        assert_nothing_left(&instance, &db_path).await;
    }
}

impl std::ops::Deref for TestApp {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Api {
    /// The API at `url`.
    pub fn new(url: String) -> Api {
        Api {
            url,
            http: reqwest::Client::new(),
        }
    }

    /// The Streamable HTTP endpoint of deployment `id`.
    pub fn mcp_url(&self, id: &str) -> String {
        format!("{}/mcp-server/{id}/mcp", self.url)
    }

    /// A request with the API key.
    pub fn authed(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .header("x-api-key", API_KEY)
    }

    /// `POST /api/deployment` with `body`; returns status and JSON.
    pub async fn create(&self, body: &Value) -> (u16, Value) {
        let resp = self
            .authed(reqwest::Method::POST, "/api/deployment")
            .json(body)
            .send()
            .await
            .expect("create request");
        json_of(resp).await
    }

    /// Creates a fixture deployment and returns its data, asserting 201.
    pub async fn create_fixture(&self, extra: Value) -> Value {
        let mut body = json!({"image": fixture_image().await, "transport": {"type": "stdio"}});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        let (status, json) = self.create(&body).await;
        assert_eq!(status, 201, "create failed: {json}");
        json["deployment"].clone()
    }

    /// `GET /api/deployment/{id}`.
    pub async fn get(&self, id: &str) -> (u16, Value) {
        let resp = self
            .authed(reqwest::Method::GET, &format!("/api/deployment/{id}"))
            .send()
            .await
            .expect("get request");
        json_of(resp).await
    }

    /// `GET /api/deployment`.
    pub async fn list(&self) -> Vec<Value> {
        let resp = self
            .authed(reqwest::Method::GET, "/api/deployment")
            .send()
            .await
            .expect("list request");
        let (status, json) = json_of(resp).await;
        assert_eq!(status, 200, "list failed: {json}");
        json.as_array().cloned().expect("list is an array")
    }

    /// `DELETE /api/deployment/{id}`.
    pub async fn delete(&self, id: &str) -> (u16, Value) {
        let resp = self
            .authed(reqwest::Method::DELETE, &format!("/api/deployment/{id}"))
            .send()
            .await
            .expect("delete request");
        json_of(resp).await
    }
}

/// Asserts that nothing of `instance` exists: containers, networks, host users, rows.
pub async fn assert_nothing_left(instance: &str, db_path: &std::path::Path) {
    assert_eq!(
        docker::containers_of(instance),
        Vec::<String>::new(),
        "containers left"
    );
    assert_eq!(
        docker::networks_of(instance),
        Vec::<String>::new(),
        "networks left"
    );
    assert_eq!(
        docker::users_of(instance),
        Vec::<String>::new(),
        "host users left"
    );
    assert_eq!(row_count(db_path).await, 0, "rows left");
}

/// Number of rows in a database file.
pub async fn row_count(db_path: &std::path::Path) -> i64 {
    let store = mcp_runner::store::Store::open(db_path)
        .await
        .expect("open db");
    let n = store.list().await.expect("list rows").len() as i64;
    store.close().await;
    n
}

/// Status and JSON body of a response.
pub async fn json_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, json)
}
