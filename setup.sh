#!/usr/bin/env bash
# setup.sh - prepare a Debian 12 / Ubuntu 24.04 host for mcp-runner.
#
# What it does (every step is safe to repeat):
#   1. installs the Docker engine and gVisor's OCI runtime `runsc`
#      (distribution packages by default, upstream apt repos on request);
#   2. registers `runsc` as a Docker runtime in /etc/docker/daemon.json,
#      merging into whatever the file already holds;
#   3. starts dockerd (systemd if it is PID 1, otherwise a background
#      process owned by this script) and restarts it only when needed;
#   4. checks that `docker info` answers and lists the runsc runtime;
#   5. installs the host firewall rules that keep deployment containers from
#      opening connections to the host (iptables chain MCP-RUNNER-INPUT) and
#      from reaching each other (chain MCP-RUNNER-FORWARD of the mangle table);
#   6. creates mcp-runner's data directory.
# With --ci it also installs what the test suite needs and runs a smoke test.
#
# Run `./setup.sh --help` for the options.

set -euo pipefail

readonly DATA_DIR_DEFAULT=/var/mcp-runner
readonly DAEMON_JSON=/etc/docker/daemon.json
readonly DAEMON_JSON_BACKUP=/etc/docker/daemon.json.before-mcp-runner
readonly DOCKERD_LOG=/var/log/mcp-runner-dockerd.log
readonly DOCKERD_PIDFILE=/var/run/dockerd-mcp-runner.pid
readonly DOCKER_WAIT_SECONDS=60
readonly SMOKE_IMAGE=mcp-runner-setup-smoke:latest
readonly RUNTIME_NAME=runsc
readonly NETWORK_POOL_DEFAULT=10.240.0.0/16
readonly FIREWALL_CHAIN=MCP-RUNNER-INPUT
readonly FORWARD_CHAIN=MCP-RUNNER-FORWARD
readonly FIREWALL_LOCK=/run/mcp-runner-firewall.lock

# ---------------------------------------------------------------- helpers --

step() { printf '==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
    printf 'ERROR: %s\n' "$*" >&2
    exit 1
}

usage() {
    cat <<'EOF'
Usage: sudo ./setup.sh [options]

Prepares this host to run mcp-runner: installs Docker and gVisor (runsc),
registers runsc as a Docker runtime, starts dockerd and creates the data
directory. Safe to run again; dockerd is only restarted when its
configuration changed or it is not running.

Supported systems: Debian 12 (bookworm) and Ubuntu 24.04 (noble). Run as root.

Options:
  --ci                 CI mode (also enabled by the environment CI=true):
                       never prompts, installs the test suite's needs
                       (busybox-static, build-essential, libc6-dev,
                       pkg-config), requires cargo, and runs the smoke test.
  --upstream-repos     install docker-ce from Docker's apt repository and
                       runsc from gVisor's apt repository instead of the
                       distribution's docker.io and runsc packages.
                       Needs network access to those repositories.
  --smoke-test         after setup, build a tiny local image from the
                       busybox-static binary and run it under runsc
                       (installs busybox-static). Default in --ci mode.
  --no-smoke-test      skip the smoke test, even in --ci mode.
  --runsc-arg ARG      extra argument for the runsc runtime in daemon.json
                       (repeatable; kept in daemon.json on later runs),
                       e.g. --runsc-arg=--debug-log=/var/log/runsc/.
  --data-dir DIR       mcp-runner's data directory (default /var/mcp-runner).
  --network-pool CIDR  mcp-runner's NETWORK_POOL (default 10.240.0.0/16): the
                       source addresses the host firewall keeps away from the
                       host. Repeat for several mcp-runner instances.
  --no-firewall        do not touch the host firewall.
  -h, --help           show this help and exit.

Files touched:
  /etc/docker/daemon.json                   runtimes.runsc is added/updated;
                                            other keys are kept
  /etc/docker/daemon.json.before-mcp-runner copy of the original (made once)
  /var/log/mcp-runner-dockerd.log           dockerd's log when not under systemd
  /var/run/dockerd-mcp-runner.pid           pid of that background dockerd
  /run/mcp-runner-firewall.lock             taken while the firewall rules are
                                            edited (mcp-runner takes it too)

Host firewall (mcp-runner installs the same rules at every start unless
FIREWALL=off, and neither removes rules it did not write):
  -A INPUT -j MCP-RUNNER-INPUT                      (first rule of INPUT)
  -A MCP-RUNNER-INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN
  -A MCP-RUNNER-INPUT -i lo -j RETURN
  -A MCP-RUNNER-INPUT -s <network pool> -j DROP     (one per pool)
  -t mangle -A FORWARD -j MCP-RUNNER-FORWARD        (first rule of FORWARD)
  -t mangle -A MCP-RUNNER-FORWARD -s <pool> -d <pool> -j DROP   (one per pool)
Containers keep their access to other hosts (DNS included); the host keeps its
connections into containers. The second chain drops traffic between deployment
networks, which Docker's own rules let through for a moment each time Docker
creates a network. The rules last until reboot: run setup.sh or mcp-runner
again after one.
EOF
}

