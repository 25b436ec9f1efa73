//! The host firewall: containers of deployments must not reach the host itself, nor each
//! other even for a moment.
//!
//! A packet from a container to an address of the host, its network's gateway included, is
//! delivered to the host's own services: mcp-runner's API when it listens on 0.0.0.0, and
//! anything else listening there. Docker adds no INPUT rules, so mcp-runner keeps its own
//! chain in the filter table, jumped to first from INPUT:
//!
//! ```text
//! -A INPUT -j MCP-RUNNER-INPUT
//! -A MCP-RUNNER-INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN
//! -A MCP-RUNNER-INPUT -i lo -j RETURN
//! -A MCP-RUNNER-INPUT -s <NETWORK_POOL> -j DROP
//! ```
//!
//! Replies to connections the host opened (mcp-runner talks to HTTP upstreams at their
//! container address) and the host's own loopback traffic (a local client of a gateway
//! address has that address as its source) go back to the rest of INPUT untouched; new
//! connections from the pool are dropped. Containers' traffic to other hosts (DNS to the
//! external resolvers included) is forwarded, not delivered to the host, and never meets
//! INPUT. `RETURN` rather than `ACCEPT`: the chain only ever takes traffic away, so the host's
//! own INPUT rules still decide about everything else.
//!
//! Docker keeps deployments apart from each other (one bridge network each, its
//! `DOCKER-ISOLATION-STAGE-*` chains in the filter table's FORWARD), but not at every moment:
//! Docker 20.10 deletes and re-inserts its jumps at the top of FORWARD each time it creates a
//! network, and a packet forwarded in between is accepted (measured here: 144 of 400 TCP
//! connections from one deployment to another got through while Docker created 5 networks).
//! mcp-runner creates networks all the time (one per deployment and spare), so it drops
//! forwarded traffic between deployment networks itself, in a chain of the mangle table,
//! which Docker never writes:
//!
//! ```text
//! -t mangle -A FORWARD -j MCP-RUNNER-FORWARD
//! -t mangle -A MCP-RUNNER-FORWARD -s <NETWORK_POOL> -d <NETWORK_POOL> -j DROP
//! ```
//!
//! No packet between two addresses of the pool is ever forwarded legitimately: the host talks
//! to containers directly (OUTPUT, not FORWARD), and two containers of one deployment network
//! may not talk to each other either (inter-container traffic is off).
//!
//! The rules are kept, not replaced: each start makes every rule appear exactly once and in
//! its place, and leaves other rules of the chain alone, so instances with different pools on
//! one host (and `setup.sh`, which installs the same rules) share the chains. The `iptables`
//! binary is used because Docker uses it too, so both write the same backend (nf_tables on
//! Debian 12 and Ubuntu 24.04). The rules live in the kernel until reboot; mcp-runner installs
//! them at every start.

use std::net::Ipv4Addr;
use std::time::Duration;

use tokio::process::Command;

/// The chain of mcp-runner's rules for traffic to the host, in the filter table.
pub const CHAIN: &str = "MCP-RUNNER-INPUT";

/// The chain of mcp-runner's rules for forwarded traffic, in the mangle table.
pub const FORWARD_CHAIN: &str = "MCP-RUNNER-FORWARD";

/// The built-in chain that jumps to [`CHAIN`].
const INPUT: &str = "INPUT";

/// The built-in chain (of the mangle table) that jumps to [`FORWARD_CHAIN`].
const FORWARD: &str = "FORWARD";

const FILTER: &str = "filter";
const MANGLE: &str = "mangle";

/// mcp-runner's own chains with their tables, in the order they are installed.
const OWN_CHAINS: [(&str, &str); 2] = [(FILTER, CHAIN), (MANGLE, FORWARD_CHAIN)];

/// Held across processes (mcp-runner instances, `setup.sh`) while the rules are edited: the
/// edits read the rules, then change them by position.
pub const LOCK_FILE: &str = "/run/mcp-runner-firewall.lock";

/// Longest wait for the cross-process lock, and for one iptables command.
const WAIT: Duration = Duration::from_secs(20);

