//! Process configuration: one clap `Config`, every field with a flag and an environment name.
//!
//! The environment names of the NestJS service (`PORT`, `BIND_IP`, `API_KEY`, `DB_PATH`,
//! `SENTRY_DSN`) are kept so that an existing installation keeps its settings.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// Run MCP servers from Docker images in gVisor sandboxes and serve them over Streamable HTTP
/// and SSE.
#[derive(Debug, Clone, Parser)]
#[command(name = "mcp-runner", version, about, long_about = None)]
pub struct Config {
    /// What to do; without a subcommand the server runs.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// TCP port of the HTTP server.
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,

    /// Address the HTTP server listens on. Keep 127.0.0.1 unless a reverse proxy or firewall
    /// protects the port.
    #[arg(long, env = "BIND_IP", default_value = "127.0.0.1")]
    pub bind_ip: IpAddr,

    /// The management API key (header `X-API-Key`). When absent a strong key is generated and
    /// printed once at start-up.
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// SQLite database file; created with its directory when missing.
    #[arg(long, env = "DB_PATH", default_value = "/var/mcp-runner/app.db")]
    pub db_path: PathBuf,

    /// Sentry DSN; error reporting is off when absent.
    #[arg(long, env = "SENTRY_DSN", hide_env_values = true)]
    pub sentry_dsn: Option<String>,

    /// OCI runtime of deployment containers (it must be registered in Docker's daemon.json).
    #[arg(long, env = "DOCKER_RUNTIME", default_value = "runsc")]
    pub docker_runtime: String,

    /// Docker daemon address (unix socket path or tcp URL); Docker's defaults when absent.
    #[arg(long, env = "DOCKER_HOST")]
    pub docker_host: Option<String>,

    /// DNS servers given to deployment containers, comma separated.
    #[arg(
        long,
        env = "DNS_SERVERS",
        value_delimiter = ',',
        default_value = "8.8.8.8,1.1.1.1"
    )]
    pub dns_servers: Vec<IpAddr>,

    /// Host UID range for deployment users, inclusive, as `FIRST-LAST`. Each deployment gets
    /// one UID (and a GID of the same number) from it.
    #[arg(long, env = "UID_RANGE", default_value = "3000000-3099999", value_parser = parse_uid_range)]
    pub uid_range: UidRange,

    /// Address pool of deployment networks; each gets one subnet of it.
    #[arg(long, env = "NETWORK_POOL", default_value = "10.240.0.0/16")]
    pub network_pool: String,

    /// Prefix length of each deployment network's subnet (28: 16 addresses).
    #[arg(long, env = "NETWORK_SUBNET_PREFIX", default_value_t = 28)]
    pub network_subnet_prefix: u8,

    /// Deployment networks kept made ahead (each with its host user and a running network
    /// holder), so that a create does not wait for Docker to make one and its first start
    /// skips Docker's network setup (each holds a subnet of NETWORK_POOL); 0 turns this off.
    #[arg(long, env = "NETWORK_SPARES", default_value_t = 2)]
    pub network_spares: usize,

    /// Keep the firewall rules that drop connections from NETWORK_POOL to this host,
    /// mcp-runner's own port included (iptables chain MCP-RUNNER-INPUT, jumped to from INPUT),
    /// and traffic between deployment networks (chain MCP-RUNNER-FORWARD of the mangle table).
    /// Needs the iptables command and CAP_NET_ADMIN; a failure is logged, not fatal.
    #[arg(long, env = "FIREWALL", value_name = "on|off", default_value = "on",
          value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub firewall: bool,

    /// Memory limit in MB for deployments that do not set `maxMemory`; 0 means no limit.
    #[arg(long, env = "DEFAULT_MAX_MEMORY", default_value_t = 512)]
    pub default_max_memory: u64,

    /// CPU limit in cores for deployments that do not set `maxCpus`; 0 means no limit.
    #[arg(long, env = "DEFAULT_MAX_CPUS", default_value_t = 1.0)]
    pub default_max_cpus: f64,

    /// Largest `maxMemory` a deployment may ask for, in MB.
    #[arg(long, env = "MAX_MEMORY_LIMIT", default_value_t = 16384)]
    pub max_memory_limit: u64,

    /// Most processes and threads one deployment may run (RLIMIT_NPROC inside the sandbox;
    /// the pids cgroup gets 8 times as much plus 256, for gVisor's own host threads).
    #[arg(long, env = "PIDS_LIMIT", default_value_t = 256)]
    pub pids_limit: i64,

    /// Size at which Docker rotates a container's json-file log, in MB (one file is kept).
    #[arg(long, env = "CONTAINER_LOG_MAX_MB", default_value_t = 10)]
    pub container_log_max_mb: u64,

    /// Most Docker API operations mcp-runner runs at once; protects the daemon under load.
    #[arg(long, env = "DOCKER_CONCURRENCY", default_value_t = 32)]
    pub docker_concurrency: usize,

    /// Name that tells this mcp-runner's containers, networks and users apart from those of
    /// another instance on the same host (it is written into their labels).
    #[arg(long, env = "INSTANCE_ID", default_value = "default", value_parser = parse_instance_id)]
    pub instance_id: String,

    /// Delete every deployment when mcp-runner receives SIGTERM or SIGINT (the NestJS
    /// service's behaviour). By default deployments survive a restart.
    #[arg(long, env = "CLEANUP_ON_SHUTDOWN", default_value_t = false)]
    pub cleanup_on_shutdown: bool,

    /// Require the X-API-Key header on `GET /metrics` (by default it is open, like the
    /// probes, for a Prometheus scraper on a private network).
    #[arg(long, env = "METRICS_REQUIRE_API_KEY", default_value_t = false)]
    pub metrics_require_api_key: bool,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter in `tracing` syntax (e.g. `info,mcp_runner=debug`).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub rust_log: String,

    /// Threads of the async runtime that serves HTTP and drives Docker; 0 = half the host's
    /// cores, at least one. The sandboxes and dockerd do most of the work of each MCP
    /// message on the same cores; more runtime threads than mcp-runner's share of the work
    /// only add wake-ups across cores to every message.
    #[arg(long, env = "WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,

    /// Largest MCP message body accepted by the bridge, in bytes.
    #[arg(long, env = "MCP_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub mcp_max_body_bytes: usize,

    /// Longest line a stdio MCP server may write to stdout, in bytes (longer ones are dropped
    /// and logged).
    #[arg(long, env = "STDIO_MAX_LINE_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub stdio_max_line_bytes: usize,

    /// MCP sessions without traffic for this long are ended, in seconds.
    #[arg(long, env = "SESSION_IDLE_SECONDS", default_value_t = 1800)]
    pub session_idle_seconds: u64,

    /// How long the bridge waits for an HTTP MCP server in a container to accept
    /// connections after starting it, in seconds.
    #[arg(long, env = "UPSTREAM_READY_SECONDS", default_value_t = 30)]
    pub upstream_ready_seconds: u64,

    /// Browser origins allowed on the MCP endpoints besides loopback ones (comma separated,
    /// `scheme://host[:port]`, or `*`). Requests without `Origin` are always allowed.
    #[arg(long, env = "ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Smallest accepted `pauseAfterSeconds` / `deleteAfterSeconds`. Only tests lower it.
    #[arg(long, env = "MIN_IDLE_SECONDS", default_value_t = 30, hide = true)]
    pub min_idle_seconds: u64,

    /// How often the reaper looks for deadlines, in milliseconds.
    #[arg(long, env = "REAPER_INTERVAL_MS", default_value_t = 500, hide = true)]
    pub reaper_interval_ms: u64,
}

