//! The process's stdin: a line goes out at once from the handler that received it when the
//! pipe takes it; what the pipe cannot take now waits for a writer task, so that a server that
//! stops reading cannot stop the hub from reading its stdout.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// The process's stdin, written under the hub's lock.
pub(super) struct Stdin {
    pub(super) writer: tokio::sync::Mutex<std::pin::Pin<Box<dyn AsyncWrite + Send>>>,
    /// Lines (or their rest) the pipe did not take at once, oldest first.
    pub(super) queue: std::sync::Mutex<VecDeque<Bytes>>,
    /// The bytes in `queue` (changed under its lock, read without it).
    pub(super) backlog: AtomicUsize,
    pub(super) wake: tokio::sync::Notify,
}

impl Stdin {
    pub(super) fn new(writer: std::pin::Pin<Box<dyn AsyncWrite + Send>>) -> Arc<Stdin> {
        Arc::new(Stdin {
            writer: tokio::sync::Mutex::new(writer),
            queue: std::sync::Mutex::default(),
            backlog: AtomicUsize::new(0),
            wake: tokio::sync::Notify::new(),
        })
    }

    /// Writes `line` now if nothing waits before it, the pipe takes it and `busy` is false;
    /// otherwise queues it for the writer task. `busy` (other requests in flight) defers the
    /// line so that the lines of requests arriving together go out in one write: each write
    /// costs dockerd a copy and the sandboxed server a read, which under gVisor are the
    /// dearest steps of the path. An idle hub writes at once and adds no latency.
    pub(super) fn send(&self, mut line: Bytes, busy: bool) {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if !busy
            && queue.is_empty()
            && let Ok(mut writer) = self.writer.try_lock()
        {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            while !line.is_empty() {
                match writer.as_mut().poll_write(&mut cx, &line) {
                    Poll::Ready(Ok(n)) if n > 0 => line.advance(n),
                    // The pipe is closed: the writer task finds out too, and ends the hub.
                    Poll::Ready(_) => break,
                    Poll::Pending => break,
                }
            }
            if line.is_empty() {
                // A socket needs no flush; anything buffered is flushed by the next write.
                let _ = writer.as_mut().poll_flush(&mut cx);
                return;
            }
        }
        self.backlog.fetch_add(line.len(), Ordering::Relaxed);
        queue.push_back(line);
        self.wake.notify_one();
    }

    /// Writes what `send` queued, in order, waiting for the pipe. Before each batch it lets
    /// the other ready tasks run once, so that the lines they send join the batch.
    pub(super) async fn drain(self: Arc<Self>) {
        loop {
            self.wake.notified().await;
            loop {
                tokio::task::yield_now().await;
                // The lines stay queued until written, so that `send` cannot overtake them.
                let batch: Vec<Bytes> = self
                    .queue
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .cloned()
                    .collect();
                let Some(first) = batch.first() else { break };
                let bytes = if batch.len() == 1 {
                    first.clone()
                } else {
                    Bytes::from(batch.concat())
                };
                let mut writer = self.writer.lock().await;
                if writer.write_all(&bytes).await.is_err() || writer.flush().await.is_err() {
                    return;
                }
                drop(writer);
                self.queue
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .drain(..batch.len());
                self.backlog.fetch_sub(bytes.len(), Ordering::Relaxed);
            }
        }
    }
}
