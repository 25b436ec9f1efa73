//! Deployment life cycle against the real daemon: the sandbox Docker actually runs, deletion,
//! `autoStart: false`, all-or-nothing creates, concurrent creates.

use std::time::Duration;

use serde_json::{Value, json};

use mcp_test_support::docker::{exists, inspect, network_owner, passwd_entry};
use mcp_test_support::fixture::test_image;
use mcp_test_support::{Options, TestApp, eventually};

fn s(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
}

/// A network holder of deployment `id`: a pause program under runc with nothing it could
/// use, running on the deployment's network.
fn assert_hardened_holder(holder: &Value, id: &str) {
    let hc = &holder["HostConfig"];
    assert_eq!(holder["Name"], format!("/mcp-runner-{id}-netns"));
    assert_eq!(hc["Runtime"], "runc");
    assert_eq!(holder["Config"]["User"], "65534:65534");
    assert_eq!(holder["Config"]["Entrypoint"], json!(["/netns-holder"]));
    assert_eq!(hc["CapDrop"], json!(["ALL"]));
    assert_eq!(hc["SecurityOpt"], json!(["no-new-privileges:true"]));
    assert_eq!(hc["ReadonlyRootfs"], true);
    assert_eq!(hc["Memory"], 8 << 20);
    assert_eq!(hc["PidsLimit"], 4);
    assert_eq!(holder["Config"]["Labels"]["mcp-runner.deployment"], id);
    assert_eq!(holder["Config"]["Labels"]["mcp-runner.role"], "netns");
    assert_eq!(holder["State"]["Running"], true);
}

