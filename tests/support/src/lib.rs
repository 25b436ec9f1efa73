//! What mcp-runner's end-to-end tests (`tests/e2e`), fault tests (`tests/faults`) and
//! benchmarks (`bench/`) stand on, once each:
//!
//! - [`fixture`]: the fixture MCP server image, built from `tests/fixture`;
//! - [`docker`]: the check that Docker with runsc is there, `docker` CLI helpers, the
//!   instance ids of runs and the sweep of what interrupted runs left;
//! - [`leftovers`]: what an instance has left (and its spares), and the check that nothing is;
//! - [`api`]: the client of the management API;
//! - [`server`]: mcp-runner in this process (on Docker or an in-memory backend) or as a child
//!   process of the real binary;
//! - [`mcp`]: MCP clients (rmcp over Streamable HTTP, and a legacy HTTP+SSE one);
//! - [`poll`]: waiting for a condition;
//! - [`procfs`]: readings from `/proc`;
//! - [`bench`]: the benchmarks' `main`, knobs, direct container and measured clients.

pub mod api;
pub mod bench;
pub mod docker;
pub mod fixture;
pub mod leftovers;
pub mod mcp;
pub mod poll;
pub mod procfs;
pub mod server;

pub use api::{Api, json_of};
pub use leftovers::{assert_nothing_left, row_count};
pub use poll::eventually;
pub use server::{Options, TestApp};

/// The API key of every server the tests and benchmarks start.
pub const API_KEY: &str = "test-key-0123456789abcdef";