/// The same within this process (several servers in one test binary).
static PROCESS_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Why the rules could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// No iptables binary.
    #[error("the `{0}` command was not found (install the iptables package)")]
    Missing(String),
    /// iptables ran and failed, or could not be run.
    #[error("`{command}` failed: {reason}")]
    Command {
        /// The command line.
        command: String,
        /// Its error output or exit status.
        reason: String,
    },
    /// The pool is not an IPv4 network.
    #[error("the network pool `{0}` is not of the form a.b.c.d/n")]
    Pool(String),
}

/// What [`install`] found and left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// Whether a rule had to be added, moved or removed.
    pub changed: bool,
    /// The rules of [`CHAIN`] and [`FORWARD_CHAIN`] afterwards, as `iptables -S` prints
    /// them (the latter after `-t mangle`).
    pub rules: Vec<String>,
}

/// One rule and where it belongs.
#[derive(Debug)]
struct Rule {
    /// Its table.
    table: &'static str,
    /// Its chain.
    chain: &'static str,
    /// Its 1-based position, or `None` for anywhere in the chain.
    position: Option<usize>,
    /// The words after `-A <chain>`, as `iptables -S` prints them.
    words: Vec<String>,
}

/// The rules for `pool`, in the order they are installed.
fn rules(pool: &str) -> Result<Vec<Rule>, FirewallError> {
    let pool = normalize(pool)?;
    let rule = |(table, chain), position, words: &[&str]| Rule {
        table,
        chain,
        position,
        words: words.iter().map(|w| (*w).to_owned()).collect(),
    };
    let established = [
        "-m",
        "conntrack",
        "--ctstate",
        "RELATED,ESTABLISHED",
        "-j",
        "RETURN",
    ];
    // Each chain's rules before the jump to it.
    Ok(vec![
        rule((FILTER, CHAIN), Some(1), &established),
        rule((FILTER, CHAIN), Some(2), &["-i", "lo", "-j", "RETURN"]),
        rule((FILTER, CHAIN), None, &["-s", &pool, "-j", "DROP"]),
        rule((FILTER, INPUT), Some(1), &["-j", CHAIN]),
        rule(
            (MANGLE, FORWARD_CHAIN),
            None,
            &["-s", &pool, "-d", &pool, "-j", "DROP"],
        ),
        rule((MANGLE, FORWARD), Some(1), &["-j", FORWARD_CHAIN]),
    ])
}

/// `a.b.c.d/n` as iptables prints it (the configuration check accepts e.g. `/016`).
fn normalize(pool: &str) -> Result<String, FirewallError> {
    let bad = || FirewallError::Pool(pool.to_owned());
    let (addr, prefix) = pool.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.trim().parse().map_err(|_| bad())?;
    let prefix: u8 = prefix
        .trim()
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(bad)?;
    Ok(format!("{addr}/{prefix}"))
}

/// Installs the rules for `pool` and logs the outcome: an error (not a crash) when they could
/// not be installed, since the deployments still work without them.
pub async fn protect_host(pool: &str) {
    match install("iptables", pool).await {
        Ok(done) => tracing::info!(
            chain = CHAIN,
            pool,
            changed = done.changed,
            rules = ?done.rules,
            "host firewall in place: deployment networks cannot open connections to this host \
             or to each other"
        ),
        Err(e) => tracing::error!(
            error = %e,
            pool,
            "firewall rules NOT (all) installed: the filter table's rules (MCP-RUNNER-INPUT) go \
             first, and without them deployment containers can open connections to every port \
             of this host, mcp-runner's API included; without the mangle table's \
             (MCP-RUNNER-FORWARD) they can reach each other while Docker creates a network. \
             The error names the table. mcp-runner needs the iptables command and \
             CAP_NET_ADMIN; setup.sh installs the same rules; FIREWALL=off skips this step"
        ),
    }
}