#[tokio::test]
async fn create_runs_a_hardened_sandbox_and_delete_removes_everything() {
    let app = TestApp::spawn().await;
    let d = app
        .create_fixture(json!({
            "maxMemory": 128,
            "maxCpus": 0.5,
            "env": {"FIXTURE_NAME": "hardened"},
            "metadata": {"owner": "team-a", "n": [1, 2]},
            "pauseAfterSeconds": 3600,
            "deleteAfterSeconds": 7200
        }))
        .await;

    // The contract's shape.
    let id = s(&d["id"]).to_owned();
    assert!(id.starts_with("dp_") && id.len() == 27, "{id}");
    assert_eq!(d["status"], "running");
    assert_eq!(d["image"], test_image().await);
    assert_eq!(d["max_memory"], 128);
    assert_eq!(d["max_cpus"], 0.5);
    assert_eq!(d["metadata"], json!({"owner": "team-a", "n": [1, 2]}));
    assert_eq!(d["transport"], json!({"type": "stdio"}));
    assert_eq!(d["pause_after_seconds"], 3600);
    assert_eq!(d["delete_after_seconds"], 7200);
    for key in ["pause_at", "delete_at", "created_at", "last_interaction_at"] {
        assert!(
            s(&d[key]).ends_with('Z'),
            "{key} is ISO-8601 UTC: {}",
            d[key]
        );
    }
    assert!(d.get("env").is_none(), "env values are never returned");
    let uid = d["uid"].as_u64().expect("uid");
    let gid = d["gid"].as_u64().expect("gid");
    let username = s(&d["username"]).to_owned();
    let container_id = s(&d["container_id"]).to_owned();
    let network_id = s(&d["network_id"]).to_owned();

    // What Docker really runs.
    let c = inspect("container", &container_id);
    let hc = &c["HostConfig"];
    assert_eq!(hc["Runtime"], "runsc");
    assert_eq!(c["Config"]["User"], format!("{uid}:{gid}"));
    assert_eq!(hc["CapDrop"], json!(["ALL"]));
    assert!(
        hc["SecurityOpt"]
            .as_array()
            .expect("SecurityOpt")
            .iter()
            .any(|o| s(o).starts_with("no-new-privileges")),
        "{}",
        hc["SecurityOpt"]
    );
    assert_eq!(hc["Memory"], 128 * 1024 * 1024);
    assert_eq!(hc["MemorySwap"], 128 * 1024 * 1024);
    assert_eq!(hc["NanoCpus"], 500_000_000);
    assert_eq!(hc["PidsLimit"], 256 * 8 + 256);
    assert_eq!(
        hc["Ulimits"],
        json!([{"Name": "nproc", "Soft": 256, "Hard": 256}])
    );
    assert_eq!(hc["Init"], true);
    // A stdio server's stdout is the protocol: Docker keeps no log of it.
    assert_eq!(hc["LogConfig"]["Type"], "none");
    // On its network: directly, or (a first start that took a spare) in the namespace of
    // the spare's network holder, which is on the network, hardened, and holds the DNS
    // settings.
    let owner = network_owner(&c);
    if owner["Id"] != c["Id"] {
        assert_eq!(hc["Dns"], Value::Null);
        assert_hardened_holder(&owner, &id);
    }
    assert_eq!(owner["HostConfig"]["Dns"], json!(["8.8.8.8", "1.1.1.1"]));
    assert_eq!(owner["HostConfig"]["NetworkMode"], network_id);
    assert_eq!(c["Config"]["OpenStdin"], true);
    assert!(
        c["Config"]["Env"]
            .as_array()
            .expect("Env")
            .contains(&json!("FIXTURE_NAME=hardened"))
    );
    let labels = &c["Config"]["Labels"];
    assert_eq!(labels["managed-by"], "mcp-runner");
    assert_eq!(labels["mcp-runner.instance"], app.instance.as_str());
    assert_eq!(labels["mcp-runner.deployment"], id.as_str());
    assert_eq!(c["State"]["Running"], true);

    let n = inspect("network", &network_id);
    assert_eq!(n["Driver"], "bridge");
    assert_eq!(
        n["Options"]["com.docker.network.bridge.enable_icc"],
        "false"
    );
    assert_eq!(n["Labels"]["mcp-runner.deployment"], id.as_str());
    assert_eq!(n["Labels"]["mcp-runner.instance"], app.instance.as_str());

    // The host user: a system account without a home or a login shell.
    let entry = passwd_entry(&username).expect("host user exists");
    assert_eq!(entry[2], uid.to_string());
    assert_eq!(entry[3], gid.to_string());
    assert!(
        entry[6].ends_with("nologin") || entry[6] == "/bin/false",
        "{entry:?}"
    );
    assert!(!std::path::Path::new(&entry[5]).join(".profile").exists());

    // The server's stderr reaches the deployment (saved at a bounded rate).
    let stderr = eventually("stderr of the fixture", Duration::from_secs(20), || async {
        let (_, body) = app.get(&id).await;
        let text = body["deployment"]["stderr"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        (!text.is_empty()).then_some(text)
    })
    .await;
    assert!(stderr.len() <= 64 * 1024);

    // get and list agree with create.
    let (status, got) = app.get(&id).await;
    assert_eq!(status, 200);
    assert_eq!(got["deployment"]["container_id"], container_id.as_str());
    let listed = app.list().await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());

    // Delete removes container, network, user and row; a second delete is 404.
    let (status, body) = app.delete(&id).await;
    assert_eq!(
        (status, body),
        (200, json!({"message": "Deployment deleted successfully"}))
    );
    assert!(!exists("container", &container_id), "container removed");
    assert!(!exists("network", &network_id), "network removed");
    assert!(passwd_entry(&username).is_none(), "host user removed");
    assert_eq!(app.get(&id).await.0, 404);
    assert_eq!(app.delete(&id).await.0, 404);
    app.teardown().await;
}

#[tokio::test]
async fn auto_start_false_creates_a_stopped_container() {
    let app = TestApp::spawn().await;
    let d = app.create_fixture(json!({"autoStart": false})).await;
    assert_eq!(d["status"], "stopped");
    let c = inspect("container", s(&d["container_id"]));
    assert_eq!(c["State"]["Running"], false);
    assert_eq!(c["State"]["Status"], "created");
    // Server defaults apply when no limits are asked for (the test server's 256 MB).
    assert_eq!(d["max_memory"], 256);
    assert_eq!(c["HostConfig"]["Memory"], 256 * 1024 * 1024);
    app.teardown().await;
}

#[tokio::test]
async fn a_create_that_fails_part_way_leaves_nothing_behind() {
    // An image that is neither local nor pullable (no registry is reachable here).
    let app = TestApp::spawn().await;
    test_image().await;
    let (status, body) = app
        .create(&json!({"image": "mcp-runner-test/absent:never", "transport": {"type": "stdio"}}))
        .await;
    assert!(
        status == 400 || status == 502 || status == 503,
        "{status} {body}"
    );
    assert!(
        s(&body["message"]).contains("mcp-runner-test/absent:never"),
        "{body}"
    );
    assert!(app.list().await.is_empty());
    app.teardown().await;

    // A runtime Docker does not know: the network and user are made, the container is not.
    let app = TestApp::spawn_with(Options {
        args: vec!["--docker-runtime".into(), "no-such-runtime".into()],
        ..Options::default()
    })
    .await;
    let (status, body) = app
        .create(&json!({"image": test_image().await, "transport": {"type": "stdio"}}))
        .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["statusCode"], 502);
    assert!(
        s(&body["message"]).to_lowercase().contains("runtime"),
        "{body}"
    );
    assert!(app.list().await.is_empty());
    app.teardown().await;
}

