//! The MCP bridge: serves each deployment's MCP server at `/mcp-server/{id}/mcp` (Streamable
//! HTTP) and `/mcp-server/{id}/sse` (legacy SSE), whatever transport the server speaks.

pub mod jsonrpc;
pub mod lines;
pub mod session;
pub mod sse;
pub mod stdio;
pub mod upstream_http;
pub mod version;
