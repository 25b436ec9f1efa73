//! Looks at Docker and the host through their own command-line tools, independently of the
//! code under test.

use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

/// Fails the test with a clear message when Docker (with the runsc runtime) is not there.
pub fn require_docker() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let result = CHECKED.get_or_init(|| {
        let out = Command::new("docker")
            .args(["info", "--format", "{{json .Runtimes}}"])
            .output()
            .map_err(|e| format!("cannot run the docker CLI: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "Docker does not answer: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        if !String::from_utf8_lossy(&out.stdout).contains("\"runsc\"") {
            return Err("Docker has no `runsc` runtime".to_owned());
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!(
            "these tests need a running Docker daemon with the gVisor runtime (run `sudo ./setup.sh`): {e}"
        );
    }
}

/// Runs `docker args…` and returns stdout, panicking with stderr on failure.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `docker inspect` of a container or network, as JSON.
pub fn inspect(kind: &str, id: &str) -> Value {
    let out = docker(&[kind, "inspect", id]);
    let all: Value = serde_json::from_str(&out).expect("inspect JSON");
    all[0].clone()
}

/// The container that owns the network namespace of the inspected `container`: its network
/// holder when it runs in one's namespace (`container:<holder>`), else itself.
pub fn network_owner(container: &Value) -> Value {
    match container["HostConfig"]["NetworkMode"]
        .as_str()
        .and_then(|m| m.strip_prefix("container:"))
    {
        Some(holder) => inspect("container", holder),
        None => container.clone(),
    }
}

/// Whether `docker <kind> inspect id` finds the object.
pub fn exists(kind: &str, id: &str) -> bool {
    Command::new("docker")
        .args([kind, "inspect", id])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Whether container `id` exists and runs.
pub fn running(id: &str) -> bool {
    Command::new("docker")
        .args(["container", "inspect", "-f", "{{.State.Running}}", id])
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "true")
}

fn lines(s: String) -> Vec<String> {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Containers labelled with `instance`.
pub fn containers_of(instance: &str) -> Vec<String> {
    let filter = format!("label=mcp-runner.instance={instance}");
    lines(docker(&["ps", "-aq", "--filter", &filter]))
}

/// Networks labelled with `instance`.
pub fn networks_of(instance: &str) -> Vec<String> {
    let filter = format!("label=mcp-runner.instance={instance}");
    lines(docker(&["network", "ls", "-q", "--filter", &filter]))
}

/// Networks labelled with `instance` that were made ahead of their deployments (those not
/// taken yet are the server's spares).
pub fn made_ahead_networks_of(instance: &str) -> Vec<String> {
    let filter = format!("label=mcp-runner.instance={instance}");
    lines(docker(&[
        "network",
        "ls",
        "-q",
        "--filter",
        &filter,
        "--filter",
        "label=mcp-runner.made-ahead",
    ]))
}

/// The deployment ids that the networks of `instance` made ahead carry.
pub fn made_ahead_deployments_of(instance: &str) -> Vec<String> {
    let filter = format!("label=mcp-runner.instance={instance}");
    lines(docker(&[
        "network",
        "ls",
        "--filter",
        &filter,
        "--filter",
        "label=mcp-runner.made-ahead",
        "--format",
        "{{.Label \"mcp-runner.deployment\"}}",
    ]))
}

/// Host users whose comment marks them as made by `instance`.
pub fn users_of(instance: &str) -> Vec<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    let marker = format!("mcp-runner/{instance}/");
    passwd
        .lines()
        .filter(|l| l.split(':').nth(4).is_some_and(|c| c.starts_with(&marker)))
        .map(|l| l.split(':').next().unwrap_or_default().to_owned())
        .collect()
}

/// The passwd line of `name`, if the user exists.
pub fn passwd_entry(name: &str) -> Option<Vec<String>> {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .map(|l| l.split(':').map(String::from).collect::<Vec<_>>())
        .find(|f| f.first().is_some_and(|n| n == name))
}

/// `(id, instance label)` of every object of `kind` (`container` or `network`) managed by
/// some mcp-runner.
fn managed(kind: &str) -> Vec<(String, String)> {
    let list = if kind == "container" {
        vec!["ps", "-a"]
    } else {
        vec!["network", "ls"]
    };
    let mut args = list;
    args.extend([
        "--filter",
        "label=managed-by=mcp-runner",
        "--format",
        "{{.ID}} {{.Label \"mcp-runner.instance\"}}",
    ]);
    docker(&args)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(id, inst)| (id.to_owned(), inst.to_owned()))
        .collect()
}

/// Removes what earlier, interrupted test runs left behind (instances named `t-…`).
pub fn sweep_leftovers() {
    sweep_instances(|instance| instance.starts_with("t-"));
}

/// Removes the containers, networks and host users of every instance id `chosen` accepts.
pub fn sweep_instances(chosen: impl Fn(&str) -> bool) {
    for (kind, remove) in [("container", ["rm", "-f"]), ("network", ["network", "rm"])] {
        for (id, instance) in managed(kind) {
            if chosen(&instance) {
                let _ = Command::new("docker").args(remove).arg(id).output();
            }
        }
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    for l in passwd.lines() {
        let f: Vec<&str> = l.split(':').collect();
        let instance = f
            .get(4)
            .and_then(|c| c.strip_prefix("mcp-runner/"))
            .and_then(|c| c.split('/').next());
        if instance.is_some_and(&chosen) {
            let _ = Command::new("userdel").arg(f[0]).output();
            let _ = Command::new("groupdel").arg(f[0]).output();
        }
    }
}