#[tokio::test]
async fn concurrent_creates_get_distinct_uids_and_users() {
    let app = TestApp::spawn().await;
    test_image().await;
    let creates = (0..6).map(|_| app.create_fixture(json!({"autoStart": false})));
    let made = futures_util::future::join_all(creates).await;
    let mut uids: Vec<u64> = made
        .iter()
        .map(|d| d["uid"].as_u64().expect("uid"))
        .collect();
    uids.sort_unstable();
    uids.dedup();
    assert_eq!(uids.len(), 6, "every deployment has its own UID");
    for d in &made {
        assert!(passwd_entry(s(&d["username"])).is_some());
    }
    assert_eq!(app.list().await.len(), 6);
    app.teardown().await;
}

#[tokio::test]
async fn more_deployments_than_dockers_default_address_pools_hold() {
    // Docker's default pools give about 30 bridge networks; the peer's 31st create failed.
    let app = TestApp::spawn().await;
    test_image().await;
    let mut made = Vec::new();
    for _ in 0..5 {
        let batch = (0..8).map(|_| app.create_fixture(json!({"autoStart": false})));
        made.extend(futures_util::future::join_all(batch).await);
    }
    let mut subnets: Vec<String> = made
        .iter()
        .map(|d| {
            let n = inspect("network", s(&d["network_id"]));
            s(&n["IPAM"]["Config"][0]["Subnet"]).to_owned()
        })
        .collect();
    subnets.sort();
    subnets.dedup();
    assert_eq!(subnets.len(), 40, "40 networks, each on its own subnet");
    app.teardown().await;
}

#[tokio::test]
async fn a_subnet_held_by_another_docker_network_is_skipped() {
    // A pool of two /28s, one of them taken by a network mcp-runner did not make.
    let held = "10.250.17.0/28";
    let foreign = format!("foreign-{}", &mcp_runner::deployments::new_id()[3..15]);
    mcp_test_support::docker::docker(&["network", "create", "--subnet", held, &foreign]);
    let app = TestApp::spawn_with(Options {
        // No firewall rule for this throwaway pool: rules outlive the server.
        args: vec![
            "--network-pool".into(),
            "10.250.17.0/27".into(),
            "--firewall".into(),
            "off".into(),
        ],
        ..Options::default()
    })
    .await;
    test_image().await;

    let d = app.create_fixture(json!({"autoStart": false})).await;
    let n = inspect("network", s(&d["network_id"]));
    assert_eq!(n["IPAM"]["Config"][0]["Subnet"], "10.250.17.16/28");

    // Nothing is left free: a clear 503 naming the pool, and nothing half made.
    let (status, body) = app
        .create(&json!({"image": test_image().await, "transport": {"type": "stdio"}}))
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("10.250.17.0/27"),
        "{body}"
    );
    assert_eq!(app.list().await.len(), 1);

    assert_eq!(app.delete(s(&d["id"])).await.0, 200);
    app.teardown().await;
    mcp_test_support::docker::docker(&["network", "rm", &foreign]);
}

/// The networks of `instance` made ahead of their deployments, with full ids.
fn made_ahead(instance: &str) -> Vec<String> {
    mcp_test_support::docker::made_ahead_networks_of(instance)
        .iter()
        .map(|n| s(&inspect("network", n)["Id"]).to_owned())
        .collect()
}

