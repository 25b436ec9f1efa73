//! What happens without a request: the reaper's deadlines, restart reconciliation, and
//! cleanup on shutdown.

use std::process::Command;
use std::time::{Duration, Instant};

use chrono::DateTime;
use serde_json::json;

use mcp_test_support::docker::{docker, exists, inspect, passwd_entry};
use mcp_test_support::fixture::test_image;
use mcp_test_support::mcp::Client;
use mcp_test_support::{Options, TestApp, assert_nothing_left, eventually};

#[tokio::test]
async fn reaper_pauses_then_deletes_at_the_deadlines() {
    let app = TestApp::spawn().await;
    let d = app
        .create_fixture(json!({"pauseAfterSeconds": 2, "deleteAfterSeconds": 5}))
        .await;
    let id = d["id"].as_str().expect("id").to_owned();
    let container = d["container_id"].as_str().expect("container").to_owned();
    let network = d["network_id"].as_str().expect("network").to_owned();
    let username = d["username"].as_str().expect("username").to_owned();
    let delete_at = DateTime::parse_from_rfc3339(d["delete_at"].as_str().expect("delete_at"))
        .expect("ISO-8601")
        .timestamp_millis();

    // Paused first: the row stays, its container stops (a container that ran in its network
    // holder's namespace is replaced by a stopped one on the network).
    let paused = eventually("the pause", Duration::from_secs(15), || async {
        let (status, body) = app.get(&id).await;
        (status == 200 && body["deployment"]["status"] == "stopped")
            .then(|| body["deployment"].clone())
    })
    .await;
    let first = container;
    let container = paused["container_id"]
        .as_str()
        .expect("container")
        .to_owned();
    assert!(container == first || !exists("container", &first));
    assert_eq!(inspect("container", &container)["State"]["Running"], false);
    assert!(!exists("container", &format!("mcp-runner-{id}-netns")));

    // Then deleted, within 2 s of the deadline.
    let started = Instant::now();
    eventually("the deletion", Duration::from_secs(20), || async {
        (app.get(&id).await.0 == 404).then_some(())
    })
    .await;
    let deleted_at = chrono::Utc::now().timestamp_millis();
    assert!(
        deleted_at - delete_at <= 2000,
        "deleted {} ms after its deadline",
        deleted_at - delete_at
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    // The row disappears from the API when the deletion starts; the teardown follows.
    eventually(
        "container, network and user removed",
        Duration::from_secs(20),
        || async {
            let gone = !exists("container", &container)
                && !exists("network", &network)
                && passwd_entry(&username).is_none();
            gone.then_some(())
        },
    )
    .await;
    app.teardown().await;
}

#[tokio::test]
async fn restart_reconciliation_removes_orphans_and_keeps_deployments() {
    let image = test_image().await;
    let app = TestApp::spawn().await;
    let kept = app.create_fixture(json!({})).await;
    let stopped = app.create_fixture(json!({"autoStart": false})).await;
    let vanished = app.create_fixture(json!({})).await;
    let kept_container = kept["container_id"].as_str().expect("c").to_owned();
    let started_before = inspect("container", &kept_container)["State"]["StartedAt"].clone();
    let (instance, db, dir) = app.stop().await;

    // While mcp-runner is down: orphans made by hand with our labels, and a deployment's
    // container removed behind our back.
    let labels = [
        "--label".to_owned(),
        "managed-by=mcp-runner".to_owned(),
        "--label".to_owned(),
        format!("mcp-runner.instance={instance}"),
        "--label".to_owned(),
        "mcp-runner.deployment=dp_orphan00000000000000000".to_owned(),
    ];
    let mut net_args = vec!["network", "create"];
    net_args.extend(labels.iter().map(String::as_str));
    net_args.push("orphan-net-for-test");
    let orphan_net = docker(&net_args).trim().to_owned();
    let mut ctr_args = vec!["create", "--pull", "never"];
    ctr_args.extend(labels.iter().map(String::as_str));
    ctr_args.push(image);
    let orphan_ctr = docker(&ctr_args).trim().to_owned();
    let comment = format!("mcp-runner/{instance}/dp_orphan00000000000000000");
    let made = Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            &comment,
        ])
        .arg(format!("mcp-orph-{}", &instance[2..]))
        .status()
        .expect("useradd");
    assert!(made.success());
    docker(&["rm", "-f", vanished["container_id"].as_str().expect("id")]);

    let app = TestApp::spawn_with(Options {
        reuse: Some((instance.clone(), db.clone())),
        ..Options::default()
    })
    .await;
    assert!(
        !exists("container", &orphan_ctr),
        "orphan container removed"
    );
    assert!(!exists("network", &orphan_net), "orphan network removed");
    assert!(
        passwd_entry(&format!("mcp-orph-{}", &instance[2..])).is_none(),
        "orphan user removed"
    );

    // The deployment whose container vanished is gone with the rest of its resources.
    let vid = vanished["id"].as_str().expect("id");
    assert_eq!(app.get(vid).await.0, 404);
    assert!(!exists(
        "network",
        vanished["network_id"].as_str().expect("net")
    ));
    assert!(passwd_entry(vanished["username"].as_str().expect("user")).is_none());

    // The others survived the restart as they were.
    let (status, body) = app.get(kept["id"].as_str().expect("id")).await;
    assert_eq!(status, 200);
    assert_eq!(body["deployment"]["status"], "running");
    // Its stdio belonged to the previous mcp-runner: the process is restarted, attached.
    let restarted_at = eventually(
        "the kept stdio process to be restarted",
        Duration::from_secs(30),
        || async {
            let state = inspect("container", &kept_container)["State"].clone();
            (state["Running"] == true && state["StartedAt"] != started_before)
                .then_some(state["StartedAt"].clone())
        },
    )
    .await;
    // The bridge owns that process: the first request uses it as it is.
    let client = Client::streamable(&app.mcp_url(kept["id"].as_str().expect("id")), "kept").await;
    assert_eq!(
        client.call("add", json!({"a": 2, "b": 3})).await.as_deref(),
        Ok("5")
    );
    client.close().await;
    assert_eq!(
        inspect("container", &kept_container)["State"]["StartedAt"],
        restarted_at
    );
    let (status, body) = app.get(stopped["id"].as_str().expect("id")).await;
    assert_eq!(status, 200);
    assert_eq!(body["deployment"]["status"], "stopped");
    assert_eq!(app.list().await.len(), 2);
    app.teardown().await;
    drop(dir);
}

#[tokio::test]
async fn a_container_that_stops_on_its_own_is_recorded_as_stopped() {
    let app = TestApp::spawn().await;
    let d = app.create_fixture(json!({})).await;
    let id = d["id"].as_str().expect("id").to_owned();
    docker(&["stop", "-t", "1", d["container_id"].as_str().expect("c")]);
    eventually("status stopped", Duration::from_secs(15), || async {
        let (_, body) = app.get(&id).await;
        (body["deployment"]["status"] == "stopped").then_some(())
    })
    .await;
    app.teardown().await;
}

#[tokio::test]
async fn cleanup_on_shutdown_deletes_every_deployment() {
    let app = TestApp::spawn_with(Options {
        args: vec!["--cleanup-on-shutdown".into()],
        ..Options::default()
    })
    .await;
    app.create_fixture(json!({})).await;
    app.create_fixture(json!({"autoStart": false})).await;
    let (instance, db, _dir) = app.stop().await;
    assert_nothing_left(&instance, &db).await;
}
