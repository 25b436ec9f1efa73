//! `FakeBackend`: a [`SandboxBackend`] in memory, for unit tests of `deployments` and for the
//! router tests, which run without Docker or root.
//!
//! It keeps sandboxes, places and identities as the Docker backend would (ids, ownership by
//! deployment, idempotent removal, streams that end when a sandbox stops), and lets a test
//! fail any operation, hold one until released (to interleave two operations), make a
//! process exit, or remove things behind mcp-runner's back. A stdio sandbox can run a tiny
//! MCP server (`initialize`, `ping`, `tools/list`, `tools/call echo`) so that the bridge can
//! be driven end to end.

mod backend;
mod mcp;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, oneshot};

use super::{Attached, Identity, OwnedKind, RuntimeError};

/// The operations of the fake, to fail or hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`SandboxBackend::provision`].
    Provision,
    /// [`SandboxBackend::discard`].
    Discard,
    /// [`SandboxBackend::create`].
    Create,
    /// [`SandboxBackend::start`].
    Start,
    /// [`SandboxBackend::pause`].
    Pause,
    /// [`SandboxBackend::commit`].
    Commit,
    /// [`SandboxBackend::abort`] (recorded; it cannot fail).
    Abort,
    /// [`SandboxBackend::remove_sandbox`].
    RemoveSandbox,
    /// [`SandboxBackend::teardown`].
    Teardown,
    /// [`SandboxBackend::list_owned`].
    ListOwned,
    /// [`SandboxBackend::ping`].
    Ping,
}

/// A sandbox of the fake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeSandbox {
    /// Its deployment.
    pub deployment_id: String,
    /// The session it serves (isolated deployments).
    pub session: Option<String>,
    /// Its place's network.
    pub network: String,
    /// Its image.
    pub image: String,
    /// Whether it runs.
    pub running: bool,
    /// Whether it ran and exited.
    pub exited: bool,
    /// Exit code of the last run.
    pub exit_code: Option<i64>,
    /// Started this many times.
    pub starts: u32,
}

/// A place of the fake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakePlace {
    /// Its deployment.
    pub deployment_id: String,
    /// Provisioned ahead.
    pub ahead: bool,
}

/// The streams of a running sandbox: dropping them ends its stdout and stderr.
struct Running {
    stdout: Option<mpsc::UnboundedSender<Bytes>>,
    stderr: Option<mpsc::UnboundedSender<Bytes>>,
}

/// A held operation: it waits at its start until released.
pub struct Held {
    /// Resolves when the operation has reached the hold.
    pub reached: oneshot::Receiver<()>,
    /// Lets it go on.
    pub release: oneshot::Sender<()>,
}

#[derive(Default)]
struct World {
    next: u64,
    sandboxes: BTreeMap<String, FakeSandbox>,
    places: BTreeMap<String, FakePlace>,
    identities: BTreeMap<String, Identity>,
    running: HashMap<String, Running>,
    failures: HashMap<Op, (RuntimeError, u32)>,
    holds: HashMap<Op, (oneshot::Sender<()>, oneshot::Receiver<()>)>,
    missing_images: HashSet<String>,
    taken_ids: HashSet<u32>,
    calls: Vec<(Op, String)>,
    replace_on_pause: bool,
    replace_on_start: bool,
    mcp: bool,
    ahead: usize,
    requests: u64,
}

/// The in-memory backend.
#[derive(Default)]
pub struct FakeBackend {
    world: Mutex<World>,
}

/// A copy of an error the test asked for (the fake hands out one per failing call).
fn copy(e: &RuntimeError) -> RuntimeError {
    match e {
        RuntimeError::Unreachable { backend, message } => RuntimeError::Unreachable {
            backend,
            message: message.clone(),
        },
        RuntimeError::Rejected { message } => RuntimeError::Rejected {
            message: message.clone(),
        },
        RuntimeError::NotFound { message } => RuntimeError::NotFound {
            message: message.clone(),
        },
        RuntimeError::Pull {
            image,
            reason,
            not_found,
        } => RuntimeError::Pull {
            image: image.clone(),
            reason: reason.clone(),
            not_found: *not_found,
        },
        RuntimeError::Host { op, reason } => RuntimeError::Host {
            op,
            reason: reason.clone(),
        },
        RuntimeError::Exhausted {
            reason,
            message,
            advice,
        } => RuntimeError::Exhausted {
            reason,
            message: message.clone(),
            advice: advice.clone(),
        },
    }
}

