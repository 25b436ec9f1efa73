//! The management API's contract: validation, authentication and lockout, error bodies,
//! health, the OpenAPI document and Swagger UI.

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{API_KEY, TestApp, json_of};

fn stdio(extra: Value) -> Value {
    let mut body =
        json!({"image": "mcp-runner-test-fixture:latest", "transport": {"type": "stdio"}});
    for (k, v) in extra.as_object().expect("object") {
        body[k] = v.clone();
    }
    body
}

fn assert_error_body(status: u16, body: &Value, expected_status: u16) {
    assert_eq!(status, expected_status, "unexpected answer {body}");
    assert_eq!(body["statusCode"], expected_status, "{body}");
    assert!(body["error"].is_string(), "{body}");
    assert!(body["message"].is_string(), "{body}");
}

#[tokio::test]
async fn every_validation_rule_is_a_400_naming_the_field() {
    let app = TestApp::spawn().await;
    let cases: Vec<(Value, &str)> = vec![
        (json!({"transport": {"type": "stdio"}}), "image"),
        (stdio(json!({"image": ""})), "image"),
        (stdio(json!({"image": 42})), "image"),
        (stdio(json!({"image": "has space"})), "image"),
        (json!({"image": "x"}), "transport"),
        (
            stdio(json!({"transport": {"type": "carrier-pigeon"}})),
            "transport.type",
        ),
        (
            stdio(json!({"transport": {"type": "sse"}})),
            "transport.endpoint",
        ),
        (
            stdio(json!({"transport": {"type": "streamable_http"}})),
            "transport.endpoint",
        ),
        (
            stdio(json!({"transport": {"type": "sse", "endpoint": "nope"}})),
            "transport.endpoint",
        ),
        (stdio(json!({"args": "not-a-list"})), "args"),
        (stdio(json!({"args": vec!["a"; 257]})), "args"),
        (stdio(json!({"env": {"A": 1}})), "env.A"),
        (stdio(json!({"env": {"BAD-NAME": "x"}})), "env.BAD-NAME"),
        (stdio(json!({"maxMemory": 0})), "maxMemory"),
        (stdio(json!({"maxMemory": 5})), "maxMemory"),
        (stdio(json!({"maxMemory": 1_000_000})), "maxMemory"),
        (stdio(json!({"maxMemory": "lots"})), "maxMemory"),
        (stdio(json!({"maxCpus": 0.01})), "maxCpus"),
        (stdio(json!({"maxCpus": 512})), "maxCpus"),
        (stdio(json!({"pauseAfterSeconds": 0})), "pauseAfterSeconds"),
        (
            stdio(json!({"pauseAfterSeconds": 1.5})),
            "pauseAfterSeconds",
        ),
        (
            stdio(json!({"deleteAfterSeconds": -5})),
            "deleteAfterSeconds",
        ),
        (
            stdio(json!({"deleteAfterSeconds": 1e10})),
            "deleteAfterSeconds",
        ),
        (stdio(json!({"autoStart": "yes"})), "autoStart"),
        (stdio(json!({"sessionMode": "sometimes"})), "sessionMode"),
        (stdio(json!({"metadata": [1, 2]})), "metadata"),
        (
            stdio(json!({"metadata": {"big": "x".repeat(17_000)}})),
            "metadata",
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = app.create(&body).await;
        assert_error_body(status, &answer, 400);
        assert_eq!(answer["field"], field, "body {body} answered {answer}");
        assert!(
            answer["message"]
                .as_str()
                .unwrap_or("")
                .contains(field.split('.').next().unwrap_or(field)),
            "message should name {field}: {answer}"
        );
    }
    assert!(app.list().await.is_empty(), "no deployment may result");
    app.teardown().await;
}

#[tokio::test]
async fn malformed_bodies_are_400_and_oversized_bodies_413() {
    let app = TestApp::spawn().await;
    let huge = format!(
        r#"{{"image":"x","transport":{{"type":"stdio"}},"metadata":{{"p":"{}"}}}}"#,
        "y".repeat(2 * 1024 * 1024)
    );
    let cases: Vec<(Vec<u8>, &str, u16, &str)> = vec![
        (
            b"{\"image\":".to_vec(),
            "application/json",
            400,
            "Malformed JSON",
        ),
        (
            b"[1,2]".to_vec(),
            "application/json",
            400,
            "Invalid request body",
        ),
        (
            br#"{"image":"x","transport":{"type":"stdio"}}"#.to_vec(),
            "text/plain",
            400,
            "Content-Type",
        ),
        (huge.into_bytes(), "application/json", 413, "too large"),
    ];
    for (body, content_type, expected, words) in cases {
        let resp = app
            .authed(Method::POST, "/api/deployment")
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("send");
        let (status, answer) = json_of(resp).await;
        assert_error_body(status, &answer, expected);
        let message = answer["message"].as_str().unwrap_or("");
        assert!(message.contains(words), "{words:?} not in {answer}");
    }
    assert!(app.list().await.is_empty());
    app.teardown().await;
}

#[tokio::test]
async fn unknown_deployment_is_404_with_the_contract_body() {
    let app = TestApp::spawn().await;
    let (status, body) = app.get("dp_doesnotexist000000000000").await;
    assert_eq!(
        (status, body.clone()),
        (
            404,
            json!({"statusCode": 404, "error": "Not Found", "message": "Deployment not found"})
        )
    );
    let (status, _) = app.delete("dp_doesnotexist000000000000").await;
    assert_eq!(status, 404);
    app.teardown().await;
}

#[tokio::test]
async fn missing_and_wrong_keys_are_401_then_the_client_is_blocked() {
    let app = TestApp::spawn().await;
    let url = format!("{}/api/deployment", app.url);

    let (status, body) = json_of(app.http.get(&url).send().await.expect("send")).await;
    assert_error_body(status, &body, 401);
    assert_eq!(body["message"], "API key is required");

    for _ in 0..4 {
        let (status, body) = json_of(
            app.http
                .get(&url)
                .header("x-api-key", "wrong-key-wrong-key")
                .send()
                .await
                .expect("send"),
        )
        .await;
        assert_error_body(status, &body, 401);
        assert_eq!(body["message"], "Invalid API key");
    }
    // Five failures within a minute: blocked, even with the right key.
    let resp = app
        .http
        .get(&url)
        .header("x-api-key", API_KEY)
        .send()
        .await
        .expect("send");
    let retry_after: u64 = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After header");
    assert!(
        (50..=60).contains(&retry_after),
        "first block is a minute, got {retry_after}"
    );
    let (status, body) = json_of(resp).await;
    assert_error_body(status, &body, 403);

    // Health needs no key and is not blocked.
    let (status, body) = json_of(
        app.http
            .get(format!("{}/health", app.url))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));

    // The block covers the management API until it ends; teardown cannot list, so stop
    // directly (nothing was created).
    let (instance, db, _dir) = app.stop().await;
    crate::support::assert_nothing_left(&instance, &db).await;
}

