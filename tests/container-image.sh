#!/usr/bin/env bash
# tests/container-image.sh - builds the Dockerfile and runs the image with README's run line.
#
# No registry is needed: the Debian base image is made here with debootstrap (once, then
# reused) and mcp-runner is compiled on the host and packed with the Dockerfile's `prebuilt`
# stage, which shares the `runtime` stage (packages, environment, health check, stop signal,
# entrypoint, labels) with the default image. Checked:
#
#   0. .dockerignore keeps target/ and databases out of the build context; the image's
#      metadata and run-time dependencies are what the README says;
#   1. the container, started with the README's run line (plus a spare PORT, a dedicated
#      INSTANCE_ID and a scratch data directory), answers /health and the API gets ready;
#   2. a stdio deployment of the fixture MCP server is created through the API, its `echo`
#      tool is called over /mcp-server/{id}/mcp, it is deleted, and its container, network and
#      host user (in the host's /etc/passwd, written through the mounted /etc) are gone;
#   3. Docker reports the container healthy (the image's HEALTHCHECK);
#   4. `docker stop` shuts mcp-runner down gracefully (exit code 0, "shutdown complete");
#   5. a container started again from the same run line still has the deployment made before
#      the stop (the database lives in the mounted data directory) and it still answers.
#
# Where Docker cannot start --privileged containers at all (see privilege_flags), the closest
# equivalent is used instead, with a warning.
#
# Everything this script makes (containers, networks, host users of instance "image-test", the
# data directory, the staged binary) is removed on exit, whatever the outcome. The base image,
# the fixture image and the test image are kept for the next run.
#
# Needs root, Docker with the runsc runtime (./setup.sh), cargo, curl and jq; debootstrap is
# installed with apt-get when missing. Environment:
#   DEBIAN_MIRROR        mirror for debootstrap (default http://deb.debian.org/debian)
#   IMAGE_TEST_PROFILE   cargo profile of the binary put into the image (default release)
#   IMAGE_TEST_IMAGE     test this existing image instead of building one (e.g. an image
#                        built with the default target: `docker build -t mcp-runner .`)

set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly INSTANCE_ID=image-test
readonly RUNNER_NAME=mcp-runner-image-test
readonly IMAGE=${IMAGE_TEST_IMAGE:-mcp-runner:image-test}
readonly BASE_IMAGE=mcp-runner-image-test/debian:bookworm
readonly FIXTURE_IMAGE=mcp-runner-test-fixture:latest
readonly DATA_DIR=/var/tmp/mcp-runner-image-test
readonly STAGED_BINARY=tests/container-image/prebuilt/mcp-runner
readonly DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
readonly PROFILE=${IMAGE_TEST_PROFILE:-release}
readonly LABEL_INSTANCE=mcp-runner.instance
readonly LABEL_DEPLOYMENT=mcp-runner.deployment
readonly USER_COMMENT_PREFIX="mcp-runner/$INSTANCE_ID/"

started=$SECONDS
work=$(mktemp -d /tmp/mcp-runner-image-test.XXXXXX)
port=
api_key=
privileged=()

# ---------------------------------------------------------------- helpers --

step() { printf '==> [%3ds] %s\n' "$((SECONDS - started))" "$*"; }
info() { printf '    %s\n' "$*"; }
fail() {
    printf 'FAIL: %s\n' "$*" >&2
    exit 1
}

# Removes every object of instance $INSTANCE_ID and everything else this script made.
# Safe to run at any time, also when nothing exists.
cleanup() {
    docker rm -f "$RUNNER_NAME" >/dev/null 2>&1 || true
    local ids
    ids=$(docker ps -aq --filter "label=$LABEL_INSTANCE=$INSTANCE_ID" 2>/dev/null || true)
    if [[ -n "$ids" ]]; then
        # shellcheck disable=SC2086
        docker rm -f $ids >/dev/null 2>&1 || true
    fi
    ids=$(docker network ls -q --filter "label=$LABEL_INSTANCE=$INSTANCE_ID" 2>/dev/null || true)
    if [[ -n "$ids" ]]; then
        # shellcheck disable=SC2086
        docker network rm $ids >/dev/null 2>&1 || true
    fi
    local name
    for name in $(instance_users); do
        userdel "$name" >/dev/null 2>&1 || true
        groupdel "$name" >/dev/null 2>&1 || true
    done
    rm -rf "$DATA_DIR"
    rm -f "$STAGED_BINARY"
}

