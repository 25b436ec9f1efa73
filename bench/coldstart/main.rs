//! The cold-start benchmark: how long a new stdio deployment takes from the create request to
//! its first MCP answer, next to what `docker run -i` of the same image takes.
//!
//! ```sh
//! sudo -E cargo bench --bench coldstart      # root, Docker with runsc (./setup.sh)
//! ```
//!
//! One run builds the fixture image (`mcp-fixture`, static, `FROM scratch`), starts a real
//! mcp-runner in-process on 127.0.0.1:0, and then alternates, run by run, two ways of getting
//! the same image to its first answer:
//!
//! - the bridge: `POST /api/deployment` of a stdio deployment (autoStart left at its default,
//!   so the create starts it), then `initialize`, `notifications/initialized` and the first
//!   `tools/list` through `/mcp-server/{id}/mcp`;
//! - the baseline, what `docker run -i` does: create a container with a deployment's sandbox
//!   settings (mcp-runner's own `ContainerSpec`/Docker `Client`: runsc, CapDrop ALL,
//!   no-new-privileges, memory/CPU/pids limits, init, UID 65534) on Docker's default `bridge`
//!   network, attach to its stdio, start it, then `initialize`, `notifications/initialized`
//!   and `tools/list` over the attach stream.
//!
//! Every deployment and container is deleted before the next run. It prints the median, p90,
//! min and max of both, their ratio against the target (bridge ≤ 1.2× baseline), and where the
//! bridge's time goes: its own clock (create answer, initialize, tools/list), the server's log
//! events (mcp-runner at `info`, bollard's request lines at `debug`, recorded in-process) and
//! Docker's event stream (network/container created, attached, started). The two create steps
//! that leave no trace there, the image check and the host user (they run alongside the
//! network create), are timed on their own after each run with the same code. Everything it
//! made is removed at the end, also after an error or Ctrl-C.
//!
//! Knobs (environment): `COLDSTART_RUNS` (10 measured runs per side), `COLDSTART_WARMUP`
//! (1 unmeasured pair first), `COLDSTART_BASELINE_NETWORK` (the baseline's Docker network:
//! `bridge`, as `docker run`; `none` to leave networking out; `fresh` for a new network made
//! like a deployment's before each run, outside the timed span; or the name of a network),
//! `BENCH_LOG` (log filter to stderr; without it the server logs at `info`, as by default,
//! into a sink).

mod observe;

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, anyhow, bail};
use mcp_runner::runtime::docker::{Client, DockerError, HostUsers, object_name};
use mcp_test_support::Api;
use mcp_test_support::bench::client::{Direct, Http, Transport, tool_names, tools_list_body};
use mcp_test_support::bench::direct::{DirectContainer, direct_client, direct_spec};
use mcp_test_support::bench::{self, env_or, fixture_deployment, ms, quantile};
use mcp_test_support::docker::sweep;
use mcp_test_support::fixture::BENCH_IMAGE;
use mcp_test_support::poll;
use mcp_test_support::server::{self, TestApp, Threads};
use observe::{DockerEvent, DockerEvents, LogEvent, Recorder};

/// What to run.
#[derive(Debug, Clone)]
struct Options {
    runs: usize,
    warmup: usize,
    baseline_network: String,
}

impl Options {
    fn from_env() -> anyhow::Result<Options> {
        let o = Options {
            runs: env_or("COLDSTART_RUNS", 10)?,
            warmup: env_or("COLDSTART_WARMUP", 1)?,
            baseline_network: std::env::var("COLDSTART_BASELINE_NETWORK")
                .ok()
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| "bridge".to_owned()),
        };
        if o.runs == 0 {
            bail!("COLDSTART_RUNS must be at least 1");
        }
        Ok(o)
    }
}

/// The server's address pool and UID range in this benchmark (clear of the defaults that
/// tests running alongside use).
const SERVER_ARGS: [&str; 4] = [
    "--network-pool",
    "10.201.0.0/16",
    "--uid-range",
    "3800000-3809999",
];

/// First UID of the host users made to time that step alone (above the server's range).
const PROBE_UID: u32 = 3_810_000;

