//! `Direct`: JSON-RPC lines over the container's attach stream (what mcp-runner's stdio hub
//! itself does).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use mcp_runner::runtime::{Attached, RuntimeError};
use serde_json::Value;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

use super::{CALL_TIMEOUT, Lines, Reply, Transport, initialize_body, initialized_body, short};

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A client on a container's stdin/stdout.
pub struct Direct {
    /// When the response to `initialize` was in hand.
    pub initialized: Instant,
    stdin: tokio::sync::Mutex<Pin<Box<dyn AsyncWrite + Send>>>,
    waiting: Waiters,
    reader: tokio::task::JoinHandle<()>,
}

impl Direct {
    /// A client on an attachment; runs `initialize` and `notifications/initialized`.
    pub async fn connect(attached: Attached) -> anyhow::Result<Arc<Direct>> {
        let Attached { stdout, stdin, .. } = attached;
        let waiting: Waiters = Arc::default();
        let reader = tokio::spawn(read_stdout(stdout, waiting.clone()));
        let mut client = Direct {
            initialized: Instant::now(),
            stdin: tokio::sync::Mutex::new(stdin),
            waiting,
            reader,
        };
        let init = client.call(0, initialize_body(0)).await?;
        if init.message.get("result").is_none() {
            bail!("initialize failed: {}", short(&init.message));
        }
        client.initialized = init.answered;
        client.send(initialized_body()).await?;
        Ok(Arc::new(client))
    }

    async fn send(&self, mut line: Vec<u8>) -> anyhow::Result<()> {
        line.push(b'\n');
        let mut stdin = self.stdin.lock().await;
        stdin.write_all(&line).await.context("write to stdin")?;
        stdin.flush().await.context("flush stdin")?;
        Ok(())
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn read_stdout(
    mut stdout: BoxStream<'static, Result<bytes::Bytes, RuntimeError>>,
    waiting: Waiters,
) {
    let mut lines = Lines::default();
    while let Some(Ok(chunk)) = stdout.next().await {
        let pushed = lines.push(&chunk, |line| {
            let v: Value = serde_json::from_slice(line).context("stdout line is not JSON")?;
            if let Some(id) = v.get("id").and_then(Value::as_u64)
                && v.get("method").is_none()
                && let Some(tx) = waiting.lock().expect("lock").remove(&id)
            {
                let _ = tx.send(v);
            }
            Ok(())
        });
        if let Err(e) = pushed {
            eprintln!("direct client: {e:#}");
            break;
        }
    }
    // The stream ended: every waiter fails.
    waiting.lock().expect("lock").clear();
}

impl Transport for Direct {
    async fn call(&self, id: u64, body: Vec<u8>) -> anyhow::Result<Reply> {
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().expect("lock").insert(id, tx);
        self.send(body).await?;
        let message = tokio::time::timeout(CALL_TIMEOUT, rx)
            .await
            .map_err(|_| anyhow!("no answer to request {id} within {CALL_TIMEOUT:?}"))?
            .map_err(|_| anyhow!("the container's stdout ended"))?;
        let now = Instant::now();
        Ok(Reply {
            message,
            answered: now,
            finished: now,
        })
    }
}
