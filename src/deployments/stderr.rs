//! The stderr of running deployments: one follower task per running container keeps the last
//! 64 KiB in memory and saves it to the row at most once per second (the peer appended every
//! chunk to the row, without bound). The session containers of an isolated deployment feed
//! one tail of the deployment, each line marked with its session.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::domain::{STDERR_LIMIT, Status};
use crate::metrics::{ExitLabels, METRICS};
use crate::runtime::{RuntimeError, SandboxBackend};
use crate::store::Store;

/// How often a changed tail is written to the database.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// A save this soon after the last one of the same tail waits for the next tick (a little
/// under `FLUSH_EVERY`, so that ticks a second apart are not skipped for jitter).
const SAVE_GAP: Duration = Duration::from_millis(900);

/// A session container's line longer than this is cut into marked pieces, so that one
/// session's endless line cannot hold back the others' in a shared tail.
const MAX_SESSION_LINE: usize = 4096;

/// Characters of a session id in the mark of its stderr lines.
const SESSION_MARK_LEN: usize = 8;

/// The last `limit` bytes of a byte stream.
#[derive(Debug)]
pub struct Tail {
    buf: VecDeque<u8>,
    limit: usize,
    /// Counts the pushes: tells a saver whether the text changed since it last looked.
    version: u64,
}

impl Tail {
    /// A tail holding at most `limit` bytes, starting with `initial`.
    pub fn new(initial: &str, limit: usize) -> Tail {
        let mut tail = Tail {
            buf: VecDeque::with_capacity(initial.len().min(limit)),
            limit,
            version: 0,
        };
        tail.push(initial.as_bytes());
        tail
    }

