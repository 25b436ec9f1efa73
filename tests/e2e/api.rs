//! The management API against the real daemon: what only Docker decides (references it
//! refuses), a create that outlives its client, and readiness while Docker is away. The rest
//! of the API's contract is tested in the router tier (`tests/router`), without Docker.

use reqwest::Method;
use serde_json::{Value, json};

use mcp_test_support::{TestApp, json_of};

fn stdio(extra: Value) -> Value {
    let mut body =
        json!({"image": "mcp-runner-test-fixture:latest", "transport": {"type": "stdio"}});
    for (k, v) in extra.as_object().expect("object") {
        body[k] = v.clone();
    }
    body
}

#[tokio::test]
async fn a_reference_docker_refuses_is_a_400_naming_the_image() {
    let app = TestApp::spawn().await;
    for image in [
        // Upper case is not a valid repository name for Docker.
        "NaN".to_owned(),
        // A tag longer than Docker's 128.
        format!("x:{}", "t".repeat(200)),
        // Empty path elements, which Docker's router redirects instead of answering (found
        // by the API fuzzer: it was a 502).
        "p/".to_owned(),
        "a//b".to_owned(),
    ] {
        let (status, answer) = app.create(&stdio(json!({"image": image}))).await;
        assert_error_body(status, &answer, 400);
        assert_eq!(answer["field"], "image", "{image}: {answer}");
    }
    assert!(app.list().await.is_empty(), "no deployment may result");
    app.teardown().await;
}

fn assert_error_body(status: u16, body: &Value, expected_status: u16) {
    assert_eq!(status, expected_status, "unexpected answer {body}");
    assert_eq!(body["statusCode"], expected_status, "{body}");
    assert!(body["error"].is_string(), "{body}");
    assert!(body["message"].is_string(), "{body}");
}

#[tokio::test]
async fn a_create_finishes_even_when_its_client_hangs_up() {
    let app = TestApp::spawn().await;
    let image = mcp_test_support::fixture::test_image().await;
    let hung_up = app
        .authed(Method::POST, "/api/deployment")
        .json(&json!({"image": image, "transport": {"type": "stdio"}}))
        .timeout(std::time::Duration::from_millis(50))
        .send()
        .await;
    assert!(hung_up.is_err(), "the client gave up first: {hung_up:?}");
    // The create carried on: the deployment shows up complete, never half made.
    let made = mcp_test_support::eventually(
        "the abandoned create to finish",
        std::time::Duration::from_secs(60),
        || async {
            let all = app.list().await;
            (all.len() == 1 && all[0]["status"] == "running").then(|| all[0].clone())
        },
    )
    .await;
    assert_eq!(mcp_test_support::row_count(&app.db_path).await, 1);
    assert_eq!(app.delete(made["id"].as_str().expect("id")).await.0, 200);
    let (instance, db, _dir) = app.stop().await;
    mcp_test_support::assert_nothing_left(&instance, &db).await;
}

#[tokio::test]
async fn an_unreachable_docker_leaves_the_server_alive_but_not_ready() {
    let http = reqwest::Client::new();
    let get = |app: &TestApp, path: &'static str| http.get(format!("{}{path}", app.url)).send();
    // Alive, not ready, and the failing part is named.
    let app = TestApp::spawn_with(mcp_test_support::Options {
        args: vec![
            "--docker-host".into(),
            "unix:///nonexistent/docker.sock".into(),
        ],
        wait_ready: false,
        ..Default::default()
    })
    .await;
    assert_eq!(get(&app, "/healthz").await.expect("send").status(), 200);
    let (status, body) = json_of(get(&app, "/readyz").await.expect("send")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["database"], "ok");
    assert_ne!(body["checks"]["startup"], "ok");
    let (status, body) = app
        .create(&json!({"image": "x", "transport": {"type": "stdio"}}))
        .await;
    assert_eq!(status, 503, "the API says it is starting: {body}");
    let (instance, db, _dir) = app.stop().await;
    mcp_test_support::assert_nothing_left(&instance, &db).await;
}
