//! The bridge over `Deployments` and the in-memory backend: it hears every deletion and
//! pause, however many come at once, and it takes over the stdio of processes that
//! `deployments` started.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use tokio_util::task::TaskTracker;

use super::*;
use crate::config::UidRange;
use crate::deployments::NewDeployment;
use crate::domain::{SessionMode, Transport};
use crate::runtime::fake::{FakeBackend, Op};
use crate::store::Store;

struct Harness {
    bridge: Arc<Bridge>,
    deployments: Deployments,
    fake: Arc<FakeBackend>,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("app.db"))
        .await
        .expect("store");
    let fake = FakeBackend::with_mcp_server();
    let stop = CancellationToken::new();
    let deployments = Deployments::new(
        store,
        fake.clone(),
        UidRange {
            first: 10_000,
            last: 19_999,
        },
        TaskTracker::new(),
        stop.clone(),
    );
    let config = BridgeConfig {
        max_body: 1 << 20,
        max_line: 1 << 20,
        session_idle: Duration::from_secs(600),
        ready_timeout: Duration::from_secs(5),
        allowed_origins: vec![],
    };
    let bridge = Bridge::new(deployments.clone(), config, stop.child_token());
    Harness {
        bridge,
        deployments,
        fake,
        stop,
        _dir: dir,
    }
}

fn stdio() -> NewDeployment {
    NewDeployment {
        image: "img:1".into(),
        args: None,
        env: BTreeMap::new(),
        max_memory: None,
        max_cpus: None,
        pause_after_seconds: None,
        delete_after_seconds: None,
        auto_start: true,
        metadata: json!({}),
        transport: Transport::Stdio,
        session_mode: SessionMode::Shared,
    }
}

impl Harness {
    async fn open(&self, id: &str, front: Front) -> Link {
        self.bridge.open(id, front, None).await.expect("opened")
    }
}

/// Sends `initialize` through a session and returns the answer's text.
async fn initialize(link: &Link) -> String {
    let key = jsonrpc::key(&json!(1));
    let answer = link.session.expect_json(key);
    let message = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"}}});
    link.send(message, jsonrpc::Kind::Request).expect("sent");
    let text = tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .expect("answered in time")
        .expect("answered");
    text.to_string()
}

#[tokio::test]
async fn a_process_started_by_a_create_is_the_one_sessions_talk_to() {
    let h = harness().await;
    let d = h.deployments.create(stdio()).await.expect("created");
    let link = h.open(&d.id, Front::Streamable).await;
    let answer = initialize(&link).await;
    assert!(answer.contains("\"serverInfo\""), "{answer}");
    let starts = h
        .fake
        .calls()
        .iter()
        .filter(|(op, _)| *op == Op::Start)
        .count();
    assert_eq!(starts, 1, "the session used the process the create started");
}

/// Every deletion and every pause reaches the bridge, also when more come at once than a
/// bounded event queue would hold (the broadcast this replaced held 1,024 and dropped the
/// rest for a slow reader): each of their sessions ends (the next request is a 404).
#[tokio::test]
async fn no_lifecycle_event_is_lost_under_load() {
    let h = harness().await;
    let mut links = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..1100 {
        let d = h.deployments.create(stdio()).await.expect("created");
        let link = h.open(&d.id, Front::Streamable).await;
        links.push(link);
        ids.push(d.id);
    }
    let (paused, deleted) = ids.split_at(ids.len() / 2);
    let pauses = paused.iter().map(|id| h.deployments.pause(id));
    let deletes = deleted.iter().map(|id| h.deployments.delete(id));
    let (p, d) = tokio::join!(
        futures_util::future::join_all(pauses),
        futures_util::future::join_all(deletes)
    );
    assert!(p.iter().chain(d.iter()).all(Result::is_ok));
    for link in &links {
        assert!(
            link.session.is_closed(),
            "session of {} ended",
            link.session.deployment_id
        );
        assert!(
            h.bridge
                .session(&link.session.deployment_id, &link.session.id)
                .is_none()
        );
    }
    assert!(lock(&h.bridge.sessions).is_empty());
    assert!(lock(&h.bridge.hubs).is_empty());
}

#[tokio::test]
async fn a_paused_deployment_starts_again_for_its_next_session() {
    let h = harness().await;
    let d = h.deployments.create(stdio()).await.expect("created");
    let first = h.open(&d.id, Front::Legacy).await;
    h.deployments.pause(&d.id).await.expect("paused");
    assert!(first.session.is_closed());
    let second = h.open(&d.id, Front::Streamable).await;
    let answer = initialize(&second).await;
    assert!(answer.contains("\"result\""), "{answer}");
    let counts = h.bridge.session_counts();
    assert!(counts.contains(&(Front::Streamable, 1)) && counts.contains(&(Front::Legacy, 0)));
}

#[tokio::test]
async fn an_unknown_deployment_is_refused() {
    let h = harness().await;
    assert!(matches!(
        h.bridge.open("dp_missing", Front::Streamable, None).await,
        Err(BridgeError::UnknownDeployment)
    ));
}
