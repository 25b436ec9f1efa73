//! End-to-end tests: the real server on 127.0.0.1, the real Docker daemon with runsc, a real
//! SQLite file, and the fixture MCP server image built from `tests/fixture`. What they stand on
//! (the fixture image, the server in process, the API and MCP clients, the Docker checks and
//! the sweep of leftovers) is the `mcp-test-support` crate.
//!
//! One test binary, so that the fixture image is built once per run.

mod api;
mod bridge;
mod hostile;
mod lifecycle;
mod lifecycle_background;