/// Makes the rules for `pool` present, each exactly once and in its place, with the iptables
/// command `iptables`. Safe to repeat; leaves other rules alone.
pub async fn install(iptables: &str, pool: &str) -> Result<Installed, FirewallError> {
    let wanted = rules(pool)?;
    let _in_process = PROCESS_LOCK.lock().await;
    let _across_processes = lock_file().await;
    let mut changed = false;
    // The host's protection first and whole: a host whose iptables has no mangle table
    // (a legacy backend without the module, in a container that cannot load it) keeps it.
    for (table, chain) in OWN_CHAINS {
        let ipt = Iptables(iptables, table);
        changed |= ipt.ensure_chain(chain).await?;
        for rule in wanted.iter().filter(|r| r.table == table) {
            changed |= ipt
                .ensure_once(rule.chain, rule.position, &rule.words)
                .await?;
        }
    }
    let mut rules = Vec::new();
    for (table, chain) in OWN_CHAINS {
        let prefix = if table == FILTER {
            String::new()
        } else {
            format!("-t {table} ")
        };
        let listed = Iptables(iptables, table).list(chain).await?;
        rules.extend(
            listed
                .iter()
                .map(|r| format!("{prefix}-A {chain} {}", r.join(" "))),
        );
    }
    Ok(Installed { changed, rules })
}

/// Takes the cross-process lock; `None` (and a debug line) when it cannot be had, because the
/// rules are still better installed unlocked than not at all.
async fn lock_file() -> Option<std::fs::File> {
    let file = match std::fs::File::create(LOCK_FILE) {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!(path = LOCK_FILE, error = %e, "cannot open the firewall lock file");
            return None;
        }
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Some(file),
            Err(std::fs::TryLockError::WouldBlock) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                tracing::warn!(path = LOCK_FILE, error = %e, "cannot take the firewall lock; going on without it");
                return None;
            }
        }
    }
}

/// The iptables command, and the table it works on.
struct Iptables<'a>(&'a str, &'static str);

impl Iptables<'_> {
    /// Runs `iptables -w <secs> -t <table> args…` and returns its standard output.
    async fn run(&self, args: &[&str]) -> Result<String, FirewallError> {
        let wait = WAIT.as_secs().to_string();
        let command = || format!("{} -t {} {}", self.0, self.1, args.join(" "));
        let child = Command::new(self.0)
            .args(["-w", &wait, "-t", self.1])
            .args(args)
            .kill_on_drop(true)
            .output();
        let output = match tokio::time::timeout(WAIT + Duration::from_secs(5), child).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(FirewallError::Missing(self.0.to_owned()));
            }
            Ok(Err(e)) => {
                return Err(FirewallError::Command {
                    command: command(),
                    reason: e.to_string(),
                });
            }
            Err(_) => {
                return Err(FirewallError::Command {
                    command: command(),
                    reason: format!("no answer within {:?}", WAIT + Duration::from_secs(5)),
                });
            }
        };
        if output.status.success() {
            return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
        }
        // iptables-nft warns about legacy tables on every run; that is not the failure.
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reason: Vec<&str> = stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        Err(FirewallError::Command {
            command: command(),
            reason: if reason.is_empty() {
                output.status.to_string()
            } else {
                reason.join("; ")
            },
        })
    }

    /// The rules of `chain`, each as the words after `-A <chain>`.
    async fn list(&self, chain: &str) -> Result<Vec<Vec<String>>, FirewallError> {
        let text = self.run(&["-S", chain]).await?;
        Ok(parse_rules(&text, chain))
    }

    /// Creates `chain` when it does not exist; true when it made it.
    async fn ensure_chain(&self, chain: &str) -> Result<bool, FirewallError> {
        if self.run(&["-S", chain]).await.is_ok() {
            return Ok(false);
        }
        match self.run(&["-N", chain]).await {
            Ok(_) => Ok(true),
            // Another process made it in between.
            Err(e) => self.run(&["-S", chain]).await.map(|_| false).map_err(|_| e),
        }
    }

    /// Makes `rule` appear exactly once in `chain`: at `position` (1-based) when given, else
    /// where it is or at the end. The rule is added before any duplicate is removed, so no
    /// moment is without it. True when something changed.
    async fn ensure_once(
        &self,
        chain: &str,
        position: Option<usize>,
        rule: &[String],
    ) -> Result<bool, FirewallError> {
        let words: Vec<&str> = rule.iter().map(String::as_str).collect();
        let mut rules = self.list(chain).await?;
        let mut changed = false;
        let keep = match position {
            Some(p) if rules.get(p - 1).map(Vec::as_slice) == Some(rule) => p - 1,
            Some(p) => {
                let at = p.min(rules.len() + 1).to_string();
                self.run(&[&["-I", chain, &at][..], &words].concat())
                    .await?;
                changed = true;
                rules = self.list(chain).await?;
                p.min(rules.len()) - 1
            }
            None => match rules.iter().position(|r| r == rule) {
                Some(i) => i,
                None => {
                    self.run(&[&["-A", chain][..], &words].concat()).await?;
                    return Ok(true);
                }
            },
        };
        // Duplicates, from the last so that the numbers of the others stay valid.
        for i in (0..rules.len()).rev() {
            if i != keep && rules[i] == rule {
                self.run(&["-D", chain, &(i + 1).to_string()]).await?;
                changed = true;
            }
        }
        Ok(changed)
    }
}