#[tokio::test]
async fn creates_take_networks_made_ahead_and_the_pool_refills() {
    let app = TestApp::spawn_with(Options {
        args: vec!["--network-spares".into(), "2".into()],
        ..Options::default()
    })
    .await;
    test_image().await;
    let instance = app.instance.clone();
    let (spare_networks, spare_users) =
        eventually("two spares made", Duration::from_secs(60), || {
            let n = made_ahead(&instance);
            let users = mcp_test_support::docker::users_of(&instance);
            async move { (n.len() == 2 && users.len() == 2).then_some((n, users)) }
        })
        .await;
    // Each spare's user is named after the id its network carries.
    let mut paired: Vec<String> = mcp_test_support::docker::made_ahead_deployments_of(&instance)
        .iter()
        .map(|id| format!("mcp-{}", &id[3..]))
        .collect();
    let mut users = spare_users.clone();
    paired.sort();
    users.sort();
    assert_eq!(paired, users);

    // The create takes one: the network already carries the deployment's name and labels,
    // with inter-container traffic off, the host user exists, and the container runs on the
    // network as that user.
    let d = app.create_fixture(json!({})).await;
    let id = s(&d["id"]).to_owned();
    let network_id = s(&d["network_id"]).to_owned();
    assert!(
        spare_networks.contains(&network_id),
        "{network_id} not in {spare_networks:?}"
    );
    let username = s(&d["username"]).to_owned();
    assert!(
        spare_users.contains(&username),
        "{username} not in {spare_users:?}"
    );
    let uid = d["uid"].as_u64().expect("uid").to_string();
    let entry = passwd_entry(&username).expect("the spare's user exists");
    assert_eq!(
        (entry[2].as_str(), entry[3].as_str()),
        (uid.as_str(), uid.as_str())
    );
    let net = inspect("network", &network_id);
    assert_eq!(net["Name"], format!("mcp-runner-{id}"));
    assert_eq!(net["Labels"]["mcp-runner.deployment"], id.as_str());
    assert_eq!(
        net["Options"]["com.docker.network.bridge.enable_icc"],
        "false"
    );
    let container = inspect("container", s(&d["container_id"]));
    assert_eq!(container["Config"]["User"], format!("{uid}:{uid}"));
    assert!(
        network_owner(&container)["NetworkSettings"]["Networks"]
            .as_object()
            .is_some_and(|n| n.values().any(|v| v["NetworkID"] == network_id.as_str())),
        "the container is on the network made ahead"
    );
    let client = mcp_test_support::mcp::Client::streamable(&app.mcp_url(&id), "spare").await;
    assert_eq!(
        client.call("add", json!({"a": 2, "b": 3})).await.as_deref(),
        Ok("5")
    );

    // Another is made in its place, and the metrics count the ready ones.
    eventually("the pool refilled", Duration::from_secs(60), || {
        let n = made_ahead(&instance).len();
        let users = mcp_test_support::docker::users_of(&instance).len();
        async move { (n == 3 && users == 3).then_some(()) }
    })
    .await;
    // (a spare is ready once both its parts are made and recorded)
    eventually(
        "the metrics to count two spares",
        Duration::from_secs(60),
        || async {
            let metrics = app
                .http
                .get(format!("{}/metrics", app.url))
                .send()
                .await
                .expect("metrics")
                .text()
                .await
                .expect("metrics text");
            metrics
                .contains("\nmcp_runner_spare_networks 2\n")
                .then_some(())
        },
    )
    .await;

    // Deleting the deployment removes its network; stopping mcp-runner removes the spares.
    assert_eq!(app.delete(&id).await.0, 200);
    assert!(!mcp_test_support::docker::exists("network", &network_id));
    app.teardown().await;
}

#[tokio::test]
async fn networks_made_ahead_by_an_earlier_run_are_removed_at_start() {
    let app = TestApp::spawn_with(Options {
        args: vec!["--network-spares".into(), "0".into()],
        ..Options::default()
    })
    .await;
    let (instance, db_path, dir) = app.stop().await;
    // What a killed mcp-runner leaves: a spare it had made, named and labelled for a
    // deployment that never came.
    ghost_network(&instance, &mcp_runner::deployments::new_id(), true);
    assert_eq!(made_ahead(&instance).len(), 1);

    let app = TestApp::spawn_with(Options {
        args: vec!["--network-spares".into(), "0".into()],
        reuse: Some((instance.clone(), db_path)),
        ..Options::default()
    })
    .await;
    assert_eq!(made_ahead(&instance), Vec::<String>::new());
    app.teardown().await;
    drop(dir);
}

/// Makes a network labelled for deployment `ghost` of `instance`, as a request of a killed
/// mcp-runner that Docker finished late would (made ahead when `made_ahead`).
fn ghost_network(instance: &str, ghost: &str, made_ahead: bool) -> String {
    let instance_label = format!("mcp-runner.instance={instance}");
    let deployment_label = format!("mcp-runner.deployment={ghost}");
    let name = format!("mcp-runner-{ghost}");
    let mut args = vec![
        "network",
        "create",
        "--label",
        "managed-by=mcp-runner",
        "--label",
        &instance_label,
        "--label",
        &deployment_label,
    ];
    if made_ahead {
        args.extend(["--label", "mcp-runner.made-ahead=true"]);
    }
    args.push(&name);
    mcp_test_support::docker::docker(&args).trim().to_owned()
}

