//! Deployments through the API on the in-memory backend: the answers of the compatibility
//! contract, how each kind of backend failure is answered, the reaper, logs and readiness.

use std::time::Duration;

use mcp_runner::runtime::RuntimeError;
use mcp_runner::runtime::fake::{FakeBackend, Op};
use mcp_test_support::eventually;
use serde_json::{Value, json};

use crate::{app_on, assert_error_body, stdio};

fn unreachable() -> RuntimeError {
    RuntimeError::Unreachable {
        backend: "docker",
        message: "Docker could not create the container: connection refused".into(),
    }
}

#[tokio::test]
async fn create_get_list_and_delete_answer_as_the_contract_says() {
    let fake = FakeBackend::with_mcp_server();
    let app = app_on(fake.clone(), &[]).await;
    let (status, body) = app
        .create(&stdio(
            json!({"metadata": {"owner": "team-a"}, "maxCpus": 0.5}),
        ))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["message"], "Deployment created successfully");
    let d = &body["deployment"];
    let id = d["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("dp_") && id.len() == 27, "{id}");
    assert_eq!(d["status"], "running");
    assert_eq!(d["username"], format!("mcp-{}", &id[3..]));
    assert_eq!(d["uid"], d["gid"]);
    assert_eq!(d["max_memory"], 256, "the server's default");
    assert_eq!(d["max_cpus"], 0.5);
    assert_eq!(d["metadata"], json!({"owner": "team-a"}));
    assert_eq!(d["transport"], json!({"type": "stdio"}));
    assert_eq!(d["session_mode"], "shared");
    assert_eq!(d["pause_at"], Value::Null);
    for field in [
        "container_id",
        "network_id",
        "created_at",
        "last_interaction_at",
    ] {
        assert!(d[field].is_string(), "{field}: {d}");
    }
    assert!(d.get("env").is_none(), "env is never returned");
    let sandbox = d["container_id"].as_str().expect("sandbox");
    assert!(fake.sandboxes()[sandbox].running);

    let (status, got) = app.get(&id).await;
    assert_eq!(status, 200);
    assert_eq!(got["deployment"]["id"], id);
    assert_eq!(app.list_ids().await, vec![id.clone()]);

    let (status, deleted) = app.delete(&id).await;
    assert_eq!(
        (status, deleted),
        (200, json!({"message": "Deployment deleted successfully"}))
    );
    assert_eq!(app.get(&id).await.0, 404);
    assert!(fake.is_empty());
    app.teardown().await;
}

/// Each kind of backend failure has its status, and a failed create leaves nothing.
#[tokio::test]
async fn backend_failures_are_answered_with_their_status_and_leave_nothing() {
    let fake = FakeBackend::with_mcp_server();
    let app = app_on(fake.clone(), &[]).await;
    let rejected = RuntimeError::Rejected {
        message: "Docker could not create the container: no space left".into(),
    };
    for (error, status, words) in [
        (unreachable(), 503, "Docker is unreachable"),
        (rejected, 502, "no space left"),
    ] {
        fake.fail(Op::Create, error, 1);
        let (got, body) = app.create(&stdio(json!({}))).await;
        assert_error_body(got, &body, status);
        let message = body["message"].as_str().unwrap_or("");
        assert!(message.contains(words), "{words:?} in {body}");
    }
    fake.missing_image("absent:1");
    let (got, body) = app.create(&stdio(json!({"image": "absent:1"}))).await;
    assert_error_body(got, &body, 400);
    assert_eq!(body["field"], "image");
    assert!(app.list().await.is_empty());
    assert!(fake.is_empty());
    app.teardown().await;
}

#[tokio::test]
async fn an_exhausted_uid_range_is_a_503_that_says_what_to_widen() {
    let fake = FakeBackend::with_mcp_server();
    fake.take_ids([200_001]);
    let app = app_on(fake.clone(), &["--uid-range", "200000-200001"]).await;
    let (status, body) = app.create(&stdio(json!({}))).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["deployment"]["uid"], 200_000);
    let (status, body) = app.create(&stdio(json!({}))).await;
    assert_error_body(status, &body, 503);
    let message = body["message"].as_str().unwrap_or("");
    assert!(message.contains("UID_RANGE"), "{body}");
    app.teardown().await;
}

