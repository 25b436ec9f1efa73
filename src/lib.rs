//! mcp-runner: runs MCP servers from Docker images in gVisor sandboxes and serves them to
//! remote clients.
//!
//! Follow a request: `api` (routes, auth, validation) → `deployments` (orchestration) →
//! `store` (SQLite) and `runtime` (Docker, host users) → back. `reaper` acts on idle
//! deadlines; `app` wires everything and owns start-up and shutdown.

pub mod api;
pub mod app;
pub mod bridge;
pub mod config;
pub mod deployments;
pub mod domain;
pub mod error;
pub mod firewall;
pub mod metrics;
pub mod reaper;
pub mod runtime;
pub mod store;
pub mod subnet;
pub mod telemetry;
