//! The stderr of running deployments: one follower task per running container keeps the last
//! 64 KiB in memory and saves it to the row at most once per second (the peer appended every
//! chunk to the row, without bound).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::domain::{STDERR_LIMIT, Status};
use crate::metrics::{ExitLabels, METRICS};
use crate::runtime::{Runtime, RuntimeError};
use crate::store::Store;

/// How often a changed tail is written to the database.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The last `limit` bytes of a byte stream.
#[derive(Debug)]
pub struct Tail {
    buf: VecDeque<u8>,
    limit: usize,
}

impl Tail {
    /// A tail holding at most `limit` bytes, starting with `initial`.
    pub fn new(initial: &str, limit: usize) -> Tail {
        let mut tail = Tail {
            buf: VecDeque::with_capacity(initial.len().min(limit)),
            limit,
        };
        tail.push(initial.as_bytes());
        tail
    }

    /// Appends bytes, dropping the oldest beyond the limit.
    pub fn push(&mut self, bytes: &[u8]) {
        let bytes = if bytes.len() > self.limit {
            &bytes[bytes.len() - self.limit..]
        } else {
            bytes
        };
        let overflow = (self.buf.len() + bytes.len()).saturating_sub(self.limit);
        self.buf.drain(..overflow);
        self.buf.extend(bytes);
    }

    /// The tail as text. A multi-byte character cut at the front is dropped; invalid UTF-8
    /// is replaced.
    pub fn text(&self) -> String {
        let (a, b) = self.buf.as_slices();
        let mut bytes = Vec::with_capacity(self.buf.len());
        bytes.extend_from_slice(a);
        bytes.extend_from_slice(b);
        // Skip UTF-8 continuation bytes left at the front by trimming.
        let start = bytes
            .iter()
            .take(3)
            .take_while(|b| (**b & 0xC0) == 0x80)
            .count();
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }
}

type Shared = Arc<Mutex<Tail>>;

struct Follower {
    tail: Shared,
    cancel: CancellationToken,
}

/// The follower tasks, by deployment id.
#[derive(Clone)]
pub struct StderrHub {
    followers: Arc<Mutex<HashMap<String, Follower>>>,
    store: Store,
    runtime: Runtime,
    tracker: TaskTracker,
    root: CancellationToken,
}

impl StderrHub {
    /// A hub whose tasks run on `tracker` and stop with `root`.
    pub fn new(
        store: Store,
        runtime: Runtime,
        tracker: TaskTracker,
        root: CancellationToken,
    ) -> Self {
        StderrHub {
            followers: Arc::default(),
            store,
            runtime,
            tracker,
            root,
        }
    }

    /// Starts following the stderr of `container_id` through Docker's logs API from `since`
    /// (Unix seconds), on top of `initial` (what the row already holds). Replaces an existing
    /// follower.
    pub fn follow(&self, deployment_id: &str, container_id: &str, initial: &str, since: i64) {
        let logs = self.runtime.follow_stderr(container_id, since).boxed();
        self.follow_stream(deployment_id, container_id, initial, logs);
    }

    /// Keeps the tail of `stream`, the stderr of `container_id` (from its attach connection),
    /// on top of `initial`. The stream's end means the container stopped. Replaces an existing
    /// follower.
    pub fn follow_stream(
        &self,
        deployment_id: &str,
        container_id: &str,
        initial: &str,
        stream: BoxStream<'static, Result<Bytes, RuntimeError>>,
    ) {
        let tail: Shared = Arc::new(Mutex::new(Tail::new(initial, STDERR_LIMIT)));
        let cancel = self.root.child_token();
        let old = lock(&self.followers).insert(
            deployment_id.to_owned(),
            Follower {
                tail: tail.clone(),
                cancel: cancel.clone(),
            },
        );
        if let Some(old) = old {
            old.cancel.cancel();
        }
        let task = FollowTask {
            hub: self.clone(),
            deployment_id: deployment_id.to_owned(),
            container_id: container_id.to_owned(),
            tail,
            cancel,
        };
        let span = tracing::info_span!(
            "stderr",
            deployment.id = %deployment_id,
            container.id = %short(container_id)
        );
        self.tracker.spawn(task.run(stream).instrument(span));
    }

