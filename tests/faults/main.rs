//! Fault tests: the real `mcp-runner` binary, as a child process, against the real Docker
//! daemon with runsc and a real SQLite file. It is killed with work in flight, cut off from
//! Docker, has dockerd restarted under it, and is driven through many and concurrent
//! creates and deletes; nothing may be lost, leaked or left behind.
//!
//! The scenarios run one at a time ([`scenario::one_at_a_time`]); each prints a one-line
//! summary with its figures. The child process, the API and MCP clients and the checks of
//! what is left come from the `mcp-test-support` crate.
//!
//! `dockerd_restart_under_running_deployments` restarts the host's Docker daemon, which stops
//! every container on the host: it is ignored unless asked for, on a test machine, with
//! `cargo test --test faults -- --ignored`.

mod docker_outage;
mod dockerd;
mod load;
mod scenario;
mod sigkill;
