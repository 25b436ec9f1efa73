//! The protocol leaves of the bridge, with no state of their own: the JSON-RPC envelope, the
//! newline framing of stdio servers, Server-Sent Events (written and parsed), and the MCP
//! revisions the bridge knows.

pub mod jsonrpc;
pub mod lines;
pub mod sse;
pub mod version;