#[tokio::test]
async fn what_appears_without_a_row_is_swept_while_serving_and_at_stop() {
    let app = TestApp::spawn_with(Options {
        args: vec!["--network-spares".into(), "1".into()],
        ..Options::default()
    })
    .await;
    let instance = app.instance.clone();
    let d = app.create_fixture(json!({"autoStart": false})).await;
    eventually("a network made ahead", Duration::from_secs(60), || {
        let n = made_ahead(&instance).len();
        // The deployment's own network may have been made ahead too.
        async move { (n >= 1).then_some(()) }
    })
    .await;
    let spares_before = made_ahead(&instance);
    // The server's own sweep after start-up has run; the next is minutes away.
    app.first_sweep_done().await;

    // A network of no deployment and a spare of no run appear after start-up.
    let orphan = ghost_network(&instance, &mcp_runner::deployments::new_id(), false);
    let stray = ghost_network(&instance, &mcp_runner::deployments::new_id(), true);
    let report = app.sweep().await;
    assert_eq!(
        (report.orphan_places, report.spare_places),
        (1, 1),
        "{report:?}"
    );
    assert!(!mcp_test_support::docker::exists("network", &orphan));
    assert!(!mcp_test_support::docker::exists("network", &stray));
    // What the server uses stays: the deployment and its network, and its own spare.
    assert!(mcp_test_support::docker::exists(
        "network",
        s(&d["network_id"])
    ));
    assert!(mcp_test_support::docker::exists(
        "container",
        s(&d["container_id"])
    ));
    for n in spares_before {
        assert!(
            mcp_test_support::docker::exists("network", &n),
            "{n} was removed"
        );
    }
    assert_eq!(
        app.sweep().await,
        mcp_runner::deployments::Reconciled::default()
    );

    // One more appears; stopping sweeps it too, and the deployment survives the stop.
    let late = ghost_network(&instance, &mcp_runner::deployments::new_id(), true);
    let (instance, db_path, dir) = app.stop().await;
    assert!(!mcp_test_support::docker::exists("network", &late));
    assert!(mcp_test_support::docker::exists(
        "network",
        s(&d["network_id"])
    ));
    let app = TestApp::spawn_with(Options {
        reuse: Some((instance, db_path)),
        ..Options::default()
    })
    .await;
    assert_eq!(app.list().await.len(), 1);
    app.teardown().await;
    drop(dir);
}

/// A deployment created with `autoStart` (pausing after 3 s idle) whose first container runs in
/// the namespace of its spare's network holder, checked, and answering a call; returns the
/// deployment, its container and the holder (as inspected).
async fn deployment_in_a_holder(app: &TestApp) -> (Value, Value, Value) {
    // The spares are made in the background after start-up: wait for one with its holder.
    eventually(
        "a spare network holder",
        Duration::from_secs(30),
        || async {
            let filter = format!("label=mcp-runner.instance={}", app.instance);
            let holders = mcp_test_support::docker::docker(&[
                "ps",
                "-q",
                "--filter",
                filter.as_str(),
                "--filter",
                "label=mcp-runner.role=netns",
            ]);
            (!holders.trim().is_empty()).then_some(())
        },
    )
    .await;
    let d = app
        .create_fixture(json!({"pauseAfterSeconds": 3, "deleteAfterSeconds": 3600}))
        .await;
    let id = s(&d["id"]);
    let network_id = s(&d["network_id"]);
    let container = inspect("container", s(&d["container_id"]));
    let holder = network_owner(&container);
    assert_ne!(
        holder["Id"], container["Id"],
        "the first start joins the holder"
    );
    assert_hardened_holder(&holder, id);
    assert!(
        holder["NetworkSettings"]["Networks"]
            .as_object()
            .is_some_and(|n| n.values().any(|v| v["NetworkID"] == network_id)),
        "the holder is on the deployment's network"
    );
    let client = mcp_test_support::mcp::Client::streamable(&app.mcp_url(id), "first").await;
    assert_eq!(
        client.call("add", json!({"a": 1, "b": 2})).await.as_deref(),
        Ok("3")
    );
    client.close().await;
    (d, container, holder)
}

