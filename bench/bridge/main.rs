//! The bridge benchmark: what mcp-runner's Streamable HTTP front costs over talking to the
//! container's stdio directly.
//!
//! ```sh
//! sudo -E cargo bench --bench bridge      # root, Docker with runsc (./setup.sh)
//! ```
//!
//! One run builds the fixture image (`mcp-fixture`, static, `FROM scratch`), starts
//!
//! - a fixture container under runsc with the sandbox settings of a deployment, attached by
//!   the benchmark itself (the baseline: JSON-RPC lines over the Docker attach stream), and
//! - a real mcp-runner in-process on 127.0.0.1:0 with a stdio deployment of the same image,
//!   reached through `/mcp-server/{id}/mcp` (the bridge),
//!
//! then times `tools/call echo` at each concurrency (calls in flight on one stream or one
//! session) and `tools/call payload` of a few sizes, alternating direct and bridged rounds, and
//! prints calls/s, p50/p99 latency, MB/s and the CPU each component spent per call.
//! Everything it made is removed at the end (also after an error or Ctrl-C).
//!
//! Knobs (environment): `BENCH_CALLS` (3000 echo calls per case), `BENCH_WARMUP` (200),
//! `BENCH_MAX_SECONDS` (10: a side's case stops early after this long, warm-up after a fifth
//! of it), `BENCH_ROUNDS` (3 alternating rounds), `BENCH_CONCURRENCY` (`1,8,32`),
//! `BENCH_PAYLOAD_KB` (`1,64,1024`; empty: none), `BENCH_PAYLOAD_MB` (32 MB per payload
//! size), `BENCH_ONLY` (`direct` or `bridge`, for profiling), `BENCH_LOG` (log filter to
//! stderr; without it the server logs at `info`, as by default, into a sink),
//! `BENCH_SERVER_THREADS` (the server's runtime threads; by default what mcp-runner starts
//! with, `WORKER_THREADS`' default).

mod cpu;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use cpu::{Cpu, CpuProbe, GROUPS};
use mcp_test_support::bench::client::{Direct, Floor, Http, Sample, Transport, Work, drive};
use mcp_test_support::bench::direct::DirectContainer;
use mcp_test_support::bench::{self, env_list, env_or, fixture_deployment, ms, quantile};
use mcp_test_support::docker::sweep;
use mcp_test_support::server::{self, TestApp, Threads};

/// What to run.
#[derive(Debug, Clone)]
struct Options {
    calls: usize,
    warmup: usize,
    rounds: usize,
    concurrency: Vec<usize>,
    payload_kb: Vec<u64>,
    payload_bytes: u64,
    max_time: Duration,
    direct: bool,
    bridge: bool,
}

impl Options {
    fn from_env() -> anyhow::Result<Options> {
        let only = std::env::var("BENCH_ONLY").unwrap_or_default();
        let (direct, bridge) = match only.as_str() {
            "" => (true, true),
            "direct" => (true, false),
            "bridge" => (false, true),
            other => bail!("BENCH_ONLY={other:?}: use `direct` or `bridge`"),
        };
        let o = Options {
            calls: env_or("BENCH_CALLS", 3000)?,
            warmup: env_or("BENCH_WARMUP", 200)?,
            rounds: env_or("BENCH_ROUNDS", 3)?,
            concurrency: env_list("BENCH_CONCURRENCY", "1,8,32")?
                .into_iter()
                .map(|c| c as usize)
                .collect(),
            payload_kb: env_list("BENCH_PAYLOAD_KB", "1,64,1024")?,
            payload_bytes: env_or::<u64>("BENCH_PAYLOAD_MB", 32)? * 1_000_000,
            max_time: Duration::from_secs_f64(env_or("BENCH_MAX_SECONDS", 10.0)?),
            direct,
            bridge,
        };
        if o.calls == 0 || o.rounds == 0 || o.calls < o.rounds {
            bail!("BENCH_CALLS must be at least BENCH_ROUNDS, and both above 0");
        }
        Ok(o)
    }
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; there is nothing to parse.
    bench::main("bridge", Some(cpu::CLIENT_THREADS), |cores| {
        let opts = Options::from_env()?;
        init_logging();
        Ok(run(opts, cores))
    })
}

