//! A restart of the host's Docker daemon under running deployments, and the stopping and
//! starting of dockerd it needs ([`Outage`]). Under systemd through `systemctl`; otherwise the
//! background dockerd that `setup.sh` started (pidfile `/var/run/dockerd-mcp-runner.pid`) is
//! sent SIGTERM and started again with the command line, environment and working directory
//! it had, its output appended to setup.sh's log.
//!
//! Stopping dockerd stops every container on the host, those of other test runs too: the
//! scenario is ignored unless asked for (`cargo test --test faults -- --ignored`), as CI does
//! on its own machine.

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mcp_test_support::mcp::Client;
use mcp_test_support::poll;
use serde_json::json;

use crate::docker_outage::{BOUND, docker_not_ready, rpc_failure};
use crate::scenario::{self, bounded, echo, initialize, summary, until_ready};

const PIDFILE: &str = "/var/run/dockerd-mcp-runner.pid";
const LOG: &str = "/var/log/mcp-runner-dockerd.log";

/// How long dockerd may take to stop (it stops every container) or to answer again.
const PATIENCE: Duration = Duration::from_secs(90);
/// How often to look whether dockerd has stopped, started or answers.
const LOOK: Duration = Duration::from_millis(100);

/// How dockerd was started, to start it the same way again.
struct Launch {
    argv: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: PathBuf,
}

/// Docker is stopped until [`Outage::end`]; dropping it (a failed test) starts Docker again.
pub struct Outage {
    launch: Option<Launch>,
    ended: bool,
}

fn under_systemd() -> bool {
    Path::new("/run/systemd/system").exists()
}

fn nul_separated(bytes: Vec<u8>) -> Vec<OsString> {
    bytes
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| OsString::from_vec(s.to_vec()))
        .collect()
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_owned())
        })
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

/// The pid in the pidfile, when it names a live dockerd.
fn pidfile_dockerd() -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(PIDFILE).ok()?.trim().parse().ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (comm.trim() == "dockerd" && alive(pid)).then_some(pid)
}

/// Whether the daemon answers on its socket.
fn answers() -> bool {
    Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let status = Command::new(program)
        .args(args)
        .status()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{program} {args:?} failed with {status}"))
    }
}

impl Outage {
    /// Stops dockerd and returns once it has exited.
    pub fn begin() -> Outage {
        if under_systemd() {
            // Socket activation would start it again on the first request.
            run("systemctl", &["stop", "docker.socket", "docker.service"])
                .unwrap_or_else(|e| panic!("{e}"));
            return Outage {
                launch: None,
                ended: false,
            };
        }
        let pid = pidfile_dockerd().unwrap_or_else(|| {
            panic!("no running dockerd in {PIDFILE}: start Docker with ./setup.sh")
        });
        let launch = Launch {
            argv: nul_separated(
                std::fs::read(format!("/proc/{pid}/cmdline")).expect("read dockerd's cmdline"),
            ),
            env: nul_separated(
                std::fs::read(format!("/proc/{pid}/environ")).expect("read dockerd's environ"),
            )
            .into_iter()
            .filter_map(|kv| {
                let kv = kv.into_vec();
                let eq = kv.iter().position(|b| *b == b'=')?;
                Some((
                    OsString::from_vec(kv[..eq].to_vec()),
                    OsString::from_vec(kv[eq + 1..].to_vec()),
                ))
            })
            .collect(),
            // The directory it was started from may be gone since (a removed clone): then
            // "/", which is all dockerd needs.
            cwd: std::fs::read_link(format!("/proc/{pid}/cwd"))
                .ok()
                .filter(|d| d.is_dir())
                .unwrap_or_else(|| PathBuf::from("/")),
        };
        assert!(!launch.argv.is_empty(), "dockerd's command line is empty");
        let outage = Outage {
            launch: Some(launch),
            ended: false,
        };
        run("kill", &["-TERM", &pid.to_string()]).unwrap_or_else(|e| panic!("{e}"));
        if !poll::blocking(PATIENCE, LOOK, || !alive(pid)) {
            // Dropping `outage` starts it again if it did stop after all.
            panic!("dockerd (pid {pid}) did not exit within {PATIENCE:?} of SIGTERM");
        }
        outage
    }

    /// Starts dockerd again and returns once it answers.
    pub fn end(mut self) {
        if let Err(e) = self.end_now() {
            panic!("{e}");
        }
    }

