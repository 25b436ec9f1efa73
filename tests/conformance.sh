#!/usr/bin/env bash
# tests/conformance.sh - runs the official MCP conformance suite
# (npm @modelcontextprotocol/conformance) against mcp-runner's bridge.
#
# Usage, as root after ./setup.sh (Docker with the runsc runtime running):
#
#     tests/conformance.sh
#
# It builds the fixture server (tests/fixture, `mcp-fixture conformance ...`)
# as a static binary and packs it FROM scratch into a local image, builds
# mcp-runner, starts it on 127.0.0.1 with a temporary database and its own
# instance id, creates a stdio and a Streamable HTTP deployment of the
# fixture, and runs every server scenario of the spec revision against
#
#     direct                the fixture on the host, in HTTP mode (the baseline)
#     stdio-through-bridge  /mcp-server/<stdio deployment>/mcp
#     http-through-bridge   /mcp-server/<Streamable HTTP deployment>/mcp
#     sse-through-bridge    /mcp-server/<legacy HTTP+SSE deployment>/mcp
#
# and, with CONFORMANCE_ISOLATED=1, against stdio and Streamable HTTP
# deployments with "sessionMode": "isolated" (one container per session):
#
#     stdio-isolated-through-bridge, http-isolated-through-bridge
#
# then deletes the deployments and stops mcp-runner. It exits non-zero when
# a scenario fails through the bridge that passes directly (with
# CONFORMANCE_STRICT=1 also when a check warns through the bridge that does
# not directly). The last line is `conformance: N passed, M failed`, the
# scenarios through the bridge (all deployments).
#
# The suite and the node 22 it needs are installed once into
# $CONFORMANCE_PREFIX (default /var/tmp/mcp-conformance) from npm; the last
# run's logs and per-scenario checks.json stay in $CONFORMANCE_PREFIX/last-run.
#
# Environment: CARGO_TARGET_DIR (default /var/tmp/mcp-runner-target),
# CONFORMANCE_PREFIX, CONFORMANCE_SPEC_VERSION (default 2025-11-25),
# CONFORMANCE_STRICT (1: new warnings through the bridge fail too),
# CONFORMANCE_ISOLATED (1: also the isolated-session deployments),
# RUST_LOG (mcp-runner's log filter, default info).
set -euo pipefail

banner() { printf '\n==== %s ====\n' "$*"; }
fail() {
    echo "conformance.sh: ERROR: $*" >&2
    exit 1
}

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
STARTED=$SECONDS

SPEC_VERSION="${CONFORMANCE_SPEC_VERSION:-2025-11-25}"
SUITE_VERSION=0.2.0-alpha.12
NODE_VERSION=22.23.3
PREFIX="${CONFORMANCE_PREFIX:-/var/tmp/mcp-conformance}"
IMAGE=mcp-runner-conformance-fixture:latest
INSTANCE=conformance
TRIPLE=x86_64-unknown-linux-gnu
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/mcp-runner-target}"

NODE="$PREFIX/node_modules/node/bin/node"
SUITE="$PREFIX/node_modules/@modelcontextprotocol/conformance/dist/index.js"
HARNESS="$ROOT/tests/conformance/harness.mjs"
RESULTS="$PREFIX/last-run"
FIXTURE_BIN="$CARGO_TARGET_DIR/$TRIPLE/release/mcp-fixture"
RUNNER_BIN="$CARGO_TARGET_DIR/release/mcp-runner"

harness() { "$NODE" "$HARNESS" "$@"; }

# ---------------------------------------------------------------------------
# Clean-up: deployments, mcp-runner, the direct fixture, the temporary files.
# Runs on every exit; running it twice is harmless.
# ---------------------------------------------------------------------------
WORK=""
BASE=""
API_KEY=""
RUNNER_PID=""
FIXTURE_PID=""
DEPLOYMENTS=()

