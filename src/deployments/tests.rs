//! `Deployments` against the in-memory backend and a real SQLite file: create and its undo
//! after each failure point, delete of half-made deployments, pause and start races, places
//! made ahead, reconciliation. No Docker, no root.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::*;
use crate::domain::{SessionMode, Status, Transport};
use crate::runtime::fake::{FakeBackend, Op};
use crate::runtime::{Attached, OwnedKind};

/// What the listener heard, in order.
#[derive(Default)]
struct Heard {
    events: Mutex<Vec<String>>,
    started: Mutex<Vec<(String, Attached)>>,
}

impl LifecycleListener for Heard {
    fn deleting(&self, id: &str) {
        self.events.lock().unwrap().push(format!("deleting {id}"));
    }
    fn paused(&self, id: &str) {
        self.events.lock().unwrap().push(format!("paused {id}"));
    }
    fn stdio_started(&self, d: &Deployment, attached: Attached) {
        self.events.lock().unwrap().push(format!("stdio {}", d.id));
        self.started.lock().unwrap().push((d.id.clone(), attached));
    }
}

struct Harness {
    deployments: Deployments,
    fake: Arc<FakeBackend>,
    store: Store,
    heard: Arc<Heard>,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn new() -> Harness {
        Harness::with(FakeBackend::new(), 5000, 5099).await
    }

