//! The real mcp-runner binary (`CARGO_BIN_EXE_mcp-runner`) as a child process: its own
//! temporary database and log, instance id, API key, port on 127.0.0.1, address pool and UID
//! range.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::support::api::Api;
use crate::support::setup::API_KEY;

/// Address pool of the server's deployment networks (4096 subnets of /28).
const NETWORK_POOL: &str = "10.200.0.0/16";
/// UID range of the server's host users, clear of the default one that tests use.
const UID_RANGE: &str = "3900000-3999999";
/// How long the server may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopping server may take (it deletes what is left of its deployments).
const STOP_TIMEOUT: Duration = Duration::from_secs(600);

/// A running mcp-runner child process.
pub struct ChildServer {
    /// Its process id.
    pub pid: u32,
    /// Its management API.
    pub api: Api,
    /// Its SQLite file.
    pub db: PathBuf,
    log: PathBuf,
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl ChildServer {
    /// Starts the binary as instance `instance` and waits until `/readyz` answers 200.
    pub async fn start(instance: &str) -> anyhow::Result<ChildServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("find a free port")?
            .port();
        let dir = tempfile::tempdir().context("temp dir")?;
        let db = dir.path().join("app.db");
        let log = dir.path().join("mcp-runner.log");
        let out = std::fs::File::create(&log).context("create the server log")?;
        let err = out.try_clone().context("server log")?;
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-runner"));
        cmd.env("PORT", port.to_string())
            .env("BIND_IP", "127.0.0.1")
            .env("API_KEY", API_KEY)
            .env("DB_PATH", &db)
            .env("INSTANCE_ID", instance)
            .env("NETWORK_POOL", NETWORK_POOL)
            .env("UID_RANGE", UID_RANGE)
            // Whatever is left when it stops (after a failure) is deleted by the server itself.
            .env("CLEANUP_ON_SHUTDOWN", "true")
            .env("RUST_LOG", "info")
            .env("LOG_FORMAT", "text")
            // Plain text in the log file (and in the tail printed after a failure).
            .env("NO_COLOR", "1")
            .env_remove("SENTRY_DSN")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own process group: Ctrl-C in the terminal reaches the benchmark only, which
            // then cleans up and stops the server itself.
            .process_group(0);
        // SAFETY: the closure only calls prctl(2), which is async-signal-safe, between fork
        // and exec.
        unsafe {
            cmd.pre_exec(|| {
                // Should the benchmark die without stopping it, the server gets SIGTERM and
                // deletes its deployments (CLEANUP_ON_SHUTDOWN) instead of living on.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().context("start the mcp-runner binary")?;
        let pid = child.id().context("the server has no pid")?;
        let mut server = ChildServer {
            pid,
            api: Api::new(format!("http://127.0.0.1:{port}"))?,
            db,
            log,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = server.child.try_wait().context("wait for the server")? {
                bail!(
                    "mcp-runner exited during start-up ({status}); its log:\n{}",
                    server.log_tail(30)
                );
            }
            if server.api.ready().await {
                return Ok(server);
            }
            if Instant::now() > deadline {
                let tail = server.log_tail(30);
                let _ = server.stop().await;
                bail!("mcp-runner was not ready within {READY_TIMEOUT:?}; its log:\n{tail}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last `n` lines of the server's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Stops the server with SIGTERM (it deletes what is left of its deployments) and waits
    /// for it; SIGKILL after `STOP_TIMEOUT`. Returns its exit status.
    pub async fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
        if unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) } != 0 {
            bail!(
                "cannot signal the server: {}",
                std::io::Error::last_os_error()
            );
        }
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                self.child.kill().await?;
                bail!("mcp-runner did not stop within {STOP_TIMEOUT:?} of SIGTERM; killed it")
            }
        }
    }
}