cleanup() {
    set +e
    if [[ -n $RUNNER_PID ]] && kill -0 "$RUNNER_PID" 2>/dev/null; then
        for id in "${DEPLOYMENTS[@]}"; do
            harness delete "$BASE" "$API_KEY" "$id"
        done
        DEPLOYMENTS=()
        echo "stopping mcp-runner (pid $RUNNER_PID, SIGTERM)"
        kill -TERM "$RUNNER_PID"
        for _ in $(seq 1 300); do
            kill -0 "$RUNNER_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$RUNNER_PID" 2>/dev/null; then
            echo "mcp-runner did not stop within 30 s: SIGKILL"
            kill -KILL "$RUNNER_PID"
        fi
        wait "$RUNNER_PID" 2>/dev/null
    fi
    RUNNER_PID=""
    if [[ -n $FIXTURE_PID ]]; then
        kill -TERM "$FIXTURE_PID" 2>/dev/null
        wait "$FIXTURE_PID" 2>/dev/null
        FIXTURE_PID=""
    fi
    if command -v docker >/dev/null 2>&1; then
        local label="label=mcp-runner.instance=$INSTANCE" left
        left=$(docker ps -aq --filter "$label" 2>/dev/null)
        if [[ -n $left ]]; then
            echo "WARNING: containers of instance $INSTANCE left behind; removing: $left"
            # shellcheck disable=SC2086
            docker rm -f $left >/dev/null
        fi
        left=$(docker network ls -q --filter "$label" 2>/dev/null)
        if [[ -n $left ]]; then
            echo "WARNING: networks of instance $INSTANCE left behind; removing: $left"
            # shellcheck disable=SC2086
            docker network rm $left >/dev/null
        fi
    fi
    if [[ -n $WORK ]]; then
        rm -rf "$WORK"
        WORK=""
    fi
    set -e
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------
banner "Prerequisites"
if ! command -v cargo >/dev/null 2>&1 && [[ -f "$HOME/.cargo/env" ]]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || fail "cargo not found (PATH or ~/.cargo/env)"
command -v docker >/dev/null 2>&1 || fail "docker not found: run ./setup.sh first"
docker info >/dev/null 2>&1 || fail "the Docker daemon does not answer: run ./setup.sh first"
docker info --format '{{json .Runtimes}}' | grep -q '"runsc"' ||
    fail "Docker has no runsc runtime: run ./setup.sh first"
echo "cargo: $(cargo --version)"
echo "docker: $(docker version --format '{{.Server.Version}}')"
echo "CARGO_TARGET_DIR=$CARGO_TARGET_DIR"

# ---------------------------------------------------------------------------
banner "Conformance suite $SUITE_VERSION and node $NODE_VERSION (in $PREFIX)"
STAMP="$PREFIX/.installed"
WANT="conformance=$SUITE_VERSION node=$NODE_VERSION"
if [[ -f $STAMP && "$(cat "$STAMP")" == "$WANT" && -x $NODE && -f $SUITE ]] &&
    [[ "$("$NODE" --version 2>/dev/null)" == "v$NODE_VERSION" ]]; then
    echo "already installed"
else
    if ! command -v npm >/dev/null 2>&1; then
        echo "npm not found: installing Debian's npm"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm
    fi
    mkdir -p "$PREFIX"
    rm -f "$STAMP"
    cat >"$PREFIX/package.json" <<EOF
{
  "private": true,
  "description": "MCP conformance suite for mcp-runner's tests/conformance.sh",
  "dependencies": {
    "@modelcontextprotocol/conformance": "$SUITE_VERSION",
    "node": "$NODE_VERSION"
  }
}
EOF
    (cd "$PREFIX" && npm install --no-audit --no-fund --loglevel=error)
    [[ -x $NODE && "$("$NODE" --version)" == "v$NODE_VERSION" ]] ||
        fail "npm package node@$NODE_VERSION did not install a node binary at $NODE"
    [[ -f $SUITE ]] || fail "the conformance suite is missing at $SUITE"
    echo "$WANT" >"$STAMP"
fi
echo "node: $("$NODE" --version), suite: $("$NODE" "$SUITE" --version)"

# ---------------------------------------------------------------------------
banner "Static fixture ($TRIPLE, release)"
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked -p mcp-fixture --target "$TRIPLE"
[[ -x $FIXTURE_BIN ]] || fail "no fixture binary at $FIXTURE_BIN"

banner "Fixture image $IMAGE (FROM scratch)"
CONTEXT=$(mktemp -d /tmp/mcp-conformance-image.XXXXXX)
cp "$FIXTURE_BIN" "$CONTEXT/mcp-fixture"
cat >"$CONTEXT/Dockerfile" <<'EOF'
FROM scratch
COPY mcp-fixture /mcp-fixture
ENTRYPOINT ["/mcp-fixture"]
CMD ["conformance", "stdio"]
EOF
DOCKER_BUILDKIT=0 docker build -q -t "$IMAGE" "$CONTEXT"
rm -rf "$CONTEXT"

banner "mcp-runner (release)"
cargo build --release --locked
[[ -x $RUNNER_BIN ]] || fail "no mcp-runner binary at $RUNNER_BIN"

# ---------------------------------------------------------------------------
banner "Start mcp-runner (instance $INSTANCE)"
WORK=$(mktemp -d /tmp/mcp-conformance.XXXXXX)
rm -rf "$RESULTS"
mkdir -p "$RESULTS"
PORT=$(harness free-port)
API_KEY=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
BASE="http://127.0.0.1:$PORT"
PORT="$PORT" BIND_IP=127.0.0.1 API_KEY="$API_KEY" DB_PATH="$WORK/app.db" \
    INSTANCE_ID="$INSTANCE" LOG_FORMAT=text RUST_LOG="${RUST_LOG:-info}" \
    "$RUNNER_BIN" >"$RESULTS/mcp-runner.log" 2>&1 &
RUNNER_PID=$!
echo "mcp-runner pid $RUNNER_PID on $BASE (log: $RESULTS/mcp-runner.log)"
if ! harness wait-ready "$BASE" "$API_KEY" 120; then
    tail -n 40 "$RESULTS/mcp-runner.log" >&2
    fail "mcp-runner did not become ready"
fi

banner "Deployments"
create() {
    local id
    if ! id=$(harness create "$BASE" "$API_KEY" "$1"); then
        tail -n 40 "$RESULTS/mcp-runner.log" >&2
        fail "cannot create a deployment"
    fi
    printf '%s' "$id"
}
# deploy LABEL SESSION_MODE TRANSPORT: creates a deployment of the fixture
# and records it as a target of the suite.
TARGETS=()
deploy() {
    local label=$1 mode=$2 transport=$3 args transport_json id
    case $transport in
    stdio)
        args='["conformance", "stdio"]'
        transport_json='{"type": "stdio"}'
        ;;
    http)
        args='["conformance", "http", "--port", "8000", "--path", "/mcp"]'
        transport_json='{"type": "streamable_http", "endpoint": "http://localhost:8000/mcp"}'
        ;;
    sse)
        args='["conformance", "sse", "--port", "8000", "--path", "/sse"]'
        transport_json='{"type": "sse", "endpoint": "http://localhost:8000/sse"}'
        ;;
    esac
    id=$(create "{\"image\": \"$IMAGE\", \"args\": $args,
        \"env\": {\"FIXTURE_NAME\": \"$label\"}, \"maxMemory\": 256,
        \"sessionMode\": \"$mode\", \"transport\": $transport_json}")
    DEPLOYMENTS+=("$id")
    TARGETS+=("$label=$BASE/mcp-server/$id/mcp")
    echo "$label: $id ($transport, $mode sessions)"
}
deploy stdio-through-bridge shared stdio
deploy http-through-bridge shared http
deploy sse-through-bridge shared sse
if [[ ${CONFORMANCE_ISOLATED:-0} == 1 ]]; then
    deploy stdio-isolated-through-bridge isolated stdio
    deploy http-isolated-through-bridge isolated http
