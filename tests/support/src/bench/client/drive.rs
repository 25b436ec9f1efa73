//! The load driver: runs calls of a kind of work on a transport with calls in flight, checks
//! every answer and records the latencies.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::{Transport, short, tool_call_body, tool_text};

/// What a benchmark call does and how its answer is checked.
#[derive(Debug, Clone, Copy)]
pub enum Work {
    /// `echo` of a short text naming the call.
    Echo,
    /// `payload` of this many KiB.
    Payload(u64),
    /// A liveness probe (`Floor`): no MCP message at all.
    Probe,
}

impl Work {
    fn body(self, id: u64) -> Vec<u8> {
        match self {
            Work::Echo => tool_call_body(id, "echo", json!({"text": echo_text(id)})),
            Work::Payload(kb) => tool_call_body(id, "payload", json!({"kb": kb})),
            Work::Probe => Vec::new(),
        }
    }

    /// Checks the answer; returns the payload bytes it carried.
    fn check(self, message: &Value, id: u64) -> anyhow::Result<u64> {
        match self {
            Work::Echo => {
                let text = tool_text(message, id)?;
                if text != echo_text(id) {
                    bail!("echo of call {id} came back as {text:?}");
                }
                Ok(text.len() as u64)
            }
            Work::Payload(kb) => {
                let text = tool_text(message, id)?;
                let want = kb * 1024;
                if text.len() as u64 != want || !all_x(text.as_bytes()) {
                    bail!(
                        "payload of call {id}: {} bytes (or not all 'x'), expected {want}",
                        text.len()
                    );
                }
                Ok(want)
            }
            Work::Probe => {
                if message.get("status").and_then(Value::as_str) != Some("ok") {
                    bail!("the probe answered {}", short(message));
                }
                Ok(0)
            }
        }
    }
}

/// Whether every byte is `x` (compared a page at a time: cheap next to the transfer).
fn all_x(bytes: &[u8]) -> bool {
    static XS: [u8; 4096] = [b'x'; 4096];
    bytes.chunks(XS.len()).all(|c| c == &XS[..c.len()])
}

fn echo_text(id: u64) -> String {
    format!("mcp-runner bench call {id}")
}

/// Latencies and totals of a batch of calls.
#[derive(Debug, Default, Clone)]
pub struct Sample {
    /// Send → response parsed, per call.
    pub answered: Vec<Duration>,
    /// Send → exchange over, per call.
    pub finished: Vec<Duration>,
    /// Wall time of the batch.
    pub wall: Duration,
    /// Payload bytes received and verified.
    pub bytes: u64,
}

impl Sample {
    /// Adds another batch.
    pub fn merge(&mut self, other: Sample) {
        self.answered.extend(other.answered);
        self.finished.extend(other.finished);
        self.wall += other.wall;
        self.bytes += other.bytes;
    }
}

/// Runs `calls` calls of `work` with `concurrency` calls in flight at any time, or as many as
/// start within `max_time`; request ids come from `ids` (unique over the transport's life).
/// Any failed or wrong answer fails it.
pub async fn drive<T: Transport>(
    transport: &Arc<T>,
    ids: &Arc<AtomicU64>,
    concurrency: usize,
    calls: usize,
    max_time: Duration,
    work: Work,
) -> anyhow::Result<Sample> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + max_time;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (transport, ids, next) = (transport.clone(), ids.clone(), next.clone());
        workers.spawn(async move {
            let mut sample = Sample::default();
            while Instant::now() < deadline && next.fetch_add(1, Ordering::Relaxed) < calls {
                let id = ids.fetch_add(1, Ordering::Relaxed);
                let body = work.body(id);
                let sent = Instant::now();
                let reply = transport
                    .call(id, body)
                    .await
                    .with_context(|| format!("call {id}"))?;
                sample.bytes += work.check(&reply.message, id)?;
                sample
                    .answered
                    .push(reply.answered.saturating_duration_since(sent));
                sample
                    .finished
                    .push(reply.finished.saturating_duration_since(sent));
            }
            anyhow::Ok(sample)
        });
    }
    let mut total = Sample::default();
    while let Some(done) = workers.join_next().await {
        total.merge(done.context("worker panicked")??);
    }
    total.wall = start.elapsed();
    if total.answered.is_empty() && calls > 0 {
        bail!("no call was answered");
    }
    Ok(total)
}