# Login names of the host users of instance $INSTANCE_ID (their comment names the instance).
instance_users() {
    awk -F: -v prefix="$USER_COMMENT_PREFIX" 'index($5, prefix) == 1 { print $1 }' /etc/passwd
}

on_exit() {
    local rc=$?
    trap - EXIT
    if ((rc != 0)); then
        printf '\n---- last lines of the mcp-runner container log ----\n' >&2
        docker logs --tail 60 "$RUNNER_NAME" 2>&1 | sed 's/^/    /' >&2 || true
    fi
    cleanup
    rm -rf "$work"
    if ((rc == 0)); then
        printf '==> PASSED in %d s\n' "$((SECONDS - started))"
    else
        printf '==> FAILED after %d s (exit %d); everything made by the test was removed\n' \
            "$((SECONDS - started))" "$rc" >&2
    fi
    exit "$rc"
}

need() {
    local cmd=$1 pkg=${2:-$1}
    command -v "$cmd" >/dev/null 2>&1 && return 0
    command -v apt-get >/dev/null 2>&1 || fail "$cmd is missing (package $pkg)"
    info "installing $pkg"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$pkg" >"$work/apt.log" 2>&1 \
        || { apt-get update -q >>"$work/apt.log" 2>&1 \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$pkg" >>"$work/apt.log" 2>&1; } \
        || { cat "$work/apt.log" >&2; fail "could not install $pkg"; }
}

# A TCP port nobody listens on.
free_port() {
    local p i
    for ((i = 0; i < 200; i++)); do
        p=$((20000 + RANDOM % 20000))
        if [[ -z "$(ss -Htln "sport = :$p" 2>/dev/null)" ]]; then
            printf '%s\n' "$p"
            return 0
        fi
    done
    fail "no free TCP port found"
}

# api METHOD PATH [JSON]: calls the management API; prints the body, then the status code on
# a line of its own.
api() {
    local method=$1 path=$2 body=${3:-}
    local args=(-sS -X "$method" "http://127.0.0.1:$port$path" -H "X-API-Key: $api_key"
        --max-time 120 -o "$work/api.body" -w '%{http_code}')
    [[ -n "$body" ]] && args+=(-H 'Content-Type: application/json' --data "$body")
    local code
    code=$(curl "${args[@]}") || code=000
    cat "$work/api.body" 2>/dev/null || true
    printf '\n%s\n' "$code"
}

