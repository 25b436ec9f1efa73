//! CPU time by component, from `/proc`: the benchmark's client threads, the in-process
//! mcp-runner's threads, dockerd, containerd, the containers' shims and gVisor sandboxes, and
//! everything else on the machine (compilers of other people, for instance). Tick resolution
//! (10 ms) is plenty over thousands of calls.

use std::ops::Sub;

use mcp_test_support::procfs::{tick_seconds, ticks};
use mcp_test_support::server::SERVER_THREADS;

/// Name prefix of the benchmark client's runtime threads.
pub const CLIENT_THREADS: &str = "bench-client";

/// The groups, in display order.
pub const GROUPS: [&str; 7] = [
    "client", "server", "dockerd", "contnrd", "shims", "gvisor", "other",
];
const CLIENT: usize = 0;
const SERVER: usize = 1;
const DOCKERD: usize = 2;
const CONTAINERD: usize = 3;
const SHIM: usize = 4;
const GVISOR: usize = 5;
const OTHER: usize = 6;

/// Clock ticks per group, plus the machine's busy ticks.
#[derive(Debug, Default, Clone, Copy)]
pub struct Cpu {
    ticks: [u64; GROUPS.len()],
    busy: u64,
}

impl Sub for Cpu {
    type Output = Cpu;
    fn sub(self, earlier: Cpu) -> Cpu {
        let mut out = Cpu {
            ticks: [0; GROUPS.len()],
            busy: self.busy.saturating_sub(earlier.busy),
        };
        for (i, t) in out.ticks.iter_mut().enumerate() {
            *t = self.ticks[i].saturating_sub(earlier.ticks[i]);
        }
        let known: u64 = out.ticks[..OTHER].iter().sum();
        out.ticks[OTHER] = out.busy.saturating_sub(known);
        out
    }
}

impl std::ops::AddAssign for Cpu {
    fn add_assign(&mut self, other: Cpu) {
        for (t, o) in self.ticks.iter_mut().zip(other.ticks) {
            *t += o;
        }
        self.busy += other.busy;
    }
}

/// Reads CPU time of the parts of the call path.
#[derive(Debug, Clone)]
pub struct CpuProbe {
    containers: Vec<String>,
    tick_us: f64,
}

impl CpuProbe {
    /// A probe that counts the shims and sandboxes of `containers` (Docker ids).
    pub fn new(containers: Vec<String>) -> CpuProbe {
        CpuProbe {
            containers,
            tick_us: tick_seconds() * 1e6,
        }
    }

    /// CPU time so far.
    pub fn snapshot(&self) -> Cpu {
        let mut cpu = Cpu::default();
        for (tid, comm) in entries("/proc/self/task") {
            let group = if comm.starts_with(CLIENT_THREADS) {
                CLIENT
            } else if comm.starts_with(SERVER_THREADS) {
                SERVER
            } else {
                continue;
            };
            cpu.ticks[group] += ticks(&format!("/proc/self/task/{tid}/stat"));
        }
        let me = std::process::id().to_string();
        // gVisor's ptrace platform runs the sandboxed processes in stub processes named
        // `exe` whose command line names no container: they count with their sandbox.
        let mut sandboxes = std::collections::HashSet::new();
        let mut stubs = Vec::new();
        for (pid, comm) in entries("/proc") {
            if pid == me {
                continue;
            }
            let group = match comm.as_str() {
                "dockerd" => DOCKERD,
                "containerd" => CONTAINERD,
                c if c.starts_with("containerd-shim") || c == "exe" || c.starts_with("runsc") => {
                    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    let cmdline = String::from_utf8_lossy(&cmdline);
                    if !self
                        .containers
                        .iter()
                        .any(|id| cmdline.contains(id.as_str()))
                    {
                        if c == "exe" {
                            stubs.push(pid);
                        }
                        continue;
                    }
                    if c.starts_with("containerd-shim") {
                        SHIM
                    } else {
                        sandboxes.insert(pid.clone());
                        GVISOR
                    }
                }
                _ => continue,
            };
            cpu.ticks[group] += ticks(&format!("/proc/{pid}/stat"));
        }
        // A stub's parent is its sandbox or another stub of it.
        let parents: std::collections::HashMap<String, String> = stubs
            .iter()
            .filter_map(|pid| Some((pid.clone(), parent(pid)?)))
            .collect();
        for pid in parents.keys() {
            let mut up = parents.get(pid);
            for _ in 0..parents.len() {
                match up {
                    Some(p) if sandboxes.contains(p) => {
                        cpu.ticks[GVISOR] += ticks(&format!("/proc/{pid}/stat"));
                        break;
                    }
                    Some(p) => up = parents.get(p),
                    None => break,
                }
            }
        }
        cpu.busy = busy_ticks();
        cpu
    }

    /// Microseconds of CPU per call, by group, and in all.
    pub fn per_call(&self, cpu: &Cpu, calls: usize) -> ([f64; GROUPS.len()], f64) {
        let n = calls.max(1) as f64;
        let mut out = [0.0; GROUPS.len()];
        for (o, t) in out.iter_mut().zip(cpu.ticks) {
            *o = t as f64 * self.tick_us / n;
        }
        (out, cpu.busy as f64 * self.tick_us / n)
    }
}

/// `(name, comm)` of the numeric entries of a `/proc` directory.
fn entries(dir: &str) -> Vec<(String, String)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return vec![];
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|n| {
            let comm = std::fs::read_to_string(format!("{dir}/{n}/comm")).ok()?;
            Some((n, comm.trim().to_owned()))
        })
        .collect()
}

/// The parent process id of `pid`.
fn parent(pid: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .map(|p| p.trim().to_owned())
}

/// Busy ticks of all CPUs (everything but idle and iowait).
fn busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else {
        return 0;
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    v.iter().take(8).sum::<u64>().saturating_sub(idle)
}
