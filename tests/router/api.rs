//! The management API's contract on the in-memory backend: validation, authentication and
//! lockout, error bodies, probes, metrics, the OpenAPI document and Swagger UI.

use reqwest::Method;
use serde_json::{Value, json};

use crate::{app, app_with, assert_error_body, stdio};
use mcp_test_support::{API_KEY, TestApp, json_of};

#[tokio::test]
async fn every_validation_rule_is_a_400_naming_the_field() {
    let app = app().await;
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
        (stdio(json!({"maxMemory": 31})), "maxMemory"),
        // Longer than Docker's 255 for a name (found by the API fuzzer: it was a 502).
        (stdio(json!({"image": "0".repeat(512)})), "image"),
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
    let app = app().await;
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
    let app = app().await;
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
    // An id that is not even text names no deployment either.
    for method in [Method::GET, Method::DELETE] {
        let resp = app
            .authed(method.clone(), "/api/deployment/%FF")
            .send()
            .await
            .expect("send");
        let (status, body) = json_of(resp).await;
        assert_error_body(status, &body, 404);
    }
    app.teardown().await;
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_are_json_errors() {
    let app = app().await;
    // Swagger UI serves `/api/{*file}`: a mistyped API path is still the API's 404.
    for (method, path) in [
        (Method::GET, "/nope"),
        (Method::POST, "/mcp-server"),
        (Method::GET, "/api/nope"),
        (Method::POST, "/api/deployments"),
        (Method::DELETE, "/api/deployment/dp_x/extra"),
    ] {
        let resp = app.authed(method, path).send().await.expect("send");
        assert!(
            resp.headers().get("allow").is_none(),
            "a 404 does not say which methods the path takes: {path}"
        );
        let (status, body) = json_of(resp).await;
        assert_error_body(status, &body, 404);
        assert!(
            body["message"].as_str().is_some_and(|m| m.contains(path)),
            "{body}"
        );
    }
    for (method, path, allow) in [
        (Method::PUT, "/api/deployment", "POST"),
        (Method::POST, "/api/openapi.json", "GET"),
        (Method::POST, "/api/", "GET"),
        (Method::DELETE, "/healthz", "GET"),
        (Method::POST, "/metrics", "GET"),
    ] {
        let resp = app.authed(method, path).send().await.expect("send");
        let allowed = resp.headers().get("allow").cloned();
        let (status, body) = json_of(resp).await;
        assert_error_body(status, &body, 405);
        let allowed = allowed.expect("an Allow header");
        assert!(
            allowed.to_str().is_ok_and(|a| a.contains(allow)),
            "{allowed:?}"
        );
    }
    // The MCP endpoint answers in JSON-RPC, like its other errors.
    let resp = app
        .http
        .patch(format!("{}/mcp-server/dp_x/mcp", app.url))
        .send()
        .await
        .expect("send");
    assert!(resp.headers().get("allow").is_some());
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 405, "{body}");
    assert_eq!(body["jsonrpc"], "2.0", "{body}");
    assert_eq!(body["error"]["code"], -32600, "{body}");
    app.teardown().await;
}

#[tokio::test]
async fn missing_and_wrong_keys_are_401_then_the_client_is_blocked() {
    let app = app().await;
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
    let (_, db, _dir) = app.stop().await;
    assert_eq!(mcp_test_support::row_count(&db).await, 0);
}

#[tokio::test]
async fn committed_openapi_document_is_what_the_server_serves() {
    let app = app().await;
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
    let app = app().await;
    let (status, body) = json_of(get(&app, "/healthz").await.expect("send")).await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
    let (status, body) = json_of(get(&app, "/readyz").await.expect("send")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"status": "ok", "checks": {"database": "ok", "docker": "ok", "startup": "ok"}})
    );
    app.teardown().await;
}

#[tokio::test]
async fn logs_endpoint_checks_tail_before_anything_else() {
    let app = app().await;
    for bad in ["abc", "-1", "100001", "1.5"] {
        let resp = app
            .authed(
                Method::GET,
                &format!("/api/deployment/dp_missing/logs?tail={bad}"),
            )
            .send()
            .await
            .expect("send");
        let (status, body) = json_of(resp).await;
        assert_error_body(status, &body, 400);
        assert_eq!(body["field"], "tail", "{bad}: {body}");
    }
    let resp = app
        .authed(Method::GET, "/api/deployment/dp_missing/logs?tail=5")
        .send()
        .await
        .expect("send");
    let (status, body) = json_of(resp).await;
    assert_error_body(status, &body, 404);
    let resp = app
        .http
        .get(format!("{}/api/deployment/dp_missing/logs", app.url))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 401, "the key is required");
    app.teardown().await;
}

/// The value of the first sample line starting with `prefix` (name and labels).
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_describe_deployments_requests_and_sessions() {
    let app = app().await;
    let (status, d) = app.create(&stdio(json!({}))).await;
    assert_eq!(status, 201, "{d}");
    let d = d["deployment"].clone();
    let id = d["id"].as_str().expect("id").to_owned();
    let client = mcp_test_support::mcp::Client::streamable(&app.mcp_url(&id), "m").await;
    assert_eq!(
        client.call("echo", json!({"text": "3"})).await.as_deref(),
        Ok("3")
    );

    let resp = app
        .http
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200, "open by default");
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("application/openmetrics-text"),
    );
    let text = resp.text().await.expect("text");
    // This server's own state, read at the scrape.
    assert_eq!(
        sample(&text, "mcp_runner_deployments{status=\"running\"}"),
        Some(1.0),
        "{text}"
    );
    assert!(sample(&text, "mcp_runner_mcp_sessions{front=\"streamable_http\"}") >= Some(1.0));
    // Process-wide counters (other tests share them): present and counting.
    for prefix in [
        "mcp_runner_deployment_create_duration_seconds_count",
        "mcp_runner_mcp_requests_total{front=\"streamable_http\",transport=\"stdio\",outcome=\"result\"}",
        "mcp_runner_mcp_request_duration_seconds_count{front=\"streamable_http\",transport=\"stdio\"}",
        "mcp_runner_http_requests_total{route=\"/api/deployment\",method=\"POST\",status=\"201\"}",
        "mcp_runner_http_requests_total{route=\"/mcp-server/{id}/mcp\",method=\"POST\",status=\"200\"}",
    ] {
        assert!(sample(&text, prefix) >= Some(1.0), "{prefix} in\n{text}");
    }
    for family in [
        "mcp_runner_deployment_delete_duration_seconds",
        "mcp_runner_deployment_failures",
        "mcp_runner_image_pulls",
        "mcp_runner_upstream_exits",
        "mcp_runner_reaper_actions",
    ] {
        assert!(text.contains(&format!("# HELP {family} ")), "{family}");
    }
    client.close().await;
    app.teardown().await;

    // Guarded when asked.
    let app = app_with(&["--metrics-require-api-key"]).await;
    let url = format!("{}/metrics", app.url);
    assert_eq!(app.http.get(&url).send().await.expect("send").status(), 401);
    assert_eq!(
        app.authed(Method::GET, "/metrics")
            .send()
            .await
            .expect("send")
            .status(),
        200
    );
    app.teardown().await;
}