# expect_api CODE METHOD PATH [JSON]: like api, fails unless the status is CODE; prints the body.
expect_api() {
    local want=$1
    shift
    local out code
    out=$(api "$@")
    code=${out##*$'\n'}
    out=${out%$'\n'*}
    [[ "$code" == "$want" ]] || fail "$1 $2: expected HTTP $want, got $code: $out"
    printf '%s\n' "$out"
}

# The JSON-RPC message of an MCP answer: plain JSON, or the `data:` of an SSE stream whose
# message has the id $2.
rpc_message() {
    local file=$1 id=$2
    if [[ "$(head -c 1 "$file")" == "{" ]]; then
        jq -c . "$file"
    else
        sed -n 's/^data: \{0,1\}//p' "$file" \
            | jq -cnR --argjson id "$id" 'first(inputs | fromjson? | select(.id == $id)) // empty'
    fi
}

# mcp_post DEPLOYMENT SESSION JSON: POSTs to the Streamable HTTP endpoint; headers go to
# $work/mcp.headers, the body to $work/mcp.body; prints the status code.
mcp_post() {
    local dep=$1 session=$2 body=$3
    local args=(-sS -X POST "http://127.0.0.1:$port/mcp-server/$dep/mcp"
        -H 'Accept: application/json, text/event-stream' -H 'Content-Type: application/json'
        --max-time 60 -D "$work/mcp.headers" -o "$work/mcp.body" -w '%{http_code}'
        --data "$body")
    [[ -n "$session" ]] && args+=(-H "Mcp-Session-Id: $session")
    curl "${args[@]}" || printf '000'
}

# mcp_echo DEPLOYMENT TEXT: initialize, notifications/initialized, tools/call echo, checks the
# answer and ends the session.
mcp_echo() {
    local dep=$1 text=$2 code session message
    code=$(mcp_post "$dep" "" '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"container-image-test","version":"1.0"}}}')
    [[ "$code" == 200 ]] || fail "MCP initialize of $dep: HTTP $code: $(cat "$work/mcp.body")"
    session=$(sed -n 's/^[Mm][Cc][Pp]-[Ss][Ee][Ss][Ss][Ii][Oo][Nn]-[Ii][Dd]: *//p' "$work/mcp.headers" | tr -d '\r')
    [[ -n "$session" ]] || fail "MCP initialize of $dep: no Mcp-Session-Id header"
    message=$(rpc_message "$work/mcp.body" 1)
    [[ -n "$(jq -r '.result.serverInfo.name // empty' <<<"$message")" ]] \
        || fail "MCP initialize of $dep: unexpected answer: $message"
    info "initialize: server $(jq -r '.result.serverInfo.name' <<<"$message"), protocol $(jq -r '.result.protocolVersion' <<<"$message"), session $session"

    code=$(mcp_post "$dep" "$session" '{"jsonrpc":"2.0","method":"notifications/initialized"}')
    [[ "$code" == 202 ]] || fail "MCP notifications/initialized: HTTP $code: $(cat "$work/mcp.body")"

    code=$(mcp_post "$dep" "$session" "$(jq -cn --arg t "$text" '{jsonrpc:"2.0",id:2,method:"tools/call",params:{name:"echo",arguments:{text:$t}}}')")
    [[ "$code" == 200 ]] || fail "MCP tools/call echo: HTTP $code: $(cat "$work/mcp.body")"
    message=$(rpc_message "$work/mcp.body" 2)
    [[ "$(jq -r '.result.content[0].text // empty' <<<"$message")" == "$text" ]] \
        || fail "MCP tools/call echo: unexpected answer: $(cat "$work/mcp.body")"
    info "tools/call echo answered \"$text\" ($(grep -c '^data:' "$work/mcp.body" || true) SSE data line(s))"

    curl -sS -o /dev/null -X DELETE "http://127.0.0.1:$port/mcp-server/$dep/mcp" \
        -H "Mcp-Session-Id: $session" --max-time 30 || true
}

# Capability names by number, as in linux/capability.h.
readonly CAP_NAMES=(CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP
    LINUX_IMMUTABLE NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE
    SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME
    SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG
    WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF CHECKPOINT_RESTORE)

# Capabilities the kernel knows but dockerd's bounding set lacks.
missing_caps() {
    local pid bnd last i
    pid=$(pidof dockerd | awk '{print $1}')
    bnd=$(awk '/^CapBnd:/ {print $2}' "/proc/${pid:-self}/status")
    last=$(cat /proc/sys/kernel/cap_last_cap)
    for ((i = 0; i <= last && i < ${#CAP_NAMES[@]}; i++)); do
        (((0x$bnd >> i) & 1)) || printf '%s\n' "${CAP_NAMES[i]}"
    done
}

# The README's --privileged, or, where Docker cannot start privileged containers at all, the
# closest it can: Docker 20.10 gives a privileged container every capability the kernel
# knows, and when the daemon's own bounding set lacks one (some VMs and sandboxes drop
# CAP_SYS_RESOURCE), runc refuses to start it ("unable to apply caps"). Then the container gets
# every capability the daemon has and no seccomp, AppArmor or masked-path confinement.
privilege_flags() {
    if docker run --rm --pull never --privileged "$BASE_IMAGE" true >/dev/null 2>"$work/privileged.err"; then
        privileged=(--privileged)
        return 0
    fi
    grep -q 'unable to apply caps' "$work/privileged.err" \
        || { cat "$work/privileged.err" >&2; fail "docker run --privileged fails"; }
    local missing c
    missing=$(missing_caps)
    [[ -n "$missing" ]] || { cat "$work/privileged.err" >&2; fail "docker run --privileged fails"; }
    privileged=(--cap-add ALL)
    for c in $missing; do privileged+=(--cap-drop "$c"); done
    privileged+=(--security-opt seccomp=unconfined --security-opt apparmor=unconfined
        --security-opt systempaths=unconfined)
    printf 'WARNING: this Docker host cannot start --privileged containers (its capability bounding set lacks %s);\n' \
        "$(tr '\n' ' ' <<<"$missing" | sed 's/ $//')" >&2
    printf 'WARNING: using "%s" in its place\n' "${privileged[*]}" >&2
}

# The README's run line. Differences, all for isolation: the container name, the data
# directory's host side, a spare PORT, INSTANCE_ID and --pull never (no registry here); and
# --privileged only where the host allows it (see privilege_flags).
start_runner() {
    docker run -d --pull never --name "$RUNNER_NAME" \
        "${privileged[@]}" --network=host --restart=always \
        -v /var/run/docker.sock:/var/run/docker.sock \
        -v /etc:/etc \
        -v "$DATA_DIR":/var/mcp-runner \
        -e API_KEY="$api_key" \
        -e PORT="$port" -e INSTANCE_ID="$INSTANCE_ID" \
        "$IMAGE" >/dev/null
}

# Waits until /health answers and the API has finished start-up (it answers 503 before).
wait_ready() {
    local deadline=$((SECONDS + 90)) code
    until [[ "$(curl -s --max-time 2 "http://127.0.0.1:$port/health" || true)" == *'"status":"ok"'* ]]; do
        [[ "$(docker inspect -f '{{.State.Running}}' "$RUNNER_NAME" 2>/dev/null)" == true ]] \
            || fail "the mcp-runner container is not running"
        ((SECONDS < deadline)) || fail "/health did not answer within 90 s"
        sleep 0.5
    done
    while :; do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "X-API-Key: $api_key" \
            "http://127.0.0.1:$port/api/deployment" || true)
        [[ "$code" == 200 ]] && break
        ((SECONDS < deadline)) || fail "the API did not become ready within 90 s (last HTTP $code)"
        sleep 0.5
    done
}

# Creates a stdio deployment of the fixture; prints its DeploymentData.
create_deployment() {
    expect_api 201 POST /api/deployment "$(jq -cn --arg image "$FIXTURE_IMAGE" \
        '{image: $image, transport: {type: "stdio"}, maxMemory: 128, maxCpus: 0.5,
          metadata: {test: "container-image"}}')" | jq -c .deployment
}

# Fails unless the deployment's container, network and host user are gone.
check_gone() {
    local id=$1 username=$2
    [[ -z "$(docker ps -aq --filter "label=$LABEL_DEPLOYMENT=$id")" ]] || fail "container of $id still exists"
    [[ -z "$(docker network ls -q --filter "label=$LABEL_DEPLOYMENT=$id")" ]] || fail "network of $id still exists"
    ! grep -q "^$username:" /etc/passwd || fail "host user $username still in /etc/passwd"
    ! grep -q "^$username:" /etc/group || fail "host group $username still in /etc/group"
    info "container, network and host user $username of $id are gone"
}

# Sends SIGTERM through `docker stop` and checks the shutdown was graceful.
stop_gracefully() {
    docker stop "$RUNNER_NAME" >/dev/null
    local state logs
    state=$(docker inspect -f '{{.State.Status}} {{.State.ExitCode}} {{.State.OOMKilled}}' "$RUNNER_NAME")
    [[ "$state" == "exited 0 false" ]] || fail "after docker stop: status/exit code/OOM = $state (expected exited 0 false)"
    logs=$(docker logs "$RUNNER_NAME" 2>&1)
    grep -q 'SIGTERM received' <<<"$logs" || fail "mcp-runner did not log 'SIGTERM received'"
    grep -q 'shutdown complete' <<<"$logs" || fail "mcp-runner did not log 'shutdown complete'"
    info "exit code 0, log has 'SIGTERM received' and 'shutdown complete'"
}

# ---------------------------------------------------------------- checks --

trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "Preconditions"
[[ $EUID -eq 0 ]] || fail "run as root (the test adds host users through the container)"
timeout 20 docker info >/dev/null 2>&1 || fail "Docker does not answer (run ./setup.sh)"
docker info --format '{{range $name, $_ := .Runtimes}}{{$name}} {{end}}' | grep -qw runsc \
    || fail "Docker has no runsc runtime (run ./setup.sh)"
if ! command -v cargo >/dev/null 2>&1 && [[ -f "$HOME/.cargo/env" ]]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || fail "cargo not found"
need curl
need jq
need ss iproute2
cleanup # leftovers of an interrupted run

step "Base image $BASE_IMAGE (Debian 12 made with debootstrap, no registry)"
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    info "present, reused"
else
    need debootstrap
    rootfs=$work/rootfs
    info "debootstrap --variant=minbase bookworm from $DEBIAN_MIRROR (a few minutes, once)"
    debootstrap --variant=minbase bookworm "$rootfs" "$DEBIAN_MIRROR" >"$work/debootstrap.log" 2>&1 \
        || { tail -n 30 "$work/debootstrap.log" >&2; fail "debootstrap failed"; }
    # The sources of the official image: the release, its updates and security updates.
    rm -f "$rootfs/etc/apt/sources.list"
    cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $DEBIAN_MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/*
    tar -C "$rootfs" --numeric-owner -c . | docker import --change 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    info "imported"
fi

step "Compiling the fixture MCP server and mcp-runner ($PROFILE) on the host"
target_dir=$(cargo metadata --no-deps --format-version 1 | jq -r .target_directory)
if [[ -z "${IMAGE_TEST_IMAGE:-}" ]]; then
    cargo build --locked --profile "$PROFILE" --bin mcp-runner 2>"$work/cargo.log" \
        || { tail -n 40 "$work/cargo.log" >&2; fail "cargo build failed"; }
    profile_dir=$PROFILE
    [[ "$PROFILE" == dev ]] && profile_dir=debug
    binary=$target_dir/$profile_dir/mcp-runner
    [[ -x "$binary" ]] || fail "$binary was not built"
    info "$binary ($(du -h "$binary" | cut -f1))"
fi
# As tests/e2e/support/fixture.rs does (same target directory, so after `cargo test` this is a
# no-op): a static binary packed FROM scratch.
fixture_target=$target_dir/tmp/fixture-build
CARGO_TARGET_DIR=$fixture_target \
    CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --release --locked -p mcp-fixture --target x86_64-unknown-linux-gnu 2>"$work/cargo.log" \
    || { tail -n 40 "$work/cargo.log" >&2; fail "cargo build of the fixture failed"; }
mkdir -p "$work/fixture"
cp "$fixture_target/x86_64-unknown-linux-gnu/release/mcp-fixture" "$work/fixture/"
printf 'FROM scratch\nCOPY mcp-fixture /mcp-fixture\nENTRYPOINT ["/mcp-fixture"]\nCMD ["stdio"]\n' \
    >"$work/fixture/Dockerfile"
old_fixture=$(docker image inspect -f '{{.Id}}' "$FIXTURE_IMAGE" 2>/dev/null || true)
DOCKER_BUILDKIT=0 docker build -q -t "$FIXTURE_IMAGE" "$work/fixture" >/dev/null 2>"$work/build.log" \
    || { cat "$work/build.log" >&2; fail "docker build of the fixture image failed"; }
if [[ -n "$old_fixture" && "$old_fixture" != "$(docker image inspect -f '{{.Id}}' "$FIXTURE_IMAGE")" ]]; then
    docker rmi "$old_fixture" >/dev/null 2>&1 || true # replaced; kept if something still uses it
fi
info "fixture image $FIXTURE_IMAGE"

step ".dockerignore keeps build output and databases out of the context"
mkdir -p "$work/ctx/target/release" "$work/ctx/tests/fixture/target" "$work/ctx/src" "$work/ctx/.git"
cp .dockerignore "$work/ctx/"
for f in target/release/mcp-runner tests/fixture/target/x app.db app.db-wal app.db-shm \
    src/local.db src/keep.rs Cargo.toml .git/HEAD; do
    : >"$work/ctx/$f"
done
printf 'FROM %s\nCOPY . /ctx\nRUN cd /ctx && find . -type f | sort\n' "$BASE_IMAGE" >"$work/ctx/Dockerfile"
DOCKER_BUILDKIT=0 docker build --no-cache --rm "$work/ctx" >"$work/ctx.log" 2>&1 \
    || { cat "$work/ctx.log" >&2; fail "context probe build failed"; }
probe_image=$(sed -n 's/^Successfully built //p' "$work/ctx.log")
[[ -z "$probe_image" ]] || docker rmi "$probe_image" >/dev/null 2>&1 || true
sent=$(sed -n 's#^\./##p' "$work/ctx.log" | sort | tr '\n' ' ')
[[ "$sent" == ".dockerignore Cargo.toml Dockerfile src/keep.rs " ]] \
    || fail "unexpected build context: $sent (expected .dockerignore Cargo.toml Dockerfile src/keep.rs)"
info "of a probe tree, the context holds: $sent"

if [[ -z "${IMAGE_TEST_IMAGE:-}" ]]; then
    step "Building the image from the Dockerfile (stage prebuilt)"
    old_image=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
    cp "$binary" "$STAGED_BINARY"
    revision=$(git rev-parse HEAD 2>/dev/null || true)
    DOCKER_BUILDKIT=0 docker build --target prebuilt \
        --build-arg RUNTIME_IMAGE="$BASE_IMAGE" \
        --build-arg PREBUILT="$STAGED_BINARY" \
        --build-arg REVISION="$revision" \
        -t "$IMAGE" . >"$work/build.log" 2>&1 \
        || { cat "$work/build.log" >&2; fail "docker build failed"; }
    rm -f "$STAGED_BINARY"
    context_size=$(sed -n 's/^Sending build context to Docker daemon *//p' "$work/build.log")
    new_image=$(docker image inspect -f '{{.Id}}' "$IMAGE")
    if [[ -n "$old_image" && "$old_image" != "$new_image" ]]; then
        docker rmi "$old_image" >/dev/null 2>&1 || true # the previous run's image, now untagged
    fi
    info "$IMAGE ${new_image:7:12}, $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1 / 1e6}'), build context $context_size"
else
    step "Testing the given image $IMAGE (IMAGE_TEST_IMAGE; nothing built)"
    docker image inspect "$IMAGE" >/dev/null 2>&1 || fail "no local image $IMAGE"
fi

step "Image metadata"
inspect() { docker image inspect -f "$1" "$IMAGE"; }
cargo_version=$(cargo metadata --no-deps --format-version 1 | jq -r '.packages[] | select(.name == "mcp-runner") | .version')
[[ "$(inspect '{{index .Config.Labels "org.opencontainers.image.version"}}')" == "$cargo_version" ]] \
    || fail "label version $(inspect '{{index .Config.Labels "org.opencontainers.image.version"}}') != Cargo.toml $cargo_version (update ARG VERSION)"
[[ "$(inspect '{{index .Config.Labels "org.opencontainers.image.licenses"}}')" == Apache-2.0 ]] || fail "licence label"
[[ "$(inspect '{{index .Config.Labels "org.opencontainers.image.source"}}')" == https://* ]] || fail "source label"
[[ "$(inspect '{{.Config.User}}')" == "" ]] || fail "the image must run as root"
[[ "$(inspect '{{.Config.StopSignal}}')" == SIGTERM ]] || fail "STOPSIGNAL"
[[ "$(inspect '{{json .Config.Entrypoint}}')" == '["/usr/local/bin/mcp-runner"]' ]] || fail "ENTRYPOINT"
[[ -n "$(inspect '{{if .Config.Healthcheck}}{{index .Config.Healthcheck.Test 0}}{{end}}')" ]] || fail "no HEALTHCHECK"
env_list=$(inspect '{{range .Config.Env}}{{println .}}{{end}}')
grep -qx 'DB_PATH=/var/mcp-runner/app.db' <<<"$env_list" || fail "DB_PATH default"
! grep -q '^BIND_IP=' <<<"$env_list" || fail "the image must not set BIND_IP"
docker run --rm --pull never --entrypoint /bin/bash "$IMAGE" -c '
    set -e
    for c in useradd userdel groupadd groupdel; do command -v "$c" >/dev/null; done
    test -s /etc/ssl/certs/ca-certificates.crt
    if ldd /usr/local/bin/mcp-runner | grep "not found"; then exit 1; fi
    /usr/local/bin/mcp-runner --version' >"$work/inspect.log" 2>&1 \
    || { cat "$work/inspect.log" >&2; fail "the image lacks a run-time dependency"; }
info "labels, root, SIGTERM, exec entrypoint, HEALTHCHECK, DB_PATH ok; $(tail -n 1 "$work/inspect.log"); shadow utilities, CA bundle and shared libraries present"

step "Starting the container with the README's run line"
privilege_flags
port=$(free_port)
api_key=$(od -An -tx1 -N20 /dev/urandom | tr -d ' \n')
install -d -m 0700 "$DATA_DIR"
t0=$SECONDS
start_runner
wait_ready
info "port $port, instance $INSTANCE_ID, data $DATA_DIR; /health ok and the API ready $((SECONDS - t0)) s after docker run"
[[ "$(curl -s --max-time 5 "http://127.0.0.1:$port/api/deployment")" == *'API key is required'* ]] \
    || fail "the API answered without a key"

step "Deployment A: create, call echo over /mcp-server/{id}/mcp, delete"
dep=$(create_deployment)
a_id=$(jq -r .id <<<"$dep")
a_user=$(jq -r .username <<<"$dep")
[[ "$(jq -r .status <<<"$dep")" == running ]] || fail "deployment A is not running: $dep"
info "created $a_id (user $a_user, uid $(jq -r .uid <<<"$dep"))"
# The deployment's own container (its network holder, labelled mcp-runner.role=netns, aside).
a_container=$(docker ps --filter "label=$LABEL_DEPLOYMENT=$a_id" --format '{{.ID}} {{.Label "mcp-runner.role"}}' | awk 'NF == 1 {print $1}')
[[ -n "$a_container" ]] || fail "no running container labelled $LABEL_DEPLOYMENT=$a_id"
[[ "$(docker inspect -f '{{.HostConfig.Runtime}}' "$a_container")" == runsc ]] || fail "container of $a_id does not run under runsc"
[[ -n "$(docker network ls -q --filter "label=$LABEL_DEPLOYMENT=$a_id")" ]] || fail "no network labelled $LABEL_DEPLOYMENT=$a_id"
grep -q "^$a_user:[^:]*:[0-9]*:[0-9]*:${USER_COMMENT_PREFIX}$a_id:" /etc/passwd \
    || fail "host user $a_user of $a_id is not in the host's /etc/passwd"
info "container (runsc), network and host user in the host's /etc/passwd exist"
mcp_echo "$a_id" "hello from the container image test"
expect_api 200 DELETE "/api/deployment/$a_id" >/dev/null
expect_api 404 GET "/api/deployment/$a_id" >/dev/null
check_gone "$a_id" "$a_user"

step "Deployment B: created before the restart"
dep=$(create_deployment)
b_id=$(jq -r .id <<<"$dep")
b_user=$(jq -r .username <<<"$dep")
info "created $b_id (user $b_user)"
mcp_echo "$b_id" "before the restart"

step "Docker health status"
deadline=$((SECONDS + 75))
until [[ "$(docker inspect -f '{{.State.Health.Status}}' "$RUNNER_NAME")" == healthy ]]; do
    ((SECONDS < deadline)) || fail "container not healthy: $(docker inspect -f '{{json .State.Health}}' "$RUNNER_NAME")"
    sleep 1
done
info "healthy"

step "docker stop: graceful shutdown"
stop_gracefully
[[ "$(docker ps -q --filter "label=$LABEL_DEPLOYMENT=$b_id")" != "" ]] \
    || fail "the container of $b_id did not keep running while mcp-runner was stopped"
info "the container of $b_id kept running"
[[ -s "$DATA_DIR/app.db" ]] || fail "no database in the mounted data directory"
info "database $(stat -c '%a %U %s bytes' "$DATA_DIR/app.db") in $DATA_DIR"

step "A new container from the same run line keeps the database"
docker rm "$RUNNER_NAME" >/dev/null
start_runner
wait_ready
list=$(expect_api 200 GET /api/deployment)
[[ "$(jq -r --arg id "$b_id" '[.[] | select(.id == $id)] | length' <<<"$list")" == 1 ]] \
    || fail "$b_id is not listed after the restart: $list"
[[ "$(jq -r 'length' <<<"$list")" == 1 ]] || fail "expected exactly one deployment: $list"
[[ "$(expect_api 200 GET "/api/deployment/$b_id" | jq -r .deployment.status)" == running ]] \
    || fail "$b_id is not running after the restart"
info "$b_id listed and running"
mcp_echo "$b_id" "after the restart"
expect_api 200 DELETE "/api/deployment/$b_id" >/dev/null
check_gone "$b_id" "$b_user"

step "Stopping again"
stop_gracefully
[[ "$(docker inspect -f '{{.RestartCount}}' "$RUNNER_NAME")" == 0 ]] || fail "Docker restarted mcp-runner (it crashed)"
[[ -z "$(instance_users)" ]] || fail "host users of instance $INSTANCE_ID left: $(instance_users | tr '\n' ' ')"
