//! mcp-runner: runs MCP servers from Docker images in gVisor sandboxes and serves them to
//! remote clients.
//!
//! Follow a management request: `api` (routes, auth, validation) → `deployments`
//! (orchestration) → `store` (SQLite) and `runtime` (the sandbox backend: Docker) → back.
//! Follow an MCP message: `bridge::front` → `bridge` (sessions) → `bridge::upstream` → the
//! server in its sandbox. `reaper` acts on idle deadlines; `app` wires everything and owns
//! start-up and shutdown; `state` is what the handlers share.

pub mod api;
pub mod app;
pub mod bridge;
pub mod config;
pub mod deployments;
pub mod domain;
pub mod error;
pub mod keyed;
pub mod lockout;
pub mod metrics;
pub mod reaper;
pub mod runtime;
pub mod state;
pub mod store;
pub mod telemetry;