    /// Appends bytes, dropping the oldest beyond the limit.
    pub fn push(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.version += 1;
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

/// What was last written to the row from one tail. Its lock serialises the saves of the
/// tasks that share the tail, so that the row never goes back to an older text.
struct Saved {
    version: u64,
    at: Option<Instant>,
}

type SharedSaved = Arc<tokio::sync::Mutex<Saved>>;

/// A tail with the record of its saves.
fn new_tail(initial: &str) -> (Shared, SharedSaved) {
    let tail = Tail::new(initial, STDERR_LIMIT);
    let saved = Saved {
        version: tail.version,
        at: None,
    };
    (
        Arc::new(Mutex::new(tail)),
        Arc::new(tokio::sync::Mutex::new(saved)),
    )
}

struct Follower {
    tail: Shared,
    cancel: CancellationToken,
}

/// The tail that the session containers of one isolated deployment share. It stays until
/// the deployment is paused or deleted, so that a session starting just after another
/// ended builds on its lines rather than on an older copy of the row.
struct SessionTail {
    tail: Shared,
    saved: SharedSaved,
}

/// The follower tasks, by deployment id.
#[derive(Clone)]
pub struct StderrHub {
    followers: Arc<Mutex<HashMap<String, Follower>>>,
    /// Isolated deployments whose session containers ran since the last pause, by id.
    sessions: Arc<Mutex<HashMap<String, SessionTail>>>,
    store: Store,
    backend: Arc<dyn SandboxBackend>,
    tracker: TaskTracker,
    root: CancellationToken,
}

impl StderrHub {
    /// A hub whose tasks run on `tracker` and stop with `root`.
    pub fn new(
        store: Store,
        backend: Arc<dyn SandboxBackend>,
        tracker: TaskTracker,
        root: CancellationToken,
    ) -> Self {
        StderrHub {
            followers: Arc::default(),
            sessions: Arc::default(),
            store,
            backend,
            tracker,
            root,
        }
    }

    /// Starts following the stderr of `container_id` through the backend's log from `since`
    /// (Unix seconds), on top of `initial` (what the row already holds). Replaces an existing
    /// follower.
    pub fn follow(&self, deployment_id: &str, container_id: &str, initial: &str, since: i64) {
        let logs = self.backend.stderr(container_id, since);
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
        let (tail, saved) = new_tail(initial);
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
            source: Source::Container(container_id.to_owned()),
            tail,
            saved,
            cancel,
        };
        let span = tracing::info_span!(
            "stderr",
            deployment.id = %deployment_id,
            container.id = %short(container_id)
        );
        self.tracker.spawn(task.run(stream).instrument(span));
    }

    /// Adds `stream`, the stderr of the container of session `session_id` of an isolated
    /// deployment, to the deployment's tail (which starts from `initial` when no other
    /// session fed it since the last pause). Each line is marked `[session <first 8
    /// characters of its id>] `. The tail is saved when the stream ends (the session or its
    /// container ended).
    pub fn follow_session(
        &self,
        deployment_id: &str,
        session_id: &str,
        initial: &str,
        stream: BoxStream<'static, Result<Bytes, RuntimeError>>,
    ) {
        let (tail, saved) = {
            let mut sessions = lock(&self.sessions);
            let entry = sessions.entry(deployment_id.to_owned()).or_insert_with(|| {
                let (tail, saved) = new_tail(initial);
                SessionTail { tail, saved }
            });
            (entry.tail.clone(), entry.saved.clone())
        };
        let mark = session_id.get(..SESSION_MARK_LEN).unwrap_or(session_id);
        let task = FollowTask {
            hub: self.clone(),
            deployment_id: deployment_id.to_owned(),
            source: Source::Session(LineMarker::new(format!("[session {mark}] "))),
            tail,
            saved,
            cancel: self.root.child_token(),
        };
        let span =
            tracing::info_span!("stderr", deployment.id = %deployment_id, session.id = %mark);
        self.tracker.spawn(task.run(stream).instrument(span));
    }

    /// The live tail of a followed deployment (or of an isolated one's sessions).
    pub fn snapshot(&self, deployment_id: &str) -> Option<String> {
        if let Some(f) = lock(&self.followers).get(deployment_id) {
            return Some(lock(&f.tail).text());
        }
        let sessions = lock(&self.sessions);
        sessions.get(deployment_id).map(|s| lock(&s.tail).text())
    }

    /// Whether a follower runs for the deployment (its container runs).
    pub fn is_following(&self, deployment_id: &str) -> bool {
        lock(&self.followers).contains_key(deployment_id)
    }

    /// Stops following a deployment (its task saves the tail one last time) and forgets the
    /// tail of its sessions (their tasks end with their containers, and save as they go).
    pub fn stop(&self, deployment_id: &str) {
        if let Some(f) = lock(&self.followers).remove(deployment_id) {
            f.cancel.cancel();
        }
        lock(&self.sessions).remove(deployment_id);
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

/// Cuts a stream into lines and marks each, so that the lines of several streams can share
/// one tail without mixing inside a line.
struct LineMarker {
    mark: String,
    /// The start of a line whose end has not come yet.
    partial: Vec<u8>,
}

impl LineMarker {
    fn new(mark: String) -> LineMarker {
        LineMarker {
            mark,
            partial: Vec::new(),
        }
    }

    /// Pushes the complete lines of `bytes` (and pieces of an over-long one) into `tail`;
    /// keeps the rest for the next call.
    fn push(&mut self, tail: &mut Tail, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = MAX_SESSION_LINE - self.partial.len();
            // A newline right after a full piece still ends that piece.
            let (take, complete) = match bytes.iter().take(room + 1).position(|b| *b == b'\n') {
                Some(i) => (i + 1, true),
                None if bytes.len() > room => (char_boundary(bytes, room), true),
                None => (bytes.len(), false),
            };
            self.partial.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if complete {
                self.flush(tail);
            }
        }
    }

    /// Pushes what is kept, as a line of its own.
    fn flush(&mut self, tail: &mut Tail) -> bool {
        if self.partial.is_empty() {
            return false;
        }
        if self.partial.last() != Some(&b'\n') {
            self.partial.push(b'\n');
        }
        let mut line = Vec::with_capacity(self.mark.len() + self.partial.len());
        line.extend_from_slice(self.mark.as_bytes());
        line.append(&mut self.partial);
        tail.push(&line);
        true
    }
}

/// A poisoned lock only means another thread panicked mid-update of a byte buffer; the data
/// is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `at`, or the start of the UTF-8 character `at` falls in (when that leaves something
/// before it), so that a cut does not split a character.
fn char_boundary(bytes: &[u8], at: usize) -> usize {
    let back = bytes[..=at]
        .iter()
        .rev()
        .take(4)
        .take_while(|b| (**b & 0xC0) == 0x80)
        .count();
    // `back` is 0 unless `at` is inside a character, whose first byte is `back` before it.
    if back < at { at - back } else { at }
}

/// Whose stderr a task follows.
enum Source {
    /// The deployment's own container: its stream's end means it stopped.
    Container(String),
    /// A session container of an isolated deployment, sharing the deployment's tail.
    Session(LineMarker),
}

struct FollowTask {
    hub: StderrHub,
    deployment_id: String,
    source: Source,
    tail: Shared,
    saved: SharedSaved,
    cancel: CancellationToken,
}

impl FollowTask {
    async fn run(mut self, mut stream: BoxStream<'static, Result<Bytes, RuntimeError>>) {
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ended = loop {
            tokio::select! {
                () = self.cancel.cancelled() => break false,
                item = stream.next() => match item {
                    Some(Ok(bytes)) => {
                        let mut tail = lock(&self.tail);
                        match &mut self.source {
                            Source::Container(_) => tail.push(&bytes),
                            Source::Session(marker) => marker.push(&mut tail, &bytes),
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(deployment.id = %self.deployment_id, error = %e, "stderr stream failed");
                        break true;
                    }
                    None => break true,
                },
                _ = flush.tick() => {
                    // A line still unfinished after a tick is shown as far as it came.
                    self.flush_partial();
                    self.save(false).await;
                }
            }
        };
        self.flush_partial();
        self.save(true).await;
        if let Source::Container(container_id) = &self.source {
            if ended {
                self.container_ended(container_id).await;
            }
            self.hub.finished(&self.deployment_id, &self.tail);
        }
    }

    fn flush_partial(&mut self) {
        if let Source::Session(marker) = &mut self.source {
            marker.flush(&mut lock(&self.tail));
        }
    }

    /// Writes the tail to the row when it changed since the last save of any task sharing
    /// it, and (unless `last`) that save is not too recent: at most about once per second
    /// per deployment, whatever the number of session containers.
    async fn save(&self, last: bool) {
        let mut saved = self.saved.lock().await;
        if !last && saved.at.is_some_and(|at| at.elapsed() < SAVE_GAP) {
            return;
        }
        let (version, text) = {
            let tail = lock(&self.tail);
            (tail.version, tail.text())
        };
        if version == saved.version {
            return;
        }
        match self.hub.store.set_stderr(&self.deployment_id, &text).await {
            Ok(_) => {
                saved.version = version;
                saved.at = Some(Instant::now());
            }
            Err(e) => {
                tracing::warn!(deployment.id = %self.deployment_id, error = %e, "cannot save stderr");
            }
        }
    }

    /// The stderr stream ends when the container stops: record it as stopped.
    async fn container_ended(&self, container_id: &str) {
        match self.hub.backend.state(container_id).await {
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

    /// Pushes `chunks` through a marker into a fresh tail; returns the tail's text.
    fn marked(marker: &mut LineMarker, chunks: &[&[u8]]) -> String {
        let mut t = Tail::new("", 1 << 20);
        for chunk in chunks {
            marker.push(&mut t, chunk);
        }
        t.text()
    }

    #[test]
    fn session_lines_are_marked_whatever_the_chunking() {
        let text = b"first line\nsecond\nthird, unfinished";
        for cut in 0..text.len() {
            let mut m = LineMarker::new("[s] ".into());
            let (a, b) = text.split_at(cut);
            assert_eq!(
                marked(&mut m, &[a, b]),
                "[s] first line\n[s] second\n",
                "cut at {cut}"
            );
            let mut t = Tail::new("", 1 << 20);
            assert!(m.flush(&mut t), "the unfinished line is kept");
            assert_eq!(t.text(), "[s] third, unfinished\n");
            assert!(!m.flush(&mut t), "and pushed once");
        }
    }

    #[test]
    fn an_endless_session_line_is_cut_into_marked_pieces() {
        let mut m = LineMarker::new("[s] ".into());
        let long = vec![b'x'; MAX_SESSION_LINE * 2 + 10];
        let text = marked(&mut m, &[&long, b"\n"]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "two full pieces and the rest");
        assert!(lines.iter().all(|l| l.starts_with("[s] x")));
        assert_eq!(lines[0].len(), 4 + MAX_SESSION_LINE);
        assert_eq!(lines[1].len(), 4 + MAX_SESSION_LINE);
        assert_eq!(lines[2].len(), 4 + 10);
        // A line of exactly the limit is one line, not a piece and an empty line.
        let exact = [vec![b'y'; MAX_SESSION_LINE], b"\n".to_vec()].concat();
        assert_eq!(marked(&mut m, &[&exact]).lines().count(), 1);
    }

    #[test]
    fn a_cut_piece_never_ends_inside_a_character() {
        let mut m = LineMarker::new("[s] ".into());
        // 'é' is 2 bytes: the limit falls between them.
        let mut long = vec![b'x'; MAX_SESSION_LINE - 1];
        long.extend_from_slice("é tail\n".as_bytes());
        let text = marked(&mut m, &[&long]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(!text.contains('\u{FFFD}'), "no broken character");
        assert_eq!(lines[1], "[s] é tail");
    }

    #[test]
    fn never_starts_inside_a_character() {
        let mut t = Tail::new("", 4);
        t.push("aé€".as_bytes()); // 1 + 2 + 3 bytes: the cut falls inside 'é'
        assert_eq!(t.text(), "€");
    }
}