/// `COLDSTART_BASELINE_NETWORK` value that gives each baseline run a network of its own made
/// like a deployment's (outside the timed span).
const FRESH_NETWORK: &str = "fresh";

/// The bridge ratio the benchmark aims at.
const TARGET_RATIO: f64 = 1.2;

fn main() -> ExitCode {
    bench::main("coldstart", None, |cores| {
        let opts = Options::from_env()?;
        let recorder = Recorder::default();
        init_logging(recorder.clone())?;
        Ok(run(opts, cores, recorder))
    })
}

/// Installs the recorder (mcp-runner's events at `info`, bollard's request lines at `debug`)
/// and the server's usual `info` log, into a sink unless `BENCH_LOG` asks for stderr.
fn init_logging(recorder: Recorder) -> anyhow::Result<()> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let recorded = recorder.with_filter(EnvFilter::new("mcp_runner=info,bollard::docker=debug"));
    let log = match std::env::var("BENCH_LOG") {
        Ok(filter) => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(EnvFilter::new(filter))
            .boxed(),
        Err(_) => tracing_subscriber::fmt::layer()
            .with_writer(std::io::sink)
            .with_filter(EnvFilter::new("info"))
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(recorded)
        .with(log)
        .try_init()
        .map_err(|e| anyhow!("cannot install the logger: {e}"))
}

/// What exists right now and must be removed when the run stops.
#[derive(Default)]
struct Live {
    deployment: Option<String>,
    container: Option<DirectContainer>,
}

async fn run(opts: Options, cores: usize, recorder: Recorder) -> anyhow::Result<()> {
    let direct_instance = sweep::instance_id(sweep::BENCH, "d");
    let mut server: Option<TestApp> = None;
    let mut live = Live::default();
    let outcome = {
        let work = async {
            let events = DockerEvents::watch().context("watch Docker's events")?;
            let client = direct_client(&direct_instance).await?;
            let s = server.insert(
                TestApp::start(server::Options {
                    args: SERVER_ARGS.map(String::from).to_vec(),
                    prefix: sweep::BENCH,
                    test_tuning: false,
                    threads: Threads::Own(None),
                    ..server::Options::default()
                })
                .await?,
            );
            let bench = Bench {
                opts: &opts,
                api: s.api(),
                client: &client,
                direct_instance: &direct_instance,
                events: &events,
                recorder: &recorder,
            };
            bench.measure(&mut live).await
        };
        tokio::select! {
            r = work => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        }
    };

    // Clean up whatever was made, whatever happened.
    let t = Instant::now();
    if let (Some(s), Some(dep)) = (&server, &live.deployment)
        && let Err(e) = s.try_delete(dep).await
    {
        eprintln!("clean-up: {e:#}");
    }
    if let Some(c) = &live.container {
        c.remove().await;
    }
    let mut instances = vec![direct_instance];
    if let Some(s) = server {
        instances.push(s.instance.clone());
        if let Err(e) = s.try_stop().await {
            eprintln!("clean-up: stopping the server: {e:#}");
        }
    }
    for instance in instances {
        tokio::task::spawn_blocking(move || sweep::sweep_instance(&instance)).await?;
    }
    eprintln!("cleaned up in {:.1} s", t.elapsed().as_secs_f64());

    let report = outcome?;
    report.print(&opts, cores);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The two sides.

/// The points of a bridge cold start, in the order they happen.
const BRIDGE_MARKS: [&str; 18] = [
    "POST /api/deployment sent",
    "row inserted (UID, subnet picked)",
    "image check sent",
    "network create sent",
    "network created (Docker event)",
    "container create sent",
    "container created (Docker event)",
    "container inspect sent",
    "attach sent",
    "attached (Docker event)",
    "start sent",
    "network connected (Docker event)",
    "started (Docker event)",
    "stdio process started (log)",
    "201 Created received",
    "initialize answered",
    "notifications/initialized accepted",
    "tools/list answered",
];
const B_POST: usize = 0;
const B_ROW: usize = 1;
const B_IMAGE: usize = 2;
const B_NET_SENT: usize = 3;
const B_NET_DONE: usize = 4;
const B_CREATE_SENT: usize = 5;
const B_CREATED: usize = 6;
const B_INSPECT_SENT: usize = 7;
const B_ATTACH_SENT: usize = 8;
const B_ATTACHED: usize = 9;
const B_START_SENT: usize = 10;
const B_CONNECTED: usize = 11;
const B_STARTED: usize = 12;
const B_PROCESS: usize = 13;
const B_ANSWERED: usize = 14;
const B_INIT: usize = 15;
const B_NOTIFIED: usize = 16;
const B_LISTED: usize = 17;

/// The points of a baseline cold start.
const DIRECT_MARKS: [&str; 6] = [
    "container create sent",
    "created",
    "attached",
    "started",
    "initialize answered",
    "tools/list answered",
];
const D_CREATED: usize = 1;
const D_ATTACHED: usize = 2;
const D_STARTED: usize = 3;
const D_INIT: usize = 4;
const D_LISTED: usize = 5;

/// When each point of one run was reached, after its first.
#[derive(Debug, Clone)]
struct Timeline(Vec<Option<Duration>>);

impl Timeline {
    fn total(&self) -> Duration {
        self.0.last().copied().flatten().unwrap_or_default()
    }

    fn between(&self, from: usize, to: usize) -> Option<Duration> {
        Some(self.0[to]?.saturating_sub(self.0[from]?))
    }
}

struct Bench<'a> {
    opts: &'a Options,
    api: &'a Api,
    client: &'a Client,
    direct_instance: &'a str,
    events: &'a DockerEvents,
    recorder: &'a Recorder,
}

