//! Hostile deployments: a memory hog, a fork bomb, a deployment probing its neighbours and the
//! host, and what a deployment's process is allowed to be. Each test drives the fixture's
//! stressor tools through the real bridge and checks the outcome with Docker's, the kernel's
//! and iptables' own tools. The figures measured are printed (`--nocapture` shows them).

use std::net::IpAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use mcp_test_support::docker::{docker, inspect, network_owner};
use mcp_test_support::mcp::Client;
use mcp_test_support::{Options, TestApp, eventually};

/// The pool every test server uses (the default `NETWORK_POOL`).
const POOL: &str = "10.240.0.0/16";

/// A pool outside [`POOL`] for the one server that runs without the firewall.
const UNGUARDED_POOL: &str = "10.243.0.0/24";

/// Create-body fields of a fixture serving Streamable HTTP on port 8000 of its container.
fn http_upstream(name: &str) -> Value {
    json!({"args": ["http", "--port", "8000"],
           "transport": {"type": "streamable_http", "endpoint": "http://localhost:8000/mcp"},
           "env": {"FIXTURE_NAME": name}})
}

fn id(d: &Value) -> &str {
    d["id"].as_str().expect("deployment id")
}

/// Runs `fut`, failing the test with `what` after `limit`.
async fn within<T>(limit: Duration, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {limit:?}"))
}

/// Calls a tool that answers JSON text.
async fn call_json(client: &Client, tool: &str, args: Value) -> Value {
    let text = within(Duration::from_secs(60), tool, client.call(tool, args))
        .await
        .unwrap_or_else(|e| panic!("{tool} failed: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{tool} answered {text:?}: {e}"))
}

/// Asks `client`'s deployment to open a TCP connection; returns the fixture's answer
/// `{"connected": bool, "connections": n, "error": …}`.
async fn connect(client: &Client, host: &str, port: u16) -> Value {
    call_json(
        client,
        "connect",
        json!({"host": host, "port": port, "timeout_ms": 1500}),
    )
    .await
}

/// Asks `client`'s deployment for `attempts` quick TCP connections, one after another (10 ms
/// each: a dropped SYN is not retried); returns how many were made and the last error.
async fn probe(client: &Client, host: &str, port: u16, attempts: u32) -> (u64, Value) {
    let answer = call_json(
        client,
        "connect",
        json!({"host": host, "port": port, "timeout_ms": 10, "attempts": attempts}),
    )
    .await;
    let made = answer["connections"].as_u64().expect("connections");
    (made, answer["error"].clone())
}

/// Creates and removes Docker networks one after another on a thread of its own until
/// stopped. Docker 20.10 deletes and re-inserts its jumps to `DOCKER-USER` and
/// `DOCKER-ISOLATION-STAGE-1` at the top of `FORWARD` each time it makes a network, so for a
/// few milliseconds then its isolation between bridge networks is gone.
struct NetworkChurn {
    stop: std::sync::Arc<AtomicBool>,
    made: std::sync::Arc<std::sync::atomic::AtomicU32>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NetworkChurn {
    /// Label of the churn's networks.
    const LABEL: &'static str = "mcp-runner-test=churn";

    fn start() -> Self {
        // A run killed half-way leaves its network, which holds the subnet.
        for leftover in docker(&[
            "network",
            "ls",
            "-q",
            "--filter",
            &format!("label={}", Self::LABEL),
        ])
        .split_whitespace()
        {
            docker(&["network", "rm", leftover]);
        }
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let made = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let thread = std::thread::spawn({
            let (stop, made) = (stop.clone(), made.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    let n = made.load(Ordering::Relaxed);
                    let name = format!("mcp-runner-test-churn-{}-{n}", std::process::id());
                    // A subnet outside every pool the tests use; one network at a time.
                    docker(&[
                        "network",
                        "create",
                        "--label",
                        Self::LABEL,
                        "--subnet",
                        "10.249.0.0/28",
                        &name,
                    ]);
                    made.fetch_add(1, Ordering::Relaxed);
                    docker(&["network", "rm", &name]);
                }
            }
        });
        Self {
            stop,
            made,
            thread: Some(thread),
        }
    }

    /// Networks made so far; fails the test when the churn has stopped on its own (a
    /// `docker network` command failed: its panic is printed above).
    fn made(&self) -> u32 {
        assert!(
            self.thread.as_ref().is_some_and(|t| !t.is_finished()),
            "the network churn stopped (see its panic above)"
        );
        self.made.load(Ordering::Relaxed)
    }