#[tokio::test]
async fn committed_openapi_document_is_what_the_server_serves() {
    let app = TestApp::spawn().await;
    let served = app
        .http
        .get(format!("{}/api/openapi.json", app.url))
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("body");
    let served: Value = serde_json::from_str(&served).expect("served JSON");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
    let committed = std::fs::read_to_string(path).expect("openapi/openapi.json exists");
    let committed: Value = serde_json::from_str(&committed).expect("committed JSON");
    assert!(
        served == committed,
        "openapi/openapi.json differs from the served document; regenerate it with \
         `cargo run -- openapi > openapi/openapi.json`"
    );
    // The document covers every endpoint and the key scheme.
    for p in ["/api/deployment", "/api/deployment/{id}", "/health"] {
        assert!(served["paths"][p].is_object(), "{p} is documented");
    }
    assert_eq!(
        served["components"]["securitySchemes"]["api_key"]["name"],
        "X-API-Key"
    );

    let ui = app
        .http
        .get(format!("{}/api/", app.url))
        .send()
        .await
        .expect("send");
    assert_eq!(ui.status(), 200);
    assert!(
        ui.text().await.expect("body").contains("swagger"),
        "Swagger UI is served at /api"
    );
    app.teardown().await;
}

#[tokio::test]
async fn probes_report_liveness_and_readiness() {
    let http = reqwest::Client::new();
    let get = |app: &TestApp, path: &'static str| http.get(format!("{}{path}", app.url)).send();
    let app = TestApp::spawn().await;
    let (status, body) = json_of(get(&app, "/healthz").await.expect("send")).await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
    let (status, body) = json_of(get(&app, "/readyz").await.expect("send")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"status": "ok", "checks": {"database": "ok", "docker": "ok", "startup": "ok"}})
    );
    app.teardown().await;

    // Docker unreachable: alive, not ready, and the failing part is named.
    let app = TestApp::spawn_with(crate::support::Options {
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
    crate::support::assert_nothing_left(&instance, &db).await;
}