/// Waits for the reaper's pause of `id` to be over: the row says `stopped` and the network
/// holder `holder` no longer runs (stopped or removed). The row alone is not enough: the
/// stderr follower records `stopped` as soon as the container's stream ends, while the pause
/// still deals with the holder. Returns the deployment as the API shows it then.
async fn paused(app: &TestApp, id: &str, holder: &str) -> Value {
    eventually("the pause", Duration::from_secs(30), || async {
        let (status, body) = app.get(id).await;
        (status == 200
            && body["deployment"]["status"] == "stopped"
            && !mcp_test_support::docker::running(holder))
        .then(|| body["deployment"].clone())
    })
    .await
}

/// Calls a tool on `id`, which starts it.
async fn call_starts(app: &TestApp, id: &str) {
    let client = mcp_test_support::mcp::Client::streamable(&app.mcp_url(id), "again").await;
    assert_eq!(
        client.call("add", json!({"a": 2, "b": 2})).await.as_deref(),
        Ok("4")
    );
    client.close().await;
}

/// The first container wrote nothing to its file system: the pause replaces it (same name,
/// user, image and runtime) by one on the deployment's network, and removes the holder; the
/// next request starts the new one; the delete leaves nothing.
#[tokio::test]
async fn a_pause_moves_a_container_that_wrote_nothing_off_its_network_holder() {
    let app = TestApp::spawn().await;
    let (d, first, holder) = deployment_in_a_holder(&app).await;
    let id = s(&d["id"]);
    let after = paused(&app, id, s(&holder["Id"])).await;
    assert!(
        !exists("container", s(&holder["Id"])),
        "the holder is removed"
    );
    assert!(
        !exists("container", s(&first["Id"])),
        "the first container is replaced"
    );
    let second = inspect("container", s(&after["container_id"]));
    assert_eq!(second["State"]["Running"], false);
    assert_eq!(second["HostConfig"]["NetworkMode"], s(&d["network_id"]));
    assert_eq!(second["HostConfig"]["Dns"], json!(["8.8.8.8", "1.1.1.1"]));
    assert_eq!(second["HostConfig"]["Runtime"], "runsc");
    assert_eq!(second["Config"]["User"], first["Config"]["User"]);
    assert_eq!(second["Image"], first["Image"]);
    assert_eq!(second["Name"], first["Name"]);

    call_starts(&app, id).await;
    assert_eq!(
        inspect("container", s(&after["container_id"]))["State"]["Running"],
        true
    );
    assert_eq!(app.delete(id).await.0, 200);
    let (instance, db, _dir) = app.stop().await;
    mcp_test_support::assert_nothing_left(&instance, &db).await;
}

/// The first container has files of its own: the pause keeps it and stops its holder with
/// it; the next request starts the holder, then the same container, files included.
#[tokio::test]
async fn a_pause_keeps_a_container_with_files_and_stops_its_network_holder() {
    let app = TestApp::spawn().await;
    let (d, first, holder) = deployment_in_a_holder(&app).await;
    let id = s(&d["id"]);
    let marker = std::env::temp_dir().join(format!("holder-marker-{id}"));
    std::fs::write(&marker, "kept").expect("write the marker");
    let into = format!("{}:/marker", s(&first["Id"]));
    mcp_test_support::docker::docker(&["cp", marker.to_str().expect("utf-8 path"), &into]);
    std::fs::remove_file(&marker).expect("remove the marker");

    let after = paused(&app, id, s(&holder["Id"])).await;
    assert_eq!(after["container_id"], first["Id"], "the same container");
    assert_eq!(
        inspect("container", s(&first["Id"]))["State"]["Running"],
        false
    );
    assert_eq!(
        inspect("container", s(&holder["Id"]))["State"]["Running"],
        false
    );

    call_starts(&app, id).await;
    assert_eq!(
        inspect("container", s(&holder["Id"]))["State"]["Running"],
        true
    );
    assert_eq!(
        inspect("container", s(&first["Id"]))["State"]["Running"],
        true
    );
    let diff = mcp_test_support::docker::docker(&["diff", s(&first["Id"])]);
    assert!(diff.lines().any(|l| l == "A /marker"), "{diff}");
    assert_eq!(app.delete(id).await.0, 200);
    let (instance, db, _dir) = app.stop().await;
    mcp_test_support::assert_nothing_left(&instance, &db).await;
}
