//! What the benchmarks share: the host check, the fixture image, the direct container, the
//! in-process mcp-runner, the management API client, the MCP clients, `/proc` readings,
//! environment knobs and quantiles. Each benchmark includes this module with
//! `#[path = "../support/mod.rs"]` and uses the part it needs.

pub mod api;
pub mod client;
/// Container, network and host-user listings by instance, shared with the end-to-end tests.
#[path = "../../tests/e2e/support/docker.rs"]
pub mod docker;
pub mod procfs;
pub mod setup;

use std::time::Duration;

use anyhow::anyhow;

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