/// The rules of `chain` in `iptables -S` output, each as the words after `-A <chain>`. The
/// rules written here have no quoted words, so splitting at spaces compares them exactly.
fn parse_rules(text: &str, chain: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("-A") && words.next() == Some(chain))
                .then(|| words.map(str::to_owned).collect())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_is_written_as_iptables_prints_it() {
        assert_eq!(normalize("10.240.0.0/16").unwrap(), "10.240.0.0/16");
        assert_eq!(normalize("10.240.0.0/016").unwrap(), "10.240.0.0/16");
        assert!(normalize("10.240.0.0").is_err());
        assert!(normalize("fd00::/8").is_err());
        assert!(normalize("10.240.0.0/33").is_err());
    }

    #[test]
    fn rules_come_in_their_order() {
        let r = rules("10.240.0.0/16").unwrap();
        let text: Vec<String> = r
            .iter()
            .map(|rule| {
                format!(
                    "-t {} -A {} {}",
                    rule.table,
                    rule.chain,
                    rule.words.join(" ")
                )
            })
            .collect();
        assert_eq!(
            text,
            [
                "-t filter -A MCP-RUNNER-INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
                "-t filter -A MCP-RUNNER-INPUT -i lo -j RETURN",
                "-t filter -A MCP-RUNNER-INPUT -s 10.240.0.0/16 -j DROP",
                "-t filter -A INPUT -j MCP-RUNNER-INPUT",
                "-t mangle -A MCP-RUNNER-FORWARD -s 10.240.0.0/16 -d 10.240.0.0/16 -j DROP",
                "-t mangle -A FORWARD -j MCP-RUNNER-FORWARD",
            ]
        );
        let positions: Vec<Option<usize>> = r.iter().map(|rule| rule.position).collect();
        assert_eq!(positions, [Some(1), Some(2), None, Some(1), None, Some(1)]);
    }

    #[test]
    fn listing_keeps_only_the_chains_rules() {
        let text = "-P INPUT ACCEPT\n-N MCP-RUNNER-INPUT\n\
            -A INPUT -j MCP-RUNNER-INPUT\n\
            -A MCP-RUNNER-INPUT -i lo -j RETURN\n";
        assert_eq!(parse_rules(text, "INPUT"), [["-j", "MCP-RUNNER-INPUT"]]);
        assert_eq!(parse_rules(text, CHAIN), [["-i", "lo", "-j", "RETURN"]]);
    }

    #[tokio::test]
    async fn a_missing_iptables_is_a_clear_error() {
        let e = install("/nonexistent/iptables", "10.240.0.0/16")
            .await
            .unwrap_err();
        assert!(matches!(e, FirewallError::Missing(_)), "{e:?}");
        assert!(
            e.to_string().contains("install the iptables package"),
            "{e}"
        );
    }
}