/// Subcommands besides the server.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Print the OpenAPI document of the management API and exit.
    Openapi,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// An inclusive range of host UIDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    /// First UID of the range.
    pub first: u32,
    /// Last UID of the range (inclusive).
    pub last: u32,
}

impl UidRange {
    /// Number of UIDs in the range.
    pub fn len(&self) -> u64 {
        u64::from(self.last) - u64::from(self.first) + 1
    }

    /// Never true: a parsed range holds at least one UID.
    pub fn is_empty(&self) -> bool {
        self.last < self.first
    }

    /// Whether `uid` lies in the range.
    pub fn contains(&self, uid: u32) -> bool {
        (self.first..=self.last).contains(&uid)
    }
}

fn parse_uid_range(s: &str) -> Result<UidRange, String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("`{s}` is not of the form FIRST-LAST"))?;
    let first: u32 = a
        .trim()
        .parse()
        .map_err(|_| format!("`{a}` is not a UID"))?;
    let last: u32 = b
        .trim()
        .parse()
        .map_err(|_| format!("`{b}` is not a UID"))?;
    if first < 1000 {
        return Err("the range must start at 1000 or above, clear of system accounts".into());
    }
    if last < first || last >= u32::MAX - 1 {
        return Err(format!("`{s}` is empty or reaches the reserved UIDs"));
    }
    Ok(UidRange { first, last })
}

fn parse_instance_id(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(s.to_owned())
    } else {
        Err("use 1 to 32 characters of A-Z, a-z, 0-9, '-' and '_'".into())
    }
}

/// Most runtime worker threads `WORKER_THREADS` may ask for.
pub const MAX_WORKER_THREADS: usize = 256;

impl Config {
    /// The runtime's worker threads: `WORKER_THREADS`, or half the host's cores (at least 1).
    pub fn runtime_threads(&self) -> usize {
        if self.worker_threads > 0 {
            return self.worker_threads;
        }
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        (cores / 2).max(1)
    }