fi

banner "Fixture on the host (baseline)"
FIXTURE_PORT=$(harness free-port)
FIXTURE_NAME=conformance-direct "$FIXTURE_BIN" conformance http --host 127.0.0.1 \
    --port "$FIXTURE_PORT" --path /mcp >"$RESULTS/fixture-direct.log" 2>&1 &
FIXTURE_PID=$!
harness wait-port "$FIXTURE_PORT" 30
echo "fixture pid $FIXTURE_PID on http://127.0.0.1:$FIXTURE_PORT/mcp"

# ---------------------------------------------------------------------------
"$NODE" "$SUITE" list --server --spec-version "$SPEC_VERSION" >"$RESULTS/list.txt"
harness scenarios "$RESULTS/list.txt" >"$RESULTS/scenarios.txt"
echo "$(wc -l <"$RESULTS/scenarios.txt") server scenarios at revision $SPEC_VERSION"

run_suite() {
    local label=$1 url=$2 status=0
    banner "Conformance $label: $url"
    # --suite all: the revision's pending scenarios too (json-schema-2020-12,
    # server-sse-polling). The suite exits 1 when a check fails; the verdict
    # is read from its results below.
    timeout 900 "$NODE" "$SUITE" server --url "$url" --suite all \
        --spec-version "$SPEC_VERSION" --output-dir "$RESULTS/$label" \
        >"$RESULTS/$label.log" 2>&1 || status=$?
    echo "suite exit status $status (log: $RESULTS/$label.log)"
    harness summarize "$label" "$RESULTS/scenarios.txt" "$RESULTS/$label.log" \
        "$RESULTS/$label" "$RESULTS/$label.json"
}

run_suite direct "http://127.0.0.1:$FIXTURE_PORT/mcp"
SUMMARIES=()
for target in "${TARGETS[@]}"; do
    run_suite "${target%%=*}" "${target#*=}"
    SUMMARIES+=("$RESULTS/${target%%=*}.json")
done

banner "Bridge against baseline"
harness compare "$RESULTS/totals" "$RESULTS/direct.json" "${SUMMARIES[@]}"
read -r PASSED FAILED REGRESSIONS <"$RESULTS/totals"

banner "Clean-up"
cleanup
echo "results: $RESULTS"
echo "runtime: $((SECONDS - STARTED)) s"
if ((REGRESSIONS > 0)); then
    echo "FAILED: $REGRESSIONS scenario(s) fail through the bridge but pass directly"
fi
echo "conformance: $PASSED passed, $FAILED failed"
((REGRESSIONS == 0))
