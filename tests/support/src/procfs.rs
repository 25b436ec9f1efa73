//! Readings from `/proc`: CPU ticks of processes and threads, memory, threads and open
//! descriptors of a process.

use std::process::Command;

use anyhow::{Context, anyhow};

/// Seconds per clock tick (`getconf CLK_TCK`; 100 Hz when it cannot be asked).
pub fn tick_seconds() -> f64 {
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .filter(|hz| *hz > 0.0)
        .unwrap_or(100.0);
    1.0 / hz
}

/// CPU ticks out of a `stat` file: (utime + stime, cutime + cstime), that is the task's own
/// and that of its children which it has waited for. Zeros when the file cannot be read.
pub fn stat_ticks(path: &str) -> (u64, u64) {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return (0, 0);
    };
    // Fields after the command name (which may hold spaces): state is field 3, utime 14.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (get(11) + get(12), get(13) + get(14))
}

/// utime + stime of a `stat` file.
pub fn ticks(path: &str) -> u64 {
    stat_ticks(path).0
}

/// The number in field `name` (e.g. `VmRSS:`) of `/proc/<pid>/status`.
pub fn status_field(pid: u32, name: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no {name} in /proc/{pid}/status"))
}

/// Resident memory of process `pid`: (VmRSS, VmHWM) in bytes.
pub fn memory(pid: u32) -> anyhow::Result<(u64, u64)> {
    Ok((
        status_field(pid, "VmRSS:")? * 1024,
        status_field(pid, "VmHWM:")? * 1024,
    ))
}

/// Threads of process `pid`.
pub fn threads(pid: u32) -> anyhow::Result<usize> {
    Ok(status_field(pid, "Threads:")? as usize)
}

/// Open file descriptors of process `pid`.
pub fn fds(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("read /proc/{pid}/fd"))?
        .count())
}