/// A delete the backend refuses answers 502, the deployment disappears from the API at
/// once, and the reaper finishes the job.
#[tokio::test]
async fn a_refused_delete_is_finished_by_the_reaper() {
    let fake = FakeBackend::with_mcp_server();
    let app = app_on(fake.clone(), &[]).await;
    let (_, body) = app.create(&stdio(json!({}))).await;
    let id = body["deployment"]["id"].as_str().expect("id").to_owned();
    let refused = RuntimeError::Rejected {
        message: "Docker could not remove the network: busy".into(),
    };
    fake.fail(Op::Teardown, refused, 1);
    let (status, body) = app.delete(&id).await;
    assert_error_body(status, &body, 502);
    assert_eq!(
        app.get(&id).await.0,
        404,
        "a deployment being deleted is not shown"
    );
    eventually(
        "the reaper to finish the delete",
        Duration::from_secs(10),
        || async {
            (mcp_test_support::row_count(&app.db_path).await == 0 && fake.is_empty()).then_some(())
        },
    )
    .await;
    app.teardown().await;
}

#[tokio::test]
async fn the_reaper_pauses_then_deletes_idle_deployments() {
    let fake = FakeBackend::with_mcp_server();
    let app = app_on(fake.clone(), &[]).await;
    let body = stdio(json!({"pauseAfterSeconds": 1, "deleteAfterSeconds": 3}));
    let (_, created) = app.create(&body).await;
    let id = created["deployment"]["id"].as_str().expect("id").to_owned();
    eventually("the pause", Duration::from_secs(10), || async {
        let (_, d) = app.get(&id).await;
        (d["deployment"]["status"] == "stopped").then_some(())
    })
    .await;
    assert!(fake.sandboxes().values().all(|s| !s.running));
    eventually("the delete", Duration::from_secs(10), || async {
        (app.get(&id).await.0 == 404).then_some(())
    })
    .await;
    assert!(fake.is_empty());
    app.teardown().await;
}

#[tokio::test]
async fn logs_tell_the_process_state_and_its_stderr() {
    let fake = FakeBackend::with_mcp_server();
    let app = app_on(fake.clone(), &[]).await;
    let body = json!({"image": "srv:1", "transport":
        {"type": "streamable_http", "endpoint": "http://localhost:8000/mcp"}});
    let (_, created) = app.create(&body).await;
    let d = &created["deployment"];
    let id = d["id"].as_str().expect("id").to_owned();
    let sandbox = d["container_id"].as_str().expect("sandbox").to_owned();
    let (status, logs) = app.logs(&id, 10).await;
    assert_eq!(status, 200, "{logs}");
    assert_eq!(
        (logs["running"].clone(), logs["exited"].clone()),
        (json!(true), json!(false))
    );
    fake.write_stderr(&sandbox, "listening\nfailing now\n");
    fake.exit(&sandbox, 7);
    let logs = eventually(
        "the exit to be recorded",
        Duration::from_secs(10),
        || async {
            let (_, logs) = app.logs(&id, 1).await;
            (logs["status"] == "stopped").then_some(logs)
        },
    )
    .await;
    assert_eq!(logs["running"], false);
    assert_eq!(logs["exited"], true);
    assert_eq!(logs["exit_code"], 7);
    assert_eq!(logs["stderr"], "failing now\n", "the last line: {logs}");
    app.teardown().await;
}

#[tokio::test]
async fn readiness_names_a_backend_that_stops_answering() {
    let fake = FakeBackend::with_mcp_server();
    let app = app_on(fake.clone(), &[]).await;
    fake.fail(Op::Ping, unreachable(), 1);
    let (status, body) = app.readyz().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["database"], "ok");
    assert_eq!(body["checks"]["startup"], "ok");
    let docker = body["checks"]["docker"].as_str().unwrap_or("");
    assert!(docker.contains("connection refused"), "{body}");
    assert_eq!(app.readyz().await.0, 200, "and ready again when it answers");
    app.teardown().await;
}