    fn end_now(&mut self) -> Result<(), String> {
        if self.ended {
            return Ok(());
        }
        self.ended = true;
        match &self.launch {
            None => run("systemctl", &["start", "docker.socket", "docker.service"])?,
            Some(launch) if pidfile_dockerd().is_none() => start(launch)?,
            Some(_) => {}
        }
        if poll::blocking(PATIENCE, LOOK, answers) {
            Ok(())
        } else {
            Err(format!(
                "Docker did not answer within {PATIENCE:?} of starting it again; see {LOG}"
            ))
        }
    }
}

/// Starts dockerd as `launch` describes, in a session of its own, and makes sure the
/// pidfile names it.
fn start(launch: &Launch) -> Result<(), String> {
    let log = File::options()
        .create(true)
        .append(true)
        .open(LOG)
        .map_err(|e| format!("cannot open {LOG}: {e}"))?;
    let child = Command::new("setsid")
        .args(&launch.argv)
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&launch.cwd)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| format!("log handle: {e}"))?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start dockerd: {e}"))?;
    // setsid(1) execs in place (the child is no group leader), so this is dockerd's pid;
    // dockerd writes it to its --pidfile itself, and this covers a command line without one.
    let pid = child.id();
    if !poll::blocking(PATIENCE, LOOK, || pidfile_dockerd().is_some() || answers()) {
        return Err(format!("dockerd did not start; see {LOG}"));
    }
    if pidfile_dockerd().is_none() {
        std::fs::write(PIDFILE, format!("{pid}\n"))
            .map_err(|e| format!("cannot write {PIDFILE}: {e}"))?;
    }
    Ok(())
}

impl Drop for Outage {
    fn drop(&mut self) {
        // A test that failed during the outage must not leave the host without Docker.
        if let Err(e) = self.end_now() {
            eprintln!("{e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts dockerd, which stops every container on the host; run it on a test machine: cargo test --test faults -- --ignored"]
async fn dockerd_restart_under_running_deployments() {
    let _turn = scenario::one_at_a_time().await;
    let started = Instant::now();
    let app = scenario::ready_server("dockerd", 1).await;
    let ids: Vec<String> = [
        app.create_fixture(json!({})).await,
        app.create_fixture(json!({})).await,
    ]
    .iter()
    .map(|d| d["id"].as_str().expect("id").to_owned())
    .collect();
    let session = Client::streamable(&app.mcp_url(&ids[0]), "before").await;
    assert_eq!(
        session
            .call("echo", json!({"text": "before"}))
            .await
            .as_deref(),
        Ok("before")
    );
    assert_eq!(echo(&app, &ids[1], "before").await.as_deref(), Ok("before"));

    let stopping = Instant::now();
    let outage = tokio::task::spawn_blocking(Outage::begin)
        .await
        .expect("stop dockerd");
    let stopped_in = stopping.elapsed();

    let (status, ready) = bounded("readyz", BOUND, app.readyz()).await.0;
    let why = docker_not_ready(status, &ready);
    // The open session's server is gone with its container; a new session needs Docker.
    let (call, call_took) = bounded(
        "tools/call on an open session",
        BOUND,
        session.call("echo", json!({"text": "during"})),
    )
    .await;
    assert!(call.is_err(), "a tools/call during the outage: {call:?}");
    let ((status, rpc), init_took) =
        bounded("an MCP initialize", BOUND, initialize(&app, &ids[1])).await;
    rpc_failure(status, &rpc, "initialize during the outage");
    session.close().await;

    let starting = Instant::now();
    tokio::task::spawn_blocking(move || outage.end())
        .await
        .expect("start dockerd");
    let docker_back = starting.elapsed();
    let ready_in = until_ready(&app).await;

    // Both deployments answer again: their containers are started on demand.
    for id in &ids {
        assert_eq!(echo(&app, id, "after").await.as_deref(), Ok("after"));
    }
    let mut listed = app.list_ids().await;
    listed.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(listed, expected);
    app.teardown().await;
    summary(&format!(
        "faults/dockerd-restart: dockerd stopped in {:.1} s; during the outage readyz 503 ({why}), \
         tools/call error in {} ms, initialize {status} in {} ms; dockerd answered {:.1} s after \
         start, mcp-runner ready {:.1} s later; both deployments answered again; total {:.1} s",
        stopped_in.as_secs_f64(),
        call_took.as_millis(),
        init_took.as_millis(),
        docker_back.as_secs_f64(),
        ready_in.as_secs_f64(),
        started.elapsed().as_secs_f64()
    ));
}
