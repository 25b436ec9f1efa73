//! Docker going away: unreachable at start-up and during requests (a DOCKER_HOST socket path
//! that appears and disappears). The restart of dockerd under running deployments is in
//! `dockerd.rs`; it shares the checks of answers without Docker defined here.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use mcp_test_support::docker::labelled;
use mcp_test_support::eventually;
use mcp_test_support::fixture::test_image;
use mcp_test_support::leftovers::{deployment_networks, deployment_users, rows};
use mcp_test_support::mcp::Client;
use mcp_test_support::server::child::ChildServer;

use crate::scenario::{self, bounded, echo, initialize, settings, start, summary, until_ready};

/// Longest an answer may take while Docker is away.
pub(crate) const BOUND: Duration = Duration::from_secs(15);

/// The socket of the real daemon.
fn docker_socket() -> PathBuf {
    let path = match std::env::var("DOCKER_HOST") {
        Ok(host) if host.starts_with("unix://") => PathBuf::from(&host["unix://".len()..]),
        Ok(host) if !host.is_empty() => {
            panic!("this test needs Docker on a unix socket, DOCKER_HOST is {host}")
        }
        _ => PathBuf::from("/var/run/docker.sock"),
    };
    assert!(
        is_socket(&path),
        "{} is not Docker's socket",
        path.display()
    );
    path
}

fn is_socket(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

/// Asserts a readiness answer of 503 whose `docker` check is not `ok`; returns that check.
pub(crate) fn docker_not_ready(status: u16, body: &Value) -> String {
    assert_eq!(status, 503, "readyz while Docker is away: {body}");
    assert_eq!(body["status"], "unavailable", "{body}");
    let docker = body["checks"]["docker"].as_str().unwrap_or("").to_owned();
    assert!(
        !docker.is_empty() && docker != "ok",
        "readyz names docker: {body}"
    );
    docker
}

/// Asserts a management error answer: 503 with the JSON error body.
fn unavailable(status: u16, body: &Value, what: &str) {
    assert_eq!(status, 503, "{what}: {body}");
    assert_eq!(body["statusCode"], 503, "{what}: {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what} says why: {body}"
    );
}

/// Asserts a JSON-RPC error answer with a 5xx status.
pub(crate) fn rpc_failure(status: u16, body: &Value, what: &str) {
    assert!((500..600).contains(&status), "{what}: {status} {body}");
    assert_eq!(body["jsonrpc"], "2.0", "{what}: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: {body}"
    );
}

async fn create(app: &ChildServer, body: &Value) -> (u16, Value) {
    bounded("a create", BOUND, app.create(body)).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_unreachable_at_start_up_and_during_requests() {
    let _turn = scenario::one_at_a_time().await;
    let started = Instant::now();
    let image = test_image().await;
    let body = json!({"image": image, "transport": {"type": "stdio"}});
    let sockdir = tempfile::tempdir().expect("temp dir");
    let link = sockdir.path().join("docker.sock");
    let mut settings = settings("unreach", 2);
    settings.docker_host = Some(format!("unix://{}", link.display()));
    let mut app = start(settings).await;

    // No socket yet: alive, not ready, creates refused with a clear 503.
    assert_eq!(app.healthz().await, 200);
    let (status, ready) = app.readyz().await;
    let why_start = docker_not_ready(status, &ready);
    let (status, refused) = create(&app, &body).await;
    unavailable(status, &refused, "a create before Docker answered");
    assert!(app.alive(), "mcp-runner survives requests without Docker");

    // The socket appears: mcp-runner connects by itself.
    let target = docker_socket();
    std::os::unix::fs::symlink(&target, &link).expect("link the Docker socket");
    let connected_in = until_ready(&app).await;
    let running = app.create_fixture(json!({})).await;
    let stopped = app.create_fixture(json!({"autoStart": false})).await;
    let running_id = running["id"].as_str().expect("id").to_owned();
    let stopped_id = stopped["id"].as_str().expect("id").to_owned();
    let session = Client::streamable(&app.mcp_url(&running_id), "outage").await;
    assert_eq!(
        session.call("echo", json!({"text": "up"})).await.as_deref(),
        Ok("up")
    );

    // The socket goes away.
    std::fs::remove_file(&link).expect("remove the socket link");
    let (status, ready) = bounded("readyz", BOUND, app.readyz()).await.0;
    let why_gone = docker_not_ready(status, &ready);
    let (status, refused) = create(&app, &body).await;
    unavailable(status, &refused, "a create while Docker is away");
    // A stopped deployment needs Docker to start: a JSON-RPC error, in bounded time.
    let ((init_status, rpc), took) =
        bounded("an MCP initialize", BOUND, initialize(&app, &stopped_id)).await;
    rpc_failure(
        init_status,
        &rpc,
        "initialize of a stopped deployment without Docker",
    );
    // Reading needs only the database; a running stdio server's session needs only its
    // attach stream, which is open already.
    assert_eq!(app.list().await.len(), 2);
    assert_eq!(
        bounded(
            "tools/call",
            BOUND,
            session.call("echo", json!({"text": "still"}))
        )
        .await
        .0
        .as_deref(),
        Ok("still")
    );
    session.close().await;
    assert_eq!(app.healthz().await, 200);
    assert!(app.alive(), "mcp-runner survives requests without Docker");

    // Docker back: nothing the refused create began may be left over (its host user, its
    // row), once the retries that wait for Docker have run.
    std::os::unix::fs::symlink(&target, &link).expect("link the Docker socket again");
    until_ready(&app).await;
    let cleaned = Instant::now();
    eventually(
        "the leftovers of the create refused without Docker to be removed",
        Duration::from_secs(60),
        || async {
            let rows = rows(&app.db_path).await;
            let users = deployment_users(&app.instance, &app.db_path).await;
            (rows.len() == 2 && users.len() == 2).then_some(())
        },
    )
    .await;
    let cleaned_in = cleaned.elapsed();
    assert_eq!(labelled("container", &app.instance).len(), 2);
    assert_eq!(
        deployment_networks(&app.instance, &app.db_path).await.len(),
        2
    );
    assert_eq!(echo(&app, &stopped_id, "back").await.as_deref(), Ok("back"));
    app.teardown().await;
    summary(&format!(
        "faults/docker-unreachable: before the socket readyz 503 ({why_start}); connected {:.1} s \
         after it appeared; without it readyz 503 ({why_gone}), create 503, initialize \
         {init_status} in {} ms; with it back the refused create's leftovers were gone after \
         {:.1} s; total {:.1} s",
        connected_in.as_secs_f64(),
        took.as_millis(),
        cleaned_in.as_secs_f64(),
        started.elapsed().as_secs_f64()
    ));
}