    async fn with(fake: Arc<FakeBackend>, first: u32, last: u32) -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("app.db"))
            .await
            .expect("store");
        let stop = CancellationToken::new();
        let deployments = Deployments::new(
            store.clone(),
            fake.clone(),
            UidRange { first, last },
            TaskTracker::new(),
            stop.clone(),
        );
        let heard = Arc::new(Heard::default());
        let listener: Weak<dyn LifecycleListener> = Arc::downgrade(&heard) as _;
        deployments.set_listener(listener);
        Harness {
            deployments,
            fake,
            store,
            heard,
            stop,
            _dir: dir,
        }
    }

    async fn row(&self, id: &str) -> Option<Deployment> {
        self.store.get(id).await.expect("read the row")
    }

    async fn rows(&self) -> usize {
        self.store.list().await.expect("rows").len()
    }

    fn heard(&self) -> Vec<String> {
        self.heard.events.lock().unwrap().clone()
    }

    /// Polls until `f` holds (a background task acts), failing after 5 s.
    async fn until(&self, what: &str, mut f: impl AsyncFnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !f().await {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn request(transport: Transport, auto_start: bool) -> NewDeployment {
    NewDeployment {
        image: "img:1".into(),
        args: None,
        env: BTreeMap::new(),
        max_memory: Some(256),
        max_cpus: Some(1.0),
        pause_after_seconds: None,
        delete_after_seconds: None,
        auto_start,
        metadata: serde_json::json!({}),
        transport,
        session_mode: SessionMode::Shared,
    }
}

fn stdio() -> NewDeployment {
    request(Transport::Stdio, true)
}

fn http(auto_start: bool) -> NewDeployment {
    let endpoint = "http://localhost:8000/mcp".to_owned();
    request(Transport::StreamableHttp { endpoint }, auto_start)
}

fn rejected() -> RuntimeError {
    RuntimeError::Rejected {
        message: "refused".into(),
    }
}

#[tokio::test]
async fn a_stdio_create_runs_its_process_and_hands_its_pipes_to_the_listener() {
    let h = Harness::new().await;
    let d = h.deployments.create(stdio()).await.expect("created");
    assert_eq!(d.status, Status::Running);
    let row = h.row(&d.id).await.expect("row");
    assert_eq!(row.status, Status::Running);
    let sandbox = row.container_id.expect("sandbox recorded");
    let s = &h.fake.sandboxes()[&sandbox];
    assert!(s.running && s.deployment_id == d.id);
    assert_eq!(
        h.fake.places()[&row.network_id.expect("place")].deployment_id,
        d.id
    );
    assert_eq!(h.fake.identities()[&d.username].uid, d.uid);
    assert!((5000..=5099).contains(&d.uid) && d.gid == d.uid);
    assert_eq!(h.heard(), vec![format!("stdio {}", d.id)]);
    assert!(h.deployments.known_running(&d.id), "its stderr is followed");
}

#[tokio::test]
async fn an_http_create_without_auto_start_is_made_stopped() {
    let h = Harness::new().await;
    let d = h.deployments.create(http(false)).await.expect("created");
    assert_eq!(d.status, Status::Stopped);
    let s = &h.fake.sandboxes()[d.container_id.as_ref().expect("sandbox")];
    assert!(!s.running && s.starts == 0);
    assert!(h.heard().is_empty());
}

#[tokio::test]
async fn an_isolated_deployments_own_sandbox_never_runs() {
    let h = Harness::new().await;
    let mut req = stdio();
    req.session_mode = SessionMode::Isolated;
    let d = h.deployments.create(req).await.expect("created");
    assert_eq!(d.status, Status::Stopped);
    assert_eq!(h.fake.sandboxes().values().filter(|s| s.running).count(), 0);
    // A session gets a sandbox of its own, attached, and loses it when it ends.
    let (sandbox, attached) = h
        .deployments
        .start_session(&d, "sess-1", true)
        .await
        .expect("session sandbox");
    assert!(attached.is_some());
    let s = &h.fake.sandboxes()[&sandbox];
    assert_eq!(s.session.as_deref(), Some("sess-1"));
    assert!(s.running);
    h.deployments
        .remove_session(&sandbox)
        .await
        .expect("removed");
    assert!(!h.fake.sandboxes().contains_key(&sandbox));
}

/// Every failure point of a create: the create fails and nothing is left, neither in the
/// backend nor in the database.
#[tokio::test]
async fn a_create_that_fails_at_any_step_leaves_nothing() {
    for (op, req) in [
        (Op::Create, stdio()),
        (Op::Start, stdio()),
        (Op::Start, http(true)),
    ] {
        let h = Harness::new().await;
        h.fake.fail(op, rejected(), 1);
        let e = h.deployments.create(req).await.expect_err("fails");
        assert!(matches!(e, DeployError::Runtime(_)), "{op:?}: {e:?}");
        assert_eq!(h.rows().await, 0, "{op:?}: no row");
        assert!(h.fake.is_empty(), "{op:?}: backend empty");
        assert!(h.heard().is_empty());
    }
}

#[tokio::test]
async fn an_image_that_does_not_exist_is_the_clients_error_and_leaves_nothing() {
    let h = Harness::new().await;
    h.fake.missing_image("img:1");
    match h.deployments.create(stdio()).await {
        Err(DeployError::Runtime(e)) => {
            assert!(
                matches!(
                    e,
                    RuntimeError::Pull {
                        not_found: true,
                        ..
                    }
                ),
                "{e:?}"
            );
            assert_eq!(e.reason(), "image_not_found");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.rows().await, 0);
    assert!(h.fake.is_empty());
}

/// When the undo itself fails (the backend went away with the create), the row is handed to
/// the reaper as `deleting`, and the next delete finishes the job.
#[tokio::test]
async fn an_undo_that_fails_leaves_the_row_for_the_reaper() {
    let h = Harness::new().await;
    h.fake.fail(Op::Start, rejected(), 1);
    h.fake.fail(Op::Teardown, rejected(), 1);
    h.deployments.create(stdio()).await.expect_err("fails");
    let rows = h.store.list().await.expect("rows");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, Status::Deleting);
    assert!(!h.fake.is_empty(), "the parts are still there");
    // What the reaper does with a `deleting` row.
    h.deployments.delete(&rows[0].id).await.expect("deleted");
    assert_eq!(h.rows().await, 0);
    assert!(h.fake.is_empty());
}

#[tokio::test]
async fn uids_come_from_the_range_and_skip_what_the_host_uses() {
    let h = Harness::with(FakeBackend::new(), 7000, 7001).await;
    h.fake.take_ids([7000]);
    let d = h.deployments.create(http(false)).await.expect("created");
    assert_eq!(d.uid, 7001);
    match h.deployments.create(http(false)).await {
        Err(DeployError::Runtime(e @ RuntimeError::Exhausted { .. })) => {
            assert_eq!(e.reason(), "uids_exhausted");
            assert!(e.to_string().contains("7000-7001"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.rows().await, 1, "the failed create left no row");
}

#[tokio::test]
async fn concurrent_creates_never_share_a_uid() {
    let h = Harness::with(FakeBackend::new(), 8000, 8019).await;
    let creates = (0..20).map(|_| h.deployments.create(http(false)));
    let made = futures_util::future::join_all(creates).await;
    let mut uids: Vec<u32> = made.into_iter().map(|d| d.expect("created").uid).collect();
    uids.sort();
    uids.dedup();
    assert_eq!(uids.len(), 20);
}

#[tokio::test]
async fn delete_removes_every_part_tells_the_listener_and_forgets_the_row() {
    let h = Harness::new().await;
    let d = h.deployments.create(stdio()).await.expect("created");
    h.deployments.delete(&d.id).await.expect("deleted");
    assert!(h.row(&d.id).await.is_none());
    assert!(h.fake.is_empty());
    assert_eq!(h.heard().last(), Some(&format!("deleting {}", d.id)));
    assert!(!h.deployments.known_running(&d.id));
    assert!(matches!(
        h.deployments.delete(&d.id).await,
        Err(DeployError::NotFound)
    ));
}

/// A deployment whose parts are partly gone (a sandbox removed behind mcp-runner's back, a
/// place of a failed create) is deleted all the same.
#[tokio::test]
async fn a_half_made_deployment_is_deleted_all_the_same() {
    let h = Harness::new().await;
    let d = h.deployments.create(http(false)).await.expect("created");
    h.fake.vanish(d.container_id.as_deref().expect("sandbox"));
    h.deployments.delete(&d.id).await.expect("deleted");
    assert!(h.row(&d.id).await.is_none());
    assert!(h.fake.is_empty());
}

/// A row still being created is not the API's to delete: the delete stands back, and the
/// create finishes.
#[tokio::test]
async fn a_create_in_flight_cannot_be_deleted_under_it() {
    let h = Arc::new(Harness::new().await);
    let held = h.fake.hold(Op::Create);
    let create = tokio::spawn({
        let h = h.clone();
        async move { h.deployments.create(stdio()).await }
    });
    held.reached.await.expect("the create reached the backend");
    let rows = h.store.list().await.expect("rows");
    assert_eq!(rows[0].status, Status::Creating);
    assert!(matches!(
        h.deployments.delete(&rows[0].id).await,
        Err(DeployError::NotFound)
    ));
    assert!(matches!(
        h.deployments.get(&rows[0].id).await,
        Err(DeployError::NotFound)
    ));
    held.release.send(()).expect("release");
    let d = create.await.expect("task").expect("created");
    assert_eq!(d.status, Status::Running);
}

#[tokio::test]
async fn a_pause_stops_the_sandbox_and_the_next_start_runs_it_again() {
    let h = Harness::new().await;
    let d = h.deployments.create(http(true)).await.expect("created");
    let sandbox = d.container_id.clone().expect("sandbox");
    h.deployments.pause(&d.id).await.expect("paused");
    assert_eq!(h.row(&d.id).await.expect("row").status, Status::Stopped);
    assert!(!h.fake.sandboxes()[&sandbox].running);
    assert_eq!(h.heard(), vec![format!("paused {}", d.id)]);
    // A second pause has nothing to do.
    h.deployments.pause(&d.id).await.expect("paused again");
    assert_eq!(h.heard().len(), 1);
    let started = h.deployments.start(&d.id).await.expect("started");
    assert_eq!(started.status, Status::Running);
    assert!(h.fake.sandboxes()[&sandbox].running);
    assert_eq!(h.row(&d.id).await.expect("row").status, Status::Running);
}

/// A start that arrives while a pause runs waits for it, then starts the sandbox: the two
/// never interleave, whatever the order the backend would run their steps in.
#[tokio::test]
async fn a_start_during_a_pause_waits_for_it_and_wins() {
    let h = Arc::new(Harness::new().await);
    let d = h.deployments.create(http(true)).await.expect("created");
    let held = h.fake.hold(Op::Pause);
    let pause = tokio::spawn({
        let (h, id) = (h.clone(), d.id.clone());
        async move { h.deployments.pause(&id).await }
    });
    held.reached.await.expect("the pause reached the backend");
    let starts = || {
        h.fake
            .calls()
            .iter()
            .filter(|(op, _)| *op == Op::Start)
            .count()
    };
    let before = starts();
    let start = tokio::spawn({
        let (h, id) = (h.clone(), d.id.clone());
        async move { h.deployments.start(&id).await }
    });
    // The start queues behind the pause: the backend sees no start while the pause runs.
    let id = d.id.clone();
    h.until("the start waits for the pause", async || {
        h.deployments.inner.pauses_and_starts.users(&id) == 2
    })
    .await;
    assert_eq!(starts(), before);
    held.release.send(()).expect("release");
    pause.await.expect("task").expect("paused");
    let started = start.await.expect("task").expect("started");
    assert_eq!(started.status, Status::Running);
    let calls: Vec<Op> = h.fake.calls().into_iter().map(|(op, _)| op).collect();
    let pause_at = calls.iter().position(|o| *o == Op::Pause).expect("paused");
    assert!(calls[pause_at..].contains(&Op::Start), "{calls:?}");
    assert!(h.fake.sandboxes()[d.container_id.as_ref().expect("sandbox")].running);
}

/// A backend that replaces the sandbox on a pause: the row names the new one before the old
/// one goes.
#[tokio::test]
async fn a_replacement_is_recorded_before_the_old_sandbox_goes() {
    let h = Harness::new().await;
    h.fake.replace_on_pause(true);
    let d = h.deployments.create(http(true)).await.expect("created");
    let old = d.container_id.clone().expect("sandbox");
    h.deployments.pause(&d.id).await.expect("paused");
    let row = h.row(&d.id).await.expect("row");
    let new = row.container_id.expect("sandbox");
    assert_ne!(new, old);
    let sandboxes = h.fake.sandboxes();
    assert!(
        !sandboxes.contains_key(&old),
        "the old one went with the commit"
    );
    assert_eq!(sandboxes[&new].deployment_id, d.id);
    assert_eq!(row.status, Status::Stopped);
}

/// A backend that replaces the sandbox when it starts it: at the create (the row is not
/// written yet) and at a later start (recorded before the old one goes), the row names the
/// sandbox that runs, and nothing of the old one is left.
#[tokio::test]
async fn a_sandbox_replaced_at_its_start_is_the_one_the_row_names() {
    let h = Harness::new().await;
    h.fake.replace_on_start(true);
    let d = h.deployments.create(http(true)).await.expect("created");
    let first = d.container_id.clone().expect("sandbox");
    let sandboxes = h.fake.sandboxes();
    assert_eq!(sandboxes.len(), 1, "the replaced one went: {sandboxes:?}");
    assert!(sandboxes[&first].running);
    assert_eq!(
        h.row(&d.id).await.expect("row").container_id.as_deref(),
        Some(first.as_str())
    );
    h.deployments.pause(&d.id).await.expect("paused");
    let started = h.deployments.start(&d.id).await.expect("started");
    let second = started.container_id.expect("sandbox");
    assert_ne!(second, first);
    let sandboxes = h.fake.sandboxes();
    assert_eq!(sandboxes.len(), 1);
    assert!(sandboxes[&second].running);
    assert_eq!(
        h.row(&d.id).await.expect("row").container_id.as_deref(),
        Some(second.as_str())
    );
}

/// A replacement that cannot be recorded (the row is being deleted) is undone: the new
/// sandbox goes, and the deletion removes the old one.
#[tokio::test]
async fn a_replacement_of_a_deployment_being_deleted_is_undone() {
    let h = Arc::new(Harness::new().await);
    h.fake.replace_on_pause(true);
    let d = h.deployments.create(http(true)).await.expect("created");
    let held = h.fake.hold(Op::Teardown);
    let delete = tokio::spawn({
        let (h, id) = (h.clone(), d.id.clone());
        async move { h.deployments.delete(&id).await }
    });
    held.reached.await.expect("the delete reached the backend");
    // The row is `deleting` now: a replacement the backend made meanwhile (as a start or a
    // pause would have) cannot be recorded.
    let old = d.container_id.clone().expect("sandbox");
    let spec = spec::spec_of(&d, None);
    let place = spec::place_of(&d).expect("place");
    let backend: &dyn SandboxBackend = h.fake.as_ref();
    let replacement = backend
        .pause(&spec, &old, &place)
        .await
        .expect("paused")
        .expect("a replacement");
    let new = replacement.new.clone();
    assert!(h.fake.sandboxes().contains_key(&new));
    let settled = h
        .deployments
        .settle(&d, old.clone(), Some(replacement))
        .await;
    assert!(matches!(settled, Err(DeployError::NotFound)), "{settled:?}");
    assert!(!h.fake.sandboxes().contains_key(&new), "the new one went");
    assert!(h.fake.sandboxes().contains_key(&old), "the old one stays");
    let calls: Vec<Op> = h.fake.calls().into_iter().map(|(op, _)| op).collect();
    assert!(calls.contains(&Op::Abort) && !calls.contains(&Op::Commit));
    assert_eq!(
        h.row(&d.id).await.expect("row").container_id.as_deref(),
        Some(old.as_str()),
        "the row still names the old sandbox"
    );
    held.release.send(()).expect("release");
    delete.await.expect("task").expect("deleted");
    assert!(h.fake.is_empty());
}

#[tokio::test]
async fn a_process_that_exits_is_recorded_as_stopped() {
    let h = Harness::new().await;
    let d = h.deployments.create(http(true)).await.expect("created");
    let sandbox = d.container_id.clone().expect("sandbox");
    h.fake.write_stderr(&sandbox, "crashing now\n");
    h.fake.exit(&sandbox, 3);
    let id = d.id.clone();
    h.until("the row says stopped", async || {
        h.row(&id)
            .await
            .is_some_and(|r| r.status == Status::Stopped)
    })
    .await;
    let (d, state) = h.deployments.logs(&d.id).await.expect("logs");
    let state = state.expect("state");
    assert!(!state.running && state.exited);
    assert_eq!(state.exit_code, Some(3));
    assert!(d.stderr.contains("crashing now"), "{:?}", d.stderr);
}

#[tokio::test]
async fn creates_take_places_made_ahead_and_the_pool_refills() {
    let fake = FakeBackend::new();
    fake.keep_ahead(1);
    let h = Harness::with(fake, 5000, 5099).await;
    tokio::spawn(h.deployments.clone().keep_ahead(h.stop.child_token()));
    h.until("a place is ready", async || {
        h.deployments.ahead_ready() == 1
    })
    .await;
    let (ahead_id, ahead_network) = {
        let places = h.fake.places();
        let (network, place) = places.iter().next().expect("a place");
        assert!(place.ahead);
        (place.deployment_id.clone(), network.clone())
    };
    let d = h.deployments.create(stdio()).await.expect("created");
    assert_eq!(d.id, ahead_id, "the create took the place's id");
    assert_eq!(d.network_id.as_deref(), Some(ahead_network.as_str()));
    assert!(
        h.fake.places().values().all(|p| p.ahead),
        "the create made no place of its own"
    );
    h.until("the pool refilled", async || {
        h.deployments.ahead_ready() == 1
    })
    .await;
    let provisions = h
        .fake
        .calls()
        .iter()
        .filter(|(op, _)| *op == Op::Provision)
        .count();
    assert_eq!(provisions, 2);
    assert_eq!(h.fake.places().len(), 2, "the taken place and a new one");
    // Stopping removes what no create took.
    h.stop.cancel();
    h.until("the spare is removed", async || h.fake.places().len() == 1)
        .await;
}

#[tokio::test]
async fn reconciliation_removes_what_no_row_explains_and_reads_every_state() {
    let h = Harness::new().await;
    let running = h.deployments.create(http(true)).await.expect("created");
    let stopped = h.deployments.create(http(false)).await.expect("created");
    let vanished = h.deployments.create(http(false)).await.expect("created");
    h.fake
        .vanish(vanished.container_id.as_deref().expect("sandbox"));
    // Leftovers of a crash: things of no deployment, a spare place never taken with its
    // identity, and a session sandbox of a known deployment.
    let ghost = new_id();
    h.fake
        .leave_behind(OwnedKind::Sandbox { session: None }, &ghost);
    h.fake
        .leave_behind(OwnedKind::Place { ahead: false }, &ghost);
    h.fake.leave_behind(OwnedKind::Identity, &ghost);
    let spare = new_id();
    h.fake
        .leave_behind(OwnedKind::Place { ahead: true }, &spare);
    h.fake.leave_behind(OwnedKind::Identity, &spare);
    h.fake.leave_behind(
        OwnedKind::Sandbox {
            session: Some("s".into()),
        },
        &running.id,
    );
    let report = h.deployments.reconcile().await.expect("reconciled");
    assert_eq!(
        (
            report.orphan_sandboxes,
            report.orphan_places,
            report.orphan_identities,
            report.spare_places,
            report.spare_identities,
            report.session_sandboxes,
        ),
        (1, 1, 1, 1, 1, 1),
        "{report:?}"
    );
    assert_eq!((report.running, report.stopped, report.vanished), (1, 1, 1));
    assert!(h.row(&vanished.id).await.is_none());
    let left: Vec<String> = h
        .fake
        .sandboxes()
        .values()
        .map(|s| s.deployment_id.clone())
        .collect();
    assert_eq!(left.len(), 2);
    assert!(left.contains(&running.id) && left.contains(&stopped.id));
    // Nothing more to do.
    assert_eq!(
        h.deployments.sweep().await.expect("swept"),
        Reconciled::default()
    );
    assert_eq!(h.deployments.sweeps_done(), 1);
}

#[tokio::test]
async fn an_interrupted_create_is_undone_at_start_up() {
    let h = Harness::new().await;
    let held = h.fake.hold(Op::Start);
    let deployments = h.deployments.clone();
    let create = tokio::spawn(async move { deployments.create(http(true)).await });
    held.reached.await.expect("the create reached the start");
    // The process dies here: the row says `creating`, parts exist.
    create.abort();
    let rows = h.store.list().await.expect("rows");
    assert_eq!(rows[0].status, Status::Creating);
    let report = h.deployments.reconcile().await.expect("reconciled");
    assert_eq!(report.interrupted_creates, 1);
    assert_eq!(h.rows().await, 0);
    assert!(h.fake.is_empty());
    drop(held.release);
}