    /// Checks what clap cannot check field by field. The error is one line for the operator.
    pub fn validate(&self) -> Result<(), String> {
        if self.worker_threads > MAX_WORKER_THREADS {
            return Err(format!(
                "WORKER_THREADS must be at most {MAX_WORKER_THREADS} (0 = half the host's cores)"
            ));
        }
        if let Some(key) = &self.api_key
            && key.len() < 16
        {
            return Err("API_KEY must be at least 16 characters long".into());
        }
        crate::runtime::docker::subnet::SubnetPool::parse(
            &self.network_pool,
            self.network_subnet_prefix,
        )
        .map_err(|e| format!("NETWORK_POOL / NETWORK_SUBNET_PREFIX: {e}"))?;
        if self.dns_servers.is_empty() {
            return Err("DNS_SERVERS must name at least one server".into());
        }
        if !(self.default_max_cpus == 0.0 || self.default_max_cpus >= 0.1)
            || !self.default_max_cpus.is_finite()
        {
            return Err("DEFAULT_MAX_CPUS must be 0 (no limit) or at least 0.1".into());
        }
        if self.default_max_memory != 0 && self.default_max_memory < MIN_MEMORY_MB {
            return Err(format!(
                "DEFAULT_MAX_MEMORY must be 0 (no limit) or at least {MIN_MEMORY_MB} MB"
            ));
        }
        if self.default_max_memory > self.max_memory_limit {
            return Err("DEFAULT_MAX_MEMORY must not exceed MAX_MEMORY_LIMIT".into());
        }
        if self.pids_limit < 8 {
            return Err("PIDS_LIMIT must be at least 8".into());
        }
        if self.network_spares > MAX_NETWORK_SPARES {
            return Err(format!(
                "NETWORK_SPARES must be at most {MAX_NETWORK_SPARES}"
            ));
        }
        if self.docker_concurrency == 0 {
            return Err("DOCKER_CONCURRENCY must be at least 1".into());
        }
        if self.min_idle_seconds == 0 {
            return Err("MIN_IDLE_SECONDS must be at least 1".into());
        }
        if self.reaper_interval_ms == 0 || self.reaper_interval_ms > 2000 {
            return Err("REAPER_INTERVAL_MS must be between 1 and 2000".into());
        }
        if self.mcp_max_body_bytes < 1024 || self.stdio_max_line_bytes < 1024 {
            return Err("MCP_MAX_BODY_BYTES and STDIO_MAX_LINE_BYTES must be at least 1024".into());
        }
        if self.session_idle_seconds == 0 || self.upstream_ready_seconds == 0 {
            return Err(
                "SESSION_IDLE_SECONDS and UPSTREAM_READY_SECONDS must be at least 1".into(),
            );
        }
        if self.docker_runtime.trim().is_empty() {
            return Err("DOCKER_RUNTIME must not be empty".into());
        }
        Ok(())
    }

    /// The reaper's polling period.
    pub fn reaper_interval(&self) -> Duration {
        Duration::from_millis(self.reaper_interval_ms)
    }
}

/// The smallest memory limit a deployment may ask for. Docker refuses limits below 6 MB,
/// and a gVisor sandbox is killed while it starts under about 12 MB (its own kernel lives
/// in the limit too); 32 MB leaves room for the smallest real server.
pub const MIN_MEMORY_MB: u64 = 32;

/// The most networks kept made ahead: each holds a subnet and a bridge device.
pub const MAX_NETWORK_SPARES: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["mcp-runner"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).expect("parses")
    }

    #[test]
    fn defaults_match_the_nestjs_service() {
        let c = parse(&[]);
        assert_eq!(c.port, 3000);
        assert_eq!(c.bind_ip.to_string(), "127.0.0.1");
        assert_eq!(c.db_path, PathBuf::from("/var/mcp-runner/app.db"));
        assert_eq!(c.docker_runtime, "runsc");
        assert_eq!(c.dns_servers.len(), 2);
        assert!(c.uid_range.len() >= 50_000);
        c.validate().expect("defaults are valid");
    }

    #[test]
    fn worker_threads_default_to_half_the_cores() {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        assert_eq!(parse(&[]).runtime_threads(), (cores / 2).max(1));
        assert_eq!(parse(&["--worker-threads", "3"]).runtime_threads(), 3);
        let too_many = (MAX_WORKER_THREADS + 1).to_string();
        let err = parse(&["--worker-threads", &too_many])
            .validate()
            .expect_err("refused");
        assert!(err.contains("WORKER_THREADS"), "{err}");
    }

    #[test]
    fn uid_range_is_checked() {
        assert!(parse_uid_range("5000-4000").is_err());
        assert!(parse_uid_range("10-4000").is_err());
        assert!(parse_uid_range("abc").is_err());
        let r = parse_uid_range("200000-200009").expect("valid");
        assert_eq!(r.len(), 10);
        assert!(r.contains(200009) && !r.contains(200010));
    }

    #[test]
    fn firewall_is_on_unless_switched_off() {
        assert!(parse(&[]).firewall);
        assert!(!parse(&["--firewall", "off"]).firewall);
        assert!(parse(&["--firewall", "on"]).firewall);
        let mut all = vec!["mcp-runner", "--firewall", "maybe"];
        assert!(Config::try_parse_from(all.drain(..)).is_err());
    }

    #[test]
    fn short_api_key_is_refused() {
        let c = parse(&["--api-key", "short"]);
        assert!(c.validate().unwrap_err().contains("API_KEY"));
    }
}
