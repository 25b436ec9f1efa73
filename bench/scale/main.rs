//! The scale benchmark: what the control plane costs with hundreds of deployments.
//!
//! ```sh
//! sudo -E cargo bench --bench scale      # root, Docker with runsc (./setup.sh)
//! SCALE_DEPLOYMENTS=20 SCALE_RUNNING=5 cargo bench --bench scale    # the small CI size
//! ```
//!
//! One run builds the fixture image (`mcp-fixture`, static, `FROM scratch`) and starts the
//! real `mcp-runner` binary as a child process (temporary database, its own instance id, API
//! key, port on 127.0.0.1, network pool 10.200.0.0/16 and UID range), then, in phases:
//!
//! 1. creates N stdio deployments of the fixture image with `autoStart: false`
//!    (`POST /api/deployment`, a bounded number in flight);
//! 2. starts M of them by using them: `initialize`, `notifications/initialized` and
//!    `tools/call add` through `/mcp-server/{id}/mcp` (the bridge starts the container), the
//!    sessions kept open;
//! 3. lists all N with one `GET /api/deployment` and checks the count and the M running;
//! 4. deletes all N (`DELETE /api/deployment/{id}`).
//!
//! It prints each phase's wall time and request latencies, the server's CPU seconds per phase
//! (utime + stime from `/proc/<pid>/stat`, and apart from it the helper processes it waited
//! for: useradd, groupadd, userdel), and its VmRSS and VmHWM when idle before the first
//! create, after the creates, with M running and after the deletes, next to the targets (RSS
//! ≤ 100 MB with 500 registered / 100 running, idle RSS ≤ 30 MB). Then it checks that no
//! container or network labelled `mcp-runner.instance=<id>`, no host user with GECOS
//! `mcp-runner/<id>/…` and no row is left, and fails otherwise. After an error or Ctrl-C the
//! server is stopped with SIGTERM (it runs with CLEANUP_ON_SHUTDOWN and deletes its
//! deployments) and whatever is still labelled with its instance is removed.
//!
//! Knobs (environment): `SCALE_DEPLOYMENTS` (N, 500), `SCALE_RUNNING` (M, 100),
//! `SCALE_CONCURRENCY` (requests in flight in the create, start and delete phases, 16).

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures_util::{StreamExt, TryStreamExt};
use mcp_test_support::bench::client::{Http, Transport, tool_call_body, tool_text};
use mcp_test_support::bench::{self, env_or, fixture_deployment, ms, quantile};
use mcp_test_support::docker::sweep;
use mcp_test_support::leftovers::{Leftovers, row_count};
use mcp_test_support::server::child::{ChildServer, Settings};
use mcp_test_support::{Api, procfs};
use serde_json::{Value, json};

/// What to run.
#[derive(Debug, Clone)]
struct Options {
    deployments: usize,
    running: usize,
    concurrency: usize,
}

impl Options {
    fn from_env() -> anyhow::Result<Options> {
        let o = Options {
            deployments: env_or("SCALE_DEPLOYMENTS", 500)?,
            running: env_or("SCALE_RUNNING", 100)?,
            concurrency: env_or("SCALE_CONCURRENCY", 16)?,
        };
        if o.deployments == 0 || o.running > o.deployments || o.concurrency == 0 {
            bail!(
                "SCALE_DEPLOYMENTS must be at least 1 and at least SCALE_RUNNING; \
                 SCALE_CONCURRENCY at least 1"
            );
        }
        Ok(o)
    }
}

/// Idle resident memory the control plane aims at.
const IDLE_RSS_TARGET_MB: f64 = 30.0;
/// Resident memory it aims at with 500 deployments registered and 100 running.
const LOADED_RSS_TARGET_MB: f64 = 100.0;

/// Address pool of the server's deployment networks (4096 subnets of /28).
const NETWORK_POOL: &str = "10.200.0.0/16";
/// UID range of the server's host users, clear of the default one that tests use.
const UID_RANGE: &str = "3900000-3999999";
/// How long the stopping server may take (it deletes what is left of its deployments).
const STOP_TIMEOUT: Duration = Duration::from_secs(600);

