//! Many and concurrent creates and deletes: no descriptor, thread or memory creeps up, every
//! answer is right, every deployment gets its own ids, and nothing is left afterwards.

use std::collections::HashSet;
use std::time::Instant;

use futures_util::StreamExt;
use serde_json::{Value, json};

use mcp_test_support::docker::{subnets, workload_containers_of};
use mcp_test_support::leftovers::{deployment_networks, deployment_users};
use mcp_test_support::poll;
use mcp_test_support::row_count;
use mcp_test_support::server::child::{ChildServer, Usage};

use crate::scenario::{self, summary};

/// Cycles before the first measurement (pools, caches and thread pools fill up).
const WARM_UP: usize = 10;
/// Cycles between the two measurements.
const CYCLES: usize = 200;
/// Cycles run at once: the machine has two cores, runsc start-up is CPU-bound.
const LANES: usize = 4;
/// Allowed growth over `CYCLES` cycles.
const MAX_MORE_FDS: usize = 8;
const MAX_MORE_THREADS: usize = 4;
/// How long idle blocking-pool threads may take to exit (tokio keeps them 10 s).
const THREADS_SETTLE: std::time::Duration = std::time::Duration::from_secs(15);
const MAX_MORE_RSS_KIB: u64 = 16 * 1024;

/// Creates a running fixture deployment and deletes it again, `n` times, `LANES` at once.
async fn cycles(app: &ChildServer, n: usize) {
    futures_util::stream::iter(0..n)
        .for_each_concurrent(LANES, |_| async {
            let d = app.create_fixture(json!({"autoStart": true})).await;
            assert_eq!(d["status"], "running", "{d}");
            let id = d["id"].as_str().expect("id");
            let (status, body) = app.delete(id).await;
            assert_eq!(status, 200, "delete {id}: {body}");
        })
        .await;
}

fn usage_line(u: Usage) -> String {
    format!(
        "{} fds, {} threads, {:.1} MB RSS",
        u.fds,
        u.threads,
        u.rss_kib as f64 / 1024.0
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_delete_cycles_leak_nothing() {
    let _turn = scenario::one_at_a_time().await;
    let started = Instant::now();
    let app = scenario::ready_server("cycles", 3).await;

    cycles(&app, WARM_UP).await;
    let before = app.usage();
    let measuring = Instant::now();
    cycles(&app, CYCLES).await;
    let took = measuring.elapsed();
    // Threads of tokio's blocking pool (DNS, files, the database) outlive a burst by up to
    // 10 s of idleness before they exit: a leak is what is still there after that.
    let after = poll::settle(
        THREADS_SETTLE,
        std::time::Duration::from_millis(250),
        || std::future::ready(app.usage()),
        |u| u.threads <= before.threads + MAX_MORE_THREADS,
    )
    .await;

    assert!(
        after.fds <= before.fds + MAX_MORE_FDS,
        "open fds grew from {} to {} over {CYCLES} cycles",
        before.fds,
        after.fds
    );
    assert!(
        after.threads <= before.threads + MAX_MORE_THREADS,
        "threads grew from {} to {} over {CYCLES} cycles",
        before.threads,
        after.threads
    );
    assert!(
        after.rss_kib <= before.rss_kib + MAX_MORE_RSS_KIB,
        "RSS grew from {} KiB to {} KiB over {CYCLES} cycles",
        before.rss_kib,
        after.rss_kib
    );
    assert_only_spares_left(&app).await;
    // Stopping removes the spares too: nothing is left.
    app.teardown().await;
    summary(&format!(
        "faults/cycles: {CYCLES} create+delete cycles ({LANES} at a time) after {WARM_UP} warm-up \
         in {:.1} s ({:.2} s per cycle, {:.1} s each); before: {}; after: {}; nothing left; \
         total {:.1} s",
        took.as_secs_f64(),
        took.as_secs_f64() / CYCLES as f64,
        took.as_secs_f64() * LANES as f64 / CYCLES as f64,
        usage_line(before),
        usage_line(after),
        started.elapsed().as_secs_f64()
    ));
}

/// Asserts that the running server has no deployment left and nothing of one: no row,
/// container, network (its spares aside) or host user.
async fn assert_only_spares_left(app: &ChildServer) {
    assert!(app.list().await.is_empty());
    assert_eq!(row_count(&app.db_path).await, 0);
    assert!(workload_containers_of(&app.instance).is_empty());
    assert!(
        deployment_networks(&app.instance, &app.db_path)
            .await
            .is_empty()
    );
    assert!(
        deployment_users(&app.instance, &app.db_path)
            .await
            .is_empty()
    );
}

/// Number of deployments created and deleted at once.
const CONCURRENT: usize = 50;

fn distinct(made: &[Value], key: &str) -> usize {
    made.iter()
        .map(|d| d[key].to_string())
        .collect::<HashSet<_>>()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_creates_then_fifty_concurrent_deletes() {
    let _turn = scenario::one_at_a_time().await;
    let started = Instant::now();
    let app = scenario::ready_server("burst", 4).await;

    let creating = Instant::now();
    let made: Vec<Value> =
        futures_util::future::join_all((0..CONCURRENT).map(|_| app.create_fixture(json!({}))))
            .await;
    let create_time = creating.elapsed();
    for key in ["id", "uid", "username", "container_id", "network_id"] {
        assert_eq!(distinct(&made, key), CONCURRENT, "distinct {key}s");
    }
    let network_ids: Vec<String> = made
        .iter()
        .map(|d| d["network_id"].as_str().expect("network id").to_owned())
        .collect();
    let nets: HashSet<String> = subnets(&network_ids).into_iter().collect();
    assert_eq!(nets.len(), CONCURRENT, "distinct subnets: {nets:?}");
    let ids: HashSet<String> = made
        .iter()
        .map(|d| d["id"].as_str().expect("id").to_owned())
        .collect();
    let listed: HashSet<String> = app.list_ids().await.into_iter().collect();
    assert_eq!(
        listed, ids,
        "the list holds exactly the {CONCURRENT} created"
    );
    assert_eq!(workload_containers_of(&app.instance).len(), CONCURRENT);
    assert_eq!(
        deployment_networks(&app.instance, &app.db_path)
            .await
            .into_iter()
            .collect::<HashSet<_>>(),
        ids
    );
    assert_eq!(
        deployment_users(&app.instance, &app.db_path).await.len(),
        CONCURRENT
    );

    let deleting = Instant::now();
    let all: Vec<String> = ids.into_iter().collect();
    let api = &*app;
    futures_util::future::join_all(all.iter().map(|id| async move {
        let (status, body) = api.delete(id).await;
        assert_eq!(status, 200, "delete {id}: {body}");
    }))
    .await;
    let delete_time = deleting.elapsed();
    assert_only_spares_left(&app).await;
    app.teardown().await;
    summary(&format!(
        "faults/concurrent: {CONCURRENT} concurrent creates (all 201, distinct ids, UIDs, users, \
         subnets) in {:.1} s; {CONCURRENT} concurrent deletes (all 200) in {:.1} s; nothing \
         left; total {:.1} s",
        create_time.as_secs_f64(),
        delete_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    ));
}