/// The server logs as in production (`info`, so the per-request spans exist), into a sink
/// unless `BENCH_LOG` asks for them on stderr.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    match std::env::var("BENCH_LOG") {
        Ok(filter) => {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(EnvFilter::new(filter))
                .with_writer(std::io::stderr)
                .try_init();
        }
        Err(_) => {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(EnvFilter::new("info"))
                .with_writer(std::io::sink)
                .try_init();
        }
    }
}

async fn run(opts: Options, cores: usize) -> anyhow::Result<()> {
    let mut container: Option<DirectContainer> = None;
    let mut server: Option<TestApp> = None;
    let mut deployment: Option<String> = None;
    let outcome = {
        let work = async {
            let t = Instant::now();
            let direct = sweep::instance_id(sweep::BENCH, "d");
            let (c, attached) = DirectContainer::start(&direct).await?;
            let c = container.insert(c);
            let threads = match std::env::var("BENCH_SERVER_THREADS") {
                Ok(n) => Some(n.parse().context("BENCH_SERVER_THREADS")?),
                Err(_) => None,
            };
            let s = TestApp::start(server::Options {
                prefix: sweep::BENCH,
                test_tuning: false,
                threads: Threads::Own(threads),
                ..server::Options::default()
            })
            .await?;
            let s = server.insert(s);
            // The bridge starts it on the first session (attached before the start).
            let created = s.try_create(&fixture_deployment(Some(false))).await?;
            let (dep, dep_container) = (created.id, created.container_id);
            deployment = Some(dep.clone());
            let direct = Direct::connect(attached).await.context("direct session")?;
            let http = Http::connect(s.mcp_url(&dep))
                .await
                .context("bridge session")?;
            eprintln!(
                "containers up and sessions initialized in {:.1} s; measuring …",
                t.elapsed().as_secs_f64()
            );
            let probe = CpuProbe::new(vec![c.id.clone(), dep_container]);
            let bench = Bench {
                opts: &opts,
                direct,
                http: http.clone(),
                floor: Floor::new(&s.url)?,
                ids: Arc::new(AtomicU64::new(1)),
                probe: &probe,
            };
            let report = bench.measure().await;
            http.close().await;
            report
        };
        tokio::select! {
            r = work => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        }
    };

    // Clean up whatever was made, whatever happened.
    let t = Instant::now();
    if let (Some(s), Some(dep)) = (&server, &deployment)
        && let Err(e) = s.try_delete(dep).await
    {
        eprintln!("clean-up: {e:#}");
    }
    if let Some(c) = &container {
        c.remove().await;
    }
    if let Some(s) = server
        && let Err(e) = s.try_stop().await
    {
        eprintln!("clean-up: stopping the server: {e:#}");
    }
    eprintln!("cleaned up in {:.1} s", t.elapsed().as_secs_f64());

    let report = outcome?;
    report.print(&opts, cores);
    Ok(())
}

/// One measured case of one side.
struct Case {
    side: &'static str,
    concurrency: usize,
    sample: Sample,
    cpu: Cpu,
}

/// Results of a whole run.
struct Report {
    echo: Vec<Case>,
    /// The HTTP round trip alone (`Floor`), per concurrency.
    floor: Vec<Case>,
    payload: Vec<(u64, Vec<Case>)>,
    probe: CpuProbe,
}

