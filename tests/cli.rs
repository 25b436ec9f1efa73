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