    /// The live tail of a followed deployment.
    pub fn snapshot(&self, deployment_id: &str) -> Option<String> {
        let followers = lock(&self.followers);
        followers.get(deployment_id).map(|f| lock(&f.tail).text())
    }

    /// Whether a follower runs for the deployment (its container runs).
    pub fn is_following(&self, deployment_id: &str) -> bool {
        lock(&self.followers).contains_key(deployment_id)
    }

    /// Stops following a deployment (its task saves the tail one last time).
    pub fn stop(&self, deployment_id: &str) {
        if let Some(f) = lock(&self.followers).remove(deployment_id) {
            f.cancel.cancel();
        }
    }

    /// Removes the entry of a finished task, unless a newer follower replaced it.
    fn finished(&self, deployment_id: &str, tail: &Shared) {
        let mut followers = lock(&self.followers);
        if followers
            .get(deployment_id)
            .is_some_and(|f| Arc::ptr_eq(&f.tail, tail))
        {
            followers.remove(deployment_id);
        }
    }
}

/// A poisoned lock only means another thread panicked mid-update of a byte buffer; the data
/// is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct FollowTask {
    hub: StderrHub,
    deployment_id: String,
    container_id: String,
    tail: Shared,
    cancel: CancellationToken,
}

impl FollowTask {
    async fn run(self, mut stream: BoxStream<'static, Result<Bytes, RuntimeError>>) {
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut dirty = false;
        let ended = loop {
            tokio::select! {
                () = self.cancel.cancelled() => break false,
                item = stream.next() => match item {
                    Some(Ok(bytes)) => {
                        lock(&self.tail).push(&bytes);
                        dirty = true;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(deployment.id = %self.deployment_id, error = %e, "stderr stream failed");
                        break true;
                    }
                    None => break true,
                },
                _ = flush.tick() => {
                    if dirty {
                        self.save().await;
                        dirty = false;
                    }
                }
            }
        };
        if dirty {
            self.save().await;
        }
        if ended {
            self.container_ended().await;
        }
        self.hub.finished(&self.deployment_id, &self.tail);
    }

    async fn save(&self) {
        let text = lock(&self.tail).text();
        if let Err(e) = self.hub.store.set_stderr(&self.deployment_id, &text).await {
            tracing::warn!(deployment.id = %self.deployment_id, error = %e, "cannot save stderr");
        }
    }

    /// The log stream ends when the container stops: record it as stopped.
    async fn container_ended(&self) {
        match self.hub.runtime.container_state(&self.container_id).await {
            Ok(Some(state)) if !state.running => {
                let reason = if state.oom_killed {
                    "oom_killed"
                } else {
                    "exited"
                };
                METRICS
                    .upstream_exits
                    .get_or_create(&ExitLabels { reason })
                    .inc();
                tracing::info!(
                    deployment.id = %self.deployment_id,
                    exit_code = state.exit_code,
                    oom_killed = state.oom_killed,
                    "container stopped"
                );
                if let Err(e) = self
                    .hub
                    .store
                    .set_status(&self.deployment_id, Status::Stopped)
                    .await
                {
                    tracing::warn!(deployment.id = %self.deployment_id, error = %e, "cannot record stop");
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(deployment.id = %self.deployment_id, error = %e, "cannot inspect the container after its log ended");
            }
        }
    }
}

/// The first 12 characters of a container id, as Docker shows them.
pub fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_last_bytes() {
        let mut t = Tail::new("", 8);
        t.push(b"hello ");
        t.push(b"world");
        assert_eq!(t.text(), "lo world");
        t.push(b"0123456789abc");
        assert_eq!(t.text(), "56789abc");
    }

    #[test]
    fn starts_from_the_saved_text_and_trims_it() {
        let t = Tail::new("0123456789", 4);
        assert_eq!(t.text(), "6789");
    }

    #[test]
    fn never_starts_inside_a_character() {
        let mut t = Tail::new("", 4);
        t.push("aé€".as_bytes()); // 1 + 2 + 3 bytes: the cut falls inside 'é'
        assert_eq!(t.text(), "€");
    }
}
