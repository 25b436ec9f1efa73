//! What the benchmarks (`bench/`) share besides the server and the API: the `main` every one
//! of them runs ([`main`]), environment knobs, quantiles, the fixture deployment they create,
//! the direct container they compare the bridge with ([`direct`]) and the measured MCP
//! clients ([`client`]).

pub mod client;
pub mod direct;

use std::future::Future;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};

use crate::docker::{self, sweep};
use crate::fixture::{self, BENCH_IMAGE};

/// Memory limit of the benchmarks' containers (the same for the direct and the bridged one).
pub const MEMORY_MB: u64 = 256;
/// CPU limit of the benchmarks' containers, in cores.
pub const CPUS: f64 = 1.0;

/// Runs benchmark `name` and returns its exit code: fails with a clear message unless this
/// runs as root with Docker and runsc; calls `prepare` with the host's cores (it reads the
/// knobs and sets up logging, and returns the work); starts a runtime with a worker thread
/// per core (named `thread_name` when given); sweeps what interrupted runs left and builds
/// the fixture image ([`BENCH_IMAGE`]); runs the work (which prints its report) and prints
/// the total time. Any error is printed on stderr and fails the run.
pub fn main<F, Fut>(name: &str, thread_name: Option<&str>, prepare: F) -> ExitCode
where
    F: FnOnce(usize) -> anyhow::Result<Fut>,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let work = match preflight(name).and_then(|()| prepare(cores)) {
        Ok(work) => work,
        Err(e) => {
            eprintln!("{name} benchmark: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.worker_threads(cores).enable_all();
    if let Some(thread_name) = thread_name {
        runtime.thread_name(thread_name);
    }
    let runtime = match runtime.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name} benchmark: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The work runs on this (the main) thread: a child server's parent-death signal follows
    // the thread that forked it.
    let outcome = runtime.block_on(async {
        let started = Instant::now();
        tokio::task::spawn_blocking(sweep::sweep_abandoned).await?;
        fixture::image(BENCH_IMAGE).await?;
        work.await?;
        println!(
            "\n(total time including the image build and clean-up: {:.0} s)",
            started.elapsed().as_secs_f64()
        );
        anyhow::Ok(())
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name} benchmark failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Fails with a clear message unless this runs as root with Docker and gVisor; `bench` names
/// the benchmark in it.
pub fn preflight(bench: &str) -> anyhow::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    if euid != "0" {
        bail!(
            "the {bench} benchmark must run as root (mcp-runner creates host users and drives \
             the Docker socket); run it as root, e.g. `sudo -E cargo bench --bench {bench}`"
        );
    }
    docker::check()
}

/// A stdio deployment of the benchmarks' fixture image with the direct container's limits.
/// `auto_start` `None` leaves `autoStart` out (the default: started by the create).
pub fn fixture_deployment(auto_start: Option<bool>) -> Value {
    let mut body = json!({
        "image": BENCH_IMAGE,
        "transport": {"type": "stdio"},
        "maxMemory": MEMORY_MB,
        "maxCpus": CPUS,
        "pauseAfterSeconds": 3600,
        "deleteAfterSeconds": 7200,
    });
    if let Some(start) = auto_start {
        body["autoStart"] = Value::Bool(start);
    }
    body
}

/// The environment variable `name` parsed, or `default` when it is unset or blank.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| anyhow!("{name}={v:?} is not a valid number")),
        _ => Ok(default),
    }
}

/// A comma-separated list of numbers from the environment (zeros dropped), or `default`.
pub fn env_list(name: &str, default: &str) -> anyhow::Result<Vec<u64>> {
    let v = std::env::var(name).unwrap_or_else(|_| default.to_owned());
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != "0")
        .map(|s| {
            s.parse()
                .map_err(|_| anyhow!("{name}={v:?}: {s:?} is not a number"))
        })
        .collect()
}

/// Milliseconds of a duration.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `q` quantile (0..=1) of sorted values (nearest rank); the default of `T` when empty.
pub fn quantile<T: Copy + Default>(sorted: &[T], q: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
