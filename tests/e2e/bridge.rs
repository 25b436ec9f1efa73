//! The MCP bridge with real clients: every upstream transport through both fronts, many
//! sessions on one stdio process, and the protocol's error paths.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

use mcp_test_support::docker::inspect;
use mcp_test_support::mcp::{Client, raw};
use mcp_test_support::{TestApp, eventually};

fn mcp_url(app: &TestApp, id: &str) -> String {
    app.mcp_url(id)
}

fn sse_url(app: &TestApp, id: &str) -> String {
    format!("{}/mcp-server/{id}/sse", app.url)
}

/// The create body fields of each upstream transport of the fixture.
fn upstreams() -> Vec<(&'static str, Value)> {
    vec![
        ("stdio", json!({"transport": {"type": "stdio"}})),
        (
            "sse",
            json!({"args": ["sse", "--port", "8000"],
                   "transport": {"type": "sse", "endpoint": "http://localhost:8000/sse"}}),
        ),
        (
            "streamable_http",
            json!({"args": ["http", "--port", "8000"],
                   "transport": {"type": "streamable_http", "endpoint": "http://localhost:8000/mcp"}}),
        ),
    ]
}

/// initialize, tools/list, tools/call, progress, logging and a sampling round trip.
async fn exercise(client: &Client, label: &str) {
    assert_eq!(client.server_name(), "bridged", "{label}");
    let tools = client.tool_names().await;
    for t in ["add", "echo", "log", "sample", "slow"] {
        assert!(
            tools.iter().any(|n| n == t),
            "{label}: {t} listed in {tools:?}"
        );
    }
    assert_eq!(
        client
            .call("echo", json!({"text": "hé llo"}))
            .await
            .as_deref(),
        Ok("hé llo"),
        "{label}"
    );
    assert_eq!(
        client.call("add", json!({"a": 2, "b": 3})).await.as_deref(),
        Ok("5"),
        "{label}"
    );
    assert_eq!(
        client
            .call("slow", json!({"steps": 3, "delay_ms": 20}))
            .await
            .as_deref(),
        Ok("done"),
        "{label}"
    );
    eventually(
        &format!("{label}: progress"),
        Duration::from_secs(5),
        || async { (client.seen().progress_count() >= 3).then_some(()) },
    )
    .await;
    assert_eq!(
        client
            .call("log", json!({"message": "hello log", "level": "warning"}))
            .await
            .as_deref(),
        Ok("logged"),
        "{label}"
    );
    eventually(
        &format!("{label}: log message"),
        Duration::from_secs(5),
        || async {
            client
                .seen()
                .log_texts()
                .iter()
                .any(|l| l == "hello log")
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        client
            .call("sample", json!({"prompt": "pick one"}))
            .await
            .as_deref(),
        Ok("sampled: t:PICK ONE"),
        "{label}"
    );
}

#[tokio::test]
async fn every_upstream_transport_through_both_fronts() {
    let app = TestApp::spawn().await;
    for (name, fields) in upstreams() {
        let mut fields = fields;
        fields["env"] = json!({"FIXTURE_NAME": "bridged"});
        let d = app.create_fixture(fields).await;
        let id = d["id"].as_str().expect("id").to_owned();
        // Docker logs only what is not protocol: an HTTP server's output, capped.
        let log = inspect("container", d["container_id"].as_str().expect("container"))
            ["HostConfig"]["LogConfig"]
            .clone();
        if name == "stdio" {
            assert_eq!(log["Type"], "none", "{name}");
        } else {
            assert_eq!(log["Type"], "json-file", "{name}");
            assert_eq!(log["Config"]["max-size"], "10m", "{name}");
        }

        let client = Client::streamable(&mcp_url(&app, &id), "t").await;
        exercise(&client, &format!("{name} upstream, Streamable HTTP front")).await;
        client.close().await;

        let client = Client::legacy(&sse_url(&app, &id), "t").await;
        exercise(&client, &format!("{name} upstream, SSE front")).await;
        client.close().await;

        // Interaction slides the deadlines.
        let (_, got) = app.get(&id).await;
        assert_ne!(
            got["deployment"]["last_interaction_at"], d["last_interaction_at"],
            "{name}"
        );
        assert_eq!(app.delete(&id).await.0, 200);
    }
    app.teardown().await;
}

#[tokio::test]
async fn traffic_to_a_running_deployment_makes_no_docker_request() {
    // No networks made ahead: their refills would be Docker requests of this server too.
    let app = TestApp::spawn_with(mcp_test_support::Options {
        args: vec!["--network-spares".into(), "0".into()],
        ..Default::default()
    })
    .await;
    // Nor the sweep that follows start-up (the next is minutes away).
    app.first_sweep_done().await;
    for (name, fields) in upstreams() {
        if name == "sse" {
            continue; // the same path as streamable_http: an HTTP upstream in the container
        }
        let d = app.create_fixture(fields).await;
        let id = d["id"].as_str().expect("id").to_owned();
        // The first session finds the running server (an HTTP server's address is looked up
        // once).
        let first = Client::streamable(&mcp_url(&app, &id), "first").await;
        assert_eq!(
            first.call("add", json!({"a": 1, "b": 1})).await.as_deref(),
            Ok("2"),
            "{name}"
        );
        let before = app.backend_requests();
        // New sessions on both fronts, calls, and their ends.
        for front in ["streamable", "legacy"] {
            let client = if front == "streamable" {
                Client::streamable(&mcp_url(&app, &id), "again").await
            } else {
                Client::legacy(&sse_url(&app, &id), "again").await
            };
            assert!(client.tool_names().await.iter().any(|t| t == "echo"));
            for i in 0..20 {
                assert_eq!(
                    client
                        .call("echo", json!({"text": format!("{i}")}))
                        .await
                        .as_deref(),
                    Ok(format!("{i}").as_str()),
                    "{name} {front}"
                );
            }
            client.close().await;
        }
        assert_eq!(
            app.backend_requests(),
            before,
            "{name}: Docker was asked during MCP traffic to a running deployment"
        );
        first.close().await;
        assert_eq!(app.delete(&id).await.0, 200);
    }
    app.teardown().await;
}

#[tokio::test]
async fn sixteen_sessions_share_one_stdio_process_without_crossing() {
    let app = TestApp::spawn().await;
    let d = app
        .create_fixture(json!({"env": {"FIXTURE_NAME": "bridged"}}))
        .await;
    let url = mcp_url(&app, d["id"].as_str().expect("id"));
    let connects = (0..16).map(|n| {
        let url = url.clone();
        async move { Client::streamable(&url, &format!("s{n}")).await }
    });
    let clients = futures_util::future::join_all(connects).await;

    // All at once: 200 calls each, and progress, which is matched to its request exactly.
    let calls = clients.iter().enumerate().map(|(n, client)| async move {
        for i in 0..200 {
            let text = format!("session {n} call {i}");
            let got = client.call("echo", json!({"text": text})).await;
            assert_eq!(got.as_deref(), Ok(text.as_str()), "crossed or lost");
        }
        client
            .call("slow", json!({"steps": 2, "delay_ms": 10}))
            .await
            .expect("slow");
    });
    futures_util::future::join_all(calls).await;
    for c in &clients {
        eventually("own progress", Duration::from_secs(5), || async {
            (c.seen().progress_count() == 2).then_some(())
        })
        .await;
    }

    // Server requests go to the session that caused them (one session calling at a time:
    // the routing rule's first case, documented in the README).
    for (n, client) in clients.iter().enumerate() {
        let sampled = client
            .call("sample", json!({"prompt": format!("p{n}")}))
            .await;
        assert_eq!(sampled, Ok(format!("sampled: s{n}:P{n}")));
    }
    for (n, c) in clients.iter().enumerate() {
        assert_eq!(
            c.seen().sampled.lock().expect("lock").clone(),
            vec![format!("p{n}")]
        );
        assert_eq!(
            c.seen().progress_count(),
            2,
            "nobody got another session's progress"
        );
    }
    for c in clients {
        c.close().await;
    }
    app.teardown().await;
}

#[tokio::test]
async fn a_crash_mid_call_fails_fast_and_the_next_initialize_restarts_the_server() {
    let app = TestApp::spawn().await;
    let d = app
        .create_fixture(json!({"env": {"FIXTURE_NAME": "bridged"}}))
        .await;
    let id = d["id"].as_str().expect("id").to_owned();
    let client = Client::streamable(&mcp_url(&app, &id), "t").await;
    let started = std::time::Instant::now();
    let crashed = client.call("crash", json!({"code": 7})).await;
    assert!(crashed.is_err(), "a crash is an error: {crashed:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "prompt error");
    // stderr is kept; the session has ended.
    eventually("crash on stderr", Duration::from_secs(10), || async {
        let (_, body) = app.get(&id).await;
        body["deployment"]["stderr"]
            .as_str()
            .unwrap_or("")
            .contains("crashing")
            .then_some(())
    })
    .await;
    // The logs endpoint tells how the process ended.
    let logs = eventually(
        "the exit on the logs endpoint",
        Duration::from_secs(10),
        || async {
            let resp = app
                .authed(
                    reqwest::Method::GET,
                    &format!("/api/deployment/{id}/logs?tail=1"),
                )
                .send()
                .await
                .ok()?;
            let (status, body) = mcp_test_support::json_of(resp).await;
            (status == 200 && body["exited"] == true).then_some(body)
        },
    )
    .await;
    assert_eq!(logs["exit_code"], 7, "{logs}");
    assert_eq!(logs["running"], false, "{logs}");
    let tail = logs["stderr"].as_str().expect("stderr");
    assert!(tail.contains("crashing"), "{logs}");
    assert!(tail.trim_end().lines().count() == 1, "one line: {logs}");
    client.close().await;
    let again = Client::streamable(&mcp_url(&app, &id), "t").await;
    assert_eq!(
        again.call("echo", json!({"text": "back"})).await.as_deref(),
        Ok("back")
    );
    again.close().await;
    app.teardown().await;
}

#[tokio::test]
async fn a_stopped_deployment_starts_on_the_first_request() {
    let app = TestApp::spawn().await;
    let d = app
        .create_fixture(json!({"autoStart": false, "env": {"FIXTURE_NAME": "bridged"}}))
        .await;
    let id = d["id"].as_str().expect("id").to_owned();
    assert_eq!(d["status"], "stopped");
    let client = Client::streamable(&mcp_url(&app, &id), "t").await;
    assert_eq!(
        client.call("echo", json!({"text": "up"})).await.as_deref(),
        Ok("up")
    );
    let (_, body) = app.get(&id).await;
    assert_eq!(body["deployment"]["status"], "running");
    client.close().await;
    app.teardown().await;
}

/// The response to a request: the JSON body, or the last message of its SSE stream.
async fn final_answer(resp: reqwest::Response) -> Value {
    let json = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if json {
        return resp.json().await.expect("JSON answer");
    }
    let events = read_events(resp, |d| {
        d.contains("\"result\"") || d.contains("\"error\"")
    })
    .await;
    serde_json::from_str(&events.last().expect("answer").1).expect("JSON message")
}

/// Reads SSE events from a response until `stop` says enough; returns (id, data) pairs.
async fn read_events(
    resp: reqwest::Response,
    mut stop: impl FnMut(&str) -> bool,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut body = resp.bytes_stream();
    let (mut buf, mut id, mut data) = (Vec::new(), String::new(), String::new());
    while let Some(Ok(chunk)) = body.next().await {
        for b in chunk {
            if b != b'\n' {
                buf.push(b);
                continue;
            }
            let line = String::from_utf8_lossy(&buf).to_string();
            buf.clear();
            if line.is_empty() {
                if !data.is_empty() {
                    let done = stop(&data);
                    out.push((std::mem::take(&mut id), std::mem::take(&mut data)));
                    if done {
                        return out;
                    }
                }
            } else if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            }
        }
    }
    out
}

#[tokio::test]
async fn a_quick_lone_answer_is_json_and_anything_before_it_streams() {
    let app = TestApp::spawn().await;
    let d = app.create_fixture(json!({})).await;
    let id = d["id"].as_str().expect("id").to_owned();
    let sid = raw::session(&app, &id).await;
    let call = |n: i64, name: &str, args: Value| {
        json!({"jsonrpc": "2.0", "id": n, "method": "tools/call",
               "params": {"name": name, "arguments": args}})
    };

    let resp = raw::post(
        &app,
        &id,
        Some(&sid),
        &call(2, "add", json!({"a": 1, "b": 2})),
    )
    .await;
    assert_eq!(resp.headers()["content-type"], "application/json");
    let answer: Value = resp.json().await.expect("json");
    assert_eq!(answer["id"], 2);
    assert_eq!(answer["result"]["content"][0]["text"], "3");

    // Progress comes before the response: a stream, then both in order.
    let mut slow = call(3, "slow", json!({"steps": 2, "delay_ms": 10}));
    slow["params"]["_meta"] = json!({"progressToken": "p"});
    let resp = raw::post(&app, &id, Some(&sid), &slow).await;
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let events = read_events(resp, |d| d.contains("\"result\"")).await;
    assert!(
        events
            .iter()
            .any(|(_, d)| d.contains("notifications/progress")),
        "{events:?}"
    );
    assert!(
        events.last().expect("answer").1.contains("\"id\":3"),
        "{events:?}"
    );
    app.teardown().await;
}

#[tokio::test]
async fn a_dropped_stream_is_replayed_from_last_event_id() {
    let app = TestApp::spawn().await;
    let d = app.create_fixture(json!({})).await;
    let id = d["id"].as_str().expect("id").to_owned();
    let sid = raw::session(&app, &id).await;
    let call = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {
        "name": "slow", "arguments": {"steps": 6, "delay_ms": 200},
        "_meta": {"progressToken": "tok"}}});
    let resp = raw::post(&app, &id, Some(&sid), &call).await;
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    // Read the first progress event, then drop the connection.
    let first = read_events(resp, |_| true).await;
    let (last_id, data) = first.last().cloned().expect("an event");
    assert!(data.contains("notifications/progress"), "{data}");
    let resumed = app
        .http
        .get(mcp_url(&app, &id))
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &sid)
        .header("last-event-id", &last_id)
        .send()
        .await
        .expect("resume");
    assert_eq!(resumed.status(), 200);
    let rest = read_events(resumed, |d| d.contains("\"result\"")).await;
    let progress: Vec<f64> = first
        .iter()
        .chain(rest.iter())
        .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
        .filter_map(|m| m["params"]["progress"].as_f64())
        .collect();
    assert_eq!(
        progress,
        vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        "nothing lost, nothing twice"
    );
    let answer: Value = serde_json::from_str(&rest.last().expect("answer").1).expect("json");
    assert_eq!(answer["id"], 9);
    assert_eq!(answer["result"]["content"][0]["text"], "done");
    app.teardown().await;
}

