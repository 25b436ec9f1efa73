//! Instance ids of test and benchmark runs, and the sweep of what runs that are over left
//! behind: containers, networks and host users.
//!
//! Every run names its instances `<prefix><pid>-<random>[-<role>]`, the prefix telling what
//! kind of run it is ([`TEST`], [`FAULTS`], [`BENCH`]) and the pid which process it is. A run
//! is abandoned when that process no longer exists: its leftovers can go without touching a
//! live run's, be it of another `cargo test` or benchmark at the same time.

use std::path::Path;
use std::process::Command;

use super::try_docker;

/// Prefix of the end-to-end tests' instance ids.
pub const TEST: &str = "t-";
/// Prefix of the fault tests' instance ids.
pub const FAULTS: &str = "flt-";
/// Prefix of the benchmarks' instance ids.
pub const BENCH: &str = "bench-";

const PREFIXES: [&str; 3] = [TEST, FAULTS, BENCH];

/// A fresh instance id of this process: `<prefix><pid>-<8 hex>`, then `-<role>` unless `role`
/// is empty. `prefix` is one of [`TEST`], [`FAULTS`] and [`BENCH`].
pub fn instance_id(prefix: &str, role: &str) -> String {
    assert!(PREFIXES.contains(&prefix), "unknown prefix {prefix:?}");
    let mut id = format!(
        "{prefix}{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    if !role.is_empty() {
        id.push('-');
        id.push_str(role);
    }
    assert!(
        id.len() <= 32,
        "instance id {id:?} is longer than 32 characters"
    );
    id
}

/// Whether `instance` names a run of a test or benchmark process that no longer exists.
pub fn abandoned(instance: &str) -> bool {
    let Some(rest) = PREFIXES.iter().find_map(|p| instance.strip_prefix(p)) else {
        return false;
    };
    let pid = rest.split('-').next().unwrap_or("");
    !pid.is_empty()
        && pid.bytes().all(|b| b.is_ascii_digit())
        && !Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes what abandoned runs (see [`abandoned`]) left behind, once per process: the first
/// call sweeps, later ones return at once. Blocking (it runs the docker CLI).
pub fn sweep_abandoned() {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| sweep(abandoned, "left by an interrupted run"));
}

/// Removes the containers, networks and host users of `instance` (after a failure, or to be
/// sure). Blocking.
pub fn sweep_instance(instance: &str) {
    sweep(|i| i == instance, "left behind");
}

/// Removes the containers, networks and host users of the instances `doomed` picks. Best
/// effort: what cannot be listed or removed is reported on stderr, never a panic (it runs in
/// `Drop` too).
fn sweep(doomed: impl Fn(&str) -> bool, why: &str) {
    for (list, remove) in [
        (["ps", "-a"], ["rm", "-f"]),
        (["network", "ls"], ["network", "rm"]),
    ] {
        let mut args = list.to_vec();
        args.extend([
            "--filter",
            "label=managed-by=mcp-runner",
            "--format",
            "{{.ID}} {{.Label \"mcp-runner.instance\"}}",
        ]);
        let out = match try_docker(&args) {
            Ok(out) => out,
            Err(e) => {
                eprintln!("sweep: {e:#}");
                continue;
            }
        };
        for (id, instance) in out.lines().filter_map(|l| l.split_once(' ')) {
            if doomed(instance) {
                eprintln!("removing {id} {why} ({instance})");
                let mut rm = remove.to_vec();
                rm.push(id);
                if let Err(e) = try_docker(&rm) {
                    eprintln!("sweep: {e:#}");
                }
            }
        }
    }
    for fields in super::passwd() {
        if super::user_instance(&fields).is_some_and(&doomed) {
            eprintln!("removing host user {} {why}", fields[0]);
            let _ = Command::new("userdel").arg(&fields[0]).output();
            let _ = Command::new("groupdel").arg(&fields[0]).output();
        }
    }
}