/// Runs `n` calls on `t` and records the CPU they cost.
async fn batch<T: Transport>(
    t: &Arc<T>,
    ids: &Arc<AtomicU64>,
    concurrency: usize,
    (n, max_time): (usize, Duration),
    work: Work,
    probe: &CpuProbe,
) -> anyhow::Result<(Sample, Cpu)> {
    let before = probe.snapshot();
    let sample = drive(t, ids, concurrency, n, max_time, work).await?;
    Ok((sample, probe.snapshot() - before))
}

/// The two clients and what they share.
struct Bench<'a> {
    opts: &'a Options,
    direct: Arc<Direct>,
    http: Arc<Http>,
    floor: Arc<Floor>,
    /// One id sequence for both: every request of the run has its own id.
    ids: Arc<AtomicU64>,
    probe: &'a CpuProbe,
}

impl Bench<'_> {
    /// Warms both sides up, then runs `calls` calls on each in alternating rounds.
    async fn compare(
        &self,
        concurrency: usize,
        calls: usize,
        warmup: usize,
        work: Work,
    ) -> anyhow::Result<Vec<Case>> {
        let (opts, ids, probe) = (self.opts, &self.ids, self.probe);
        let case = |side| Case {
            side,
            concurrency,
            sample: Sample::default(),
            cpu: Cpu::default(),
        };
        let (mut d, mut b) = (case("direct"), case("bridge"));
        let warm_time = opts.max_time / 5;
        if opts.direct {
            drive(&self.direct, ids, concurrency, warmup, warm_time, work)
                .await
                .context("direct warm-up")?;
        }
        if opts.bridge {
            drive(&self.http, ids, concurrency, warmup, warm_time, work)
                .await
                .context("bridge warm-up")?;
        }
        let round_time = opts.max_time / opts.rounds as u32;
        for round in 0..opts.rounds {
            let n = calls / opts.rounds + usize::from(round < calls % opts.rounds);
            let n = (n, round_time);
            if opts.direct {
                let (s, c) = batch(&self.direct, ids, concurrency, n, work, probe)
                    .await
                    .with_context(|| format!("direct {work:?} at concurrency {concurrency}"))?;
                d.sample.merge(s);
                d.cpu += c;
            }
            if opts.bridge {
                let (s, c) = batch(&self.http, ids, concurrency, n, work, probe)
                    .await
                    .with_context(|| format!("bridge {work:?} at concurrency {concurrency}"))?;
                b.sample.merge(s);
                b.cpu += c;
            }
        }
        Ok([(opts.direct, d), (opts.bridge, b)]
            .into_iter()
            .filter_map(|(on, c)| on.then_some(c))
            .collect())
    }

    async fn measure(&self) -> anyhow::Result<Report> {
        let opts = self.opts;
        let mut echo = Vec::new();
        let mut floor = Vec::new();
        for &c in &opts.concurrency {
            let t = Instant::now();
            echo.extend(self.compare(c, opts.calls, opts.warmup, Work::Echo).await?);
            if opts.bridge {
                let budget = (opts.calls, opts.max_time);
                drive(
                    &self.floor,
                    &self.ids,
                    c,
                    opts.warmup,
                    opts.max_time / 5,
                    Work::Probe,
                )
                .await
                .context("HTTP floor warm-up")?;
                let (sample, cpu) =
                    batch(&self.floor, &self.ids, c, budget, Work::Probe, self.probe)
                        .await
                        .with_context(|| format!("HTTP floor at concurrency {c}"))?;
                floor.push(Case {
                    side: "floor",
                    concurrency: c,
                    sample,
                    cpu,
                });
            }
            eprintln!(
                "  echo at concurrency {c}: {:.1} s",
                t.elapsed().as_secs_f64()
            );
        }
        let mut payload = Vec::new();
        for &kb in &opts.payload_kb {
            let t = Instant::now();
            let calls = usize::try_from(opts.payload_bytes / (kb * 1024))
                .unwrap_or(usize::MAX)
                .clamp(20, 1000)
                .max(opts.rounds);
            let warmup = (calls / 10).max(2);
            let cases = self.compare(1, calls, warmup, Work::Payload(kb)).await?;
            eprintln!("  payload {kb} KiB: {:.1} s", t.elapsed().as_secs_f64());
            payload.push((kb, cases));
        }
        Ok(Report {
            echo,
            floor,
            payload,
            probe: self.probe.clone(),
        })
    }
}

