//! The binary's command line: invalid configuration stops start-up with one clear line, and
//! `--help` documents every option with its environment variable.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_mcp-runner");

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("API_KEY")
        .output()
        .expect("run mcp-runner");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn invalid_configuration_stops_with_one_line() {
    for (args, words) in [
        (vec!["--api-key", "short"], "API_KEY"),
        (vec!["--network-pool", "10.0.0.1/16"], "NETWORK_POOL"),
        (vec!["--default-max-cpus", "0.01"], "DEFAULT_MAX_CPUS"),
        (vec!["--pids-limit", "2"], "PIDS_LIMIT"),
    ] {
        let (code, _, stderr) = run(&args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(words), "{words} named: {stderr}");
    }
    // clap's own parse errors also exit 2 and name the option.
    let (code, _, stderr) = run(&["--uid-range", "9-1"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--uid-range"), "{stderr}");
}

#[test]
fn help_documents_every_option_and_its_environment_variable() {
    let (code, stdout, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for env in [
        "PORT",
        "BIND_IP",
        "API_KEY",
        "DB_PATH",
        "SENTRY_DSN",
        "DOCKER_RUNTIME",
        "DNS_SERVERS",
        "UID_RANGE",
        "NETWORK_POOL",
        "LOG_FORMAT",
        "RUST_LOG",
        "CLEANUP_ON_SHUTDOWN",
        "INSTANCE_ID",
        "PIDS_LIMIT",
        "ALLOWED_ORIGINS",
        "SESSION_IDLE_SECONDS",
        "FIREWALL",
        "METRICS_REQUIRE_API_KEY",
    ] {
        assert!(stdout.contains(&format!("[env: {env}")), "{env} documented");
    }
}

#[test]
fn openapi_subcommand_prints_the_document() {
    let (code, stdout, _) = run(&["openapi"]);
    assert_eq!(code, 0);
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(doc["info"]["title"], "mcp-runner");
}

/// Starts the server without Docker and returns its first stdout lines, until it has said
/// that it listens and that Docker does not answer.
fn first_lines(format: &str) -> Vec<String> {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(BIN)
        .args([
            "--api-key",
            "0123456789abcdef0123456789abcdef",
            "--port",
            "0",
            "--bind-ip",
            "127.0.0.1",
            "--docker-host",
            "unix:///nonexistent/docker.sock",
            "--firewall",
            "off",
            "--log-format",
            format,
        ])
        .arg("--db-path")
        .arg(dir.path().join("app.db"))
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start mcp-runner");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = Vec::new();
    let (mut listening, mut docker) = (false, false);
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("utf-8 line");
        listening |= line.contains("mcp-runner listening");
        docker |= line.contains("Docker is not answering yet");
        lines.push(line);
        if (listening && docker) || lines.len() > 50 {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines
}

#[test]
fn json_logs_are_one_object_per_line_and_text_logs_have_no_colours_in_a_pipe() {
    let lines = first_lines("json");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Docker is not answering yet")),
        "{lines:?}"
    );
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON object per line");
        for key in ["timestamp", "level", "target", "message"] {
            assert!(v[key].is_string(), "{key} in {line}");
        }
    }
    let listening = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON"))
        .find(|v| v["message"] == "mcp-runner listening")
        .expect("the listening line");
    assert_eq!(listening["level"], "INFO");
    assert!(
        listening["addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:"))
    );

    let lines = first_lines("text");
    assert!(lines.iter().any(|l| l.contains("mcp-runner listening")));
    assert!(
        lines.iter().all(|l| !l.contains('\u{1b}')),
        "no ANSI escapes when stdout is not a terminal: {lines:?}"
    );
}
