//! What every fault scenario does: take its turn, start its mcp-runner on a slice of its own,
//! bound and time what it waits for, talk MCP to a deployment, and print its summary.

use std::io::Write;
use std::time::{Duration, Instant};

use mcp_test_support::docker::sweep;
use mcp_test_support::fixture::test_image;
use mcp_test_support::mcp::Client;
use mcp_test_support::server::child::{ChildServer, Settings};
use mcp_test_support::{Api, json_of};
use serde_json::{Value, json};

/// Every scenario holds this while it runs: they share two cores with each other, and one of
/// them restarts dockerd under everybody's feet.
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// The settings of scenario `name` (at most 7 characters, part of the instance id), using
/// address and UID slice `slot` (0..16): network pool `10.230.<16 * slot>.0/20` (256 subnets
/// of /28), UIDs `3230000 + 10000 * slot` and the 9999 after it.
pub fn settings(name: &str, slot: u32) -> Settings {
    assert!(slot < 16, "16 slices of 10.230.0.0/16");
    let first = 3_230_000 + 10_000 * slot;
    let mut settings = Settings::new(
        env!("CARGO_BIN_EXE_mcp-runner"),
        sweep::instance_id(sweep::FAULTS, name),
        &format!("10.230.{}.0/20", 16 * slot),
        &format!("{first}-{}", first + 9_999),
    );
    settings.args = vec!["--default-max-memory".into(), "256".into()];
    settings
}

/// Starts the scenario's mcp-runner and waits until it serves HTTP.
pub async fn start(settings: Settings) -> ChildServer {
    ChildServer::start(settings)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Starts the scenario's mcp-runner (see [`settings`]) once the fixture image is there, and
/// waits until it is ready.
pub async fn ready_server(name: &str, slot: u32) -> ChildServer {
    test_image().await;
    let app = start(settings(name, slot)).await;
    until_ready(&app).await;
    app
}

/// Waits until the scenario's mcp-runner is ready; returns how long that took.
pub async fn until_ready(app: &ChildServer) -> Duration {
    app.wait_ready().await.unwrap_or_else(|e| panic!("{e:#}"))
}

/// Writes a scenario's one-line summary straight to the test's stderr (not captured).
pub fn summary(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
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