struct Stats {
    calls: usize,
    per_s: f64,
    p50: Duration,
    p99: Duration,
    end_p50: Duration,
    mb_s: f64,
}

fn stats(s: &Sample) -> Stats {
    let mut a = s.answered.clone();
    a.sort_unstable();
    let mut f = s.finished.clone();
    f.sort_unstable();
    let secs = s.wall.as_secs_f64().max(1e-9);
    Stats {
        calls: a.len(),
        per_s: a.len() as f64 / secs,
        p50: quantile(&a, 0.5),
        p99: quantile(&a, 0.99),
        end_p50: quantile(&f, 0.5),
        mb_s: s.bytes as f64 / secs / 1e6,
    }
}

fn label(side: &str) -> &'static str {
    match side {
        "direct" => "direct (attach stdio)",
        "floor" => "HTTP floor (/healthz)",
        _ => "bridge (HTTP + SSE)",
    }
}

impl Report {
    /// What the HTTP floor alone leaves of direct throughput at `conc`: one call of any HTTP
    /// front costs at least a direct call plus the floor's round trip, in time (concurrency 1)
    /// and in CPU (higher concurrency, where the cores are the limit).
    fn floor_bound(&self, conc: usize) -> Option<String> {
        let direct = self
            .echo
            .iter()
            .find(|c| c.side == "direct" && c.concurrency == conc)?;
        let floor = self.floor.iter().find(|c| c.concurrency == conc)?;
        let (d, f) = (stats(&direct.sample), stats(&floor.sample));
        if conc == 1 {
            let bound = ms(d.p50) / (ms(d.p50) + ms(f.p50));
            Some(format!(
                "HTTP floor p50 {:.3} ms: an HTTP front adding only that keeps at most {bound:.2}x of direct",
                ms(f.p50)
            ))
        } else {
            let per_call = |c: &Case| self.probe.per_call(&c.cpu, c.sample.answered.len()).1;
            let (dc, fc) = (per_call(direct), per_call(floor));
            let bound = dc / (dc + fc);
            Some(format!(
                "HTTP floor {fc:.0} µs CPU per call: an HTTP front adding only that keeps at most {bound:.2}x of direct"
            ))
        }
    }