impl FakeBackend {
    /// An empty fake.
    pub fn new() -> Arc<FakeBackend> {
        Arc::new(FakeBackend::default())
    }

    /// A fake whose stdio sandboxes answer MCP (`initialize`, `ping`, `tools/list`,
    /// `tools/call echo`).
    pub fn with_mcp_server() -> Arc<FakeBackend> {
        let fake = FakeBackend::default();
        fake.world().mcp = true;
        Arc::new(fake)
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next `times` calls of `op` fail with `error`.
    pub fn fail(&self, op: Op, error: RuntimeError, times: u32) {
        self.world().failures.insert(op, (error, times));
    }

    /// The next call of `op` waits at its start until released.
    pub fn hold(&self, op: Op) -> Held {
        let (reached_tx, reached) = oneshot::channel();
        let (release, release_rx) = oneshot::channel();
        self.world().holds.insert(op, (reached_tx, release_rx));
        Held { reached, release }
    }

    /// Pulls of `image` fail as "not found".
    pub fn missing_image(&self, image: &str) {
        self.world().missing_images.insert(image.to_owned());
    }

    /// IDs the host uses for something else.
    pub fn take_ids(&self, ids: impl IntoIterator<Item = u32>) {
        self.world().taken_ids.extend(ids);
    }

    /// Pauses replace the sandbox by an equivalent one (as Docker does to leave a network
    /// holder).
    pub fn replace_on_pause(&self, on: bool) {
        self.world().replace_on_pause = on;
    }

    /// Starts of a stopped sandbox replace it by an equivalent one (as Docker does when a
    /// network holder is gone).
    pub fn replace_on_start(&self, on: bool) {
        self.world().replace_on_start = on;
    }

    /// Places to keep provisioned ahead (the backend's [`Capacity::ahead`]).
    pub fn keep_ahead(&self, n: usize) {
        self.world().ahead = n;
    }

    /// Every sandbox, by id.
    pub fn sandboxes(&self) -> BTreeMap<String, FakeSandbox> {
        self.world().sandboxes.clone()
    }

    /// Every place, by network id.
    pub fn places(&self) -> BTreeMap<String, FakePlace> {
        self.world().places.clone()
    }

    /// Every identity, by account name.
    pub fn identities(&self) -> BTreeMap<String, Identity> {
        self.world().identities.clone()
    }

    /// Whether nothing at all exists.
    pub fn is_empty(&self) -> bool {
        let w = self.world();
        w.sandboxes.is_empty() && w.places.is_empty() && w.identities.is_empty()
    }

    /// The calls made so far, with the deployment (or object) each was for.
    pub fn calls(&self) -> Vec<(Op, String)> {
        self.world().calls.clone()
    }

    /// Writes to the stderr of a running sandbox.
    pub fn write_stderr(&self, sandbox: &str, text: &str) {
        if let Some(tx) = self
            .world()
            .running
            .get(sandbox)
            .and_then(|r| r.stderr.as_ref())
        {
            let _ = tx.send(Bytes::from(text.to_owned()));
        }
    }

    /// The process of a running sandbox exits with `code`: its streams end.
    pub fn exit(&self, sandbox: &str, code: i64) {
        let mut w = self.world();
        w.running.remove(sandbox);
        if let Some(s) = w.sandboxes.get_mut(sandbox) {
            s.running = false;
            s.exited = true;
            s.exit_code = Some(code);
        }
    }

    /// Removes a sandbox behind mcp-runner's back.
    pub fn vanish(&self, sandbox: &str) {
        let mut w = self.world();
        w.running.remove(sandbox);
        w.sandboxes.remove(sandbox);
    }

    /// Makes a thing of this instance that no deployment explains (a leftover of a crash).
    pub fn leave_behind(&self, kind: OwnedKind, deployment_id: &str) -> String {
        let mut w = self.world();
        let id = w.new_id("left");
        match kind {
            OwnedKind::Sandbox { session } => {
                w.sandboxes.insert(
                    id.clone(),
                    FakeSandbox {
                        deployment_id: deployment_id.to_owned(),
                        session,
                        network: String::new(),
                        image: "left".into(),
                        running: false,
                        exited: false,
                        exit_code: None,
                        starts: 0,
                    },
                );
            }
            OwnedKind::Place { ahead } => {
                w.places.insert(
                    id.clone(),
                    FakePlace {
                        deployment_id: deployment_id.to_owned(),
                        ahead,
                    },
                );
            }
            OwnedKind::Identity => {
                w.identities.insert(
                    id.clone(),
                    Identity {
                        deployment_id: deployment_id.to_owned(),
                        username: id.clone(),
                        uid: 0,
                        gid: 0,
                    },
                );
            }
        }
        id
    }

    /// Records the call, then fails it or holds it as the test asked.
    async fn enter(&self, op: Op, what: &str) -> Result<(), RuntimeError> {
        let hold = {
            let mut w = self.world();
            w.requests += 1;
            w.calls.push((op, what.to_owned()));
            if let Some((error, times)) = w.failures.get_mut(&op) {
                let e = copy(error);
                *times -= 1;
                if *times == 0 {
                    w.failures.remove(&op);
                }
                return Err(e);
            }
            w.holds.remove(&op)
        };
        if let Some((reached, release)) = hold {
            let _ = reached.send(());
            let _ = release.await;
        }
        Ok(())
    }

    fn start_streams(&self, w: &mut World, sandbox: &str, attach: bool) -> Option<Attached> {
        if !attach {
            let quiet = Running {
                stdout: None,
                stderr: None,
            };
            w.running.insert(sandbox.to_owned(), quiet);
            return None;
        }
        let (stdout_tx, stdout_rx) = mpsc::unbounded_channel::<Bytes>();
        let (stderr_tx, stderr_rx) = mpsc::unbounded_channel::<Bytes>();
        w.running.insert(
            sandbox.to_owned(),
            Running {
                stdout: Some(stdout_tx.clone()),
                stderr: Some(stderr_tx),
            },
        );
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        // The process's output ends with its `Running` entry: the server below holds only a
        // weak sender.
        let stdout = stdout_tx.downgrade();
        let mcp = w.mcp;
        tokio::spawn(async move {
            let mut lines = BufReader::new(theirs).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let answer = if mcp { mcp::answer_mcp(&line) } else { None };
                if let Some(answer) = answer {
                    let Some(stdout) = stdout.upgrade() else {
                        return;
                    };
                    let _ = stdout.send(Bytes::from(format!("{answer}\n")));
                }
            }
        });
        Some(Attached {
            stdout: stream_of(stdout_rx),
            stdin: Box::pin(ours),
            stderr: stream_of(stderr_rx),
        })
    }
}

impl World {
    fn new_id(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}{}", self.next)
    }
}

pub(super) fn stream_of(
    mut rx: mpsc::UnboundedReceiver<Bytes>,
) -> BoxStream<'static, Result<Bytes, RuntimeError>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
        .map(Ok)
        .boxed()
}

impl FakeBackend {
    /// Writes a line to the stdout of a running stdio sandbox, as its server would.
    pub fn write_stdout(&self, sandbox: &str, line: &str) {
        if let Some(tx) = self
            .world()
            .running
            .get(sandbox)
            .and_then(|r| r.stdout.as_ref())
        {
            let _ = tx.send(Bytes::from(format!("{line}\n")));
        }
    }
}