async fn whoami(c: &Client) -> Value {
    let text = c.call("whoami", json!({})).await.expect("whoami");
    serde_json::from_str(&text).expect("json")
}

/// Containers of the sessions of deployment `id`.
fn session_containers(id: &str) -> Vec<String> {
    let filter = format!("label=mcp-runner.deployment={id}");
    mcp_test_support::docker::docker(&[
        "ps",
        "-aq",
        "--filter",
        &filter,
        "--filter",
        "label=mcp-runner.session",
    ])
    .lines()
    .map(str::to_owned)
    .collect()
}

#[tokio::test]
async fn isolated_mode_gives_each_session_its_own_container() {
    let app = TestApp::spawn().await;
    for (name, fields) in upstreams().into_iter().filter(|(n, _)| *n != "sse") {
        let mut fields = fields;
        fields["sessionMode"] = json!("isolated");
        fields["env"] = json!({"FIXTURE_NAME": "bridged"});
        let d = app.create_fixture(fields).await;
        assert_eq!(d["session_mode"], "isolated");
        let id = d["id"].as_str().expect("id").to_owned();
        assert!(
            session_containers(&id).is_empty(),
            "{name}: none before initialize"
        );

        let a = Client::streamable(&mcp_url(&app, &id), "a").await;
        let b = Client::streamable(&mcp_url(&app, &id), "b").await;
        assert_eq!(
            session_containers(&id).len(),
            2,
            "{name}: one container per session"
        );
        let (wa, wb) = (whoami(&a).await, whoami(&b).await);
        assert_ne!(
            wa["hostname"], wb["hostname"],
            "{name}: different containers"
        );
        assert_eq!(wa["uid"], d["uid"], "{name}: the deployment's user");
        assert_eq!(wb["uid"], d["uid"], "{name}: the deployment's user");

        // Both containers' stderr reaches the deployment's logs, each line marked with its
        // session.
        for client in [&a, &b] {
            client
                .call("stderr", json!({"kb": 1}))
                .await
                .expect("stderr tool");
        }
        let marks = |stderr: &str| -> Vec<String> {
            let mut marks: Vec<String> = stderr
                .lines()
                .filter(|l| l.contains("stderr line 1 "))
                .map(|l| l.split("] ").next().unwrap_or_default().to_owned())
                .collect();
            marks.sort();
            marks
        };
        let logs = |app: &TestApp, id: String| {
            let req = app.authed(
                reqwest::Method::GET,
                &format!("/api/deployment/{id}/logs?tail=50"),
            );
            async move {
                let (status, body) = mcp_test_support::json_of(req.send().await.ok()?).await;
                (status == 200).then(|| body["stderr"].as_str().unwrap_or_default().to_owned())
            }
        };
        let seen = eventually(
            &format!("{name}: both sessions' stderr in the logs"),
            Duration::from_secs(10),
            || async { logs(&app, id.clone()).await.filter(|s| marks(s).len() == 2) },
        )
        .await;
        let marks_seen = marks(&seen);
        assert!(
            marks_seen.iter().all(|m| m.starts_with("[session ")),
            "{name}: {seen}"
        );
        assert_ne!(marks_seen[0], marks_seen[1], "{name}: two sessions");

        a.close().await;
        eventually(
            &format!("{name}: first session's container removed"),
            Duration::from_secs(20),
            || async { (session_containers(&id).len() == 1).then_some(()) },
        )
        .await;
        assert_eq!(
            b.call("echo", json!({"text": "still here"}))
                .await
                .as_deref(),
            Ok("still here")
        );
        b.close().await;
        eventually(
            &format!("{name}: second session's container removed"),
            Duration::from_secs(20),
            || async { session_containers(&id).is_empty().then_some(()) },
        )
        .await;
        // What they wrote outlives them: in the logs, and saved in the deployment's row
        // (the logs endpoint answers from the live tail while the deployment runs, so only
        // the row shows that the save works).
        eventually(
            &format!("{name}: the sessions' stderr kept after they ended"),
            Duration::from_secs(10),
            || async {
                let kept = logs(&app, id.clone()).await?;
                (marks(&kept) == marks_seen).then_some(())
            },
        )
        .await;
        eventually(
            &format!("{name}: the sessions' stderr saved in the row"),
            Duration::from_secs(10),
            || async {
                let saved = app.saved_stderr(&id).await?;
                (marks(&saved) == marks_seen).then_some(())
            },
        )
        .await;
        assert_eq!(app.delete(&id).await.0, 200);
    }
    app.teardown().await;
}

