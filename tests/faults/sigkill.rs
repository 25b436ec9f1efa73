//! SIGKILL with creates and deletes in flight, then a restart on the same database and
//! instance: reconciliation leaves Docker, the host and the rows in agreement, and every
//! answer the client saw still holds.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc;

use mcp_test_support::docker::{labelled, passwd_entry};
use mcp_test_support::fixture::test_image;
use mcp_test_support::leftovers::{deployment_networks, deployment_users, rows};
use mcp_test_support::{Api, eventually, json_of};

use crate::scenario::{self, echo, summary, until_ready};

/// Deployments made before the fault, all of which are then deleted.
const PRE: usize = 20;
/// Creates fired together with the deletes.
const CREATES: usize = 20;
/// Answers of each kind (creates, deletes) awaited before the kill.
const KILL_AFTER: usize = 2;

/// What the client saw of one request.
#[derive(Debug)]
enum Seen {
    /// `POST` answered: status and body.
    Created(u16, Value),
    /// `DELETE` of the id answered: status and body.
    Deleted(String, u16, Value),
    /// The connection broke before a whole answer (the kill): which request.
    Lost(&'static str),
}

async fn fire_create(api: Api, body: Value, tx: mpsc::UnboundedSender<Seen>) {
    let sent = api
        .authed(reqwest::Method::POST, "/api/deployment")
        .json(&body)
        .send()
        .await;
    let seen = match sent {
        Ok(resp) => match read(resp).await {
            Ok((status, json)) => Seen::Created(status, json),
            Err(_) => Seen::Lost("create"),
        },
        Err(_) => Seen::Lost("create"),
    };
    let _ = tx.send(seen);
}

async fn fire_delete(api: Api, id: String, tx: mpsc::UnboundedSender<Seen>) {
    let sent = api
        .authed(reqwest::Method::DELETE, &format!("/api/deployment/{id}"))
        .send()
        .await;
    let seen = match sent {
        Ok(resp) => match read(resp).await {
            Ok((status, json)) => Seen::Deleted(id, status, json),
            Err(_) => Seen::Lost("delete"),
        },
        Err(_) => Seen::Lost("delete"),
    };
    let _ = tx.send(seen);
}

/// Status and JSON of a whole answer; an error when the body was cut off.
async fn read(resp: reqwest::Response) -> Result<(u16, Value), String> {
    let status = resp.status().as_u16();
    let text = resp.text().await.map_err(|e| e.to_string())?;
    let json = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
    Ok((status, json))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_creates_and_deletes_in_flight_loses_nothing() {
    let _turn = scenario::one_at_a_time().await;
    let started = Instant::now();
    let image = test_image().await;
    let body = json!({"image": image, "transport": {"type": "stdio"}});
    let mut app = scenario::ready_server("kill", 0).await;

    let pre: Vec<String> = futures_util::future::join_all((0..PRE).map(|_| async {
        let resp = app
            .authed(reqwest::Method::POST, "/api/deployment")
            .json(&body)
            .send()
            .await
            .expect("create request");
        let (status, json) = json_of(resp).await;
        assert_eq!(status, 201, "pre-create: {json}");
        json["deployment"]["id"].as_str().expect("id").to_owned()
    }))
    .await;
    let pre_time = started.elapsed();

    // The fault: all requests at once, SIGKILL as soon as a few have been answered.
    let (tx, mut rx) = mpsc::unbounded_channel();
    for _ in 0..CREATES {
        tokio::spawn(fire_create((*app).clone(), body.clone(), tx.clone()));
    }
    for id in &pre {
        tokio::spawn(fire_delete((*app).clone(), id.clone(), tx.clone()));
    }
    drop(tx);
    let mut seen = Vec::new();
    let creates = |seen: &[Seen]| {
        seen.iter()
            .filter(|s| matches!(s, Seen::Created(..)))
            .count()
    };
    let deletes = |seen: &[Seen]| {
        seen.iter()
            .filter(|s| matches!(s, Seen::Deleted(..)))
            .count()
    };
    while creates(&seen) < KILL_AFTER || deletes(&seen) < KILL_AFTER {
        seen.push(rx.recv().await.expect("an answer before the kill"));
    }
    app.kill();
    let answered_before_kill = seen.len();
    while let Some(s) = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("every request ends once the server is dead")
    {
        seen.push(s);
    }
    assert_eq!(seen.len(), CREATES + PRE);

    let mut created = Vec::new();
    let mut deleted = Vec::new();
    let (mut lost_creates, mut lost_deletes) = (0, 0);
    for s in &seen {
        match s {
            Seen::Created(status, json) => {
                assert_eq!(*status, 201, "a create answered: {json}");
                created.push(
                    json["deployment"]["id"]
                        .as_str()
                        .expect("id of a create")
                        .to_owned(),
                );
            }
            Seen::Deleted(id, status, json) => {
                assert_eq!(*status, 200, "the delete of {id} answered: {json}");
                deleted.push(id.clone());
            }
            Seen::Lost("create") => lost_creates += 1,
            Seen::Lost(_) => lost_deletes += 1,
        }
    }
    let lost = lost_creates + lost_deletes;
    assert!(
        lost > 0,
        "the kill must hit requests in flight (all {} were answered)",
        seen.len()
    );

    // Restart on the same database and instance; ready means reconciled.
    let sweeps_before = app.log_lines("start-up sweep done").len();
    app.restart().await.unwrap_or_else(|e| panic!("{e:#}"));
    let ready_after = until_ready(&app).await;
    // Docker and useradd may finish what the killed run asked after reconciliation looked;
    // the sweep that follows start-up removes it.
    eventually("the sweep after start-up", Duration::from_secs(60), || {
        let swept = app.log_lines("start-up sweep done").len() > sweeps_before;
        async move { swept.then_some(()) }
    })
    .await;

    let rows = rows(&app.db_path).await;
    for (id, status, _) in &rows {
        assert!(
            status == "running" || status == "stopped",
            "row {id} is {status} after reconciliation"
        );
    }
    let row_ids: HashSet<&str> = rows.iter().map(|(id, _, _)| id.as_str()).collect();
    let usernames: HashSet<&str> = rows.iter().map(|(_, _, u)| u.as_str()).collect();

    // Nothing of the instance without a row.
    let networks = deployment_networks(&app.instance, &app.db_path).await;
    for (kind, labelled) in [
        ("container", labelled("container", &app.instance)),
        ("network", networks.clone()),
    ] {
        for dep in labelled {
            assert!(
                row_ids.contains(dep.as_str()),
                "a {kind} of deployment {dep} has no row"
            );
        }
    }
    for user in deployment_users(&app.instance, &app.db_path).await {
        assert!(
            usernames.contains(user.as_str()),
            "host user {user} has no row"
        );
    }
    // No row without its container, network and user.
    let containers: BTreeSet<String> = labelled("container", &app.instance).into_iter().collect();
    let networks: BTreeSet<String> = networks.into_iter().collect();
    for (id, _, username) in &rows {
        assert!(containers.contains(id), "row {id} has no container");
        assert!(networks.contains(id), "row {id} has no network");
        assert!(
            passwd_entry(username).is_some(),
            "row {id} has no host user"
        );
    }
    // The API shows exactly the rows.
    let listed: HashSet<String> = app.list_ids().await.into_iter().collect();
    assert_eq!(
        listed,
        row_ids
            .iter()
            .map(|s| s.to_string())
            .collect::<HashSet<_>>()
    );

    // Every 201 still works; every 200 stays gone.
    for id in &created {
        let (status, body) = app.get(id).await;
        assert_eq!(
            status, 200,
            "deployment {id} created with 201 is gone: {body}"
        );
        let answer = echo(&app, id, "after the kill").await;
        assert_eq!(
            answer.as_deref(),
            Ok("after the kill"),
            "deployment {id} created with 201 does not answer"
        );
    }
    for id in &deleted {
        assert_eq!(
            app.get(id).await.0,
            404,
            "deployment {id} deleted with 200 is back"
        );
        assert!(!row_ids.contains(id.as_str()));
        assert!(!containers.contains(id) && !networks.contains(id));
    }

    let survivors = rows.len();
    let reconciled = app
        .log_lines("reconciliation done")
        .last()
        .and_then(|l| l.split_once("Reconciled "))
        .map(|(_, report)| {
            // The counts; the ids of the restarted stdio servers are left out.
            let counts = report.split(", stdio_to_restart").next().unwrap_or(report);
            counts.trim_start_matches("{ ").to_owned()
        })
        .expect("the restart logged its reconciliation");
    app.teardown().await;
    summary(&format!(
        "faults/sigkill: {PRE} pre-created in {:.1} s; SIGKILL once {answered_before_kill} of \
         {} requests had answers ({} creates 201, {} deletes 200; cut off: {lost_creates} \
         creates, {lost_deletes} deletes); restart ready in {:.1} s (reconciled {reconciled}); \
         {survivors} rows, all consistent; the {} deployments created with 201 answered \
         tools/call; total {:.1} s",
        pre_time.as_secs_f64(),
        CREATES + PRE,
        created.len(),
        deleted.len(),
        ready_after.as_secs_f64(),
        created.len(),
        started.elapsed().as_secs_f64()
    ));
}