    /// Stops, waits for the last network's removal, and returns how many were made.
    fn stop(mut self) -> u32 {
        self.finish();
        self.made.load(Ordering::Relaxed)
    }

    fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
            && !std::thread::panicking()
        {
            panic!("the network churn failed (see its panic above)");
        }
    }
}

impl Drop for NetworkChurn {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Calls `echo` on `client` every 20 ms until `stop` is set; every answer must be right.
/// Returns the number of calls and the slowest one.
async fn keep_calling(client: &Client, label: &str, stop: &AtomicBool) -> (u32, Duration) {
    let (mut calls, mut slowest) = (0, Duration::ZERO);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let text = format!("{label} {calls}");
        let started = Instant::now();
        let got = within(
            Duration::from_secs(10),
            label,
            client.call("echo", json!({"text": text})),
        )
        .await;
        assert_eq!(got.as_deref(), Ok(text.as_str()), "{label}");
        slowest = slowest.max(started.elapsed());
        calls += 1;
    }
    (calls, slowest)
}

/// The container's address on its deployment network (its network holder's, when it runs
/// in one's namespace).
fn container_ip(container_id: &str) -> String {
    let c = network_owner(&inspect("container", container_id));
    let networks = c["NetworkSettings"]["Networks"]
        .as_object()
        .expect("networks");
    let (_, net) = networks.iter().next().expect("one network");
    net["IPAddress"].as_str().expect("IPAddress").to_owned()
}

/// The gateway (the host's address) of a deployment network.
fn gateway(network_id: &str) -> String {
    let n = inspect("network", network_id);
    n["IPAM"]["Config"][0]["Gateway"]
        .as_str()
        .expect("gateway")
        .to_owned()
}

/// The host's IPv4 addresses other than loopback and Docker's per-network bridges (those come
/// and go with other tests' deployments).
fn host_addresses() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .expect("run `ip` (iproute2)");
    assert!(out.status.success(), "ip -4 -o addr show failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let ifname = words.get(1)?;
            let at = words.iter().position(|w| *w == "inet")?;
            let addr = words.get(at + 1)?.split('/').next()?;
            let ip: IpAddr = addr.parse().ok()?;
            (!ip.is_loopback() && !ifname.starts_with("br-")).then(|| addr.to_owned())
        })
        .collect()
}