# ------------------------------------------------------------ arguments --

readonly ORIG_ARGS="$*"
ci_mode=false
case "${CI:-}" in true | TRUE | True | 1 | yes) ci_mode=true ;; esac
upstream_repos=false
smoke_test=""  # empty = default (on in CI mode, off otherwise)
data_dir=$DATA_DIR_DEFAULT
firewall=true
network_pools=()
extra_runsc_args=()

while [[ $# -gt 0 ]]; do
    case "$1" in
        --ci) ci_mode=true ;;
        --upstream-repos) upstream_repos=true ;;
        --smoke-test) smoke_test=true ;;
        --no-smoke-test) smoke_test=false ;;
        --runsc-arg)
            [[ $# -ge 2 ]] || die "--runsc-arg needs a value"
            extra_runsc_args+=("$2")
            shift
            ;;
        --runsc-arg=*) extra_runsc_args+=("${1#--runsc-arg=}") ;;
        --data-dir)
            [[ $# -ge 2 ]] || die "--data-dir needs a value"
            data_dir=$2
            shift
            ;;
        --data-dir=*) data_dir=${1#--data-dir=} ;;
        --network-pool)
            [[ $# -ge 2 ]] || die "--network-pool needs a value"
            network_pools+=("$2")
            shift
            ;;
        --network-pool=*) network_pools+=("${1#--network-pool=}") ;;
        --no-firewall) firewall=false ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
    shift
done
[[ -n "$smoke_test" ]] || smoke_test=$ci_mode
[[ "$data_dir" == /* ]] || die "--data-dir must be an absolute path, got: $data_dir"
[[ ${#network_pools[@]} -gt 0 ]] || network_pools=("$NETWORK_POOL_DEFAULT")

# Never let apt or debconf ask a question.
export DEBIAN_FRONTEND=noninteractive

# ------------------------------------------------------------- checks --

step "Checking the host"
[[ ${EUID:-$(id -u)} -eq 0 ]] || die "setup.sh must run as root (try: sudo $0${ORIG_ARGS:+ $ORIG_ARGS})"

[[ -r /etc/os-release ]] || die "/etc/os-release not found; only Debian 12 and Ubuntu 24.04 are supported"
# Read the three fields in a subshell so os-release's variables stay there.
IFS='|' read -r os_id os_version os_codename < <(
    # shellcheck disable=SC1091
    . /etc/os-release && printf '%s|%s|%s\n' "${ID:-}" "${VERSION_ID:-}" "${VERSION_CODENAME:-}"
)
case "$os_id:$os_version" in
    debian:12 | ubuntu:24.04) ;;
    *) die "unsupported system '$os_id $os_version': setup.sh supports Debian 12 and Ubuntu 24.04 only" ;;
esac
info "system: $os_id $os_version ($os_codename), $(uname -m)"

# systemd is "the init system" only when it runs as PID 1; this is the test
# sd_booted(3) uses.
if [[ -d /run/systemd/system ]]; then
    have_systemd=true
    info "init: systemd (dockerd will be managed by docker.service)"
else
    have_systemd=false
    info "init: $(cat /proc/1/comm 2>/dev/null || echo unknown) (no systemd: dockerd will run in the background)"
fi
if $ci_mode; then info "mode: CI"; fi

# ---------------------------------------------------------------- apt --

apt_updated=false
apt_update_once() {
    if ! $apt_updated; then
        step "Refreshing apt package lists"
        apt-get update -q || die "apt-get update failed"
        apt_updated=true
    fi
}

pkg_installed() {
    [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" == installed ]]
}

# apt_install PKG...: installs the packages that are not installed yet.
apt_install() {
    local missing=() p
    for p in "$@"; do
        pkg_installed "$p" || missing+=("$p")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        info "already installed: $*"
        return 0
    fi
    apt_update_once
    step "Installing ${missing[*]}"
    apt-get install -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" || die "apt-get install ${missing[*]} failed"
}

# apt_has_candidate PKG: true when apt can install PKG from its sources.
apt_has_candidate() {
    local c
    c=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2; exit}')
    [[ -n "$c" && "$c" != "(none)" ]]
}

# --------------------------------------------------- upstream repositories --
# NOTE: this path could not be tested where setup.sh was written: that machine
# reaches only the distributions' own package mirrors. It follows the
# repositories' documented layouts: Docker publishes
# <base>/linux/<debian|ubuntu> <codename> stable, signed by <base>/linux/<id>/gpg;
# gVisor publishes "release main", signed by its archive key. Both keys are
# ASCII-armoured and stored as .asc, which apt (>= 2.4) accepts in signed-by,
# so gnupg is not needed.

# add_apt_repo NAME KEY_URL "URL SUITE COMPONENT": installs the signing key once and
# writes /etc/apt/sources.list.d/NAME.list; succeeds (exit 0) when something changed.
add_apt_repo() {
    local name=$1 key_url=$2 source=$3 keyring_dir=/etc/apt/keyrings changed=1 arch
    arch=$(dpkg --print-architecture)
    step "Configuring the upstream apt repository '$name'"
    if [[ ! -s "$keyring_dir/$name.asc" ]]; then
        curl -fsSL "$key_url" -o "$keyring_dir/$name.asc.tmp" \
            || die "could not download the apt signing key of '$name'"
        mv "$keyring_dir/$name.asc.tmp" "$keyring_dir/$name.asc"
        chmod 0644 "$keyring_dir/$name.asc"
        changed=0
    fi
    write_if_different "/etc/apt/sources.list.d/$name.list" \
        "deb [arch=$arch signed-by=$keyring_dir/$name.asc] $source" && changed=0
    return $changed
}

setup_upstream_repos() {
    local keyring_dir=/etc/apt/keyrings changed=false
    apt_install ca-certificates curl
    install -d -m 0755 "$keyring_dir"

    add_apt_repo docker "https://download.docker.com/linux/$os_id/gpg" \
        "https://download.docker.com/linux/$os_id $os_codename stable" && changed=true
    add_apt_repo gvisor https://gvisor.dev/archive.key \
        "https://storage.googleapis.com/gvisor/releases release main" && changed=true

    # New sources need a fresh package list even if one was fetched already.
    if $changed; then apt_updated=false; fi

    # Docker's packages conflict with the distribution's; remove those first
    # (images and volumes under /var/lib/docker are kept).
    local p conflicting=()
    for p in docker.io docker-doc docker-compose podman-docker containerd runc; do
        pkg_installed "$p" && conflicting+=("$p")
    done
    if [[ ${#conflicting[@]} -gt 0 ]]; then
        step "Removing distribution packages that conflict with docker-ce: ${conflicting[*]}"
        apt-get remove -y -q "${conflicting[@]}" || die "could not remove ${conflicting[*]}"
    fi
    apt_install docker-ce docker-ce-cli containerd.io runsc
}

# write_if_different FILE CONTENT: returns 0 when FILE was (re)written.
write_if_different() {
    local file=$1 content=$2
    if [[ -f "$file" ]] && [[ "$(cat "$file")" == "$content" ]]; then
        return 1
    fi
    printf '%s\n' "$content" >"$file"
    return 0
}

# ------------------------------------------------------------ packages --

step "Installing the Docker engine and gVisor"
if $upstream_repos; then
    setup_upstream_repos
else
    if ! pkg_installed runsc; then
        apt_update_once
        if ! apt_has_candidate runsc; then
            hint="enable the 'universe' component on Ubuntu"
            [[ $os_id == debian ]] && hint="check /etc/apt/sources.list"
            die "package 'runsc' is not available from the configured apt sources ($hint), or rerun with --upstream-repos"
        fi
    fi
    apt_install docker.io runsc
fi

# python3 (with its standard library) edits daemon.json. Debian's and
# Ubuntu's own interpreter is used, not whatever python3 comes first in PATH.
apt_install python3
PYTHON=/usr/bin/python3
[[ -x $PYTHON ]] || die "$PYTHON is missing after installing python3"
if $firewall; then
    # The iptables command, as Docker uses it (docker.io depends on it already).
    apt_install iptables
    command -v iptables >/dev/null || die "iptables is not in PATH after installing the iptables package"
fi

command -v dockerd >/dev/null || die "dockerd is not in PATH after installing the Docker engine"
command -v docker >/dev/null || die "the docker CLI is not in PATH after installing the Docker engine"
RUNSC_PATH=$(command -v runsc) || die "runsc is not in PATH after installing gVisor"
RUNSC_PATH=$(readlink -f "$RUNSC_PATH")
info "runsc: $RUNSC_PATH ($("$RUNSC_PATH" --version 2>/dev/null | head -n 1))"
info "dockerd: $(dockerd --version)"

if $ci_mode || $smoke_test; then
    step "Installing what the test suite needs"
    # busybox-static: a static busybox binary copied into FROM-scratch test
    # images, so that no image has to be pulled.
    # build-essential + libc6-dev: the C toolchain, and glibc's static
    # libraries for test fixtures linked with -C target-feature=+crt-static.
    if $ci_mode; then
        apt_install busybox-static build-essential libc6-dev pkg-config
    else
        apt_install busybox-static
    fi
fi

# --------------------------------------------------------- daemon.json --
# The runsc runtime gets "--network=host". Without it (runsc's default is
# --network=sandbox: gVisor's own user-space TCP/IP stack, "netstack") every
# container start fails with
#   OCI runtime start failed: starting container: setting up network:
#   creating interfaces from net namespace "/proc/<pid>/ns/net":
#   cannot run with network enabled in root network namespace
# even though Docker did create a separate network namespace (also with
# `docker run --network none`). The message means runsc believes it was
# handed the host's root network namespace, where it refuses to take over
# the interfaces. Older runsc releases (Debian 12's 0.0~20221219 among them)
# decide that by checking whether /proc/sys/net/core/rmem_default exists,
# and recent kernels show that file in every network namespace, so the
# check is always true. With --network=host, runsc does not move the
# interfaces into netstack; the sandboxed program's sockets are served by the
# host kernel inside the container's own network namespace. Docker's network
# isolation (separate namespace, bridge rules such as enable_icc=false)
# still applies; what is given up is netstack's extra layer between the
# program and the host kernel's network code.

# Which cgroup driver will dockerd use? Docker picks "systemd" on a unified
# (v2-only) cgroup hierarchy when systemd is PID 1, unless daemon.json's
# exec-opts say otherwise. runsc must then be told that cgroup paths are
# systemd slice names (--systemd-cgroup). Not exercised where this was
# written (cgroup v1, no systemd); the smoke test checks it.
if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then cgroup_unified=true; else cgroup_unified=false; fi

step "Registering runsc as a Docker runtime in $DAEMON_JSON"
install -d -m 0755 /etc/docker
work=$(mktemp -d /tmp/mcp-runner-setup.XXXXXX)
trap 'rm -rf "$work"' EXIT

# The helper prints "changed" or "unchanged" and writes the merged file to
# $work/daemon.json. JSON equality is compared on parsed values, so a file
# that already holds the right settings is never rewritten or reformatted.
set +e
merge_result=$(
    "$PYTHON" - "$DAEMON_JSON" "$work/daemon.json" "$RUNTIME_NAME" "$RUNSC_PATH" \
        "$have_systemd" "$cgroup_unified" "${extra_runsc_args[@]}" <<'PY'
import json, os, sys

src, dst, name, path, have_systemd, unified = sys.argv[1:7]
extra = sys.argv[7:]

current = {}
if os.path.exists(src):
    raw = open(src, encoding="utf-8").read()
    if raw.strip():
        try:
            current = json.loads(raw)
        except ValueError as e:
            sys.exit(f"{src} is not valid JSON ({e}); fix or move it away and rerun")
if not isinstance(current, dict):
    sys.exit(f"{src} must hold a JSON object")

merged = json.loads(json.dumps(current))  # deep copy
runtimes = merged.setdefault("runtimes", {})
if not isinstance(runtimes, dict):
    sys.exit(f'{src}: "runtimes" must be a JSON object')
entry = runtimes.get(name)
if not isinstance(entry, dict):
    entry = {}

# Keep the user's own runsc arguments, except the ones managed here.
managed = ("--network", "--systemd-cgroup")
args = [a for a in entry.get("runtimeArgs") or []
        if isinstance(a, str) and not a.startswith(managed)]

driver = "systemd" if (have_systemd == "true" and unified == "true") else "cgroupfs"
for opt in merged.get("exec-opts") or []:
    if isinstance(opt, str) and opt.replace(" ", "").startswith("native.cgroupdriver="):
        driver = opt.split("=", 1)[1].strip()

args.append("--network=host")
if driver == "systemd":
    args.append("--systemd-cgroup")
for a in extra:
    if a not in args:
        args.append(a)

entry["path"] = path
entry["runtimeArgs"] = args
runtimes[name] = entry

with open(dst, "w", encoding="utf-8") as f:
    json.dump(merged, f, indent=2, sort_keys=False)
    f.write("\n")
print("changed" if merged != current else "unchanged")
print("cgroup-driver=" + driver)
PY
)
rc=$?
set -e
[[ $rc -eq 0 ]] || die "could not merge $DAEMON_JSON (see the message above)"

expected_cgroup_driver=$(sed -n 's/^cgroup-driver=//p' <<<"$merge_result")
config_changed=false
if grep -qx changed <<<"$merge_result"; then
    config_changed=true
    if [[ -f "$DAEMON_JSON" && ! -e "$DAEMON_JSON_BACKUP" ]]; then
        cp -p "$DAEMON_JSON" "$DAEMON_JSON_BACKUP"
        info "backed up the previous file to $DAEMON_JSON_BACKUP"
    fi
    install -m 0644 "$work/daemon.json" "$DAEMON_JSON.mcp-runner.tmp"
    mv -f "$DAEMON_JSON.mcp-runner.tmp" "$DAEMON_JSON"
    info "updated $DAEMON_JSON"
else
    info "$DAEMON_JSON already up to date"
fi
info "runtime $RUNTIME_NAME: $("$PYTHON" -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["runtimes"][sys.argv[2]]))' "$DAEMON_JSON" "$RUNTIME_NAME")"

# ------------------------------------------------------------- dockerd --

docker_answers() { timeout 10 docker info >/dev/null 2>&1; }

# Prints the pid of a live dockerd that this script started, if any.
our_dockerd_pid() {
    local pid
    [[ -s "$DOCKERD_PIDFILE" ]] || return 1
    pid=$(tr -dc '0-9' <"$DOCKERD_PIDFILE")
    [[ -n "$pid" && -d "/proc/$pid" ]] || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == dockerd ]] || return 1
    printf '%s\n' "$pid"
}

# Prints the pids of all running dockerd processes.
all_dockerd_pids() {
    local d
    for d in /proc/[0-9]*; do
        [[ "$(cat "$d/comm" 2>/dev/null)" == dockerd ]] && printf '%s\n' "${d#/proc/}"
    done
    return 0
}

stop_our_dockerd() {
    local pid=$1 i
    info "stopping the background dockerd (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do
        [[ -d "/proc/$pid" ]] || return 0
        sleep 0.1
    done
    warn "dockerd (pid $pid) did not stop within 30 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 1
}

dockerd_log_tail() {
    if $have_systemd; then
        journalctl -u docker.service -n 40 --no-pager 2>/dev/null || true
    elif [[ -f "$DOCKERD_LOG" ]]; then
        tail -n 40 "$DOCKERD_LOG"
    fi
}

# wait_for_docker PID: polls `docker info` until it answers (PID, when given,
# must stay alive meanwhile).
wait_for_docker() {
    local pid=${1:-} deadline=$((SECONDS + DOCKER_WAIT_SECONDS))
    while ! docker_answers; do
        if [[ -n "$pid" && ! -d "/proc/$pid" ]]; then
            printf -- '--- last lines of %s ---\n' "$DOCKERD_LOG" >&2
            dockerd_log_tail >&2
            die "dockerd (pid $pid) exited during start-up; see $DOCKERD_LOG"
        fi
        if ((SECONDS >= deadline)); then
            printf -- '--- last lines of the dockerd log ---\n' >&2
            dockerd_log_tail >&2
            die "dockerd did not answer 'docker info' within ${DOCKER_WAIT_SECONDS} s"
        fi
        sleep 1
    done
}

start_background_dockerd() {
    : >>"$DOCKERD_LOG"
    chmod 0640 "$DOCKERD_LOG"
    printf '\n===== %s: started by mcp-runner setup.sh =====\n' "$(date -Is)" >>"$DOCKERD_LOG"
    # setsid + redirections: dockerd keeps no terminal and none of this
    # script's file descriptors, so it outlives the script and never holds a
    # CI log pipe open.
    setsid dockerd --pidfile "$DOCKERD_PIDFILE" </dev/null >>"$DOCKERD_LOG" 2>&1 &
    local pid=$!
    disown "$pid" 2>/dev/null || true
    info "dockerd started in the background (pid $pid, log $DOCKERD_LOG)"
    wait_for_docker "$pid"
}

step "Starting dockerd"
if $have_systemd; then
    if ! systemctl is-enabled --quiet docker.service 2>/dev/null; then
        systemctl enable docker.service >/dev/null 2>&1 || die "systemctl enable docker.service failed"
        info "enabled docker.service"
    fi
    if ! systemctl is-active --quiet docker.service; then
        systemctl start docker.service || { dockerd_log_tail >&2; die "systemctl start docker.service failed"; }
        info "started docker.service"
    elif $config_changed; then
        systemctl restart docker.service || { dockerd_log_tail >&2; die "systemctl restart docker.service failed"; }
        info "restarted docker.service (configuration changed)"
    else
        info "docker.service is running and its configuration is unchanged: not restarting"
    fi
    wait_for_docker
else
    if pid=$(our_dockerd_pid); then
        if $config_changed; then
            stop_our_dockerd "$pid"
            start_background_dockerd
        elif docker_answers; then
            info "background dockerd (pid $pid) is running and its configuration is unchanged: not restarting"
        else
            # Alive but not answering: maybe still starting.
            wait_for_docker "$pid"
        fi
    else
        mapfile -t foreign < <(all_dockerd_pids)
        if [[ ${#foreign[@]} -gt 0 ]]; then
            # A dockerd this script did not start (an init script, a user).
            # Its runtimes can be reloaded without a restart: SIGHUP makes
            # dockerd re-read daemon.json's reloadable keys, runtimes among them.
            info "a dockerd not started by setup.sh is running (pid ${foreign[*]})"
            if $config_changed; then
                kill -HUP "${foreign[@]}" || die "could not signal dockerd ${foreign[*]} to reload"
                info "sent SIGHUP so that it reloads $DAEMON_JSON"
                sleep 2
            fi
            wait_for_docker "${foreign[0]}"
        else
            rm -f "$DOCKERD_PIDFILE"
            start_background_dockerd
        fi
    fi
fi
info "docker: client $(docker version --format '{{.Client.Version}}' 2>/dev/null), server $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})' 2>/dev/null)"

step "Checking that dockerd offers the $RUNTIME_NAME runtime"
runtimes=$(docker info --format '{{range $name, $_ := .Runtimes}}{{$name}} {{end}}' 2>/dev/null) \
    || die "docker info failed"
info "runtimes: $runtimes"
grep -qw -- "$RUNTIME_NAME" <<<"$runtimes" \
    || die "dockerd does not list the $RUNTIME_NAME runtime (runtimes: $runtimes); if dockerd was not started by setup.sh, restart it"
actual_cgroup_driver=$(docker info --format '{{.CgroupDriver}}' 2>/dev/null || true)
info "cgroup driver: ${actual_cgroup_driver:-unknown}, cgroup version: $(docker info --format '{{.CgroupVersion}}' 2>/dev/null || echo unknown)"
if [[ -n "$actual_cgroup_driver" && "$actual_cgroup_driver" != "$expected_cgroup_driver" ]]; then
    warn "dockerd uses the '$actual_cgroup_driver' cgroup driver, setup.sh expected '$expected_cgroup_driver';" \
        "runsc's --systemd-cgroup argument may need adjusting (--runsc-arg)"
fi

# ------------------------------------------------------------ firewall --
# Docker keeps deployments from each other, not from the host: a container can
# open connections to any address of the host (its network's gateway, eth0,
# docker0, ...) and so reach mcp-runner's API when it listens on 0.0.0.0, and
# every other service of the host. Docker writes no INPUT rules, so these are
# mcp-runner's own, in a chain of their own. RETURN, not ACCEPT: the chain only
# ever takes traffic away, the host's INPUT rules still decide the rest.
# Docker does keep its bridge networks apart, in the filter table's FORWARD,
# but each time it creates a network it deletes and re-inserts its jumps there,
# and traffic between networks passes meanwhile. A chain of the mangle table,
# which Docker never writes, drops forwarded traffic between deployment
# networks at every moment.

iptables_() { iptables -w 20 "$@"; }

# fw_chain TABLE CHAIN: creates CHAIN in TABLE unless it exists.
fw_chain() {
    if ! iptables_ -t "$1" -S "$2" >/dev/null 2>&1; then
        iptables_ -t "$1" -N "$2" 2>"$work/iptables.err" || iptables_ -t "$1" -S "$2" >/dev/null 2>&1 \
            || { cat "$work/iptables.err" >&2; die "could not create the iptables chain $2 (table $1)"; }
        fw_changed=true
    fi
}

# fw_rules TABLE CHAIN: the rules of CHAIN, one a line, as the words after
# "-A CHAIN".
fw_rules() {
    iptables_ -t "$1" -S "$2" 2>/dev/null | sed -n "s/^-A $2 //p"
}

# fw_ensure_once TABLE CHAIN POSITION WORD...: makes the rule WORD... appear
# exactly once in CHAIN, at POSITION (1-based), or with POSITION "any" where
# it is or at the end. A missing rule is added before duplicates are removed,
# so there is no moment without it. Sets fw_changed=true when it changed
# something.
fw_ensure_once() {
    local table=$1 chain=$2 position=$3 keep=-1 i rules=()
    shift 3
    local rule="$*"
    mapfile -t rules < <(fw_rules "$table" "$chain")
    if [[ $position == any ]]; then
        for i in "${!rules[@]}"; do
            if [[ "${rules[$i]}" == "$rule" ]]; then keep=$i; break; fi
        done
        if ((keep < 0)); then
            iptables_ -t "$table" -A "$chain" "$@" || die "iptables -t $table -A $chain $rule failed"
            fw_changed=true
            return 0
        fi
    else
        if [[ "${rules[$((position - 1))]:-}" != "$rule" ]]; then
            ((position <= ${#rules[@]} + 1)) || position=$((${#rules[@]} + 1))
            iptables_ -t "$table" -I "$chain" "$position" "$@" || die "iptables -t $table -I $chain $position $rule failed"
            fw_changed=true
            mapfile -t rules < <(fw_rules "$table" "$chain")
        fi
        keep=$((position - 1))
    fi
    # Duplicates, from the last so that the numbers of the others stay valid.
    for ((i = ${#rules[@]} - 1; i >= 0; i--)); do
        if ((i != keep)) && [[ "${rules[$i]}" == "$rule" ]]; then
            iptables_ -t "$table" -D "$chain" $((i + 1)) || die "iptables -t $table -D $chain $((i + 1)) failed"
            fw_changed=true
        fi
    done
}

if $firewall; then
    step "Host firewall: deployment networks may not open connections to this host or to each other"
    pools=()
    for p in "${network_pools[@]}"; do
        # As iptables prints it, so that a rerun finds the rule it wrote.
        n=$("$PYTHON" -c 'import ipaddress, sys; print(ipaddress.IPv4Network(sys.argv[1]))' "$p" 2>/dev/null) \
            || die "--network-pool $p is not an IPv4 network a.b.c.d/n without host bits"
        pools+=("$n")
    done
    exec 9>"$FIREWALL_LOCK"
    flock -w 30 9 || die "could not take $FIREWALL_LOCK within 30 s"
    fw_changed=false
    fw_chain filter "$FIREWALL_CHAIN"
    fw_ensure_once filter "$FIREWALL_CHAIN" 1 -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN
    fw_ensure_once filter "$FIREWALL_CHAIN" 2 -i lo -j RETURN
    for p in "${pools[@]}"; do
        fw_ensure_once filter "$FIREWALL_CHAIN" any -s "$p" -j DROP
    done
    fw_ensure_once filter INPUT 1 -j "$FIREWALL_CHAIN"
    fw_chain mangle "$FORWARD_CHAIN"
    for p in "${pools[@]}"; do
        fw_ensure_once mangle "$FORWARD_CHAIN" any -s "$p" -d "$p" -j DROP
    done
    fw_ensure_once mangle FORWARD 1 -j "$FORWARD_CHAIN"
    exec 9>&-
    if $fw_changed; then info "rules installed"; else info "rules already in place"; fi
    iptables_ -S INPUT 2>/dev/null | grep -F -- "-j $FIREWALL_CHAIN" | sed 's/^/    /'
    iptables_ -S "$FIREWALL_CHAIN" 2>/dev/null | grep '^-A' | sed 's/^/    /'
    iptables_ -t mangle -S FORWARD 2>/dev/null | grep -F -- "-j $FORWARD_CHAIN" | sed 's/^/    -t mangle /'
    iptables_ -t mangle -S "$FORWARD_CHAIN" 2>/dev/null | grep '^-A' | sed 's/^/    -t mangle /'
else
    step "Host firewall: left alone (--no-firewall)"
    warn "deployment containers can open connections to this host unless mcp-runner installs the rules (FIREWALL=on, its default)"
fi

# --------------------------------------------------------- data directory --

step "Creating the data directory $data_dir"
install -d -m 0700 -o root -g root "$data_dir"
chmod 0700 "$data_dir"
info "$(stat -c '%A %U:%G %n' "$data_dir")"

# ------------------------------------------------------------ CI checks --

if $ci_mode; then
    step "Checking the Rust toolchain"
    if ! command -v cargo >/dev/null && [[ -f "$HOME/.cargo/env" ]]; then
        # shellcheck disable=SC1091
        . "$HOME/.cargo/env"
    fi
    command -v cargo >/dev/null \
        || die "cargo not found (neither in PATH nor in ~/.cargo/bin); CI machines must provide the Rust toolchain"
    info "$(cargo --version)"
    libc_a=$(cc -print-file-name=libc.a 2>/dev/null || true)
    [[ "$libc_a" == /* && -f "$libc_a" ]] \
        || die "glibc's static library libc.a was not found; install libc6-dev (needed for +crt-static test fixtures)"
    info "static glibc: $libc_a"
fi

# ---------------------------------------------------------- smoke test --

if $smoke_test; then
    step "Smoke test: running a busybox container under $RUNTIME_NAME"
    busybox_bin=/bin/busybox
    [[ -x $busybox_bin ]] || die "$busybox_bin is missing (package busybox-static)"
    mkdir -p "$work/image"
    cp "$busybox_bin" "$work/image/busybox"
    cat >"$work/image/Dockerfile" <<'EOF'
FROM scratch
COPY busybox /bin/busybox
ENTRYPOINT ["/bin/busybox"]
EOF
    # The legacy builder needs no buildx plugin and FROM scratch pulls nothing.
    DOCKER_BUILDKIT=0 docker build -q -t "$SMOKE_IMAGE" "$work/image" >/dev/null 2>"$work/build.err" \
        || { cat "$work/build.err" >&2; die "could not build the smoke-test image"; }
    # Runs on the default bridge network (that is where runsc's network
    # setup can fail, see daemon.json above). --pids-limit counts the
    # sandbox's host threads too (about 40-60 for gVisor itself, plus several
    # per guest process), so it must be far above the workload's own needs.
    smoke_name=mcp-runner-setup-smoke-$$
    set +e
    out=$(timeout -k 10 120 docker run --pull never --rm --name "$smoke_name" \
        --runtime "$RUNTIME_NAME" --cap-drop ALL --security-opt no-new-privileges \
        --user 65534:65534 --memory 64m --memory-swap 64m --pids-limit 256 \
        "$SMOKE_IMAGE" sh -c 'echo sandbox-ok; dmesg 2>/dev/null | head -n 1' 2>&1)
    rc=$?
    set -e
    if [[ $rc -ne 0 ]] || ! grep -q sandbox-ok <<<"$out"; then
        docker rm -f "$smoke_name" >/dev/null 2>&1 || true
        printf '%s\n' "$out" >&2
        die "a container did not run under $RUNTIME_NAME (exit $rc)"
    fi
    grep -q gVisor <<<"$out" || warn "the container ran, but its kernel log does not mention gVisor"
    info "ok: $(tr '\n' ' ' <<<"$out")"
fi

step "Done: Docker with the $RUNTIME_NAME runtime is ready"
