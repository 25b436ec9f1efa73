//! The store against a real SQLite file.

use mcp_runner::domain::{Deployment, SessionMode, Status, Transport, now_millis};
use mcp_runner::store::{Store, StoreError};

fn deployment(id: &str, uid: u32) -> Deployment {
    let now = now_millis();
    Deployment {
        id: id.to_owned(),
        status: Status::Creating,
        container_id: None,
        network_id: None,
        image: "img:1".to_owned(),
        username: format!("mcp-{id}"),
        uid,
        gid: uid,
        max_memory: Some(64),
        max_cpus: None,
        args: Some(vec!["a".to_owned()]),
        env: [("K".to_owned(), "V".to_owned())].into(),
        metadata: serde_json::json!({"x": 1}),
        transport: Transport::Stdio,
        session_mode: SessionMode::Isolated,
        stderr: String::new(),
        pause_after_seconds: None,
        delete_after_seconds: None,
        pause_at: None,
        delete_at: None,
        created_at: now,
        last_interaction_at: now,
    }
}

async fn store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("nested").join("app.db"))
        .await
        .expect("open");
    (store, dir)
}

#[tokio::test]
async fn rows_round_trip_and_uids_are_unique() {
    let (store, _dir) = store().await;
    let d = deployment("dp_a", 5000);
    store.insert(&d).await.expect("insert");
    assert_eq!(store.get("dp_a").await.expect("get"), Some(d.clone()));
    let clash = deployment("dp_b", 5000);
    assert!(matches!(
        store.insert(&clash).await,
        Err(StoreError::Taken("uid"))
    ));
    assert_eq!(store.used_uids().await.expect("uids"), vec![5000]);
}

#[tokio::test]
async fn rows_without_deadlines_are_never_due() {
    let (store, _dir) = store().await;
    let d = deployment("dp_a", 5000);
    store.insert(&d).await.expect("insert");
    store
        .set_resources("dp_a", "c", "n", Status::Stopped)
        .await
        .expect("resources");
    assert_eq!(
        store.due(now_millis() + 1_000_000).await.expect("due"),
        vec![]
    );
}

#[tokio::test]
async fn deadlines_slide_with_interaction() {
    let (store, _dir) = store().await;
    let mut d = deployment("dp_a", 5000);
    d.pause_after_seconds = Some(60);
    d.delete_after_seconds = Some(120);
    (d.pause_at, d.delete_at) = d.deadlines();
    store.insert(&d).await.expect("insert");
    store
        .set_resources("dp_a", "c", "n", Status::Running)
        .await
        .expect("resources");
    let later = d.last_interaction_at + 10_000;
    store.touch("dp_a", later).await.expect("touch");
    let got = store.get("dp_a").await.expect("get").expect("row");
    assert_eq!(got.last_interaction_at, later);
    assert_eq!(got.pause_at, Some(later + 60_000));
    assert_eq!(got.delete_at, Some(later + 120_000));
    let due = store.due(later + 60_000).await.expect("due");
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].status, Status::Running);
}