/// `iptables args…` (standard output).
fn iptables(args: &[&str]) -> String {
    let out = Command::new("iptables")
        .args(args)
        .output()
        .expect("run iptables");
    assert!(
        out.status.success(),
        "iptables {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `-A` lines of a chain of the filter table.
fn chain_rules(chain: &str) -> Vec<String> {
    table_rules("filter", chain)
}

/// The `-A` lines of a chain of `table`.
fn table_rules(table: &str, chain: &str) -> Vec<String> {
    iptables(&["-t", table, "-S", chain])
        .lines()
        .filter(|l| l.starts_with("-A "))
        .map(str::to_owned)
        .collect()
}

/// Packets dropped so far by the DROP rule of [`POOL`].
fn dropped_packets() -> u64 {
    iptables(&[
        "-L",
        mcp_runner::runtime::docker::firewall::CHAIN,
        "-v",
        "-x",
        "-n",
    ])
    .lines()
    .map(|l| l.split_whitespace().collect::<Vec<_>>())
    .find(|w| w.len() > 7 && w[2] == "DROP" && w[7] == POOL)
    .and_then(|w| w[0].parse().ok())
    .expect("the DROP rule of the pool is listed")
}

/// Asserts that the rules for [`POOL`] are in place, each exactly once and in its place.
fn assert_firewall_in_place() {
    let input = chain_rules("INPUT");
    let jump = "-A INPUT -j MCP-RUNNER-INPUT";
    assert_eq!(input.first().map(String::as_str), Some(jump), "{input:?}");
    assert_eq!(input.iter().filter(|r| *r == jump).count(), 1, "{input:?}");
    let chain = chain_rules(mcp_runner::runtime::docker::firewall::CHAIN);
    let head = [
        "-A MCP-RUNNER-INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        "-A MCP-RUNNER-INPUT -i lo -j RETURN",
    ];
    assert_eq!(
        chain.get(..2),
        Some(&head.map(String::from)[..]),
        "{chain:?}"
    );
    let drop = format!("-A MCP-RUNNER-INPUT -s {POOL} -j DROP");
    for rule in head.iter().map(|r| r.to_string()).chain([drop]) {
        assert_eq!(
            chain.iter().filter(|r| **r == rule).count(),
            1,
            "{rule} once in {chain:?}"
        );
    }

    // Forwarded traffic between deployment networks, in the mangle table.
    let forward = table_rules("mangle", "FORWARD");
    let jump = "-A FORWARD -j MCP-RUNNER-FORWARD";
    assert_eq!(
        forward.first().map(String::as_str),
        Some(jump),
        "{forward:?}"
    );
    assert_eq!(
        forward.iter().filter(|r| *r == jump).count(),
        1,
        "{forward:?}"
    );
    let chain = table_rules(
        "mangle",
        mcp_runner::runtime::docker::firewall::FORWARD_CHAIN,
    );
    let drop = format!("-A MCP-RUNNER-FORWARD -s {POOL} -d {POOL} -j DROP");
    assert_eq!(
        chain.iter().filter(|r| **r == drop).count(),
        1,
        "{drop} once in {chain:?}"
    );
}

/// The pids cgroup directory of a container (cgroup v1 or v2, cgroupfs or systemd driver).
fn pids_cgroup(container_id: &str) -> std::path::PathBuf {
    let candidates = [
        format!("/sys/fs/cgroup/pids/docker/{container_id}"),
        format!("/sys/fs/cgroup/pids/system.slice/docker-{container_id}.scope"),
        format!("/sys/fs/cgroup/docker/{container_id}"),
        format!("/sys/fs/cgroup/system.slice/docker-{container_id}.scope"),
    ];
    candidates
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.join("pids.current").exists())
        .unwrap_or_else(|| panic!("no pids cgroup of the container among {candidates:?}"))
}

fn read_number(path: &std::path::Path) -> i64 {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{path:?} holds {text:?}: {e}"))
}

#[tokio::test]
async fn a_memory_hog_is_oom_killed_and_its_neighbour_keeps_answering() {
    let app = TestApp::spawn().await;
    let hog = app
        .create_fixture(json!({"maxMemory": 64, "env": {"FIXTURE_NAME": "hog"}}))
        .await;
    let neighbour = app
        .create_fixture(json!({"env": {"FIXTURE_NAME": "neighbour"}}))
        .await;
    let hog_container = hog["container_id"].as_str().expect("container").to_owned();
    let hog_client = Client::streamable(&app.mcp_url(id(&hog)), "hog").await;
    let nb = Client::streamable(&app.mcp_url(id(&neighbour)), "nb").await;

    // Before: both answer; the hog can use memory inside its limit.
    assert_eq!(
        nb.call("add", json!({"a": 1, "b": 2})).await.as_deref(),
        Ok("3")
    );
    assert_eq!(
        hog_client
            .call("allocate", json!({"mb": 8}))
            .await
            .as_deref(),
        Ok("allocated 8 MB")
    );

    // During: the hog allocates four times its limit while the neighbour is called all along.
    let stop = AtomicBool::new(false);
    let hog_run = async {
        let started = Instant::now();
        let answer = within(
            Duration::from_secs(60),
            "allocate beyond the limit",
            hog_client.call("allocate", json!({"mb": 256})),
        )
        .await;
        let failed_after = started.elapsed();
        let state = eventually(
            "Docker to see the hog's container stop",
            Duration::from_secs(60),
            || async {
                let state = inspect("container", &hog_container)["State"].clone();
                (state["Running"] == false).then_some(state)
            },
        )
        .await;
        stop.store(true, Ordering::Relaxed);
        (answer, failed_after, state)
    };
    let ((answer, failed_after, state), (calls, slowest)) =
        tokio::join!(hog_run, keep_calling(&nb, "during", &stop));

    assert!(
        answer.is_err(),
        "allocating beyond the limit must fail: {answer:?}"
    );
    assert!(
        state["OOMKilled"] == true || state["ExitCode"] == 137,
        "Docker reports an OOM kill: {state}"
    );
    assert!(calls >= 1, "the neighbour was called during the OOM");

    // After: the neighbour still answers, in the same session.
    assert_eq!(
        nb.call("echo", json!({"text": "after"})).await.as_deref(),
        Ok("after")
    );
    let neighbour_state = inspect(
        "container",
        neighbour["container_id"].as_str().expect("container"),
    )["State"]
        .clone();
    assert_eq!(neighbour_state["Running"], true);
    assert_eq!(neighbour_state["OOMKilled"], false);
    eprintln!(
        "memory hog (maxMemory 64 MB, allocate 256 MB): call failed after {failed_after:?} with \
         {answer:?}; Docker: OOMKilled={} ExitCode={}; neighbour: {calls} calls during, slowest \
         {slowest:?}, all right",
        state["OOMKilled"], state["ExitCode"]
    );
    hog_client.close().await;
    nb.close().await;
    app.teardown().await;
}

#[tokio::test]
async fn a_fork_bomb_stops_at_the_process_limit() {
    const LIMIT: i64 = 64;
    let app = TestApp::spawn_with(Options {
        args: vec!["--pids-limit".into(), LIMIT.to_string()],
        ..Options::default()
    })
    .await;
    let bomb = app
        .create_fixture(json!({"env": {"FIXTURE_NAME": "bomb"}}))
        .await;
    let neighbour = app
        .create_fixture(json!({"env": {"FIXTURE_NAME": "neighbour"}}))
        .await;
    let bomb_container = bomb["container_id"].as_str().expect("container").to_owned();
    let hc = inspect("container", &bomb_container)["HostConfig"].clone();
    assert_eq!(
        hc["Ulimits"],
        json!([{"Name": "nproc", "Soft": LIMIT, "Hard": LIMIT}])
    );
    let cgroup = pids_cgroup(&bomb_container);
    let cgroup_max = read_number(&cgroup.join("pids.max"));
    assert_eq!(cgroup_max, LIMIT * 8 + 256, "the pids cgroup backstop");

    let bomb_client = Client::streamable(&app.mcp_url(id(&bomb)), "bomb").await;
    let nb = Client::streamable(&app.mcp_url(id(&neighbour)), "nb").await;
    assert_eq!(
        nb.call("echo", json!({"text": "before"})).await.as_deref(),
        Ok("before")
    );

    let stop = AtomicBool::new(false);
    let bomb_run = async {
        let started = Instant::now();
        let report = call_json(
            &bomb_client,
            "spawn",
            json!({"count": 10 * LIMIT, "stall_ms": 3000}),
        )
        .await;
        let took = started.elapsed();
        // While the children live: the host-side thread count of the whole sandbox.
        let host_tasks = read_number(&cgroup.join("pids.current"));
        stop.store(true, Ordering::Relaxed);
        (report, took, host_tasks)
    };
    let ((report, took, host_tasks), (calls, slowest)) =
        tokio::join!(bomb_run, keep_calling(&nb, "during", &stop));

    let spawned = report["spawned"].as_i64().expect("spawned");
    let error = report["error"].as_str().unwrap_or_default().to_owned();
    assert!(
        error.contains("os error 11"),
        "process creation was refused with EAGAIN: {report}"
    );
    assert!(
        spawned < LIMIT,
        "the count stays under the limit: {spawned} of {LIMIT}"
    );
    assert!(
        spawned >= LIMIT / 2,
        "refused near the limit, not far below it: {spawned} of {LIMIT}"
    );
    assert!(
        host_tasks <= cgroup_max,
        "{host_tasks} host tasks within the cgroup limit {cgroup_max}"
    );
    assert!(calls >= 1, "the neighbour was called during the fork bomb");

    // The limit holds: another attempt is refused at once, and the bomb's server still works.
    let again = call_json(
        &bomb_client,
        "spawn",
        json!({"count": 10, "stall_ms": 3000}),
    )
    .await;
    assert_eq!(again["spawned"], 0, "{again}");
    assert_eq!(
        bomb_client
            .call("echo", json!({"text": "alive"}))
            .await
            .as_deref(),
        Ok("alive")
    );
    assert_eq!(
        nb.call("echo", json!({"text": "after"})).await.as_deref(),
        Ok("after")
    );
    // The host can still start processes.
    let host = Command::new("true").status().expect("the host forks");
    assert!(host.success());
    eprintln!(
        "fork bomb (PIDS_LIMIT {LIMIT}): spawned {spawned} children in {took:?}, then {error:?}; \
         second attempt {again}; sandbox host tasks {host_tasks} of pids.max {cgroup_max}; \
         neighbour: {calls} calls during, slowest {slowest:?}, all right"
    );
    bomb_client.close().await;
    nb.close().await;
    app.teardown().await;
}

#[tokio::test]
async fn a_deployment_cannot_reach_another_deployments_container() {
    let app = TestApp::spawn().await;
    let a = app.create_fixture(http_upstream("a")).await;
    let b = app.create_fixture(http_upstream("b")).await;
    let a_ip = container_ip(a["container_id"].as_str().expect("container"));
    let b_ip = container_ip(b["container_id"].as_str().expect("container"));
    assert_ne!(a["network_id"], b["network_id"], "one network each");
    let ca = Client::streamable(&app.mcp_url(id(&a)), "a").await;
    let cb = Client::streamable(&app.mcp_url(id(&b)), "b").await;

    // Controls: each server listens on its address (its own container reaches it, and so does
    // the host), so a failure below is the isolation and not a server that is not there.
    for (client, ip) in [(&ca, &a_ip), (&cb, &b_ip)] {
        let own = connect(client, ip, 8000).await;
        assert_eq!(own["connected"], true, "own address {ip}: {own}");
        let from_host = app
            .http
            .get(format!("http://{ip}:8000/mcp"))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        assert!(
            from_host.is_ok(),
            "the host reaches {ip}:8000: {from_host:?}"
        );
    }

    let a_to_b = connect(&ca, &b_ip, 8000).await;
    let b_to_a = connect(&cb, &a_ip, 8000).await;
    assert_eq!(
        a_to_b["connected"], false,
        "A reached B at {b_ip}: {a_to_b}"
    );
    assert_eq!(
        b_to_a["connected"], false,
        "B reached A at {a_ip}: {b_to_a}"
    );

    // The same while Docker makes networks (it does for every deployment and spare): Docker's
    // own isolation lapses for a few milliseconds at each, mcp-runner's firewall holds.
    let churn = NetworkChurn::start();
    let (mut attempts, mut crossed) = (0u32, Vec::new());
    while churn.made() < 5 {
        assert!(
            attempts < 40 * 200,
            "the churn made {} networks",
            churn.made()
        );
        let ((ab, ab_error), (ba, ba_error)) =
            tokio::join!(probe(&ca, &b_ip, 8000, 200), probe(&cb, &a_ip, 8000, 200));
        attempts += 200;
        if ab + ba > 0 {
            crossed.push(format!("A->B {ab}, B->A {ba} ({ab_error}, {ba_error})"));
        }
    }
    let made = churn.stop();
    assert!(
        crossed.is_empty(),
        "connections crossed between deployments while Docker made {made} networks: {crossed:?}"
    );
    eprintln!(
        "cross-deployment: A ({a_ip}) -> B {b_ip}:8000: {}; B -> A {a_ip}:8000: {}; then \
         {attempts} attempts each way while Docker made {made} networks: none connected",
        a_to_b["error"], b_to_a["error"]
    );
    ca.close().await;
    cb.close().await;
    app.teardown().await;
}

#[tokio::test]
async fn a_deployment_cannot_reach_the_host_even_on_every_address() {
    let app = TestApp::spawn_with(Options {
        bind_ip: std::net::Ipv4Addr::UNSPECIFIED.into(),
        ..Options::default()
    })
    .await;
    // Start-up installed the rules.
    assert_firewall_in_place();
    let port: u16 = app
        .url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port in the URL");
    let d = app.create_fixture(http_upstream("prober")).await;
    let own_ip = container_ip(d["container_id"].as_str().expect("container"));
    let mut targets = vec![gateway(d["network_id"].as_str().expect("network"))];
    targets.extend(host_addresses());

    // Controls: mcp-runner answers on every one of these addresses (from the host), and the
    // deployment's connect tool works (its own server), through the HTTP upstream that the
    // firewall must leave working.
    for t in &targets {
        let resp = app
            .http
            .get(format!("http://{t}:{port}/health"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap_or_else(|e| panic!("the host reaches mcp-runner at {t}:{port}: {e}"));
        assert_eq!(resp.status(), 200, "{t}");
    }
    let client = Client::streamable(&app.mcp_url(id(&d)), "prober").await;
    let own = connect(&client, &own_ip, 8000).await;
    assert_eq!(own["connected"], true, "own address: {own}");

    let dropped_before = dropped_packets();
    let attempts = targets.iter().map(|t| connect(&client, t, port));
    let answers = futures_util::future::join_all(attempts).await;
    let dropped = dropped_packets() - dropped_before;
    for (t, answer) in targets.iter().zip(&answers) {
        assert_eq!(
            answer["connected"], false,
            "the deployment reached mcp-runner at {t}:{port}: {answer}"
        );
    }
    assert!(
        dropped >= targets.len() as u64,
        "the firewall dropped the attempts ({dropped} packets for {} targets)",
        targets.len()
    );
    // The rest of the API still works through the bridge after the attempts.
    assert_eq!(
        client.call("echo", json!({"text": "ok"})).await.as_deref(),
        Ok("ok")
    );
    for (t, answer) in targets.iter().zip(&answers) {
        eprintln!("host probe: {t}:{port} -> {}", answer["error"]);
    }
    eprintln!("host probe: the DROP rule counted {dropped} packets");

    // Control: a deployment of an instance without the firewall, on a pool that no rule
    // covers, does reach mcp-runner at the same addresses: the failures above are the
    // firewall's doing, not the probe's.
    assert!(
        !chain_rules(mcp_runner::runtime::docker::firewall::CHAIN)
            .iter()
            .any(|r| r.contains(UNGUARDED_POOL)),
        "no rule covers {UNGUARDED_POOL}"
    );
    let open = TestApp::spawn_with(Options {
        args: ["--firewall", "off", "--network-pool", UNGUARDED_POOL]
            .map(String::from)
            .to_vec(),
        ..Options::default()
    })
    .await;
    let u = open.create_fixture(http_upstream("unguarded")).await;
    let mut open_targets = vec![gateway(u["network_id"].as_str().expect("network"))];
    open_targets.extend(host_addresses());
    let uc = Client::streamable(&open.mcp_url(id(&u)), "unguarded").await;
    for t in &open_targets {
        let answer = connect(&uc, t, port).await;
        assert_eq!(
            answer["connected"], true,
            "without the firewall the deployment reaches {t}:{port}: {answer}"
        );
    }
    eprintln!(
        "host probe control (FIREWALL=off, pool {UNGUARDED_POOL}): connected to {open_targets:?}"
    );
    uc.close().await;
    open.teardown().await;
    client.close().await;
    app.teardown().await;
}

#[tokio::test]
async fn a_deployment_runs_as_its_own_user_without_capabilities() {
    let app = TestApp::spawn().await;
    let mut uids = Vec::new();
    for (name, fields) in [
        ("stdio", json!({})),
        ("streamable_http", http_upstream("whoami")),
    ] {
        let d = app.create_fixture(fields).await;
        let client = Client::streamable(&app.mcp_url(id(&d)), "w").await;
        let me = call_json(&client, "whoami", json!({})).await;
        assert_eq!(me["uid"], d["uid"], "{name}: {me}");
        assert_eq!(me["gid"], d["gid"], "{name}: {me}");
        assert_eq!(me["groups"], json!([d["gid"]]), "{name}: {me}");
        assert_ne!(me["uid"], 0, "{name}");
        for set in ["cap_eff", "cap_prm", "cap_bnd"] {
            assert_eq!(me[set], "0000000000000000", "{name}: {set} in {me}");
        }
        assert_eq!(me["no_new_privs"], 1, "{name}: {me}");
        eprintln!("whoami ({name}): {me}");
        uids.push(me["uid"].clone());
        client.close().await;
    }
    assert_ne!(uids[0], uids[1], "each deployment has its own UID");
    app.teardown().await;
}

#[tokio::test]
async fn the_firewall_rules_are_kept_once_and_in_place() {
    use mcp_runner::runtime::docker::firewall::{CHAIN, FORWARD_CHAIN, install};
    // Start-up of a server installs them.
    let app = TestApp::spawn().await;
    assert_firewall_in_place();

    // Again, as at a restart: nothing changes.
    let again = install("iptables", POOL).await.expect("install");
    assert!(!again.changed, "{again:?}");
    assert_firewall_in_place();

    // Duplicates and a misplaced rule are repaired. Each of these only adds a rule that is
    // already there, so the host is never less protected meanwhile.
    // Edited under the lock every server takes for its own edits (they delete by position).
    let lock =
        std::fs::File::create(mcp_runner::runtime::docker::firewall::LOCK_FILE).expect("lock file");
    lock.lock().expect("firewall lock");
    iptables(&["-A", "INPUT", "-j", CHAIN]);
    iptables(&["-A", CHAIN, "-s", POOL, "-j", "DROP"]);
    iptables(&["-I", CHAIN, "1", "-i", "lo", "-j", "RETURN"]);
    iptables(&["-t", "mangle", "-A", "FORWARD", "-j", FORWARD_CHAIN]);
    let pair = ["-s", POOL, "-d", POOL, "-j", "DROP"];
    iptables(&[&["-t", "mangle", "-I", FORWARD_CHAIN, "1"][..], &pair].concat());
    drop(lock);
    let repaired = install("iptables", POOL).await.expect("install");
    assert_firewall_in_place();
    eprintln!("firewall rules: {:#?}", repaired.rules);
    app.teardown().await;
}