    fn print(&self, opts: &Options, cores: usize) {
        println!();
        println!(
            "mcp-runner bridge benchmark: fixture `mcp-fixture` (stdio) under runsc, {MB} MB / {CPUS} CPU per container; {cores} host cores",
            MB = bench::MEMORY_MB,
            CPUS = bench::CPUS,
        );
        println!(
            "tools/call echo: {} calls per case (at most {:.0} s) after {} warm-up, {} alternating rounds; latency = send to response parsed",
            opts.calls,
            opts.max_time.as_secs_f64(),
            opts.warmup,
            opts.rounds
        );
        println!();
        println!(
            "{:<22} {:>4} {:>7} {:>10} {:>9} {:>9} {:>11}",
            "echo", "conc", "calls", "calls/s", "p50 ms", "p99 ms", "end p50 ms"
        );
        for c in self.echo.iter().chain(&self.floor) {
            let s = stats(&c.sample);
            println!(
                "{:<22} {:>4} {:>7} {:>10.0} {:>9.3} {:>9.3} {:>11.3}",
                label(c.side),
                c.concurrency,
                s.calls,
                s.per_s,
                ms(s.p50),
                ms(s.p99),
                ms(s.end_p50)
            );
        }
        println!("('end p50': until the SSE stream has ended and the connection is free again)");
        println!(
            "('HTTP floor': the same HTTP client's GET /healthz through the same server: what an HTTP hop costs before any bridging)"
        );
        println!();
        for &conc in &opts.concurrency {
            let find = |side: &str| {
                self.echo
                    .iter()
                    .find(|c| c.side == side && c.concurrency == conc)
                    .map(|c| stats(&c.sample))
            };
            if let (Some(d), Some(b)) = (find("direct"), find("bridge")) {
                println!(
                    "concurrency {conc}: bridge/direct throughput {:.2}x; p50 {:+.3} ms; p99 {:+.3} ms",
                    b.per_s / d.per_s,
                    ms(b.p50) - ms(d.p50),
                    ms(b.p99) - ms(d.p99),
                );
            }
            if let Some(line) = self.floor_bound(conc) {
                println!("  {line}");
            }
        }

        if !self.payload.is_empty() {
            println!();
            println!(
                "{:<9} {:>11} {:>12} {:>12} {:>7} {:>14} {:>14} {:>5}",
                "payload",
                "calls d/b",
                "direct MB/s",
                "bridge MB/s",
                "ratio",
                "direct p50 ms",
                "bridge p50 ms",
                "lost"
            );
            for (kb, cases) in &self.payload {
                let find = |side: &str| {
                    cases
                        .iter()
                        .find(|c| c.side == side)
                        .map(|c| stats(&c.sample))
                };
                let (d, b) = (find("direct"), find("bridge"));
                let size = if *kb >= 1024 && kb % 1024 == 0 {
                    format!("{} MiB", kb / 1024)
                } else {
                    format!("{kb} KiB")
                };
                let f = |s: &Option<Stats>, g: &dyn Fn(&Stats) -> f64| {
                    s.as_ref()
                        .map_or("-".to_owned(), |s| format!("{:.1}", g(s)))
                };
                let ratio = match (&d, &b) {
                    (Some(d), Some(b)) => format!("{:.2}x", b.mb_s / d.mb_s),
                    _ => "-".to_owned(),
                };
                let calls =
                    |s: &Option<Stats>| s.as_ref().map_or("-".to_owned(), |s| s.calls.to_string());
                println!(
                    "{:<9} {:>11} {:>12} {:>12} {:>7} {:>14} {:>14} {:>5}",
                    size,
                    format!("{}/{}", calls(&d), calls(&b)),
                    f(&d, &|s| s.mb_s),
                    f(&b, &|s| s.mb_s),
                    ratio,
                    f(&d, &|s| ms(s.p50)),
                    f(&b, &|s| ms(s.p50)),
                    0,
                );
            }
            println!(
                "(concurrency 1; MB = 10^6 bytes of tool text; every text is checked for its exact length and content, and a lost or wrong answer aborts the run)"
            );
        }

        println!();
        println!(
            "CPU per call, µs; 'other' = processes outside the call path (e.g. builds running alongside); load = busy cores on average"
        );
        print!("{:<30}", "case");
        for g in GROUPS {
            print!(" {g:>8}");
        }
        println!(" {:>8} {:>6}", "total", "load");
        let all = self
            .echo
            .iter()
            .chain(&self.floor)
            .map(|c| (format!("echo c={} {}", c.concurrency, c.side), c))
            .chain(self.payload.iter().flat_map(|(kb, cases)| {
                cases
                    .iter()
                    .map(move |c| (format!("payload {kb} KiB {}", c.side), c))
            }));
        for (name, c) in all {
            let calls = c.sample.answered.len();
            let (groups, total) = self.probe.per_call(&c.cpu, calls);
            let load = total * calls as f64 / 1e6 / c.sample.wall.as_secs_f64().max(1e-9);
            print!("{name:<30}");
            for g in groups {
                print!(" {g:>8.0}");
            }
            println!(" {total:>8.0} {load:>6.2}");
        }
    }
}