#[tokio::test]
async fn idle_sessions_expire() {
    let app = TestApp::spawn_with(mcp_test_support::Options {
        args: vec!["--session-idle-seconds".into(), "1".into()],
        ..Default::default()
    })
    .await;
    let d = app.create_fixture(json!({})).await;
    let id = d["id"].as_str().expect("id").to_owned();
    let sid = raw::session(&app, &id).await;
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    assert_eq!(raw::post(&app, &id, Some(&sid), &list).await.status(), 200);
    // Each look is itself traffic, so look less often than the idle limit: the session
    // must expire in a gap between two looks.
    let look = Duration::from_millis(1600);
    mcp_test_support::poll::eventually_every("the idle session to expire", look * 8, look, || {
        let (app, id, sid, list) = (&app, &id, &sid, &list);
        async move { (raw::post(app, id, Some(sid), list).await.status() == 404).then_some(()) }
    })
    .await;
    app.teardown().await;
}

#[tokio::test]
async fn the_clients_authorization_reaches_http_upstreams() {
    let app = TestApp::spawn().await;
    for (name, fields) in upstreams().into_iter().filter(|(n, _)| *n != "stdio") {
        let d = app.create_fixture(fields).await;
        let id = d["id"].as_str().expect("id").to_owned();
        let send = |body: Value, sid: Option<String>| {
            let mut req = app
                .http
                .post(mcp_url(&app, &id))
                .header("accept", raw::ACCEPT_BOTH)
                .header("authorization", "Bearer secret-token")
                .json(&body);
            if let Some(s) = sid {
                req = req.header("mcp-session-id", s);
            }
            req.send()
        };
        let resp = send(raw::init_body(1), None).await.expect("initialize");
        assert_eq!(resp.status(), 200, "{name}");
        let sid = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .expect("session")
            .to_owned();
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        assert_eq!(
            send(note, Some(sid.clone())).await.expect("note").status(),
            202
        );
        let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "auth_header", "arguments": {}}});
        let resp = send(call, Some(sid)).await.expect("call");
        let answer = final_answer(resp).await;
        assert_eq!(
            answer["result"]["content"][0]["text"], "Bearer secret-token",
            "{name}: {answer}"
        );
        assert_eq!(app.delete(&id).await.0, 200);
    }
    app.teardown().await;
}

#[tokio::test]
async fn open_streams_do_not_hold_up_a_graceful_shutdown() {
    let app = TestApp::spawn_with(mcp_test_support::Options {
        args: vec!["--cleanup-on-shutdown".into()],
        ..Default::default()
    })
    .await;
    let d = app.create_fixture(json!({})).await;
    let id = d["id"].as_str().expect("id").to_owned();
    let sid = raw::session(&app, &id).await;
    let get = app
        .http
        .get(mcp_url(&app, &id))
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &sid)
        .send()
        .await
        .expect("get stream");
    assert_eq!(get.status(), 200);
    let legacy = Client::legacy(&sse_url(&app, &id), "t").await;
    let (instance, db, _dir) = tokio::time::timeout(Duration::from_secs(30), app.stop())
        .await
        .expect("shutdown finished although streams were open");
    drop((get, legacy));
    mcp_test_support::assert_nothing_left(&instance, &db).await;
}
