//! Fault tests: the real `mcp-runner` binary, as a child process, against the real Docker
//! daemon with runsc and a real SQLite file. It is killed with work in flight, cut off from
//! Docker, has dockerd restarted under it, and is driven through many and concurrent
//! creates and deletes; nothing may be lost, leaked or left behind.
//!
//! The scenarios run one at a time ([`runner::one_at_a_time`]); each prints a one-line
//! summary with its figures. `dockerd_restart_*` restarts the host's Docker daemon, which stops
//! every container on the host: run it alone with
//! `cargo test --test faults -- dockerd_restart`.

#[allow(dead_code)]
#[path = "e2e/support/mod.rs"]
mod support;

#[path = "faults/runner.rs"]
mod runner;

#[path = "faults/dockerd.rs"]
mod dockerd;

#[path = "faults/sigkill.rs"]
mod sigkill;

#[path = "faults/docker_outage.rs"]
mod docker_outage;

#[path = "faults/load.rs"]
mod load;