impl Bench<'_> {
    async fn measure(&self, live: &mut Live) -> anyhow::Result<Report> {
        let mut report = Report::default();
        let pairs = self.opts.warmup + self.opts.runs;
        for i in 0..pairs {
            let warm = i < self.opts.warmup;
            // Alternate which side goes first, so that neither always follows the other's
            // clean-up.
            let (b, d) = if i % 2 == 0 {
                let b = self.bridge(live).await.context("bridge cold start")?;
                let d = self.direct(i, live).await.context("baseline cold start")?;
                (b, d)
            } else {
                let d = self.direct(i, live).await.context("baseline cold start")?;
                let b = self.bridge(live).await.context("bridge cold start")?;
                (b, d)
            };
            let span = |t: &Timeline, f: usize, to: usize| cell(t.between(f, to).map(ms));
            eprintln!(
                "  {} {:>2}: bridge {:>7.1} ms (network|user {:>6}, start {:>6}), docker run {:>7.1} ms (start {:>6})",
                if warm { "warm-up" } else { "run    " },
                if warm {
                    i + 1
                } else {
                    i - self.opts.warmup + 1
                },
                ms(b.total()),
                span(&b, B_ROW, B_CREATE_SENT),
                span(&b, B_START_SENT, B_PROCESS),
                ms(d.total()),
                span(&d, D_ATTACHED, D_STARTED),
            );
            let alone = self.alone(i).await;
            if !warm {
                report.bridge.push(b);
                report.direct.push(d);
                report.alone.push(alone);
            }
        }
        Ok(report)
    }

    /// One bridge cold start, then the deployment's deletion.
    async fn bridge(&self, live: &mut Live) -> anyhow::Result<Timeline> {
        self.recorder.clear();
        self.events.clear();
        let t0 = Instant::now();
        let w0 = SystemTime::now();
        let created = self.api.try_create(&fixture_deployment(None)).await?;
        let answered = Instant::now();
        live.deployment = Some(created.id.clone());
        if created.status != "running" {
            bail!(
                "the create answered status {:?}, not running",
                created.status
            );
        }
        let http = Http::connect(self.api.mcp_url(&created.id)).await?;
        let notified = Instant::now();
        let initialized = http.initialized;
        let reply = http.call(1, tools_list_body(1)).await?;
        check_tools(&reply.message)?;
        http.close().await;
        drop(http);
        self.api.try_delete(&created.id).await?;
        live.deployment = None;

        let name = object_name(&created.id);
        let docker = self
            .docker_events(&name, &["create", "attach", "start"])
            .await;
        let logs = self.recorder.take();
        let mut at: Vec<Option<Duration>> = vec![None; BRIDGE_MARKS.len()];
        let since = |i: Instant| Some(i.saturating_duration_since(t0));
        let since_wall = |w: SystemTime| w.duration_since(w0).ok();
        at[B_POST] = Some(Duration::ZERO);
        let first_log = |pred: &dyn Fn(&LogEvent) -> bool| {
            logs.iter()
                .find(|e| pred(e) && e.at >= t0)
                .and_then(|e| since(e.at))
        };
        let cid = created.container_id.as_str();
        let bollard = |e: &LogEvent| e.target.starts_with("bollard");
        at[B_ROW] = first_log(&|e| {
            e.target.starts_with("mcp_runner") && e.message == "creating deployment"
        });
        at[B_IMAGE] = first_log(&|e| bollard(e) && e.message.contains("/images/"));
        at[B_NET_SENT] = first_log(&|e| bollard(e) && e.message.contains("/networks/create"));
        at[B_CREATE_SENT] = first_log(&|e| bollard(e) && e.message.contains("/containers/create"));
        at[B_INSPECT_SENT] =
            first_log(&|e| bollard(e) && e.message.contains(&format!("/containers/{cid}/json")));
        at[B_ATTACH_SENT] =
            first_log(&|e| bollard(e) && e.message.contains(&format!("/containers/{cid}/attach")));
        at[B_START_SENT] =
            first_log(&|e| bollard(e) && e.message.contains(&format!("/containers/{cid}/start")));
        at[B_PROCESS] = first_log(&|e| {
            e.target.starts_with("mcp_runner") && e.message == "stdio process started"
        });
        let event = |kind: &str, action: &str| {
            docker
                .iter()
                .find(|e| e.kind == kind && e.action == action)
                .and_then(|e| since_wall(e.at))
        };
        at[B_NET_DONE] = event("network", "create");
        at[B_CREATED] = event("container", "create");
        at[B_ATTACHED] = event("container", "attach");
        at[B_CONNECTED] = event("network", "connect");
        at[B_STARTED] = event("container", "start");
        at[B_ANSWERED] = since(answered);
        at[B_INIT] = since(initialized);
        at[B_NOTIFIED] = since(notified);
        at[B_LISTED] = since(reply.answered);
        Ok(Timeline(at))
    }

    /// Times the image check and a host user's creation and deletion on their own, with the
    /// calls a create makes (the user belongs to the direct instance, in no server's range).
    async fn alone(&self, run: usize) -> Alone {
        let timed = |r: Result<(), DockerError>, t: Instant| match r {
            Ok(()) => Some(t.elapsed()),
            Err(e) => {
                eprintln!("  timing a step alone failed: {e}");
                None
            }
        };
        let t = Instant::now();
        let image = timed(self.client.ensure_image(BENCH_IMAGE).await, t);
        let users = HostUsers::new(self.direct_instance);
        let name = format!("mcpb-{}-{run}", std::process::id());
        let uid = PROBE_UID + run as u32;
        let t = Instant::now();
        let user_create = timed(users.create(&name, uid, &format!("probe-{run}")).await, t);
        let t = Instant::now();
        let user_delete = timed(users.delete(&name).await, t);
        Alone {
            image,
            user_create,
            user_delete,
        }
    }

    /// The Docker events `actions` of the object `name`, waiting for them a little (the
    /// event stream may lag the API).
    async fn docker_events(&self, name: &str, actions: &[&str]) -> Vec<DockerEvent> {
        poll::settle(
            Duration::from_secs(5),
            Duration::from_millis(20),
            || std::future::ready(self.events.of(name)),
            |seen| {
                actions
                    .iter()
                    .all(|a| seen.iter().any(|e| e.kind == "container" && e.action == *a))
            },
        )
        .await
    }

    /// One baseline cold start (`docker run -i` and the same three messages), then the
    /// container's removal.
    async fn direct(&self, run: usize, live: &mut Live) -> anyhow::Result<Timeline> {
        let name = format!("{}-{run}", self.direct_instance);
        let fresh = self.opts.baseline_network == FRESH_NETWORK;
        let network = if fresh {
            // Made like a deployment's network (bridge, ICC off, a /28), before the clock
            // starts; the final sweep removes it should the run fail.
            let subnet = format!("10.202.{}.0/28", run % 256);
            self.client
                .create_network(&name, Some(&subnet), false)
                .await?
        } else {
            self.opts.baseline_network.clone()
        };
        let spec = direct_spec(&name, &network);
        let t0 = Instant::now();
        let (container, attached, launch) = DirectContainer::launch(self.client, &spec).await?;
        let container = live.container.insert(container);
        let client = Direct::connect(attached).await?;
        let reply = client.call(1, tools_list_body(1)).await?;
        check_tools(&reply.message)?;
        let initialized = client.initialized;
        drop(client);
        container.remove().await;
        live.container = None;
        if fresh {
            self.client.remove_network(&network).await?;
        }
        let since = |i: Instant| Some(i.saturating_duration_since(t0));
        let mut at: Vec<Option<Duration>> = vec![None; DIRECT_MARKS.len()];
        at[0] = Some(Duration::ZERO);
        at[D_CREATED] = since(launch.created);
        at[D_ATTACHED] = since(launch.attached);
        at[D_STARTED] = since(launch.started);
        at[D_INIT] = since(initialized);
        at[D_LISTED] = since(reply.answered);
        Ok(Timeline(at))
    }
}