fn main() -> ExitCode {
    bench::main("scale", None, |cores| Ok(run(Options::from_env()?, cores)))
}

async fn run(opts: Options, cores: usize) -> anyhow::Result<()> {
    let instance = sweep::instance_id(sweep::BENCH, "scale");
    let mut settings = Settings::new(
        env!("CARGO_BIN_EXE_mcp-runner"),
        instance.clone(),
        NETWORK_POOL,
        UID_RANGE,
    );
    // Whatever is left when it stops (after a failure) is deleted by the server itself.
    settings.env = vec![("CLEANUP_ON_SHUTDOWN".into(), "true".into())];
    settings.stop_timeout = STOP_TIMEOUT;
    let mut server = ChildServer::start(settings).await?;
    server.wait_ready().await?;
    eprintln!(
        "mcp-runner (pid {}, instance {instance}) ready at {}",
        server.pid(),
        server.url
    );
    let outcome = {
        let work = measure(&opts, &server, &instance);
        tokio::select! {
            r = work => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        }
    };

    // Stop the server (it deletes what is left with CLEANUP_ON_SHUTDOWN), then look for what
    // still carries the instance's labels (removed when `server` is dropped).
    let t = Instant::now();
    let stopped = server.stop().await;
    let rows = match &stopped {
        Ok(_) => Ok(row_count(&server.db_path).await),
        Err(_) => Err(anyhow!("the server did not stop")),
    };
    let left = {
        let instance = instance.clone();
        tokio::task::spawn_blocking(move || Leftovers::of(&instance)).await?
    };
    eprintln!(
        "server stopped and clean-up checked in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let mut report = match outcome {
        Ok(r) => r,
        Err(e) => {
            eprintln!("server log (last lines):\n{}", server.log_tail(20));
            return Err(e);
        }
    };
    let status = stopped.context("stopping the server")?;
    if !status.success() {
        bail!(
            "mcp-runner exited with {status} on SIGTERM; its log:\n{}",
            server.log_tail(20)
        );
    }
    report.rows_left = rows.context("count the rows left")?;
    report.print(&opts, cores, &instance);
    if !report.left.is_empty() {
        bail!(
            "the deletes left {} of instance {instance} behind (removed now)",
            report.left.describe()
        );
    }
    if !left.is_empty() {
        bail!(
            "the server's shutdown left {} of instance {instance} behind (removed now)",
            left.describe()
        );
    }
    if report.rows_left != 0 {
        bail!("{} rows left in the database", report.rows_left);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Measuring.

/// The server's memory and CPU at a moment.
#[derive(Debug, Clone, Copy)]
struct Reading {
    rss: u64,
    hwm: u64,
    /// utime + stime of the server, in ticks.
    own: u64,
    /// cutime + cstime: the helper processes it waited for, in ticks.
    helpers: u64,
}

fn read(pid: u32) -> anyhow::Result<Reading> {
    let (rss, hwm) = procfs::memory(pid)?;
    let (own, helpers) = procfs::stat_ticks(&format!("/proc/{pid}/stat"));
    Ok(Reading {
        rss,
        hwm,
        own,
        helpers,
    })
}

/// One phase's results.
struct Phase {
    name: String,
    /// Requests made.
    ops: usize,
    wall: Duration,
    /// Per-request latencies (empty for a phase of one request).
    latencies: Vec<Duration>,
    before: Reading,
    after: Reading,
}

struct Report {
    idle: Reading,
    phases: Vec<Phase>,
    left: Leftovers,
    rows_left: usize,
}

/// Runs `op` on every item with `concurrency` in flight, timing each; fails on the first
/// error. Prints progress to stderr.
async fn each<T, R, F, Fut>(
    what: &str,
    items: Vec<T>,
    concurrency: usize,
    op: F,
) -> anyhow::Result<(Vec<R>, Vec<Duration>)>
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = anyhow::Result<R>>,
{
    let total = items.len();
    let done = Arc::new(AtomicUsize::new(0));
    let step = (total / 5).max(1);
    let results: Vec<(R, Duration)> = futures_util::stream::iter(items)
        .map(|item| {
            let done = done.clone();
            let fut = op(item);
            async move {
                let t = Instant::now();
                let r = fut.await?;
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_multiple_of(step) && n < total {
                    eprintln!("  {what}: {n}/{total}");
                }
                anyhow::Ok((r, t.elapsed()))
            }
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    Ok(results.into_iter().unzip())
}

async fn measure(opts: &Options, server: &ChildServer, instance: &str) -> anyhow::Result<Report> {
    let pid = server.pid();
    let api: &Api = server;
    let c = opts.concurrency;
    let idle = read(pid)?;
    let mut phases = Vec::new();

    // 1. Create N, not started.
    let before = read(pid)?;
    let t = Instant::now();
    let body = fixture_deployment(Some(false));
    let (created, latencies) = each("created", vec![(); opts.deployments], c, |()| {
        let body = &body;
        async move { api.try_create(body).await }
    })
    .await
    .context("create phase")?;
    let wall = t.elapsed();
    let ids: Vec<String> = created.into_iter().map(|d| d.id).collect();
    phases.push(Phase {
        name: format!("create {} (autoStart false)", opts.deployments),
        ops: ids.len(),
        wall,
        latencies,
        before,
        after: read(pid)?,
    });
    eprintln!("created {} in {:.1} s", ids.len(), wall.as_secs_f64());

    // 2. Start M by using them; the sessions stay open.
    let before = read(pid)?;
    let t = Instant::now();
    let to_start: Vec<String> = ids.iter().take(opts.running).cloned().collect();
    let (sessions, latencies) = each("started", to_start, c, |id| start_by_call(api, id))
        .await
        .context("start phase")?;
    let wall = t.elapsed();
    phases.push(Phase {
        name: format!("start {} (initialize + tools/call add)", opts.running),
        ops: sessions.len(),
        wall,
        latencies,
        before,
        after: read(pid)?,
    });
    eprintln!("started {} in {:.1} s", sessions.len(), wall.as_secs_f64());

    // 3. List all N in one request.
    let before = read(pid)?;
    let t = Instant::now();
    let all = api.try_list().await.context("list phase")?;
    let wall = t.elapsed();
    let after = read(pid)?;
    check_list(&all, &ids, opts.running)?;
    phases.push(Phase {
        name: format!("list {} (one GET)", opts.deployments),
        ops: 1,
        wall,
        latencies: Vec::new(),
        before,
        after,
    });

    // 4. Delete all N.
    drop(sessions);
    let before = read(pid)?;
    let t = Instant::now();
    let (_, latencies) = each("deleted", ids.clone(), c, |id| async move {
        api.try_delete(&id).await
    })
    .await
    .context("delete phase")?;
    let wall = t.elapsed();
    phases.push(Phase {
        name: format!("delete {}", opts.deployments),
        ops: ids.len(),
        wall,
        latencies,
        before,
        after: read(pid)?,
    });
    eprintln!("deleted {} in {:.1} s", ids.len(), wall.as_secs_f64());

    let left = Leftovers::besides_spares(instance, &server.db_path).await;
    Ok(Report {
        idle,
        phases,
        left,
        rows_left: 0,
    })
}

/// Opens a session on a deployment and calls `add`, which starts its container; returns the
/// open session.
async fn start_by_call(api: &Api, id: String) -> anyhow::Result<Arc<Http>> {
    let http = Http::connect(api.mcp_url(&id))
        .await
        .with_context(|| format!("initialize {id}"))?;
    let reply = http
        .call(1, tool_call_body(1, "add", json!({"a": 2, "b": 3})))
        .await
        .with_context(|| format!("tools/call add on {id}"))?;
    let text = tool_text(&reply.message, 1)?;
    if text != "5" {
        bail!("add(2, 3) on {id} answered {text:?}");
    }
    Ok(http)
}

/// Checks that the list holds exactly `ids`, `running` of them running.
fn check_list(all: &[Value], ids: &[String], running: usize) -> anyhow::Result<()> {
    if all.len() != ids.len() {
        bail!(
            "GET /api/deployment listed {}, not {}",
            all.len(),
            ids.len()
        );
    }
    let listed: HashSet<&str> = all.iter().filter_map(|d| d["id"].as_str()).collect();
    if let Some(missing) = ids.iter().find(|id| !listed.contains(id.as_str())) {
        bail!("GET /api/deployment does not list {missing}");
    }
    let up = all.iter().filter(|d| d["status"] == "running").count();
    if up != running {
        bail!("{up} deployments are running, not {running}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The report.

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl Report {
    fn print(&self, opts: &Options, cores: usize, instance: &str) {
        let tick = procfs::tick_seconds();
        println!();
        println!(
            "mcp-runner scale benchmark: {n} stdio deployments of `mcp-fixture` (autoStart false), {m} started through /mcp-server/{{id}}/mcp, {c} requests in flight; the release binary as a child process; {cores} host cores",
            n = opts.deployments,
            m = opts.running,
            c = opts.concurrency,
        );
        println!();
        println!(
            "{:<40} {:>8} {:>7} {:>8} {:>8} {:>8} {:>7} {:>8} {:>8} {:>8}",
            "phase",
            "wall s",
            "per s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "CPU s",
            "helper s",
            "RSS MB",
            "HWM MB"
        );
        println!(
            "{:<40} {:>8} {:>7} {:>8} {:>8} {:>8} {:>7} {:>8} {:>8.1} {:>8.1}",
            "idle, before the first create",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            mb(self.idle.rss),
            mb(self.idle.hwm)
        );
        for p in &self.phases {
            let mut l = p.latencies.clone();
            l.sort_unstable();
            let lat = |q: f64| {
                if l.is_empty() {
                    format!("{:.1}", ms(p.wall))
                } else {
                    format!("{:.1}", ms(quantile(&l, q)))
                }
            };
            let secs = p.wall.as_secs_f64();
            let rate = if p.ops > 1 {
                format!("{:.1}", p.ops as f64 / secs.max(1e-9))
            } else {
                "-".to_owned()
            };
            println!(
                "{:<40} {:>8.2} {:>7} {:>8} {:>8} {:>8} {:>7.2} {:>8.2} {:>8.1} {:>8.1}",
                p.name,
                secs,
                rate,
                lat(0.5),
                lat(0.99),
                lat(1.0),
                p.after.own.saturating_sub(p.before.own) as f64 * tick,
                p.after.helpers.saturating_sub(p.before.helpers) as f64 * tick,
                mb(p.after.rss),
                mb(p.after.hwm)
            );
        }
        println!(
            "(CPU s: the server's own utime+stime in the phase; helper s: processes it ran and waited for (useradd, groupadd, userdel); RSS/HWM: VmRSS/VmHWM at the end of the phase)"
        );

        println!();
        let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
        let idle = mb(self.idle.rss);
        println!(
            "target: idle VmRSS <= {IDLE_RSS_TARGET_MB} MB: {idle:.1} MB, {}",
            verdict(idle <= IDLE_RSS_TARGET_MB)
        );
        if let Some(started) = self.phases.get(1) {
            let rss = mb(started.after.rss);
            println!(
                "target: VmRSS <= {LOADED_RSS_TARGET_MB} MB with 500 registered / 100 running: {rss:.1} MB with {} registered / {} running (VmHWM {:.1} MB), {}{}",
                opts.deployments,
                opts.running,
                mb(started.after.hwm),
                verdict(rss <= LOADED_RSS_TARGET_MB),
                if opts.deployments < 500 || opts.running < 100 {
                    " (at a smaller size than the target's)"
                } else {
                    ""
                }
            );
        }
        if let Some(last) = self.phases.last() {
            println!(
                "peak VmHWM over the run: {:.1} MB; server CPU over all phases: {:.1} s (+ {:.1} s helpers)",
                mb(last.after.hwm),
                last.after.own.saturating_sub(self.idle.own) as f64 * tick,
                last.after.helpers.saturating_sub(self.idle.helpers) as f64 * tick,
            );
        }
        println!();
        if self.left.is_empty() && self.rows_left == 0 {
            println!(
                "after the deletes: no container, network or host user of instance {instance} is left, and no row ({} spares kept for the next creates)",
                self.left.spares
            );
        } else {
            println!(
                "after the deletes: LEFT BEHIND {} and {} rows of instance {instance}",
                self.left.describe(),
                self.rows_left
            );
        }
    }
}
