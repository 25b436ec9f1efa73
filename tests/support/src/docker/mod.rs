//! Docker and the host as their own command-line tools and files show them, independently of
//! the code under test: the check that Docker with runsc is there, `docker` CLI helpers,
//! listings of what an instance made (containers, networks, host users), and the sweep of
//! what interrupted runs left ([`sweep`]).

pub mod sweep;

use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, bail};
use serde_json::Value;

pub use sweep::{abandoned, instance_id, sweep_abandoned, sweep_instance};

/// Label of every object an mcp-runner makes: its instance id.
const LABEL_INSTANCE: &str = "mcp-runner.instance";

/// Whether Docker answers and has the `runsc` runtime (asked once per process); the error
/// says what is missing and how to get it.
pub fn check() -> anyhow::Result<()> {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let result = CHECKED.get_or_init(|| {
        let out = Command::new("docker")
            .args(["info", "--format", "{{json .Runtimes}}"])
            .output()
            .map_err(|e| {
                format!("cannot run the docker CLI ({e}); install Docker with ./setup.sh")
            })?;
        if !out.status.success() {
            return Err(format!(
                "Docker does not answer ({}); start it with ./setup.sh",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        if !String::from_utf8_lossy(&out.stdout).contains("\"runsc\"") {
            return Err("Docker has no `runsc` runtime; install gVisor with ./setup.sh".to_owned());
        }
        Ok(())
    });
    result.clone().map_err(anyhow::Error::msg)
}

/// Fails the test with a clear message when Docker (with the runsc runtime) is not there. It
/// never skips: a test that needs Docker and cannot have it fails.
pub fn require_docker() {
    if let Err(e) = check() {
        panic!(
            "these tests need a running Docker daemon with the gVisor runtime (run `sudo ./setup.sh`): {e}"
        );
    }
}

/// Runs `cmd` and returns its stdout; the error names the command and carries its stderr.
pub fn output_of(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `docker args…` and returns its stdout; the error carries its stderr.
pub fn try_docker(args: &[&str]) -> anyhow::Result<String> {
    output_of(Command::new("docker").args(args))
}

/// Runs `docker args…` and returns stdout, panicking with stderr on failure.
pub fn docker(args: &[&str]) -> String {
    try_docker(args).unwrap_or_else(|e| panic!("{e:#}"))
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
        .is_ok_and(|o| o.status.success())
}

/// Whether container `id` exists and runs.
pub fn running(id: &str) -> bool {
    Command::new("docker")
        .args(["container", "inspect", "-f", "{{.State.Running}}", id])
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "true")
}

/// One container or network of an instance, as its labels describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// Docker id (short).
    pub id: String,
    /// Its `mcp-runner.deployment` label.
    pub deployment: String,
    /// Its `mcp-runner.role` label (`netns` for a network holder), empty when it has none.
    pub role: String,
}

/// The containers (`kind` `container`) or networks (`network`) labelled with `instance`,
/// narrowed by the extra `--filter`s.
pub fn objects(kind: &str, instance: &str, filters: &[&str]) -> Vec<Object> {
    let filter = format!("label={LABEL_INSTANCE}={instance}");
    let format = "{{.ID}}|{{.Label \"mcp-runner.deployment\"}}|{{.Label \"mcp-runner.role\"}}";
    let mut args = if kind == "container" {
        vec!["ps", "-a"]
    } else {
        vec!["network", "ls"]
    };
    args.extend(["--filter", &filter]);
    for f in filters {
        args.extend(["--filter", f]);
    }
    args.extend(["--format", format]);
    docker(&args)
        .lines()
        .filter_map(|l| {
            let mut f = l.trim().splitn(3, '|');
            let id = f.next().filter(|id| !id.is_empty())?.to_owned();
            Some(Object {
                id,
                deployment: f.next().unwrap_or_default().to_owned(),
                role: f.next().unwrap_or_default().to_owned(),
            })
        })
        .collect()
}

fn ids(objects: Vec<Object>) -> Vec<String> {
    objects.into_iter().map(|o| o.id).collect()
}

/// Containers labelled with `instance` (network holders included).
pub fn containers_of(instance: &str) -> Vec<String> {
    ids(objects("container", instance, &[]))
}

/// Networks labelled with `instance`.
pub fn networks_of(instance: &str) -> Vec<String> {
    ids(objects("network", instance, &[]))
}

/// Networks labelled with `instance` that were made ahead of their deployments (those not
/// taken yet are the server's spares).
pub fn made_ahead_networks_of(instance: &str) -> Vec<String> {
    ids(objects(
        "network",
        instance,
        &["label=mcp-runner.made-ahead"],
    ))
}

/// The deployment ids that the networks of `instance` made ahead carry.
pub fn made_ahead_deployments_of(instance: &str) -> Vec<String> {
    objects("network", instance, &["label=mcp-runner.made-ahead"])
        .into_iter()
        .map(|o| o.deployment)
        .collect()
}

/// The `mcp-runner.deployment` labels of the instance's objects of `kind` (`container` or
/// `network`); network holders (role `netns`) are not counted as containers.
pub fn labelled(kind: &str, instance: &str) -> Vec<String> {
    objects(kind, instance, &[])
        .into_iter()
        .filter(|o| o.role.is_empty() && !o.deployment.is_empty())
        .map(|o| o.deployment)
        .collect()
}

/// Containers labelled with `instance` that run deployments (or their sessions): network
/// holders left out.
pub fn workload_containers_of(instance: &str) -> Vec<String> {
    objects("container", instance, &[])
        .into_iter()
        .filter(|o| o.role.is_empty())
        .map(|o| o.id)
        .collect()
}

/// The subnets of Docker networks `ids`.
pub fn subnets(ids: &[String]) -> Vec<String> {
    if ids.is_empty() {
        return Vec::new();
    }
    let mut args = vec!["network", "inspect"];
    args.extend(ids.iter().map(String::as_str));
    let all: Value = serde_json::from_str(&docker(&args)).expect("inspect JSON");
    all.as_array()
        .expect("inspect array")
        .iter()
        .map(|n| {
            n["IPAM"]["Config"][0]["Subnet"]
                .as_str()
                .expect("subnet")
                .to_owned()
        })
        .collect()
}

/// The fields of every line of `/etc/passwd`.
fn passwd() -> Vec<Vec<String>> {
    std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(':').map(String::from).collect())
        .collect()
}

/// The instance id in a host user's comment (`mcp-runner/<instance>/…`), if it has one.
fn user_instance(fields: &[String]) -> Option<&str> {
    fields
        .get(4)?
        .strip_prefix("mcp-runner/")?
        .split('/')
        .next()
}

/// Host users whose comment marks them as made by `instance`.
pub fn users_of(instance: &str) -> Vec<String> {
    passwd()
        .into_iter()
        .filter(|f| user_instance(f) == Some(instance))
        .map(|mut f| f.swap_remove(0))
        .collect()
}

/// The passwd line of `name`, if the user exists.
pub fn passwd_entry(name: &str) -> Option<Vec<String>> {
    passwd()
        .into_iter()
        .find(|f| f.first().is_some_and(|n| n == name))
}