/// Fails unless a `tools/list` answer lists the fixture's tools.
fn check_tools(message: &serde_json::Value) -> anyhow::Result<()> {
    let names = tool_names(message, 1)?;
    for want in ["echo", "add"] {
        if !names.iter().any(|n| n == want) {
            bail!("tools/list did not list {want}: {names:?}");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The report.

#[derive(Default)]
struct Report {
    bridge: Vec<Timeline>,
    direct: Vec<Timeline>,
    alone: Vec<Alone>,
}

/// Create steps timed on their own, with mcp-runner's code; `None` when one failed.
#[derive(Debug, Clone, Copy)]
struct Alone {
    image: Option<Duration>,
    user_create: Option<Duration>,
    user_delete: Option<Duration>,
}

/// Median, p90, min and max of some durations, in ms; `None` when there are none.
fn summary(mut v: Vec<Duration>) -> Option<[f64; 4]> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some([
        ms(quantile(&v, 0.5)),
        ms(quantile(&v, 0.9)),
        ms(v[0]),
        ms(v[v.len() - 1]),
    ])
}

fn median_of(v: impl Iterator<Item = Option<Duration>>) -> Option<f64> {
    summary(v.flatten().collect()).map(|s| s[0])
}

fn cell(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.1}"))
}

/// A step of a cold start: its name, its span on the bridge side and on the baseline side.
type Step = (&'static str, Option<(usize, usize)>, Option<(usize, usize)>);

/// The steps both sides have, from the first request to the first `tools/list` answer.
const STEPS: [Step; 8] = [
    (
        "API, UID/subnet pick, row insert",
        Some((B_POST, B_ROW)),
        None,
    ),
    (
        "image check | network | host user (parallel)",
        Some((B_ROW, B_CREATE_SENT)),
        None,
    ),
    (
        "container create (+ row update)",
        Some((B_CREATE_SENT, B_INSPECT_SENT)),
        Some((0, D_CREATED)),
    ),
    (
        "container inspect + attach",
        Some((B_INSPECT_SENT, B_START_SENT)),
        Some((D_CREATED, D_ATTACHED)),
    ),
    (
        "start (+ status update, stdio hand-over)",
        Some((B_START_SENT, B_PROCESS)),
        Some((D_ATTACHED, D_STARTED)),
    ),
    (
        "answer to the create request",
        Some((B_PROCESS, B_ANSWERED)),
        None,
    ),
    (
        "initialize (new HTTP connection, session)",
        Some((B_ANSWERED, B_INIT)),
        Some((D_STARTED, D_INIT)),
    ),
    (
        "notifications/initialized + tools/list",
        Some((B_INIT, B_LISTED)),
        Some((D_INIT, D_LISTED)),
    ),
];

impl Report {
    fn print(&self, opts: &Options, cores: usize) {
        let totals = |runs: &[Timeline]| summary(runs.iter().map(Timeline::total).collect());
        let (Some(b), Some(d)) = (totals(&self.bridge), totals(&self.direct)) else {
            println!("no runs");
            return;
        };
        println!();
        println!(
            "mcp-runner cold-start benchmark: stdio deployment of `mcp-fixture` under runsc ({MB} MB, {CPUS} CPU); {runs} runs per side after {warm} warm-up pair(s), alternating; {cores} host cores",
            MB = bench::MEMORY_MB,
            CPUS = bench::CPUS,
            runs = opts.runs,
            warm = opts.warmup,
        );
        println!(
            "bridge: POST /api/deployment (autoStart) -> initialize -> notifications/initialized -> tools/list through /mcp-server/{{id}}/mcp"
        );
        println!(
            "docker run: create (same sandbox, network `{}`, UID 65534) -> attach -> start -> the same three messages over the attach stream",
            opts.baseline_network
        );
        println!();
        println!(
            "{:<36} {:>9} {:>9} {:>9} {:>9}",
            "to the first tools/list answer, ms", "median", "p90", "min", "max"
        );
        for (name, s) in [("bridge", b), ("docker run", d)] {
            println!(
                "{name:<36} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                s[0], s[1], s[2], s[3]
            );
        }
        let ratio = b[0] / d[0];
        println!(
            "{:<36} {:>8.2}x {:>8.2}x {:>8.2}x {:>8.2}x   target <= {TARGET_RATIO}x (median): {}",
            "bridge / docker run",
            ratio,
            b[1] / d[1],
            b[2] / d[2],
            b[3] / d[3],
            if ratio <= TARGET_RATIO {
                "met"
            } else {
                "NOT met"
            }
        );

        println!();
        println!(
            "{:<46} {:>10} {:>11}",
            "where the time goes (median ms per step)", "bridge", "docker run"
        );
        for (name, bs, ds) in STEPS {
            let side = |runs: &[Timeline], span: Option<(usize, usize)>| {
                span.and_then(|(f, t)| median_of(runs.iter().map(|r| r.between(f, t))))
            };
            println!(
                "  {name:<44} {:>10} {:>11}",
                cell(side(&self.bridge, bs)),
                cell(side(&self.direct, ds))
            );
        }
        println!(
            "  {:<44} {:>10.1} {:>11.1}",
            "total (median of the totals)", b[0], d[0]
        );

        println!();
        println!(
            "bridge timeline: median ms after the POST was sent (and since the point before); seen = runs in which it was observed"
        );
        let mut previous: Option<f64> = None;
        for (i, name) in BRIDGE_MARKS.iter().enumerate() {
            let seen = self.bridge.iter().filter(|r| r.0[i].is_some()).count();
            let at = median_of(self.bridge.iter().map(|r| r.0[i]));
            let delta = match (at, previous) {
                (Some(a), Some(p)) => format!("{:+.1}", a - p),
                _ => "".to_owned(),
            };
            println!(
                "  {name:<38} {:>8} {:>8}   seen {seen}/{}",
                cell(at),
                delta,
                self.bridge.len()
            );
            previous = at.or(previous);
        }
        let step = |name: &str, f: usize, t: usize| {
            let v = median_of(self.bridge.iter().map(|r| r.between(f, t)));
            println!("  {name:<38} {:>8}", cell(v));
        };
        println!("Docker-side durations (median ms, request sent -> daemon event):");
        step("network create", B_NET_SENT, B_NET_DONE);
        step("container create", B_CREATE_SENT, B_CREATED);
        step("container start", B_START_SENT, B_STARTED);
        let alone = |name: &str, f: &dyn Fn(&Alone) -> Option<Duration>| {
            let v = median_of(self.alone.iter().map(f));
            println!("  {name:<38} {:>8}", cell(v));
        };
        println!(
            "the steps beside the network create, timed alone after each run with the same code (median ms):"
        );
        alone("image check (inspect)", &|a| a.image);
        alone("host user create (groupadd + useradd)", &|a| a.user_create);
        alone("host user delete (userdel + groupdel)", &|a| a.user_delete);
    }
}
